"""Continuous batching: every chat turn that runs at the same time decodes in one forward per step.

One thread owns the model. A turn (:class:`Job`: a session's prompt, its conversation cache, its adapter and sampling
settings) is prefilled - reusing its session's cache, in chunks of ``prefill_chunk`` tokens interleaved with the running
batch's steps, so a long prompt does not stall the others; new conversations whose prompts fit in a chunk together (rows
x the longest) are prefilled in one left-padded forward, which pays a forward's fixed cost once - then joins the batch
at a step boundary (``ModelCache.merge``: rows of different lengths, left-padded and masked; every turn prefilled since
the last step joins in one merge). Each step feeds every row's last token in one forward, each row with its own adapter
(``lora.row_adapters``), and chooses each row's token exactly as it would alone: greedy rows by one argmax over the
batch, sampling rows with their own settings and seeded generator (``generate.next_tokens``). A row leaves when it stops
(stop id, stop string, ``max_new_tokens``, or its client gone) and hands its cache back to its session
(``ModelCache.row``), so the next turn of that conversation reuses it; the last row takes its place in the batch (one
row's copy, not the batch's). Memory is bounded by ``max_rows`` and by ``max_tokens`` (rows x the batch's cached
length); turns beyond wait. Each turn's time to its first token is measured from its submission
(``Outcome.seconds_to_first_token``). The model's other work - encoding a new turn's images - runs on the same thread
between two steps (:meth:`Scheduler.call`): one thread computes, so on a CPU the encoder and the batch do not fight over
the cores (measured in bench/serve.py: less time to first token, more tokens/s).

Legend: b rows in the batch, S cached positions, V vocabulary.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from mmgpt.chat.job import Job, Outcome, Row, choose
from mmgpt.chat.model import ChatModel
from mmgpt.generate import FinishReason, take_token
from mmgpt.model.cache import Media, ModelCache

T = TypeVar("T")


@dataclass
class _Call:
    """Other model work (encoding an image) to run on the scheduler's thread between two steps."""

    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as error:
            self.error = error
        self.done.set()


_WAKE, _STEP = "wake", "step"  # inbox markers: resumed; nothing new arrived (run a step)


