"""docs/dropout.md and its figure script stay true to the code."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import rnndrop

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "dropout.md"
SCRIPT = ROOT / "docs" / "scripts" / "mask_patterns.py"


def load_script():
    spec = importlib.util.spec_from_file_location("mask_patterns", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figure_panels_have_the_documented_structure() -> None:
    script = load_script()
    panels = list(script.mask_patterns().values())
    steps, feats, p = script.STEPS, script.FEATURES, script.P
    scale = np.float32(1 / (1 - p))
    per_element, whole_steps, channels, input_mask, recurrent, zone = panels
    for mask in panels[:5]:
        assert set(np.unique(mask)) <= {0.0, scale}
    assert set(np.unique(zone)) <= {0.0, 1.0}
    assert per_element.shape == (steps, feats)
    assert (whole_steps == whole_steps[:, :1]).all(), "noise_shape (None, None, 1): rows constant"
    for locked in (channels, input_mask, recurrent):
        assert (locked == locked[:1]).all(), "time-locked: every step the same"
    assert recurrent.shape == (steps, 4 * feats)
    # Per-step masks do change over time (seeded, so this is a fixed fact of the figure).
    assert not (per_element == per_element[:1]).all() and not (zone == zone[:1]).all()


def test_figure_script_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = load_script().draw(tmp_path / "m.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) < 200_000
    assert (ROOT / "docs" / "mask_patterns.png").exists(), "the committed figure the page shows"


def test_page_names_every_technique_and_existing_tests() -> None:
    text = PAGE.read_text(encoding="utf-8")
    for name in ("Dropout", "SpatialDropout1d", "SpatialDropout2d", "SpatialDropout3d", "LockedDropout",
                 "EmbeddingDropout", "mc_predict", "mc_dropout"):
        assert name in text and hasattr(rnndrop, name)
    params = inspect.signature(rnndrop.LSTM).parameters
    for option in ("input_dropout", "recurrent_dropout", "gate_masks", "weight_dropout", "zoneout_hidden",
                   "zoneout_cell", "candidate_dropout", "mask_scope", "locked_dropout"):
        assert f"{option}=" in text, option
        assert option in params, f"the page documents LSTM({option}=...) but LSTM has no such argument"
    defined = {m for f in (ROOT / "tests").rglob("test_*.py") for m in re.findall(r"def (test_\w+)", f.read_text())}
    cited = set(re.findall(r"\b(test_\w+)\b(?!\.py)", text))
    assert len(cited) >= 20, "the page cites the tests that pin each technique"
    missing = sorted(cited - defined)
    assert not missing, f"docs/dropout.md cites tests that do not exist: {missing}"
