"""Flamingo: a frozen ViT, a Perceiver Resampler, and gated cross-attention blocks inside any HF causal LM.

``forward(input_ids, images=..., cache=...) -> logits`` is stateless: images, media and caches are arguments
and return values, never state on modules, so one instance serves many threads and conversations at once.

Legend: b batch, T tokens of this chunk, S tokens so far (cache + chunk), m images, F frames (1),
p patches, n latents, d_v vision width, V vocabulary.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from mmgpt.config import ModelConfig
from mmgpt.model.encoders.clip import VisionEncoder
from mmgpt.model.fusion.cross_attention import GatedCrossAttentionBlock, attend_index
from mmgpt.model.fusion.gated_blocks import (
    BLOCK_NAME,
    CrossAttentionInputs,
    Media,
    cross_attention_inputs,
    insert_gated_blocks,
)
from mmgpt.model.language import decoder_layers
from mmgpt.model.resamplers.perceiver import PerceiverResampler
from mmgpt.tokens import SpecialTokenIds


@dataclass
class FlamingoCache:
    """What a later call needs to continue a sequence: the LM's KV cache, the media, and the running counts.

    kv: the HF cache of the LM's self-attention; media: encoded images (with their cached cross-attention
    keys/values); images_seen [b]: ``<image>`` tokens consumed so far; attention_mask [b, S]: 1 for real tokens.
    """

    kv: DynamicCache
    media: Media | None
    images_seen: torch.Tensor
    attention_mask: torch.Tensor

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    def select(self, rows: torch.Tensor) -> FlamingoCache:
        """Keep (or repeat) the given batch rows, e.g. to drop finished rows or sample several continuations."""
        kv = DynamicCache()
        for i, layer in enumerate(self.kv.layers):
            if layer.keys is not None and layer.keys.numel():
                kv.update(layer.keys[rows.to(layer.keys.device)], layer.values[rows.to(layer.values.device)], i)
        media = self.media.select(rows) if self.media is not None else None
        return FlamingoCache(kv, media, self.images_seen[rows], self.attention_mask[rows])


@dataclass
class FlamingoOutput:
    logits: torch.Tensor  # [b, T, V]
    cache: FlamingoCache | None


def lm_cache_argument(lm: nn.Module) -> str:
    """The name under which ``lm.forward`` takes (and its output returns) the KV cache: ``cache`` since
    transformers 5.24 (``past_key_values`` warns at every call there and goes in 5.40), ``past_key_values``
    before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


