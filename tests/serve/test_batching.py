"""Continuous batching behind the HTTP API and the web demo: concurrent requests answer exactly as alone.

Requests with different adapters, image counts (0, 1, 2), seeds and budgets, streamed or not, are sent at once to a
server that batches them (started at the same step: the scheduler is paused until all have arrived) and must get
the answers the same requests get one at a time from a server that does not batch. A client that disconnects
mid-stream frees its row while the others finish; web demo sessions batch and keep their cache across turns.
"""

from __future__ import annotations

import functools
import threading
import time

import httpx
import openai
import pytest

from mmgpt.chat import ChatModel, ChatSession, start_batching, stop_batching
from mmgpt.serve.app import ServeConfig, build_app
from mmgpt.serve.limits import ServeLimits
from tests.serve.conftest import EndlessChatModel, free_port, live_server, png, tiny_chat_model
from tests.serve.test_api import image_part
from tests.test_scheduler import in_one_step

# (model, images, max_tokens, temperature, seed, stream)
REQUESTS = [
    ("tiny", 0, 9, 0.0, None, True),
    ("one", 1, 5, 0.0, None, False),
    ("two", 2, 12, 0.0, None, True),
    ("one", 0, 7, 1.1, 3, True),
    ("tiny", 2, 4, 0.9, 11, False),
    ("two", 1, 10, 1.3, 5, True),
    ("one", 2, 8, 0.0, None, True),
]


def body(i: int, *, max_tokens: int | None = None) -> dict:
    model, images, budget, temperature, seed, stream = REQUESTS[i]
    content = [{"type": "text", "text": f"request {i}: what is in the picture?"}]
    content += [image_part(png(10 * i + k)) for k in range(images)]
    request = {"model": model, "messages": [{"role": "user", "content": content}], "temperature": temperature}
    request.update(max_tokens=max_tokens or budget, stream=stream)
    if seed is not None:
        request["seed"] = seed
    if stream:
        request["stream_options"] = {"include_usage": True}
    return request


def ask(url: str, request: dict) -> dict:
    """One request with the official client: the answer, its finish reason and tokens, the server's TTFT."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
    raw = client.chat.completions.with_raw_response.create(**request)
    ttft = float(raw.headers["x-time-to-first-token"])
    out = raw.parse()
    if not request["stream"]:
        choice = out.choices[0]
        return {"text": choice.message.content, "finish": choice.finish_reason, "tokens": out.usage.completion_tokens}
    chunks = list(out)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    return {"text": text, "finish": finish, "tokens": chunks[-1].usage.completion_tokens, "ttft": ttft}


def one_at_a_time(chat: ChatModel, requests: list[dict]) -> list[dict]:
    app = build_app(chat, ServeConfig(web_path=None, limits=ServeLimits(batching=False)))
    with live_server(app, free_port()) as url:
        assert chat.scheduler is None
        return [ask(url, r) for r in requests]


def all_at_once(url: str, scheduler, requests: list[dict]) -> list[dict]:
    return in_one_step(scheduler, [functools.partial(ask, url, r) for r in requests])


def without_timing(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "ttft"} for r in results]


@pytest.fixture(scope="module")
def chat(tmp_path_factory) -> ChatModel:
    """A model of its own: the package's server batches the shared one for its whole life."""
    return tiny_chat_model(tmp_path_factory)


def test_concurrent_requests_answer_as_each_alone(chat):
    requests = [body(i) for i in range(len(REQUESTS))]
    alone = one_at_a_time(chat, requests)
    limits = ServeLimits(max_rows=8, max_waiting=0, max_images=3, max_image_pixels=128 * 128)
    app = build_app(chat, ServeConfig(web_path=None, limits=limits))
    with live_server(app, free_port()) as url:
        scheduler = app.state.scheduler
        assert scheduler is chat.scheduler and limits.max_active == 8
        batched = all_at_once(url, scheduler, requests)
        assert scheduler.rows == 0 and scheduler.steps > 0
        assert scheduler.peak_rows >= 5  # they ran together (the shortest leave before the longest prompts join)
    assert chat.scheduler is None  # the app that started batching stops it
    assert without_timing(batched) == without_timing(alone)
    assert len({r["text"] for r in alone}) == len(alone)  # adapters, images and seeds all make a difference
    assert all(r["ttft"] >= 0 for r in batched if "ttft" in r)


