"""The ``rnndrop`` console script. Subcommands use only rnndrop's public API."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from .._version import __version__


def build_parser() -> argparse.ArgumentParser:
    from . import build_kernels, compare, demo

    parser = argparse.ArgumentParser(prog="rnndrop", description="Recurrent networks with every kind of dropout.")
    parser.add_argument("--version", action="version", version=f"rnndrop {__version__}",
                        help="print rnndrop's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compare.add_parser(sub)
    demo.add_parser(sub)
    build_kernels.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)
