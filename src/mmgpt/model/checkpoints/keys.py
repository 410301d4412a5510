"""Reading release files and mapping their keys: what every loader of released weights shares.

A loader reads a file (``read_state_dict``: training wrappers removed, restricted unpickler), maps each file key
to a model key (``map_keys``: aliases must hold equal tensors), and reports what it did (``LoadReport``): the model
keys written and the file keys it did not load, each named. Any key it does not understand is an error that
lists it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig

from mmgpt.config import ModelConfig
from mmgpt.model.checkpoints.torch_files import read_torch_file

# Buffers that old HF versions saved with the weights; they are recomputed, never loaded.
STRAY_BUFFER = re.compile(r"(^|\.)(inv_freq|original_inv_freq|masked_bias|_float_tensor)$|\.(attention|attn)\.bias$")


@dataclass
class LoadReport:
    """What a loader did: model keys written; file keys not loaded (stray buffers, then aliases of loaded keys)."""

    source: str
    loaded: list[str]
    ignored: list[str]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A training or release file -> its flat state dict: ``model_state_dict`` unwrapped, ``module.`` stripped."""
    obj = read_torch_file(path)
    if isinstance(obj, dict) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; not a state dict")
        while key.startswith("module."):
            key = key[len("module.") :]
        state[key] = value
    return state


def map_keys(
    state: dict[str, torch.Tensor], mapper: Callable[[str], str | None], source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """Apply ``mapper`` (file key -> model key or None for 'not ours'); aliases must hold equal tensors.

    Returns (mapped state, model key -> file key, file keys the mapper rejected, alias keys folded into another)."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    rejected, aliases = [], []
    for key, value in state.items():
        target = mapper(key)
        if target is None:
            rejected.append(key)
            continue
        if target in mapped:
            if mapped[target].shape != value.shape or not torch.equal(mapped[target], value):
                raise ValueError(f"{source}: {origin[target]!r} and its alias {key!r} hold different tensors")
            aliases.append(key)
            continue
        mapped[target], origin[target] = value, key
    return mapped, origin, rejected, aliases


def local_file(path: str | Path, *, what: str) -> Path:
    """A local file, or ``org/name/file`` fetched from the hub where one is reachable."""
    local = Path(path)
    if local.is_file():
        return local
    parts = str(path).split("/")
    if local.exists() or local.is_absolute() or str(path).startswith((".", "~")) or len(parts) < 3:
        raise FileNotFoundError(f"{what} {path} does not exist; pass the path of the downloaded file")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))


def check_lm_matches(cfg: ModelConfig, name: str, lm: str) -> None:
    """The LM directory must have the preset's depth and width: the checkpoint's blocks sit at fixed layers."""
    hf = dict(cfg.lm.hf_config or {})
    if "model_type" not in hf:
        return
    expected = AutoConfig.for_model(hf.pop("model_type"), **hf)
    if not Path(lm).is_dir():
        return  # a hub id; the checkpoint's key and shape checks still apply
    try:
        found = AutoConfig.from_pretrained(lm)
    except ValueError:
        return  # build_language_model explains unknown model types
    for attr in ("num_hidden_layers", "hidden_size"):
        want, got = getattr(expected, attr, None), getattr(found, attr, None)
        if want is not None and got is not None and want != got:
            raise ValueError(
                f"{lm}: {attr}={got} but preset {name!r} is built on an LM with {attr}={want}; "
                "pass the language model the preset names (see its YAML)"
            )
