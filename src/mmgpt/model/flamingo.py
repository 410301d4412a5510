"""Flamingo: a frozen ViT, a Perceiver Resampler, and gated cross-attention blocks inside any HF causal LM.

The cross-attention kind of the model contract (``contract.py``): each image is one ``<image>`` token in the text;
its perceiver latents are cross-attention memory of the gated blocks (``fusion/gated_blocks.py``), which the
media mask (``fusion/media_mask.py``) tells which token sees which image. ``forward`` is stateless: images, media
and caches are arguments and return values, never state on modules, so one instance serves many threads and
conversations at once.

Legend: b batch, T tokens of this chunk, S tokens so far (cache + chunk), m images, p patches, n latents,
d_v vision width, V vocabulary.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from transformers import PreTrainedModel

from mmgpt.config import ModelConfig
from mmgpt.model.build import Backbones, device_of
from mmgpt.model.contract import (
    CROSS_ATTENTION,
    CROSS_ATTENTION_FF,
    EMBEDDINGS,
    RESAMPLER,
    VISION,
    Media,
    VisionLanguageModel,
)
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.model.fusion.cross_attention import GatedCrossAttentionBlock
from mmgpt.model.fusion.gated_blocks import (
    BLOCK_NAME,
    CrossAttentionInputs,
    cross_attention_inputs,
    insert_gated_blocks,
)
from mmgpt.model.fusion.media_mask import attend_index, reusable_prefix
from mmgpt.model.language import decoder_layers, resize_embeddings
from mmgpt.model.resamplers.perceiver import PerceiverResampler
from mmgpt.tokens import SpecialTokenIds, add_special_tokens

CROSS_ATTENTION_MODULES = (f"{BLOCK_NAME}.attn.to_q", f"{BLOCK_NAME}.attn.to_kv", f"{BLOCK_NAME}.attn.to_out")
CROSS_ATTENTION_FF_MODULES = (f"{BLOCK_NAME}.ff.1", f"{BLOCK_NAME}.ff.3")


class Flamingo(VisionLanguageModel):
    """Vision-language model with cross-attention fusion (OpenFlamingo, and MultiModal-GPT on top of it)."""

    kind = "flamingo"
    # OpenFlamingo pretraining trains the perceiver, the gated blocks and the input embeddings.
    TRAINABLE: ClassVar[dict[str, tuple[str, ...]]] = {
        "openflamingo": (RESAMPLER, CROSS_ATTENTION, CROSS_ATTENTION_FF, EMBEDDINGS)
    }

    def __init__(
        self,
        *,
        vision_encoder: VisionEncoder,
        perceiver: PerceiverResampler,
        lang_encoder: PreTrainedModel,
        special: SpecialTokenIds,
        config: ModelConfig,
    ):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.perceiver = perceiver
        self.lang_encoder = lang_encoder
        self.special = special
        self.config = config
        cross_attention = config.cross_attention
        self.decoder_layers_path, layers = decoder_layers(lang_encoder, config.lm.decoder_layers_path)
        dim = lang_encoder.config.get_text_config().hidden_size
        self.block_layers = insert_gated_blocks(
            layers,
            every_n_layers=cross_attention.every_n_layers,
            make_block=lambda: GatedCrossAttentionBlock(
                dim=dim,
                dim_visual=vision_encoder.width,
                heads=cross_attention.heads,
                dim_head=cross_attention.dim_head,
                ff_mult=cross_attention.ff_mult,
            ),
        )
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ parts
    @property
    def language_model(self) -> PreTrainedModel:
        return self.lang_encoder

    def gated_blocks(self) -> dict[int, GatedCrossAttentionBlock]:
        layers = self.lang_encoder.get_submodule(self.decoder_layers_path)
        return {i: getattr(layers[i], BLOCK_NAME) for i in self.block_layers}

    @property
    def device(self) -> torch.device:
        return self.perceiver.latents.device

    def part_groups(self) -> dict[str, str]:
        return {"vision_encoder": VISION, "perceiver": RESAMPLER}

    def layer_groups(self) -> dict[str, str]:
        groups = super().layer_groups()
        for name in ("attn", "attn_gate"):
            groups[f"{BLOCK_NAME}.{name}"] = CROSS_ATTENTION
        for name in ("ff", "ff_gate"):
            groups[f"{BLOCK_NAME}.{name}"] = CROSS_ATTENTION_FF
        return groups

    def lora_modules(self) -> dict[str, tuple[str, ...]]:
        return {
            **super().lora_modules(),
            CROSS_ATTENTION: CROSS_ATTENTION_MODULES,
            CROSS_ATTENTION_FF: CROSS_ATTENTION_FF_MODULES,
        }

    def summary(self) -> str:
        cross_attention = self.config.cross_attention
        return (
            f"gated cross-attention before decoder layers {self.block_layers}, {self.perceiver.num_latents} "
            f"latents per image, media mask {cross_attention.media_mask!r}"
            + (", language-only bypass" if cross_attention.language_only_bypass else "")
        )

    # ------------------------------------------------------------------ architecture changes before training
    @torch.no_grad()
    def set_gates(self, value: float) -> None:
        """Set every tanh gate to ``value``. Fresh gates are 0, so a pretrained LM starts unchanged; a ViT trained
        from scratch learns only through the gates, so pretraining from random weights needs them open."""
        for block in self.gated_blocks().values():
            block.attn_gate.fill_(value)
            block.ff_gate.fill_(value)

    def grow_latents(self, total: int, *, seed: int = 0) -> None:
        """Give the perceiver ``total`` latents: its own kept, the new ones drawn from ``seed``
        (:meth:`PerceiverResampler.add_latents`); the config follows, so the model saves and loads as grown."""
        have = self.perceiver.num_latents
        if total < have:
            raise ValueError(f"the perceiver has {have} latents; it can grow to {total} only if {total} >= {have}")
        self.perceiver.add_latents(total - have, generator=torch.Generator().manual_seed(seed))
        perceiver = dataclasses.replace(self.config.perceiver, num_latents=total)
        self.config = dataclasses.replace(self.config, perceiver=perceiver)

    # ------------------------------------------------------------------ images
    @property
    def tokens_per_image(self) -> int:
        return 1

    @property
    def feature_shape(self) -> tuple[int, int]:
        return self.perceiver.num_latents, self.vision_encoder.width

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] -> perceiver latents [N, n, d_v]."""
        patches = self.vision_encoder(pixels.to(self.device)).to(self.perceiver.latents.dtype)  # [N, p, d_v]
        return self.perceiver(patches[:, None])[:, 0]

    # ------------------------------------------------------------------ forward
    def run_language_model(
        self, input_ids: torch.Tensor, *, media: Media | None, before: torch.Tensor, lm_kwargs: dict
    ):
        """The LM with each gated block given, through ``cross_attention_inputs``, the media and which image each
        token sees (the media mask)."""
        counts = media.counts.to(input_ids.device) if media is not None else torch.zeros_like(before)
        cross_attention = self.config.cross_attention
        index = attend_index(
            input_ids,
            image_token_id=self.special.image,
            image_counts=counts,
            media_mask=cross_attention.media_mask,
            images_before=before,
        )
        # When no token of the chunk sees an image (decoding under "following", text-only rows), the attention
        # output is zero: skip it (and the media projections) instead of computing zeros.
        inputs = CrossAttentionInputs(
            media=media if media is not None and bool((index > 0).any()) else None,
            index=index,
            bypass=(counts == 0) if cross_attention.language_only_bypass else None,
            checkpoint=self.gradient_checkpointing and self.training,
        )
        with cross_attention_inputs(inputs):
            return self.lang_encoder(input_ids=input_ids, **lm_kwargs)

    # ------------------------------------------------------------------ caches
    def reusable_prefix(
        self, old_ids: Sequence[int], old_images: Sequence[str], new_ids: Sequence[int], new_images: Sequence[str]
    ) -> int:
        cross_attention = self.config.cross_attention
        return reusable_prefix(
            old_ids,
            old_images,
            new_ids,
            new_images,
            image_token_id=self.special.image,
            media_mask=cross_attention.media_mask,
            bypass=cross_attention.language_only_bypass,
        )


