"""Independent references of MiniGPT-4 v1's vision side in LAVIS' layout, and writers of its released files.

The reference modules follow prefix-systems.md A1 (not transformers' code) and their parameter names ARE the
released keys, so ``state_dict()`` gives the files' layouts:

- ``RefEvaViT``: LAVIS' EVA ViT-g without a final norm: ``cls_token``, ``pos_embed``, ``patch_embed.proj``,
  ``blocks.i.{norm1, attn.{qkv (no bias), q_bias, v_bias, proj}, norm2, mlp.{fc1, fc2}}``; pre-LN eps 1e-6,
  exact GELU, qkv bias = cat(q_bias, 0, v_bias), scale head_dim ** -0.5.
- ``RefBlip2``: what ``blip2_pretrained_flant5xxl.pth['model']`` holds: ``query_tokens``, ``ln_vision`` (eps 1e-5),
  ``Qformer.bert`` (embedding LayerNorm + ``position_ids`` buffer; BERT post-LN layers with self-attention,
  cross-attention in even layers, the query FFN) and ``t5_proj``. Queries only, as MiniGPT-4 runs it.

Legend: N images, p tokens, q queries, d widths.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain multi-head attention (no mask): [N, s, d] x [N, t, d] x [N, t, d] -> [N, s, d]."""
    split = [t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v)]
    scores = split[0] @ split[1].transpose(-2, -1) / math.sqrt(split[0].shape[-1])
    return (scores.softmax(-1) @ split[2]).transpose(1, 2).flatten(2)


class RefEvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        q, k, v = F.linear(x, self.qkv.weight, bias).chunk(3, dim=-1)
        return self.proj(attend(q, k, v, self.heads))


class RefMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class RefEvaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefEvaAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = RefMlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefEvaViT(nn.Module):
    """pixels [N, 3, H, W] -> [N, p, d] (CLS first), the output of the first ``layers`` blocks; more blocks may be
    built (they go into the file, as the 40th block of eva_vit_g.pth) but only ``layers`` run."""

    def __init__(self, *, image_size: int, patch_size: int, width: int, blocks: int, heads: int, mlp_dim: int):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        self.blocks = nn.ModuleList(RefEvaBlock(width, heads, mlp_dim) for _ in range(blocks))

    def forward(self, pixels: torch.Tensor, *, layers: int) -> torch.Tensor:
        x = self.patch_embed.proj(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks[:layers]:
            x = block(x)
        return x


class RefBertAttention(nn.Module):
    """``{attention, crossattention}``: ``self.{query,key,value}`` then ``output.{dense, LayerNorm}`` (post-LN)."""

    def __init__(self, dim: int, kv_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.self = nn.Module()
        self.self.query, self.self.key, self.self.value = (nn.Linear(n, dim) for n in (dim, kv_dim, kv_dim))
        self.output = nn.Module()
        self.output.dense = nn.Linear(dim, dim)
        self.output.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        out = attend(self.self.query(h), self.self.key(context), self.self.value(context), self.heads)
        return self.output.LayerNorm(self.output.dense(out) + h)


class RefQFormerLayer(nn.Module):
    def __init__(self, dim: int, image_dim: int, heads: int, intermediate: int, *, cross: bool):
        super().__init__()
        self.attention = RefBertAttention(dim, dim, heads)
        if cross:
            self.crossattention = RefBertAttention(dim, image_dim, heads)
        self.intermediate_query = nn.Module()
        self.intermediate_query.dense = nn.Linear(dim, intermediate)
        self.output_query = nn.Module()
        self.output_query.dense = nn.Linear(intermediate, dim)
        self.output_query.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, h: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, h)
        if hasattr(self, "crossattention"):
            h = self.crossattention(h, image)
        ffn = self.output_query.dense(F.gelu(self.intermediate_query.dense(h)))
        return self.output_query.LayerNorm(ffn + h)


class RefBlip2(nn.Module):
    """The trained parts of BLIP-2 (FlanT5) as its file names them; ``forward``: image tokens -> queries [N, q, d]."""

    def __init__(self, *, image_dim: int, dim: int, layers: int, heads: int, intermediate: int, queries: int):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, dim))
        self.ln_vision = nn.LayerNorm(image_dim)  # eps 1e-5, torch's default
        self.Qformer = nn.Module()
        self.Qformer.bert = nn.Module()
        self.Qformer.bert.embeddings = nn.Module()
        self.Qformer.bert.embeddings.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.Qformer.bert.embeddings.register_buffer("position_ids", torch.arange(512).expand((1, -1)))
        self.Qformer.bert.encoder = nn.Module()
        self.Qformer.bert.encoder.layer = nn.ModuleList(
            RefQFormerLayer(dim, image_dim, heads, intermediate, cross=i % 2 == 0) for i in range(layers)
        )
        self.t5_proj = nn.Linear(dim, 24)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image tokens [N, p, d_v] (after ln_vision) -> [N, q, d]."""
        h = self.Qformer.bert.embeddings.LayerNorm(self.query_tokens.expand(image.shape[0], -1, -1))
        for layer in self.Qformer.bert.encoder.layer:
            h = layer(h, image)
        return h


@torch.no_grad()
def randomize(module: nn.Module, *, seed: int, dtype: torch.dtype = torch.float16) -> nn.Module:
    """Random weights (LayerNorm weights around 1, everything else around 0), rounded to ``dtype`` so a file saved
    in ``dtype`` holds exactly the module's values."""
    generator = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm)}
    for p in module.parameters():
        value = torch.randn(p.shape, generator=generator) * 0.2 + (1.0 if id(p) in norm_weights else 0.0)
        p.copy_(value.to(dtype).float())
    return module


def write_eva_vit_g(vit: RefEvaViT, path: Path, *, dtype: torch.dtype = torch.float16) -> None:
    """eva_vit_g.pth: a raw state dict, unprefixed keys, every block the module has (the release: 40)."""
    torch.save({k: v.to(dtype) for k, v in vit.state_dict().items()}, path)


def write_blip2_file(blip2: RefBlip2, path: Path, *, extra: dict[str, torch.Tensor] | None = None) -> None:
    """blip2_pretrained_flant5xxl.pth: the LAVIS runner's ``_save_checkpoint`` layout (fp32 weights + buffers)."""
    model = {**blip2.state_dict(), **(extra or {})}
    config = {"model": {"arch": "blip2_t5", "model_type": "pretrain_flant5xxl"}, "run": {"init_lr": 1e-4}}
    torch.save({"model": model, "optimizer": {"state": {}, "param_groups": []}, "config": config, "epoch": 9}, path)


def write_minigpt4_projection(
    proj: nn.Linear, path: Path, *, dtype: torch.dtype = torch.float32, extra: dict | None = None
) -> None:
    """pretrained_minigpt4*.pth: ``{"model": {llama_proj.*}, "optimizer", "config", "scaler", "epoch"}``."""
    model = {"llama_proj.weight": proj.weight.detach().to(dtype), "llama_proj.bias": proj.bias.detach().to(dtype)}
    model.update(extra or {})
    adam = {
        i: {"step": torch.tensor(800.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        for i, p in enumerate([proj.weight, proj.bias])
    }
    optimizer = {"state": adam, "param_groups": [{"lr": 3e-5, "weight_decay": 0.05, "params": [0, 1]}]}
    config = {"model": {"arch": "mini_gpt4", "end_sym": "###"}, "run": {"max_epoch": 5}}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000}
    torch.save({"model": model, "optimizer": optimizer, "config": config, "scaler": scaler, "epoch": 4}, path)
