"""run the main job on the embedded default"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from mmgpt.demo import run_demo

    return run_demo(seed=args.seed)
