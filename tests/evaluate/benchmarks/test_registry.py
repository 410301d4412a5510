"""The registry: every benchmark reads its published file, scores its own truth, and writes a result file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mmgpt.evaluate.benchmarks import BENCHMARKS, benchmark
from mmgpt.evaluate.benchmarks.aokvqa import AokvqaPrediction
from mmgpt.evaluate.benchmarks.items import Item
from mmgpt.evaluate.predictions import read_predictions
from tests.evaluate.benchmarks import published

NAMES = (
    "vqav2", "okvqa", "vizwiz", "textvqa", "ocrvqa", "gqa", "aokvqa", "pope", "coco", "flickr30k",
    "hatefulmemes", "imagenet", "mmlu", "dolly", "alpaca", "owleval", "llava-bench", "mm-vet",
)  # fmt: skip


def _ocrvqa(root: Path) -> Path:
    path = published.write_ocrvqa(root)
    (root / "images").mkdir()
    (root / "images" / "000000001.jpg").write_bytes(b"")  # OCR-VQA checks images by default: 000000003 is missing
    return path


def _imagenet(root: Path) -> Path:
    (root / "n01").mkdir(parents=True)
    (root / "n01" / "a.jpg").write_bytes(b"")
    return root


FILES: dict[str, Callable[[Path], Path]] = {
    "vqav2": published.write_vqav2,
    "okvqa": published.write_vqav2,  # OK-VQA ships in VQAv2's shape
    "vizwiz": published.write_vizwiz,
    "textvqa": published.write_textvqa,
    "ocrvqa": _ocrvqa,
    "gqa": published.write_gqa,
    "aokvqa": published.write_aokvqa,
    "pope": published.write_pope,
    "coco": published.write_karpathy,
    "flickr30k": lambda root: published.write_karpathy(root, "dataset_flickr30k.json"),
    "hatefulmemes": published.write_hateful_memes,
    "imagenet": _imagenet,
    "mmlu": published.write_mmlu,
    "dolly": published.write_dolly,
    "alpaca": published.write_alpaca,
    "owleval": published.write_owleval,
    "llava-bench": published.write_llava_bench,
    "mm-vet": published.write_mmvet,
}


def _truth(kind: str, item: Any) -> Any:
    """A prediction that is right, in the form the benchmark's scorer takes."""
    return {
        "vqa": lambda: max(item.answers, key=item.answers.count),
        "caption": lambda: item.references[0],
        "multiple_choice": lambda: AokvqaPrediction(item.answer, item.direct_answers[0]),
        "yes_no": lambda: "Yes." if item.label == "yes" else "No.",
        "classification": lambda: float(item.label) if item.classes[0] == "not hateful" else item.label,
        "mmlu": lambda: item.answer_index,
        "instruction": lambda: item.output,
        "open_ended": lambda: "An answer.",
    }[kind]()


def test_the_registry_names_every_benchmark() -> None:
    assert tuple(BENCHMARKS) == NAMES
    with pytest.raises(KeyError, match="no benchmark 'vqa'; known: vqav2, okvqa"):
        benchmark("vqa")


@pytest.mark.parametrize("name", NAMES)
def test_read_score_and_write_through_the_registry(name: str, tmp_path: Path) -> None:
    entry = benchmark(name)
    items: list[Item] = entry.read(FILES[name](tmp_path), tmp_path / "images", limit=3)
    subjects = {getattr(item, "subject", None) for item in items}
    assert 0 < len(items) <= 3 * len(subjects) and all(isinstance(item, entry.item) for item in items)
    predictions = {item.key: _truth(entry.kind, item) for item in items}
    if entry.score is not None and entry.kind != "caption":  # captions need Java: test_captions covers them
        result = entry.score(predictions, items)
        assert result.headline == 1.0, result.summary()
        assert isinstance(result.metric, str) and result.summary()
    written = entry.write(tmp_path / "results" / entry.results.name(name), predictions, items)
    assert written.is_file() and written.stat().st_size > 0
    back = read_predictions(written, entry, items)  # read as its entry's layout says: every item, by its key
    assert list(back.predictions) == [item.key for item in items] and not back.missing and not back.duplicates
