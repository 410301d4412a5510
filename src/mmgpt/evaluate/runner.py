"""Running a benchmark: read its files, pick in-context examples, ask the model in resumable batches (sharded over
processes), merge, write the predictions in the benchmark's result format and score them.

``evaluate_benchmark(model, tokenizer, settings, out)`` runs every shot count of ``settings.shots`` for
``settings.trials`` seeds (``seed``, ``seed + 1``, ...; a zero-shot run without examples is the same for every seed
and runs once) and returns the summary that ``metrics.json`` holds (``records.py`` gives the layout of ``out``).
Under ``torchrun`` each process passes its :class:`~mmgpt.evaluate.records.Shard` and a ``barrier``: every rank asks
its slice of the unanswered items, rank 0 merges the records and scores (other ranks return None).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from mmgpt.evaluate import prompts
from mmgpt.evaluate.ask import Asker
from mmgpt.evaluate.benchmarks import Benchmark, benchmark
from mmgpt.evaluate.benchmarks.open_ended import conversations
from mmgpt.evaluate.queries import QueryBuilder
from mmgpt.evaluate.records import METRICS_FILE, RunFolder, Shard, run_name, write_json
from mmgpt.evaluate.shots import ClipFeatures, ModelFeatures, RandomShots, RicesShots, SubjectShots
from mmgpt.model.contract import VisionLanguageModel

SELECTIONS = ("random", "rices")
CHUNK_BATCHES = 4  # batches asked between two writes of the records (what a kill can lose)
TEXT_ONLY_ZERO_SHOT = 2  # OpenFlamingo's zero-shot: two examples without their images
NO_ZERO_SHOT_EXAMPLES = ("mmlu", "instruction", "open_ended")


@dataclass
class EvalSettings:
    """One benchmark evaluation. ``data``: the benchmark's file (``Benchmark.read``'s path), ``images``: the image
    root, ``options``: the reader's other arguments (``annotations``, ``split``, ``subjects``, ``class_names``).
    ``support`` (+ ``support_images``, ``support_options``): where in-context examples come from - the benchmark's
    training split; ``selection``: ``random`` or ``rices`` (features of ``rices_clip``, a CLIP folder, or of the
    model's vision encoder; cached in ``cache_dir``). ``skip_missing_images``: count items whose image is missing
    instead of stopping. ``score_options``: the scorer's keyword arguments (captions: ``metrics`` without METEOR, the
    slow one). ``model_name`` identifies the model in run.json (a rerun with another is refused)."""

    benchmark: str
    data: str
    images: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    shots: list[int] = field(default_factory=lambda: [0])
    trials: int = 1
    seed: int = 42
    prompt: prompts.PromptSpec = field(default_factory=prompts.PromptSpec)
    selection: str = "random"
    support: str | None = None
    support_images: str | None = None
    support_options: dict[str, Any] = field(default_factory=dict)
    rices_clip: str | None = None
    cache_dir: str | None = None
    batch_size: int = 8
    max_new_tokens: int | None = None
    normalize: str = "mean"
    skip_missing_images: bool = False
    score_options: dict[str, Any] = field(default_factory=dict)
    model_name: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS:
            raise ValueError(f"selection {self.selection!r} is not one of {', '.join(SELECTIONS)}")
        if any(k < 0 for k in self.shots) or not self.shots:
            raise ValueError(f"shots must be non-negative counts, got {self.shots}")
        if self.trials < 1:
            raise ValueError(f"trials must be at least 1, got {self.trials}")


class Progress:
    """What the runner reports; the CLI shows a bar with ETA, training shows nothing."""

    def start(self, label: str, total: int, done: int) -> None: ...

    def advance(self, n: int) -> None: ...


def read_items(settings: EvalSettings, bench: Benchmark) -> tuple[list[Any], list[dict[str, Any]]]:
    """The items, and those left out because their image file is missing (an error unless
    ``skip_missing_images``)."""
    items = bench.read(settings.data, settings.images, limit=settings.limit, **settings.options)
    missing = [i for i in items if getattr(i, "image", None) is not None and not Path(i.image).is_file()]
    if missing and not settings.skip_missing_images:
        shown = ", ".join(f"{i.key!r} ({i.image})" for i in missing[:3])
        raise FileNotFoundError(
            f"{settings.data}: {len(missing)} of {len(items)} items name an image that is not there (first: {shown}); "
            "check --images (the image root), or pass --skip-missing-images to score the others and report the count"
        )
    skipped = [{"key": i.key, "skipped": f"image: {i.image} not found"} for i in missing]
    keys = {id(i) for i in missing}
    return [i for i in items if id(i) not in keys], skipped


def _default_support(settings: EvalSettings, bench: Benchmark) -> tuple[str, dict[str, Any]] | None:
    """Where examples come from when no --support is given: MMLU's dev split, a Karpathy file's train split."""
    if settings.support is not None:
        return settings.support, settings.support_options
    if bench.kind == "mmlu":
        return settings.data, {"split": "dev"}
    if bench.kind == "caption" and Path(settings.data).name.startswith("dataset_"):
        return settings.data, {"split": "train"}
    return None


def _text_only_zero_shot(settings: EvalSettings, bench: Benchmark) -> bool:
    """Whether a zero-shot query gets OpenFlamingo's text-only examples (when there is a support set)."""
    return settings.prompt.format == prompts.FEWSHOT and bench.kind not in NO_ZERO_SHOT_EXAMPLES


