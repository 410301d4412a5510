"""A tiny MiniGPT-4 loaded from its released file layouts through ``mmgpt.load``, driven through the contract:
stopping on ``###`` per row (whatever tokens spell it), batched = alone = recomputed, multi-turn chat with cache
reuse and several images, context trimming that keeps BOS, the system line and whole images, adapters per request,
the HTTP API with an image, and ``mmgpt chat`` on an exported directory.

The original stopped on row 0 only, or only when every row had stopped (prefix-systems.md D-1); ours stops each
row where it says ``###``."""

from __future__ import annotations

import base64
import io
import sys

import pytest
import torch
from PIL import Image
from torch import nn

from mmgpt.chat import ChatModel, ChatSession
from mmgpt.cli import main
from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.styles import get_style
from mmgpt.data.styles.minigpt4 import SYSTEM
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, generate, stream
from mmgpt.model.checkpoints import save_pretrained
from mmgpt.model.lora import apply_lora, load_named_adapter, lora_parameters, save_adapter
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from mmgpt.tokens import IMAGE_POSITION
from tests.minigpt4_tiny import IMAGE_SIZE, QUERIES, load_tiny, write_tiny_minigpt4
from tests.test_contract import from_scratch, last_prompt
from tests.toy_prefix import greedy_by_recomputation

STOP = get_style("minigpt4").stop_strings  # ("###",)
GREEDY = GenerationConfig(max_new_tokens=8, stop_strings=STOP)


def picture(seed: int) -> Image.Image:
    size = IMAGE_SIZE + 6
    data = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.frombytes("RGB", (size, size), data.numpy().tobytes())


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return write_tiny_minigpt4(tmp_path_factory.mktemp("minigpt4-chat"))


@pytest.fixture(scope="module")
def loaded(downloads):
    return load_tiny(downloads)


@pytest.fixture(scope="module")
def chat(loaded) -> ChatModel:
    return ChatModel.wrap(*loaded)


def prompt_of(model, tokenizer, text: str, images=()) -> tuple[list[int], torch.Tensor | None]:
    conversation = Conversation([Message("user", text, tuple(images))])
    ids = tokenize_prompt(conversation, tokenizer, fmt=model.prompt_format).input_ids
    transform = model.image_transform()
    return ids, torch.stack([transform(image) for image in images]) if images else None


class ScriptedHead(nn.Module):
    """An output head that makes row r choose ``scripts[r][k]`` at call k (call 0: the prefill's last position)."""

    def __init__(self, scripts: list[list[int]], vocab: int):
        super().__init__()
        self.scripts, self.vocab, self.calls = scripts, vocab, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*hidden.shape[:2], self.vocab)
        for row, script in enumerate(self.scripts):
            logits[row, -1, script[min(self.calls, len(script) - 1)]] = 10.0
        self.calls += 1
        return logits


def test_each_row_of_a_left_padded_batch_stops_where_it_says_hashes(downloads):
    model, tokenizer = load_tiny(downloads)
    ids = tokenizer.convert_tokens_to_ids
    the, image, shows, red = ids("▁The"), ids("▁image"), ids("▁shows"), ids("▁red")
    scripts = [
        [the, ids("▁###"), the],  # ### as one piece after a space: stops at step 1
        [the, image, ids("##"), ids("#"), shows],  # ## + #: stops at step 3
        [red, ids(".###")],  # glued to the answer's last word: stops at step 1
        [the, image, shows, red],  # never says it: runs to max_new_tokens
    ]
    assert 0 not in [token for script in scripts for token in script]  # all known pieces
    rows = [prompt_of(model, tokenizer, text, [picture(i)] * (i % 2)) for i, text in enumerate(["a", "b c", "d", ""])]
    assert len({len(p) for p, _ in rows}) > 1  # the batch is left-padded
    head = ScriptedHead(scripts, len(tokenizer))
    model.language_model.lm_head = head
    config = GenerationConfig(max_new_tokens=6, stop_strings=STOP)
    out = generate(model, tokenizer, [p for p, _ in rows], images=[x for _, x in rows], config=config)
    assert [g.text for g in out] == ["The ", "The image", "red.", "The image shows red red red"]
    assert [g.finish_reason for g in out] == ["stop", "stop", "stop", "length"]
    assert [len(g.token_ids) for g in out] == [2, 4, 2, 6]
    assert [get_style("minigpt4").extract_response(g.text) for g in out][:3] == ["The", "The image", "red."]
    head.calls = 0
    model.language_model.lm_head.scripts = scripts[:3]
    out = generate(model, tokenizer, [p for p, _ in rows[:3]], images=[x for _, x in rows[:3]], config=config)
    assert [g.finish_reason for g in out] == ["stop"] * 3
    assert head.calls == 4  # the batch ends when its last row stops (step 3), not at max_new_tokens


