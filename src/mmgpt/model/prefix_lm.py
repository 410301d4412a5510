"""PrefixLM: a vision encoder, a resampler and a connector whose output is spliced into any HF causal LM's input.

The prefix kind of the model contract (``contract.py``): MiniGPT-4 (EVA ViT-g -> Q-Former -> ``llama_proj`` ->
Vicuna; 32 positions per image) and mPLUG-Owl (CLIP ViT -> visual abstractor -> ``visual_fc`` + ``vit_eos`` ->
LLaMA; 65 positions). Images become ``tokens_per_image`` positions of the LM's input sequence
(``fusion/prefix.py``), so everything after the prefill is the plain LM with its KV cache; images of a later chat
turn are spliced into that turn's chunk. ``forward`` is stateless, like Flamingo's.

Legend: b batch, T tokens of this chunk, S tokens so far, m images, p image tokens, q queries, n LM positions per
image, d widths, D the LM width, V vocabulary.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel

from mmgpt.config import ModelConfig, PrefixConfig
from mmgpt.model.build import Backbones, device_of, no_init
from mmgpt.model.contract import CONNECTOR, RESAMPLER, VISION, Media, VisionLanguageModel
from mmgpt.model.fusion.prefix import Connector, splice_images
from mmgpt.model.language import decoder_layers
from mmgpt.model.resamplers.abstractor import VisualAbstractor
from mmgpt.model.resamplers.patch_concat import PatchConcat
from mmgpt.model.resamplers.perceiver import PerceiverResampler
from mmgpt.model.resamplers.qformer import QFormerResampler, qformer_config
from mmgpt.tokens import SpecialTokenIds, prefix_special_ids


class PrefixLM(VisionLanguageModel):
    """Vision-language model with prefix fusion (MiniGPT-4, mPLUG-Owl). Parameters: ``vision_encoder.*``,
    ``resampler.*``, ``connector.{proj, end_tokens}``, ``language_model.*`` (the LM's own names)."""

    kind = "prefix"
    # MiniGPT-4 trains only the projection (both stages); mPLUG-Owl's stage 1 trains the visual side with the LM
    # frozen.
    TRAINABLE: ClassVar[dict[str, tuple[str, ...]]] = {
        "projection": (CONNECTOR,),
        "visual": (VISION, RESAMPLER, CONNECTOR),
    }

    def __init__(
        self,
        *,
        vision_encoder: nn.Module,
        resampler: nn.Module,
        connector: Connector,
        language_model: PreTrainedModel,
        special: SpecialTokenIds,
        config: ModelConfig,
    ):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.resampler = resampler
        self.connector = connector
        self.language_model = language_model
        self.special = special
        self.config = config
        self.decoder_layers_path, _ = decoder_layers(language_model, config.lm.decoder_layers_path)
        self.gradient_checkpointing = False
        # n: the resampler's queries plus the connector's end tokens.
        self._per_image = resampled_shape(resampler, vision_encoder)[0] + connector.extra

    # ------------------------------------------------------------------ parts
    def part_groups(self) -> dict[str, str]:
        return {"vision_encoder": VISION, "resampler": RESAMPLER, "connector": CONNECTOR}

    def summary(self) -> str:
        resampler = self.config.prefix.resampler
        return f"{self.tokens_per_image} LM input positions per image ({resampler}, then a projection into the LM)"

    # ------------------------------------------------------------------ images
    @property
    def tokens_per_image(self) -> int:
        return self._per_image

    @property
    def feature_shape(self) -> tuple[int, int]:
        return self._per_image, self.connector.proj.out_features

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] -> LM input embeddings [N, n, D]."""
        tokens = self.vision_encoder(pixels.to(self.device))  # [N, p, d_v]
        return self.connector(self.resampler(tokens))

    # ------------------------------------------------------------------ forward
    def run_language_model(
        self, input_ids: torch.Tensor, *, media: Media | None, before: torch.Tensor, lm_kwargs: dict
    ):
        """The LM on the chunk's input embeddings, each image position holding its image's embedding."""
        is_image = input_ids == self.special.image
        embed = self.language_model.get_input_embeddings()
        embeddings = embed(input_ids.masked_fill(is_image, 0).to(embed.weight.device))
        if bool(is_image.any()):
            embeddings = splice_images(embeddings, is_image.to(embeddings.device), media.features, before)
        return self.language_model(inputs_embeds=embeddings, **lm_kwargs)


class PerceiverQueries(PerceiverResampler):
    """OpenFlamingo's Perceiver Resampler as a prefix model's resampler: image tokens [N, p, d_v] -> latents
    [N, q, d_v] (q = its latents). Parameter names are the perceiver's own, so a Flamingo's pretrained perceiver
    loads unchanged (``flamingo.perceiver.state_dict()``)."""

    @property
    def num_queries(self) -> int:
        return self.num_latents

    @property
    def width(self) -> int:
        return self.latents.shape[1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens[:, None])[:, 0]


# ---------------------------------------------------------------------------------------------- builders
def resampled_shape(resampler: nn.Module, vision_encoder: nn.Module) -> tuple[int, int]:
    """(q, d) of what ``resampler`` makes of one image of ``vision_encoder``: its learned queries and their width,
    or, for PatchConcat (no parameters), the patch groups and their width, which follow from the encoder's."""
    if isinstance(resampler, PatchConcat):
        return resampler.output_tokens(vision_encoder.tokens), resampler.output_width(vision_encoder.width)
    return resampler.num_queries, resampler.width


