"""ChatSession: one multi-turn conversation with images, reusing image features and the KV cache across turns.

The one path shared by the terminal (``mmgpt chat``), the browser demo and the HTTP API. A session holds the
turns (each user message with its images, and the answer), the features of every image (encoded once), and its
:class:`~mmgpt.chat.cache.ConversationCache`. Each turn renders the whole conversation with the model's prompt
style (the *training* template: the same tokens the model was tuned on), runs what the cache cannot vouch for, and
streams the answer from the one decoding loop of :mod:`mmgpt.generate`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmgpt.chat.cache import ConversationCache
from mmgpt.chat.job import Job
from mmgpt.chat.model import ChatModel
from mmgpt.data.conversation import Conversation, ImageRef, Message
from mmgpt.data.styles import get_style
from mmgpt.data.tokenize import SampleDropped, tokenize_prompt
from mmgpt.detokenize import RowText
from mmgpt.generate import FinishReason, GenerationConfig, decode, stop_ids_of, stream_text, suppressed_ids
from mmgpt.model.cache import storage_bytes


class ContextOverflowError(ValueError):
    """The conversation (plus the tokens to generate) does not fit the context budget."""


class InvalidMessageError(ValueError):
    """A message the model cannot take as written (a literal ``<image>`` in its text); the message says the fix."""


@dataclass
class Turn:
    """A user message (text, images) and the answer to it (None while it is being generated)."""

    text: str
    images: tuple[ImageRef, ...] = ()
    image_keys: tuple[str, ...] = ()  # content hashes of the transformed pixels, in order
    answer: str | None = None


@dataclass
class Reply:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int  # prompt tokens served from the cache
    computed_tokens: int  # prompt tokens run this turn (the rest of the prompt)
    # From the turn's start (its stream's first read) to its first token chosen - prefill, and with batching the
    # wait for a place in the batch, included; None when the stream ended before one (closed at once).
    seconds_to_first_token: float | None = None


class ChatSession:
    """One conversation. Not thread-safe itself (one caller at a time); many sessions share one :class:`ChatModel`.

    ``context_budget``: the most tokens a turn may use (prompt + ``max_new_tokens``; default the model's context).
    Over it, ``drop_oldest`` drops the oldest turns - each with its images, so an ``<image>`` token never outlives
    its image - and records a notice; otherwise (the HTTP API) :class:`ContextOverflowError` is raised.
    """

    def __init__(
        self,
        chat_model: ChatModel,
        *,
        adapter: str | None = None,
        context_budget: int | None = None,
        drop_oldest: bool = True,
    ) -> None:
        chat_model.check_adapter(adapter)
        self.chat_model = chat_model
        self.adapter = adapter
        self.context_budget = context_budget or chat_model.max_context
        self.drop_oldest = drop_oldest
        self.turns: list[Turn] = []
        self.pending_images: list[ImageRef] = []  # attached to the next user message
        self.notices: list[str] = []
        self.last: Reply | None = None
        self._features: dict[str, torch.Tensor] = {}  # image key -> [n, d], encoded once
        self._cache = ConversationCache(chat_model)

    # ------------------------------------------------------------------ conversation
    def conversation(self, *, pending: Turn | None = None) -> Conversation | None:
        messages: list[Message] = []
        for turn in [*self.turns, *([pending] if pending else [])]:
            messages.append(Message("user", turn.text, turn.images))
            if turn.answer is not None:
                messages.append(Message("assistant", turn.answer))
        return Conversation(messages) if messages else None

    def prompt_text(self) -> str:
        """The exact text the model sees (the template with ``<image>`` placeholders), for display."""
        conversation = self.conversation()
        if conversation is None:
            return ""
        style = get_style(self.chat_model.model.prompt_format.style)
        return style.render_text(conversation, eos=self.chat_model.tokenizer.eos_token or "")

    def prompt_length(self) -> int:
        """Tokens of the prompt for the last (unanswered) turn: what the next answer continues."""
        conversation = self.conversation()
        if conversation is None or not conversation.is_prompt:
            raise ValueError("the last message must be an unanswered user message")
        return len(self._tokens(conversation))

    def add_image(self, image: ImageRef) -> None:
        """Attach an image to the next user message (decoded and checked now, so a bad file fails here)."""
        self._image_key(image)
        self.pending_images.append(image)

    def set_adapter(self, adapter: str | None) -> None:
        self.chat_model.check_adapter(adapter)
        self.adapter = adapter  # the cache was made with the old adapter: reusable_prefix is skipped below

    def reset(self) -> None:
        self.turns.clear()
        self.pending_images.clear()
        self.drop_cache()

    def drop_cache(self) -> None:
        """Free the KV cache (the history stays; the next turn prefills its whole prompt). Safe while a closed
        stream's row is still in the scheduler's batch: that row keeps the old cache until it leaves."""
        self._cache = ConversationCache(self.chat_model)

    def undo(self) -> Turn | None:
        """Forget the last exchange (the cache keeps what stays valid; the next turn cuts the rest)."""
        return self.turns.pop() if self.turns else None

    @property
    def cached_tokens(self) -> int:
        """Positions its KV cache holds (what the next turn may reuse)."""
        return len(self._cache.ids)

    @property
    def cached_bytes(self) -> int:
        """Memory it holds for its next turn: the KV cache, its images' features and what the model derived from
        them (each buffer once)."""
        return storage_bytes(itertools.chain(self._cache.tensors(), self._features.values()))

    def load_turns(self, turns: Sequence[Turn]) -> None:
        """Replace the history (e.g. an API request's messages); cache and latents stay where still valid."""
        self.turns = list(turns)

    def continued_on(self, chat_model: ChatModel, *, adapter: str | None = None) -> ChatSession:
        """This conversation, continued by another model (e.g. another system picked in the web demo): the same
        turns and pending images, each image read again by that model's transform; its own cache and context."""
        session = ChatSession(chat_model, adapter=adapter, drop_oldest=self.drop_oldest)
        for turn in self.turns:
            moved = session.make_turn(turn.text, turn.images)
            moved.answer = turn.answer
            session.turns.append(moved)
        for image in self.pending_images:
            session.add_image(image)
        return session

    def make_turn(self, text: str, images: Sequence[ImageRef] = ()) -> Turn:
        """A user turn with its images decoded, checked and keyed (encoding happens when it runs)."""
        return Turn(text, tuple(images), tuple(self._image_key(image) for image in images))

    def save(self, path: str | Path) -> Path:
        """The conversation as JSON: messages with text and image paths (in-memory images are named so)."""
        conversation = self.conversation()
        messages = [] if conversation is None else conversation.messages
        data = {
            "model": self.chat_model.name,
            "adapter": self.adapter,
            "messages": [
                {"role": m.role, "text": m.text, "images": [_describe(image) for image in m.images]} for m in messages
            ],
        }
        path = Path(path)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------ generation
    def send(
        self, text: str, *, images: Sequence[ImageRef] = (), config: GenerationConfig | None = None
    ) -> Iterator[str]:
        """Add a user message (with ``images`` and any pending ones) and stream the answer as text deltas.

        When the stream ends - finished, or closed early by the caller - the answer so far is recorded and
        :attr:`last` describes the reply.
        """
        turn = self.make_turn(text, [*self.pending_images, *images])
        if self.turns and self.turns[-1].answer is None:
            self.turns.pop()  # a turn whose stream was never started: that exchange did not happen
        self.pending_images.clear()
        self.turns.append(turn)
        return self._answer(turn, config or GenerationConfig())

    def ask(self, text: str, *, images: Sequence[ImageRef] = (), config: GenerationConfig | None = None) -> Reply:
        """:meth:`send`, collected."""
        for _ in self.send(text, images=images, config=config):
            pass
        assert self.last is not None
        return self.last

    def regenerate(self, config: GenerationConfig | None = None) -> Iterator[str]:
        """Answer the last user message again (pass another seed or temperature to get a different answer)."""
        if not self.turns:
            raise ValueError("nothing to regenerate: the conversation is empty")
        turn = self.turns[-1]
        turn.answer = None
        return self._answer(turn, config or GenerationConfig())

    def respond(self, config: GenerationConfig | None = None) -> Iterator[str]:
        """Answer the last turn when it has no answer yet (history loaded with :meth:`load_turns`)."""
        if not self.turns or self.turns[-1].answer is not None:
            raise ValueError("the last message must be an unanswered user message")
        return self._answer(self.turns[-1], config or GenerationConfig())

    def _answer(self, turn: Turn, config: GenerationConfig) -> Iterator[str]:
        """Checks now (context budget), then returns the stream of the answer."""
        if config.num_return_sequences != 1:
            raise ValueError("a chat turn has one answer; num_return_sequences must be 1")
        # The model's prompt style ends an answer where its template would start a new turn (MiniGPT-4's "###").
        style_stops = get_style(self.chat_model.model.prompt_format.style).stop_strings
        config = dataclasses.replace(config, stop_strings=tuple(dict.fromkeys((*config.stop_strings, *style_stops))))
        try:
            ids = self._fit(turn, config.max_new_tokens)
        except Exception:
            if turn in self.turns and turn.answer is None:
                self.turns.remove(turn)  # a turn that cannot run is not kept: the session stays usable
            raise
        images = tuple(key for t in self.turns for key in t.image_keys)
        # Features of images no longer in the conversation (undone, dropped) are not needed again.
        self._features = {key: self._features[key] for key in images}
        self.last = None
        return self._stream(turn, ids, images, config)

    def _stream(self, turn: Turn, ids: list[int], images: tuple[str, ...], config: GenerationConfig) -> Iterator[str]:
        started = time.perf_counter()
        shown: list[str] = []  # the deltas streamed so far: they join to the answer
        finish: FinishReason = "cancelled"
        reused = completion = 0
        first_token: float | None = None
        try:
            media = self.chat_model.compute(lambda: self._cache.media_for(images, self._features))
            scheduler = self.chat_model.scheduler
            if scheduler is not None:  # decoded in one batch with every other session's turn
                job = Job(self._cache, self.adapter, ids, images, media, config, submitted=started)
                outcome = yield from _shown(scheduler.stream(job), shown)
                finish, reused, completion = outcome.finish, outcome.reused_tokens, outcome.completion_tokens
                first_token = outcome.seconds_to_first_token
                return
            tokenizer = self.chat_model.tokenizer
            stop_ids = stop_ids_of(tokenizer, config)
            text = RowText(tokenizer, config.stop_strings)
            logits, reused = self._cache.prefill(self.adapter, ids, images, media)
            steps = decode(
                logits,
                torch.tensor([ids], device=logits.device),
                self._cache.step,
                config=config,
                stop_ids=stop_ids,
                suppress_ids=suppressed_ids(self.chat_model.model, stop_ids),
            )
            generated: list[int] = []

            def timed(steps: Iterator) -> Iterator:  # the first token is chosen when decode yields its first step
                nonlocal first_token
                for step in steps:
                    first_token = time.perf_counter() - started if first_token is None else first_token
                    yield step

            steps = timed(steps)
            finish = yield from _shown(stream_text(steps, text, stop_ids, generated, config.max_new_tokens), shown)
            completion = len(generated)
        finally:
            # Recorded also when the caller stops early (a closed stream): the history stays a valid chat.
            turn.answer = "".join(shown).strip()
            self.last = Reply(turn.answer, finish, len(ids), completion, reused, len(ids) - reused, first_token)

    def _tokens(self, conversation: Conversation) -> list[int]:
        fmt = self.chat_model.model.prompt_format
        try:
            return tokenize_prompt(conversation, self.chat_model.tokenizer, fmt=fmt).input_ids
        except SampleDropped as dropped:
            raise InvalidMessageError(f"this message cannot be sent as written: {dropped.detail}") from None

    def _fit(self, turn: Turn, max_new_tokens: int) -> list[int]:
        """The prompt's token ids, after dropping the oldest turns if the budget requires (never ``turn``)."""
        while True:
            ids = self._tokens(self.conversation())
            need = len(ids) + max_new_tokens
            if need <= self.context_budget:
                return ids
            if not self.drop_oldest or self.turns[0] is turn:
                self.turns.remove(turn)  # a turn that cannot run is not kept: the session stays usable
                raise ContextOverflowError(
                    f"the prompt has {len(ids)} tokens and {max_new_tokens} more may be generated: {need} tokens, "
                    f"over the context budget of {self.context_budget}; shorten the conversation or lower "
                    "max_new_tokens (max_tokens)"
                )
            dropped = self.turns.pop(0)
            self.notices.append(
                f"dropped the oldest turn ({dropped.text[:40]!r}"
                + (f", with {len(dropped.images)} image(s)" if dropped.images else "")
                + f") to fit the context budget of {self.context_budget} tokens"
            )

    # ------------------------------------------------------------------ images
    def _image_key(self, image: ImageRef) -> str:
        """Decode, check and transform ``image``, encode it unless already known; returns its content key."""
        pixels = self.chat_model.compute(lambda: self.chat_model.transform(image))
        key = hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:32]
        if key not in self._features:
            self._features[key] = self.chat_model.encode(pixels)
        return key


def _describe(image: ImageRef) -> str:
    return str(image) if isinstance(image, (str, Path)) else "<in-memory image>"


def _shown(deltas: Iterator[str], shown: list[str]) -> Generator[str, None, Any]:
    """Yield the deltas of ``deltas``, keeping each in ``shown``; return what ``deltas`` returns. Closed early (the
    caller stopped reading), it closes ``deltas`` too: a scheduled job is then cancelled at once."""
    try:
        while True:
            try:
                delta = next(deltas)
            except StopIteration as done:
                return done.value
            shown.append(delta)
            yield delta
    finally:
        deltas.close()
