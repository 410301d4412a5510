"""mPLUG-Owl through the model contract, loaded with ``mmgpt.load(DIR)`` from a tiny release directory
(tests/model/mplug_owl_tiny.py): a left-padded batch equals each row alone (the original right-padded), each row
stops at its own ``</s>``, multi-turn chat with several images and cache reuse equals generation from scratch, the
chat command, and the API with an image for the base and per-request adapters.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

import mmgpt
from mmgpt.chat import ChatModel, ChatSession
from mmgpt.config import LoraConfig
from mmgpt.data.conversation import Conversation
from mmgpt.data.styles.mplug_owl import SYSTEM
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, generate, stream
from mmgpt.model.lora import apply_lora, lora_parameters, save_adapter
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from tests.model import mplug_owl_fixtures
from tests.model.mplug_owl_tiny import pixels_of, prompt_ids
from tests.toy_prefix import greedy_by_recomputation, picture

spm, release, loaded = mplug_owl_fixtures.spm, mplug_owl_fixtures.release, mplug_owl_fixtures.loaded  # shared fixtures

GREEDY = GenerationConfig(max_new_tokens=8)
QV_LORA = LoraConfig(r=8, alpha=32, dropout=0.05, self_attention_modules=["self_attn.q_proj", "self_attn.v_proj"])


@pytest.fixture(scope="module")
def chat(loaded) -> ChatModel:
    return ChatModel.wrap(*loaded, name="mplug-owl-tiny")


def test_a_left_padded_batch_equals_each_row_alone_and_recomputation(loaded):
    model, tokenizer = loaded
    rows = [
        (prompt_ids(model, tokenizer, "Tell me a story about the sea.", 0), None),
        (prompt_ids(model, tokenizer, "What is it?", 1), pixels_of(model, 1)),
        (prompt_ids(model, tokenizer, "Compare them.", 2), pixels_of(model, 2, 3)),
    ]
    prompts, images = [ids for ids, _ in rows], [pixels for _, pixels in rows]
    assert len({len(p) for p in prompts}) == 3
    config = GenerationConfig(max_new_tokens=6)
    batch = generate(model, tokenizer, prompts, images=images, config=config)
    for (prompt, pixels), got in zip(rows, batch, strict=True):
        (alone,) = generate(model, tokenizer, [prompt], images=[pixels], config=config)
        expected = greedy_by_recomputation(model, prompt, pixels, 6)
        expected = expected[: expected.index(2)] if 2 in expected else expected
        assert got.token_ids == alone.token_ids == expected
    assert len({tuple(g.token_ids) for g in batch}) > 1


def test_each_row_stops_at_its_own_eos(release, loaded):
    """EOS is made the greedy choice wherever one token of row 0's answer would be: row 0 stops there, the
    other rows go on, and every row equals its generation alone."""
    model, tokenizer = mmgpt.load(release, dtype="float32")
    prompts = [prompt_ids(model, tokenizer, text, 0) for text in ("Hi!", "Why is this funny?", "Tell me more.")]
    plain = generate(model, tokenizer, prompts, config=GenerationConfig(max_new_tokens=8))
    others = {t for g in plain[1:] for t in g.token_ids}
    token = next(t for t in plain[0].token_ids[1:] if t not in others)
    head = model.language_model.get_output_embeddings().weight
    with torch.no_grad():
        head[tokenizer.eos_token_id] = head[token] * 1.5  # EOS outscores `token` wherever it would lead
    batch = generate(model, tokenizer, prompts, config=GenerationConfig(max_new_tokens=8))
    assert batch[0].finish_reason == "stop" and len(batch[0].token_ids) < 8
    assert any(g.finish_reason == "length" for g in batch[1:])
    for prompt, got in zip(prompts, batch, strict=True):
        (alone,) = generate(model, tokenizer, [prompt], config=GenerationConfig(max_new_tokens=8))
        assert (got.token_ids, got.finish_reason) == (alone.token_ids, alone.finish_reason)


# ---------------------------------------------------------------------------------------------- chat and the API
def from_scratch(chat: ChatModel, session: ChatSession) -> str:
    """The last turn's answer from the whole conversation, no cache, streamed as chat streams (generate's text can
    differ from the streamed one for byte-fallback tokens: reported, not this model's)."""
    messages = session.conversation().messages[:-1]
    prompt = tokenize_prompt(Conversation(messages), chat.tokenizer, fmt=chat.model.prompt_format)
    pixels = torch.stack([chat.transform(image) for image in prompt.images]) if prompt.images else None
    return "".join(stream(chat.model, chat.tokenizer, prompt.input_ids, images=pixels, config=GREEDY))


