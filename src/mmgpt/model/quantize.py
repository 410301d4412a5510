"""A quantized language model, through bitsandbytes: ``int8`` (LLM.int8(), what MiniGPT-4's ``low_resource`` demo
loaded its Vicuna in: ``load_in_8bit``, outlier threshold 6.0) or ``nf4`` (4-bit NormalFloat with the model's
dtype for compute: QLoRA's base). Every ``nn.Linear`` of the language model becomes a bitsandbytes layer holding the
same weights - Flamingo's gated cross-attention blocks too, which sit inside its decoder layers - but the output
head, which stays in the model's dtype as in transformers' ``load_in_8bit``; the vision encoder and the connector
are untouched. LoRA adapters go on top (peft wraps the quantized layers), so a quantized model chats, serves,
evaluates and trains LoRA adapters; it cannot be saved whole, merge an adapter, or train base weights.

Each layer is quantized as it moves to ``device``, one at a time: a GPU holds the quantized weights only, never
the model in its dtype (the unquantized model is read into CPU memory first). Weights per parameter: 1 byte (int8),
about 0.5 (nf4: 4 bits and a float32 scale per block of 64), against 2 in bfloat16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

QUANTIZATIONS = ("int8", "nf4")
INT8_THRESHOLD = 6.0  # transformers' llm_int8_threshold default, as MiniGPT-4's load_in_8bit used
# NF4's block: a layer whose widths are not multiples of it stays in the model's dtype (bitsandbytes' CPU kernel packs
# whole blocks of inputs per row, and outputs by 32). Every width of the released models is a multiple of 64.
BLOCK = 64


def quantize_language_model(model: nn.Module, kind: str, *, device: torch.device | str) -> int:
    """Replace every ``nn.Linear`` of ``model.language_model`` but its output head (and, for nf4, those with a width
    that is not a multiple of ``BLOCK``) with a ``kind`` bitsandbytes layer on ``device``; returns how many."""
    check_kind(kind)
    language_model = model.language_model
    if any(type(m).__module__.startswith("peft.") for m in language_model.modules()):
        raise ValueError("the model carries LoRA adapters: quantize the base first, then add them (mmgpt.load does)")
    bnb = _bitsandbytes()
    head = language_model.get_output_embeddings()
    replaced = 0
    for module in list(language_model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear and child is not head and _fits(child, kind):
                setattr(module, name, _quantized(bnb, child, kind, torch.device(device)))
                replaced += 1
    return replaced


def check_kind(kind: str) -> None:
    if kind not in QUANTIZATIONS:
        raise ValueError(f"quantize={kind!r} is not one of {', '.join(QUANTIZATIONS)}")


def _fits(linear: nn.Linear, kind: str) -> bool:
    return kind != "nf4" or (linear.in_features % BLOCK == 0 and linear.out_features % BLOCK == 0)


def is_quantized(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is a bitsandbytes one (without importing bitsandbytes)."""
    return any(type(m).__module__.startswith("bitsandbytes") for m in model.modules())


def _quantized(bnb: Any, linear: nn.Linear, kind: str, device: torch.device) -> nn.Module:
    weight, bias = linear.weight.data, linear.bias
    shape = (linear.in_features, linear.out_features)
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(*shape, bias=bias is not None, has_fp16_weights=False, threshold=INT8_THRESHOLD)
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(*shape, bias=bias is not None, compute_dtype=weight.dtype, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if bias is not None:
        layer.bias = nn.Parameter(bias.data, requires_grad=False)
    return layer.to(device)  # quantizes the weight there


def _bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError:
        raise ImportError(
            "quantize= needs bitsandbytes: pip install 'mmgpt[quant]' (or pip install bitsandbytes)"
        ) from None
    return bitsandbytes
