"""docs/api.md is generated from the docstrings and must match them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "scripts" / "gen_api.py"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_api_reference_is_up_to_date() -> None:
    gen = _generator()
    assert gen.OUTPUT.read_text() == gen.render(), "docs/api.md is stale: run python docs/scripts/gen_api.py"


def test_api_reference_covers_every_public_name() -> None:
    import rnndrop
    import rnndrop.interop
    import rnndrop.study

    text = _generator().render()
    for module in (rnndrop, rnndrop.interop, rnndrop.study):
        for name in module.__all__:
            if name != "__version__":
                assert f"`{module.__name__}.{name}`" in text or f"`rnndrop.{name}`" in text, name
    assert f"rnndrop {rnndrop.__version__}." in text
