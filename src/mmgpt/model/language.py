"""The language model: any HF causal LM, found and handled by what all model kinds share.

Where its decoder layers live (gated blocks are inserted there; LoRA targets are named under them), the name
under which it takes its KV cache, and how it is built from a directory or from numbers.
"""

from __future__ import annotations

from torch import nn

# Where the decoder layers of each HF family live (``config.model_type`` -> attribute path).
DECODER_LAYERS_PATHS = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "gpt_neox": "gpt_neox.layers",
    "mpt": "transformer.blocks",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "falcon": "transformer.h",
    "bloom": "transformer.h",
    "opt": "model.decoder.layers",
}


def decoder_layers(lm: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Find the ModuleList of decoder layers: ``path`` if given, else by the model type."""
    model_type = getattr(getattr(lm, "config", None), "model_type", None)
    path = path or DECODER_LAYERS_PATHS.get(model_type)
    if path is None:
        raise ValueError(
            f"don't know where the decoder layers of model_type={model_type!r} live; pass it explicitly, e.g. "
            "lm.decoder_layers_path: 'model.layers' in the model config (the attribute path of the nn.ModuleList "
            "of decoder layers inside the causal LM)"
        )
    layers = lm.get_submodule(path) if _has_submodule(lm, path) else None
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(lm).__name__} has no nn.ModuleList at {path!r}; set lm.decoder_layers_path to the attribute "
            "path of its decoder layers"
        )
    return path, layers


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
