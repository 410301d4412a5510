"""Conversations between their turns: the KV caches they keep, bounded together.

A conversation waiting for its next message holds its session's KV cache (and its images' features), so the next
turn prefills only what is new. The server keeps those caches for two kinds of clients, under one bound:

- **API conversations.** An OpenAI-style client sends the whole conversation at every turn. When a request's answer
  ends, its session is parked under the content of the conversation it now holds (every turn's text, its images'
  bytes and the answer as sent, and the served model's name; :func:`conversation_key`); a later request whose history
  is exactly that (the client sends the answer back, text unchanged up to surrounding whitespace) takes the session
  and goes on from it: only its new message is encoded and prefilled. A conversation edited anywhere, another model,
  or one evicted simply misses (a fresh session).
- **Browser tabs.** Each tab owns its session; between its turns the session is parked under :func:`tab_key`, so its
  cache counts against the bound and may be dropped.

What stays valid of a cache is still decided by the session (``ConversationCache.reuse``), so a key that matched
wrongly could cost time, never change an answer. A parked session is taken out while a turn uses it, so an eviction
never touches a running turn. Memory is bounded by the positions the parked caches hold (``max_tokens``): the least
recently parked lose their cache first (``ChatSession.drop_cache``: an API session is then forgotten, a tab keeps its
history and prefills it again at its next turn); 0 keeps no cache between turns.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
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


def tab_key(session: ChatSession) -> str:
    """The key a browser tab's session is parked under (while the tab holds the session, its id is unique)."""
    return f"tab:{id(session)}"


class IdleConversations:
    """Sessions between their turns, by key (:func:`conversation_key` or :func:`tab_key`); thread-safe."""

    def __init__(self, max_tokens: int) -> None:
        if max_tokens < 0:
            raise ValueError(f"max_tokens={max_tokens} must be >= 0 (0: keep no cache between turns)")
        self.max_tokens = max_tokens
        # key -> the session, or a weak reference to one its owner (a tab) holds
        self._parked: OrderedDict[str, ChatSession | weakref.ref[ChatSession]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.evicted = 0

    def take(self, key: str) -> ChatSession | None:
        """The session parked under ``key``, taken out while its turn runs (None: none)."""
        with self._lock:
            session = _session(self._parked.pop(key, None))
            self.hits += session is not None
            return session

    def park(self, key: str, session: ChatSession, *, weak: bool = False) -> None:
        """Keep ``session`` under ``key`` until its next turn takes it (``weak``: its owner keeps it - a browser tab -
        and when the owner lets it go, so does this). While the caches parked hold more than the bound, the least
        recently parked lose theirs; a cache over the whole bound is dropped at once."""
        with self._lock:
            self._parked.pop(key, None)
            if session.cached_tokens > self.max_tokens:
                session.drop_cache()
                self.evicted += 1
                return
            self._parked[key] = weakref.ref(session) if weak else session
            for gone in [k for k, entry in self._parked.items() if _session(entry) is None]:
                del self._parked[gone]
            while self._tokens() > self.max_tokens:
                _, oldest = self._parked.popitem(last=False)
                if (evicted := _session(oldest)) is not None:
                    evicted.drop_cache()
                    self.evicted += 1

    @property
    def tokens(self) -> int:
        """Positions the parked caches hold."""
        with self._lock:
            return self._tokens()

    def _tokens(self) -> int:
        return sum(session.cached_tokens for session in map(_session, self._parked.values()) if session is not None)

    def __len__(self) -> int:
        return len(self._parked)


def _session(entry: ChatSession | weakref.ref[ChatSession] | None) -> ChatSession | None:
    return entry() if isinstance(entry, weakref.ref) else entry
