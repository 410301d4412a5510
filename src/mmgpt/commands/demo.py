"""run the main job on the embedded default: MultiModal-GPT's recipe on the tiny pretrained model, in minutes"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--base", type=Path, default=None, help="a saved tiny base to tune (default: the shipped tiny-world model)"
    )
    parser.add_argument("--out", type=Path, default=Path("build/demo"), help="where the world and the run go")
    parser.add_argument("--steps", type=int, default=600, help="LoRA tuning steps (default %(default)s)")
    parser.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate (default %(default)s)")
    parser.add_argument("--eval-scenes", type=int, default=40, help="held-out scenes evaluated before and after")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")


def run(args: argparse.Namespace) -> int:
    from mmgpt.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            out=args.out,
            seed=args.seed,
            base=args.base,
            steps=args.steps,
            lr=args.lr,
            eval_scenes=args.eval_scenes,
            threads=args.threads,
        )
    )
