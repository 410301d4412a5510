"""ChatSession: cache reuse equals full recomputation (both media masks), budget, undo/regenerate, adapters."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from mmgpt.chat import ChatModel, ChatSession, ContextOverflowError
from mmgpt.data.conversation import Conversation
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.fusion.media_mask import reusable_prefix
from mmgpt.model.lora import apply_lora, load_named_adapter, lora_parameters, save_adapter
from tests.model.conftest import IMAGE_SIZE, tiny_model

GREEDY = GenerationConfig(max_new_tokens=6)


def picture(seed: int, size: int = IMAGE_SIZE + 8) -> Image.Image:
    pixels = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return Image.frombytes("RGB", (size, size), pixels.numpy().tobytes())


def from_scratch(chat: ChatModel, session: ChatSession, config: GenerationConfig) -> list[int]:
    """What the session's last turn should produce: the whole conversation, no cache, via generate()."""
    conversation = session.conversation()
    messages = conversation.messages[:-1] if conversation.messages[-1].role == "assistant" else conversation.messages
    prompt = tokenize_prompt(Conversation(messages), chat.tokenizer)
    pixels = torch.stack([chat.transform(image) for image in prompt.images]) if prompt.images else None
    (out,) = generate(chat.model, chat.tokenizer, [prompt.input_ids], images=[pixels], config=config)
    return out.token_ids


@pytest.fixture(scope="module", params=["previous", "following"])
def chat(request):
    model, tokenizer = tiny_model("llama", request.param)
    return ChatModel.wrap(model, tokenizer)


# Turns: (text, number of new images). Images arrive in turns 1, 3 and 4 (two at once), text-only in between.
SCRIPT = [("describe the image", 1), ("what color is the circle?", 0), ("and this one?", 1), ("compare", 2)]


def test_multi_turn_session_equals_full_recomputation(chat):
    session = ChatSession(chat)
    seed = 0
    for text, n_images in SCRIPT:
        images = [picture(seed := seed + 1) for _ in range(n_images)]
        answer = "".join(session.send(text, images=images, config=GREEDY))
        expected = from_scratch(chat, session, GREEDY)
        assert chat.tokenizer.decode(expected, skip_special_tokens=True).strip() == answer


def test_a_new_turn_runs_only_its_new_tokens(chat):
    session = ChatSession(chat)
    session.ask("describe the image", images=[picture(1)], config=GREEDY)
    first = session.last
    assert first.reused_tokens == 0 and first.computed_tokens == first.prompt_tokens
    session.ask("what color is the circle?", config=GREEDY)
    second = session.last
    # Only the previous answer's tail (at most its tokens + EOS) and the new instruction run again.
    new_text = second.prompt_tokens - first.prompt_tokens
    assert second.computed_tokens <= new_text + 1
    assert second.reused_tokens >= first.prompt_tokens


def test_adding_an_image_under_following_recomputes_from_the_text_after_the_last_image():
    ids = [1, 9, 50, 7, 7, 7, 7]  # <image>=50 at position 2
    new = [*ids, 8, 50, 6]
    common = dict(image_token_id=50, bypass=True)
    assert reusable_prefix(ids, ["a"], new, ["a", "b"], media_mask="previous", **common) == len(ids)
    # "following": text after image a saw nothing; with image b after it, it attends b.
    assert reusable_prefix(ids, ["a"], new, ["a", "b"], media_mask="following", **common) == 3
    # A different image behind the same <image> token: cut where its attention starts.
    assert reusable_prefix(ids, ["a"], ids, ["z"], media_mask="following", **common) == 0
    assert reusable_prefix(ids, ["a"], ids, ["z"], media_mask="previous", **common) == 2
    # Language-only bypass switching on: every position changes.
    assert reusable_prefix([1, 9, 7], [], [1, 9, 7, 50], ["a"], media_mask="previous", **common) == 0
    assert (
        reusable_prefix([1, 9, 7], [], [1, 9, 7, 50], ["a"], media_mask="previous", image_token_id=50, bypass=False)
        == 3
    )


def test_text_first_then_image_equals_full_recomputation(chat):
    session = ChatSession(chat)
    session.ask("hello", config=GREEDY)
    answer = session.ask("what is this?", images=[picture(3)], config=GREEDY).text
    expected = from_scratch(chat, session, GREEDY)
    assert chat.tokenizer.decode(expected, skip_special_tokens=True).strip() == answer


def test_undo_then_a_different_image_is_not_served_from_the_cache(chat):
    session = ChatSession(chat)
    session.ask("describe", images=[picture(1)], config=GREEDY)
    session.ask("and now?", images=[picture(2)], config=GREEDY)
    session.undo()
    answer = session.ask("and now?", images=[picture(5)], config=GREEDY).text
    expected = from_scratch(chat, session, GREEDY)
    assert chat.tokenizer.decode(expected, skip_special_tokens=True).strip() == answer


def test_regenerate_and_reset(chat):
    session = ChatSession(chat)
    first = session.ask("describe", images=[picture(1)], config=GREEDY).text
    again = "".join(session.regenerate(GREEDY))
    assert again == first and len(session.turns) == 1
    sampled = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=3)
    other = "".join(session.regenerate(sampled))
    assert session.turns[-1].answer == other.strip()
    session.reset()
    assert session.turns == [] and session.prompt_text() == ""


