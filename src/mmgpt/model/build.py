"""Builders: ModelConfig -> (Flamingo, tokenizer, image transform); special tokens; what trains.

Builders take keyword-only arguments; presets supply numbers; tests call the same builders with tiny numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mmgpt.config import ModelConfig, VisionConfig
from mmgpt.model.flamingo import Flamingo
from mmgpt.model.perceiver import PerceiverResampler
from mmgpt.model.vision import VisionEncoder
from mmgpt.tokens import SpecialTokenIds, add_special_tokens

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_vision_encoder(cfg: VisionConfig, *, dtype: torch.dtype = torch.float32) -> VisionEncoder:
    if cfg.path is not None:
        return VisionEncoder.from_pretrained(cfg.path, dtype=dtype)
    return VisionEncoder.from_numbers(
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        width=cfg.width,
        layers=cfg.layers,
        heads=cfg.heads,
        mlp_dim=cfg.mlp_dim,
    ).to(dtype)


def build_language_model(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    lm_cfg = cfg.lm
    if lm_cfg.path is not None:
        path = Path(lm_cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"language model directory {path} has no config.json; set lm.path to a local "
                "HF causal-LM directory (config.json + weights)"
            )
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if lm_cfg.hf_config is None:
        raise ValueError(
            "the model config names no language model: set lm.path (a local HF directory) or "
            "lm.hf_config (a dict with model_type and sizes, for a randomly initialised LM)"
        )
    hf = dict(lm_cfg.hf_config)
    model_type = hf.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"lm.hf_config needs a model_type (e.g. 'llama'); got keys {sorted(lm_cfg.hf_config)}")
    config = AutoConfig.for_model(model_type, **hf)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    source = cfg.lm.tokenizer or cfg.lm.path
    if source is None:
        raise ValueError("the model config names no tokenizer: set lm.tokenizer (or lm.path) to a local directory")
    return AutoTokenizer.from_pretrained(source)


def resize_embeddings(lm: PreTrainedModel, vocab_size: int) -> None:
    """Grow the LM's vocabulary to ``vocab_size``; new rows are the mean of the old ones (deterministic).

    For an untied LM the new output rows are never trained and are in no checkpoint: the mean row gives them an
    average logit, so they are (almost) never chosen.
    """
    old = lm.get_input_embeddings().weight.shape[0]
    if vocab_size == old:
        return
    if vocab_size < old:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the LM already has {old} embeddings")
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    with torch.no_grad():
        tables = {id(lm.get_input_embeddings().weight): lm.get_input_embeddings().weight}
        out = lm.get_output_embeddings()
        if out is not None:
            tables.setdefault(id(out.weight), out.weight)
        for weight in tables.values():
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)


def build_flamingo(
    *,
    cfg: ModelConfig,
    vision_encoder: VisionEncoder,
    lang_encoder: PreTrainedModel,
    special: SpecialTokenIds,
    vocab_size: int,
) -> Flamingo:
    """Assemble a Flamingo from a vision encoder and an LM (new perceiver and gated blocks, embeddings resized)."""
    dtype = next(lang_encoder.parameters()).dtype
    resize_embeddings(lang_encoder, vocab_size)
    perceiver = PerceiverResampler(
        dim=vision_encoder.width,
        depth=cfg.perceiver.depth,
        heads=cfg.perceiver.heads,
        dim_head=cfg.perceiver.dim_head,
        num_latents=cfg.perceiver.num_latents,
        ff_mult=cfg.perceiver.ff_mult,
    )
    model = Flamingo(
        vision_encoder=vision_encoder,
        perceiver=perceiver,
        lang_encoder=lang_encoder,
        special=special,
        config=cfg,
    )
    model.perceiver.to(dtype)
    for block in model.gated_blocks().values():
        block.to(dtype)
    freeze(model)
    return model


def build_model(
    cfg: ModelConfig, *, tokenizer: PreTrainedTokenizerBase | None = None, device: str | torch.device = "cpu"
) -> tuple[Flamingo, PreTrainedTokenizerBase]:
    """Build the model a config describes; returns (model, tokenizer with the special tokens added)."""
    if cfg.fusion != "cross_attention":
        raise ValueError(f"fusion={cfg.fusion!r} is not available; use 'cross_attention'")
    dtype = DTYPES[cfg.dtype]
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    special = add_special_tokens(tokenizer)
    model = build_flamingo(
        cfg=cfg,
        vision_encoder=build_vision_encoder(cfg.vision, dtype=dtype),
        lang_encoder=build_language_model(cfg, dtype=dtype),
        special=special,
        vocab_size=len(tokenizer),
    )
    return model.to(device).eval(), tokenizer


def freeze(model: nn.Module) -> None:
    model.requires_grad_(False)


def openflamingo_trainable(model: Flamingo) -> list[nn.Parameter]:
    """Unfreeze what OpenFlamingo pretraining trains: perceiver, gated blocks, input embeddings. Returns them."""
    freeze(model)
    params = [*model.perceiver.parameters()]
    for block in model.gated_blocks().values():
        params += list(block.parameters())
    params.append(model.lang_encoder.get_input_embeddings().weight)
    for p in params:
        p.requires_grad_(True)
    return params
