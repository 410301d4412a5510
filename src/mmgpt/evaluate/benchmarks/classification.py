"""Image classification sets: HatefulMemes and an ImageNet subset of the user's choosing.

- HatefulMemes: ``dev.jsonl`` (also ``dev_seen``/``dev_unseen``), one ``{"id", "img": "img/42953.png", "label":
  0|1, "text"}`` per line; images under the folder that holds ``img/``. Classes ``("not hateful", "hateful")``.
- ImageNet: either a folder of class folders (``{class}/*.jpg``; classes sorted by folder name, which for synset
  folders is the standard class-index order) or a list file, one ``{relative image path} {label}`` per line where the
  label is a class index or a class name. ``class_names`` gives readable names: a list in class-index order, or a
  mapping from folder / label name to name (e.g. ``{"n01440764": "tench"}``). A folder's images are interleaved
  across classes (the first image of every class, then the second...), so a ``limit`` takes a balanced subset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import zip_longest
from pathlib import Path

from mmgpt.data.sources.base import RowError, require, text_field
from mmgpt.data.sources.jsonio import JsonFiles, SourceError
from mmgpt.evaluate.benchmarks.common import image_path, json_row, located, take
from mmgpt.evaluate.benchmarks.items import ClassificationItem

HATEFUL_MEMES_CLASSES = ("not hateful", "hateful")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
ClassNames = Sequence[str] | Mapping[str, str] | None


def read_hateful_memes(
    path: str | Path, image_root: str | Path | None = None, *, limit: int | None = None, check_images: bool = False
) -> list[ClassificationItem]:
    """HatefulMemes memes with their labels, in file order."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    items = []
    for row in take(JsonFiles().lines(path), limit):
        with located(path, row.where, "HatefulMemes"):
            value = json_row(row.value)
            meme_id = require(value, "id", (int, str))
            image = require(value, "img", str)
            label = require(value, "label", int)
            if label not in (0, 1):
                raise RowError("label", f"expected 0 or 1, got {label!r}")
            text = text_field(value, "text", allow_empty=True)
        file = image_path(root, image, check=check_images, path=path, where=row.where)
        items.append(ClassificationItem(meme_id, file, label, HATEFUL_MEMES_CLASSES, text))
    return items


def _renamed(raw: Sequence[str], class_names: ClassNames, where: Path) -> tuple[str, ...]:
    """Readable class names for the raw ones (folder names or label names), in the same order."""
    if class_names is None:
        return tuple(raw)
    if isinstance(class_names, Mapping):
        missing = [name for name in raw if name not in class_names]
        if missing:
            raise ValueError(f"{where}: class_names has no entry for {missing[:3]!r}; add them or drop class_names")
        return tuple(class_names[name] for name in raw)
    if len(class_names) != len(raw):
        raise ValueError(f"{where}: {len(raw)} classes but {len(class_names)} class_names; give one name per class")
    return tuple(class_names)


def _read_folder(root: Path, class_names: ClassNames) -> list[ClassificationItem]:
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise SourceError(f"{root}: no class folders; expected {{class}}/*.jpg or a list file")
    classes = _renamed([f.name for f in folders], class_names, root)
    per_class = [
        sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for folder in folders
    ]
    items = []
    for rank in zip_longest(*per_class):
        for label, file in enumerate(rank):
            if file is not None:
                items.append(ClassificationItem(f"{folders[label].name}/{file.name}", file, label, classes))
    return items


def _read_list(path: Path, root: Path, class_names: ClassNames, check_images: bool) -> list[ClassificationItem]:
    rows: list[tuple[str, str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2:
            raise SourceError(f"{path} line {number}: expected '{{image path}} {{label}}', got {line!r}")
        rows.append((f"line {number}", parts[0], parts[1]))
    numeric = all(label.isdigit() for _, _, label in rows)
    if numeric:
        if class_names is None or isinstance(class_names, Mapping):
            raise ValueError(f"{path}: labels are class indices; pass class_names as a list of names in index order")
        classes = tuple(class_names)
        index = {str(k): k for k in range(len(classes))}
    else:
        raw = sorted({label for _, _, label in rows})
        classes = _renamed(raw, class_names, path)
        index = {name: k for k, name in enumerate(raw)}
    items = []
    for where, relative, label in rows:
        label = str(int(label)) if numeric else label
        if label not in index:
            raise SourceError(f"{path} {where}: label {label!r} is not a class index below {len(classes)}")
        file = image_path(root, relative, check=check_images, path=path, where=where)
        items.append(ClassificationItem(relative, file, index[label], classes))
    return items


def read_imagenet(
    path: str | Path,
    image_root: str | Path | None = None,
    *,
    limit: int | None = None,
    check_images: bool = False,
    class_names: ClassNames = None,
) -> list[ClassificationItem]:
    """An ImageNet subset: a folder of class folders, or a list file (images relative to ``image_root``, default
    the list's folder)."""
    path = Path(path)
    if path.is_dir():
        return take(_read_folder(path, class_names), limit)
    if not path.is_file():
        raise SourceError(f"{path}: no such folder or list file; expected {{class}}/*.jpg folders or a list file")
    root = Path(image_root) if image_root is not None else path.parent
    return take(_read_list(path, root, class_names, check_images), limit)
