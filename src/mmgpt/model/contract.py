"""The model contract: what every vision-language model offers the layers above ``model/``.

``generate``, ``chat``, ``train``, ``lora``, ``evaluate``, ``serve`` and the checkpoint writers use only what is
defined here, never a concrete architecture. Two fusion families implement it: :class:`~mmgpt.model.flamingo.
Flamingo` (images reach the LM through gated cross-attention; one ``<image>`` position per image) and prefix models
(image embeddings spliced into the LM's input sequence; 32, 64 or 65 positions per image).

A model answers:

- **images**: :meth:`embed_images` (pixels -> per-image features, computed once) and :meth:`encode_images`
  (a batch of rows -> :class:`Media`); :attr:`tokens_per_image` and :meth:`image_placeholders` (the ids an image
  becomes in the token sequence); :meth:`image_transform` (the preprocessing its vision encoder declares);
- **forward**: ``forward(input_ids, *, images | media, attention_mask, cache, use_cache) -> ModelOutput``,
  stateless: images, media and caches are arguments and return values, never state on modules;
- **caches**: :meth:`reusable_prefix` - which cached positions stay valid when a conversation changes (chat only
  asks); :class:`ModelCache` crops and selects rows for every kind;
- **parameters**: :meth:`parameter_group` (named groups: vision, resampler, connector, cross_attention, ...) from
  which ``trainable:`` presets (:attr:`TRAINABLE`), weight-decay groups and LoRA targets (:meth:`lora_modules`) are
  chosen - declared once, on the model;
- **saving**: :meth:`describe` (the config that rebuilds it without the original paths).

Legend: b batch, T tokens of this chunk, S tokens so far, m images, n features per image, d feature width.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmgpt.config import ModelConfig
from mmgpt.data.images import DEFAULT_MAX_PIXELS, ImageTransform
from mmgpt.model.cache import GrowingCache, Media, ModelCache, ModelOutput
from mmgpt.model.language import (
    lm_cache_argument,
    lm_modules,
    positions_from_mask,
    takes_position_ids,
    text_config_numbers,
)
from mmgpt.tokens import PromptFormat, SpecialTokenIds

# Parameter groups. Every parameter of every model belongs to exactly one; a model uses the ones it has.
VISION = "vision"  # the image encoder (a ViT)
RESAMPLER = "resampler"  # perceiver, Q-Former, abstractor: image tokens -> a fixed number of queries
CONNECTOR = "connector"  # prefix models: queries -> LM input embeddings (projection, appended learned tokens)
CROSS_ATTENTION = "cross_attention"  # Flamingo: the gated blocks' attention and its gate
CROSS_ATTENTION_FF = "cross_attention_ff"  # Flamingo: the gated blocks' feed-forward and its gate
EMBEDDINGS = "embeddings"  # the LM's input token embeddings
SELF_ATTENTION = "self_attention"  # the LM's self-attention projections
LM_MLP = "lm_mlp"  # the LM's feed-forward
LM_OTHER = "lm_other"  # the rest of the LM: norms, output head
GROUPS = (
    VISION,
    RESAMPLER,
    CONNECTOR,
    CROSS_ATTENTION,
    CROSS_ATTENTION_FF,
    EMBEDDINGS,
    SELF_ATTENTION,
    LM_MLP,
    LM_OTHER,
)


# What measures a model: (model, tokenizer) -> named figures (the trainer calls them at validation; the world's and
# the benchmarks' evaluators are ones).
Evaluator = Callable[["VisionLanguageModel", PreTrainedTokenizerBase], dict[str, float]]


class VisionLanguageModel(nn.Module, abc.ABC):
    """The base of every model kind; see the module docstring for what it offers.

    Subclasses set ``config``, ``special`` and ``vision_encoder`` (which declares its image transform), expose
    their HF causal LM as :attr:`language_model` with its decoder layers at :attr:`decoder_layers_path`, and
    implement the abstract members: :attr:`tokens_per_image`, :attr:`feature_shape`, :meth:`embed_images`,
    :meth:`run_language_model` (how the images reach the LM) and :meth:`part_groups` (a subclass that lacks one
    cannot be instantiated; Python's TypeError names it).
    """

    kind: ClassVar[str]
    # ``trainable:`` presets: name -> the groups that train. "full" (all but the vision encoder) and "all" exist
    # for every model.
    TRAINABLE: ClassVar[dict[str, tuple[str, ...]]] = {}

    config: ModelConfig
    special: SpecialTokenIds
    decoder_layers_path: str
    language_model: PreTrainedModel  # the HF causal LM (LoRA injects into it)
    vision_encoder: nn.Module  # declares image_transform(), width, image_size, tokens, describe()

    # ------------------------------------------------------------------ what it is made of
    @property
    def device(self) -> torch.device:
        return self.language_model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    @property
    def max_context(self) -> int | None:
        """The LM's maximum sequence length, when its config names one."""
        text = self.language_model.config.get_text_config()
        return getattr(text, "max_position_embeddings", None) or getattr(text, "max_seq_len", None)

    def describe(self) -> ModelConfig:
        """The config that rebuilds this model from numbers (saved as ``mmgpt.yaml``): the vision encoder's and
        the LM's architectures as numbers, no paths."""
        lm = dataclasses.replace(
            self.config.lm,
            path=None,
            hf_config=text_config_numbers(self.language_model),
            tokenizer="tokenizer",
            decoder_layers_path=self.decoder_layers_path,
        )
        return dataclasses.replace(self.config, vision=self.vision_encoder.describe(), lm=lm)

    def summary(self) -> str:
        """One line on how images reach the LM, for people (banners, the demo)."""
        return f"{self.kind}: {self.tokens_per_image} LM positions per image"

    # ------------------------------------------------------------------ images and prompts
    @property
    @abc.abstractmethod
    def tokens_per_image(self) -> int:
        """LM positions one image occupies (Flamingo: 1; prefix models: their number of image embeddings)."""

    def image_placeholders(self) -> tuple[int, ...]:
        """The ids one image becomes in the token sequence."""
        return (self.special.image,) * self.tokens_per_image

    @property
    def prompt_format(self) -> PromptFormat:
        """How conversations become tokens for this model: its prompt style and image placeholders."""
        return PromptFormat(style=self.config.prompt_style, image_tokens=self.image_placeholders())

    def image_transform(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageTransform:
        """The preprocessing of this model's vision encoder (size, mean/std, resize mode)."""
        return self.vision_encoder.image_transform(max_pixels=max_pixels)

    def never_generate(self) -> set[int]:
        """Vocabulary ids generation must never produce (an image placeholder, padding)."""
        return {t for t in (self.special.image, self.special.pad) if t is not None and t >= 0}

    @abc.abstractmethod
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] -> per-image features [N, n, d]: what the fusion consumes, computed once."""

    def encode_images(self, images: torch.Tensor, image_counts: torch.Tensor | None = None) -> Media:
        """images [b, m, 3, H, W] (or [b, m, 1, 3, H, W]) -> Media(features [b, m, n, d], counts [b]).

        ``image_counts`` [b]: real images per row (the rest is padding and is not encoded); default: all m.
        """
        if images.dim() == 6:
            if images.shape[2] != 1:
                raise ValueError(f"images have {images.shape[2]} frames each; the released models take exactly 1")
            images = images[:, :, 0]
        if images.dim() != 5:
            raise ValueError(
                f"images must have shape [batch, images, frames, 3, H, W] (or [batch, images, 3, H, W]); got a "
                f"{images.dim()}-d tensor of shape {tuple(images.shape)}"
            )
        b, m = images.shape[:2]
        size = self.image_transform().size
        if images.shape[2:] != (3, size, size):
            raise ValueError(
                f"images must be 3 x {size} x {size} each (the vision encoder's input); got "
                f"{tuple(images.shape[2:])} - preprocess with the model's image transform"
            )
        counts = torch.full((b,), m, dtype=torch.long) if image_counts is None else image_counts.long().cpu()
        if counts.shape != (b,) or bool((counts < 0).any()) or bool((counts > m).any()):
            raise ValueError(f"image_counts={counts.tolist()} must give, for each of the {b} rows, 0..{m} images")
        real = torch.arange(m)[None, :] < counts[:, None]  # [b, m]
        device = self.device
        features = None
        if bool(real.any()):
            encoded = self.embed_images(images[real].to(device))  # [N, n, d]
            features = encoded.new_zeros(b, m, *encoded.shape[1:])
            features[real.to(device)] = encoded
        else:
            n, d = self.feature_shape
            features = torch.zeros(b, m, n, d, device=device, dtype=self.dtype)
        return Media(features, counts.to(device))

    @property
    @abc.abstractmethod
    def feature_shape(self) -> tuple[int, int]:
        """(n, d) of one image's features, for media without any image."""

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
        """input_ids [b, T] -> logits [b, T, V] (and the cache to continue from, with ``use_cache``).

        Pass ``images`` (pixels) or ``media`` (already encoded) for a new sequence; a continuation passes the
        ``cache`` of the previous call (its media are reused unless ``media`` replaces them, e.g. when a
        conversation adds an image). ``attention_mask`` [b, T] marks real tokens of this chunk (left padding).
        """
        media, seen = self.resolve_media(input_ids, images=images, image_counts=image_counts, media=media, cache=cache)
        before = seen - (input_ids == self.special.image).sum(dim=1)
        full_mask, lm_kwargs = self.lm_arguments(input_ids, attention_mask, cache, use_cache)
        out = self.run_language_model(input_ids, media=media, before=before, lm_kwargs=lm_kwargs)
        name = lm_cache_argument(self.language_model)
        cache = ModelCache(getattr(out, name), media, seen, full_mask) if name in lm_kwargs else None
        return ModelOutput(out.logits, cache)

    @abc.abstractmethod
    def run_language_model(
        self, input_ids: torch.Tensor, *, media: Media | None, before: torch.Tensor, lm_kwargs: dict
    ):
        """The LM's output (logits, and the KV cache under the name in ``lm_kwargs``) for input_ids [b, T] with the
        images fused in: ``media`` what this chunk looks at, ``before`` [b] the image positions of earlier chunks,
        ``lm_kwargs`` the LM call's keyword arguments (:meth:`lm_arguments`: KV cache, mask, position ids)."""

    def resolve_media(
        self,
        input_ids: torch.Tensor,
        *,
        images: torch.Tensor | None,
        image_counts: torch.Tensor | None,
        media: Media | None,
        cache: ModelCache | None,
    ) -> tuple[Media | None, torch.Tensor]:
        """What a forward looks at: ``images`` encoded now, or ``media``, or the cache's; and the image positions
        [b] this chunk's ids then consume in total (checked against the images: a new sequence holds every image's
        placeholders, a continuation may not have reached them all)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, tokens]; got shape {tuple(input_ids.shape)}")
        b, device = input_ids.shape[0], input_ids.device
        if images is not None:
            if media is not None:
                raise ValueError("pass either images (pixels) or media (encoded images), not both")
            media = self.encode_images(images, image_counts)
        elif media is None and cache is not None:
            media = cache.media
        counts = media.counts.to(device) if media is not None else torch.zeros(b, dtype=torch.long, device=device)
        if counts.shape[0] != b:
            raise ValueError(f"the images are for {counts.shape[0]} rows but input_ids has {b} rows")
        before = cache.placeholders_seen.to(device) if cache is not None else torch.zeros_like(counts)
        seen = before + (input_ids == self.special.image).sum(dim=1)
        self.check_placeholders(seen, counts, complete=cache is None)
        return media, seen

    def lm_arguments(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: ModelCache | None, use_cache: bool
    ) -> tuple[torch.Tensor, dict]:
        """(the attention mask of every position so far [b, S], the keyword arguments of the LM call): the KV cache
        under the name the LM takes it, the mask only when something is padded, and position ids from the mask
        (left padding does not shift real tokens)."""
        device = input_ids.device
        chunk_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids)
        full_mask = chunk_mask if cache is None else torch.cat([cache.attention_mask.to(device), chunk_mask], 1)
        kv = cache.kv if cache is not None else (GrowingCache() if use_cache else None)
        kwargs: dict = {"use_cache": kv is not None}
        if kv is not None:
            kwargs[lm_cache_argument(self.language_model)] = kv
        if not bool(full_mask.all()):
            kwargs["attention_mask"] = full_mask
            if takes_position_ids(self.language_model):
                kwargs["position_ids"] = positions_from_mask(full_mask)[:, -input_ids.shape[1] :]
        return full_mask, kwargs

    def check_placeholders(self, seen: torch.Tensor, counts: torch.Tensor, *, complete: bool) -> None:
        """A new sequence must hold every image's placeholders; a continuation may not have reached them yet."""
        per = self.tokens_per_image
        needed = counts * per
        mismatch = (seen != needed) if complete else (seen > needed)
        if bool(mismatch.any()):
            row = int(mismatch.nonzero()[0, 0])
            if per == 1:
                raise ValueError(
                    f"row {row} has {int(seen[row])} <image> tokens but {int(counts[row])} images; each image needs "
                    f"exactly one <image> token (id {self.special.image}) in the text, in order"
                )
            raise ValueError(
                f"row {row} has {int(seen[row])} image positions but {int(counts[row])} images; each image needs "
                f"exactly {per} placeholder ids {self.special.image} in the tokens, in order (tokenise with the "
                "model's prompt_format)"
            )

    # ------------------------------------------------------------------ caches
    def reusable_prefix(
        self, old_ids: Sequence[int], old_images: Sequence[str], new_ids: Sequence[int], new_images: Sequence[str]
    ) -> int:
        """How many leading positions of a cache built for (old_ids, old_images) are valid for (new_ids,
        new_images); images are content keys in placeholder order.

        The default rule (prefix models): a position's state depends on the tokens up to it and on the images
        spliced at or before it, so it is the common prefix of the two sequences in which every image position
        also belongs to the same image."""
        per = self.tokens_per_image
        placeholder = self.special.image
        seen = 0
        for n, (a, b) in enumerate(zip(old_ids, new_ids)):  # noqa: B905 - the shorter one bounds the prefix
            if a != b:
                return n
            if a == placeholder:
                k = seen // per
                if k >= len(old_images) or k >= len(new_images) or old_images[k] != new_images[k]:
                    return n
                seen += 1
        return min(len(old_ids), len(new_ids))

    # ------------------------------------------------------------------ parameters
    @abc.abstractmethod
    def part_groups(self) -> dict[str, str]:
        """Top-level module name -> group, for the parts outside the LM (``{"vision_encoder": "vision", ...}``)."""

    def layer_groups(self) -> dict[str, str]:
        """Module name inside one decoder layer -> group: the LM family's self-attention and MLP projections (a
        model adds its own, e.g. Flamingo's gated blocks). Names are prefixes: ``self_attn.q_proj`` covers its
        weight, bias and LoRA matrices."""
        names = lm_modules(self.language_model)
        if names is None:
            return {}
        return {**dict.fromkeys(names.mlp, LM_MLP), **dict.fromkeys(names.self_attention, SELF_ATTENTION)}

    def parameter_group(self, name: str) -> str:
        """The group (one of GROUPS) of the parameter ``name`` (a key of ``named_parameters()``); LoRA matrices
        belong to the group of the module they adapt."""
        top, _, rest = name.partition(".")
        parts = self.part_groups()
        if top in parts:
            return parts[top]
        lm_attr = self.language_model_attribute
        if top != lm_attr:
            raise ValueError(f"parameter {name!r} is in no declared part of {type(self).__name__}")
        if name == self.input_embedding_name():
            return EMBEDDINGS
        layers = self.decoder_layers_path + "."
        if rest.startswith(layers):
            inside = rest[len(layers) :].split(".", 1)[1]  # drop the layer index
            for module, group in sorted(self.layer_groups().items(), key=lambda kv: -len(kv[0])):
                if inside == module or inside.startswith(module + "."):
                    return group
        return LM_OTHER

    @property
    def language_model_attribute(self) -> str:
        """The attribute under which the LM sits (its parameters are named ``{attribute}.{LM's own name}``)."""
        return next(name for name, module in self.named_children() if module is self.language_model)

    def input_embedding_name(self) -> str:
        weight = self.language_model.get_input_embeddings().weight
        prefix = self.language_model_attribute
        return next(f"{prefix}.{n}" for n, p in self.language_model.named_parameters() if p is weight)

    def group_parameters(self, groups: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
        wanted = set(groups)
        unknown = wanted - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown parameter group(s) {sorted(unknown)}; groups are {', '.join(GROUPS)}")
        return [(n, p) for n, p in self.named_parameters() if self.parameter_group(n) in wanted]

    def trainable_groups(self, preset: str) -> tuple[str, ...]:
        """The groups a ``trainable:`` preset trains ("full": all but the vision encoder; "all": everything)."""
        present = {self.parameter_group(n) for n, _ in self.named_parameters()}
        if preset == "all":
            return tuple(g for g in GROUPS if g in present)
        if preset == "full":
            return tuple(g for g in GROUPS if g in present and g != VISION)
        if preset not in self.TRAINABLE:
            names = ", ".join(["lora", "full", "all", *self.TRAINABLE])
            raise ValueError(f"trainable={preset!r} is not a preset of {type(self).__name__}; choose one of {names}")
        return self.TRAINABLE[preset]

    def lora_modules(self) -> dict[str, tuple[str, ...]]:
        """LoRA target group -> the ``nn.Linear`` module names inside one decoder layer it adapts (the LM
        family's self-attention and MLP; Flamingo adds its gated blocks). Empty for an LM family the project
        does not know: the LoRA config then names the modules."""
        names = lm_modules(self.language_model)
        return {} if names is None else {SELF_ATTENTION: names.self_attention, LM_MLP: names.mlp}