def make_selector(model: VisionLanguageModel, settings: EvalSettings, bench: Benchmark, items: Sequence[Any]):
    """The in-context example selector, or None when no run needs examples."""
    source = _default_support(settings, bench)
    if max(settings.shots) == 0 and not (_text_only_zero_shot(settings, bench) and source is not None):
        return None
    if source is None:
        raise ValueError(
            f"{max(settings.shots)}-shot {bench.name} needs in-context examples: pass --support FILE (the benchmark's "
            "training split, in the same format; --support-images for its image root)"
        )
    path, options = source
    root = settings.support_images if settings.support_images is not None else settings.images
    support = bench.read(path, root, **options)
    images = [getattr(s, "image", None) for s in support]
    support = [s for s, image in zip(support, images, strict=True) if image is None or Path(image).is_file()]
    if not support:
        raise FileNotFoundError(
            f"{path}: none of the support items' images is there (first: {images[0]}); pass --support-images, the "
            "image root of the support file"
        )
    if bench.kind == "mmlu":
        return SubjectShots(support)
    if settings.selection == "random":
        return RandomShots(support)
    encoder = (
        ClipFeatures(settings.rices_clip, model.device)
        if settings.rices_clip
        else ModelFeatures(model, settings.model_name or "model")
    )
    selector = RicesShots(support, encoder, settings.cache_dir)
    selector.prepare(items)
    return selector


def identity(settings: EvalSettings, shots: int, seed: int) -> dict[str, Any]:
    keep = ("benchmark", "data", "images", "options", "limit", "selection", "support", "rices_clip", "model_name")
    out = {k: v for k, v in asdict(settings).items() if k in keep}
    out.update(shots=shots, seed=seed, prompt=asdict(settings.prompt), normalize=settings.normalize)
    out["max_new_tokens"] = settings.max_new_tokens
    return out


def _run(
    asker: Asker,
    items: Sequence[Any],
    build: Callable[..., Any],
    folder: RunFolder,
    shard: Shard,
    progress: Progress,
    label: str,
) -> None:
    """Ask this rank's part of the unanswered items, a chunk at a time, appending the records after each chunk.
    Open-ended questions go by conversation (a conversation's turns stay together, on one rank)."""
    done = folder.finished()

    def unanswered(item: Any) -> bool:
        return "prediction" not in done.get(item.key, {})

    conversational = asker.kind == "open_ended"
    if conversational:  # a conversation with an unanswered turn is asked again whole: its turns need their history
        units: list[Any] = [group for group in conversations(items) if any(unanswered(i) for i in group)]
    else:
        units = [i for i in items if unanswered(i)]
    mine = shard.part(units)
    progress.start(label, sum(len(u) for u in mine) if conversational else len(mine), 0)
    step = asker.batch_size * CHUNK_BATCHES
    for start in range(0, len(mine), step):
        chunk = mine[start : start + step]
        if conversational:
            folder.append(shard.rank, asker.ask_conversations(chunk))
        else:
            folder.append(shard.rank, asker.ask(chunk, build))
        progress.advance(sum(len(u) for u in chunk) if conversational else len(chunk))


