"""The ```python blocks of docs/migration.md and docs/ecosystem.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("migration.md", "ecosystem.md")


def _blocks() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for i, code in enumerate(re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)):
            out.append((f"{page}[{i}]", code))
    return out


BLOCKS = _blocks()


def test_pages_have_runnable_examples() -> None:
    assert {name.split("[")[0] for name, _ in BLOCKS} == set(PAGES)


@pytest.mark.parametrize("name,code", BLOCKS, ids=[name for name, _ in BLOCKS])
def test_snippet_runs(name: str, code: str) -> None:
    if "import keras" in code:
        pytest.importorskip("keras")
    exec(compile(code, name, "exec"), {"__name__": f"snippet_{name}"})
