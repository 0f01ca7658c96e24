"""Every ```python block of README.md and docs/*.md runs as written, or is marked as a fragment.

The convention (for whoever writes docs):

* A block fenced ```python is a complete program: it runs here on its own, in a fresh namespace,
  exactly as a reader would paste it (so it makes its own imports and data).
* A block that cannot run on its own (an excerpt of an example, a sketch with the reader's names)
  is a *fragment*: the line right before its fence is ``<!-- fragment: why -->`` (invisible on
  the rendered page). Fragments are still compiled, so their syntax stays valid.
* Keras blocks set ``KERAS_BACKEND`` (Keras 3 defaults to TensorFlow) and are skipped, with the
  reason, where keras is not installed.
* Other Python-like fences (```py, ```pycon, ...) are not allowed: the two cases above are enough.
  Signatures in the generated docs/api.md are ```text blocks, not code (docs/scripts/gen_api.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
FRAGMENT = re.compile(r"^<!-- fragment: .+ -->$")
PYTHON_LIKE = {"py", "python3", "pycon", "ipython", "py3"}


def _blocks() -> list[tuple[str, str, str, bool]]:
    """``(id, language, code, is_fragment)`` of every fenced block."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            previous = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            rel = page.relative_to(ROOT).as_posix()
            out.append((f"{rel}:{line}", m.group("lang"), m.group("code"), bool(FRAGMENT.match(previous.strip()))))
    return out


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b[1] == "python"]
RUNNABLE = [b for b in PYTHON if not b[3]]
FRAGMENTS = [b for b in PYTHON if b[3]]


def test_the_convention_is_followed() -> None:
    assert {b[0].split(":")[0] for b in RUNNABLE} >= {"README.md", "docs/migration.md", "docs/ecosystem.md"}
    odd = [name for name, lang, _, _ in BLOCKS if lang in PYTHON_LIKE]
    assert not odd, f"use ```python (runs) or a fragment marker, not another fence: {odd}"
    marked_elsewhere = [name for name, lang, _, fragment in BLOCKS if fragment and lang != "python"]
    assert not marked_elsewhere, f"only python blocks are fragments: {marked_elsewhere}"


@pytest.mark.parametrize("name,code", [(b[0], b[2]) for b in RUNNABLE], ids=[b[0] for b in RUNNABLE])
def test_block_runs(name: str, code: str, monkeypatch, tmp_path) -> None:
    if re.search(r"^\s*import keras|^\s*from keras", code, re.M):
        pytest.importorskip("keras", reason="keras is not installed (a test extra); this block needs it")
        assert "KERAS_BACKEND" in code, f"{name}: a Keras block must choose its backend (KERAS_BACKEND=torch)"
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    exec(compile(code, name, "exec"), {"__name__": "__main__"})


@pytest.mark.parametrize("name,code", [(b[0], b[2]) for b in FRAGMENTS], ids=[b[0] for b in FRAGMENTS])
def test_fragment_compiles(name: str, code: str) -> None:
    compile(code, name, "exec")
