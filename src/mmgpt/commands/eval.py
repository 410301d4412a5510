"""evaluate a model on a published benchmark or the generated world, or score a predictions file alone

  mmgpt eval BENCHMARK --data FILE [--images DIR] --model M [--adapter A] [--shots 0,4,8] [--trials 3] [--limit N]
  mmgpt eval score BENCHMARK --predictions FILE --data FILE [--annotations FILE]
  mmgpt eval world --world DIR --model M                 (also: mmgpt eval --world DIR --model M)
  mmgpt eval list
  mmgpt eval export-world --world DIR --out DIR          (a world's held-out scenes as benchmark files)

Under torchrun every process answers its share of the items and rank 0 merges and scores. docs/evaluation.md
gives every benchmark's files, command and prompt.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.commands._options import add_quantize

if TYPE_CHECKING:
    from mmgpt.train.distributed import DistributedContext

WORLD, SCORE, LIST, EXPORT = "world", "score", "list", "export-world"
WORLD_BATCH, BENCHMARK_BATCH = 32, 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("benchmark", nargs="?", help="a benchmark (`mmgpt eval list`), or score / world / list")
    parser.add_argument("target", nargs="?", help="with `score`: the benchmark the predictions are of")
    data = parser.add_argument_group("benchmark files")
    data.add_argument("--data", help="the benchmark's file as published (questions file, dataset json, jsonl, folder)")
    data.add_argument("--annotations", help="VQAv2/OK-VQA: the annotations file; other benchmarks: same as --data")
    data.add_argument("--images", help="the image root (default: the data file's folder)")
    data.add_argument("--split", help="the split to read (Karpathy captions, OCR-VQA, MMLU; default test)")
    data.add_argument("--subjects", help="MMLU subjects, comma-separated (default: all)")
    data.add_argument("--class-names", help="ImageNet subsets: a JSON file, a list or a mapping of class names")
    data.add_argument("--limit", type=int, help="only the first N items (MMLU: per subject; world: scenes)")
    data.add_argument("--skip-missing-images", action="store_true", help="count items whose image is missing, skip")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="anything mmgpt.load takes: tiny-world, a saved model directory, ...")
    model.add_argument("--adapter", help="a peft LoRA adapter directory to apply on the model")
    model.add_argument(
        "--device", help="cpu, cuda, cuda:1, ... (default: cuda:LOCAL_RANK when CUDA is there, else cpu)"
    )
    add_quantize(model)
    model.add_argument("--threads", type=int, help="CPU threads for torch (on a busy machine 1 can be faster)")
    runs = parser.add_argument_group("runs")
    runs.add_argument("--shots", default="0", help="in-context example counts, comma-separated (default %(default)s)")
    runs.add_argument("--trials", type=int, default=1, help="seeds per shot count: seed, seed+1, ... (default 1)")
    runs.add_argument("--seed", type=int, default=42, help="the first trial's seed (default %(default)s)")
    runs.add_argument(
        "--batch-size", type=int, help=f"prompts run together (default {BENCHMARK_BATCH}; world {WORLD_BATCH})"
    )
    runs.add_argument("--max-new-tokens", type=int, help="cap every answer's token budget (default: per kind)")
    runs.add_argument("--normalize", choices=("mean", "sum"), default="mean", help="a candidate's score over tokens")
    runs.add_argument("--no-meteor", action="store_true", help="captions: leave out METEOR (the slow Java scorer)")
    prompt = parser.add_argument_group("prompt")
    prompt.add_argument(
        "--prompt",
        choices=("auto", "fewshot", "chat"),
        default="auto",
        help="fewshot: OpenFlamingo's text; chat: the model's own template; auto (default): chat for tuned models "
        "(an adapter, or a prefix model) and open-ended sets, fewshot for Flamingo bases",
    )
    prompt.add_argument("--template", help="the prompt text instead of the format's ({question} {answer} {text})")
    prompt.add_argument("--suffix", help="the short-answer instruction of chat prompts ('' for none)")
    shots = parser.add_argument_group("in-context examples")
    shots.add_argument("--support", help="where examples come from: the benchmark's training split, same format")
    shots.add_argument("--support-images", help="the support set's image root")
    shots.add_argument("--support-split", help="the support file's split (Karpathy files: train, the default)")
    shots.add_argument("--shots-by", choices=("random", "rices"), default="random", help="example selection")
    shots.add_argument("--rices-clip", help="a CLIP directory for RICES features (default: the model's encoder)")
    shots.add_argument("--cache", help="where RICES features are cached (default OUT/features)")
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out", help="the run folder (default runs/eval/BENCHMARK-MODEL); world and score: a JSON file"
    )
    output.add_argument("--overwrite", action="store_true", help="start the runs afresh instead of resuming them")
    output.add_argument("--details", action="store_true", help="per-type breakdowns in the table")
    scoring = parser.add_argument_group("score")
    scoring.add_argument("--predictions", help="the predictions file, in the benchmark's result format")
    scoring.add_argument("--duplicates", choices=("error", "last"), default="error", help="an id predicted twice")
    scoring.add_argument("--missing", choices=("error", "zero", "skip"), default="error", help="items not predicted")
    world = parser.add_argument_group("the generated world")
    world.add_argument("--world", help="a folder written by `mmgpt world generate`")
    world.add_argument(
        "--prompt-format",
        choices=("template", "qa"),
        default="template",
        help="world: the instruction template (tuned models) or plain 'Question: ... Answer:' text (bases)",
    )


# ---------------------------------------------------------------------------------------------- helpers
def _reader_options(args: argparse.Namespace, bench: Any, *, support: bool = False) -> tuple[str, dict[str, Any]]:
    """(the data file, the reader's other arguments) from the flags, each checked to be one the reader takes."""
    import inspect

    accepted = set(inspect.signature(bench.read).parameters)
    data = args.data
    options: dict[str, Any] = {}
    if args.annotations is not None:
        if "annotations" in accepted:
            options["annotations"] = args.annotations
        elif data is None or data == args.annotations:
            data = args.annotations
        else:
            raise ValueError(f"{bench.name} reads one file: give it as --data (--annotations is for VQAv2/OK-VQA)")
    if data is None:
        raise ValueError(f"{bench.name} needs its file: --data FILE ({bench.summary})")
    wanted = {"split": args.split, "subjects": args.subjects and args.subjects.split(",")}
    if args.class_names:
        names = Path(args.class_names)
        wanted["class_names"] = json.loads(names.read_text() if names.is_file() else args.class_names)
    for name, value in wanted.items():
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"{bench.name} does not take --{name.replace('_', '-')}")
        options[name] = value
    return data, options


