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
