"""Issue 22's hostile request set through the API - never a 5xx, always OpenAI's JSON error shape - and a property
test (hypothesis, derandomised) of the request parser and the endpoint with random bodies and random image bytes."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmgpt.chat import ChatSession
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.chat_request import parse_chat_request
from mmgpt.serve.errors import APIError
from tests.hostile import image_bytes
from tests.serve.conftest import LIMITS, png
from tests.serve.test_api import data_url, image_part

FUZZ = settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def http(chat_model):
    app = build_app(chat_model, ServeConfig(web_path=None, limits=LIMITS))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def user(content) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 2}


def nested(depth: int) -> bytes:
    return b'{"model": "tiny", "messages": ' + b"[" * depth + b"]" * depth + b"}"


JSON = {"content-type": "application/json"}
# name: (raw body, status, code or None, a part of the message)
HOSTILE = {
    # the four that were 500 before issue 22
    "a literal <image> in the text": (user("what is <image> here?"), 400, "invalid_content", "literal '<image>'"),
    "JSON nested 1,500 deep": (nested(1500), 400, "invalid_json", "nests too deep"),
    "JSON nested 100 deep": (nested(100), 400, "invalid_json", "more than 32 levels"),
    "a lone surrogate": (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "a\\ud800b"}]}',
        400,
        "invalid_text",
        "lone UTF-16 surrogate ('\\ud800' at character 1",
    ),
    "seed 2**64": ({**user("hi"), "seed": 2**64}, 400, None, "seed=18446744073709551616 must be an integer in"),
    "seed 2**64, streamed": ({**user("hi"), "seed": 2**64, "stream": True}, 400, None, "must be an integer in"),
    # the ones handled before
    "bad base64": (
        user([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
        400,
        None,
        "not valid base64",
    ),
    "not an image": (user([image_part(b"<html>not found</html>")]), 400, "invalid_image", "looks like text or HTML"),
    "too many images": (user([image_part(png(i)) for i in range(4)]), 400, "too_many_images", "at most 3"),
    "http image url": (user([{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]), 400, None, "off"),
    "file image url": (
        user([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]),
        400,
        None,
        "scheme 'file'",
    ),
    "a huge scheme": (
        user([{"type": "image_url", "image_url": {"url": "x" * 100_000 + ":y"}}]),
        400,
        None,
        "scheme 'xxxx",
    ),
    "prompt over the context": (user("word " * 2500), 400, "context_length_exceeded", "over the context budget"),
    "unknown model": ({**user("hi"), "model": "gpt-9" * 10_000}, 404, "model_not_found", "does not exist"),
    "malformed JSON": (b'{"model": "tiny", "messages": [', 400, "invalid_json", "not valid JSON"),
    "not UTF-8": (b'{"model": "\xff\xfe"}', 400, "invalid_json", "not valid JSON"),
    "a list body": ([1, 2], 400, None, "must be a JSON object"),
    "no model": ({"messages": [{"role": "user", "content": "hi"}]}, 400, None, "model is required"),
    "no messages": ({"model": "tiny", "messages": []}, 400, None, "non-empty list"),
    "assistant first": (
        {"model": "tiny", "messages": [{"role": "assistant", "content": "hi"}]},
        400,
        None,
        "expected the user",
    ),
    "a bad role": ({"model": "tiny", "messages": [{"role": "tool", "content": "hi"}]}, 400, None, "role='tool'"),
    "a bad part": (user([{"type": "audio"}]), 400, None, "parts are"),
    "n = 2": ({**user("hi"), "n": 2}, 400, None, "use n=1"),
    "temperature NaN": (
        b'{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        400,
        None,
        "temperature=nan",
    ),
    "max_tokens 0": ({**user("hi"), "max_tokens": 0}, 400, None, "positive integer"),
    "five stop strings": ({**user("hi"), "stop": ["a"] * 5}, 400, None, "at most 4"),
    "a deep stop list": ({**user("hi"), "stop": [[[["x"]]]]}, 400, None, "stop=[[[[...]]]]"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_requests_get_an_openai_shaped_4xx(http, case):
    body, status, code, part = HOSTILE[case]
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = http.post("/v1/chat/completions", content=raw, headers=JSON)
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert part in error["message"] and len(error["message"]) < 600, error["message"][:300]


def test_other_methods_and_paths_are_json_too(http):
    for response in (http.get("/v1/chat/completions"), http.delete("/v1/models"), http.get("/v1/nothing")):
        assert 400 <= response.status_code < 500 and set(response.json()["error"]) >= {"message", "type"}


def test_an_unexpected_failure_is_a_json_500_with_a_request_id_and_no_internals(chat_model, monkeypatch, caplog):
    def broken(self, config=None):
        raise RuntimeError("boom in /srv/secret/path")

    monkeypatch.setattr(ChatSession, "respond", broken)
    app = build_app(chat_model, ServeConfig(web_path=None, limits=LIMITS))
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR, "mmgpt.serve"):
        for stream in (False, True):
            response = client.post("/v1/chat/completions", json={**user("hi"), "stream": stream})
            assert response.status_code == 500 and response.headers["content-type"] == "application/json"
            error = response.json()["error"]
            request_id = response.headers["x-request-id"]
            assert error["type"] == "server_error" and request_id in error["message"]
            assert "secret" not in error["message"] and "boom" not in error["message"]
            assert request_id in caplog.text and "boom in /srv/secret/path" in caplog.text  # the log has it all


def test_a_failure_at_the_first_token_of_a_stream_is_a_status_not_an_event_after_200(chat_model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the accelerator fell over")

    monkeypatch.setattr(type(chat_model), "forward", broken)
    app = build_app(chat_model, ServeConfig(web_path=None, limits=LIMITS))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/v1/chat/completions", json={**user("hi"), "stream": True})
        assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
        assert app.state.admission.active == 0  # the slot was given back


# ---------------------------------------------------------------------------------------------- property tests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
plain = st.text(max_size=20)
texts = st.one_of(plain, plain, plain, plain, st.sampled_from(["<image>", "a\ud800b", "<b>hi</b>", ""]))
urls = st.sampled_from([data_url(png(1)), "data:image/png;base64,AAAA", "data:,x", "http://x/y.png"]) | st.text()
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.fixed_dictionaries({"url": urls})}),
    json_values,
)
# Valid-looking values mostly, hostile ones sometimes, so the examples reach past the first check.
options = {  # key: (a valid value, a hostile one)
    "temperature": (st.floats(0, 2), st.floats(allow_nan=True) | json_values),
    "top_p": (st.floats(0.01, 1), st.floats(-1, 0) | json_values),
    "max_tokens": (st.integers(1, 3), st.integers(-(2**70), 0) | json_values),
    "stop": (st.lists(texts, max_size=4), st.lists(texts, min_size=5) | json_values),
    "seed": (st.integers(-(2**63), 2**64 - 1), st.integers(2**64, 2**70) | json_values),
    "stream": (st.booleans(), json_values),
    "n": (st.just(1), st.integers(-3, 3) | json_values),
    "stream_options": (st.fixed_dictionaries({"include_usage": st.booleans()}), json_values),
}


def rarely(draw, usual, hostile):
    return draw(hostile) if draw(st.integers(0, 9)) == 0 else draw(usual)


@st.composite
def bodies(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    messages = []
    for i in range(draw(st.sampled_from([1, 3, 1, 2, 0, 4]))):
        role = rarely(draw, st.just("user" if i % 2 == 0 else "assistant"), st.sampled_from(["system", "tool", 3]))
        content = rarely(draw, texts | st.lists(parts, max_size=3), json_values)
        messages.append({"role": role, "content": content})
    body = {"model": rarely(draw, st.sampled_from(["tiny", "one"]), json_values), "messages": messages}
    for key, (valid, hostile) in options.items():
        if draw(st.integers(0, 3)) == 0:
            body[key] = rarely(draw, valid, hostile)
    return body


@FUZZ
@given(bodies())
def test_the_parser_accepts_or_refuses_with_a_4xx_and_nothing_else(body):
    try:
        parse_chat_request(body, LIMITS)
    except APIError as error:
        assert 400 <= error.status < 500 and error.message


@FUZZ
@given(bodies())
def test_random_bodies_never_get_a_5xx(http, body):
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(max(body["max_tokens"], 1), 2)  # keep any valid request short
    elif isinstance(body, dict):
        body["max_tokens"] = 2
    response = http.post("/v1/chat/completions", content=json.dumps(body).encode(), headers=JSON)
    assert response.status_code < 500, response.text[:300]
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@FUZZ
@given(image_bytes())
def test_random_image_bytes_never_get_a_5xx(http, data):
    response = http.post("/v1/chat/completions", json=user([{"type": "text", "text": "what?"}, image_part(data)]))
    assert response.status_code in (200, 400, 413), response.text[:300]
    if response.status_code != 200:
        assert response.json()["error"]["code"] in ("invalid_image", "image_too_large")
        assert "mmgpt-images" not in response.text


def test_a_good_request_still_works_after_all_that(http):
    response = http.post("/v1/chat/completions", json=user([{"type": "text", "text": "hi"}, image_part(png(1))]))
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] is not None
    assert data_url(b"x").startswith("data:image/png;base64,")
