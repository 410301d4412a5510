"""COCO Captions in either of its two published layouts, turned into instructions (paper Table 3).

- official ``captions_train2017.json``: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "id", "caption"}]}``; one conversation per annotation, image ``{file_name}`` under the image root (point
  ``images:`` at ``train2017/``);
- Karpathy split (LAVIS/BLIP): ``[{"image": "train2014/COCO_train2014_....jpg", "caption", "image_id"}]``,
  where val/test rows carry five captions; one conversation per caption, image under the COCO root.

The instruction is one of the paper's caption instructions, fixed per caption.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from mmgpt.data.conversation import Conversation, single_turn
from mmgpt.data.sources.base import RowContext, RowError, SourceFormat, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles, Row, SourceError
from mmgpt.data.templates import CAPTION_INSTRUCTIONS


@dataclass(frozen=True)
class CocoCaptionOptions:
    instructions: list[str] = field(default_factory=lambda: list(CAPTION_INSTRUCTIONS))


class _Annotation(NamedTuple):
    """A row of the official layout, with the file name its ``image_id`` points to (None: unknown id)."""

    annotation: Any
    file_name: str | None


def _official(path: Path, files: JsonFiles) -> Iterator[Row]:
    data = files.load(path)
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise SourceError(f"{path}: expected {{'images': [...], 'annotations': [...]}} (COCO captions_*.json)")
    file_names: dict[Any, str] = {}
    for i, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise SourceError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        file_names[image["id"]] = image["file_name"]
    for i, annotation in enumerate(annotations):
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        yield Row(i, f"annotations[{i}]", _Annotation(annotation, file_names.get(image_id)))


def rows(path: Path, options: CocoCaptionOptions, files: JsonFiles, resolve: Callable[[str], Path]) -> Iterator[Row]:
    first = files.first_char(path)
    if first == "{":
        return _official(path, files)
    if first == "[":
        return files.array(path)
    raise SourceError(f"{path}: expected a COCO captions object or a Karpathy-split list")


def _conversation(caption: str, image: Path, row: Row, k: int, options: CocoCaptionOptions, ctx: RowContext, id: str):
    question = ctx.pick(options.instructions, row, salt=str(k))
    return single_turn(question, caption.strip(), images=[image], source=ctx.source, id=id)


def convert(row: Row, options: CocoCaptionOptions, ctx: RowContext) -> list[Conversation]:
    if isinstance(row.value, _Annotation):
        annotation, file_name = row.value
        image_id = require(annotation, "image_id", (int, str))
        caption = text_field(annotation, "caption")
        if file_name is None:
            raise RowError("image_id", f"{image_id!r} is not in the file's 'images' list")
        id = str(annotation.get("id", row.index))
        return [_conversation(caption, ctx.image(file_name), row, 0, options, ctx, id)]

    image = ctx.image(require(row.value, "image", str))
    captions = require(row.value, "caption", (str, list))
    if isinstance(captions, str):
        captions = [captions]
    if not captions:
        raise RowError("caption", "empty list")
    for k, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise RowError(f"caption[{k}]", "expected a non-empty string")
    base = str(row.value.get("image_id", row.index))
    return [_conversation(c, image, row, k, options, ctx, f"{base}:{k}") for k, c in enumerate(captions)]


FORMAT = SourceFormat(
    name="coco_captions",
    summary="COCO captions: official captions_*.json or the Karpathy-split list",
    options_type=CocoCaptionOptions,
    rows=rows,
    convert=convert,
)
