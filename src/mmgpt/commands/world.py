"""generate the synthetic visual world (images, task data in the published formats, tokenizer, held-out scenes)"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from mmgpt.world.config import WorldConfig  # light: the CLI shows its defaults

    defaults = WorldConfig()
    verbs = parser.add_subparsers(dest="world_verb", required=True, metavar="WORLD_VERB")
    generate = verbs.add_parser("generate", help="write a world to a folder (see docs/world.md)")
    generate.add_argument("out", help="output folder (created; existing files are overwritten)")
    generate.add_argument("--seed", type=int, default=defaults.seed, help="world seed (default %(default)s)")
    generate.add_argument("--scenes", type=int, default=defaults.scenes, help="training scenes (default %(default)s)")
    generate.add_argument("--heldout", type=int, default=defaults.heldout, help="evaluation scenes (%(default)s)")
    generate.add_argument("--language", type=int, default=defaults.language, help="language-only tasks (%(default)s)")
    generate.add_argument(
        "--heldout-language", type=int, default=defaults.heldout_language, help="held-out language tasks (%(default)s)"
    )
    generate.add_argument("--image-size", type=int, default=defaults.image_size, help="pixels (default %(default)s)")
    generate.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="tokenizer vocabulary cap")
    generate.set_defaults(run=run_generate)
    probe = verbs.add_parser(
        "probe",
        help="per grid cell: what a model's ViT patches and perceiver latents hold (linear probes), and what the "
        "whole model reads (grid captions)",
    )
    probe.add_argument("model", help="a model directory saved by mmgpt (e.g. src/mmgpt/assets/tiny-world)")
    probe.add_argument("--scenes", type=int, default=2000, help="scenes probed, 80%% fit / 20%% scored (%(default)s)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the probe's scenes (default %(default)s)")
    probe.add_argument("--out", default=None, help="also write the figures to this JSON file")
    probe.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    probe.set_defaults(run=run_probe)


def run(args: argparse.Namespace) -> int:
    return args.run(args)


def run_generate(args: argparse.Namespace) -> int:
    import time
    from dataclasses import fields

    from rich.console import Console
    from rich.progress import Progress

    from mmgpt.world.config import WorldConfig
    from mmgpt.world.write import DATA_CONFIG, DATA_CONFIG_ONE_WORD, generate_world

    console = Console()
    try:
        cfg = WorldConfig(**{f.name: getattr(args, f.name) for f in fields(WorldConfig)})
    except ValueError as error:
        console.print(f"error: {error}", markup=False, highlight=False)
        return 2
    start = time.perf_counter()
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("images", total=2 * cfg.scenes + cfg.heldout)
        try:
            manifest = generate_world(args.out, cfg, on_progress=lambda n: progress.advance(bar, n))
        except ValueError as error:
            console.print(f"error: {error}", markup=False, highlight=False)
            return 2
    counts = manifest["counts"]
    console.print(
        f"wrote a world to {args.out} in {time.perf_counter() - start:.1f} s: {counts['scenes']} scenes "
        f"({counts['scenes_with_word']} with a word), {counts['heldout_scenes']} held-out scenes, "
        f"{counts['language_alpaca'] + counts['language_dolly']} language-only tasks",
        highlight=False,
    )
    console.print(
        f"train with {args.out}/{DATA_CONFIG} (the paper's mix) or {args.out}/{DATA_CONFIG_ONE_WORD} (+ one-word "
        f"VQA data); check with `mmgpt data check {args.out}/{DATA_CONFIG}`",
        highlight=False,
    )
    return 0


def run_probe(args: argparse.Namespace) -> int:
    import json
    import time
    from pathlib import Path

    import torch
    from rich.console import Console
    from rich.table import Table

    from mmgpt.load import load
    from mmgpt.world.probe import probe_cells, value_token_ids

    console = Console()
    if args.scenes < 50:
        console.print(f"error: --scenes {args.scenes} is too few to fit and score a probe; use 50 or more")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer = load(args.model)
    try:
        value_token_ids(tokenizer)
    except ValueError as error:
        console.print(f"not reading grid captions: {error}", markup=False, highlight=False)
        tokenizer = None
    figures = probe_cells(model, tokenizer, scenes=args.scenes, seed=args.seed)
    table = Table(title=f"{args.model}: per-cell probes, {args.scenes} scenes ({time.perf_counter() - start:.0f} s)")
    table.add_column("attribute")
    table.add_column("features")
    table.add_column("mean", justify="right")
    table.add_column("each cell, % (reading order)", justify="right")
    for attribute in ("kind", "colour"):
        for name, by in figures["accuracy"].items():
            shape = figures["features"].get(name)
            what = f"{name} {shape[0]} x {shape[1]}" if shape else "read by the model"
            cells, mean = by[attribute], figures["mean"][name][attribute]
            table.add_row(attribute, what, f"{mean:.1%}", " ".join(f"{100 * a:.0f}" for a in cells))
    console.print(table)
    console.print(
        "[dim]patches, latents: linear probes, scored on the held-out fifth of the scenes whose cell holds a shape; a "
        "cell the patches hold and the latents do not is lost in the perceiver. read by the model: the whole model "
        "reading each scene's grid caption, its best-scored value of the attribute at each shape (all scenes).[/dim]"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1))
        console.print(f"wrote {args.out}", highlight=False)
    return 0
