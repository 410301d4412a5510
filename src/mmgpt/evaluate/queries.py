"""One benchmark item asked of one model: the exact prompt text, its token ids in the model's format, its images,
and what the answer is chosen from (candidates, for ranked items).

:class:`QueryBuilder` turns (item, in-context examples) into a :class:`Query` with the prompt spec of
``prompts.py``: ``fewshot`` text is split at each ``<image>``, whose place takes the model's image ids
(``model.image_placeholders()``: one ``<image>`` for Flamingo, a run of positions for a prefix model), and the text
pieces are encoded on their own after the BOS the model's tokenizer convention wants - exactly what
``mmgpt eval --world --prompt-format qa`` sends. ``chat`` prompts are conversations tokenised by the model's prompt
style (``tokenize_prompt``), so a tuned model sees its training template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.data.conversation import Conversation, Message
from mmgpt.data.styles import get_style
from mmgpt.data.templates import join_options
from mmgpt.data.tokenize import ConversationTokenizer
from mmgpt.evaluate import prompts
from mmgpt.evaluate.benchmarks import items as kinds
from mmgpt.model.contract import VisionLanguageModel
from mmgpt.tokens import END_OF_CHUNK, IMAGE


@dataclass(frozen=True)
class Query:
    """``text``: the prompt as sent (images as ``<image>``; the BOS the tokenizer adds is not written);
    ``ids``: its tokens; ``images``: one per image position, in order (in-context examples' first);
    ``demos``: the keys of the in-context examples; ``candidates``/``candidate_ids``: what a ranked item chooses
    between, as continuations of the prompt."""

    key: Any
    text: str
    ids: list[int]
    images: tuple[Any, ...]
    demos: tuple[Any, ...] = ()
    candidates: tuple[str, ...] = ()
    candidate_ids: tuple[tuple[int, ...], ...] = field(default=(), repr=False)

    def record(self) -> dict[str, Any]:
        """What prompts.jsonl keeps of it: enough to send the same prompt again."""
        out: dict[str, Any] = {"prompt": self.text, "images": [str(i) for i in self.images], "demos": list(self.demos)}
        if self.candidates:
            out["candidates"] = list(self.candidates)
        return out


class QueryBuilder:
    """Builds the queries of one benchmark for one model in one prompt spec."""

    def __init__(
        self,
        model: VisionLanguageModel,
        tokenizer: PreTrainedTokenizerBase,
        spec: prompts.PromptSpec,
        *,
        benchmark: str,
        kind: str,
    ) -> None:
        self.spec, self.benchmark, self.kind = spec, benchmark, kind
        self.encoder = ConversationTokenizer(tokenizer, fmt=model.prompt_format)
        self.fmt = model.prompt_format
        self.end_of_chunk = END_OF_CHUNK if model.special.end_of_chunk is not None else ""
        self.stop_token_ids = (model.special.end_of_chunk,) if self.end_of_chunk and spec.format == "fewshot" else ()

    # ------------------------------------------------------------------ token ids
    def encode_text(self, text: str) -> list[int]:
        """BOS (when the tokenizer's convention has one), then each piece between ``<image>`` markers encoded on
        its own, each marker the model's image ids."""
        head, *rest = text.split(IMAGE)
        ids = list(self.encoder.prefix) + (self.encoder.encode([head])[0] if head else [])
        for piece in rest:
            ids += self.encoder.image_tokens + (self.encoder.encode([piece])[0] if piece else [])
        return ids

    def encode_candidates(self, texts: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        encoded = self.encoder.encode(list(texts))
        empty = [t for t, ids in zip(texts, encoded, strict=True) if not ids]
        if empty:
            raise ValueError(f"{self.benchmark}: candidate(s) {empty!r} encode to no tokens; nothing to score")
        return tuple(tuple(ids) for ids in encoded)

    # ------------------------------------------------------------------ queries
    def build(
        self,
        item: Any,
        demos: Sequence[Any] = (),
        *,
        text_only_demos: bool = False,
        history: Sequence[tuple[str, str]] = (),
    ) -> Query:
        """The query of ``item`` after the in-context examples ``demos`` (``text_only_demos``: their images left
        out, OpenFlamingo's zero-shot); ``history``: earlier (question, answer) turns of a chat conversation."""
        image = prompts.image_of(item)
        if self.spec.format == prompts.FEWSHOT:
            if history:
                raise ValueError("multi-turn questions are asked in the chat format; pass --prompt chat")
            text = prompts.fewshot_text(
                self.spec,
                self.benchmark,
                self.kind,
                item,
                list(demos),
                end_of_chunk=self.end_of_chunk,
                text_only_demos=text_only_demos,
            )
            ids = self.encode_text(text)
            shown = [] if text_only_demos else [prompts.image_of(d) for d in demos]
            images = tuple(x for x in [*shown, image] if x is not None)[: text.count(IMAGE)]
        else:
            conversation = self._conversation(item, demos, history)
            ids = self.encoder.prompt(conversation).input_ids
            text = "".join(segment.text for segment in get_style(self.fmt.style).render_prompt(conversation))
            images = tuple(conversation.images)
        query = Query(item.key, text, ids, images, tuple(d.key for d in demos))
        if self.kind in ("multiple_choice", "classification", "mmlu"):
            choices = prompts.candidates(item, self.benchmark, self.spec, self.kind)
            query = replace(query, candidates=choices, candidate_ids=self.encode_candidates(choices))
        return query

    def _message(self, item: Any, *, first: bool) -> Message:
        image = prompts.image_of(item)
        images = (image,) if image is not None and first else ()
        extra = None
        if isinstance(item, kinds.MultipleChoiceItem):
            extra = join_options(item.choices)
        elif isinstance(item, kinds.InstructionItem):
            extra = item.input or None
        return Message("user", prompts.chat_text(self.spec, self.benchmark, self.kind, item), images, extra)

    def _conversation(self, item: Any, demos: Sequence[Any], history: Sequence[tuple[str, str]]) -> Conversation:
        messages: list[Message] = []
        for demo in demos:
            messages.append(self._message(demo, first=True))
            messages.append(Message("assistant", prompts.demo_answer(demo, self.benchmark).strip()))
        if history:
            question, answer = history[0]
            image = prompts.image_of(item)
            messages += [Message("user", question, (image,) if image is not None else ()), Message("assistant", answer)]
            for question, answer in history[1:]:
                messages += [Message("user", question), Message("assistant", answer)]
        messages.append(self._message(item, first=not history))
        return Conversation(messages, source=self.benchmark, id=str(item.key))
