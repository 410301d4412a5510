"""Options several verbs share, written once (without importing torch: ``mmgpt --help`` stays instant)."""

from __future__ import annotations

import argparse

# mmgpt.model.quantize.QUANTIZATIONS (tests/model/test_quantize.py checks they agree)
QUANTIZE_CHOICES = ("int8", "nf4")


def add_quantize(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="the language model in 8 or 4 bits (bitsandbytes: pip install 'mmgpt[quant]')",
    )
