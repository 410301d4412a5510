"""`mmgpt <verb>`: each verb is a module of `mmgpt.commands`; the work lives in the library."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import mmgpt.commands


def verb_modules() -> dict[str, object]:
    """Every module of `mmgpt.commands`, by verb (the module name; a trailing underscore is dropped), but the private
    ones (a leading underscore: what several verbs share)."""
    found = pkgutil.iter_modules(mmgpt.commands.__path__)
    return {
        info.name.rstrip("_"): importlib.import_module(f"mmgpt.commands.{info.name}")
        for info in sorted(found, key=lambda info: info.name)
        if not info.name.startswith("_")
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgpt", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module in verb_modules().items():
        summary = (module.__doc__ or "").strip().splitlines()[0]
        sub = verbs.add_parser(verb, help=summary, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    return args.func(args)
