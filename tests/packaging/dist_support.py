"""Helpers of the packaging tests (the ``dists`` fixture is in conftest.py)."""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path
    log: str


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without rnndrop's own variables (a user's shell does not set them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RNNDROP_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def site_packages() -> Path:
    """This interpreter's site-packages (torch, numpy, setuptools for the venvs under test)."""
    return Path(sysconfig.get_paths()["purelib"])
