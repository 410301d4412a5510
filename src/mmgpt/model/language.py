"""The language model: any HF causal LM, found and handled by what all model kinds share.

Where its decoder layers live (gated blocks are inserted there; LoRA targets are named under them), the name
under which it takes its KV cache, and how it is built from a directory or from numbers.
"""

from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from mmgpt.config import LanguageModelConfig

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


@dataclass(frozen=True)
class LmModules:
    """Module names inside one decoder layer of an LM family: its self-attention and MLP projections."""

    self_attention: tuple[str, ...]
    mlp: tuple[str, ...]


_LLAMA_LIKE = LmModules(
    self_attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    mlp=("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
)
LM_MODULES = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "phi3": LmModules(
        self_attention=("self_attn.qkv_proj", "self_attn.o_proj"), mlp=("mlp.gate_up_proj", "mlp.down_proj")
    ),
    "gpt_neox": LmModules(
        self_attention=("attention.query_key_value", "attention.dense"), mlp=("mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
    ),
    "mpt": LmModules(self_attention=("attn.Wqkv", "attn.out_proj"), mlp=("ffn.up_proj", "ffn.down_proj")),
}


def lm_modules(lm: nn.Module) -> LmModules | None:
    """The self-attention and MLP module names of the LM's family; None for a family not listed here."""
    return LM_MODULES.get(getattr(getattr(lm, "config", None), "model_type", None))


def lm_cache_argument(lm: nn.Module) -> str:
    """The name under which ``lm.forward`` takes (and its output returns) the KV cache: ``cache`` since
    transformers 5.24 (``past_key_values`` warns at every call there and goes in 5.40), ``past_key_values``
    before."""
    return "cache" if "cache" in _forward_parameters(type(lm)) else "past_key_values"


def takes_position_ids(lm: nn.Module) -> bool:
    return "position_ids" in _forward_parameters(type(lm))


@functools.cache
def _forward_parameters(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """attention_mask [b, S] -> position ids [b, S]: left padding does not shift the positions of real tokens."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


def build_language_model(
    cfg: LanguageModelConfig, *, dtype: torch.dtype = torch.float32, device_map: str | dict | None = None
) -> PreTrainedModel:
    """The LM: ``cfg.path`` (a local HF directory, or a hub id where a hub is reachable) or ``cfg.hf_config``.

    ``device_map`` (e.g. ``"cuda"``, ``"auto"``, ``{"": 0}``) is passed to ``from_pretrained`` so the weights go
    straight to their device(s) instead of through a CPU copy.
    """
    if cfg.path is not None:
        source = hf_source(cfg.path, what="language model", key="lm.path")
        try:
            config = AutoConfig.from_pretrained(source)
        except ValueError as error:  # e.g. model_type 'mosaic_gpt': custom code, not a transformers class
            raise ValueError(
                f"{cfg.path}: transformers has no native class for this language model ({error}); use a "
                "checkpoint in a format transformers knows (e.g. model_type llama, mpt, gpt_neox)"
            ) from None
        return AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, device_map=device_map)
    if cfg.hf_config is None:
        raise ValueError(
            "the model config names no language model: set lm.path (a local HF directory) or "
            "lm.hf_config (a dict with model_type and sizes, for a randomly initialised LM)"
        )
    hf = dict(cfg.hf_config)
    model_type = hf.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"lm.hf_config needs a model_type (e.g. 'llama'); got keys {sorted(cfg.hf_config)}")
    config = AutoConfig.for_model(model_type, **hf)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def resize_embeddings(lm: PreTrainedModel, vocab_size: int) -> None:
    """Resize the LM's vocabulary to ``vocab_size`` (the tokenizer's length), as OpenFlamingo does.

    Growing: new rows are the mean of the old ones (deterministic); for an untied LM the new output rows are never
    trained and are in no checkpoint, so the mean row gives them an average logit and they are (almost) never chosen.
    Shrinking: LMs whose table is padded beyond the tokenizer (MPT, RedPajama: 50432 rows for 50277 tokens) lose
    rows no token id reaches; OpenFlamingo v2 checkpoints hold exactly ``len(tokenizer)`` rows.
    """
    old = lm.get_input_embeddings().weight.shape[0]
    if vocab_size == old:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    if vocab_size < old:
        return
    with torch.no_grad():
        tables = {id(lm.get_input_embeddings().weight): lm.get_input_embeddings().weight}
        out = lm.get_output_embeddings()
        if out is not None:
            tables.setdefault(id(out.weight), out.weight)
        for weight in tables.values():
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def text_config_numbers(lm: PreTrainedModel) -> dict:
    """The LM's HF config as numbers that rebuild it (entries that describe a file, not an architecture, left out)."""
    return {k: v for k, v in lm.config.to_dict().items() if k not in _NOT_ARCHITECTURE}


# HF config entries that describe a file, not an architecture.
_NOT_ARCHITECTURE = {"_name_or_path", "architectures", "transformers_version", "dtype", "torch_dtype"}


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hf_source(path: str | Path, *, what: str, key: str) -> str:
    """A local directory with a config.json, or a hub id (``org/name``) when no such local path exists."""
    local = Path(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(
                f"{what} directory {local} has no config.json; set {key} to a HF model directory (config.json + "
                "weights), e.g. a download of the model's hub repository"
            )
        return str(local)
    if local.exists() or not _HUB_ID.match(str(path)):
        raise FileNotFoundError(f"{what} {path} ({key}) is not a directory; set {key} to a local HF model directory")
    return str(path)  # a hub id: transformers downloads it (needs network access)
