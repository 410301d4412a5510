"""Published benchmarks as validation metrics during training.

``validation.benchmarks`` of a training config lists :class:`~mmgpt.train.config.BenchmarkValidation` entries; each
becomes an evaluator (``(model, tokenizer) -> {figure: value}``) that runs the benchmark exactly as ``mmgpt eval``
does (same prompts, same scorers) on its first ``limit`` items, in a scratch folder. The trainer reports the figures
as ``{name}_{figure}`` (``pope_pope_f1``, ``vqav2_vqa_accuracy``, ``mmlu_mmlu_accuracy``), any of which
``validation.metric`` (with ``mode: max``) can pick the best checkpoint by. The generated world stays available as
``validation.world`` (``world_colour``, ...).
"""

from __future__ import annotations

import tempfile
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.evaluate.prompts import PromptSpec
from mmgpt.evaluate.report import BREAKDOWN
from mmgpt.evaluate.runner import EvalSettings, evaluate_benchmark
from mmgpt.model.contract import Evaluator, VisionLanguageModel


def settings_of(entry: Any) -> EvalSettings:
    """The evaluation settings of a ``BenchmarkValidation`` entry."""
    spec = PromptSpec(format=entry.prompt, template=entry.template)
    return EvalSettings(
        benchmark=entry.benchmark,
        data=entry.data,
        images=entry.images,
        options=dict(entry.options),
        limit=entry.limit,
        shots=[entry.shots],
        prompt=spec,
        support=entry.support,
        support_images=entry.support_images,
        batch_size=entry.batch_size,
        max_new_tokens=entry.max_new_tokens,
        model_name="training",
        overwrite=True,
    )


def benchmark_evaluator(entry: Any) -> Evaluator:
    """An evaluator running one benchmark validation entry; returns its headline figures (breakdowns left out)."""
    settings = settings_of(entry)

    def evaluate(model: VisionLanguageModel, tokenizer: PreTrainedTokenizerBase) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix=f"mmgpt-{entry.benchmark}-") as scratch:
            summary = evaluate_benchmark(model, tokenizer, settings, scratch)
        assert summary is not None  # the trainer runs evaluators on the main rank only, unsharded
        figures = summary["results"][0]["mean"]
        return {name: float(value) for name, value in figures.items() if BREAKDOWN not in name}

    return evaluate
