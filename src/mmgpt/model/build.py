"""Builders: ModelConfig -> model kind -> (model, tokenizer); architecture options applied before training.

``build_model`` builds what every kind starts from (``build_backbones``: the LM and the vision encoder on their
devices, in the config's dtype), then calls the builder of ``cfg.fusion`` (``BUILDERS``), which lives in its model's
module: a new model kind is its module with a builder, and one line in ``BUILDERS``. Builders take keyword-only
arguments; presets supply numbers; tests call the same builders with tiny numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import Iterator

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmgpt.config import DTYPES, ModelConfig
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.model.encoders import build_vision_encoder
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.model.language import build_language_model
from mmgpt.tokens import read_tokenizer


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = cfg.lm.tokenizer or cfg.lm.path
    if source is None:
        raise ValueError("the model config names no tokenizer: set lm.tokenizer (or lm.path) to a local directory")
    return read_tokenizer(source)


def device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@dataclasses.dataclass
class Backbones:
    """The pretrained (or from-numbers) parts every model kind starts from, on their devices."""

    language_model: PreTrainedModel
    vision_encoder: VisionEncoder
    tokenizer: PreTrainedTokenizerBase


def build_backbones(
    cfg: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None,
    device: str | torch.device,
    device_map: str | dict | None,
    init_weights: bool,
) -> Backbones:
    """The LM and the vision encoder of ``cfg`` in its dtype: loaded straight onto ``device`` (or spread by
    ``device_map``), the vision encoder beside the LM's input embeddings."""
    dtype = DTYPES[cfg.dtype]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    lm_device_map = device_map if device_map is not None else (None if torch.device(device).type == "cpu" else device)
    # Weights built from numbers are allocated on their device directly (no CPU copy first); pretrained ones are
    # loaded there by from_pretrained.
    on_device = torch.device(device) if device_map is None else contextlib.nullcontext()
    with no_init(not init_weights and cfg.lm.path is None), on_device:
        lm = build_language_model(cfg.lm, dtype=dtype, device_map=lm_device_map)
    lm.tie_weights()  # skipping init_weights also skips its tying of tied LMs (MPT's lm_head)
    with no_init(not init_weights and cfg.vision.path is None), on_device:
        vision_encoder = build_vision_encoder(cfg.vision, dtype=dtype)
    if device_map is None:
        lm.to(device)
    vision_encoder.to(device_of(lm.get_input_embeddings()))
    return Backbones(lm, vision_encoder, tokenizer)


# ModelConfig.fusion -> the builder of that model kind ("module:function", imported when used):
# builder(cfg, backbones, *, init_weights) -> model.
BUILDERS = {
    "cross_attention": "mmgpt.model.flamingo:build_flamingo_model",
    "prefix": "mmgpt.model.prefix_lm:build_prefix_model",
}


def build_model(
    cfg: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    init_weights: bool = True,
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """Build the model a config describes; returns (model in eval mode, frozen; its tokenizer, with whatever
    tokens the model kind adds).

    ``device``: where the model goes; a pretrained LM is loaded straight onto it. ``device_map``: instead, a
    transformers device map for the LM (``"auto"`` spreads it over the visible GPUs; needs accelerate); the
    parts outside the LM follow its layers or its input embeddings. ``init_weights=False``: every weight not read
    from a pretrained directory is allocated but not initialised, for a checkpoint that fills all of them (our
    own format, or a release's fusion weights); random initialisation of billions of parameters would cost minutes
    for nothing.
    """
    target = BUILDERS.get(cfg.fusion)
    if target is None:
        raise ValueError(f"fusion={cfg.fusion!r} has no builder; known: {', '.join(BUILDERS)}")
    module, _, name = target.partition(":")
    builder = getattr(importlib.import_module(module), name)
    backbones = build_backbones(
        cfg, tokenizer=tokenizer, device=device, device_map=device_map, init_weights=init_weights
    )
    model = builder(cfg, backbones, init_weights=init_weights)
    model.requires_grad_(False)
    return model.eval(), backbones.tokenizer


def apply_architecture_options(
    model: VisionLanguageModel,
    *,
    gate_init: float | None = None,
    vision_positions: float | None = None,
    perceiver_latents: int | None = None,
    seed: int = 0,
) -> None:
    """Changes to a built model before it trains (``TrainConfig``'s options of the same names, each found by
    pretraining the tiny base from scratch): open Flamingo's tanh gates, add a 2D sine-cosine table to the ViT's
    position embeddings, grow the perceiver."""
    flamingo_only = {"gate_init": gate_init, "perceiver_latents": perceiver_latents}
    used = [name for name, value in flamingo_only.items() if value is not None]
    if used and model.kind != "flamingo":
        raise ValueError(f"{', '.join(used)} change a Flamingo's gated blocks / perceiver; {model.kind} has none")
    if gate_init is not None:
        model.set_gates(gate_init)
    if vision_positions is not None:
        model.vision_encoder.add_position_table(vision_positions)
    if perceiver_latents is not None:
        model.grow_latents(perceiver_latents, seed=seed)


@contextlib.contextmanager
def no_init(enabled: bool) -> Iterator[None]:
    """Skip weight initialisation (torch.nn.init and transformers' init_weights) while building."""
    if not enabled:
        yield
        return
    from transformers.initialization import no_init_weights

    with no_init_weights():
        yield
