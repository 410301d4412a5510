"""Continuous batching: every chat turn that runs at the same time decodes in one forward per step.

One thread owns the model. A turn (:class:`Job`: a session's prompt, its conversation cache, its adapter and
sampling settings) is prefilled alone - reusing its session's cache, in chunks of ``prefill_chunk`` tokens
interleaved with the running batch's steps, so a long prompt does not stall the others - then joins the batch at a
step boundary (``ModelCache.merge``: rows of different lengths, left-padded and masked). Each step feeds every
row's last token in one forward, each row with its own adapter (``lora.row_adapters``), and samples each row with
its own settings and seeded generator, exactly as it would alone (``generate.next_tokens``). A row leaves when it
stops (stop id, stop string, ``max_new_tokens``, or its client gone) and hands its cache back to its session
(``ModelCache.row``), so the next turn of that conversation reuses it. Memory is bounded by ``max_rows`` and by
``max_tokens`` (rows x the batch's cached length); turns beyond wait.

Legend: b rows in the batch, S cached positions, V vocabulary.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from mmgpt.chat.cache import ConversationCache
from mmgpt.chat.model import ChatModel
from mmgpt.generate import (
    FinishReason,
    GenerationConfig,
    RowText,
    make_generator,
    next_tokens,
    stop_ids_of,
    suppressed_ids,
)
from mmgpt.model.cache import Media, ModelCache
from mmgpt.model.lora import row_adapters


@dataclass
class Outcome:
    finish: FinishReason
    completion_tokens: int
    reused_tokens: int
    seconds_to_first_token: float | None


@dataclass
class Job:
    """One turn to generate: the prompt ``ids`` (with the conversation's image keys and their media) continuing
    ``cache`` - the session's, which the job owns until it ends."""

    cache: ConversationCache
    adapter: str | None
    ids: list[int]
    images: tuple[str, ...]
    media: Media | None
    config: GenerationConfig
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Row:
    job: Job
    text: RowText
    stop_ids: set[int]
    suppress: torch.Tensor
    generator: torch.Generator | None
    seen: torch.Tensor  # [1, S] ids so far (repetition penalty)
    reused: int
    first_token: float | None = None
    generated: list[int] = field(default_factory=list)
    next_token: int = -1


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
        self._inbox: queue.Queue[Job | None] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._prefill: tuple[Job, int, int] | None = None  # (job, next prompt position, reused)
        self._rows: list[_Row] = []
        self._batch: ModelCache | None = None
        self.steps = 0  # decode steps run, and the most rows one of them ran (what batching achieved)
        self.peak_rows = 0
        self._open = threading.Event()  # cleared: jobs queue up, nothing runs (pause / resume)
        self._open.set()
        self._thread = threading.Thread(target=self._loop, name="mmgpt-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ clients
    def stream(self, job: Job) -> Iterator[str]:
        """Submit ``job`` and yield its text deltas; the generator's return value is its :class:`Outcome`.
        Closing the generator early (a client gone) cancels the job at the next step."""
        if not self._thread.is_alive():
            raise RuntimeError("the scheduler has stopped; create a new one")
        self._inbox.put(job)
        try:
            while True:
                kind, value = job.events.get()
                if kind == "delta":
                    yield value
                elif kind == "end":
                    return value
                else:
                    raise value
        finally:
            job.cancelled.set()

    def close(self) -> None:
        self._open.set()
        self._inbox.put(None)
        self._thread.join(timeout=30)

    def pause(self) -> None:
        """Let jobs queue up without running any (e.g. to start many at the same step)."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def queued(self) -> int:
        """Jobs submitted and not yet started."""
        return self._inbox.qsize() + len(self._waiting)

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            idle = not self._rows and self._prefill is None and not self._waiting
            try:
                job = self._inbox.get(block=idle)
                if job is None:
                    return
                self._waiting.append(job)
                continue  # take every job that has arrived before the next step
            except queue.Empty:
                pass
            self._open.wait()
            try:
                with torch.no_grad():
                    budget = self.prefill_chunk  # prompt tokens prefilled between two decode steps
                    while budget > 0:
                        self._admit()
                        if self._prefill is None:
                            break
                        budget -= self._prefill_chunk(budget)
                    if self._rows:
                        self._decode_step()
            except Exception as error:
                self._fail(error)

    def _admit(self) -> None:
        """Start prefilling the next waiting job when the batch has room for it."""
        while self._prefill is None and self._waiting:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                job.events.put(("end", Outcome("cancelled", 0, 0, None)))
                continue
            length = max(len(job.ids), self._batch.length if self._batch is not None else 0)
            if self._rows and (len(self._rows) >= self.max_rows or (len(self._rows) + 1) * length > self.max_tokens):
                return
            self._waiting.popleft()
            reused = job.cache.reuse(job.adapter, job.ids, job.images, job.media)
            self._prefill = (job, reused, reused)

    def _prefill_chunk(self, budget: int) -> int:
        """Prefill up to ``budget`` more prompt tokens of the job being prefilled; returns how many ran. A job
        whose prompt is done samples its first token and joins the batch."""
        job, start, reused = self._prefill
        end = min(len(job.ids), start + budget)
        logits = job.cache.run(job.ids[start:end])
        if end < len(job.ids):
            self._prefill = (job, end, reused)
            return end - start
        self._prefill = None
        model = self.chat_model.model
        stop_ids = stop_ids_of(self.chat_model.tokenizer, job.config)
        row = _Row(
            job=job,
            text=RowText(self.chat_model.tokenizer, job.config.stop_strings),
            stop_ids=stop_ids,
            suppress=torch.tensor(suppressed_ids(model, stop_ids), dtype=torch.long, device=logits.device),
            generator=make_generator(job.config, logits.device),
            seen=torch.tensor([job.ids], device=logits.device),
            reused=reused,
        )
        finish = self._sample(row, logits)
        if finish is not None:
            self._end(row, finish)  # done at its first token: the session's cache is already its own
            return end - start
        cache = job.cache.cache
        self._batch = cache if self._batch is None else ModelCache.merge([self._batch, cache])
        self._rows.append(row)
        return end - start

    def _decode_step(self) -> None:
        model = self.chat_model.model
        tokens = torch.tensor([[row.next_token] for row in self._rows], device=model.device)
        with self.chat_model.lock, row_adapters(model, [row.job.adapter for row in self._rows]):
            out = model(tokens, attention_mask=torch.ones_like(tokens), cache=self._batch, use_cache=True)
        self._batch = out.cache
        self.steps += 1
        self.peak_rows = max(self.peak_rows, len(self._rows))
        keep = []
        for i, row in enumerate(self._rows):
            row.job.cache.ids.append(row.next_token)
            row.seen = torch.cat([row.seen, tokens[i : i + 1]], dim=1)
            finish = "cancelled" if row.job.cancelled.is_set() else self._sample(row, out.logits[i : i + 1, -1])
            if finish is None:
                keep.append(i)
                continue
            row.job.cache.cache = self._batch.row(i)  # back to its session before the session hears the end
            self._end(row, finish)
        if len(keep) < len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._batch = self._batch.select(torch.tensor(keep)).trim() if keep else None

    def _sample(self, row: _Row, logits: torch.Tensor) -> FinishReason | None:
        """Choose the row's next token from logits [1, V] and send what became final; why the row stops, or None
        when it goes on (its token then runs at the next step)."""
        logits = logits.float()
        if row.suppress.numel():
            logits[:, row.suppress] = float("-inf")
        token = int(next_tokens(logits, row.seen, row.job.config, row.generator)[0])
        if row.first_token is None:
            row.first_token = time.perf_counter() - row.job.submitted
        if token in row.stop_ids:
            return "stop"
        row.generated.append(token)
        row.text.update(row.generated)
        if delta := row.text.delta():
            row.job.events.put(("delta", delta))
        if row.text.stopped:
            return "stop"
        if len(row.generated) >= row.job.config.max_new_tokens:
            return "length"
        row.next_token = token
        return None

    def _end(self, row: _Row, finish: FinishReason) -> None:
        if rest := row.text.remainder():
            row.job.events.put(("delta", rest))
        row.job.events.put(("end", Outcome(finish, len(row.generated), row.reused, row.first_token)))

    def _fail(self, error: Exception) -> None:
        jobs = [row.job for row in self._rows] + ([self._prefill[0]] if self._prefill else [])
        self._rows, self._batch, self._prefill = [], None, None
        for job in jobs:
            job.cache.clear()
            job.events.put(("error", error))
