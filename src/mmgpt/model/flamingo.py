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

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from transformers import DynamicCache, PreTrainedModel

from mmgpt.config import ModelConfig
from mmgpt.model.contract import (
    CROSS_ATTENTION,
    CROSS_ATTENTION_FF,
    EMBEDDINGS,
    RESAMPLER,
    VISION,
    Media,
    ModelCache,
    ModelOutput,
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
from mmgpt.model.language import (
    decoder_layers,
    lm_cache_argument,
    positions_from_mask,
    takes_position_ids,
    text_config_numbers,
)
from mmgpt.model.resamplers.perceiver import PerceiverResampler
from mmgpt.tokens import SpecialTokenIds

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
        self._lm_takes_position_ids = takes_position_ids(lang_encoder)
        self._lm_cache_argument = lm_cache_argument(lang_encoder)
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

    def describe(self) -> ModelConfig:
        lm = dataclasses.replace(
            self.config.lm,
            path=None,
            hf_config=text_config_numbers(self.lang_encoder),
            tokenizer="tokenizer",
            decoder_layers_path=self.decoder_layers_path,
        )
        return dataclasses.replace(self.config, vision=self.vision_encoder.describe(), lm=lm)

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
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        images: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        media: Media | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: ModelCache | None = None,
        use_cache: bool = False,
    ) -> ModelOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens]; got shape {tuple(input_ids.shape)}")
        b = input_ids.shape[0]
        if images is not None:
            if media is not None:
                raise ValueError("pass either images (pixels) or media (encoded images), not both")
            media = self.encode_images(images, image_counts)
        elif media is None and cache is not None:
            media = cache.media
        device = input_ids.device
        counts = media.counts.to(device) if media is not None else torch.zeros(b, dtype=torch.long, device=device)
        if counts.shape[0] != b:
            raise ValueError(f"the images are for {counts.shape[0]} rows but input_ids has {b} rows")
        images_before = cache.placeholders_seen.to(device) if cache is not None else torch.zeros_like(counts)
        images_seen = images_before + (input_ids == self.special.image).sum(dim=1)
        self.check_placeholders(images_seen, counts, complete=cache is None)

        cross_attention = self.config.cross_attention
        index = attend_index(
            input_ids,
            image_token_id=self.special.image,
            image_counts=counts,
            media_mask=cross_attention.media_mask,
            images_before=images_before,
        )
        bypass = (counts == 0) if cross_attention.language_only_bypass else None
        chunk_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids)
        full_mask = chunk_mask if cache is None else torch.cat([cache.attention_mask.to(device), chunk_mask], 1)
        kv = cache.kv if cache is not None else (DynamicCache() if use_cache else None)
        lm_kwargs = {} if kv is None else {self._lm_cache_argument: kv}
        padded = not bool(full_mask.all())
        if padded and self._lm_takes_position_ids:
            lm_kwargs["position_ids"] = positions_from_mask(full_mask)[:, -input_ids.shape[1] :]
        # When no token of the chunk sees an image (decoding under "following", text-only rows), the attention
        # output is zero: skip it (and the media projections) instead of computing zeros.
        attended = media if media is not None and bool((index > 0).any()) else None
        inputs = CrossAttentionInputs(
            media=attended, index=index, bypass=bypass, checkpoint=self.gradient_checkpointing and self.training
        )
        with cross_attention_inputs(inputs):
            out = self.lang_encoder(
                input_ids=input_ids,
                attention_mask=full_mask if padded else None,
                use_cache=kv is not None,
                **lm_kwargs,
            )
        new_cache = None
        if kv is not None:
            new_cache = ModelCache(getattr(out, self._lm_cache_argument), media, images_seen, full_mask)
        return ModelOutput(out.logits, new_cache)

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
