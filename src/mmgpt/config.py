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

import torch
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it and the fix."""


def closest(key: str, valid: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest valid name, or an empty string."""
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclasses, refusing unknown keys and
    wrong types (``where`` prefixes every message, e.g. ``"multimodal-gpt.yaml: vision_language[2]"``)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"{where}: unknown key {key!r}{closest(str(key), fields)}; valid keys: {', '.join(fields)}"
            )
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(map(repr, missing))}")
    try:
        return cls(**kwargs)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(value, inner, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}{closest(str(value), map(str, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        items = [_convert(item, args[0] if args else Any, f"{where}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads a bare 2017 as an int; a path or name may still be numeric
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
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


# One home for the names of dtypes (model weights) and precisions (training autocast).
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DtypeName = Literal["float32", "bfloat16", "float16"]
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
Precision = Literal["fp32", "bf16", "fp16"]
AUTOCAST: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Which text tokens see which image in Flamingo (reference.md section 2): OpenFlamingo v2 / v1 (MultiModal-GPT).
MediaMask = Literal["previous", "following"]
MEDIA_MASKS: tuple[str, ...] = typing.get_args(MediaMask)


def dtype_name(dtype: str | torch.dtype | None) -> str | None:
    """'bfloat16' for torch.bfloat16, 'bf16' or 'bfloat16'; None stays None."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        names = {v: k for k, v in DTYPES.items()}
        if dtype not in names:
            raise ValueError(f"dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
        return names[dtype]
    name = _DTYPE_ALIASES.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)} (or bf16, fp16, fp32)")
    return name


# OpenAI CLIP's preprocessing statistics (reference.md section 2), the default of the CLIP-style encoders.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class VisionConfig:
    """The ViT and what its output feeds on. ``path``: a local directory of a HF CLIPVisionModel or CLIPModel
    (e.g. a download of openai/clip-vit-large-patch14); without it, a ViT is built from the numbers.

    ``kind``: ``clip`` (transformers' CLIPVisionModel, QuickGELU) or ``eva`` (EVA-CLIP ViT-g as transformers'
    Blip2VisionModel, exact GELU). What the fusion sees: ``keep_cls`` (OpenFlamingo drops CLS; MiniGPT-4 and
    mPLUG-Owl keep it), ``final_norm`` (none: the last block's output, OpenFlamingo's features; ``post_layernorm``:
    the encoder's final LayerNorm on every token, mPLUG-Owl's - and BLIP-2's ``ln_vision`` for EVA, with
    ``final_norm_eps``). The preprocessing: ``resize`` (``crop``: shorter side then centre crop, CLIP's;
    ``squash``: both sides to ``image_size``, MiniGPT-4's and mPLUG-Owl's), ``mean`` and ``std``.
    """

    path: str | None = None
    kind: Literal["clip", "eva"] = "clip"
    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    eps: float = 1e-5
    keep_cls: bool = False
    final_norm: Literal["none", "post_layernorm"] = "none"
    final_norm_eps: float | None = None  # default: eps
    resize: Literal["crop", "squash"] = "crop"
    mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    std: list[float] = field(default_factory=lambda: list(CLIP_STD))


@dataclass
class PerceiverConfig:
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    num_latents: int = 64
    ff_mult: int = 4


@dataclass
class QFormerConfig:
    """BLIP-2's Q-Former (MiniGPT-4): BERT-base layers, cross-attention into the image every ``cross_attention_every``
    layers, ``queries`` learned queries."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    cross_attention_every: int = 2
    eps: float = 1e-12
    queries: int = 32


@dataclass
class AbstractorConfig:
    """mPLUG-Owl's visual abstractor: ``queries`` learned queries attend to themselves and the image tokens."""

    dim: int = 1024
    layers: int = 6
    heads: int = 16
    intermediate: int = 2816  # the releases' SwiGLU width (the original code's default 4096 is wrong for them)
    queries: int = 64
    eps: float = 1e-5
    ffn_eps: float = 1e-6
    dropout: float = 0.1


@dataclass
class PrefixConfig:
    """How a prefix model turns image tokens into LM input embeddings: a ``resampler`` (``qformer``: MiniGPT-4;
    ``abstractor``: mPLUG-Owl; ``patch_concat``: MiniGPT-4's LLaMA-2 release, ``patch_group`` adjacent patch tokens
    side by side; ``perceiver``: OpenFlamingo's Perceiver Resampler, ``perceiver``'s numbers, its latents the
    queries - e.g. a Flamingo's pretrained perceiver standing in for BLIP-2's Q-Former), then the connector - a
    linear projection to the LM width (``projection_bias``) and ``end_tokens`` learned embeddings appended after
    each image's (mPLUG-Owl's ``vit_eos``: 1)."""

    resampler: Literal["qformer", "abstractor", "patch_concat", "perceiver"] = "qformer"
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    abstractor: AbstractorConfig = field(default_factory=AbstractorConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    patch_group: int = 4
    projection_bias: bool = True
    end_tokens: int = 0


@dataclass
class CrossAttentionConfig:
    """Gated cross-attention blocks, inserted before decoder layer i when (i + 1) % every_n_layers == 0."""

    every_n_layers: int = 4
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    media_mask: MediaMask = "previous"
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
    """A model: its vision encoder, how images reach the LM (``fusion``: Flamingo's ``perceiver`` +
    ``cross_attention``, or a prefix model's ``prefix``), the LM, the dtype and the prompt style."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    cross_attention: CrossAttentionConfig = field(default_factory=CrossAttentionConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    lm: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    # Where vision meets language. "cross_attention" is Flamingo; "prefix" (image tokens in the LM's input
    # sequence: MiniGPT-4, mPLUG-Owl) is the other model kind behind the same contract.
    fusion: Literal["cross_attention", "prefix"] = "cross_attention"
    dtype: DtypeName = "float32"
    # How conversations are written for this model (data/styles.py): its template and stop strings.
    prompt_style: str = "multimodal-gpt"
