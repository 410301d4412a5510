"""``GET /metrics``: Prometheus' text format, read back with prometheus_client's own parser. Every answered turn is
counted (API requests streamed or not, browser-demo turns) with the tokens its usage reports; the server's state
(slots, batch, conversations kept between turns) is read at the scrape."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mmgpt.chat import ChatModel
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.errors import APIError
from mmgpt.serve.limits import Admission, ServeLimits
from mmgpt.serve.web import build_demo


def scrape(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_answers_and_the_server_state_are_counted(chat_model):
    app = build_app(chat_model, ServeConfig(web_path=None, limits=ServeLimits(max_image_pixels=64 * 64)))
    messages = [{"role": "user", "content": "what is this?"}]
    usages, first_tokens = [], []
    steps = ("mmgpt_decode_steps_total", (("model", "tiny"),))
    with TestClient(app) as http:
        before = scrape(http.get("/metrics").text)  # the model may be batching for another app already
        for stream, max_tokens in ((False, 5), (True, 3)):
            body = {"model": "tiny", "messages": messages, "max_tokens": max_tokens, "temperature": 0}
            if stream:
                body.update(stream=True, stream_options={"include_usage": True})
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == 200
            first_tokens.append(float(response.headers["x-time-to-first-token"]))
            if stream:
                chunks = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
                usages.append(chunks[-1]["usage"])
            else:
                usages.append(response.json()["usage"])
        metrics = http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    got = scrape(metrics.text)
    api = (("model", "tiny"), ("source", "api"))
    assert got[("mmgpt_turns_total", (("finish_reason", "length"), *api))] == 2
    assert got[("mmgpt_prompt_tokens_total", api)] == sum(u["prompt_tokens"] for u in usages)
    assert got[("mmgpt_completion_tokens_total", api)] == sum(u["completion_tokens"] for u in usages) == 8
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in usages)
    assert got[("mmgpt_cached_prompt_tokens_total", api)] == cached
    assert got[("mmgpt_time_to_first_token_seconds_count", api)] == got[("mmgpt_answer_seconds_count", api)] == 2
    # From each request's arrival, as the header says (queueing, images and prefill included).
    assert got[("mmgpt_time_to_first_token_seconds_sum", api)] == pytest.approx(sum(first_tokens), abs=1e-3)
    assert got[("mmgpt_answer_seconds_sum", api)] > got[("mmgpt_time_to_first_token_seconds_sum", api)]
    assert got[("mmgpt_requests_running", ())] == got[("mmgpt_requests_waiting", ())] == 0
    assert got[("mmgpt_requests_refused_total", (("code", "server_busy"),))] == 0
    # Batching ran both: one decode step per token after each answer's first (which the prefill chose).
    assert got[steps] - before[steps] == 8 - 2
    assert got[("mmgpt_batch_rows", (("model", "tiny"),))] == 0
    conversations = app.state.conversations
    assert got[("mmgpt_idle_cache_bytes", ())] == conversations.bytes > 0
    assert got[("mmgpt_idle_conversations", ())] == len(conversations) == 2
    assert got[("mmgpt_idle_cache_hits_total", ())] == 0


def test_refused_requests_are_counted_by_code():
    admission = Admission(ServeLimits(max_active=1, max_waiting=0, queue_timeout_s=0.05))

    async def three() -> None:
        await admission.acquire()
        with pytest.raises(APIError, match="busy"):
            await admission.acquire()
        with pytest.raises(APIError, match="busy"):
            await admission.acquire()

    asyncio.run(three())
    assert admission.refused == {"server_busy": 2}
    waiting = Admission(ServeLimits(max_active=1, max_waiting=1, queue_timeout_s=0.05))

    async def timeout() -> None:
        await waiting.acquire()
        with pytest.raises(APIError, match="no generation slot freed"):
            await waiting.acquire()

    asyncio.run(timeout())
    assert waiting.refused == {"queue_timeout": 1}


def test_browser_demo_turns_are_counted(chat_model):
    app = build_app(chat_model, ServeConfig(web_path=None))
    demo = build_demo(chat_model, conversations=app.state.conversations, metrics=app.state.metrics)
    respond = next(f.fn for f in demo.fns.values() if f.name == "respond")
    try:
        *_, (_, _, session, _) = respond({"text": "hello", "files": []}, None, "tiny", 0.0, 1.0, 4)
        respond({"text": "", "files": []}, session, "tiny", 0.0, 1.0, 4)  # refused: an empty message, not counted
    finally:
        demo.cleanup()
    got = scrape(app.state.metrics.exposition().decode())
    web = (("model", "tiny"), ("source", "web"))
    reason = session.last.finish_reason
    assert got[("mmgpt_turns_total", (("finish_reason", reason), *web))] == 1
    assert got[("mmgpt_completion_tokens_total", web)] == session.last.completion_tokens
    assert got[("mmgpt_idle_conversations", ())] == 1  # the tab's session, between its turns


class BreaksAtTheThirdCall(ChatModel):
    """The same model, unbatched, failing at its third forward: the prompt, one step, then an error."""

    calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("the model broke")
        return super().forward(*args, **kwargs)


def test_a_model_failure_is_counted_as_an_error(chat_model):
    broken = BreaksAtTheThirdCall(chat_model.model, chat_model.tokenizer, chat_model.transform, name="tiny")
    app = build_app(broken, ServeConfig(web_path=None, limits=ServeLimits(batching=False)))
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0}
    with TestClient(app, raise_server_exceptions=False) as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 500
    got = scrape(app.state.metrics.exposition().decode())
    assert got[("mmgpt_turns_total", (("finish_reason", "error"), ("model", "tiny"), ("source", "api")))] == 1
    assert broken.calls == 3
