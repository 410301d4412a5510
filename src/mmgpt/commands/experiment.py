"""run a controlled experiment on the embedded default (paper-findings: the paper's findings in miniature)"""

from __future__ import annotations

import argparse
from pathlib import Path

from mmgpt.commands.demo import add_recipe_arguments, demo_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=["paper-findings"])
    add_recipe_arguments(parser, out=Path("build/paper-findings"))
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")


def run(args: argparse.Namespace) -> int:
    import json

    from mmgpt.experiments import paper_findings

    results = paper_findings.run(demo_config(args))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0
