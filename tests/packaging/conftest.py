"""The distributions under test: an sdist and a wheel built from this checkout, once per session.

``python -m build --no-isolation``: the build backend needs only setuptools, already installed, so no
build environment is created (one could resolve an unpinned torch). Without options ``build`` makes
the sdist first and then the wheel *from the sdist*, so a working wheel proves the sdist complete.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from dist_support import ROOT, Dists, clean_env


@pytest.fixture(scope="session")
def dists(tmp_path_factory) -> Dists:
    pytest.importorskip("build", reason="the packaging tests need `build` (pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, env=clean_env(), timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(sdist, wheel, result.stdout + result.stderr)