class Flamingo(nn.Module):
    """Vision-language model with cross-attention fusion (OpenFlamingo, and MultiModal-GPT on top of it)."""

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
        self._lm_takes_position_ids = "position_ids" in inspect.signature(lang_encoder.forward).parameters
        self._lm_cache_argument = lm_cache_argument(lang_encoder)
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ parts
    def gated_blocks(self) -> dict[int, GatedCrossAttentionBlock]:
        layers = self.lang_encoder.get_submodule(self.decoder_layers_path)
        return {i: getattr(layers[i], BLOCK_NAME) for i in self.block_layers}

    @property
    def device(self) -> torch.device:
        return self.perceiver.latents.device

    def grow_latents(self, total: int, *, seed: int = 0) -> None:
        """Give the perceiver ``total`` latents: its own kept, the new ones drawn from ``seed``
        (:meth:`PerceiverResampler.add_latents`); the config follows, so the model saves and loads as grown."""
        have = self.perceiver.num_latents
        if total < have:
            raise ValueError(f"the perceiver has {have} latents; it can grow to {total} only if {total} >= {have}")
        self.perceiver.add_latents(total - have, generator=torch.Generator().manual_seed(seed))
        self.config = replace(self.config, perceiver=replace(self.config.perceiver, num_latents=total))

    # ------------------------------------------------------------------ images
    def encode_images(self, images: torch.Tensor, image_counts: torch.Tensor | None = None) -> Media:
        """images [b, m, F, 3, H, W] (or [b, m, 3, H, W]) -> Media(latents [b, m, n, d_v]).

        ``image_counts`` [b]: real images per row (the rest is padding and is not encoded); default: all m.
        """
        if images.dim() == 5:
            images = images.unsqueeze(2)
        if images.dim() != 6:
            raise ValueError(
                f"images must have shape [batch, images, frames, 3, H, W] (or [batch, images, 3, H, W]); got a "
                f"{images.dim()}-d tensor of shape {tuple(images.shape)}"
            )
        b, m, f = images.shape[:3]
        if f != 1:
            raise ValueError(f"images have {f} frames per image; released Flamingo models take exactly 1")
        size = self.vision_encoder.image_size
        if images.shape[3:] != (3, size, size):
            raise ValueError(
                f"images must be 3 x {size} x {size} each (the vision encoder's input); got "
                f"{tuple(images.shape[3:])} - preprocess with the model's image transform"
            )
        counts = torch.full((b,), m, dtype=torch.long) if image_counts is None else image_counts.long().cpu()
        if counts.shape != (b,) or bool((counts < 0).any()) or bool((counts > m).any()):
            raise ValueError(f"image_counts={counts.tolist()} must give, for each of the {b} rows, 0..{m} images")
        real = torch.arange(m)[None, :] < counts[:, None]  # [b, m]
        latents = torch.zeros(
            b,
            m,
            self.perceiver.num_latents,
            self.vision_encoder.width,
            device=self.device,
            dtype=self.perceiver.latents.dtype,
        )
        if bool(real.any()):
            pixels = images[real].flatten(0, 1).to(self.device)  # [N*F, 3, H, W]
            patches = self.vision_encoder(pixels).to(latents.dtype)  # [N*F, p, d_v]
            patches = patches.unflatten(0, (-1, f)).flatten(1, 2)  # [N, F*p, d_v]
            latents[real.to(self.device)] = self.perceiver(patches[:, None])[:, 0]
        return Media(latents, counts.to(self.device))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        images: torch.Tensor | None = None,
        image_counts: torch.Tensor | None = None,
        media: Media | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: FlamingoCache | None = None,
        use_cache: bool = False,
    ) -> FlamingoOutput:
        """input_ids [b, T] -> logits [b, T, V].

        Pass ``images`` (pixels) or ``media`` (already encoded) for a new sequence; a continuation passes the
        ``cache`` returned by the previous call (its media are reused unless ``media`` replaces them, e.g. when
        a conversation adds an image). ``attention_mask`` [b, T] marks real tokens of this chunk (left padding).
        """
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
        images_before = cache.images_seen.to(device) if cache is not None else torch.zeros_like(counts)
        images_seen = images_before + (input_ids == self.special.image).sum(dim=1)
        self._check_image_tokens(images_seen, counts, complete=cache is None)

        index = attend_index(
            input_ids,
            image_token_id=self.special.image,
            image_counts=counts,
            media_mask=self.config.cross_attention.media_mask,
            images_before=images_before,
        )
        bypass = (counts == 0) if self.config.cross_attention.language_only_bypass else None
        chunk_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids)
        full_mask = chunk_mask if cache is None else torch.cat([cache.attention_mask.to(device), chunk_mask], 1)
        kv = cache.kv if cache is not None else (DynamicCache() if use_cache else None)
        lm_kwargs = {} if kv is None else {self._lm_cache_argument: kv}
        padded = not bool(full_mask.all())
        if padded and self._lm_takes_position_ids:
            positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)
            lm_kwargs["position_ids"] = positions[:, -input_ids.shape[1] :]
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
            new_cache = FlamingoCache(getattr(out, self._lm_cache_argument), media, images_seen, full_mask)
        return FlamingoOutput(out.logits, new_cache)

    def _check_image_tokens(self, seen: torch.Tensor, counts: torch.Tensor, *, complete: bool) -> None:
        # A new sequence must use every image; a continuation may not have reached the later ones yet.
        mismatch = (seen != counts) if complete else (seen > counts)
        if bool(mismatch.any()):
            row = int(mismatch.nonzero()[0, 0])
            raise ValueError(
                f"row {row} has {int(seen[row])} <image> tokens but {int(counts[row])} images; each image needs "
                f"exactly one <image> token (id {self.special.image}) in the text, in order"
            )
