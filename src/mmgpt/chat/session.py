"""ChatSession: multi-turn chat with images, reusing vision features and the KV cache across turns.

The one path shared by the terminal (``mmgpt chat``), the browser demo and the HTTP API. A session holds the
turns (each user message with its images, and the answer), the latents of every image (encoded once), and the
KV cache of the tokens it has run. Each turn renders the whole conversation with the *training* template
(``tokenize_prompt``: one ``<image>`` per image), then runs only the tokens the cache cannot vouch for.

Which cached positions stay valid (``reusable_prefix``): a position's state depends on the tokens up to it, on
the image each of them attends to, on whether the row bypasses the gated blocks (no image at all), and on the
LoRA adapter. Under the "previous" media mask appending a turn changes none of that, so the cache is reused
whole. Under "following" (OpenFlamingo v1 / MultiModal-GPT) text attends to the *next* image, so when a turn
adds an image the text after the previously last image changes what it sees: the cache is cut back to the first
such token and the rest re-runs. The result equals a full recomputation (tested, both masks).

Legend: T tokens, m images, n latents per image, d_v vision width, V vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase

from mmgpt.data.conversation import Conversation, ImageRef, Message
from mmgpt.data.images import DEFAULT_MAX_PIXELS, ImageTransform
from mmgpt.data.templates import render_text
from mmgpt.data.tokenize import tokenize_prompt
from mmgpt.generate import GenerationConfig, RowText, next_tokens, stop_ids_of, suppressed_ids
from mmgpt.model.flamingo import Flamingo, FlamingoCache, FlamingoOutput
from mmgpt.model.fusion.cross_attention import attend_index
from mmgpt.model.fusion.gated_blocks import Media
from mmgpt.model.lora import adapter_names, lora_layers, select_adapter

FinishReason = Literal["stop", "length", "cancelled"]
DEFAULT_CONTEXT = 2048  # when the LM's config names no maximum


class ContextOverflowError(ValueError):
    """The conversation (plus the tokens to generate) does not fit the context budget."""


@dataclass
class ChatModel:
    """A loaded model shared by every session: the model, its tokenizer and image transform, and the lock that
    serialises model calls. The active LoRA adapter is state on the model's layers, so selecting it and running
    the model happen under the lock, one step at a time: concurrent sessions interleave, never mix adapters."""

    model: Flamingo
    tokenizer: PreTrainedTokenizerBase
    transform: ImageTransform
    name: str = "mmgpt"
    max_context: int = DEFAULT_CONTEXT
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _layers: list = field(default_factory=list, repr=False)
    _active: str | None = field(default=None, repr=False)

    @classmethod
    def wrap(
        cls,
        model: Flamingo,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "mmgpt",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ChatModel:
        text = model.lang_encoder.config.get_text_config()
        limit = getattr(text, "max_position_embeddings", None) or getattr(text, "max_seq_len", None)
        transform = ImageTransform(size=model.vision_encoder.image_size, max_pixels=max_image_pixels)
        chat = cls(model.eval(), tokenizer, transform, name=name)
        chat.max_context = int(limit or DEFAULT_CONTEXT)
        chat._layers = lora_layers(model)
        if chat._layers:
            select_adapter(model, None, chat._layers)
        return chat

    @property
    def adapters(self) -> list[str]:
        """Named adapters selectable per session (the model's own ``default`` adapter, if any, is the base)."""
        return [a for a in adapter_names(self.model) if a != "default"] if self._layers else []

    def check_adapter(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise ValueError(f"no adapter named {adapter!r}; this model has {self.adapters or 'none'}")

    @torch.no_grad()
    def forward(
        self,
        adapter: str | None,
        input_ids: torch.Tensor,
        *,
        cache: FlamingoCache | None = None,
        media: Media | None = None,
    ) -> FlamingoOutput:
        """One model call with ``adapter`` active: input_ids [1, T] -> logits [1, T, V] and the new cache."""
        with self.lock:
            if self._layers and adapter != self._active:
                select_adapter(self.model, adapter, self._layers)
                self._active = adapter
            return self.model(input_ids.to(self.model.device), media=media, cache=cache, use_cache=True)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [3, H, W] -> latents [n, d_v]. Outside the lock: the ViT and perceiver carry no adapter."""
        return self.model.encode_images(pixels[None, None]).latents[0, 0]


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


def reusable_prefix(
    old_ids: Sequence[int],
    old_images: Sequence[str],
    new_ids: Sequence[int],
    new_images: Sequence[str],
    *,
    image_token_id: int,
    media_mask: str,
    bypass: bool,
) -> int:
    """How many leading positions computed for ``old_ids`` (with images ``old_images``, by key) are exactly what
    ``new_ids`` (with ``new_images``) would compute: same token and same attended image at every position, and
    the same language-only bypass for the row."""
    if bypass and (len(old_images) == 0) != (len(new_images) == 0):
        return 0  # the gated blocks switch on or off for every token
    n = 0
    limit = min(len(old_ids), len(new_ids))
    while n < limit and old_ids[n] == new_ids[n]:
        n += 1
    if n == 0:
        return 0

    def attended(ids: Sequence[int], images: Sequence[str]) -> list[str | None]:
        index = attend_index(
            torch.tensor([list(ids[:n])]),
            image_token_id=image_token_id,
            image_counts=torch.tensor([len(images)]),
            media_mask=media_mask,
        )[0]
        return [images[i - 1] if i > 0 else None for i in index.tolist()]

    for position, (a, b) in enumerate(zip(attended(old_ids, old_images), attended(new_ids, new_images), strict=True)):
        if a != b:
            return position
    return n


def crop_cache(cache: FlamingoCache, length: int, media: Media | None, images_seen: int) -> FlamingoCache:
    """The first ``length`` positions of a single-row cache, continuing with ``media``."""
    kv = DynamicCache()
    for i, layer in enumerate(cache.kv.layers):
        if layer.keys is not None and layer.keys.numel():
            kv.update(layer.keys[:, :, :length], layer.values[:, :, :length], i)
    seen = torch.tensor([images_seen], device=cache.images_seen.device)
    return FlamingoCache(kv, media, seen, cache.attention_mask[:, :length])


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
        self._latents: dict[str, torch.Tensor] = {}  # image key -> [n, d_v], encoded once
        self._cache: FlamingoCache | None = None
        self._cached_ids: list[int] = []
        self._cached_images: tuple[str, ...] = ()
        self._cached_adapter: str | None = None
        self._media: tuple[tuple[str, ...], Media | None] = ((), None)

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
        return render_text(conversation, eos=self.chat_model.tokenizer.eos_token or "") if conversation else ""

    def prompt_length(self) -> int:
        """Tokens of the prompt for the last (unanswered) turn: what the next answer continues."""
        conversation = self.conversation()
        if conversation is None or not conversation.is_prompt:
            raise ValueError("the last message must be an unanswered user message")
        return len(tokenize_prompt(conversation, self.chat_model.tokenizer).input_ids)

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
        self._cache, self._cached_ids, self._cached_images = None, [], ()

    def undo(self) -> Turn | None:
        """Forget the last exchange (the cache keeps what stays valid; the next turn cuts the rest)."""
        return self.turns.pop() if self.turns else None

    def load_turns(self, turns: Sequence[Turn]) -> None:
        """Replace the history (e.g. an API request's messages); cache and latents stay where still valid."""
        self.turns = list(turns)

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
        ids = self._fit(turn, config.max_new_tokens)
        images = tuple(key for t in self.turns for key in t.image_keys)
        # Latents of images no longer in the conversation (undone, dropped) are not needed again.
        self._latents = {key: self._latents[key] for key in images}
        self.last = None
        return self._stream(turn, ids, images, config)

    def _stream(self, turn: Turn, ids: list[int], images: tuple[str, ...], config: GenerationConfig) -> Iterator[str]:
        tokenizer = self.chat_model.tokenizer
        stop_ids = stop_ids_of(tokenizer, config)
        suppress = suppressed_ids(self.chat_model.model, stop_ids)
        text = RowText(tokenizer, config.stop_strings)
        generated: list[int] = []
        finish: FinishReason = "cancelled"
        reused = 0
        try:
            logits, reused = self._prefill(ids, images)
            generator = None
            if config.temperature > 0:
                generator = torch.Generator(device=logits.device)
                generator.manual_seed(config.seed) if config.seed is not None else generator.seed()
            seen = torch.tensor([ids], device=logits.device)
            for step in range(config.max_new_tokens):
                logits = logits.float()
                logits[:, suppress] = float("-inf")
                token = int(next_tokens(logits, seen, config, generator)[0])
                if token in stop_ids:
                    finish = "stop"
                    break
                generated.append(token)
                text.update(generated)
                if delta := text.delta():
                    yield delta
                if text.stopped:
                    finish = "stop"
                    break
                if step == config.max_new_tokens - 1:
                    finish = "length"
                    break
                seen = torch.cat([seen, seen.new_tensor([[token]])], dim=1)
                logits = self._run([token])
            if rest := text.remainder():
                yield rest
        finally:
            # Recorded also when the caller stops early (a closed stream): the history stays a valid chat.
            turn.answer = text.text.strip()
            self.last = Reply(turn.answer, finish, len(ids), len(generated), reused, len(ids) - reused)

    def _fit(self, turn: Turn, max_new_tokens: int) -> list[int]:
        """The prompt's token ids, after dropping the oldest turns if the budget requires (never ``turn``)."""
        tokenizer = self.chat_model.tokenizer
        while True:
            ids = tokenize_prompt(self.conversation(), tokenizer).input_ids
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

    # ------------------------------------------------------------------ cache
    def _media_for(self, images: tuple[str, ...]) -> Media | None:
        if self._media[0] == images:
            return self._media[1]  # same images: keep the Media, whose cross-attention keys/values are projected
        media = None
        if images:
            latents = torch.stack([self._latents[key] for key in images])[None]  # [1, m, n, d_v]
            media = Media(latents, torch.tensor([len(images)], device=latents.device))
        self._media = (images, media)
        return media

    def _prefill(self, ids: list[int], images: tuple[str, ...]) -> tuple[torch.Tensor, int]:
        """Bring the cache to ``ids`` reusing what stays valid; returns (logits [1, V] of the last token, reused)."""
        model = self.chat_model.model
        keep = 0
        if self._cache is not None and self._cached_adapter == self.adapter:
            keep = reusable_prefix(
                self._cached_ids,
                self._cached_images,
                ids,
                images,
                image_token_id=model.special.image,
                media_mask=model.config.cross_attention.media_mask,
                bypass=model.config.cross_attention.language_only_bypass,
            )
        keep = min(keep, len(ids) - 1)  # the last prompt token runs again: its logits start the answer
        media = self._media_for(images)
        if keep == 0:
            self._cache, self._cached_ids = None, []
        else:
            seen = sum(1 for t in ids[:keep] if t == model.special.image)
            self._cache = crop_cache(self._cache, keep, media, seen)
            self._cached_ids = list(ids[:keep])
        self._cached_images, self._cached_adapter = images, self.adapter
        if self._cache is None:
            out = self.chat_model.forward(self.adapter, torch.tensor([ids]), media=media)
        else:  # the cropped cache carries the media (new images included)
            out = self.chat_model.forward(self.adapter, torch.tensor([ids[keep:]]), cache=self._cache)
        self._cache, self._cached_ids = out.cache, list(ids)
        return out.logits[:, -1], keep

    def _run(self, tokens: list[int]) -> torch.Tensor:
        out = self.chat_model.forward(self.adapter, torch.tensor([tokens]), cache=self._cache)
        self._cache = out.cache
        self._cached_ids.extend(tokens)
        return out.logits[:, -1]

    # ------------------------------------------------------------------ images
    def _image_key(self, image: ImageRef) -> str:
        """Decode, check and transform ``image``, encode it unless already known; returns its content key."""
        pixels = self.chat_model.transform(image)
        key = hashlib.sha256(pixels.numpy().tobytes()).hexdigest()[:32]
        if key not in self._latents:
            self._latents[key] = self.chat_model.encode(pixels)
        return key


def _describe(image: ImageRef) -> str:
    return str(image) if isinstance(image, (str, Path)) else "<in-memory image>"