def test_streaming_deltas_join_to_the_answer_and_a_closed_stream_keeps_a_valid_history(chat):
    session = ChatSession(chat)
    stream = session.send("describe", images=[picture(1)], config=GenerationConfig(max_new_tokens=12))
    first = next(stream)
    stream.close()
    assert session.last.finish_reason == "cancelled"
    assert session.turns[-1].answer == first.strip()
    answer = session.ask("more", config=GREEDY).text
    assert chat.tokenizer.decode(from_scratch(chat, session, GREEDY), skip_special_tokens=True).strip() == answer


def test_a_stop_string_ends_the_turn_with_no_model_step_past_it(chat, monkeypatch):
    free = GenerationConfig(max_new_tokens=12)
    session = ChatSession(chat)
    session.turns.append(session.make_turn("describe", [picture(1)]))
    raw = chat.tokenizer.decode(from_scratch(chat, session, free), skip_special_tokens=True)
    stop = next(c for c in raw[2:] if not c.isspace())  # a character the free answer reaches after a few
    calls = []
    forward = chat.forward
    monkeypatch.setattr(chat, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
    reply = ChatSession(chat).ask(
        "describe", images=[picture(1)], config=dataclasses.replace(free, stop_strings=(stop,))
    )
    assert (reply.text, reply.finish_reason) == (raw[: raw.index(stop)].strip(), "stop")
    assert len(calls) == 1 + reply.completion_tokens - 1  # the prefill, then a step per token but the last


def test_context_budget_drops_oldest_turns_with_their_images(chat):
    session = ChatSession(chat, context_budget=120)
    for i in range(4):
        session.ask(f"describe picture number {i}", images=[picture(i)], config=GREEDY)
    assert session.notices and "dropped the oldest turn" in session.notices[0]
    conversation = Conversation(session.conversation().messages[:-1])  # the last prompt, without its answer
    prompt = tokenize_prompt(conversation, chat.tokenizer)
    assert prompt.input_ids.count(chat.model.special.image) == len(conversation.images) == len(session.turns)
    assert len(prompt.input_ids) <= 120
    strict = ChatSession(chat, context_budget=40, drop_oldest=False)
    with pytest.raises(ContextOverflowError, match="over the context budget of 40"):
        strict.send("describe this picture in great detail please", images=[picture(0)], config=GREEDY)
    assert strict.turns == []


def test_prompt_text_and_save(chat, tmp_path):
    session = ChatSession(chat)
    session.ask("describe", images=[picture(1)], config=GREEDY)
    text = session.prompt_text()
    assert text.count("<image>") == 1 and "### Instruction:\ndescribe\n\n### Response:\n" in text
    saved = json.loads(session.save(tmp_path / "chat.json").read_text())
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant"]
    assert saved["messages"][0]["images"] == ["<in-memory image>"]


def model_with_adapters(folder, names=("one", "two"), *, quantize: str | None = None):
    """A tiny "following" model (its language model quantized with ``quantize``) with one random LoRA adapter per
    name loaded over it, by name."""
    paths = []
    for seed, name in enumerate(names, start=1):
        model, _ = tiny_model("llama", "following")
        apply_lora(model)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in lora_parameters(model):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
        paths.append(save_adapter(model, folder / name))
    model, tokenizer = tiny_model("llama", "following")
    if quantize is not None:
        from mmgpt.model.quantize import quantize_language_model

        quantize_language_model(model, quantize, device="cpu")
    for name, path in zip(names, paths, strict=True):
        load_named_adapter(model, path, name)
    return model, tokenizer


def test_sessions_with_different_adapters_interleave_without_mixing(tmp_path):
    import threading

    model, tokenizer = model_with_adapters(tmp_path)
    chat = ChatModel.wrap(model, tokenizer)
    assert chat.adapters == ["one", "two"]
    config = GenerationConfig(max_new_tokens=10)
    adapters = (None, "one", "two")
    alone = {a: ChatSession(chat, adapter=a).ask("describe", images=[picture(1)], config=config).text for a in adapters}
    assert len(set(alone.values())) == 3  # the adapters really change the answer
    got = {}

    def run(adapter):
        got[adapter] = ChatSession(chat, adapter=adapter).ask("describe", images=[picture(1)], config=config).text

    threads = [threading.Thread(target=run, args=(a,)) for a in adapters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
    with pytest.raises(ValueError, match="no adapter named 'three'"):
        ChatSession(chat, adapter="three")


def test_terminal_chat_reads_a_pipe_and_prints_only_answers(chat, tmp_path):
    import io

    from mmgpt.commands.chat import chat_loop

    image = tmp_path / "picture.png"
    picture(1).save(image)
    script = (
        f"/image {image}\ndescribe\n/undo\n/image {tmp_path / 'missing.png'}\ndescribe\n/save {tmp_path / 'c.json'}\n"
    )
    out = io.StringIO()
    session = ChatSession(chat)
    status = chat_loop(session, GREEDY, io.StringIO(script), out, interactive=False)
    expected = ChatSession(chat).ask("describe", images=[picture(1)], config=GREEDY).text
    plain = ChatSession(chat).ask("describe", config=GREEDY).text
    assert status == 1  # the missing image was reported (on stderr) and the chat went on
    assert out.getvalue() == f"{expected}\n{plain}\n"
    assert json.loads((tmp_path / "c.json").read_text())["messages"][0]["text"] == "describe"
