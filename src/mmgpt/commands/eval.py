"""evaluate a model on the held-out scenes of a generated world (accuracy per question kind, descriptions, lengths)"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model directory saved by mmgpt (mmgpt.yaml + weights)")
    parser.add_argument("--adapter", help="a peft LoRA adapter directory to apply on the model")
    parser.add_argument("--world", required=True, help="a folder written by `mmgpt world generate`")
    parser.add_argument("--out", help="write the metrics and every response to this JSON file")
    parser.add_argument("--limit", type=int, help="evaluate only the first N held-out scenes and language tasks")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts generated together (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, help="cap every answer's token budget (a quick look)")
    parser.add_argument(
        "--prompt-format",
        choices=("template", "qa"),
        default="template",
        help="template: the instruction template (tuned models); qa: plain 'Question: ... Answer:' text, the "
        "pretraining corpus's form, to see what a pretrained base knows (default %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default %(default)s)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads for torch (on a busy machine 1 can be several times faster)"
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from mmgpt.load import load
    from mmgpt.world.evaluate import evaluate_world
    from mmgpt.world.report import print_results
    from mmgpt.world.write import load_heldout

    console = Console()
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    if args.limit is not None and args.limit < 1:
        console.print(f"error: --limit must be at least 1, got {args.limit}", highlight=False)
        return 2
    try:
        heldout = load_heldout(args.world)
        model, tokenizer = load(args.model, lora=args.adapter, device=args.device)
    except (FileNotFoundError, ValueError) as error:
        console.print(f"error: {error}", markup=False, highlight=False)
        return 2
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
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            prompt_format=args.prompt_format,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
        )
    name = Path(args.adapter).name if args.adapter else Path(args.model).name
    title = f"{args.world}: {results['items']} prompts in {results['seconds']:.1f} s"
    print_results({name: results}, console, title=title)  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        console.print(f"wrote {args.out}", highlight=False)
    return 0
