"""Conversations between their turns. An API client that sends the whole conversation again at every turn gets the
previous turn's session back - its cache (``usage.prompt_tokens_details.cached_tokens``) and its images' features (not
encoded again) - and the same answers as a server that keeps nothing. API conversations and browser tabs keep their
caches under one bound: the least recently used lose theirs, and answer the same from scratch."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mmgpt.chat import ChatSession
from mmgpt.generate import GenerationConfig
from mmgpt.model.cache import storage_bytes
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.conversations import IdleConversations, tab_key
from mmgpt.serve.limits import ServeLimits
from mmgpt.serve.web import build_demo
from tests.serve.conftest import png


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}


def questions(seed: int = 5) -> list:
    return [
        [{"type": "text", "text": "what is in the picture?"}, image_part(png(seed))],
        "and its colour?",
        [{"type": "text", "text": "compare with this one"}, image_part(png(seed + 1))],
    ]


def converse(
    http: TestClient, *, stream: bool = False, answers: dict[int, str] | None = None, seed: int = 5
) -> list[dict]:
    """Three turns, each request carrying the whole conversation (the answers as received, or ``answers[i]``
    in their place); per turn: the answer and its usage."""
    messages: list[dict] = []
    out = []
    for i, question in enumerate(questions(seed)):
        messages.append({"role": "user", "content": question})
        body = {"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        response = http.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        if stream:
            events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
            chunks = [json.loads(e) for e in events]
            text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
            usage = chunks[-1]["usage"]
        else:
            text, usage = response.json()["choices"][0]["message"]["content"], response.json()["usage"]
        out.append({"text": text, "usage": usage})
        messages.append({"role": "assistant", "content": (answers or {}).get(i, text)})
    return out


def app_with(chat_model, cache_bytes: int):
    limits = ServeLimits(max_image_pixels=64 * 64, idle_cache_bytes=cache_bytes)
    return build_app(chat_model, ServeConfig(web_path=None, limits=limits))


def count_encodings(chat_model, monkeypatch) -> list[int]:
    encoded: list[int] = []
    real = chat_model.model.embed_images

    def counting(pixels):
        encoded.append(pixels.shape[0])
        return real(pixels)

    monkeypatch.setattr(chat_model.model, "embed_images", counting)
    return encoded


def as_a_local_session(chat_model) -> list[tuple[str, int]]:
    """The same three turns asked of one ChatSession in the library: (answer, tokens it reused) per turn."""
    session = ChatSession(chat_model, drop_oldest=False)
    out = []
    for question in questions():
        text = question if isinstance(question, str) else question[0]["text"]
        images = [] if isinstance(question, str) else [Image.open(io.BytesIO(png_of(question[1])))]
        reply = session.ask(text, images=images, config=GenerationConfig(max_new_tokens=6))
        out.append((reply.text, reply.reused_tokens))
    return out


def png_of(part: dict) -> bytes:
    return base64.b64decode(part["image_url"]["url"].split(",", 1)[1])


@pytest.mark.parametrize("stream", [False, True])
def test_a_conversation_sent_again_continues_its_session(chat_model, monkeypatch, stream):
    with TestClient(app_with(chat_model, 0)) as http:
        fresh = converse(http, stream=stream)  # a server that keeps nothing: every turn from scratch
    local = as_a_local_session(chat_model)
    encoded = count_encodings(chat_model, monkeypatch)
    with TestClient(app := app_with(chat_model, 2**30)) as http:
        kept = converse(http, stream=stream)
    assert [t["text"] for t in kept] == [t["text"] for t in fresh] == [text for text, _ in local]
    assert [t["usage"]["prompt_tokens_details"]["cached_tokens"] for t in fresh] == [0, 0, 0]
    # Each turn reuses what one session in the library reuses when asked the same turns (the model says which
    # cached positions stay valid: here the third turn's new image cuts it short).
    cached = [t["usage"]["prompt_tokens_details"]["cached_tokens"] for t in kept]
    assert cached == [reused for _, reused in local] and cached[1] > 0
    assert encoded == [1, 1]  # each image once: the first turn's is not encoded again at the second or third
    assert app.state.conversations.hits == 2


def test_an_edited_conversation_misses(chat_model):
    with TestClient(app := app_with(chat_model, 2**30)) as http:
        edited = converse(http, answers={0: "something the model did not say"})
    cached = [t["usage"]["prompt_tokens_details"]["cached_tokens"] for t in edited]
    assert cached[1] == 0 and cached[2] > 0  # turn 2 starts afresh; turn 3 continues turn 2's session
    assert app.state.conversations.hits == 1


def test_parked_conversations_are_bounded_by_the_memory_they_hold(chat_model):
    with TestClient(app := app_with(chat_model, 2**30)) as http:
        converse(http, seed=5)
        converse(http, seed=7)
    conversations = app.state.conversations
    assert len(conversations) == 2 and 0 < conversations.bytes <= 2**30  # each conversation's latest session
    small = IdleConversations(max_bytes=conversations.bytes - 1)
    for key, session in conversations._live():
        small.park(key, session)
    assert len(small) == 1 and small.bytes <= small.max_bytes  # the least recently parked left
    with pytest.raises(ValueError, match="max_bytes=-1 must be >= 0"):
        IdleConversations(-1)


def test_browser_tabs_share_the_bound_and_a_tab_whose_cache_was_dropped_answers_the_same(chat_model, tmp_path):
    """Two tabs (the demo's handler, as gradio calls it) under a bound that holds one tab's cache: the second tab's
    turn drops the first tab's cache (its history stays); the first tab's next answer is the one it gives with
    nothing dropped, computed from scratch."""
    image = tmp_path / "picture.png"
    image.write_bytes(png(3))
    turns = [("a", "what is in the picture?", [str(image)]), ("b", "hello there", []), ("b", "and then?", [])]
    turns.append(("a", "and its colour?", []))

    def run(bound: int) -> tuple[list[tuple[str, int, int]], IdleConversations, int]:
        """Per turn: the answer, the tokens it reused, the bytes its tab's session then held; the conversations;
        how many sessions were parked at the end."""
        conversations = IdleConversations(bound)
        demo = build_demo(chat_model, conversations=conversations)
        respond = next(f.fn for f in demo.fns.values() if f.name == "respond")
        tabs: dict[str, ChatSession | None] = {"a": None, "b": None}
        out = []
        try:
            for tab, text, files in turns:
                *_, (_, _, tabs[tab], _) = respond({"text": text, "files": files}, tabs[tab], "tiny", 0.0, 1.0, 5)
                out.append((tabs[tab].last.text, tabs[tab].last.reused_tokens, tabs[tab].cached_bytes))
            parked = len(conversations)
        finally:
            demo.cleanup()
        return out, conversations, parked

    unbounded, everything, parked = run(2**30)
    assert all(reused > 0 for _, reused, _ in unbounded[2:]) and everything.evicted == 0 and parked == 2
    held = [cached for _, _, cached in unbounded]
    one_tab = max(held[:3])
    assert held[0] + held[1] > one_tab  # so tab b's first turn drops tab a's cache
    bounded, conversations, _ = run(one_tab)
    assert [text for text, _, _ in bounded] == [text for text, _, _ in unbounded]
    assert bounded[2][1] > 0 and bounded[3][1] == 0  # tab b kept its cache; tab a's was dropped, then recomputed
    assert conversations.evicted >= 1


def test_idle_caches_go_least_recently_used_first_and_tabs_are_held_weakly(chat_model):
    def session_holding(question: str) -> ChatSession:
        session = ChatSession(chat_model)
        session.ask(question, config=GenerationConfig(max_new_tokens=3))
        return session

    first, second, third = (session_holding(q) for q in ("one", "two two", "three three three"))
    conversations = IdleConversations(first.cached_bytes + second.cached_bytes + third.cached_bytes - 1)
    conversations.park("api:first", first)
    conversations.park(tab_key(second), second, weak=True)
    assert len(conversations) == 2 and conversations.evicted == 0
    conversations.park("api:third", third)  # over the bound: the first parked loses its cache
    assert first.cached_tokens == 0 and len(first.turns) == 1 and conversations.take("api:first") is None
    assert conversations.take(tab_key(second)) is second and second.cached_tokens > 0
    conversations.park(tab_key(second), second, weak=True)
    del second  # the tab let its session go: it leaves the parked ones with it
    conversations.park("api:third", third)
    assert len(conversations) == 1 and conversations.bytes == third.cached_bytes
    huge = IdleConversations(third.cached_bytes - 1)
    huge.park("api:third", third)  # a cache over the whole bound is dropped at once
    assert len(huge) == 0 and third.cached_tokens == 0 and huge.evicted == 1


def test_a_session_counts_the_memory_its_cache_and_its_images_hold(chat_model):
    """``cached_bytes``: every buffer once (views of a buffer count as the buffer); the KV cache at least its
    positions x layers x keys and values, the images' features as encoded; after ``drop_cache`` the features only."""
    buffer = torch.zeros(10, 4)
    assert storage_bytes([buffer, buffer[:5], buffer[5:], None]) == 160
    assert storage_bytes([buffer, torch.zeros(3, dtype=torch.float64)]) == 160 + 24
    session = ChatSession(chat_model)
    session.ask("what is it?", images=[Image.open(io.BytesIO(png(9)))], config=GenerationConfig(max_new_tokens=3))
    features = sum(f.nbytes for f in session._features.values())
    lm = chat_model.model.language_model.config.get_text_config()
    per_position = lm.num_hidden_layers * 2 * lm.num_key_value_heads * (lm.hidden_size // lm.num_attention_heads) * 4
    assert session.cached_bytes >= features + session.cached_tokens * per_position
    session.drop_cache()
    assert session.cached_bytes == features > 0 and session.cached_tokens == 0


def test_a_tab_with_an_answer_coming_refuses_a_second_turn(chat_model):
    """Regenerate, another message, undo or clear while the tab's answer still streams would work on the session of
    the running turn: each is refused with a toast - for a tab's first turn too - and the turn ends as alone."""
    demo = build_demo(chat_model, conversations=IdleConversations(2**30))
    handlers = {f.name: f.fn for f in demo.fns.values()}
    try:
        for prior in (False, True):  # a new tab's first turn; a turn of a tab that has a session already
            session = None
            if prior:
                *_, (_, _, session, _) = handlers["respond"]({"text": "hello", "files": []}, None, "tiny", 0.0, 1.0, 4)
            running = handlers["respond"]({"text": "and then?", "files": []}, session, "tiny", 0.0, 1.0, 6)
            _, _, session, _ = next(running)  # its turn is running; gradio now holds this session for the tab
            turns = len(session.turns)
            with pytest.warns(UserWarning, match="an answer is still coming in this tab"):
                refused = list(handlers["regenerate"](session, "tiny", 0.0, 1.0, 6))
            with pytest.warns(UserWarning, match="an answer is still coming in this tab"):
                handlers["undo"](session)
            with pytest.warns(UserWarning, match="an answer is still coming in this tab"):
                handlers["clear"](session)
            assert len(refused) == 1 and len(session.turns) == turns
            *_, (_, history, after, _) = running
            assert after is session and history[-1]["role"] == "assistant" and session.last.completion_tokens == 6
            again = list(handlers["regenerate"](session, "tiny", 0.0, 1.0, 6))  # the turn is over: allowed
            assert len(again) > 1 and session.last.completion_tokens == 6
    finally:
        demo.cleanup()
