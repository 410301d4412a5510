"""fine-tune with LoRA (MultiModal-GPT's recipe) from a training config; runs under torchrun too"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="a training config YAML (see docs/training.md)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. optimizer.lr=1e-4 data.batch_size=2")
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue the run: from the latest checkpoint of its run_dir, or from CHECKPOINT",
    )


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from mmgpt.config import ConfigError
    from mmgpt.data.sources import MalformedRowError, SourceError
    from mmgpt.train.config import load_train_config
    from mmgpt.train.run import train
    from mmgpt.train.trainer import TrainingError

    try:
        cfg = load_train_config(args.config, args.overrides)
        result = train(cfg, env=dict(os.environ), resume=args.resume)
    except (ConfigError, FileNotFoundError, TrainingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (MalformedRowError, SourceError) as error:
        # Bad data (a malformed row, a broken image, an unreadable file): the one message `mmgpt data check` prints.
        print(f"error: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: {result.steps} steps; trained weights in {result.output}")
    return 0