def test_a_chat_turn_ends_at_the_styles_hashes_without_being_told(downloads):
    """ChatSession (terminal, web demo, API) adds the prompt style's stop strings itself: an answer that says
    ``###`` ends there, with no ``stop_strings`` in the request."""
    model, tokenizer = load_tiny(downloads)
    ids = tokenizer.convert_tokens_to_ids
    model.language_model.lm_head = ScriptedHead(
        [[ids("▁The"), ids("▁image"), ids("▁###"), ids("▁red")]], len(tokenizer)
    )
    reply = ChatSession(ChatModel.wrap(model, tokenizer)).ask("Hi", config=GenerationConfig(max_new_tokens=6))
    assert (reply.text, reply.finish_reason, reply.completion_tokens) == ("The image", "stop", 3)


def test_batched_greedy_equals_each_row_alone_and_recomputation(loaded):
    model, tokenizer = loaded
    rows = [
        prompt_of(model, tokenizer, "Tell me about circles."),
        prompt_of(model, tokenizer, "Describe this image in detail.", [picture(1)]),
        prompt_of(model, tokenizer, "Compare the two.", [picture(2), picture(3)]),
    ]
    prompts, images = [ids for ids, _ in rows], [pixels for _, pixels in rows]
    assert [p.count(IMAGE_POSITION) for p in prompts] == [0, QUERIES, 2 * QUERIES]
    config = GenerationConfig(max_new_tokens=10, stop_strings=STOP)
    batch = generate(model, tokenizer, prompts, images=images, config=config)
    for prompt, pixels, got in zip(prompts, images, batch, strict=True):
        (alone,) = generate(model, tokenizer, [prompt], images=[pixels], config=config)
        assert (got.token_ids, got.text, got.finish_reason) == (alone.token_ids, alone.text, alone.finish_reason)
        expected = greedy_by_recomputation(model, prompt, pixels, len(got.token_ids))  # no cache at all
        assert got.token_ids == expected
        assert "###" not in got.text
    assert len({tuple(g.token_ids) for g in batch}) == 3


def from_scratch_reply(chat: ChatModel, session: ChatSession) -> tuple[str, int]:
    """What the session's last turn should answer: its whole prompt again, no cache - the streamed text (the
    session records the deltas it streamed) and the number of tokens generated."""
    conversation = session.conversation()
    prompt = tokenize_prompt(Conversation(conversation.messages[:-1]), chat.tokenizer, fmt=chat.model.prompt_format)
    pixels = torch.stack([chat.transform(image) for image in prompt.images]) if prompt.images else None
    text = "".join(stream(chat.model, chat.tokenizer, prompt.input_ids, images=pixels, config=GREEDY))
    return text.strip(), len(from_scratch(chat, session, GREEDY))


# Turns: (text, new images): two images at once, text only, one more image.
SCRIPT = [("Describe the two pictures.", 2), ("What colour is the first?", 0), ("And this one?", 1)]


def chat_the_script(chat: ChatModel, *, redone: int, per_image: int) -> ChatSession:
    """SCRIPT's turns: every answer equals generation from scratch, every prompt holds ``per_image`` positions per
    image so far, and every turn takes the previous turn's whole prompt from the cache but its last ``redone``
    tokens."""
    session = ChatSession(chat)
    seed, previous = 0, 0
    for turn, (text, n_images) in enumerate(SCRIPT):
        images = [picture(seed := seed + 1) for _ in range(n_images)]
        reply = session.ask(text, images=images, config=GREEDY)
        assert (reply.text, reply.completion_tokens) == from_scratch_reply(chat, session)
        ids = last_prompt(chat, session)
        assert ids.count(IMAGE_POSITION) == per_image * sum(len(t.images) for t in session.turns)
        if turn:
            assert reply.reused_tokens >= previous - redone
        previous = reply.prompt_tokens
    return session


