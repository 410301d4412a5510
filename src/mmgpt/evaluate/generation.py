"""Answering many prompts: batched greedy generation for any model of the contract, in budget-and-length order.

What every evaluation shares: requests (token ids, image tensors, a token budget, stop strings) in, generated
texts out in the same order. Batches hold requests of one budget and similar prompt length, so little time goes
to padding and to rows that finished long ago.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.generate import GenerationConfig, generate
from mmgpt.model.contract import VisionLanguageModel

DEFAULT_BATCH_SIZE = 32


@dataclass(frozen=True)
class AnswerRequest:
    """One prompt: its ids (in the model's prompt format), its images [m, 3, H, W] (or None), a token budget, and
    the strings and token ids that end its answer (besides EOS; a stop token is special and never decoded into the
    text, so a stop string cannot catch it - OpenFlamingo's ``<|endofchunk|>``)."""

    input_ids: list[int]
    images: torch.Tensor | None
    max_new_tokens: int
    stop_strings: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()

    @property
    def ending(self) -> tuple[int, tuple[str, ...], tuple[int, ...]]:
        """What a batch must share: the budget and the stops."""
        return self.max_new_tokens, self.stop_strings, self.stop_token_ids


def generate_answers(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: Sequence[AnswerRequest],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy generated texts (cut at their stop strings) for ``requests``, in order."""
    order = sorted(range(len(requests)), key=lambda i: (requests[i].ending, len(requests[i].input_ids)))
    texts = [""] * len(requests)
    start = 0
    while start < len(order):
        first = requests[order[start]]
        batch = [i for i in order[start : start + batch_size] if requests[i].ending == first.ending]
        config = GenerationConfig(
            max_new_tokens=first.max_new_tokens,
            temperature=0.0,
            stop_strings=first.stop_strings,
            stop_token_ids=first.stop_token_ids,
        )
        outputs = generate(
            model,
            tokenizer,
            [requests[i].input_ids for i in batch],
            images=[requests[i].images for i in batch],
            config=config,
        )
        for i, output in zip(batch, outputs, strict=True):
            texts[i] = output.text
        start += len(batch)
        if on_progress is not None:
            on_progress(len(batch))
    return texts
