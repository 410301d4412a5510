"""pretrain (OpenFlamingo style: perceiver, gated blocks and more; or a tiny model from scratch)"""

from __future__ import annotations

import argparse

from mmgpt.commands import train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`mmgpt train` with ``trainable: openflamingo`` unless the config trains more; LoRA is refused here."""
    import sys

    import yaml

    from mmgpt.config import ConfigError
    from mmgpt.train.config import parse_overrides

    try:
        with open(args.config) as f:
            raw = yaml.safe_load(f) or {}
        trainable = parse_overrides(args.overrides).get("trainable", raw.get("trainable"))
    except (OSError, yaml.YAMLError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trainable is None:
        args.overrides = [*args.overrides, "trainable=openflamingo"]
    elif trainable == "lora":
        print(
            "error: pretraining trains the model itself; for LoRA instruction tuning use `mmgpt train`", file=sys.stderr
        )
        return 2
    return train.run(args)
