"""The ``rnndrop`` command line: ``--version``, and help text on every subcommand and flag."""

from __future__ import annotations

import argparse

import pytest

import rnndrop
from rnndrop.cli import build_parser, main


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rnndrop {rnndrop.__version__}"


def _parsers(parser: argparse.ArgumentParser, name: str = "rnndrop"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {sub_name}")


def test_every_flag_and_subcommand_has_help() -> None:
    missing = []
    for name, parser in _parsers(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {c.dest}" for c in action._choices_actions if not c.help]
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"no help text: {missing}"
    names = [n for n, _ in _parsers(build_parser())]
    assert {"rnndrop compare", "rnndrop demo", "rnndrop build-kernels"} <= set(names)
