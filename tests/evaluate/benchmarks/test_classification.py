"""HatefulMemes and ImageNet-subset readers, ROC-AUC with ties, accuracy and top-1, and their result files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mmgpt.evaluate.benchmarks.classification import HATEFUL_MEMES_CLASSES, read_hateful_memes, read_imagenet
from mmgpt.evaluate.benchmarks.classification_metrics import (
    roc_auc,
    score_hateful_memes,
    score_top1,
    write_hateful_memes_results,
    write_top1_results,
)
from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError
from tests.evaluate.benchmarks import published


def test_roc_auc_counts_ties_as_half() -> None:
    # positives 0.9, 0.5, 0.3; negatives 0.5, 0.1, 0.3.  Pairs won: 3 + (1 + 1 + 1/2) + (1 + 1/2) = 7 of 9.
    assert roc_auc([1, 1, 0, 0, 1, 0], [0.9, 0.5, 0.5, 0.1, 0.3, 0.3]) == 7 / 9
    assert roc_auc([0, 1], [0.2, 0.8]) == 1.0
    assert roc_auc([0, 1], [0.8, 0.2]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_roc_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="only one class"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got \[2\]"):
        roc_auc([0, 2], [0.2, 0.3])


def test_hateful_memes(tmp_path: Path) -> None:
    items = read_hateful_memes(published.write_hateful_memes(tmp_path))
    assert [(i.key, i.label, i.text) for i in items] == [
        (8291, 1, "white people is this a shooting range"),
        (46971, 0, "bravery at its finest"),
        (3745, 1, "your order comes to $37.50"),
        (83745, 0, ""),
    ]
    assert items[0].image == tmp_path / "img/08291.png"
    assert items[0].classes == HATEFUL_MEMES_CLASSES and items[0].class_name == "hateful"
    probabilities = {8291: 0.9, 46971: 0.4, 3745: 0.4, 83745: 0.6}
    score = score_hateful_memes(probabilities, items)
    # positives 0.9, 0.4; negatives 0.4, 0.6: 2 + 0.5 of 4 pairs; labels at 0.5: 1 0 0 1 -> 2 of 4 right
    assert (score.roc_auc, score.accuracy, score.headline) == (0.625, 0.5, 0.625)
    out = write_hateful_memes_results(tmp_path / "submission.csv", probabilities, items)
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[:2] == [["id", "proba", "label"], ["8291", "0.9", "1"]]
    with pytest.raises(ValueError, match=r"prediction for 8291 must be a probability in \[0, 1\], got 1.5"):
        score_hateful_memes({**probabilities, 8291: 1.5}, items)


def test_hateful_memes_label_must_be_binary(tmp_path: Path) -> None:
    path = published.write_hateful_memes(tmp_path)
    path.write_text(path.read_text().replace('"label": 0', '"label": "0"', 1))
    with pytest.raises(BenchmarkFormatError, match=r"dev\.jsonl line 2, field 'label': expected an integer"):
        read_hateful_memes(path)


def _folders(root: Path) -> Path:
    for name, files in {"n02": ["b.jpg", "a.JPEG"], "n01": ["z.png", "y.jpg", "x.jpg"], "empty": []}.items():
        (root / name).mkdir(parents=True)
        for file in files:
            (root / name / file).write_bytes(b"")
    (root / "n01" / "notes.txt").write_text("not an image")
    return root


def test_imagenet_folder_interleaves_classes(tmp_path: Path) -> None:
    root = _folders(tmp_path / "subset")
    items = read_imagenet(root, class_names={"empty": "nothing", "n01": "tench", "n02": "goldfish"})
    assert [(i.key, i.label) for i in items] == [
        ("n01/x.jpg", 1),
        ("n02/a.JPEG", 2),
        ("n01/y.jpg", 1),
        ("n02/b.jpg", 2),
        ("n01/z.png", 1),
    ]
    assert items[0].classes == ("nothing", "tench", "goldfish")
    assert [i.key for i in read_imagenet(root, limit=2)] == ["n01/x.jpg", "n02/a.JPEG"]
    with pytest.raises(ValueError, match=r"class_names has no entry for \['n01', 'n02'\]"):
        read_imagenet(root, class_names={"empty": "nothing"})


def test_imagenet_list_file_and_top1(tmp_path: Path) -> None:
    listing = tmp_path / "val.txt"
    listing.write_text("ILSVRC2012_val_00000001.JPEG 1\nILSVRC2012_val_00000002.JPEG 0\n\n")
    items = read_imagenet(listing, tmp_path / "val", class_names=["tench", "goldfish"])
    assert [(i.key, i.label, i.class_name) for i in items] == [
        ("ILSVRC2012_val_00000001.JPEG", 1, "goldfish"),
        ("ILSVRC2012_val_00000002.JPEG", 0, "tench"),
    ]
    assert items[0].image == tmp_path / "val/ILSVRC2012_val_00000001.JPEG"
    with pytest.raises(ValueError, match="labels are class indices; pass class_names"):
        read_imagenet(listing)
    score = score_top1({"ILSVRC2012_val_00000001.JPEG": "goldfish", "ILSVRC2012_val_00000002.JPEG": 1}, items)
    assert (score.accuracy, score.per_class) == (0.5, {"goldfish": 1.0, "tench": 0.0})
    out = write_top1_results(tmp_path / "top1.json", {i.key: 0 for i in items}, items)
    assert json.loads(out.read_text())[0] == {"id": "ILSVRC2012_val_00000001.JPEG", "label": 0, "class": "tench"}


def test_imagenet_list_file_with_names(tmp_path: Path) -> None:
    listing = tmp_path / "subset.txt"
    listing.write_text("dogs/1.jpg dog\ncats/2.jpg cat\n")
    items = read_imagenet(listing)
    assert [(i.key, i.class_name) for i in items] == [("dogs/1.jpg", "dog"), ("cats/2.jpg", "cat")]
    assert items[0].classes == ("cat", "dog")