# ---------------------------------------------------------------------------------------------- builders
def build_flamingo(
    *,
    cfg: ModelConfig,
    vision_encoder: VisionEncoder,
    lang_encoder: PreTrainedModel,
    special: SpecialTokenIds,
    vocab_size: int,
    init_fusion: bool = True,
) -> Flamingo:
    """Assemble a Flamingo from a vision encoder and an LM (new perceiver and gated blocks, embeddings resized).

    Each gated block is put on its decoder layer's device and the perceiver on the vision encoder's, so an LM
    spread over several GPUs (a device map) keeps every block beside its layer. ``init_fusion=False`` allocates
    the perceiver and blocks without initialising them, directly in the LM's dtype on their device: for a
    checkpoint that fills them (the 9B model's 1.2B fusion parameters are never built on the CPU in fp32).
    """
    dtype = next(lang_encoder.parameters()).dtype
    resize_embeddings(lang_encoder, vocab_size)
    with torch.device("meta") if not init_fusion else contextlib.nullcontext():
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
    layers = lang_encoder.get_submodule(model.decoder_layers_path)
    placements = [(model.perceiver, device_of(vision_encoder))]
    placements += [(block, device_of(layers[i])) for i, block in model.gated_blocks().items()]
    for module, device in placements:
        module.to(dtype)
        if not init_fusion and device.type != "meta":
            module.to_empty(device=device)  # no buffers in these modules: nothing is left uninitialised but weights
        else:
            module.to(device)
    model.requires_grad_(False)
    return model


def build_flamingo_model(cfg: ModelConfig, backbones: Backbones, *, init_weights: bool) -> Flamingo:
    """Flamingo from its backbones: OpenFlamingo's special tokens added to the tokenizer, embeddings resized."""
    special = add_special_tokens(backbones.tokenizer)
    return build_flamingo(
        cfg=cfg,
        vision_encoder=backbones.vision_encoder,
        lang_encoder=backbones.language_model,
        special=special,
        vocab_size=len(backbones.tokenizer),
        init_fusion=init_weights,
    )
