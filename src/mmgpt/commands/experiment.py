"""run a controlled experiment on the embedded default: paper-findings, or systems (three recipes on one world)

``paper-findings``: MultiModal-GPT's findings in miniature (``experiments/paper_findings.py``). ``systems``:
MultiModal-GPT, MiniGPT-4 and mPLUG-Owl, each its paper's recipe from the same tiny parts, on one world, with the
findings of the two prefix papers (``experiments/systems.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgpt.commands.demo import demo_config
from mmgpt.demo import DemoConfig
from mmgpt.experiments.recipes import SystemsConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=["paper-findings", "systems"])
    demo = DemoConfig()
    parser.add_argument("--seed", type=int, default=demo.seed)
    parser.add_argument(
        "--base", type=Path, default=None, help="a saved tiny Flamingo to start from (default: the shipped tiny-world)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the world and the runs go (default build/NAME)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"optimiser steps per variant (default {demo.steps}); systems: per system, its stages together "
        f"(default {SystemsConfig().steps})",
    )
    parser.add_argument("--lr", type=float, default=demo.lr, help="paper-findings' LoRA learning rate (%(default)s)")
    parser.add_argument(
        "--eval-scenes", type=int, default=demo.eval_scenes, help="held-out scenes evaluated (default %(default)s)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    systems = parser.add_argument_group("systems")
    default = SystemsConfig()
    systems.add_argument(
        "--findings",
        action=argparse.BooleanOptionalAction,
        default=default.findings,
        help="also MiniGPT-4 after stage 1 only and mPLUG-Owl's stage 2 without language-only data (default on)",
    )
    systems.add_argument("--batch-size", type=int, default=default.batch_size, help="(default %(default)s)")
    systems.add_argument(
        "--scenes", type=int, default=default.scenes, help="training scenes of the world (default %(default)s)"
    )
    systems.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")


def systems_config(args: argparse.Namespace) -> SystemsConfig:
    """``--steps`` is each system's budget (its stages together); ``--lr`` belongs to paper-findings (each stage of
    the systems has its own, in ``systems.SYSTEMS``)."""
    return SystemsConfig(
        out=args.out or Path("build/systems"),
        seed=args.seed,
        steps=args.steps or SystemsConfig().steps,
        batch_size=args.batch_size,
        scenes=args.scenes,
        eval_scenes=args.eval_scenes,
        findings=args.findings,
        base=args.base,
        threads=args.threads,
    )


def run(args: argparse.Namespace) -> int:
    import json

    if args.name == "systems":
        from mmgpt.experiments import systems

        results = systems.run(systems_config(args))
    else:
        from mmgpt.experiments import paper_findings

        args.out = args.out or Path("build/paper-findings")
        args.steps = args.steps or DemoConfig().steps
        results = paper_findings.run(demo_config(args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