def test_multi_turn_chat_with_several_images_equals_generation_from_scratch(chat):
    session = ChatSession(chat)
    script = [("What is in the image?", [picture(1)]), ("Why?", []), ("And these two?", [picture(2), picture(3)])]
    previous = 0
    for turn, (text, images) in enumerate(script):
        answer = "".join(session.send(text, images=images, config=GREEDY))
        assert answer == from_scratch(chat, session)
        reply = session.last
        if turn:
            assert reply.reused_tokens >= previous  # the whole previous prompt came from the cache
        previous = reply.prompt_tokens
    assert len(session.conversation().images) == 3
    assert "</s>\nHuman: <image>\nHuman: <image>\nHuman: And these two?\nAI: " in session.prompt_text()


def test_the_chat_command_with_an_image_and_the_prompt_it_shows(release, tmp_path):
    from mmgpt.commands.chat import chat_loop
    from mmgpt.serve.loading import load_chat_model

    picture(7).save(tmp_path / "cat.png")
    session = ChatSession(load_chat_model(str(release), dtype="float32"))
    lines = io.StringIO(f"/image {tmp_path / 'cat.png'}\nWhat is it?\n/prompt\n")
    out = io.StringIO()
    assert chat_loop(session, GREEDY, lines, out, interactive=False) == 0
    answer, *prompt = out.getvalue().splitlines()
    assert answer == session.turns[0].answer
    assert "\n".join(prompt).startswith(f"{SYSTEM}\nHuman: <image>\nHuman: What is it?\nAI: ")


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_api_answers_with_an_image_for_the_base_and_each_adapter(release, tmp_path):
    from fastapi.testclient import TestClient

    from mmgpt.serve.loading import load_chat_model

    for seed, name in enumerate(("one", "two"), start=1):
        tuned, _ = mmgpt.load(release, dtype="float32")
        apply_lora(tuned, QV_LORA)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in lora_parameters(tuned):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        save_adapter(tuned, tmp_path / name)
    chat = load_chat_model(str(release), adapters={n: str(tmp_path / n) for n in ("one", "two")}, dtype="float32")
    assert chat.adapters == ["one", "two"]
    limits = ServeLimits(max_image_pixels=128 * 128, max_images=2, max_active=1, max_waiting=1)
    with TestClient(build_app(chat, ServeConfig(web_path=None, limits=limits))) as client:
        answers = {}
        for model_name in (chat.name, "one", "two"):
            content = [{"type": "text", "text": "What is it?"}, image_part(png(3))]
            body = {"model": model_name, "messages": [{"role": "user", "content": content}], "temperature": 0}
            response = client.post("/v1/chat/completions", json={**body, "max_tokens": 8})
            assert response.status_code == 200, response.text
            answers[model_name] = response.json()["choices"][0]["message"]["content"]
            session = ChatSession(chat, adapter=None if model_name == chat.name else model_name, drop_oldest=False)
            local = session.ask("What is it?", images=[Image.open(io.BytesIO(png(3)))], config=GREEDY).text
            assert answers[model_name] == local
    assert len(set(answers.values())) == 3


def test_generation_config_of_the_release_is_not_read(release):
    """Our defaults are greedy, as a bare call of the original's generate was; the release's sampling values
    (do_sample, top_k 3, max_length 512) are a documented choice for the caller, not read from the directory."""
    assert json.loads((release / "generation_config.json").read_text())["top_k"] == 3
    config = GenerationConfig()
    assert (config.temperature, config.top_k) == (0.0, 0)
