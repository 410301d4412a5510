"""run a controlled experiment on the embedded default (paper-findings: the paper's findings in miniature)"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=["paper-findings"])
    parser.add_argument("--out", type=Path, default=Path("build/paper-findings"))
    parser.add_argument("--steps", type=int, default=600, help="LoRA tuning steps per variant (default %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate (default %(default)s)")
    parser.add_argument("--eval-scenes", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--base", type=Path, default=None, help="a saved tiny base to tune (default: the shipped tiny-world model)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> int:
    import json

    from mmgpt.demo import DemoConfig
    from mmgpt.experiments import paper_findings

    demo = DemoConfig(
        out=args.out, seed=args.seed, base=args.base, steps=args.steps, lr=args.lr, eval_scenes=args.eval_scenes
    )
    results = paper_findings.run(demo)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