def build_resampler(cfg: PrefixConfig, *, vision_width: int) -> nn.Module:
    """The prefix model's resampler: image tokens [N, p, d_v] -> queries [N, q, d]."""
    if cfg.resampler == "qformer":
        q = cfg.qformer
        return QFormerResampler(
            qformer_config(
                hidden=q.hidden,
                layers=q.layers,
                heads=q.heads,
                intermediate=q.intermediate,
                encoder_width=vision_width,
                cross_attention_every=q.cross_attention_every,
                eps=q.eps,
                queries=q.queries,
            )
        )
    if cfg.resampler == "abstractor":
        a = cfg.abstractor
        return VisualAbstractor(
            dim=a.dim,
            layers=a.layers,
            heads=a.heads,
            intermediate=a.intermediate,
            queries=a.queries,
            vision_width=vision_width,
            eps=a.eps,
            ffn_eps=a.ffn_eps,
            dropout=a.dropout,
        )
    if cfg.resampler == "perceiver":
        p = cfg.perceiver
        return PerceiverQueries(
            dim=vision_width,
            depth=p.depth,
            heads=p.heads,
            dim_head=p.dim_head,
            num_latents=p.num_latents,
            ff_mult=p.ff_mult,
        )
    return PatchConcat(group=cfg.patch_group, drop_cls=True)


def build_prefix_model(cfg: ModelConfig, backbones: Backbones, *, init_weights: bool) -> PrefixLM:
    """A prefix model from its backbones: nothing is added to the tokenizer or the LM's vocabulary (images are
    IMAGE_POSITION runs); the resampler and connector go beside the vision encoder, in the LM's dtype."""
    lm, vision = backbones.language_model, backbones.vision_encoder
    rows = lm.get_input_embeddings().weight.shape[0]
    if len(backbones.tokenizer) > rows:
        raise ValueError(
            f"the tokenizer has {len(backbones.tokenizer)} tokens but the LM's embedding table {rows} rows; give the "
            "LM its own tokenizer (a prefix model adds no token)"
        )
    dtype = next(lm.parameters()).dtype
    with no_init(not init_weights), torch.device(device_of(vision)):
        resampler = build_resampler(cfg.prefix, vision_width=vision.width)
        connector = Connector(
            resampled_shape(resampler, vision)[1],
            lm.get_input_embeddings().weight.shape[1],
            bias=cfg.prefix.projection_bias,
            end_tokens=cfg.prefix.end_tokens,
        )
    return PrefixLM(  # build_model freezes it
        vision_encoder=vision,
        resampler=resampler.to(dtype),
        connector=connector.to(dtype),
        language_model=lm,
        special=prefix_special_ids(backbones.tokenizer),
        config=cfg,
    )
