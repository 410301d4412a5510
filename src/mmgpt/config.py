"""Typed configuration: dataclasses that mirror the YAML files, and strict YAML/dict loading.

Unknown keys are errors that name the key, where it was found, and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and the fix."""


def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a plain dict, recursing into nested dataclasses; strict about keys."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        kwargs[key] = _coerce(hints[key], value, where=f"{where}.{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, *, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where=where) if len(inner) == 1 else value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        items = [_coerce(item, v, where=f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as f:
        return from_dict(cls, yaml.safe_load(f), where=str(path))


def save_yaml(obj: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


@dataclass
class VisionConfig:
    """The frozen ViT. ``path``: a local directory of a HF CLIPVisionModel or CLIPModel (e.g. a download of
    openai/clip-vit-large-patch14); without it, a ViT is built from the numbers (random weights)."""

    path: str | None = None
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096


@dataclass
class PerceiverConfig:
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 4


@dataclass
class CrossAttentionConfig:
    """Gated cross-attention blocks, inserted before decoder layer i when (i + 1) % every_n_layers == 0."""

    every_n_layers: int = 4
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    media_mask: Literal["previous", "following"] = "previous"
    # Language-only rows skip the whole gated block (attention and feed-forward), as MultiModal-GPT trains.
    language_only_bypass: bool = True


@dataclass
class LanguageModelConfig:
    """The decoder LM. ``path``: a local HF model directory; otherwise ``hf_config`` builds one from numbers
    (``{"model_type": "llama", "hidden_size": 64, ...}``) with random weights."""

    path: str | None = None
    hf_config: dict[str, Any] | None = None
    tokenizer: str | None = None  # defaults to ``path``
    decoder_layers_path: str | None = None  # e.g. "model.layers"; found from the model type when omitted


@dataclass
class LoraConfig:
    """LoRA on the language model (with its gated blocks); the defaults are MultiModal-GPT's recipe.

    Targets per decoder layer: the LM's self-attention projections, the gated blocks' ``attn.to_q/to_kv/to_out``
    and ``ff.1/ff.3``, and, if ``lm_mlp``, the LM's MLP. Module names of the LM come from its model type;
    ``self_attention_modules`` / ``mlp_modules`` (names inside one decoder layer, e.g. "self_attn.q_proj")
    override them for other families. The perceiver is never adapted.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.0
    self_attention: bool = True
    cross_attention: bool = True
    cross_attention_ff: bool = True
    lm_mlp: bool = False
    self_attention_modules: list[str] | None = None
    mlp_modules: list[str] | None = None


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    cross_attention: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    # Where vision meets language. "cross_attention" is Flamingo; "prefix" (image tokens in the LM's input
    # sequence: MiniGPT-4, mPLUG-Owl) will be another connector behind the same interface.
    fusion: Literal["cross_attention"] = "cross_attention"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
