"""inspect training data"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")
    check = verbs.add_parser("check", help="stream every source of a data config and report what training gets")
    check.add_argument("config", help="a data config YAML, or a preset name (multimodal-gpt)")
    check.add_argument("--root", help="data root that relative paths are resolved against")
    check.add_argument("--tokenizer", help="tokenizer folder (overrides 'tokenizer:' of the config)")
    check.add_argument("--decode-images", action="store_true", help="also decode every image once (slow)")
    check.set_defaults(run=run_check)


def run(args: argparse.Namespace) -> int:
    return args.run(args)


def run_check(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rich.console import Console

    from mmgpt.data.check import check_with_progress, print_report
    from mmgpt.data.config import load_data_config
    from mmgpt.data.tokenize import load_tokenizer

    console = Console()
    try:
        cfg = load_data_config(args.config)
        cfg = replace(cfg, root=args.root or cfg.root, tokenizer=args.tokenizer or cfg.tokenizer)
        if cfg.tokenizer is None:
            raise ValueError("no tokenizer: set 'tokenizer:' in the config or pass --tokenizer DIR")
        tokenizer = load_tokenizer(cfg.tokenizer)
    except ValueError as error:
        console.print(f"error: {error}", markup=False, highlight=False)
        return 2
    report = check_with_progress(cfg, tokenizer, console=console, decode_images=args.decode_images)
    print_report(report, console)
    return 0 if report.ok else 1
