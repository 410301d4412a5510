"""Asking a model a batch of benchmark items: queries -> pixels -> batched greedy generation or log-likelihood
ranking -> each item's prediction, in the form its benchmark's scorer takes.

What each kind of benchmark gets:

| kind | how | prediction |
|---|---|---|
| vqa, yes_no, caption, instruction | greedy generation | the answer text |
| open_ended (OwlEval, LLaVA-Bench, MM-Vet) | the OwlEval runner (``owleval.py``), conversations in order | the answer |
| multiple_choice (A-OKVQA) | ranking the choices, and generation | ``{"multiple_choice", "direct_answer"}`` |
| classification | ranking the class words | HatefulMemes: P(hateful) (softmax of the scores); else the class index |
| mmlu | ranking the letters | the letter |

Generated text is cleaned as OpenFlamingo's post-processing does for ``fewshot`` prompts (cut at the next
"Question"/"Answer"/"Short" - or "Output" for captions -, then at the first ", " for VQA; quotes removed from
captions), and by the model's prompt style (``extract_response``) for ``chat`` prompts, whose short answers are
then normalised as LLaVA does before writing VQA results (``EvalAIAnswerProcessor`` = the VQA normalisation).

An item whose image cannot be read (missing, corrupt) is not asked: its record says why, and the run counts it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.images import ImageError
from mmgpt.data.styles import get_style
from mmgpt.evaluate import prompts
from mmgpt.evaluate.benchmarks.mmlu import LETTERS
from mmgpt.evaluate.benchmarks.vqa_normalize import normalize_answer
from mmgpt.evaluate.generation import AnswerRequest, generate_answers
from mmgpt.evaluate.likelihood import RankRequest, rank_candidates, softmax
from mmgpt.evaluate.owleval import answer_owleval
from mmgpt.evaluate.queries import Query, QueryBuilder
from mmgpt.model.contract import VisionLanguageModel

GENERATED = ("vqa", "yes_no", "caption", "instruction")
RANKED = ("multiple_choice", "classification", "mmlu")
PROBABILITY_OF = {"hatefulmemes": 1}  # benchmarks scored on the probability of one class
PIXEL_CACHE = 256


@dataclass
class Asker:
    """Everything needed to answer items of one benchmark with one model; ``ask`` answers a batch."""

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    builder: QueryBuilder
    batch_size: int = 8
    max_new_tokens: int | None = None
    normalize: str = "mean"

    def __post_init__(self) -> None:
        self.transform = self.model.image_transform()
        self._pixels: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.spec, self.kind, self.benchmark = self.builder.spec, self.builder.kind, self.builder.benchmark

    # ------------------------------------------------------------------ images
    def pixels(self, query: Query) -> torch.Tensor | None:
        """The query's images through the model's transform [m, 3, H, W] (recently used ones are kept)."""
        if not query.images:
            return None
        tensors = []
        for image in query.images:
            key = str(image)
            if key not in self._pixels:
                self._pixels[key] = self.transform(image)
                if len(self._pixels) > PIXEL_CACHE:
                    self._pixels.popitem(last=False)
            self._pixels.move_to_end(key)
            tensors.append(self._pixels[key])
        return torch.stack(tensors)

    # ------------------------------------------------------------------ answers
    def budget(self) -> int:
        default = prompts.max_new_tokens(self.spec.format, self.benchmark, self.kind)
        return default if self.max_new_tokens is None else self.max_new_tokens

    def clean(self, text: str) -> str:
        kind = "vqa" if self.kind == "multiple_choice" else self.kind
        if self.spec.format == prompts.FEWSHOT:
            for stop in prompts.FEWSHOT_STOPS.get(kind, ()):
                text = text.split(stop, 1)[0]
            if kind in ("vqa", "yes_no"):
                text = re.split(", ", text, maxsplit=1)[0]
            if kind == "caption":
                text = text.replace('"', "")
            return text.strip()
        text = get_style(self.builder.fmt.style).extract_response(text).strip()
        if self.kind == "multiple_choice":  # A-OKVQA compares exact strings: its answers are lower-case words
            return text.rstrip(".").lower()
        return normalize_answer(text) if kind == "vqa" else text

    def generate(self, queries: Sequence[Query], pixels: Sequence[torch.Tensor | None]) -> list[str]:
        kind = "vqa" if self.kind == "multiple_choice" else self.kind
        if self.spec.format == prompts.FEWSHOT:
            stops = prompts.stop_strings(self.spec, kind)
        else:
            stops = tuple(get_style(self.builder.fmt.style).stop_strings)
        requests = [
            AnswerRequest(q.ids, p, self.budget(), stops, self.builder.stop_token_ids)
            for q, p in zip(queries, pixels, strict=True)
        ]
        return generate_answers(self.model, self.tokenizer, requests, batch_size=self.batch_size)

    def rank(self, queries: Sequence[Query], pixels: Sequence[torch.Tensor | None]) -> list[list[float]]:
        requests = [RankRequest(q.ids, p, q.candidate_ids) for q, p in zip(queries, pixels, strict=True)]
        return rank_candidates(self.model, requests, normalize=self.normalize, batch_size=self.batch_size)

    def prediction(self, item: Any, query: Query, scores: list[float] | None, text: str | None) -> Any:
        best = None if scores is None else max(range(len(scores)), key=lambda k: (scores[k], -k))
        if self.kind == "multiple_choice":
            item_choice = item.choices[best]  # the choice as published (the candidate may carry a leading space)
            return {"multiple_choice": item_choice, "direct_answer": self.clean(text or "")}
        if self.kind == "classification":
            if self.benchmark in PROBABILITY_OF:
                return softmax(scores)[PROBABILITY_OF[self.benchmark]]
            return best
        if self.kind == "mmlu":
            return LETTERS[best]
        return self.clean(text or "")

    def ask_conversations(self, groups: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        """Records of open-ended questions, answered by the OwlEval runner (``owleval.answer_owleval``: the model's
        chat template, a conversation's questions asked in order with its own earlier answers); a conversation
        whose image cannot be read is skipped whole."""

        queries: dict[Any, Any] = {}  # item key -> the query asked (recorded as it was sent)

        def prompt_ids(item: Any, history: list[tuple[str, str]]) -> list[int]:
            queries[item.key] = self.builder.build(item, history=history)
            return queries[item.key].ids

        def answer(questions: Sequence[Any]) -> dict[Any, str]:
            budget = self.budget()
            return answer_owleval(
                self.model,
                self.tokenizer,
                questions,
                max_new_tokens=budget,
                batch_size=self.batch_size,
                prompt_ids=prompt_ids,
            )

        records: list[dict[str, Any]] = []
        try:
            answers = answer([item for group in groups for item in group])
        except ImageError:
            answers = {}
            for group in groups:  # find the conversations at fault, answer the others
                try:
                    answers.update(answer(group))
                except ImageError as error:
                    records += [{"key": item.key, "skipped": f"image: {error}"} for item in group]
        for group in groups:
            for item in group:
                if item.key not in answers:
                    continue
                records.append({"key": item.key, "prediction": answers[item.key], "query": queries[item.key].record()})
        return records

    def ask(
        self,
        items: Sequence[Any],
        build: Callable[[Any], Query],
    ) -> list[dict[str, Any]]:
        """Records of ``items``: ``{"key", "prediction", "raw"?, "scores"?, "query"}`` or ``{"key", "skipped",
        "query"?}``; ``build(item)`` makes each item's query (with its in-context examples)."""
        records: list[dict[str, Any]] = []
        asked: list[tuple[Any, Query, torch.Tensor | None]] = []
        for item in items:
            try:
                query = build(item)
            except ImageError as error:  # a chat style may open images while rendering
                records.append({"key": item.key, "skipped": f"image: {error}"})
                continue
            try:
                asked.append((item, query, self.pixels(query)))
            except ImageError as error:
                records.append({"key": item.key, "skipped": f"image: {error}", "query": query.record()})
        if not asked:
            return records
        queries = [q for _, q, _ in asked]
        pixels = [p for _, _, p in asked]
        texts: list[str | None] = [None] * len(asked)
        scores: list[list[float] | None] = [None] * len(asked)
        if self.kind in RANKED:
            scores = list(self.rank(queries, pixels))
        if self.kind in GENERATED or self.kind == "multiple_choice":
            texts = list(self.generate(queries, pixels))
        for (item, query, _), text, score in zip(asked, texts, scores, strict=True):
            record: dict[str, Any] = {"key": item.key, "prediction": self.prediction(item, query, score, text)}
            if text is not None:
                record["raw"] = text
            if score is not None:
                record["scores"] = score
            record["query"] = query.record()
            records.append(record)
        return records
