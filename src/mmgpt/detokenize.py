"""Incremental detokenisation: a generated row's text as its tokens arrive, and the part of it that is final -
what streaming shows (generation, chat, the API)."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase


class RowText:
    """Decoded text of one row, with the part that is safe to show (no half character, no partial stop string)
    and, for streaming, the part already shown.

    Decoding is incremental over a short window (the tokens since the last settled piece, plus the piece before them
    for context, as text-generation servers do): text only grows once settled, so what was shown stays a prefix of
    the text - also when byte tokens form no valid UTF-8 and a decoder would re-render a whole run."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_strings: Sequence[str]):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.text = ""
        self.stopped = False
        self.shown = ""
        self._settled = ""
        self._prefix_offset = 0
        self._read_offset = 0

    def update(self, token_ids: list[int]) -> None:
        """The row's tokens so far (the same list, grown by appending)."""
        window = token_ids[self._prefix_offset :]
        before = self._decode(token_ids[self._prefix_offset : self._read_offset])
        after = self._decode(window)
        pending = after[len(before) :] if after.startswith(before) else after
        if pending and not pending.endswith("\ufffd"):
            self._settled += pending
            self._prefix_offset, self._read_offset = self._read_offset, len(token_ids)
            pending = ""
        text = self._settled + pending
        for s in self.stop_strings:
            at = text.find(s)
            if at >= 0:
                text, self.stopped = text[:at], True
        self.text = text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if ids else ""

    def safe(self) -> str:
        """The prefix that can be shown now: it will not change when more tokens arrive."""
        if self.stopped:
            return self.text
        text = self.text.rstrip("\ufffd")  # an incomplete multi-byte character
        hold = 0
        for s in self.stop_strings:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return text[: len(text) - hold]

    def delta(self) -> str:
        """Text that became final since the last call ("" when none); the streamed pieces join to the text."""
        safe = self.safe()
        if len(safe) > len(self.shown) and safe.startswith(self.shown):
            new, self.shown = safe[len(self.shown) :], safe
            return new
        return ""

    def remainder(self) -> str:
        """After the last token: what is left to show (a held-back suffix that turned out not to be a stop)."""
        if self.text != self.shown and self.text.startswith(self.shown):
            new, self.shown = self.text[len(self.shown) :], self.text
            return new
        return ""
