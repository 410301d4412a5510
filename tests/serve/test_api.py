"""The official openai client against a live server on loopback; bad inputs; the queue; disconnects."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import openai
import pytest
from PIL import Image

from mmgpt.chat import ChatSession
from mmgpt.generate import GenerationConfig
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from tests.serve.conftest import ADAPTERS, LIMITS, EndlessChatModel, free_port, live_server, png


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data)}}


def local(chat_model, text, images=(), adapter=None, history=(), max_new_tokens=8):
    """What the server should answer: the same chat on the same model, in-process."""
    session = ChatSession(chat_model, adapter=adapter, drop_oldest=False)
    for question, answer in history:
        session.turns.append(session.make_turn(question))
        session.turns[-1].answer = answer
    pil = [Image.open(io.BytesIO(data)) for data in images]
    return session.ask(text, images=pil, config=GenerationConfig(max_new_tokens=max_new_tokens))


@pytest.fixture(scope="module")
def client(server):
    url, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_lists_the_base_and_each_adapter(client):
    assert [m.id for m in client.models.list().data] == ["tiny", *ADAPTERS]


def test_plain_completion_equals_the_local_chat(client, chat_model):
    out = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "describe the image"}], temperature=0, max_tokens=8
    )
    expected = local(chat_model, "describe the image")
    assert out.choices[0].message.content == expected.text
    assert out.choices[0].finish_reason == expected.finish_reason
    assert out.usage.prompt_tokens == expected.prompt_tokens
    assert out.usage.completion_tokens == expected.completion_tokens


def test_streaming_with_images_and_history(client, chat_model):
    images = [png(1), png(2)]
    messages = [
        {"role": "system", "content": "ignored: the template has a fixed header"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": [{"type": "text", "text": "compare"}, *map(image_part, images)]},
    ]
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=messages,
            temperature=0,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = local(chat_model, "compare", images, history=[("hello", "hi there")])
    assert text == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == expected.finish_reason
    assert chunks[-1].usage.completion_tokens == expected.completion_tokens


def test_two_adapters_answer_as_their_adapter(client, chat_model):
    answers = {}
    for model in ("tiny", *ADAPTERS):
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": [{"type": "text", "text": "what is it"}, image_part(png(3))]}],
            temperature=0,
            max_tokens=8,
        )
        answers[model] = out.choices[0].message.content
        adapter = None if model == "tiny" else model
        assert answers[model] == local(chat_model, "what is it", [png(3)], adapter=adapter).text
    assert len(set(answers.values())) == 3


def test_seeded_sampling_is_reproducible(client):
    def ask():
        out = client.chat.completions.create(
            model="one",
            messages=[{"role": "user", "content": "tell me"}],
            temperature=1.2,
            top_p=0.9,
            seed=5,
            max_tokens=8,
            stop=["zzz"],
        )
        return out.choices[0].message.content

    assert ask() == ask()


def big_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), "red").save(buffer, format="PNG")
    return buffer.getvalue()


BAD = {
    "bad base64": (
        400,
        "not valid base64",
        {"content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]},
    ),
    "not an image": (400, "not an image", {"content": [image_part(b"<html>not found</html>")]}),
    "oversized image": (413, "over the budget", {"content": [image_part(big_png(200))]}),
    "too many images": (400, "at most 3 per request", {"content": [image_part(png(i)) for i in range(4)]}),
    "http url": (
        400,
        "image URLs are off",
        {"content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
    ),
    "file url": (
        400,
        "scheme 'file'",
        {"content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]},
    ),
    "prompt over the context": (400, "over the context budget", {"content": "word " * 2500}),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_get_a_4xx_json_error_and_the_server_keeps_serving(server, case):
    url, _ = server
    status, message, user = BAD[case]
    body = {"model": "tiny", "messages": [{"role": "user", **user}], "max_tokens": 4}
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    ok = httpx.post(f"{url}/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]})
    assert ok.status_code == 200


def test_unknown_model_malformed_json_and_wrong_roles(server):
    url, _ = server
    post = lambda **kw: httpx.post(f"{url}/v1/chat/completions", timeout=60, **kw)  # noqa: E731
    missing = post(json={"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    broken = post(content=b'{"model": "tiny", "messages": [', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
    twice = post(json={"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]})
    assert twice.status_code == 400 and "expected the user" in twice.json()["error"]["message"]
    unknown = httpx.get(f"{url}/v1/nothing")
    assert unknown.status_code == 404 and "no such endpoint /v1/nothing" in unknown.json()["error"]["message"]


def test_full_queue_answers_429_and_a_disconnected_stream_frees_its_slot(chat_model):
    endless = EndlessChatModel(chat_model.model, chat_model.tokenizer, chat_model.transform, name="tiny")
    limits = ServeLimits(max_active=1, max_waiting=1)
    app = build_app(endless, ServeConfig(web_path=None, limits=limits))
    admission = app.state.admission
    long = {"model": "tiny", "messages": [{"role": "user", "content": "go on"}], "max_tokens": 1900, "temperature": 0}
    short = dict(long, max_tokens=2)
    queued: dict[str, int] = {}
    with live_server(app, free_port()) as url:
        post = lambda body: httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)  # noqa: E731
        waiter = threading.Thread(target=lambda: queued.update(status=post(short).status_code))
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=dict(long, stream=True), timeout=60) as first:
            lines = first.iter_lines()
            assert next(lines).startswith("data: ")
            waiter.start()  # max_active=1, max_waiting=1: this one waits...
            deadline = time.monotonic() + 10
            while admission.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = post(short)  # ...and this one is refused at once
            assert refused.status_code == 429 and refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.headers["retry-after"] == "1"
            assert (admission.active, admission.waiting) == (1, 1) and admission.refused == {"server_busy": 1}
        # The streaming client hung up: its 1900-token generation (19 s at least) stops and frees the slot.
        started = time.monotonic()
        waiter.join(timeout=20)
        assert queued == {"status": 200} and time.monotonic() - started < 5
        deadline = time.monotonic() + 10
        while (admission.active or admission.waiting) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (admission.active, admission.waiting) == (0, 0)


def test_api_key_and_body_limit(chat_model):
    from fastapi.testclient import TestClient

    limits = ServeLimits(max_request_bytes=2000)
    app = build_app(chat_model, ServeConfig(api_key="sekrit", web_path=None, limits=limits))
    with TestClient(app) as http:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert http.post("/v1/chat/completions", json=body).status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer sekrit"}
        assert http.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
        assert http.get("/metrics").status_code == 401 and http.get("/metrics", headers=auth).status_code == 200
        huge = dict(body, messages=[{"role": "user", "content": "x" * 3000}])
        too_big = http.post("/v1/chat/completions", content=json.dumps(huge), headers=auth)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert LIMITS.allow_image_urls is False
