"""The published benchmarks: readers of the files as distributed, the official scorers, and result-file writers -
everything of an evaluation that needs no model.

``BENCHMARKS[name]`` bundles, per benchmark:

- ``read(path, image_root=None, *, limit=None, **options) -> list[item]`` (items in a deterministic order, ``limit``
  the first ones - per subject for MMLU; images resolved against ``image_root``; text-only sets ignore it),
- ``kind``: what is asked (``vqa``, ``caption``, ``multiple_choice``, ``yes_no``, ``classification``, ``mmlu``,
  ``open_ended``, ``instruction``) and ``item``: the item dataclass,
- ``score(predictions, items) -> result`` with ``.headline``, ``.metric`` and ``.summary()``; None for the
  open-ended sets, which are judged by people or GPT-4 from the answer files,
- ``write(path, predictions, items) -> Path``: the benchmark's official result file, and ``results``: that file's
  layout (:class:`ResultFile`: its form, key and prediction fields, file name), by which it is read back.

Predictions are keyed by ``item.key``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mmgpt.evaluate.benchmarks import (
    aokvqa,
    caption_metrics,
    captions,
    classification,
    classification_metrics,
    exact_match_sets,
    instructions,
    items,
    mmlu,
    open_ended,
    pope,
    vqa_accuracy,
    vqa_sets,
)
from mmgpt.evaluate.benchmarks.common import BenchmarkFormatError, MissingImageError, PredictionError


@dataclass(frozen=True)
class ResultFile:
    """The layout of a benchmark's official result file (what its ``write`` produces and its evaluation reads).

    form: ``list`` (a JSON list of objects), ``mapping`` (a JSON object ``{key: prediction}``), ``lines`` (one JSON
    object per line) or ``csv``; ``key`` and ``prediction``: the fields of each object or row; ``by_line``: objects
    without the key pair with the items by position (POPE's own answer files)."""

    form: str
    key: str = "question_id"
    prediction: str = "answer"
    by_line: bool = False

    def name(self, benchmark: str) -> str:
        return f"{benchmark}_results{'.csv' if self.form == 'csv' else '.json'}"


@dataclass(frozen=True)
class Benchmark:
    """One published benchmark: how to read it, what it asks, how it is scored and written."""

    name: str
    summary: str
    kind: str
    item: type
    read: Callable[..., list[Any]]
    score: Callable[..., Any] | None
    write: Callable[..., Path]
    results: ResultFile


VQA, CAPTION, CHOICE, YES_NO, CLASSIFICATION, MMLU, OPEN, INSTRUCTION = (
    "vqa", "caption", "multiple_choice", "yes_no", "classification", "mmlu", "open_ended", "instruction",
)  # fmt: skip


def _entries() -> list[Benchmark]:
    vqa, exact = vqa_accuracy.score_vqa, vqa_accuracy.score_exact_match
    answers, mapping = ResultFile("list"), ResultFile("mapping")
    return [
        Benchmark(
            "vqav2", "VQAv2 questions + annotations; VQA accuracy", VQA, items.VqaItem,
            partial(vqa_sets.read_vqa, benchmark="VQAv2"), partial(vqa, benchmark="VQAv2"),
            vqa_sets.write_vqa_results, answers,
        ),
        Benchmark(
            "okvqa", "OK-VQA questions + annotations; VQA accuracy", VQA, items.VqaItem,
            partial(vqa_sets.read_vqa, benchmark="OK-VQA"), partial(vqa, benchmark="OK-VQA"),
            vqa_sets.write_vqa_results, answers,
        ),
        Benchmark(
            "vizwiz", "VizWiz val.json; VQA accuracy", VQA, items.VqaItem,
            vqa_sets.read_vizwiz, partial(vqa, benchmark="VizWiz"), vqa_sets.write_vizwiz_results,
            ResultFile("list", "image"),
        ),
        Benchmark(
            "textvqa", "TextVQA_0.5.1_val.json; VQA accuracy", VQA, items.VqaItem,
            vqa_sets.read_textvqa, partial(vqa, benchmark="TextVQA"), vqa_sets.write_vqa_results, answers,
        ),
        Benchmark(
            "ocrvqa", "OCR-VQA dataset.json, test split; exact match", VQA, items.VqaItem,
            exact_match_sets.read_ocrvqa, partial(exact, benchmark="OCR-VQA"), vqa_sets.write_vqa_results, answers,
        ),
        Benchmark(
            "gqa", "GQA testdev_balanced_questions.json; exact match", VQA, items.VqaItem,
            exact_match_sets.read_gqa, partial(exact, benchmark="GQA"), exact_match_sets.write_gqa_results,
            ResultFile("list", "questionId", "prediction"),
        ),
        Benchmark(
            "aokvqa", "A-OKVQA val; multiple-choice and direct-answer accuracy", CHOICE, items.MultipleChoiceItem,
            aokvqa.read_aokvqa, aokvqa.score_aokvqa, aokvqa.write_aokvqa_results, mapping,
        ),
        Benchmark(
            "pope", "POPE coco_pope_*.json; accuracy, precision, recall, F1, yes-ratio", YES_NO, items.YesNoItem,
            pope.read_pope, pope.score_pope, pope.write_pope_answers, ResultFile("lines", by_line=True),
        ),
        Benchmark(
            "coco", "COCO captions, Karpathy test or captions_val2014.json; CIDEr, BLEU-4, METEOR, ROUGE-L",
            CAPTION, items.CaptionItem, partial(captions.read_captions, benchmark="COCO"),
            caption_metrics.score_captions, captions.write_caption_results, ResultFile("list", "image_id", "caption"),
        ),
        Benchmark(
            "flickr30k", "Flickr30K Karpathy test; CIDEr, BLEU-4, METEOR, ROUGE-L", CAPTION, items.CaptionItem,
            partial(captions.read_captions, benchmark="Flickr30K"), caption_metrics.score_captions,
            captions.write_caption_results, ResultFile("list", "image_id", "caption"),
        ),
        Benchmark(
            "hatefulmemes", "HatefulMemes dev.jsonl; ROC-AUC and accuracy", CLASSIFICATION,
            items.ClassificationItem, classification.read_hateful_memes, classification_metrics.score_hateful_memes,
            classification_metrics.write_hateful_memes_results, ResultFile("csv", "id", "proba"),
        ),
        Benchmark(
            "imagenet", "an ImageNet subset (class folders or a list file); top-1", CLASSIFICATION,
            items.ClassificationItem, classification.read_imagenet, classification_metrics.score_top1,
            classification_metrics.write_top1_results, ResultFile("list", "id", "label"),
        ),
        Benchmark(
            "mmlu", "MMLU data/test/*_test.csv or parquet; accuracy, per subject", MMLU, items.MmluItem,
            mmlu.read_mmlu, mmlu.score_mmlu, mmlu.write_mmlu_results, mapping,
        ),
        Benchmark(
            "dolly", "Dolly 15k jsonl, held out; ROUGE-L (language retention)", INSTRUCTION,
            items.InstructionItem, instructions.read_dolly, instructions.score_rouge_l,
            instructions.write_instruction_results, ResultFile("lines", "id", "prediction"),
        ),
        Benchmark(
            "alpaca", "Alpaca(-GPT4) json, held out; ROUGE-L (language retention)", INSTRUCTION,
            items.InstructionItem, instructions.read_alpaca, instructions.score_rouge_l,
            instructions.write_instruction_results, ResultFile("lines", "id", "prediction"),
        ),
        Benchmark(
            "owleval", "OwlEval questions.jsonl; answers for human rating", OPEN, items.OpenEndedItem,
            open_ended.read_owleval, None, open_ended.write_owleval_answers, ResultFile("lines"),
        ),
        Benchmark(
            "llava-bench", "LLaVA-Bench (in the Wild) questions.jsonl; answers for GPT-4 review", OPEN,
            items.OpenEndedItem, open_ended.read_llava_bench, None, open_ended.write_llava_bench_answers,
            ResultFile("lines", "question_id", "text"),
        ),
        Benchmark(
            "mm-vet", "MM-Vet mm-vet.json; results for its GPT-4 grader", OPEN, items.OpenEndedItem,
            open_ended.read_mmvet, None, open_ended.write_mmvet_results, mapping,
        ),
    ]  # fmt: skip


BENCHMARKS: dict[str, Benchmark] = {entry.name: entry for entry in _entries()}


def benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, or an error listing the known names."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"no benchmark {name!r}; known: {', '.join(BENCHMARKS)}") from None


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkFormatError",
    "MissingImageError",
    "PredictionError",
    "ResultFile",
    "benchmark",
]