def _score_options(args: argparse.Namespace, bench: Any) -> dict[str, Any]:
    return {"metrics": ("BLEU", "ROUGE_L", "CIDEr")} if args.no_meteor and bench.kind == "caption" else {}


def _shot_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--shots takes counts separated by commas (0,4,8), got {text!r}") from None
    if not counts or min(counts) < 0:
        raise ValueError(f"--shots takes non-negative counts, got {text!r}")
    return counts


def _in_group(ctx: DistributedContext) -> tuple[Any, Any, str]:
    """(shard, barrier, device): under torchrun (WORLD_SIZE > 1) this process's share and the group's barrier, else
    a single shard; the device is ``--device``, or cuda:LOCAL_RANK when CUDA is there, else cpu."""
    from functools import partial

    from mmgpt.evaluate.records import Shard
    from mmgpt.train.distributed import barrier

    return Shard(ctx.rank, ctx.world_size), partial(barrier, ctx) if ctx.enabled else None, str(ctx.device)


def _load(args: argparse.Namespace, device: str):
    from mmgpt.load import load

    if not args.model:
        raise ValueError("--model is required: tiny-world, a saved model directory, or a preset with its files")
    return load(args.model, lora=args.adapter, device=device, quantize=args.quantize)


class _Bar:
    """A rich progress bar with the time left (the runner's Progress)."""

    def __init__(self, progress) -> None:
        self.progress, self.task = progress, None

    def start(self, label: str, total: int, done: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(label, total=total, completed=done)

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


# ---------------------------------------------------------------------------------------------- actions
def _evaluate(args: argparse.Namespace, console) -> int:
    from mmgpt.train.distributed import init_distributed, shutdown

    ctx = init_distributed(os.environ, device=args.device or "auto")
    try:
        return _evaluate_in(ctx, args, console)
    finally:
        shutdown(ctx)  # every rank leaves the group it joined, rather than tearing it down at the interpreter's exit


def _evaluate_in(ctx: DistributedContext, args: argparse.Namespace, console) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mmgpt.evaluate.benchmarks import benchmark
    from mmgpt.evaluate.prompts import SHORT_ANSWER, PromptSpec
    from mmgpt.evaluate.report import print_summary
    from mmgpt.evaluate.runner import EvalSettings, evaluate_benchmark

    bench = benchmark(args.benchmark)
    data, options = _reader_options(args, bench)
    shard, barrier, device = _in_group(ctx)
    model, tokenizer = _load(args, device)
    fmt = args.prompt
    if fmt == "auto":
        tuned = args.adapter or model.config.fusion != "cross_attention" or bench.kind == "open_ended"
        fmt = "chat" if tuned else "fewshot"
    spec = PromptSpec(fmt, args.template, SHORT_ANSWER if args.suffix is None else args.suffix)
    name = Path(args.adapter or args.model).name
    out = Path(args.out or f"runs/eval/{bench.name}-{name}")
    settings = EvalSettings(
        benchmark=bench.name,
        data=data,
        images=args.images,
        options=options,
        limit=args.limit,
        shots=_shot_counts(args.shots),
        trials=args.trials,
        seed=args.seed,
        prompt=spec,
        selection=args.shots_by,
        support=args.support,
        support_images=args.support_images,
        support_options={"split": args.support_split} if args.support_split else {},
        rices_clip=args.rices_clip,
        cache_dir=args.cache or str(out / "features"),
        batch_size=args.batch_size or BENCHMARK_BATCH,
        max_new_tokens=args.max_new_tokens,
        normalize=args.normalize,
        skip_missing_images=args.skip_missing_images,
        score_options=_score_options(args, bench),
        model_name=f"{args.model}" + (f" + {args.adapter}" if args.adapter else ""),
        overwrite=args.overwrite,
    )
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not shard.is_main) as progress:
        summary = evaluate_benchmark(
            model, tokenizer, settings, out, shard=shard, barrier=barrier, progress=_Bar(progress)
        )
    if summary is not None:
        print_summary(summary, console, details=args.details)
        console.print(f"wrote {out / 'metrics.json'} and the predictions under {out}", highlight=False)
    return 0


