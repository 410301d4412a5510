"""What a forward looks at and what it leaves to continue from: Media (encoded images) and ModelCache (the LM's KV
cache with its running counts) - for every model kind of the contract, and for batches whose rows come and go. The
KV cache appends in place (GrowingCache): a decode step writes its positions instead of copying the cache.

Legend: b batch, S tokens so far, m images, n features per image, d feature width, h heads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """One layer's self-attention KV cache that appends in place: ``keys``/``values`` [b, h, S, d] are views of
    buffers with room for more positions - an eighth of those in use, at least ``MIN_ROOM`` - so a decode step writes
    its one position instead of copying the whole cache (transformers' DynamicLayer concatenates: with 8 rows of 200
    positions that copy was most of a step on a CPU). When the room is used up the buffer grows the same way: one
    copy of the cache per S/8 steps (about 8 positions copied a step, where concatenating copies all S). Unused: at
    most an eighth of the positions (or ``MIN_ROOM``), and - after rows leave a batch - fewer than half the rows.

    Setting ``keys``/``values`` to other tensors (a selection of rows, a crop, another cache's views) is honoured:
    the next update copies them into a buffer of this layer's own, so a cache never writes into memory another
    holds. A view of its own buffer's first rows (``ModelCache.without_rows``) keeps appending in place."""

    MIN_ROOM = 16

    def __init__(self) -> None:
        super().__init__()
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        """Set up from the first states (what transformers' layers record; its signature varies by version)."""
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty(0)
        self.values = (value_states if value_states is not None else key_states).new_empty(0)
        self.is_initialized = True

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, length: int) -> GrowingLayer:
        """A layer that owns the buffers ``keys``/``values`` [b, h, capacity, d], their first ``length`` positions
        in use (the caller writes them and keeps no other reference)."""
        layer = cls()
        layer.lazy_initialization(keys, values)
        layer.key_buffer, layer.value_buffer = keys, values
        layer.keys, layer.values = keys[:, :, :length], values[:, :, :length]
        return layer

    @classmethod
    def capacity(cls, length: int) -> int:
        """Positions to allocate for ``length`` in use: an eighth more, at least ``MIN_ROOM`` more."""
        return length + max(cls.MIN_ROOM, length // 8)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[2]
        if not self._appends_in_place(length + new):
            self._reserve(length + new, like=key_states, like_values=value_states)
        end = length + new
        self.key_buffer[: key_states.shape[0], :, length:end] = key_states
        self.value_buffer[: value_states.shape[0], :, length:end] = value_states
        rows = key_states.shape[0]
        self.keys, self.values = self.key_buffer[:rows, :, :end], self.value_buffer[:rows, :, :end]
        return self.keys, self.values

    def _appends_in_place(self, length: int) -> bool:
        """Whether ``keys``/``values`` are still the start of this layer's buffers, with room for ``length``."""
        if self.key_buffer is None or self.keys.dim() != 4 or length > self.key_buffer.shape[2]:
            return False
        return all(
            held.data_ptr() == buffer.data_ptr() and held.stride() == buffer.stride()
            for held, buffer in ((self.keys, self.key_buffer), (self.values, self.value_buffer))
        )

    def _reserve(self, length: int, *, like: torch.Tensor, like_values: torch.Tensor) -> None:
        """New buffers with room for ``length`` positions, the cached ones copied in."""
        size = self.capacity(length)
        rows, heads = like.shape[:2]
        self.key_buffer = like.new_empty((rows, heads, size, like.shape[3]))
        self.value_buffer = like_values.new_empty((rows, heads, size, like_values.shape[3]))
        held = self.get_seq_length()
        if held:
            self.key_buffer[:, :, :held] = self.keys
            self.value_buffer[:, :, :held] = self.values
        self.keys, self.values = self.key_buffer[:, :, :held], self.value_buffer[:, :, :held]


class GrowingCache(DynamicCache):
    """transformers' DynamicCache with :class:`GrowingLayer` layers (appending in place)."""

    def __init__(self, layers: Sequence[GrowingLayer] | None = None) -> None:
        if layers is None:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
        else:
            Cache.__init__(self, layers=list(layers))


def copy_kv(kv: DynamicCache, take: Callable[[torch.Tensor], torch.Tensor], *, room: bool = True) -> GrowingCache:
    """A cache of its own holding ``take(keys)``, ``take(values)`` of every layer of ``kv``: in buffers with room
    to grow, or (``room=False``) at exactly their size."""
    if kv.get_seq_length() == 0:
        return GrowingCache()
    if not room:

        def exact(layer: DynamicLayer) -> GrowingLayer:  # always a copy (never a view of kv's memory)
            keys, values = (take(t).clone(memory_format=torch.contiguous_format) for t in (layer.keys, layer.values))
            return GrowingLayer.holding(keys, values, keys.shape[2])

        return GrowingCache([exact(layer) for layer in kv.layers])
    copied = GrowingCache()
    for i, layer in enumerate(kv.layers):
        copied.update(take(layer.keys), take(layer.values), i)
    return copied


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the memory ``tensors`` hold: each storage once (the views of one buffer count as the buffer)."""
    storages: dict[tuple, int] = {}
    for tensor in tensors:
        if tensor is not None and not tensor.is_meta:  # a meta tensor holds no memory
            storage = tensor.untyped_storage()
            where = (storage.device, storage.data_ptr())
            storages[where] = max(storages.get(where, 0), storage.nbytes())
    return sum(storages.values())


@dataclass
class Media:
    """Encoded images of a batch: what one forward or one generation looks at.

    features [b, m, n, d] (rows with fewer images are zero-padded), counts [b]. ``derived`` holds what a fusion
    computes once per image during inference (Flamingo: each gated block's projected keys/values), so decoding
    never recomputes it.
    """

    features: torch.Tensor
    counts: torch.Tensor
    derived: dict = field(default_factory=dict, repr=False)

    @property
    def per_image(self) -> int:
        return self.features.shape[2]

    def tensors(self) -> Iterator[torch.Tensor]:
        """Every tensor it holds (for :func:`storage_bytes`)."""
        yield self.features
        yield self.counts
        for value in self.derived.values():
            yield from value

    @property
    def num_images(self) -> int:
        return self.features.shape[1]

    @classmethod
    def of_row(cls, features: Sequence[torch.Tensor]) -> Media | None:
        """One row's media from per-image features [n, d] (as :meth:`VisionLanguageModel.embed_images` gives)."""
        if not features:
            return None
        stacked = torch.stack(list(features))[None]
        return cls(stacked, torch.tensor([len(features)], device=stacked.device))

    def select(self, rows: torch.Tensor) -> Media:
        """The media of the given batch rows (e.g. to repeat a prompt for several samples)."""
        derived = {key: tuple(t[rows.to(t.device)] for t in value) for key, value in self.derived.items()}
        return Media(self.features[rows.to(self.features.device)], self.counts[rows.to(self.counts.device)], derived)

    @staticmethod
    def merge(parts: Sequence[Media | None], rows: Sequence[int], *, like: Media) -> Media:
        """One Media for the rows of several batches (``parts[i]`` holds ``rows[i]`` rows, None: no image), images
        zero-padded to the most of any row; ``like`` gives the feature shape. What a fusion derived per image
        (keys/values [b, h, m * n, d_head]) is kept when every part has it, padded the same way."""
        m = max((p.num_images for p in parts if p is not None), default=0)
        features, counts = [], []
        for part, b in zip(parts, rows, strict=True):
            if part is None:
                features.append(like.features.new_zeros(b, m, *like.features.shape[2:]))
                counts.append(like.counts.new_zeros(b))
            else:
                pad = m - part.num_images
                features.append(F.pad(part.features, (0, 0, 0, 0, 0, pad)))
                counts.append(part.counts)
        merged = Media(torch.cat(features), torch.cat(counts))
        if all(p is not None for p in parts):
            n = like.per_image
            for key in set.intersection(*(set(p.derived) for p in parts)):
                merged.derived[key] = tuple(
                    torch.cat([F.pad(p.derived[key][j], (0, 0, 0, (m - p.num_images) * n))
                               for p in parts])
                    for j in range(len(like.derived.get(key, parts[0].derived[key])))
                )  # fmt: skip
        return merged


@dataclass
class ModelCache:
    """What a later call needs to continue a sequence: the LM's KV cache, the media, and the running counts.

    kv: the HF cache of the LM's self-attention (a :class:`GrowingCache` when made here); media: the encoded images;
    placeholders_seen [b]: image positions consumed so far (an image is ``tokens_per_image`` of them);
    attention_mask [b, S]: 1 for real tokens.
    """

    kv: DynamicCache
    media: Media | None
    placeholders_seen: torch.Tensor
    attention_mask: torch.Tensor

    @classmethod
    def start(cls, media: Media | None, *, rows: int = 1, device: torch.device | str = "cpu") -> ModelCache:
        """An empty cache to run a sequence into piece by piece (chunked prefill): a continuation from position 0,
        so a first chunk need not hold every image's placeholders yet."""
        empty = torch.zeros(rows, 0, dtype=torch.long, device=device)
        return cls(GrowingCache(), media, torch.zeros(rows, dtype=torch.long, device=device), empty)

    @property
    def length(self) -> int:
        return self.attention_mask.shape[1]

    def tensors(self) -> Iterator[torch.Tensor | None]:
        """Every tensor it holds (for :func:`storage_bytes`): the KV cache's, the media's, the counts."""
        for layer in self.kv.layers:  # keys/values are views of a GrowingLayer's buffers: each counts as its buffer
            for name in ("keys", "values", "key_buffer", "value_buffer"):
                yield getattr(layer, name, None)
        if self.media is not None:
            yield from self.media.tensors()
        yield self.placeholders_seen
        yield self.attention_mask

    def select(self, rows: torch.Tensor) -> ModelCache:
        """Keep (or repeat) the given batch rows, e.g. to drop finished rows or sample several continuations."""
        kv = copy_kv(self.kv, lambda t: t[rows.to(t.device)])
        media = self.media.select(rows) if self.media is not None else None
        return ModelCache(kv, media, self.placeholders_seen[rows], self.attention_mask[rows])

    def without_rows(self, leaving: Sequence[int]) -> tuple[ModelCache, list[int]]:
        """The batch without rows ``leaving`` (continuous batching), copying no other row but the ones that move:
        each freed slot below the new size takes a row from the end (its keys/values copied in place: the batch owns
        them), then the batch is cut short - a view of its buffers while it uses more than half their rows, else a
        copy into buffers of its size (memory held for rows that left is given back). Also returns, for each new
        row, the old row it is."""
        n = self.rows - len(leaving)
        gone = set(leaving)
        free = [i for i in leaving if i < n]
        movers = [i for i in range(n, self.rows) if i not in gone]
        order = list(range(n))
        for slot, row in zip(free, movers, strict=True):
            order[slot] = row
        for layer in self.kv.layers:
            if layer.keys is None or not layer.keys.numel():
                continue
            for slot, row in zip(free, movers, strict=True):
                layer.keys[slot] = layer.keys[row]
                layer.values[slot] = layer.values[row]
            layer.keys, layer.values = layer.keys[:n], layer.values[:n]
        kv = self.kv
        held = getattr(kv.layers[0], "key_buffer", None) if kv.layers else None
        if held is not None and 2 * n <= held.shape[0]:
            kv = copy_kv(kv, lambda t: t)
        index = torch.tensor(order, device=self.attention_mask.device)
        media = self.media.select(index) if self.media is not None else None
        kept = ModelCache(kv, media, self.placeholders_seen[index], self.attention_mask[index])
        return kept.trim(), order

    @staticmethod
    def merge(caches: Sequence[ModelCache]) -> ModelCache:
        """One cache holding the rows of several, left-padded to the longest: the padding is masked out, and
        positions come from the mask, so every row continues exactly as it would alone (continuous batching)."""
        length = max(c.length for c in caches)
        rows = sum(c.rows for c in caches)
        layers = []
        for i in range(len(caches[0].kv.layers)):
            # Written once into one buffer with room to grow (no padded copies to concatenate): merging is a copy
            # of the batch.
            like = caches[0].kv.layers[i]
            width = like.keys.shape[2] + length - caches[0].length  # as each row's keys left-padded like its mask
            room = GrowingLayer.capacity(width)
            keys = like.keys.new_empty((rows, like.keys.shape[1], room, like.keys.shape[3]))
            values = like.values.new_empty((rows, like.values.shape[1], room, like.values.shape[3]))
            start = 0
            for c in caches:
                layer, pad, end = c.kv.layers[i], length - c.length, start + c.rows
                keys[start:end, :, :pad] = 0
                values[start:end, :, :pad] = 0
                keys[start:end, :, pad:width] = layer.keys
                values[start:end, :, pad:width] = layer.values
                start = end
            layers.append(GrowingLayer.holding(keys, values, width))
        kv = GrowingCache(layers)
        mask = torch.cat([F.pad(c.attention_mask, (length - c.length, 0)) for c in caches])
        seen = torch.cat([c.placeholders_seen for c in caches])
        media = None
        present = [c.media for c in caches if c.media is not None]
        if present:
            media = Media.merge([c.media for c in caches], [c.rows for c in caches], like=present[0])
        return ModelCache(kv, media, seen, mask)

    def trim(self) -> ModelCache:
        """Without the leading positions that are padding in every row (left when the longest rows leave)."""
        start = int(self.attention_mask.any(dim=0).int().argmax()) if bool(self.attention_mask.any()) else 0
        if start == 0:
            return self
        kv = copy_kv(self.kv, lambda t: t[:, :, start:])
        return ModelCache(kv, self.media, self.placeholders_seen, self.attention_mask[:, start:])

    @property
    def rows(self) -> int:
        return self.attention_mask.shape[0]

    def row(self, i: int) -> ModelCache:
        """Row ``i`` alone, its left padding dropped: the cache it would have had if it had run alone - at its
        exact size (a row leaving the batch is parked with its conversation until the next turn, which crops it)."""
        real = self.attention_mask[i].nonzero()
        start = int(real[0]) if real.numel() else self.length
        kv = copy_kv(self.kv, lambda t: t[i : i + 1, :, start:], room=False)
        media = self.media.select(torch.tensor([i])) if self.media is not None else None
        return ModelCache(kv, media, self.placeholders_seen[i : i + 1], self.attention_mask[i : i + 1, start:])

    def crop(self, length: int, *, placeholders_seen: torch.Tensor, media: Media | None) -> ModelCache:
        """The first ``length`` positions, continuing with ``media`` (e.g. a conversation that added an image);
        ``placeholders_seen`` [b] counts the image positions among those ``length``."""
        kv = copy_kv(self.kv, lambda t: t[:, :, :length])
        seen = placeholders_seen.to(self.placeholders_seen.device)
        return ModelCache(kv, media, seen, self.attention_mask[:, :length])


@dataclass
class ModelOutput:
    logits: torch.Tensor  # [b, T, V]
    cache: ModelCache | None
