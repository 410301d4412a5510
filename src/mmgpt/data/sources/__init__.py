"""Source adapters, one module per published dataset format (datasets.md), and the registry of them.

Each module turns a row of its format into :class:`~mmgpt.data.conversation.Conversation` objects and
nothing else; ``read.py`` drives them and counts what was skipped.
"""

from __future__ import annotations

from mmgpt.data.sources import (
    alpaca,
    aokvqa,
    baize,
    coco_captions,
    dolly,
    gqa,
    interleaved,
    llava,
    minigpt4,
    mplug_owl,
    ocr_vqa,
    vqa,
)
from mmgpt.data.sources.base import MalformedRowError, RowError, SourceFormat
from mmgpt.data.sources.jsonio import SourceError
from mmgpt.data.sources.read import SourceStats, read_source

FORMATS: dict[str, SourceFormat] = {
    module.FORMAT.name: module.FORMAT
    for module in (
        llava,
        minigpt4,
        mplug_owl,
        aokvqa,
        coco_captions,
        ocr_vqa,
        vqa,
        gqa,
        dolly,
        alpaca,
        baize,
        interleaved,
    )
}

__all__ = ["FORMATS", "MalformedRowError", "RowError", "SourceError", "SourceFormat", "SourceStats", "read_source"]