def test_multi_turn_chat_with_several_images_equals_from_scratch_and_reuses_the_cache(chat):
    session = chat_the_script(chat, redone=0, per_image=QUERIES)
    assert session.prompt_text().startswith(SYSTEM + "###Human: <Img><ImageHere></Img>###Human: <Img><ImageHere>")


def test_the_llama2_release_chats_in_the_head_demos_prompt_and_reuses_the_cache(downloads):
    chat = ChatModel.wrap(*load_tiny(downloads, llama2=True))
    # Every turn redoes the previous prompt's last token: the lone "▁" of " [/INST] ", which the answer's first piece
    # takes in the next prompt.
    session = chat_the_script(chat, redone=1, per_image=chat.model.tokens_per_image)
    assert session.prompt_text().startswith(
        SYSTEM + "<s>[INST] <Img><ImageHere></Img><s>[INST] <Img><ImageHere></Img> Describe the two pictures. [/INST] "
    )


def test_context_trimming_drops_whole_turns_and_keeps_bos_and_the_system_line(chat):
    system = chat.tokenizer(SYSTEM + "###", add_special_tokens=False).input_ids
    session = ChatSession(chat, context_budget=len(system) + 3 * QUERIES + 40)
    for i, (text, n_images) in enumerate([*SCRIPT, ("Anything else?", 1)]):
        session.ask(text, images=[picture(10 + i + k) for k in range(n_images)], config=GREEDY)
    assert session.notices and all("dropped the oldest turn" in n for n in session.notices)
    ids = last_prompt(chat, session)
    assert ids[: 1 + len(system)] == [chat.tokenizer.bos_token_id, *system]  # BOS and the system text stay
    kept = [image for turn in session.turns for image in turn.images]
    assert ids.count(IMAGE_POSITION) == QUERIES * len(kept)  # never part of an image
    assert len(ids) + GREEDY.max_new_tokens <= session.context_budget
    assert (session.last.text, session.last.completion_tokens) == from_scratch_reply(chat, session)


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def test_adapters_per_request_and_the_api_with_an_image(downloads, tmp_path):
    from fastapi.testclient import TestClient

    model, tokenizer = load_tiny(downloads)
    for seed, name in enumerate(("one", "two"), start=1):
        tuned, _ = load_tiny(downloads)
        apply_lora(tuned)  # the default LoraConfig: the LM's self-attention (no cross-attention on a prefix model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in lora_parameters(tuned):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        load_named_adapter(model, save_adapter(tuned, tmp_path / name), name)
    limits = ServeLimits(max_image_pixels=64 * 64, max_images=2, max_active=1, max_waiting=1)
    chat = ChatModel.wrap(model, tokenizer, name="minigpt4", max_image_pixels=limits.max_image_pixels)
    assert chat.adapters == ["one", "two"]

    def local(text, images=(), adapter=None) -> str:
        session = ChatSession(chat, adapter=adapter, drop_oldest=False)
        pil = [Image.open(io.BytesIO(data)) for data in images]
        return session.ask(text, images=pil, config=GREEDY).text

    with TestClient(build_app(chat, ServeConfig(web_path=None, limits=limits))) as client:
        answers = {}
        for name in ("minigpt4", "one", "two"):
            content = [{"type": "text", "text": "What is it?"}, image_part(png(3))]
            body = {"model": name, "messages": [{"role": "user", "content": content}], "temperature": 0}
            response = client.post("/v1/chat/completions", json={**body, "max_tokens": 8, "stop": list(STOP)})
            assert response.status_code == 200, response.text
            answers[name] = response.json()["choices"][0]["message"]["content"]
            assert answers[name] == local("What is it?", [png(3)], adapter=None if name == "minigpt4" else name)
        assert len(set(answers.values())) == 3  # each adapter answers as itself


def test_mmgpt_chat_runs_on_an_exported_directory(loaded, tmp_path, monkeypatch, capsys):
    save_pretrained(*loaded, tmp_path / "exported")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello there\n/prompt\n/quit\n"))
    assert main(["chat", "--model", str(tmp_path / "exported"), "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{SYSTEM}###Human: Hello there###Assistant:" in out
