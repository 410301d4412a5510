"""Conversations between their turns: the caches they keep, bounded together.

A conversation waiting for its next message holds its session's KV cache, its images' features and what the model
derived from them (Flamingo's projected keys/values), so the next turn prefills only what is new. The server keeps
those for two kinds of clients, under one bound:

- **API conversations.** An OpenAI-style client sends the whole conversation at every turn. When a request's answer
  ends, its session is parked under the content of the conversation it now holds (every turn's text, its images'
  bytes and the answer as sent, and the served model's name; :func:`conversation_key`); a later request whose history
  is exactly that (the client sends the answer back, text unchanged up to surrounding whitespace) takes the session
  and goes on from it: only its new message is encoded and prefilled. A conversation edited anywhere, another model,
  or one evicted simply misses (a fresh session).
- **Browser tabs.** Each tab owns its session; between its turns the session is parked under :func:`tab_key` (by
  weak reference: a tab gradio frees leaves), so its cache counts against the bound and may be dropped.

What stays valid of a cache is still decided by the session (``ConversationCache.reuse``), so a key that matched
wrongly could cost time, never change an answer. A parked session is taken out while a turn uses it, so an eviction
never touches a running turn. Memory is bounded by the bytes the parked sessions hold (``max_bytes``,
``ChatSession.cached_bytes``): the least recently parked lose their cache first (``ChatSession.drop_cache``: an API
session is then forgotten; a tab keeps its history and its images' features - small beside a KV cache - and prefills
the history again at its next turn); 0 keeps no cache between turns.
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
    digest = hashlib.sha256()

    def field(kind: bytes, data: bytes) -> None:  # length-prefixed: no text can pass for another split
        digest.update(kind + len(data).to_bytes(8, "big") + data)

    field(b"model", model.encode())
    for text, images, answer in turns:
        field(b"turn", text.strip().encode())
        for image in images:
            field(b"image", image)
        field(b"answer", (answer or "").strip().encode())
    return digest.hexdigest()


def tab_key(session: ChatSession) -> str:
    """The key a browser tab's session is parked under (while the tab holds the session, its id is unique)."""
    return f"tab:{id(session)}"


class IdleConversations:
    """Sessions between their turns, by key (:func:`conversation_key` or :func:`tab_key`); thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes} must be >= 0 (0: keep no cache between turns)")
        self.max_bytes = max_bytes
        # key -> (the session, or a weak reference to one its owner - a tab - holds; its bytes when parked)
        self._parked: OrderedDict[str, tuple[ChatSession | weakref.ref[ChatSession], int]] = OrderedDict()
        # Reentrant: a tab's turn ended by the garbage collector (its generator finalised) may park while this
        # thread is parking - every pass below works on a snapshot and tolerates entries gone meanwhile.
        self._lock = threading.RLock()
        self.hits = 0  # API requests that continued a kept conversation
        self.evicted = 0

    def take(self, key: str) -> ChatSession | None:
        """The session parked under ``key``, taken out while its turn runs (None: none)."""
        with self._lock:
            entry, _ = self._parked.pop(key, (None, 0))
            session = _session(entry)
            self.hits += session is not None and not isinstance(entry, weakref.ref)
            return session

    def park(self, key: str, session: ChatSession, *, weak: bool = False) -> None:
        """Keep ``session`` under ``key`` until its next turn takes it (``weak``: its owner keeps it - a browser tab -
        and when the owner lets it go, so does this). While the sessions parked hold more than the bound, the least
        recently parked lose their caches; a session over the whole bound loses its cache at once.

        Each session's size is taken when it is parked (one pass over its tensors, not over every parked session's):
        a tab whose closed answer's row was still in the batch grows by that answer until its next turn parks it."""
        with self._lock:
            self._parked.pop(key, None)
            self._live()  # tabs gone leave first
            mine = session.cached_bytes
            if mine > self.max_bytes:
                session.drop_cache()  # under the lock: a tab's next turn takes it out first, or finds it dropped
                self.evicted += 1
                return
            self._parked[key] = (weakref.ref(session) if weak else session, mine)
            total = sum(size for _, size in self._parked.values())
            for oldest in list(self._parked):
                if total <= self.max_bytes:
                    break
                entry, size = self._parked.pop(oldest, (None, 0))
                total -= size
                if (victim := _session(entry)) is not None:
                    victim.drop_cache()
                    self.evicted += 1

    @property
    def bytes(self) -> int:
        """Memory the parked sessions hold now."""
        with self._lock:
            return sum(session.cached_bytes for _, session in self._live())

    def __len__(self) -> int:
        with self._lock:
            return len(self._live())

    def _live(self) -> list[tuple[str, ChatSession]]:
        """The parked sessions, least recently parked first; entries of tabs gone are removed."""
        live = []
        for key, (entry, _) in list(self._parked.items()):
            session = _session(entry)
            if session is None:
                self._parked.pop(key, None)
            else:
                live.append((key, session))
        return live


def _session(entry: ChatSession | weakref.ref[ChatSession] | None) -> ChatSession | None:
    return entry() if isinstance(entry, weakref.ref) else entry
