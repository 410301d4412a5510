"""Continuous batching: concurrent chat turns decode in one batch and answer exactly as each alone.

Sessions run in threads against a ChatModel with a scheduler: rows join at different steps (prompts of different
lengths, chunked prefill), leave at different steps (different budgets, stop tokens), carry different adapters
(on the gated blocks too), images (0, 1, 2) and seeded sampling - and every answer equals the same session run
alone without the scheduler. A client that leaves mid-stream frees its row; its session stays usable.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest

from mmgpt.chat import ChatModel, ChatSession, start_batching, stop_batching
from mmgpt.chat import scheduler as scheduler_module
from mmgpt.generate import GenerationConfig
from tests.test_chat import from_scratch, model_with_adapters, picture
from tests.toy_prefix import make_tokenizer, make_toy

T = TypeVar("T")

# (adapter, turns: (text, images, config))
SESSIONS = [
    (None, [("describe the image", 1, 8), ("what color is the circle?", 0, 5)]),
    ("one", [("a red circle above a blue square, what is below it?", 2, 11), ("and now?", 1, 3)]),
    ("two", [("hello", 0, 6), ("compare the two shapes please", 1, 9)]),
    ("one", [("describe", 1, 7)]),
]


def config_of(budget: int, i: int) -> GenerationConfig:
    sampled = i % 2 == 1  # half the sessions sample, seeded: reproducible whatever else is in the batch
    return GenerationConfig(max_new_tokens=budget, temperature=0.9 if sampled else 0.0, seed=100 + i)


def converse(chat: ChatModel, i: int, *, adapters: bool = True) -> list[str]:
    adapter, turns = SESSIONS[i]
    session = ChatSession(chat, adapter=adapter if adapters else None)
    answers = []
    for turn, (text, n_images, budget) in enumerate(turns):
        images = [picture(10 * i + turn + k) for k in range(n_images)]
        answers.append(session.ask(text, images=images, config=config_of(budget, i)).text)
    return answers


def in_one_step(scheduler, calls: list[Callable[[], T]]) -> list[T]:
    """Each call in its own thread; with a scheduler, their generations all join the batch at the same step (it waits
    until every one has arrived). Their results in order."""
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    if scheduler is not None:
        scheduler.pause()
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while scheduler is not None and scheduler.queued() < len(calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    if scheduler is not None:
        scheduler.resume()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return [results[i] for i in range(len(calls))]


def run_concurrently(chat: ChatModel, sessions: list[int], *, adapters: bool = True) -> list[list[str]]:
    """Each session's conversation in its own thread, their first turns started at the same step; their answers
    in session order."""
    return in_one_step(chat.scheduler, [functools.partial(converse, chat, i, adapters=adapters) for i in sessions])


@pytest.fixture(scope="module")
def flamingo(tmp_path_factory) -> ChatModel:
    model, tokenizer = model_with_adapters(tmp_path_factory.mktemp("adapters"), ("one", "two"))
    return ChatModel.wrap(model, tokenizer)


@pytest.mark.parametrize("prefill_chunk", [1024, 256, 5])
def test_concurrent_sessions_in_one_batch_answer_as_each_alone(flamingo, prefill_chunk):
    alone = [converse(flamingo, i) for i in range(len(SESSIONS))]
    scheduler = start_batching(flamingo, max_rows=8, prefill_chunk=prefill_chunk)
    try:
        batched = run_concurrently(flamingo, list(range(len(SESSIONS))))
    finally:
        stop_batching(flamingo)
    assert batched == alone
    # New conversations' prompts are prefilled in one forward as far as the chunk allows (rows x the longest prompt:
    # 4 of these prompts need more than 256); prompts longer than a chunk are prefilled alone, in pieces.
    assert scheduler.peak_prefill_rows == {1024: len(SESSIONS), 256: 2, 5: 1}[prefill_chunk]
    if prefill_chunk >= 256:  # prompts prefilled whole: every first turn joins the batch at once
        assert scheduler.peak_rows == len(SESSIONS)


def test_stop_strings_and_the_repetition_penalty_batch_as_each_alone(flamingo):
    """Rows that end at a stop string or choose under a repetition penalty (greedy or sampled) answer - text, finish
    reason, tokens - as each alone."""
    configs = [
        GenerationConfig(max_new_tokens=12, stop_strings=("e",)),
        GenerationConfig(max_new_tokens=12, temperature=0.9, seed=5, stop_strings=("e",)),
        GenerationConfig(max_new_tokens=10, repetition_penalty=1.5),
        GenerationConfig(max_new_tokens=10, temperature=0.9, seed=6, repetition_penalty=1.5),
    ]

    def ask(i: int) -> tuple:
        reply = ChatSession(flamingo).ask("describe the image", images=[picture(40 + i)], config=configs[i])
        return reply.text, reply.finish_reason, reply.completion_tokens

    alone = [ask(i) for i in range(len(configs))]
    assert any(finish == "stop" and tokens < 12 for _, finish, tokens in alone[:2])  # a stop string was met
    start_batching(flamingo, max_rows=8)
    try:
        batched = in_one_step(flamingo.scheduler, [functools.partial(ask, i) for i in range(len(configs))])
    finally:
        stop_batching(flamingo)
    assert batched == alone


def test_a_client_that_leaves_frees_its_row_and_its_session_goes_on(flamingo):
    start_batching(flamingo, max_rows=4)
    try:
        session = ChatSession(flamingo, adapter="one")
        stream = session.send("describe the image", images=[picture(3)], config=GenerationConfig(max_new_tokens=30))
        first = next(stream)
        stream.close()  # the client is gone
        assert session.last.finish_reason == "cancelled" and session.turns[-1].answer == first.strip()
        greedy = GenerationConfig(max_new_tokens=6)
        answer = session.ask("what color?", config=greedy).text
        expected = flamingo.tokenizer.decode(from_scratch(flamingo, session, greedy), skip_special_tokens=True)
        assert answer == expected.strip()
        assert session.last.reused_tokens > 0  # the cancelled row's cache came back to its session
    finally:
        stop_batching(flamingo)


def test_deltas_a_slow_reader_has_not_taken_come_out_joined(flamingo):
    config = GenerationConfig(max_new_tokens=12)
    alone = ChatSession(flamingo).ask("describe the image", images=[picture(7)], config=config)
    scheduler = start_batching(flamingo, max_rows=4)
    try:
        session = ChatSession(flamingo)
        stream = session.send("describe the image", images=[picture(7)], config=config)
        pieces = [next(stream)]
        deadline = time.monotonic() + 60
        # The reader dawdles while the answer ends: its first token came from the prefill, the other 11 from steps.
        while (scheduler.rows or scheduler.steps < 11) and time.monotonic() < deadline:
            time.sleep(0.01)
        pieces += list(stream)
    finally:
        stop_batching(flamingo)
    assert "".join(pieces).strip() == alone.text and session.last.completion_tokens == alone.completion_tokens == 12
    assert len(pieces) == 2  # the first delta, then the other eleven tokens' text in one piece


def test_a_prefix_model_batches_through_the_contract():
    tokenizer = make_tokenizer()
    chat = ChatModel.wrap(make_toy(tokenizer), tokenizer)
    alone = [converse(chat, i, adapters=False) for i in range(len(SESSIONS))]
    scheduler = start_batching(chat, max_rows=4, prefill_chunk=4096)
    try:
        batched = run_concurrently(chat, list(range(len(SESSIONS))), adapters=False)
    finally:
        stop_batching(chat)
    assert batched == alone
    assert scheduler.peak_rows == scheduler.peak_prefill_rows == len(SESSIONS)  # image runs of different lengths


class SlowSteps(ChatModel):
    """Decode steps that take a while: a long answer is still running when the test looks."""

    def forward_rows(self, *args, **kwargs):
        time.sleep(0.02)
        return super().forward_rows(*args, **kwargs)


def a_cancelled_row_left_in_the_batch(slow: ChatModel, scheduler, adapter: str, image: int) -> ChatSession:
    """A session whose stream was closed while its row is still in the (paused) batch: not yet seen cancelled."""
    session = ChatSession(slow, adapter=adapter)
    stream = session.send("describe the image", images=[picture(image)], config=GenerationConfig(max_new_tokens=400))
    next(stream)
    scheduler.pause()  # the row stays in the batch while the client leaves
    time.sleep(0.2)  # the step under way (20 ms) ends: the row is still there, not yet seen cancelled
    stream.close()
    return session


def test_a_turn_sent_before_its_cancelled_row_left_waits_for_its_cache(tmp_path):
    """The next turn of a session can arrive while its previous, cancelled row is still in the batch (it leaves at
    the next step): it waits for the cache to come back instead of continuing a cache still being written."""
    slow = SlowSteps.wrap(*model_with_adapters(tmp_path, ("one", "two")))
    scheduler = start_batching(slow, max_rows=4)
    try:
        session = a_cancelled_row_left_in_the_batch(slow, scheduler, "two", 5)  # ...and it asks again
        greedy = GenerationConfig(max_new_tokens=6)
        replies = []
        asking = threading.Thread(target=lambda: replies.append(session.ask("what color?", config=greedy)))
        asking.start()
        deadline = time.monotonic() + 10
        while scheduler.queued() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.rows == 1
        scheduler.resume()
        asking.join(timeout=30)
        expected = slow.tokenizer.decode(from_scratch(slow, session, greedy), skip_special_tokens=True)
        assert replies[0].text == expected.strip() and replies[0].reused_tokens > 0
        assert replies[0].seconds_to_first_token > 0
        assert len(session._cache.ids) == session._cache.cache.length  # what the cache holds is what it says
        third = session.ask("and the shape?", config=greedy)
        expected = slow.tokenizer.decode(from_scratch(slow, session, greedy), skip_special_tokens=True)
        assert third.text == expected.strip() and third.reused_tokens > 0
    finally:
        stop_batching(slow)


def test_a_cache_dropped_while_its_cancelled_row_is_in_the_batch_stays_dropped(tmp_path):
    """A server bounding idle caches may drop a session's cache (``drop_cache``) while the row of its closed stream
    is still in the batch: the row finishes on the cache it had, and the session starts afresh on a new one."""
    slow = SlowSteps.wrap(*model_with_adapters(tmp_path, ("one", "two")))
    scheduler = start_batching(slow, max_rows=4)
    try:
        session = a_cancelled_row_left_in_the_batch(slow, scheduler, "one", 6)
        session.drop_cache()
        assert session.cached_tokens == 0 and scheduler.rows == 1
        scheduler.resume()
        deadline = time.monotonic() + 30
        while scheduler.rows and time.monotonic() < deadline:
            time.sleep(0.01)
        assert session.cached_tokens == 0 and session._cache.cache is None  # the row left without writing into it
        greedy = GenerationConfig(max_new_tokens=6)
        reply = session.ask("what color?", config=greedy)
        expected = slow.tokenizer.decode(from_scratch(slow, session, greedy), skip_special_tokens=True)
        assert reply.text == expected.strip() and reply.reused_tokens == 0
        assert len(session._cache.ids) == session._cache.cache.length  # the old row wrote nothing into the new cache
        third = session.ask("and the shape?", config=greedy)
        assert third.reused_tokens > 0  # the new cache goes on as usual
    finally:
        stop_batching(slow)


def test_stopping_the_scheduler_ends_the_turns_still_running(tmp_path):
    slow = SlowSteps.wrap(*model_with_adapters(tmp_path, ("one",)))
    start_batching(slow)
    session = ChatSession(slow)
    stream = session.send("describe the image", images=[picture(1)], config=GenerationConfig(max_new_tokens=400))
    next(stream)
    stop_batching(slow)  # e.g. the server shutting down mid-answer
    with pytest.raises(RuntimeError, match="scheduler stopped"):
        list(stream)
    assert session.last.finish_reason == "cancelled"
    assert session.ask("hello", config=GenerationConfig(max_new_tokens=3)).finish_reason in ("stop", "length")


def submitted_together(scheduler, sessions: list, config: GenerationConfig) -> list[str]:
    """Each session asks in its own thread, all arriving before the scheduler looks; each one's answer or error
    text, in order - None for a thread still waiting after 30 s (a turn nobody answered)."""
    outcomes: list[str | None] = [None] * len(sessions)

    def ask(i: int) -> None:
        try:
            outcomes[i] = sessions[i].ask(f"what color is the circle {i}?", config=config).text
        except RuntimeError as error:
            outcomes[i] = f"error: {error}"

    scheduler.pause()
    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(len(sessions))]
    for n, thread in enumerate(threads, start=1):
        thread.start()
        while scheduler.queued() < n:  # in this order
            time.sleep(0.005)
    scheduler.resume()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


@pytest.mark.parametrize("prefill_chunk", [4096, 5])
def test_a_failure_while_starting_rows_ends_each_of_them_with_the_error(prefill_chunk, monkeypatch):
    """Prompts prefilled together (4096) or one by one (5): starting the second turn's row fails - it, the turns
    started with it and the rows in the batch end with the error; none is left waiting."""
    tokenizer = make_tokenizer()
    chat = ChatModel.wrap(make_toy(tokenizer), tokenizer)
    starts = []

    def failing(*args, **kwargs):
        starts.append(1)
        if len(starts) == 2:
            raise RuntimeError("starting the second row failed")
        return real(*args, **kwargs)

    real = scheduler_module.Row.of
    monkeypatch.setattr(scheduler_module.Row, "of", failing)
    scheduler = start_batching(chat, max_rows=4, prefill_chunk=prefill_chunk)
    try:
        sessions = [ChatSession(chat) for _ in range(3)]  # long answers: the first is still running
        outcomes = submitted_together(scheduler, sessions, GenerationConfig(max_new_tokens=40))
    finally:
        stop_batching(chat)
    assert None not in outcomes  # nobody waits forever
    failed = [o for o in outcomes if o.startswith("error: starting the second row failed")]
    # Together, all three end; one by one, the first (in the batch) and the second, while the third starts later.
    assert len(failed) == (3 if prefill_chunk == 4096 else 2)


def test_turns_start_in_the_order_they_came(monkeypatch):
    """A new conversation never takes a row ahead of a conversation going on that came before it: with one row
    free, [A new, B second turn, C new] start A, B, C."""
    tokenizer = make_tokenizer()
    chat = ChatModel.wrap(make_toy(tokenizer), tokenizer)
    a, b, c = (ChatSession(chat) for _ in range(3))
    names = {id(a._cache): "A", id(b._cache): "B", id(c._cache): "C"}
    started = []
    real = scheduler_module.Scheduler._start_row

    def logged(self, job, logits, reused):
        started.append(names[id(job.cache)])
        return real(self, job, logits, reused)

    monkeypatch.setattr(scheduler_module.Scheduler, "_start_row", logged)
    scheduler = start_batching(chat, max_rows=2, prefill_chunk=4096)
    try:
        b.ask("hello", config=GenerationConfig(max_new_tokens=2))
        started.clear()
        outcomes = submitted_together(scheduler, [a, b, c], GenerationConfig(max_new_tokens=6))
    finally:
        stop_batching(chat)
    assert None not in outcomes and started == ["A", "B", "C"]


def test_with_batching_on_a_cpu_every_tensor_operation_runs_on_the_scheduler_thread(flamingo, monkeypatch):
    """One thread computes (image transforms, encoding, features, the batch): OpenMP's workers stay hot."""
    threads: set[str] = set()
    transform, embed = flamingo.transform, flamingo.model.embed_images

    def record(fn):
        return lambda *args, **kwargs: (threads.add(threading.current_thread().name), fn(*args, **kwargs))[1]

    monkeypatch.setattr(flamingo, "transform", record(transform))
    monkeypatch.setattr(flamingo.model, "embed_images", record(embed))
    start_batching(flamingo)
    try:
        ChatSession(flamingo).ask("describe", images=[picture(7)], config=GenerationConfig(max_new_tokens=2))
    finally:
        stop_batching(flamingo)
    assert threads == {"mmgpt-scheduler"}
