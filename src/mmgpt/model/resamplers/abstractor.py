"""mPLUG-Owl's visual abstractor: image tokens of each image -> a fixed number of learned queries.

Own code, from ``MplugOwlVisualAbstractorModel`` (mPLUG-Owl ``mplug_owl/modeling_mplug_owl.py`` @0f3068f; fact
sheet prefix-systems.md A2); transformers has no twin. Each layer is one cross-attention block:

    h  = norm1(h)                                   the residual stream itself is replaced by the normed queries
    kv = cat([h, normk(image)])                     queries first: q + p keys
    h  = h + out_proj(softmax(Q K^T / sqrt(hd)) V)  heads x hd = dim; dropout on the probabilities when training
    h  = h + mlp(norm2(h)),  mlp(x) = w2(ffn_ln(silu(w1 x) * w3 x))

There is no self-attention between queries other than through the concatenated keys, no position embedding, and
nothing after the last layer (no final LayerNorm: the original's ``pooler_output`` is unused). The projection to
the LM (``visual_fc``) and the appended ``vit_eos`` token are not part of this module: the prefix connector holds
them (``proj``, ``end_tokens``).

Parameter names equal the release's keys below ``abstractor.`` (``encoder.layers.{i}.crossattention.attention.
query.weight``, ...), plus ``query_tokens`` (the release's top-level key), so loading is a prefix rename. Every
LayerNorm computes in float32 and casts back, as the original's ``LayerNormFp32`` does (fp16/bf16 weights).

Legend: N images, p image tokens, q queries, d width (d_v the vision width), hd head width, f SwiGLU width.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input and weight dtypes; the output has the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """[.., d] -> [.., d]: w2(ffn_ln(silu(w1 x) * w3 x)); all three Linear layers carry a bias."""

    def __init__(self, *, dim: int, intermediate: int, eps: float):
        super().__init__()
        self.w1 = nn.Linear(dim, intermediate)
        self.w3 = nn.Linear(dim, intermediate)
        self.w2 = nn.Linear(intermediate, dim)
        self.ffn_ln = Fp32LayerNorm(intermediate, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.ffn_ln(F.silu(self.w1(x)) * self.w3(x)))


class QueryKeyValue(nn.Module):
    """The ``attention`` module: three Linear(d, d) with bias; heads x hd = d."""

    def __init__(self, *, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, *, dropout: float) -> torch.Tensor:
        """queries [N, q, d], keys [N, q + p, d] (keys and values share their input) -> [N, q, d]."""
        q, k, v = self.query(queries), self.key(keys), self.value(keys)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # [N, heads, ., hd]
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # scale 1 / sqrt(hd), as the original
        return out.transpose(1, 2).flatten(2)


class CrossOutput(nn.Module):
    """The ``output`` module: h + out_proj(attention), then + mlp(norm2(.))."""

    def __init__(self, *, dim: int, intermediate: int, eps: float, ffn_eps: float):
        super().__init__()
        self.out_proj = nn.Linear(dim, dim)
        self.norm2 = Fp32LayerNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim=dim, intermediate=intermediate, eps=ffn_eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h = residual + self.out_proj(attended)
        return h + self.mlp(self.norm2(h))


class AbstractorLayer(nn.Module):
    """One ``encoder.layers.{i}.crossattention``: queries [N, q, d] attend to cat(queries, image) -> [N, q, d]."""

    def __init__(self, *, dim: int, heads: int, intermediate: int, eps: float, ffn_eps: float, dropout: float):
        super().__init__()
        self.dropout = dropout
        self.norm1 = Fp32LayerNorm(dim, eps=eps)
        self.normk = Fp32LayerNorm(dim, eps=eps)
        self.attention = QueryKeyValue(dim=dim, heads=heads)
        self.output = CrossOutput(dim=dim, intermediate=intermediate, eps=eps, ffn_eps=ffn_eps)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """queries [N, q, d], image [N, p, d] -> [N, q, d]."""
        h = self.norm1(queries)  # the residual continues from the normed queries (as the original)
        keys = torch.cat([h, self.normk(image)], dim=1)
        attended = self.attention(h, keys, dropout=self.dropout if self.training else 0.0)
        return self.output(attended, h)


class AbstractorEncoder(nn.Module):
    """The ``encoder`` module: ``layers.{i}.crossattention``, applied in order."""

    def __init__(self, layers: list[AbstractorLayer]):
        super().__init__()
        self.layers = nn.ModuleList(nn.ModuleDict({"crossattention": layer}) for layer in layers)

    def forward(self, queries: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            queries = layer["crossattention"](queries, image)
        return queries


class VisualAbstractor(nn.Module):
    """image tokens [N, p, d_v] -> query outputs [N, q, d] (before the connector's projection to the LM).

    Defaults are the released mPLUG-Owl v1 numbers except ``intermediate``, which has none on purpose: the
    original code's default (4096) does not fit the released checkpoints (2816); read it from config.json.
    ``vision_width`` must equal ``dim``: the keys and values are computed from cat(queries, normk(image)), one
    tensor of width d, with ``normk`` a LayerNorm of width d (in the release both are 1024).
    """

    def __init__(
        self,
        *,
        intermediate: int,
        dim: int = 1024,
        layers: int = 6,
        heads: int = 16,
        queries: int = 64,
        vision_width: int | None = None,
        eps: float = 1e-5,
        ffn_eps: float = 1e-6,
        dropout: float = 0.1,
    ):
        super().__init__()
        if vision_width is not None and vision_width != dim:
            raise ValueError(
                f"the visual abstractor concatenates its queries (width dim={dim}) with the image tokens "
                f"(vision_width={vision_width}) before one LayerNorm and one key/value projection, so both widths "
                f"must be equal; set the abstractor's hidden_size (encoder_hidden_size) to the ViT width {vision_width}"
            )
        if dim % heads:
            raise ValueError(f"abstractor width dim={dim} is not divisible by heads={heads}; choose heads dividing it")
        self.query_tokens = nn.Parameter(torch.zeros(1, queries, dim))
        nn.init.trunc_normal_(self.query_tokens, std=0.02)
        self.encoder = AbstractorEncoder(
            [
                AbstractorLayer(
                    dim=dim, heads=heads, intermediate=intermediate, eps=eps, ffn_eps=ffn_eps, dropout=dropout
                )
                for _ in range(layers)
            ]
        )

    @property
    def num_queries(self) -> int:
        return self.query_tokens.shape[1]

    @property
    def width(self) -> int:
        return self.query_tokens.shape[2]

    def forward(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """image_tokens [N, p, d_v] (the ViT's post-LN tokens, CLS included) -> [N, q, d]."""
        if image_tokens.shape[-1] != self.width:
            raise ValueError(
                f"image tokens have width {image_tokens.shape[-1]} but the abstractor expects {self.width}; "
                "feed the vision encoder this abstractor was trained with"
            )
        queries = self.query_tokens.to(image_tokens.dtype).expand(image_tokens.shape[0], -1, -1)
        return self.encoder(queries, image_tokens)
