"""Weights on disk: our own self-contained format, and strict loaders of each released layout.

``ours`` (save_pretrained / load_pretrained), ``openflamingo`` (``checkpoint.pt``), ``multimodal_gpt_lora`` (the
released LoRA), ``minigpt4`` (EVA, BLIP-2 and projection files), ``mplug_owl`` (the sharded HF directory), with
``keys`` (reading files, mapping keys, reports) and ``torch_files`` (the restricted unpickler, safetensors without
copies) underneath. The names below are imported on first use, so reading our format never imports a model kind
it does not hold.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CONFIG_FILE": "ours",
    "load_pretrained": "ours",
    "save_pretrained": "ours",
    "LoadReport": "keys",
    "load_openflamingo_checkpoint": "openflamingo",
    "load_multimodal_gpt_lora": "multimodal_gpt_lora",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
