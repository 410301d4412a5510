"""run the main job on the embedded default: MultiModal-GPT's recipe on the tiny pretrained model, in minutes"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgpt.demo import DemoConfig


def add_recipe_arguments(parser: argparse.ArgumentParser, *, out: Path) -> None:
    """The tuning recipe's arguments; defaults are DemoConfig's (`mmgpt experiment` declares its own, whose
    ``--out`` and ``--steps`` defaults depend on the experiment)."""
    default = DemoConfig()
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument(
        "--base", type=Path, default=None, help="a saved tiny base to tune (default: the shipped tiny-world model)"
    )
    parser.add_argument("--out", type=Path, default=out, help="where the world and the runs go (default %(default)s)")
    parser.add_argument("--steps", type=int, default=default.steps, help="LoRA tuning steps (default %(default)s)")
    parser.add_argument("--lr", type=float, default=default.lr, help="LoRA learning rate (default %(default)s)")
    parser.add_argument(
        "--eval-scenes", type=int, default=default.eval_scenes, help="held-out scenes evaluated (default %(default)s)"
    )


def demo_config(args: argparse.Namespace, **more) -> DemoConfig:
    """The DemoConfig of the arguments ``add_recipe_arguments`` added (``more``: other fields)."""
    return DemoConfig(
        out=args.out, seed=args.seed, base=args.base, steps=args.steps, lr=args.lr, eval_scenes=args.eval_scenes, **more
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe_arguments(parser, out=DemoConfig().out)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")


def run(args: argparse.Namespace) -> int:
    from mmgpt.demo import run_demo

    return run_demo(demo_config(args, threads=args.threads))
