"""The sdist and the wheel: valid metadata (``twine check``), the licence shipped, what they contain."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from dist_support import ROOT

import rnndrop
from rnndrop._kernels import loader


def _metadata(dists) -> email.message.Message:
    with zipfile.ZipFile(dists.wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_string(whl.read(name).decode("utf-8"))


def test_twine_check_passes(dists) -> None:
    pytest.importorskip("twine", reason="needs twine (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dists.sdist), str(dists.wheel)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2


def test_the_wheel_is_built_from_the_sdist(dists) -> None:
    assert "Building wheel from sdist" in dists.log, dists.log[-2000:]


def test_metadata_is_complete(dists) -> None:
    meta = _metadata(dists)
    assert meta["Name"] == "rnndrop" and meta["Version"] == rnndrop.__version__
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3" in classifiers and "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # PEP 639: the expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
    assert urls["Homepage"] == "https://github.com/rnndrop/rnndrop"
    assert "dropout" in meta["Keywords"] and "lstm" in meta["Keywords"]
    requires = meta.get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert any(r.startswith("ninja") for r in core), "torch.utils.cpp_extension needs ninja for the first-use build"
    torch_req = next(r for r in core if r.startswith("torch"))
    assert "==" not in torch_req  # users bring their own torch build
    assert meta["Description-Content-Type"] == "text/markdown"


def test_the_long_description_has_only_absolute_links(dists) -> None:
    # On a package index the README is rendered out of the repository: relative links would break.
    text = _metadata(dists).get_payload()
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    assert links, "the README links to the docs"
    relative = [u for u in links if not re.match(r"https?://|#|mailto:", u)]
    assert not relative, f"relative links in README.md: {relative}"
    assert (ROOT / "README.md").read_text(encoding="utf-8").strip() in text.replace("\r\n", "\n")


def test_the_licence_ships_in_both(dists) -> None:
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "rnndrop developers" in licence
    with zipfile.ZipFile(dists.wheel) as whl:
        assert whl.read(f"rnndrop-{rnndrop.__version__}.dist-info/licenses/LICENSE").decode() == licence
    with tarfile.open(dists.sdist) as sdist:
        top = sdist.getnames()[0].split("/")[0]
        assert sdist.extractfile(f"{top}/LICENSE").read().decode() == licence


def test_contents(dists) -> None:
    with zipfile.ZipFile(dists.wheel) as whl:
        names = whl.namelist()
    package = Path(rnndrop.__file__).parent
    csrc = [p.relative_to(package.parent).as_posix() for p in (package / "_kernels" / "csrc").rglob("*") if p.is_file()]
    sources = [Path(s).resolve().relative_to(package.parent.resolve()).as_posix() for s in loader.SOURCES]
    for needed in (*csrc, *sources, "rnndrop/py.typed", "rnndrop/datasets/japanese_vowels.npz",
                   "rnndrop/cli/build_kernels.py"):
        assert needed in names  # the first-use build compiles what the wheel ships
    assert not [n for n in names if n.endswith((".so", ".o", ".ninja")) or "_build/" in n]  # pure Python + sources
    assert not [n for n in names if n.startswith("tests/")]
    with tarfile.open(dists.sdist) as sdist:
        snames = sdist.getnames()
    top = snames[0].split("/")[0]
    for needed in ("pyproject.toml", "README.md", "LICENSE", "src/rnndrop/_kernels/csrc/cpu/rnn.cpp",
                   "src/rnndrop/_version.py"):
        assert f"{top}/{needed}" in snames
    assert not [n for n in snames if n.endswith((".so", ".o"))]
    assert not [n for n in snames if "/tests/" in n]  # pruned (MANIFEST.in): they need the whole repository