def _score(args: argparse.Namespace, console) -> int:
    from mmgpt.evaluate.benchmarks import benchmark
    from mmgpt.evaluate.predictions import read_predictions
    from mmgpt.evaluate.records import write_json

    if not args.target:
        raise ValueError("name the benchmark: mmgpt eval score BENCHMARK --predictions FILE --data FILE")
    if not args.predictions:
        raise ValueError("--predictions FILE is required (the predictions in the benchmark's result format)")
    bench = benchmark(args.target)
    if bench.score is None:
        raise ValueError(f"{bench.name} has no automatic scorer; its answers are judged by people or GPT-4")
    data, options = _reader_options(args, bench)
    items = bench.read(data, args.images, limit=args.limit, **options)
    read = read_predictions(args.predictions, bench, items, duplicates=args.duplicates, missing=args.missing)
    figures = bench.score(read.predictions, read.items, **_score_options(args, bench)).summary()
    report = {
        "benchmark": bench.name,
        "predictions": args.predictions,
        "items": len(items),
        "scored": len(read.items),
        "missing": len(read.missing),
        "duplicates": len(read.duplicates),
        "metrics": figures,
    }
    for figure, value in figures.items():
        console.print(f"{figure:<40} {100 * value:8.2f}", highlight=False)
    notes = [f"{len(read.missing)} missing ({args.missing})" if read.missing else "",
             f"{len(read.duplicates)} duplicate ids (last kept)" if read.duplicates else ""]  # fmt: skip
    console.print(f"{bench.name}: {len(read.items)} of {len(items)} items scored {' '.join(notes)}", highlight=False)
    if args.out:
        write_json(Path(args.out), report)
        console.print(f"wrote {args.out}", highlight=False)
    return 0


def _list(console) -> int:
    from rich.table import Table

    from mmgpt.evaluate.benchmarks import BENCHMARKS

    table = Table(title="benchmarks", title_justify="left")
    for column in ("name", "kind", "files and figures"):
        table.add_column(column)
    for bench in BENCHMARKS.values():
        table.add_row(bench.name, bench.kind, bench.summary)
    table.add_row(WORLD, "world", "a generated world's held-out scenes (--world DIR); accuracy per question kind")
    console.print(table)
    return 0


def _export(args: argparse.Namespace, console) -> int:
    from mmgpt.evaluate.world_files import write_world_benchmarks

    if not args.world or not args.out:
        raise ValueError("export-world needs --world DIR (a generated world) and --out DIR")
    files = write_world_benchmarks(args.world, args.out, limit=args.limit)
    for name, file in files.items():
        console.print(f"{name:<8} {file}", highlight=False)
    return 0


def _world(args: argparse.Namespace, console) -> int:
    from rich.progress import Progress

    from mmgpt.load import load
    from mmgpt.world.evaluate import evaluate_world
    from mmgpt.world.report import print_results
    from mmgpt.world.write import load_heldout

    if not args.world:
        raise ValueError("the world benchmark needs --world DIR (a folder of `mmgpt world generate`)")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    heldout = load_heldout(args.world)
    model, tokenizer = load(args.model, lora=args.adapter, device=args.device or "cpu")
    if heldout.image_size != model.image_transform().size:
        console.print(
            f"note: the world's images are {heldout.image_size} px and the model's ViT takes "
            f"{model.image_transform().size} px; they are resized",
            highlight=False,
        )
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("generating", total=None)
        results = evaluate_world(
            model,
            tokenizer,
            heldout,
            limit=args.limit,
            batch_size=args.batch_size or WORLD_BATCH,
            max_new_tokens=args.max_new_tokens,
            prompt_format=args.prompt_format,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    name = Path(args.adapter).name if args.adapter else Path(args.model).name
    print_results(
        {name: results}, console, title=f"{args.world}: {results['items']} prompts in {results['seconds']:.1f} s"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"wrote {args.out}", highlight=False)
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(soft_wrap=True)  # messages carry paths: never break them
    action = args.benchmark or (WORLD if args.world else None)
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        if action is None:
            raise ValueError("name a benchmark (see `mmgpt eval list`), or `score BENCHMARK`, or pass --world DIR")
        if action == LIST:
            return _list(console)
        if action == EXPORT:
            return _export(args, console)
        if action == WORLD:
            return _world(args, console)
        if action == SCORE:
            return _score(args, console)
        return _evaluate(args, console)
    except (OSError, ValueError, KeyError, ImportError, RuntimeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        console.print(f"error: {message}", markup=False, highlight=False)
        return 2
