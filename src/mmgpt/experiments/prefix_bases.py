"""Tiny bases of the two prefix systems, made in a second from the embedded tiny OpenFlamingo (``tiny-world``).

What stands in for what (docs/systems.md):

- MiniGPT-4: EVA ViT-g (frozen) -> the tiny ViT (frozen); BLIP-2's pretrained Q-Former and its 32 queries -> the
  tiny Flamingo's pretrained perceiver and its 16 latents (frozen); ``llama_proj`` -> a fresh Linear 96 -> 192;
  Vicuna v0 (frozen) -> the tiny LM (frozen). 16 LM positions per image.
- mPLUG-Owl: CLIP ViT-L -> the tiny ViT (trained in stage 1, as the original); the visual abstractor (64 queries,
  6 layers) -> a fresh abstractor of 16 queries, 2 layers, width 96; ``visual_fc`` + ``vit_eos`` -> a fresh Linear
  96 -> 192 + one learned end token; LLaMA-7B -> the tiny LM (LoRA in stage 2). 17 LM positions per image.

The tiny LM is the Flamingo's own decoder without its gated cross-attention blocks: a plain ``LlamaForCausalLM``
of the same numbers holding the LM's own weights, so on text it computes what the Flamingo computes with its gates
closed. Both take the ViT's features as the perceiver was pretrained on them (OpenFlamingo's: patch tokens of the
last block, CLS dropped, no final norm), so the three systems look at the same image tokens; the originals keep
CLS and add a final LayerNorm (``ln_vision`` / ``post_layernorm``). Fresh parts are drawn from ``seed``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.config import AbstractorConfig, ModelConfig, PrefixConfig
from mmgpt.model.contract import CROSS_ATTENTION, CROSS_ATTENTION_FF, RESAMPLER, VISION, VisionLanguageModel

SYSTEMS = ("minigpt4", "mplug-owl")
# The tiny abstractor: the perceiver's queries and depth; mPLUG-Owl's SwiGLU ratio (2816 / 1024 = 2.75, rounded)
# and dropout.
TINY_ABSTRACTOR = dict(layers=2, heads=4, intermediate=256, queries=16)


def prefix_base_config(flamingo: ModelConfig, system: str) -> ModelConfig:
    """The prefix model config of ``system`` on a Flamingo's ViT and LM (``flamingo``: its ``describe()``)."""
    if system == "minigpt4":
        prefix = PrefixConfig(resampler="perceiver", perceiver=replace(flamingo.perceiver))
        style = "minigpt4"
    elif system == "mplug-owl":
        width = flamingo.vision.width
        prefix = PrefixConfig(resampler="abstractor", abstractor=AbstractorConfig(dim=width, **TINY_ABSTRACTOR))
        prefix.end_tokens = 1  # vit_eos
        style = "mplug-owl"
    else:
        raise ValueError(f"no tiny base for system {system!r}; systems: {', '.join(SYSTEMS)}")
    return ModelConfig(
        vision=replace(flamingo.vision), lm=replace(flamingo.lm), fusion="prefix", prefix=prefix, prompt_style=style
    )


def _part_states(model: VisionLanguageModel) -> dict[str, dict[str, torch.Tensor]]:
    """The state of each part outside the LM, by its group (vision, resampler...)."""
    return {group: model.get_submodule(name).state_dict() for name, group in model.part_groups().items()}


def copy_flamingo_parts(flamingo: VisionLanguageModel, prefix: VisionLanguageModel, *, resampler: bool) -> None:
    """Copy the Flamingo's ViT (and, with ``resampler``, its perceiver) and its LM's own weights into ``prefix``;
    every weight of the Flamingo's LM that is not copied must be a gated block's (checked)."""
    source = _part_states(flamingo)
    for group in (VISION, RESAMPLER) if resampler else (VISION,):
        part = next(name for name, g in prefix.part_groups().items() if g == group)
        prefix.get_submodule(part).load_state_dict(source[group], strict=True)
    lm_state = flamingo.language_model.state_dict()
    wanted = prefix.language_model.state_dict()
    missing = sorted(set(wanted) - set(lm_state))
    if missing:
        raise ValueError(f"the Flamingo's LM lacks {missing[:5]}: not the same LM numbers")
    attribute = flamingo.language_model_attribute
    left = [k for k in lm_state if k not in wanted]
    foreign = [
        k for k in left if flamingo.parameter_group(f"{attribute}.{k}") not in (CROSS_ATTENTION, CROSS_ATTENTION_FF)
    ]
    if foreign:
        raise ValueError(f"weights of the Flamingo's LM neither copied nor a gated block's: {foreign[:5]}")
    prefix.language_model.load_state_dict({k: lm_state[k] for k in wanted}, strict=True)


def build_prefix_base(
    system: str, *, source: str | Path = "tiny-world", seed: int = 0
) -> tuple[VisionLanguageModel, PreTrainedTokenizerBase]:
    """The tiny base of ``system`` (``minigpt4`` or ``mplug-owl``) from the Flamingo at ``source`` (module
    docstring); frozen, in eval mode, like every loaded model."""
    from mmgpt.load import load
    from mmgpt.model.build import build_model

    flamingo, tokenizer = load(source)
    cfg = prefix_base_config(flamingo.describe(), system)
    torch.manual_seed(seed)
    model, tokenizer = build_model(cfg, tokenizer=tokenizer)
    copy_flamingo_parts(flamingo, model, resampler=system == "minigpt4")
    return model.eval(), tokenizer


def write_prefix_base(system: str, out: str | Path, *, source: str | Path = "tiny-world", seed: int = 0) -> Path:
    """:func:`build_prefix_base`, saved as a model directory ``mmgpt.load`` (and ``mmgpt train``) reads."""
    from mmgpt.model.checkpoints import save_pretrained

    model, tokenizer = build_prefix_base(system, source=source, seed=seed)
    return save_pretrained(model, tokenizer, out)
