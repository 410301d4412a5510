"""Document: a pretraining sample in OpenFlamingo's interleaved form - text in which each image stands as one
``<image>`` marker and each image's text ends with ``<|endofchunk|>`` - trained on every text token.

Instruction data is a :class:`~mmgpt.data.conversation.Conversation` rendered with the template, trained on
responses only; pretraining data (captions, interleaved image-text, plain text) has no template and no roles.
Both tokenise through ``data/tokenize.py``, which treats a Document as segments: text pieces (trained; one EOS
closes the document) and image placeholders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mmgpt.data.conversation import ImageRef
from mmgpt.data.templates import Segment
from mmgpt.tokens import IMAGE


@dataclass(frozen=True)
class Document:
    text: str
    images: Sequence[ImageRef] = field(default_factory=tuple)
    source: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        markers = self.text.count(IMAGE)
        if markers != len(self.images):
            raise ValueError(
                f"document {self.id or '(no id)'}: {markers} {IMAGE} markers for {len(self.images)} images; "
                f"write one {IMAGE} where each image stands"
            )

    def segments(self) -> list[Segment]:
        """Text pieces and image placeholders in order; only the last text piece is followed by EOS."""
        segments: list[Segment] = []
        for i, piece in enumerate(self.text.split(IMAGE)):
            if i:
                segments.append(Segment(IMAGE))
            if piece:
                segments.append(Segment(piece, response=True, eos=False))
        last = max((i for i, s in enumerate(segments) if s.response), default=None)
        if last is None:
            raise ValueError(f"document {self.id or '(no id)'} has no text to train on")
        segments[last] = Segment(segments[last].text, response=True, eos=True)
        return segments
