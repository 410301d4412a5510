"""Quantized language models (``mmgpt.load(..., quantize=)``, bitsandbytes on the CPU): every linear layer of the
LM but its head holds the model's own weights in 8 or 4 bits - checked against bitsandbytes' own dequantization -
the rest is untouched, the model chats with its cache as it recomputes, LoRA adapters go on top, and what cannot
work on quantized weights (saving whole, merging, training them) says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mmgpt
from mmgpt.chat import ChatModel, ChatSession
from mmgpt.config import LoraConfig
from mmgpt.generate import GenerationConfig
from mmgpt.model.checkpoints import save_pretrained
from mmgpt.model.lora import apply_lora, merge_lora
from mmgpt.model.quantize import is_quantized, quantize_language_model
from tests.model.conftest import logits, tiny_model
from tests.test_chat import picture
from tests.test_contract import from_scratch

bnb = pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")

LAYER = {"int8": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_pretrained(*tiny_model("llama", "following"), tmp_path_factory.mktemp("quantize") / "tiny")


def dequantized(layer: nn.Module) -> torch.Tensor:
    """The float weight a bitsandbytes layer computes with, by bitsandbytes' own functions."""
    weight = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    return weight.data.float() * weight.SCB.float()[:, None] / 127


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_every_linear_of_the_language_model_but_its_head_holds_its_weights_quantized(saved, kind):
    plain, _ = mmgpt.load(saved)
    model, _ = mmgpt.load(saved, quantize=kind)
    assert is_quantized(model) and not is_quantized(plain)
    lm, plain_lm = model.language_model, plain.language_model
    linears = {n for n, m in plain_lm.named_modules() if type(m) is nn.Linear} - {"lm_head"}
    assert len(linears) == 38  # q k v o, gate up down in 4 layers; the 2 gated blocks' q, kv, out and 2 ff each
    if kind == "nf4":  # narrower than NF4's block of 64: k, v (2 KV heads x 16) and the gated blocks' attention (2
        # heads x 16, the 32-wide media); every width of the released models is a multiple of 64
        linears = {n for n in linears if not n.endswith(("k_proj", "v_proj", "to_q", "to_kv", "to_out"))}
        assert len(linears) == 24
    assert {n for n, m in lm.named_modules() if isinstance(m, LAYER[kind])} == linears
    assert type(lm.lm_head) is nn.Linear and torch.equal(lm.lm_head.weight, plain_lm.lm_head.weight)
    for name in sorted(linears):
        original = plain_lm.get_submodule(name).weight.float()
        error = (dequantized(lm.get_submodule(name)) - original).abs()
        if kind == "int8":  # per output row, steps of the row's absmax / 127: half a step off at most (and the
            # scale's own rounding: bitsandbytes keeps it in half precision)
            assert (error <= original.abs().amax(1, keepdim=True) / 254 * 1.15).all(), name
        else:  # NF4 per block of 64: its levels are at most 0.304 x the block's absmax apart
            block_max = original.abs().flatten().view(-1, 64).amax(1).repeat_interleave(64)
            assert (error.flatten() <= block_max * 0.16).all(), name  # (and the absmax's own rounding)
    in_lm = {id(p) for p in lm.parameters()}
    for name, p in model.named_parameters():  # the vision side and the connector as they were
        if id(p) not in in_lm:
            assert torch.equal(p, plain.get_parameter(name)), name
    close = {"int8": 0.03, "nf4": 0.3}[kind]  # of the logits' scale: 8 bits per weight, or 4
    assert (logits(model) - logits(plain)).abs().max() <= close * logits(plain).abs().max()


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_a_quantized_model_chats_with_its_cache_as_it_recomputes_and_takes_an_adapter(saved, kind):
    model, tokenizer = mmgpt.load(saved, quantize=kind)
    apply_lora(model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():  # a non-zero adapter, so it counts
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    chat, config = ChatModel.wrap(model, tokenizer), GenerationConfig(max_new_tokens=6)
    session = ChatSession(chat)
    for turn, (text, images) in enumerate(
        [("describe the image", [picture(1)]), ("and now?", []), ("two", [picture(2)])]
    ):
        answer = "".join(session.send(text, images=images, config=config))
        assert answer == tokenizer.decode(from_scratch(chat, session, config), skip_special_tokens=True)
        assert (session.last.reused_tokens > 0) == (turn > 0)


def test_the_commands_offer_every_quantization():
    from mmgpt.commands._options import QUANTIZE_CHOICES
    from mmgpt.model.quantize import QUANTIZATIONS

    assert QUANTIZE_CHOICES == QUANTIZATIONS


def test_what_quantized_weights_cannot_do_says_so(saved, tmp_path):
    with pytest.raises(ValueError, match="not one of int8, nf4"):
        mmgpt.load(saved, quantize="int4")
    with pytest.raises(ValueError, match="merge_lora folds the adapter"):
        mmgpt.load(saved, quantize="nf4", lora=saved, merge_lora=True)
    model, tokenizer = mmgpt.load(saved, quantize="nf4")
    with pytest.raises(ValueError, match="quantized: it cannot be saved whole"):
        save_pretrained(model, tokenizer, tmp_path / "out")
    apply_lora(model, LoraConfig(r=4, alpha=8))
    with pytest.raises(ValueError, match="cannot be folded into 8- or 4-bit weights"):
        merge_lora(model)
    plain, _ = mmgpt.load(saved)
    apply_lora(plain, LoraConfig(r=4, alpha=8))
    with pytest.raises(ValueError, match="quantize the base first, then add them"):
        quantize_language_model(plain, "nf4", device="cpu")


def test_mmgpt_chat_quantize_answers_as_the_library(saved, monkeypatch, capsys):
    import io

    from mmgpt.cli import main

    model, tokenizer = mmgpt.load(saved, quantize="int8")
    expected = ChatSession(ChatModel.wrap(model, tokenizer)).ask("describe", config=GenerationConfig(max_new_tokens=8))
    monkeypatch.setattr("sys.stdin", io.StringIO("describe\n"))
    assert main(["chat", "--model", str(saved), "--quantize", "int8", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out == f"{expected.text}\n"


def test_batched_turns_over_an_nf4_model_with_adapters_answer_as_each_alone(tmp_path):
    """NF4 computes each row on its own, so the scheduler's batch (rows with their own adapters, images, sampling)
    answers as each alone, as over a 16-bit model."""
    from mmgpt.chat import start_batching, stop_batching
    from tests.test_chat import model_with_adapters
    from tests.test_scheduler import SESSIONS, converse, run_concurrently

    chat = ChatModel.wrap(*model_with_adapters(tmp_path, ("one", "two"), quantize="nf4"))
    assert is_quantized(chat.model)
    alone = [converse(chat, i) for i in range(len(SESSIONS))]
    start_batching(chat, max_rows=8)
    try:
        assert run_concurrently(chat, list(range(len(SESSIONS)))) == alone
    finally:
        stop_batching(chat)
