"""Q-Former: BLIP-2's querying transformer, as MiniGPT-4 v1 uses it (prefix-systems.md sections A1 and C).

q learned queries (32) read the image tokens of the ViT: the queries go through a LayerNorm (BERT's embedding
LayerNorm; no position embedding, no text), then 12 BERT layers (post-LN, exact GELU, eps 1e-12), each with
self-attention over the queries, in every second layer (0, 2, ..., 10) cross-attention from the queries to the
image tokens (keys/values projected 1408 -> 768), and the query feed-forward ``intermediate_query`` /
``output_query``. MiniGPT-4 deletes the text parts of the BERT (word and position embeddings, the text FFN
``intermediate`` / ``output`` of every layer, the LM head); we never build them (``use_qformer_text_input=False``).

The network is transformers' ``Blip2QFormerModel`` (verified against LAVIS' class to 1.5e-7, section C): its
``layernorm`` is the query LayerNorm and ``query_embeds`` the queries. The configuration is built from numbers;
nothing downloads ``bert-base-uncased`` (the original reads only its sizes).

Dtype: HF keeps ``query_tokens`` and the Q-Former in fp32 inside its BLIP-2 models (``_keep_in_fp32_modules``);
that rule applies to ``from_pretrained`` of those composite classes only. Here the module follows the dtype it is
given, like MiniGPT-4, which runs the Q-Former under fp16 autocast on GPU; the image tokens are cast to it.

Legend: N images, p image tokens, q queries, d_v image width, d Q-Former width.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel


def qformer_config(
    *,
    hidden: int = 768,
    layers: int = 12,
    heads: int = 12,
    intermediate: int = 3072,
    encoder_width: int = 1408,
    cross_attention_every: int = 2,
    eps: float = 1e-12,
    queries: int = 32,
    dropout: float = 0.1,
) -> Blip2QFormerConfig:
    """BLIP-2's Q-Former (defaults: the released size, bert-base numbers) as a ``Blip2QFormerConfig``.

    ``cross_attention_every`` = 2 puts cross-attention in layers 0, 2, 4, ... (LAVIS: ``layer_num % 2 == 0``);
    ``queries`` (the number of query tokens) is kept on the config as ``num_query_tokens``; ``dropout`` is
    BERT's 0.1 for hidden states and attention probabilities (off in eval mode, and a frozen resampler stays in
    eval mode). Attention runs through SDPA.
    """
    if hidden % heads:
        raise ValueError(f"Q-Former width {hidden} is not divisible by heads={heads}; pick heads that divide it")
    if queries < 1:
        raise ValueError(f"a Q-Former needs at least one query token, got queries={queries}")
    config = Blip2QFormerConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",  # exact GELU, as BERT
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        layer_norm_eps=eps,
        cross_attention_frequency=cross_attention_every,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,  # no word embeddings, no text FFN: MiniGPT-4 deletes them
        num_query_tokens=queries,
    )
    config._attn_implementation = "sdpa"
    return config


class QFormerResampler(nn.Module):
    """image tokens [..., p, d_v] -> query outputs [..., q, d] (e.g. [N, 257, 1408] -> [N, 32, 768]).

    Parameters: ``query_tokens`` [1, q, d] and ``qformer`` (``Blip2QFormerModel``); their names are what
    ``mmgpt.model.checkpoints.minigpt4.read_blip2_qformer`` returns. Leading dimensions are kept, so [b, m, p, d_v]
    works as well as [N, p, d_v]. Trainability is the caller's choice; when no parameter requires grad the module
    stays in eval mode (no dropout), as MiniGPT-4 keeps its frozen Q-Former.
    """

    def __init__(self, config: Blip2QFormerConfig):
        super().__init__()
        if config.use_qformer_text_input:
            raise ValueError(
                "QFormerResampler got a config with use_qformer_text_input=True; MiniGPT-4's Q-Former has no text "
                "parts - build the config with qformer_config()"
            )
        queries = getattr(config, "num_query_tokens", None)
        if queries is None:
            raise ValueError("the Q-Former config has no num_query_tokens; build it with qformer_config(queries=...)")
        self.qformer = Blip2QFormerModel(config)
        # BLIP-2 draws the queries like BERT weights (normal, std initializer_range); loaded weights replace them.
        self.query_tokens = nn.Parameter(torch.randn(1, queries, config.hidden_size) * config.initializer_range)

    @classmethod
    def from_numbers(cls, **numbers) -> QFormerResampler:
        """``QFormerResampler(qformer_config(**numbers))``: the builder tests and presets call."""
        return cls(qformer_config(**numbers))

    @property
    def num_queries(self) -> int:
        return self.query_tokens.shape[1]

    @property
    def width(self) -> int:
        """d: the width of the outputs (768 for BLIP-2)."""
        return self.qformer.config.hidden_size

    @property
    def encoder_width(self) -> int:
        """d_v: the width of the image tokens it reads (1408 for EVA ViT-g)."""
        return self.qformer.config.encoder_hidden_size

    def train(self, mode: bool = True) -> QFormerResampler:
        super().train(mode)
        if not any(p.requires_grad for p in self.parameters()):
            self.qformer.eval()  # frozen: no dropout, whatever the parent's mode
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features [..., p, d_v] -> [..., q, d].

        MiniGPT-4 passes an all-ones ``encoder_attention_mask``; an all-ones mask adds nothing to the scores, so
        none is passed (every image has the same number of tokens)."""
        if features.dim() < 3 or features.shape[-1] != self.encoder_width:
            raise ValueError(
                f"QFormerResampler reads image tokens [..., p, {self.encoder_width}], got shape "
                f"{tuple(features.shape)}; check that the Q-Former's encoder_width matches the vision encoder"
            )
        lead, (p, d_v) = features.shape[:-2], features.shape[-2:]
        flat = features.reshape(-1, p, d_v).to(self.query_tokens.dtype)
        queries = self.query_tokens.expand(flat.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=flat).last_hidden_state
        return out.reshape(*lead, self.num_queries, self.width)