def _score(
    bench: Benchmark, items: Sequence[Any], records: dict[Any, dict[str, Any]], folder: RunFolder, options: dict
):
    answered = [i for i in items if "prediction" in records.get(i.key, {})]
    predictions = {i.key: records[i.key]["prediction"] for i in answered}
    result_file = folder.path / bench.results.name(bench.name)
    if answered:
        bench.write(result_file, predictions, answered)
    folder.write_prompts([records[i.key] for i in items if i.key in records])
    if bench.score is None or not answered:
        return {}, result_file
    return bench.score(predictions, answered, **options).summary(), result_file


def evaluate_benchmark(
    model: VisionLanguageModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: EvalSettings,
    out: str | Path,
    *,
    shard: Shard | None = None,
    barrier: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any] | None:
    """Run ``settings`` and write ``out``; returns metrics.json's content on rank 0, None on the others."""
    shard, barrier, progress = shard or Shard(), barrier or (lambda: None), progress or Progress()
    bench = benchmark(settings.benchmark)
    if bench.kind == "open_ended" and settings.prompt.format != prompts.CHAT:
        raise ValueError(f"{bench.name} questions are asked in the model's chat template: pass --prompt chat")
    start = time.perf_counter()
    items, missing = read_items(settings, bench)
    builder = QueryBuilder(model, tokenizer, settings.prompt, benchmark=bench.name, kind=bench.kind)
    asker = Asker(model, tokenizer, builder, settings.batch_size, settings.max_new_tokens, settings.normalize)
    selector = make_selector(model, settings, bench, items)
    zero_shot_examples = TEXT_ONLY_ZERO_SHOT if selector is not None and _text_only_zero_shot(settings, bench) else 0
    results = []
    was_training = model.training
    model.eval()
    try:
        for shots in settings.shots:
            examples = shots or zero_shot_examples
            seeds = [settings.seed + t for t in range(settings.trials if examples else 1)]
            trials = []
            for seed in seeds:
                build = partial(_query, builder, selector, examples=examples, seed=seed, text_only=shots == 0)
                folder = RunFolder(Path(out) / run_name(shots, seed), identity(settings, shots, seed))
                if shard.is_main:
                    folder.claim(overwrite=settings.overwrite)
                barrier()
                _run(asker, items, build, folder, shard, progress, f"{bench.name} {shots}-shot seed {seed}")
                barrier()
                if not shard.is_main:
                    continue
                records = folder.finished()
                figures, result_file = _score(bench, items, records, folder, settings.score_options)
                skipped = missing + [r for r in records.values() if "skipped" in r]
                trial = {
                    "shots": shots,
                    "seed": seed,
                    "n": sum("prediction" in r for r in records.values()),
                    "skipped": len(skipped),
                    "skipped_examples": skipped[:5],
                    "metrics": figures,
                    "predictions": str(result_file),
                    "prompt": settings.prompt.describe(bench.name, bench.kind),
                }
                write_json(folder.path / METRICS_FILE, trial)
                trials.append(trial)
            if shard.is_main:
                results.append({"shots": shots, "trials": trials, **summarize(trials)})
    finally:
        model.train(was_training)
    if not shard.is_main:
        return None
    summary = {
        "benchmark": bench.name,
        "summary": bench.summary,
        "model": settings.model_name,
        "items": len(items) + len(missing),
        "prompt": settings.prompt.describe(bench.name, bench.kind),
        "selection": settings.selection,
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    write_json(Path(out) / METRICS_FILE, summary)
    return summary


def _query(builder: QueryBuilder, selector: Any, item: Any, *, examples: int, seed: int, text_only: bool) -> Any:
    """An item's query after its in-context examples (text only in a zero-shot run)."""
    demos = selector.select(item, examples, seed) if examples else []
    return builder.build(item, demos, text_only_demos=text_only)


def summarize(trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and (sample) standard deviation of each figure over trials (std 0 for one trial)."""
    names = sorted({k for t in trials for k in t["metrics"]})
    mean, std = {}, {}
    for name in names:
        values = [t["metrics"][name] for t in trials if name in t["metrics"]]
        mean[name] = statistics.fmean(values)
        std[name] = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std}
