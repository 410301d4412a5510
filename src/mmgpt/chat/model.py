"""ChatModel: a loaded model shared by every chat session, with its named adapters and the lock around it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.data.images import DEFAULT_MAX_PIXELS, ImageTransform
from mmgpt.model.contract import Media, ModelCache, ModelOutput, VisionLanguageModel
from mmgpt.model.lora import adapter_names, lora_layers, row_adapters, select_adapter

T = TypeVar("T")
DEFAULT_CONTEXT = 2048  # when the LM's config names no maximum


class Batching(Protocol):
    """What a :class:`ChatModel` and its sessions ask of the scheduler batching it (``chat/scheduler.py``)."""

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` run where the model computes, between two steps."""

    def stream(self, job: Any) -> Iterator[Any]:
        """A turn's events as it decodes in the batch."""

    def close(self) -> None: ...


@dataclass
class ChatModel:
    """A loaded model shared by every session: the model, its tokenizer and image transform, and the lock that
    serialises model calls. The active LoRA adapter is state on the model's layers, so selecting it and running
    the model happen under the lock, one step at a time: concurrent sessions interleave, never mix adapters."""

    model: VisionLanguageModel
    tokenizer: PreTrainedTokenizerBase
    transform: ImageTransform
    name: str = "mmgpt"
    max_context: int = DEFAULT_CONTEXT
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # When set, every session's turns decode together in one batch (continuous batching: chat/scheduler.py's
    # start_batching sets it, stop_batching clears it).
    scheduler: Batching | None = field(default=None, repr=False)
    _layers: list = field(default_factory=list, repr=False)
    _active: str | None = field(default=None, repr=False)

    @classmethod
    def wrap(
        cls,
        model: VisionLanguageModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str = "mmgpt",
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ChatModel:
        transform = model.image_transform(max_pixels=max_image_pixels)
        chat = cls(model.eval(), tokenizer, transform, name=name)
        chat.max_context = int(model.max_context or DEFAULT_CONTEXT)
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
        cache: ModelCache | None = None,
        media: Media | None = None,
    ) -> ModelOutput:
        """One model call with ``adapter`` active: input_ids [1, T] -> logits [1, T, V] and the new cache."""
        with self.lock:
            if self._layers and adapter != self._active:
                select_adapter(self.model, adapter, self._layers)
                self._active = adapter
            return self.model(input_ids.to(self.model.device), media=media, cache=cache, use_cache=True)

    @torch.no_grad()
    def forward_rows(
        self,
        adapters: list[str | None],
        input_ids: torch.Tensor,
        cache: ModelCache | None = None,
        *,
        media: Media | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """One call for a batch whose row i has adapter ``adapters[i]`` (the scheduler's): a decode step, input_ids
        [b, 1] continuing ``cache``; or new prompts [b, T], left-padded as ``attention_mask`` says, with ``media``
        -> logits [b, T, V] and the new cache."""
        input_ids = input_ids.to(self.model.device)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
        with self.lock, row_adapters(self.model, adapters):
            return self.model(input_ids, media=media, attention_mask=mask, cache=cache, use_cache=True)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [3, H, W] -> the image's features [n, d]. Outside the lock (encoders carry no adapter); with
        batching, on the scheduler's thread between two steps."""
        if self.scheduler is not None:
            return self.scheduler.call(lambda: self._encode(pixels))
        return self._encode(pixels)

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embed_images(pixels[None].to(self.model.device))[0]

    def compute(self, fn: Callable[[], T]) -> T:
        """``fn()`` - tensor work beside the model's (transforming an image, stacking features) - where the model
        computes. With batching on a CPU that is the scheduler's thread, between two steps: when one thread runs
        every tensor operation, OpenMP's workers keep spinning between operations instead of sleeping (libgomp
        throttles spinning once its threads outnumber the cores), which made every step ~1.7x faster on a 2-core
        machine (bench/serve.py). Elsewhere, here."""
        if self.scheduler is None or self.model.device.type != "cpu":
            return fn()
        return self.scheduler.call(fn)
