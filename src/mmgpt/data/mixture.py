"""Mixing sources: seeded caps, a seeded order per epoch, rank sharding, and positions that resume exactly.

- :func:`build_pool` concatenates sources after capping each to a seeded random subset (the paper keeps
  5000 A-OKVQA, 512 COCO, 512 OCR-VQA, and all of the rest).
- :class:`ShardedStream` walks a pool endlessly, one seeded permutation per epoch; rank r of w takes
  positions r, r+w, r+2w... of each permutation, and every rank takes the same number (the remainder of
  an epoch is left out), so ranks never overlap and stay in step. Its position (epoch, index) is saved with a
  checkpoint; restoring it continues with exactly the next item, RNG included (the order is a pure function
  of the seed and the epoch).
- :func:`takes_language` spreads language-only batches over steps at a given ratio (1.0: every step).

Every stream is endless on purpose: drops (fully masked samples, broken images) differ between ranks, so a
trainer counts steps instead of waiting for a rank's data to run out, which would hang distributed training.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def cap_indices(size: int, *, cap: int | None, seed: int, name: str) -> list[int]:
    """Indices (ascending) of a seeded random subset of ``cap`` items out of ``size``; all when uncapped."""
    if cap is None or cap >= size:
        return list(range(size))
    # A string seed is hashed with SHA-512 by `random`: stable across runs, processes and PYTHONHASHSEED.
    return sorted(random.Random(f"{seed}:cap:{name}").sample(range(size), cap))


@dataclass(frozen=True)
class Pool(Generic[T]):
    """The items of one stream (after caps) and how many each source contributed."""

    items: list[T]
    counts: dict[str, int]

    def proportions(self) -> dict[str, float]:
        total = sum(self.counts.values())
        return {name: (count / total if total else 0.0) for name, count in self.counts.items()}


def build_pool(sources: Sequence[tuple[str, Sequence[T], int | None]], *, seed: int) -> Pool[T]:
    """``sources``: (name, items, cap) triples, in configuration order."""
    items: list[T] = []
    counts: dict[str, int] = {}
    for name, source_items, cap in sources:
        kept = [source_items[i] for i in cap_indices(len(source_items), cap=cap, seed=seed, name=name)]
        items.extend(kept)
        counts[name] = len(kept)
    return Pool(items, counts)


class ShardedStream(Generic[T]):
    """Endless iteration over ``items`` for one rank; see the module docstring.

    The position is the next item to yield, updated before each yield: ``state_dict()`` taken after consuming
    an item resumes with the one after it.
    """

    def __init__(self, items: Sequence[T], *, seed: int, name: str = "", rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if len(items) < world_size:
            raise ValueError(
                f"stream {name!r} has {len(items)} items for {world_size} ranks: every rank needs at least one"
            )
        self.items, self.seed, self.name = items, seed, name
        self.rank, self.world_size = rank, world_size
        self.shard_size = len(items) // world_size
        self.epoch, self.index = 0, 0
        self._order_epoch: int | None = None
        self._order: list[int] = []

    def order(self, epoch: int) -> list[int]:
        """This rank's item indices for ``epoch``."""
        if self._order_epoch != epoch:
            permutation = list(range(len(self.items)))
            random.Random(f"{self.seed}:order:{self.name}:{epoch}").shuffle(permutation)
            self._order = permutation[self.rank : self.shard_size * self.world_size : self.world_size]
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> Iterator[T]:
        while True:
            order = self.order(self.epoch)
            item = self.items[order[self.index]]
            self.index += 1
            if self.index == self.shard_size:
                self.epoch, self.index = self.epoch + 1, 0
            yield item

    def _fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed, "size": len(self.items), "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = {key: state.get(key) for key in self._fingerprint()}
        if saved != self._fingerprint():
            raise ValueError(
                f"cannot resume stream {self.name!r}: it was saved for {saved} but is now {self._fingerprint()}; "
                "resume with the same data, caps, seed and number of ranks"
            )
        if not 0 <= state["index"] < self.shard_size or state["epoch"] < 0:
            raise ValueError(f"position {state['epoch']}:{state['index']} is outside stream {self.name!r}")
        self.epoch, self.index = state["epoch"], state["index"]


def takes_language(step: int, ratio: float) -> bool:
    """Whether step ``step`` (from 0) also takes a language-only batch; exactly ``ratio`` of the steps do,
    evenly spread (0.5: steps 1, 3, 5...; 1.0: all)."""
    r = Fraction(ratio).limit_denominator(1000)
    return math.floor((step + 1) * r) > math.floor(step * r)
