"""Safety limits of the server and the admission gate that bounds concurrent and queued requests.

Defaults are safe for a server reachable by others: images come inline (data URLs) unless http(s) fetching is
switched on, ``file:`` URLs are never read, bodies, images and pixels are bounded, and a full queue answers at
once (429) instead of piling up work. The generations admitted run as rows of one batch (continuous batching,
``mmgpt.chat.scheduler``) bounded in rows and cached tokens, or - ``batching=False`` - take turns on the model.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

from mmgpt.serve.errors import APIError

TURN_TAKING_ACTIVE = 4  # max_active's default without batching: they take turns, more only adds latency


@dataclass(frozen=True)
class ServeLimits:
    max_request_bytes: int = 20 * 2**20  # a JSON body with base64 images
    max_image_bytes: int = 10 * 2**20  # one encoded image
    max_image_pixels: int = 4096 * 4096  # decoded size; refused before decoding (decompression bombs)
    max_images: int = 8  # per request (all messages together)
    allow_image_urls: bool = False  # fetch http(s) image URLs; file: URLs are refused regardless
    image_url_timeout_s: float = 10.0
    # Continuous batching (False: generations take turns on the model one step each, under its lock).
    batching: bool = True
    max_rows: int = 8  # rows decoded together in one step
    max_batch_tokens: int = 32_768  # rows x cached positions of the batch (the KV cache's size); more waits
    prefill_chunk: int = 256  # prompt tokens prefilled between two decode steps (a long prompt is chunked)
    # Generations admitted at once (default: max_rows with batching - one row each - else 4), and requests queued
    # behind them (default: 2 x max_active); one more gets 429.
    max_active: int | None = None
    max_waiting: int | None = None
    queue_timeout_s: float = 60.0  # a request queued longer gets 503
    default_max_tokens: int = 256
    idle_cache_bytes: int = 4 * 2**30  # what conversations keep between their turns, API and web (0: nothing)

    def __post_init__(self) -> None:
        if self.max_active is None:
            object.__setattr__(self, "max_active", self.max_rows if self.batching else TURN_TAKING_ACTIVE)
        if self.max_waiting is None:
            object.__setattr__(self, "max_waiting", 2 * self.max_active)
        names = ("max_request_bytes", "max_image_bytes", "max_image_pixels", "max_images", "max_active", "max_rows")
        for name in (*names, "max_batch_tokens", "prefill_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.idle_cache_bytes < 0:
            raise ValueError(f"idle_cache_bytes={self.idle_cache_bytes} must be >= 0 (0: no cache between turns)")
        if self.max_waiting < 0 or self.queue_timeout_s <= 0:
            raise ValueError(f"max_waiting={self.max_waiting} must be >= 0 and queue_timeout_s > 0")

    @property
    def batch_limits(self) -> dict[str, int]:
        """The scheduler's limits (``mmgpt.chat.start_batching``)."""
        return {"max_rows": self.max_rows, "max_tokens": self.max_batch_tokens, "prefill_chunk": self.prefill_chunk}


class Admission:
    """At most ``max_active`` requests run; up to ``max_waiting`` more wait their turn (FIFO, as asyncio's
    semaphore wakes waiters in order); beyond that a request is refused at once with 429, and one that waited
    ``queue_timeout_s`` gets 503. ``release`` must follow every successful ``acquire`` (streams release when
    they end, including when the client disconnects)."""

    def __init__(self, limits: ServeLimits) -> None:
        self.limits = limits
        self._slots = asyncio.Semaphore(limits.max_active)
        self.active = 0
        self.waiting = 0
        self.refused: collections.Counter[str] = collections.Counter()  # by error code (server_busy, queue_timeout)

    async def acquire(self) -> None:
        if self.active >= self.limits.max_active and self.waiting >= self.limits.max_waiting:
            self.refused["server_busy"] += 1
            raise APIError(
                429,
                f"the server is busy ({self.active} requests running, {self.waiting} waiting); retry shortly",
                type="rate_limit_error",
                code="server_busy",
            )
        self.waiting += 1
        try:
            await asyncio.wait_for(self._slots.acquire(), self.limits.queue_timeout_s)
        except TimeoutError:
            self.refused["queue_timeout"] += 1
            raise APIError(
                503,
                f"no generation slot freed within {self.limits.queue_timeout_s:.0f} s; retry later",
                type="server_error",
                code="queue_timeout",
            ) from None
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()
