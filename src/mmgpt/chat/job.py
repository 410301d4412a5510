"""A turn to generate (:class:`Job`), what became of it (:class:`Outcome`), and its row in the scheduler's batch
(:class:`Row`: the row's text, stops, sampling state) with how each row's next token is chosen (:func:`choose`)."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import torch

from mmgpt.chat.cache import ConversationCache
from mmgpt.chat.model import ChatModel
from mmgpt.detokenize import RowText
from mmgpt.generate import FinishReason, GenerationConfig, make_generator, next_tokens, stop_ids_of, suppressed_ids
from mmgpt.model.cache import Media


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
class Row:
    job: Job
    text: RowText
    stop_ids: set[int]
    suppress: torch.Tensor
    generator: torch.Generator | None
    reused: int
    first_token: float | None = None
    generated: list[int] = field(default_factory=list)
    next_token: int = -1

    @classmethod
    def of(cls, job: Job, chat_model: ChatModel, reused: int, *, device: torch.device) -> Row:
        """The row of ``job``, whose prompt has run (``reused`` positions came from its session's cache)."""
        stop_ids = stop_ids_of(chat_model.tokenizer, job.config)
        return cls(
            job=job,
            text=RowText(chat_model.tokenizer, job.config.stop_strings),
            stop_ids=stop_ids,
            suppress=torch.tensor(suppressed_ids(chat_model.model, stop_ids), dtype=torch.long, device=device),
            generator=make_generator(job.config, device),
            reused=reused,
        )

    @property
    def greedy(self) -> bool:
        """Chosen by one argmax over the batch: no sampling, no penalty that depends on the row's ids."""
        config = self.job.config
        return config.temperature == 0 and config.repetition_penalty == 1.0

    def seen(self, device: torch.device) -> torch.Tensor | None:
        """[1, S] the ids so far (prompt and answer) for the repetition penalty; None without one (a sampling row's
        step then builds no tensor of its whole history)."""
        if self.job.config.repetition_penalty == 1.0:
            return None
        return torch.tensor([self.job.ids + self.generated], device=device)


def choose(rows: list[Row], logits: torch.Tensor) -> list[int]:
    """Each row's next token from logits [b, V] (float32), chosen exactly as the row alone would choose it: greedy
    rows by one argmax over them all, the others with their own settings and seeded generator."""
    for i, row in enumerate(rows):
        if row.suppress.numel():
            logits[i, row.suppress] = float("-inf")
    chosen = logits.argmax(dim=-1).tolist()
    for i, row in enumerate(rows):
        if not row.greedy:
            seen = row.seen(logits.device)
            chosen[i] = int(next_tokens(logits[i : i + 1], seen, row.job.config, row.generator)[0])
    return chosen
