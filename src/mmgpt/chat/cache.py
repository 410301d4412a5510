"""ConversationCache: what a chat session has run, and how much of it the next turn can reuse.

Each turn renders the whole conversation with the model's prompt style, then runs only the tokens the cache cannot
vouch for. Which cached positions stay valid is the model's answer (``VisionLanguageModel.reusable_prefix``: a
position's state depends on the tokens and images before it - and, for Flamingo, on its media mask), and on the
LoRA adapter, which the cache records. The result equals a full recomputation (tested for every model kind).

Legend: T tokens, m images, n features per image, d feature width, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from mmgpt.chat.model import ChatModel
from mmgpt.model.cache import Media, ModelCache


class ConversationCache:
    """The KV cache of one conversation: the ids and images (content keys) it holds, the adapter it was made
    with, and the media of the images (their features stacked; what the model derives from them kept)."""

    def __init__(self, chat_model: ChatModel) -> None:
        self.chat_model = chat_model
        self.cache: ModelCache | None = None
        self.ids: list[int] = []
        self.images: tuple[str, ...] = ()
        self.adapter: str | None = None
        self._media: tuple[tuple[str, ...], Media | None] = ((), None)
        self._pending_media: Media | None = None

    def tensors(self) -> Iterator[torch.Tensor | None]:
        """Every tensor it holds: the KV cache's and its images' media (for ``storage_bytes``)."""
        if self.cache is not None:
            yield from self.cache.tensors()
        for media in (self._media[1], self._pending_media):
            if media is not None:
                yield from media.tensors()

    def clear(self) -> None:
        self.cache, self.ids, self.images = None, [], ()

    def media_for(self, images: tuple[str, ...], features: dict[str, torch.Tensor]) -> Media | None:
        """The media of ``images`` (keys into ``features``: [n, d] each); the same images keep the same Media, so
        what the model derived from them (Flamingo's projected keys/values) is reused."""
        if self._media[0] != images:
            self._media = (images, Media.of_row([features[key] for key in images]))
        return self._media[1]

    def reuse(self, adapter: str | None, ids: Sequence[int], images: tuple[str, ...], media: Media | None) -> int:
        """Cut the cache back to what stays valid for ``ids`` (and ``images``, ``adapter``); returns how many
        positions it keeps. What the cache then holds runs on, with ``media``, in :meth:`run`."""
        model = self.chat_model.model
        keep = 0
        if self.cache is not None and self.adapter == adapter:
            keep = model.reusable_prefix(self.ids, self.images, ids, images)
        keep = min(keep, len(ids) - 1)  # the last prompt token runs again: its logits start the answer
        if keep == 0:
            self.cache, self.ids = None, []
        else:
            seen = sum(1 for t in ids[:keep] if t == model.special.image)
            self.cache = self.cache.crop(keep, placeholders_seen=torch.tensor([seen]), media=media)
            self.ids = list(ids[:keep])
        self.images, self.adapter, self._pending_media = images, adapter, media
        return keep

    def run(self, ids: Sequence[int]) -> torch.Tensor:
        """Run prompt ids on the cache (the media of :meth:`reuse` join with the first); returns the logits [1, V]
        of the last. A long prompt may run in several calls (chunked prefill)."""
        tokens = torch.tensor([list(ids)])
        if self.cache is None:  # from position 0; a cropped cache carries the media (new images included)
            self.cache = ModelCache.start(self._pending_media, device=self.chat_model.model.device)
        out = self.chat_model.forward(self.adapter, tokens, cache=self.cache)
        self.cache = out.cache
        self.ids.extend(tokens[0].tolist())
        return out.logits[:, -1]

    def prefilled(self, ids: Sequence[int], cache: ModelCache) -> None:
        """The prompt ``ids`` ran elsewhere - in one forward with other conversations' (the scheduler's) - from
        nothing cached (after :meth:`reuse` kept nothing), leaving ``cache``."""
        self.cache, self.ids = cache, list(ids)

    def prefill(
        self, adapter: str | None, ids: Sequence[int], images: tuple[str, ...], media: Media | None
    ) -> tuple[torch.Tensor, int]:
        """Bring the cache to ``ids`` reusing what stays valid; returns (logits [1, V] of the last token, reused)."""
        keep = self.reuse(adapter, ids, images, media)
        return self.run(ids[keep:]), keep

    def step(self, tokens: torch.Tensor, _mask: torch.Tensor | None = None) -> torch.Tensor:
        """Run generated tokens [1, k] on the cache; returns the logits [1, V] of the last."""
        out = self.chat_model.forward(self.adapter, tokens, cache=self.cache)
        self.cache = out.cache
        self.ids.extend(tokens[0].tolist())
        return out.logits[:, -1]
