"""EvaVisionEncoder: BLIP-2's frozen EVA-CLIP ViT-g/14 followed by ``ln_vision`` (MiniGPT-4 v1).

The ViT is transformers' ``Blip2VisionModel`` (prefix-systems.md section C: the same network as LAVIS'
``VisionTransformer`` from ``create_eva_vit_g``): patch 14, width 1408, 16 heads of 88, MLP 6144 with exact GELU,
pre-LN blocks with eps 1e-6, q and v biases (k bias fixed at zero), no final norm of its own, and 39 blocks: BLIP-2
uses the penultimate block of the 40-block EVA-CLIP tower, so ``eva_vit_g.pth``'s last block is never built.

BLIP-2 then applies a separate ``ln_vision = LayerNorm(1408)`` with PyTorch's default eps 1e-5 to all 257 tokens
(CLS kept). HF's ``post_layernorm`` is that layer in the same place (it normalises ``last_hidden_state``), but HF
builds it with the config eps (1e-6), so we set 1e-5 explicitly; with 1e-6 the features differ by ~1e-6 relative.
LAVIS' ``ln_vision`` computes in fp32 and casts back; torch's LayerNorm kernels for fp16/bf16 accumulate in fp32
too, so running ``post_layernorm`` in the model dtype gives the same result up to output rounding.

Weights come from two files (``mmgpt.model.checkpoints.minigpt4``): the ViT from ``eva_vit_g.pth``,
``ln_vision`` from ``blip2_pretrained_flant5xxl.pth`` (BLIP-2 trained it; MiniGPT-4's LLaMA-2 release, which has
no Q-Former, never loads it and uses the untrained ``ln_vision``: weight 1, bias 0).

Preprocessing (MiniGPT-4's ``Blip2ImageEvalProcessor``): ``Resize((224, 224), bicubic)`` - a squash, no crop -
then CLIP's mean/std; exposed as ``mean``, ``std``, ``resize`` so the image transform can be built from here.

Legend: N images, p tokens (patches + CLS), d width.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2VisionConfig, Blip2VisionModel

from mmgpt.config import VisionConfig
from mmgpt.data.images import CLIP_MEAN, CLIP_STD, DEFAULT_MAX_PIXELS, ImageTransform

LN_VISION_EPS = 1e-5  # BLIP-2's ln_vision: nn.LayerNorm's default eps, not the ViT's 1e-6


def eva_vision_config(
    *,
    image_size: int = 224,
    patch_size: int = 14,
    width: int = 1408,
    layers: int = 39,
    heads: int = 16,
    mlp_dim: int = 6144,
    eps: float = 1e-6,
    ln_vision_eps: float = LN_VISION_EPS,
) -> Blip2VisionConfig:
    """The EVA ViT-g/14 of BLIP-2 (defaults: the released size) as a ``Blip2VisionConfig``, built from numbers.

    ``layers`` is the number of blocks built (39 for BLIP-2 / MiniGPT-4, although ``eva_vit_g.pth`` holds 40);
    ``eps`` is the blocks' LayerNorm eps; ``ln_vision_eps`` the final ``ln_vision`` / ``post_layernorm`` eps, kept on
    the config as an extra attribute. Attention runs through SDPA (``Blip2VisionModel`` supports sdpa, eager,
    flash and flex); the softmax scale is head_dim ** -0.5 as in LAVIS.
    """
    if width % heads:
        raise ValueError(f"EVA ViT width {width} is not divisible by heads={heads}; pick heads that divide it")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    config = Blip2VisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp_dim,
        hidden_act="gelu",  # exact (erf) GELU: LAVIS' nn.GELU
        layer_norm_eps=eps,
        qkv_bias=True,
        attention_dropout=0.0,
        ln_vision_eps=ln_vision_eps,
    )
    config._attn_implementation = "sdpa"
    return config


class EvaVisionEncoder(nn.Module):
    """pixels [N, 3, H, W] -> tokens [N, p, d] = ``ln_vision(EVA(pixels))`` with CLS first (p = 257 at 224 px;
    ``keep_cls=False`` drops it: 256).

    Frozen and in eval mode, as MiniGPT-4 keeps it (``freeze_vit``): parameters do not require grad, and
    ``train()`` leaves the ViT in eval mode unless someone makes its parameters trainable.
    """

    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize: str = "squash"  # Resize((size, size), bicubic): aspect ratio not kept, nothing cropped

    def __init__(self, config: Blip2VisionConfig, *, keep_cls: bool = True):
        super().__init__()
        self.keep_cls = keep_cls  # MiniGPT-4 keeps CLS (PatchConcat drops it itself, after ln_vision)
        if config.hidden_act != "gelu":
            raise ValueError(
                f"EVA ViT config has hidden_act={config.hidden_act!r}; EVA-CLIP uses exact GELU ('gelu'); build "
                "the config with eva_vision_config()"
            )
        self.model = Blip2VisionModel(config)
        # HF builds post_layernorm with the blocks' eps (1e-6); BLIP-2's ln_vision has 1e-5.
        self.model.post_layernorm.eps = getattr(config, "ln_vision_eps", LN_VISION_EPS)
        self.model.requires_grad_(False)
        self.model.eval()

    @classmethod
    def from_numbers(cls, **numbers) -> EvaVisionEncoder:
        """``EvaVisionEncoder(eva_vision_config(**numbers))``: the builder tests and presets call."""
        return cls(eva_vision_config(**numbers))

    @classmethod
    def from_config(cls, cfg: VisionConfig) -> EvaVisionEncoder:
        """From our ``VisionConfig`` (``kind: eva``); ``final_norm`` must be ``post_layernorm`` (ln_vision is part
        of BLIP-2's features) and ``final_norm_eps`` 1e-5 for the released weights (None means ``eps``)."""
        if cfg.kind != "eva" or cfg.final_norm != "post_layernorm":
            raise ValueError(
                f"EvaVisionEncoder got vision.kind={cfg.kind!r}, vision.final_norm={cfg.final_norm!r}; it needs "
                "kind: eva and final_norm: post_layernorm (BLIP-2's ln_vision, with final_norm_eps: 1e-5)"
            )
        numbers = dict(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.width, layers=cfg.layers)
        numbers.update(heads=cfg.heads, mlp_dim=cfg.mlp_dim, eps=cfg.eps)
        ln_eps = cfg.eps if cfg.final_norm_eps is None else cfg.final_norm_eps
        encoder = cls(eva_vision_config(**numbers, ln_vision_eps=ln_eps), keep_cls=cfg.keep_cls)
        encoder.mean, encoder.std, encoder.resize = tuple(cfg.mean), tuple(cfg.std), cfg.resize
        return encoder

    def describe(self) -> VisionConfig:
        """Our config of this encoder, as numbers (no path): what rebuilds it."""
        c = self.model.config
        return VisionConfig(
            kind="eva",
            image_size=c.image_size,
            patch_size=c.patch_size,
            width=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=c.num_attention_heads,
            mlp_dim=c.intermediate_size,
            eps=c.layer_norm_eps,
            keep_cls=self.keep_cls,
            final_norm="post_layernorm",
            final_norm_eps=self.model.post_layernorm.eps,
            resize=self.resize,
            mean=list(self.mean),
            std=list(self.std),
        )

    def image_transform(self, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageTransform:
        """The preprocessing: squash to ``image_size`` (bicubic), CLIP mean/std (MiniGPT-4's eval processor)."""
        return ImageTransform(
            size=self.image_size, mean=self.mean, std=self.std, resize=self.resize, max_pixels=max_pixels
        )

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.model.config.image_size

    @property
    def tokens(self) -> int:
        """p: tokens per image, patches plus CLS (257 for 224 px and patch 14; 256 without ``keep_cls``)."""
        return (self.image_size // self.model.config.patch_size) ** 2 + int(self.keep_cls)

    @property
    def ln_vision(self) -> nn.LayerNorm:
        """BLIP-2's ``ln_vision`` (HF's ``post_layernorm``): loaded from the BLIP-2 file, not from eva_vit_g.pth."""
        return self.model.post_layernorm

    def train(self, mode: bool = True) -> EvaVisionEncoder:
        super().train(mode)
        if not any(p.requires_grad for p in self.model.parameters()):
            self.model.eval()  # frozen: eval whatever the parent's mode (MiniGPT-4's disabled_train)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [N, 3, H, W] (normalised with ``mean``/``std``) -> [N, p, d] after ln_vision (CLS first if kept)."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"EvaVisionEncoder takes pixels [N, 3, H, W], got shape {tuple(pixels.shape)}")
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"EvaVisionEncoder was built for {self.image_size}x{self.image_size} images, got "
                f"{pixels.shape[-2]}x{pixels.shape[-1]}; resize with the encoder's transform (squash to "
                f"{self.image_size})"
            )
        dtype = self.model.post_layernorm.weight.dtype
        trains = any(p.requires_grad for p in self.model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains):
            hidden = self.model(pixel_values=pixels.to(dtype)).last_hidden_state  # post_layernorm = ln_vision
        return hidden if self.keep_cls else hidden[:, 1:]
