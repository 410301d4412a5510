"""``--model PATH_OR_PRESET`` for ``mmgpt chat`` and ``mmgpt serve``: the model, its adapters, one ChatModel.

``load_model`` is the one place that turns the argument into a model. It accepts our model directory
(``mmgpt.model.checkpoints.save_pretrained``) and the preset ``tiny-random`` (the randomly initialised tiny model
of ``mmgpt demo``, so the commands run without weights). When ``mmgpt.load(path_or_preset, dtype=, device=)``
lands, ``load_model`` should call it instead and these two branches go.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.chat import ChatModel
from mmgpt.data.images import DEFAULT_MAX_PIXELS
from mmgpt.lora import load_named_adapter
from mmgpt.model.flamingo import Flamingo

TINY_RANDOM = "tiny-random"


def load_model(
    spec: str, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
    if spec == TINY_RANDOM:
        from mmgpt.demo import tiny_random_model

        model, tokenizer = tiny_random_model(0)
    elif Path(spec).is_dir():
        from mmgpt.model.checkpoints import load_pretrained

        model, tokenizer = load_pretrained(spec)
    else:
        raise ValueError(
            f"--model {spec!r} is neither a model directory (written by mmgpt.model.checkpoints.save_pretrained) nor "
            f"a preset; presets: {TINY_RANDOM}"
        )
    return model.to(device=device, dtype=dtype).eval(), tokenizer


def parse_adapters(specs: Sequence[str]) -> dict[str, str]:
    """``NAME=PATH`` arguments -> {name: path}; a bare PATH is named after its folder."""
    adapters: dict[str, str] = {}
    for spec in specs:
        name, _, path = spec.rpartition("=") if "=" in spec else (Path(spec).name, "", spec)
        if not name or not path or name in adapters:
            raise ValueError(f"--adapter {spec!r}: give NAME=PATH with a new name for each adapter")
        adapters[name] = path
    return adapters


def load_chat_model(
    spec: str,
    *,
    adapters: dict[str, str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    max_image_pixels: int = DEFAULT_MAX_PIXELS,
) -> ChatModel:
    """The model of ``spec`` with each named adapter loaded beside the others over the shared base."""
    model, tokenizer = load_model(spec, device=device, dtype=dtype)
    for name, path in (adapters or {}).items():
        load_named_adapter(model, path, name)
    model.to(device=device, dtype=dtype)
    name = TINY_RANDOM if spec == TINY_RANDOM else Path(spec).name
    return ChatModel.wrap(model, tokenizer, name=name, max_image_pixels=max_image_pixels)
