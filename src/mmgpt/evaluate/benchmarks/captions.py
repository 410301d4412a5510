"""COCO and Flickr30K captioning: the readers of the published layouts and the result file.

Three layouts, told apart by their shape:

- Karpathy splits (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images": [{"filename", "filepath"?,
  "cocoid"?, "imgid", "split", "sentences": [{"raw", "tokens"}]}]}``. Images of ``split`` (default ``test``);
  references are the ``raw`` sentences; the image is ``{filepath}/{filename}`` (Flickr30K has no ``filepath``). The
  image id is ``cocoid`` for COCO and the file name's number for Flickr30K (``1000092795.jpg`` -> 1000092795).
- the official ``captions_val2014.json``: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id", "id",
  "caption"}]}``; one item per image that has captions, in the order of ``images``; image ``{file_name}``.
- the LAVIS/BLIP Karpathy list (``coco_karpathy_test.json``): ``[{"image": "val2014/COCO_val2014_....jpg",
  "caption": [five strings], "image_id"?}]``; without ``image_id`` the id is the number ending the file name.

Results are ``[{"image_id", "caption"}]``, the COCO caption evaluation's format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from mmgpt.data.sources.base import RowError, require, string_list, text_field
from mmgpt.data.sources.jsonio import JsonFiles, SourceError
from mmgpt.evaluate.benchmarks.common import ItemId, aligned, image_path, located, take, top_level, write_json
from mmgpt.evaluate.benchmarks.items import CaptionItem

KARPATHY_SPLITS = ("train", "restval", "val", "test")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def _number_in_name(name: str) -> ItemId:
    """``COCO_val2014_000000391895.jpg`` -> 391895, ``1000092795.jpg`` -> 1000092795; other names stay strings."""
    match = _TRAILING_NUMBER.search(PurePosixPath(name).stem)
    return int(match.group(1)) if match else PurePosixPath(name).stem


def _karpathy(path: Path, rows: list, root: Path, split: str, limit: int | None, check: bool, benchmark: str):
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"Karpathy split must be one of {KARPATHY_SPLITS}, got {split!r}")

    def chosen():
        for i, row in enumerate(rows):
            with located(path, f"images[{i}]", benchmark):
                if text_field(row, "split") == split:
                    yield i, row

    items = []
    for i, row in take(chosen(), limit):
        where = f"images[{i}]"
        with located(path, where, benchmark):
            filename = text_field(row, "filename")
            folder = require(row, "filepath", str) if "filepath" in row else ""
            image_id = require(row, "cocoid", (int, str)) if "cocoid" in row else _number_in_name(filename)
            sentences = require(row, "sentences", list)
            if not sentences:
                raise RowError("sentences", "empty list; scoring needs the reference captions")
            references = tuple(text_field(s, "raw", at=f"sentences[{k}].") for k, s in enumerate(sentences))
        relative = f"{folder}/{filename}" if folder else filename
        image = image_path(root, relative, check=check, path=path, where=where)
        items.append(CaptionItem(image_id, image, references))
    return items


def _official(path: Path, document: dict, root: Path, limit: int | None, check: bool, benchmark: str):
    images = top_level(document.get("images"), list, path, "an 'images' list")
    annotations = top_level(document.get("annotations"), list, path, "an 'annotations' list")
    files: dict[Any, tuple[str, str]] = {}
    for i, image in enumerate(images):
        with located(path, f"images[{i}]", benchmark):
            files[require(image, "id", (int, str))] = (text_field(image, "file_name"), f"images[{i}]")
    captions: dict[Any, list[str]] = {}
    for i, annotation in enumerate(annotations):
        with located(path, f"annotations[{i}]", benchmark):
            image_id = require(annotation, "image_id", (int, str))
            if image_id not in files:
                raise RowError("image_id", f"{image_id!r} is not in the file's 'images' list")
            captions.setdefault(image_id, []).append(text_field(annotation, "caption"))
    items = []
    for image_id in take((image_id for image_id in files if image_id in captions), limit):
        file_name, where = files[image_id]
        image = image_path(root, file_name, check=check, path=path, where=where)
        items.append(CaptionItem(image_id, image, tuple(captions[image_id])))
    return items


def _lavis(path: Path, rows: list, root: Path, limit: int | None, check: bool, benchmark: str):
    items = []
    for i, row in take(enumerate(rows), limit):
        where = f"row {i}"
        with located(path, where, benchmark):
            relative = text_field(row, "image")
            captions = require(row, "caption", (str, list))
            references = [captions] if isinstance(captions, str) else string_list(row, "caption")
            image_id = require(row, "image_id", (int, str)) if "image_id" in row else _number_in_name(relative)
        image = image_path(root, relative, check=check, path=path, where=where)
        items.append(CaptionItem(image_id, image, tuple(references)))
    return items


def read_captions(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    check_images: bool = False,
    benchmark: str = "COCO captions",
) -> list[CaptionItem]:
    """Caption items of any of the three layouts; ``split`` applies to the Karpathy file only."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    document = JsonFiles().load(path)
    if isinstance(document, list):
        return _lavis(path, document, root, limit, check_images, benchmark)
    document = top_level(document, dict, path, "a captions object or list")
    if "annotations" in document:
        return _official(path, document, root, limit, check_images, benchmark)
    if isinstance(document.get("images"), list):
        return _karpathy(path, document["images"], root, split, limit, check_images, benchmark)
    raise SourceError(
        f"{path}: neither a Karpathy split ({{'images': [{{'sentences': ...}}]}}) nor COCO captions "
        "({'images', 'annotations'}) nor a LAVIS caption list"
    )


def caption_results(predictions: Mapping[ItemId, str], items: Sequence[CaptionItem]) -> list[dict[str, Any]]:
    captions = aligned(predictions, items, "caption results")
    return [{"image_id": item.key, "caption": caption} for item, caption in zip(items, captions, strict=True)]


def write_caption_results(path: str | Path, predictions: Mapping[ItemId, str], items: Sequence[CaptionItem]) -> Path:
    """``[{"image_id", "caption"}]`` in item order."""
    return write_json(path, caption_results(predictions, items))
