"""The ``rnndrop`` console script. Subcommands use only rnndrop's public API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    from . import compare, demo

    parser = argparse.ArgumentParser(prog="rnndrop", description="Recurrent networks with every kind of dropout.")
    sub = parser.add_subparsers(dest="command", required=True)
    compare.add_parser(sub)
    demo.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)
