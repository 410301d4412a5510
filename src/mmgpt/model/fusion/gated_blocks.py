"""Fusion: gated cross-attention blocks inserted before decoder layers of any HF causal LM, without renaming.

Each chosen decoder layer gets a child module ``gated_cross_attn_layer`` and a forward pre-hook that runs the
block on the hidden states before the layer itself runs. The LM keeps all its own parameter names
(``model.layers.3.self_attn.q_proj.weight``) and the blocks sit exactly where OpenFlamingo checkpoints put them
(``model.layers.3.gated_cross_attn_layer.attn.to_q.weight``), so pretrained weights of both load unchanged.

How per-call inputs reach the blocks: HF decoders do not all forward extra keyword arguments to their layers
(MPT drops them), so :class:`~mmgpt.model.flamingo.Flamingo` binds a :class:`CrossAttentionInputs` in a
``ContextVar`` for the duration of one LM call. A ContextVar is private to its thread and asyncio task, so two
threads generating on one model never see each other's images; nothing is stored on a module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmgpt.model.contract import Media
from mmgpt.model.fusion.cross_attention import GatedCrossAttentionBlock, MaskedCrossAttention

BLOCK_NAME = "gated_cross_attn_layer"


def keys_values(media: Media, block_id: int, attn: MaskedCrossAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """Block ``block_id``'s keys and values of the media [b, h, m*n, d_head]: projected once per image during
    inference (kept in ``media.derived``), so decoding never recomputes them; training recomputes (grads flow)."""
    cached = media.derived.get(block_id)
    if cached is not None:
        return cached
    device, dtype = attn.norm.weight.device, attn.norm.weight.dtype  # not to_kv's: it may hold quantized weights
    kv = attn.project_media(media.features.to(device=device, dtype=dtype))
    if not torch.is_grad_enabled():
        media.derived[block_id] = kv
    return kv


@dataclass
class CrossAttentionInputs:
    """Everything the gated blocks need for one LM call; lives only for that call.

    index [b, T]: the attend index of each token of this chunk (0 = no image); bypass [b] or None: rows that skip
    the gated blocks entirely (language-only rows under the bypass); checkpoint: recompute blocks in backward.
    """

    media: Media | None
    index: torch.Tensor
    bypass: torch.Tensor | None = None
    checkpoint: bool = False


_CURRENT: contextvars.ContextVar[CrossAttentionInputs | None] = contextvars.ContextVar(
    "mmgpt_cross_attention_inputs", default=None
)


@contextlib.contextmanager
def cross_attention_inputs(inputs: CrossAttentionInputs) -> Iterator[None]:
    token = _CURRENT.set(inputs)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def insert_gated_blocks(
    layers: nn.ModuleList, *, every_n_layers: int, make_block: Callable[[], GatedCrossAttentionBlock]
) -> list[int]:
    """Give layer i a gated block when (i + 1) % every_n_layers == 0; returns the indices of those layers."""
    if every_n_layers < 1:
        raise ValueError(f"cross_attention.every_n_layers={every_n_layers} must be >= 1")
    chosen = [i for i in range(len(layers)) if (i + 1) % every_n_layers == 0]
    for i in chosen:
        layer = layers[i]
        if hasattr(layer, BLOCK_NAME):
            raise ValueError(f"decoder layer {i} already has a {BLOCK_NAME}; blocks are inserted once")
        layer.add_module(BLOCK_NAME, make_block())
        layer.register_forward_pre_hook(partial(_run_gated_block, i), with_kwargs=True)
    return chosen


def _run_gated_block(block_id: int, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    inputs = _CURRENT.get()
    if inputs is None:
        raise RuntimeError(
            "a decoder layer with a gated cross-attention block ran outside Flamingo.forward; call the Flamingo "
            "model (it passes the images and the media mask), not its language model directly"
        )
    if inputs.bypass is not None and bool(inputs.bypass.all()):
        return None
    block: GatedCrossAttentionBlock = getattr(layer, BLOCK_NAME)
    hidden = args[0] if args else kwargs["hidden_states"]
    x = hidden.to(block.ff_gate.device)
    media = inputs.media
    keys, values = keys_values(media, block_id, block.attn) if media is not None and media.num_images else (None, None)
    n = media.per_image if media is not None else 0
    index = inputs.index.to(x.device)
    if inputs.checkpoint and torch.is_grad_enabled():
        y = checkpoint(block, x, keys, values, index, n, use_reentrant=False)
    else:
        y = block(x, keys, values, index, n)
    if inputs.bypass is not None and bool(inputs.bypass.any()):
        y = torch.where(inputs.bypass.to(x.device)[:, None, None], x, y)
    y = y.to(hidden.device)
    if args:
        return (y, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": y}