class Scheduler:
    """The batching loop over one :class:`ChatModel` (see the module docstring). Thread-safe :meth:`stream`."""

    def __init__(
        self, chat_model: ChatModel, *, max_rows: int = 8, max_tokens: int = 32_768, prefill_chunk: int = 256
    ) -> None:
        if max_rows < 1 or max_tokens < 1 or prefill_chunk < 1:
            raise ValueError(
                f"max_rows={max_rows}, max_tokens={max_tokens}, prefill_chunk={prefill_chunk} must be >= 1"
            )
        self.chat_model = chat_model
        self.max_rows, self.max_tokens, self.prefill_chunk = max_rows, max_tokens, prefill_chunk
        self._inbox: queue.Queue[Job | _Call | str | None] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._prefill: tuple[Job, int, int] | None = None  # (job, next prompt position, reused)
        self._together: list[Job] = []  # new conversations being prefilled in one forward
        self._rows: list[Row] = []  # row i of the batch
        self._joining: list[Row] = []  # prefilled, joining the batch at the next step (all in one merge)
        self._batch: ModelCache | None = None
        self.steps = 0  # decode steps run, and the most rows one of them ran (what batching achieved)
        self.peak_rows = 0
        self.peak_prefill_rows = 1  # the most prompts prefilled in one forward
        self._open = threading.Event()  # cleared: jobs queue up, nothing runs (pause / resume)
        self._open.set()
        self._thread = threading.Thread(target=self._loop, name="mmgpt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients
    def stream(self, job: Job) -> Iterator[str]:
        """Submit ``job`` and yield its text deltas; the generator's return value is its :class:`Outcome`.
        Closing the generator early (a client gone) cancels the job at the next step. Deltas that arrived while the
        consumer was busy come out joined, as one: a reader that fell behind (a slow client, a busy event loop)
        catches up in one piece instead of paying per token."""
        if not self._thread.is_alive():
            raise RuntimeError("the scheduler has stopped; create a new one")
        self._inbox.put(job)
        try:
            event = job.events.get()
            while True:
                kind, value = event
                if kind == "end":
                    return value
                if kind != "delta":
                    raise value
                pieces = [value]
                event = None
                while event is None:
                    try:
                        event = job.events.get_nowait()
                    except queue.Empty:
                        break
                    if event[0] == "delta":
                        pieces.append(event[1])
                        event = None
                yield "".join(pieces)
                if event is None:
                    event = job.events.get()
        finally:
            job.cancelled.set()

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the scheduler's thread between two steps (the model's other work, e.g. encoding images:
        one thread computes, so a CPU's cores are not shared between it and the batch); its result, or its error."""
        if threading.current_thread() is self._thread:
            return fn()
        if not self._thread.is_alive():
            raise RuntimeError("the scheduler has stopped; create a new one")
        call = _Call(fn)
        self._inbox.put(call)
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def close(self) -> None:
        self._open.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def pause(self) -> None:
        """Let jobs queue up without running any (e.g. to start many at the same step); the step under way ends."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()
        self._inbox.put(_WAKE)

    def queued(self) -> int:
        """Jobs submitted and not yet started."""
        return sum(isinstance(item, Job) for item in list(self._inbox.queue)) + len(self._waiting)

    @property
    def rows(self) -> int:
        """Rows in the running batch now (a job being prefilled is not one yet)."""
        return len(self._rows)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            # Paused or with nothing to run, wait for the inbox; else take what has arrived before the next step.
            idle = not self._open.is_set() or (not self._rows and self._prefill is None and not self._waiting)
            try:
                item = self._inbox.get(block=idle)
            except queue.Empty:
                item = _STEP
            if item is None:
                self._stop()
                return
            if isinstance(item, _Call):  # served paused too: a paused scheduler still lets jobs be prepared
                with torch.no_grad():
                    item.run()
            elif isinstance(item, Job):
                self._waiting.append(item)
            if item is not _STEP:
                continue
            try:
                with torch.no_grad():
                    budget = self.prefill_chunk  # prompt tokens prefilled between two decode steps
                    while budget > 0:
                        if together := self._admit(budget):
                            budget -= self._prefill_together(together)
                            continue
                        if self._prefill is None:
                            break
                        budget -= self._prefill_chunk(budget)
                    self._join()
                    if self._rows:
                        self._decode_step()
            except Exception as error:
                self._fail(error)

    def _admit(self, budget: int) -> list[Job]:
        """Start the first waiting job that can run, when the batch has room for it. A job whose session cache is
        still held by a running row (its previous turn, cancelled, leaves at the next step) waits for it; jobs
        behind it may go first. New conversations (nothing cached) whose prompts fit in ``budget`` together -
        rows x the longest prompt - are returned to be prefilled in one forward (when there are two or more);
        otherwise the job starts prefilling alone, in chunks."""
        if self._prefill is not None:
            return []
        busy = {id(row.job.cache) for row in self._rows + self._joining}
        rows = len(self._rows) + len(self._joining)
        length = max(
            [self._batch.length if self._batch is not None else 0, *(len(r.job.cache.ids) for r in self._joining)]
        )
        chosen: list[Job] = []
        for job in list(self._waiting):
            if job.cancelled.is_set():
                self._waiting.remove(job)
                job.events.put(("end", Outcome("cancelled", 0, 0, None)))
                continue
            if id(job.cache) in busy | {id(c.cache) for c in chosen}:
                continue  # its previous turn's row has not left yet
            longest = max(length, len(job.ids))
            if rows + len(chosen) and (
                rows + len(chosen) >= self.max_rows or (rows + len(chosen) + 1) * longest > self.max_tokens
            ):
                break
            fresh = job.cache.cache is None
            if chosen and not (
                fresh and (len(chosen) + 1) * max(len(job.ids), *(len(c.ids) for c in chosen)) <= budget
            ):
                break  # first come, first served: the group ends at a turn that cannot join it
            chosen.append(job)
            length = longest
            if not (fresh and len(job.ids) <= budget):
                break  # a conversation going on, or a long prompt: prefilled alone
        for job in chosen:
            self._waiting.remove(job)
        if len(chosen) > 1:
            return chosen
        if chosen:
            job = chosen[0]
            self._prefill = (job, 0, 0)  # held before anything can fail: a failure then ends it with an error
            reused = job.cache.reuse(job.adapter, job.ids, job.images, job.media)
            self._prefill = (job, reused, reused)
        return []

    def _prefill_together(self, jobs: list[Job]) -> int:
        """Prefill the prompts of several new conversations in one forward - left-padded, each row with its own
        images and adapter - so the cost every forward has is paid once; each row then starts as alone. Returns
        the positions run (rows x the longest prompt)."""
        self._together = list(jobs)  # each held until it has started: a failure ends those left with an error
        longest = max(len(job.ids) for job in jobs)
        pad = self.chat_model.model.special.pad
        ids = torch.tensor([[pad] * (longest - len(job.ids)) + job.ids for job in jobs])
        mask = torch.tensor([[0] * (longest - len(job.ids)) + [1] * len(job.ids) for job in jobs])
        for job in jobs:
            job.cache.reuse(job.adapter, job.ids, job.images, job.media)  # a new conversation: nothing to reuse
        present = [job.media for job in jobs if job.media is not None]
        media = Media.merge([job.media for job in jobs], [1] * len(jobs), like=present[0]) if present else None
        out = self.chat_model.forward_rows([job.adapter for job in jobs], ids, media=media, attention_mask=mask)
        for i, job in enumerate(jobs):
            job.cache.prefilled(job.ids, out.cache.row(i))
        self.peak_prefill_rows = max(self.peak_prefill_rows, len(jobs))
        logits = out.logits[:, -1].float()
        for i, job in enumerate(jobs):
            self._start_row(job, logits[i : i + 1], reused=0)
            self._together.remove(job)
        return len(jobs) * longest

    def _prefill_chunk(self, budget: int) -> int:
        """Prefill up to ``budget`` more prompt tokens of the job being prefilled; returns how many ran. A job
        whose prompt is done samples its first token and joins the batch."""
        job, start, reused = self._prefill
        end = min(len(job.ids), start + budget)
        logits = job.cache.run(job.ids[start:end])
        if end < len(job.ids):
            self._prefill = (job, end, reused)
            return end - start
        self._start_row(job, logits.float(), reused)
        self._prefill = None  # only now: had starting failed, the job would still be held, and ended with an error
        return end - start

    def _start_row(self, job: Job, logits: torch.Tensor, reused: int) -> None:
        """The job's prompt has run (``logits`` [1, V] of its last token): choose its first token; it joins the
        batch at the next step, or ends here."""
        row = Row.of(job, self.chat_model, reused, device=logits.device)
        finish = self._take(row, choose([row], logits)[0])
        if finish is not None:
            self._end(row, finish)  # done at its first token: the session's cache is already its own
        else:
            self._joining.append(row)

    def _join(self) -> None:
        """The rows prefilled since the last step join the batch, all in one merge (one copy of the batch)."""
        if not self._joining:
            return
        caches = [row.job.cache.cache for row in self._joining]
        if self._batch is not None:
            caches.insert(0, self._batch)
        self._batch = caches[0] if len(caches) == 1 else ModelCache.merge(caches)
        self._rows += self._joining
        self._joining = []

    def _decode_step(self) -> None:
        rows = self._rows
        tokens = torch.tensor([[row.next_token] for row in rows])
        out = self.chat_model.forward_rows([row.job.adapter for row in rows], tokens, self._batch)
        self._batch = out.cache
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(rows))
        chosen = choose(rows, out.logits[:, -1].float())
        leaving = []
        for i, row in enumerate(rows):
            row.job.cache.ids.append(row.next_token)
            finish = "cancelled" if row.job.cancelled.is_set() else self._take(row, chosen[i])
            if finish is not None:
                row.job.cache.cache = self._batch.row(i)  # back to its session before the session hears the end
                self._end(row, finish)
                leaving.append(i)
        if leaving:
            self._leave(leaving)

    def _leave(self, leaving: list[int]) -> None:
        """Take the rows ``leaving`` out of the batch (``ModelCache.without_rows``: the last rows fill the slots)."""
        if len(leaving) == len(self._rows):
            self._rows, self._batch = [], None
            return
        self._batch, order = self._batch.without_rows(leaving)
        self._rows = [self._rows[i] for i in order]

    def _take(self, row: Row, token: int) -> FinishReason | None:
        """The row's next token is ``token``: send what became final; why the row stops, or None when it goes on
        (its token then runs at the next step)."""
        if row.first_token is None:
            row.first_token = time.perf_counter() - row.job.submitted
        delta, finish = take_token(token, row.generated, row.text, row.stop_ids, row.job.config.max_new_tokens)
        if delta:
            row.job.events.put(("delta", delta))
        row.next_token = token
        return finish

    def _end(self, row: Row, finish: FinishReason) -> None:
        if rest := row.text.remainder():
            row.job.events.put(("delta", rest))
        row.job.events.put(("end", Outcome(finish, len(row.generated), row.reused, row.first_token)))

    def _stop(self) -> None:
        """Closed: every turn still running or waiting ends with an error instead of waiting forever."""
        stopped = RuntimeError("the scheduler stopped (the server is shutting down)")
        self._fail(stopped)
        while self._waiting:
            self._waiting.popleft().events.put(("error", stopped))
        while not self._inbox.empty():
            job = self._inbox.get_nowait()
            if isinstance(job, _Call):
                job.error = stopped
                job.done.set()
            elif isinstance(job, Job):
                job.events.put(("error", stopped))

    def _fail(self, error: Exception) -> None:
        jobs = [row.job for row in self._rows + self._joining] + ([self._prefill[0]] if self._prefill else [])
        jobs += self._together
        self._rows, self._joining, self._batch, self._prefill, self._together = [], [], None, None, []
        for job in jobs:
            job.cache.clear()
            job.events.put(("error", error))


def start_batching(chat_model: ChatModel, **limits: int) -> Scheduler:
    """Decode every session's turns over ``chat_model`` together from now on (limits: :class:`Scheduler`'s
    max_rows, max_tokens, prefill_chunk); returns the scheduler (:func:`stop_batching` ends it). On a CPU, load the
    model on a thread that ends (``mmgpt.serve.loading.on_a_passing_thread``): an OpenMP pool left on the loading
    thread slows every step of the scheduler's (docs/serving.md)."""
    if chat_model.scheduler is None:
        chat_model.scheduler = Scheduler(chat_model, **limits)
    return chat_model.scheduler


def stop_batching(chat_model: ChatModel) -> None:
    """Back to taking turns: the scheduler stops (answers still running end with an error)."""
    if chat_model.scheduler is not None:
        chat_model.scheduler.close()
        chat_model.scheduler = None
