"""The paths a GPU takes, for every model kind: each loaded by its own loader straight onto the device, in float32
and bfloat16, its language model also in 8 and 4 bits (bitsandbytes); a chat with images there; its KV cache in
bfloat16; concurrent turns batched there.

They run on CUDA where there is one (``bench/device_check.sh`` runs them, with training in bfloat16 and the serving
benchmark, on a lent GPU) and on the CPU elsewhere, so every CI run keeps them working; ``MMGPT_TEST_DEVICE`` names
another device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import pytest
import torch

import mmgpt
from mmgpt.chat import ChatModel, ChatSession, start_batching, stop_batching
from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.checkpoints import save_pretrained
from tests.minigpt4_tiny import load_tiny, write_tiny_minigpt4
from tests.model.conftest import tiny_model
from tests.model.mplug_owl_tiny import tokenizer_model, write_tiny_release
from tests.test_chat import model_with_adapters
from tests.test_scheduler import SESSIONS, converse, run_concurrently
from tests.toy_prefix import picture, prompt_of

DEVICE = torch.device(os.environ.get("MMGPT_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
KINDS = ["flamingo", "minigpt4", "mplug-owl"]
GREEDY = GenerationConfig(max_new_tokens=8)
# Turns (text, new images): an image, text only, two images at once.
SCRIPT = [("describe the image", 1), ("what colour is it?", 0), ("compare the two", 2)]


@pytest.fixture(scope="module", autouse=True)
def exact_float32():
    """float32 on a GPU computes as on a CPU: no TF32 in matrix products or convolutions (compared exactly below)."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> dict[str, Callable]:
    """Each kind's loader over its tiny files: ours for Flamingo, the released layouts for MiniGPT-4 and mPLUG-Owl."""
    root = tmp_path_factory.mktemp("releases")
    flamingo = save_pretrained(*tiny_model("llama", "following"), root / "flamingo")
    minigpt4 = write_tiny_minigpt4(root / "minigpt4")
    owl = write_tiny_release(root / "mplug-owl", model=tokenizer_model())
    return {
        "flamingo": functools.partial(mmgpt.load, flamingo),
        "minigpt4": functools.partial(load_tiny, minigpt4),
        "mplug-owl": functools.partial(mmgpt.load, owl),
    }


def conversation(chat: ChatModel) -> list[str]:
    session = ChatSession(chat)
    return [
        session.ask(text, images=[picture(10 * turn + k) for k in range(n)], config=GREEDY).text
        for turn, (text, n) in enumerate(SCRIPT)
    ]


def where(model) -> tuple[str, torch.dtype]:
    """The one device of every parameter and the one dtype of the floating ones (quantized weights are integers)."""
    devices = {p.device.type for p in model.parameters()}
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    assert len(devices) == 1 and len(dtypes) == 1, (devices, dtypes)
    return devices.pop(), dtypes.pop()


@pytest.mark.parametrize("kind", KINDS)
def test_float32_on_the_device_chats_as_on_the_cpu(releases, kind):
    on_device = ChatModel.wrap(*releases[kind](dtype="float32", device=DEVICE))
    assert where(on_device.model) == (DEVICE.type, torch.float32)
    on_cpu = ChatModel.wrap(*releases[kind](dtype="float32"))
    answers = conversation(on_device)
    assert answers == conversation(on_cpu)
    assert any(answers)


@pytest.mark.parametrize("quantize", [None, "int8", "nf4"])
@pytest.mark.parametrize("kind", KINDS)
def test_bfloat16_on_the_device_decodes_with_its_cache_as_in_one_forward(releases, kind, quantize):
    """The logits of every position of an answer, run token by token with the KV cache, agree with one forward over
    the whole sequence without a cache, up to bfloat16's rounding; and the model generates there. Its language model
    in bfloat16, or quantized (bitsandbytes' kernels of the device)."""
    if quantize:
        pytest.importorskip("bitsandbytes", reason="the quant extra (bitsandbytes) is not installed")
    model, tokenizer = releases[kind](dtype="bfloat16", device=DEVICE, quantize=quantize)
    assert where(model) == (DEVICE.type, torch.bfloat16)
    prompt, pixels = prompt_of(model, tokenizer, "compare the two shapes", [picture(1), picture(2)])
    (generated,) = generate(model, tokenizer, [prompt], images=[pixels], config=GREEDY)
    assert generated.token_ids
    answer = tokenizer(" a red circle above a blue square", add_special_tokens=False).input_ids
    ids = torch.tensor([prompt + answer], device=DEVICE)
    images = pixels[None].to(DEVICE)
    with torch.no_grad():
        whole = model(ids, images=images).logits[0, len(prompt) - 1 : -1].float()
        out = model(ids[:, : len(prompt)], images=images, use_cache=True)
        stepped = [out.logits[0, -1]]
        for position in range(len(prompt), ids.shape[1] - 1):
            out = model(ids[:, position : position + 1], cache=out.cache, use_cache=True)
            stepped.append(out.logits[0, -1])
    stepped = torch.stack(stepped).float()
    assert whole.shape == stepped.shape and torch.isfinite(stepped).all()
    scale = whole.abs().max()
    assert (stepped - whole).abs().max() <= 0.05 * scale, (kind, float((stepped - whole).abs().max()), float(scale))


def test_batched_turns_on_the_device_answer_as_each_alone(tmp_path):
    """The scheduler on the device: sessions with their own adapters, images and sampling join and leave one batch,
    and each answers exactly as alone (float32)."""
    model, tokenizer = model_with_adapters(tmp_path, ("one", "two"))
    chat = ChatModel.wrap(model.to(DEVICE), tokenizer)
    alone = [converse(chat, i) for i in range(len(SESSIONS))]
    start_batching(chat, max_rows=8)
    try:
        batched = run_concurrently(chat, list(range(len(SESSIONS))))
    finally:
        stop_batching(chat)
    assert batched == alone