def test_a_client_that_disconnects_frees_its_row_and_the_others_finish(tmp_path_factory):
    tiny = tiny_chat_model(tmp_path_factory)  # its own: a second ChatModel over one model would change its adapter
    endless = EndlessChatModel.wrap(tiny.model, tiny.tokenizer, name="tiny")
    others = [body(i, max_tokens=12) for i in (0, 2, 3)]
    alone = one_at_a_time(endless, others)
    app = build_app(endless, ServeConfig(web_path=None, limits=ServeLimits(max_rows=4)))
    forever = {**body(1), "max_tokens": 1900, "stream": True}
    with live_server(app, free_port()) as url:
        scheduler, admission = app.state.scheduler, app.state.admission
        results: list[list[dict]] = []
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=forever, timeout=60) as leaving:
            lines = leaving.iter_lines()
            assert next(lines).startswith("data: ")
            runner = threading.Thread(target=lambda: results.append(all_at_once(url, scheduler, others)))
            runner.start()
            deadline = time.monotonic() + 30
            while scheduler.rows < 1 + len(others) and runner.is_alive() and time.monotonic() < deadline:
                next(lines)  # the endless row goes on while the others join
            assert scheduler.peak_rows == 1 + len(others)
        # Gone mid-stream: its 1900-token row (19 s at least) leaves; the others are not disturbed.
        runner.join(timeout=30)
        deadline = time.monotonic() + 10
        while (scheduler.rows or admission.active) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert scheduler.rows == 0 and admission.active == 0 and scheduler.queued() == 0
    assert without_timing(results[0]) == without_timing(alone)
    assert all(r["finish"] == "length" and r["tokens"] == 12 for r in alone)  # EOS is blocked: full budgets


def test_web_demo_sessions_batch_and_reuse_their_cache(chat, tmp_path):
    """Two browser tabs (the demo's handler, as gradio calls it), two turns each, each turn's answers decoded in one
    batch: the same answers as without batching, and the second turn reuses the first's cache."""
    from mmgpt.serve.web import build_demo

    tabs = [("one", [png(1)], "what is this?"), ("two", [png(2), png(3)], "compare them")]
    uploads = [[tmp_path / f"tab{i}-{k}.png" for k in range(len(images))] for i, (_, images, _) in enumerate(tabs)]
    for (_, images, _), paths in zip(tabs, uploads, strict=True):
        for data, path in zip(images, paths, strict=True):
            path.write_bytes(data)
    follow_up = "and the colours?"

    def converse(demo) -> tuple[list[list[str]], list[int]]:
        """Both tabs' first turns at once, then both follow-ups: each tab's answers, and the tokens each follow-up
        took from the cache."""
        respond = next(f.fn for f in demo.fns.values() if f.name == "respond")

        def say(i: int, text: str, files: list[str], session: ChatSession | None) -> ChatSession:
            *_, (_, _, after, _) = respond({"text": text, "files": files}, session, tabs[i][0], 0.0, 1.0, 6 + i)
            return after

        first = [functools.partial(say, i, tab[2], list(map(str, uploads[i])), None) for i, tab in enumerate(tabs)]
        sessions = in_one_step(chat.scheduler, first)
        in_one_step(chat.scheduler, [functools.partial(say, i, follow_up, [], s) for i, s in enumerate(sessions)])
        return [[turn.answer for turn in s.turns] for s in sessions], [s.last.reused_tokens for s in sessions]

    demo = build_demo(chat, concurrency_limit=4)
    try:
        alone = converse(demo)
        scheduler = start_batching(chat, max_rows=4)
        try:
            batched = converse(demo)
        finally:
            stop_batching(chat)
    finally:
        demo.cleanup()
    assert batched == alone and all(len(answers) == 2 for answers in batched[0])
    assert scheduler.peak_rows == len(tabs)
    assert all(reused > 0 for reused in batched[1])  # each follow-up continued its session's cache


def test_admission_is_sized_by_the_batch_and_the_demo_answers_concurrently(chat):
    from mmgpt.commands.serve import generation_line
    from mmgpt.serve.web import build_demo

    batching, turns = ServeLimits(max_rows=6), ServeLimits(batching=False)
    assert (batching.max_active, batching.max_waiting) == (6, 12) and (turns.max_active, turns.max_waiting) == (4, 8)
    assert generation_line(batching) == (
        "generation: batching up to 6 rows (32,768 cached tokens, prefill 256 tokens a step); "
        "6 requests at once, 12 waiting; 4,096 MiB kept between turns"
    )
    unbatched = (
        "generation: taking turns on the model (no batching); 4 requests at once, 8 waiting; 4,096 MiB kept between "
        "turns"
    )
    assert generation_line(turns) == unbatched
    demo = build_demo(chat, concurrency_limit=6)
    limits = {f.name: f.concurrency_limit for f in demo.fns.values()}
    assert limits["respond"] == limits["regenerate"] == 6  # gradio's default would answer one tab at a time
    demo.cleanup()
