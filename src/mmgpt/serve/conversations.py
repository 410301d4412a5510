"""Conversations the API keeps between requests.

An OpenAI-style client sends the whole conversation at every turn. Without memory between requests each turn
encodes every image again and prefills the whole history. So when a request's answer ends, its session - its KV
cache and its images' features - is parked under the content of the conversation it now holds (every turn's text,
its images' bytes and the answer as sent, and the served model's name); a later request whose history is exactly
that (the client sends the answer back, text unchanged up to surrounding whitespace) takes the session and goes on
from it: only its new message is encoded and prefilled. What stays valid of the cache is still decided by the
session (``ConversationCache.reuse``), so a key that matched wrongly could cost time, never change an answer.

A conversation edited anywhere, another model, or one evicted simply misses (a fresh session). A parked session is
taken out while a request uses it, so two requests never share one. Memory is bounded by the positions the parked
caches hold (``max_tokens``; the least recently parked go first); 0 keeps nothing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

from mmgpt.chat import ChatSession


def image_digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def conversation_key(model: str, turns: Sequence[tuple[str, Sequence[bytes], str | None]]) -> str:
    """The key of a conversation: the served model's name and, per turn, (text, its images' :func:`image_digest`,
    answer)."""
    digest = hashlib.sha256(model.encode())
    for text, images, answer in turns:
        digest.update(b"\x00turn\x00" + text.strip().encode())
        for image in images:
            digest.update(b"\x00image\x00" + image)
        digest.update(b"\x00answer\x00" + (answer or "").strip().encode())
    return digest.hexdigest()


class ParkedConversations:
    """Sessions parked between requests, by :func:`conversation_key`; thread-safe."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens} must be >= 0 (0: keep no conversation)")
        self.max_tokens = max_tokens
        self._parked: OrderedDict[str, ChatSession] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def take(self, key: str) -> ChatSession | None:
        """The session parked under ``key``, taken out (None: none)."""
        with self._lock:
            session = self._parked.pop(key, None)
            self.hits += session is not None
            return session

    def park(self, key: str, session: ChatSession) -> None:
        """Keep ``session`` under ``key``; the least recently parked leave while the total is over the bound."""
        if session.cached_tokens > self.max_tokens:
            return
        with self._lock:
            self._parked.pop(key, None)
            self._parked[key] = session
            while self.tokens > self.max_tokens:
                self._parked.popitem(last=False)

    @property
    def tokens(self) -> int:
        """Positions the parked caches hold."""
        return sum(session.cached_tokens for session in self._parked.values())

    def __len__(self) -> int:
        return len(self._parked)
