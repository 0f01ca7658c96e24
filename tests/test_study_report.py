"""docs/scripts/study.py: the compare commands it runs and the report it writes, on generated run records."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study", ROOT / "docs" / "scripts" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_commands_fetch_data_only_when_asked(study, tmp_path):
    argv = study.compare_argv("fsdd", tmp_path, tiny=False, data_dir=None, download=False, jobs=None)
    assert "--download" not in argv and argv[:3] == ["compare", "--dataset", "fsdd"]
    assert argv[argv.index("--seeds") + 1] == "5" and argv[argv.index("--out") + 1] == str(tmp_path / "fsdd")
    assert set(argv[argv.index("--strategies") + 1].split(",")) == set(study.STRATEGIES)
    argv = study.compare_argv("shakespeare", tmp_path, tiny=True, data_dir="/d", download=True, jobs=2)
    assert argv[-5:] == ["--data-dir", "/d", "--download", "--jobs", "2"]
    assert argv[len(argv) - 1 - argv[::-1].index("--seeds") + 1] == "2"  # --tiny's seeds come last and win
    assert "--data-dir" not in study.compare_argv("japanese_vowels", tmp_path, tiny=False, data_dir="/d",
                                                  download=True, jobs=None)


def _write_task(folder: Path, effects: dict[str, float], seeds: int, noise: float, metric: str = "accuracy"):
    rng = np.random.default_rng(0)
    (folder / "runs").mkdir(parents=True)
    config = {"data": "toy", "init": "keras", "lr": 0.003, "clip_norm": 0.0, "schedule": "cosine", "refit": True,
              "epochs": 60, "patience": 60, "batch_size": 32, "hidden_size": 64, "mc_samples": 20,
              "val_fraction": 0.2}
    (folder / "config.json").write_text(json.dumps(config))
    for seed in range(seeds):
        base = 0.9 + rng.normal(0, 0.02)
        values = {name: base + effect + (rng.normal(0, noise) if name != "none" else 0.0)
                  for name, effect in effects.items()}
        values["keras_input"] = values["noise_shape"]  # the same runs, as on a one-layer model
        for name, value in values.items():
            m = {metric: value, "nll": 0.1, "ece": 0.02}
            (folder / "runs" / f"{name}-seed{seed}.json").write_text(json.dumps({
                "strategy": name, "seed": seed, "rate": 0.25, "test": m, "test_mc": m, "best_epoch": 3,
                "epochs_run": 5, "train_seconds": 1.0, "eval_seconds": 0.5, "backend": "fused"}))


def test_report_tables_verdicts_and_answer(study, tmp_path):
    effects = dict.fromkeys(study.STRATEGIES, 0.0)
    effects.update(recurrent=0.05, weight_dropout=-0.05)
    _write_task(tmp_path / "results" / "japanese_vowels", effects, seeds=8, noise=0.004)
    out = tmp_path / "docs" / "study.md"
    (tmp_path / "docs").mkdir()
    assert study.report(tmp_path / "results", out, tmp_path / "docs" / "study") == 0
    text = out.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    assert "| better |" in rows["`recurrent`"] and "| worse |" in rows["`weight_dropout`"]
    assert "| no difference shown |" in rows["`keras_both`"]
    assert "**Not run yet:** fsdd, shakespeare" in text
    assert "measurably better than no dropout: `recurrent`" in text and "measurably worse: `weight_dropout`" in text
    contrast = next(line for line in text.splitlines() if line.startswith("| `noise_shape` − `keras_input`"))
    assert "equal in every pair" in contrast
    assert (tmp_path / "docs" / "study" / "differences.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "docs" / "study" / "results.json").read_text())
    assert data["missing"] == ["fsdd", "shakespeare"] and len(data["tasks"][0]["runs"]) == 8 * len(effects)
    assert "](study/differences.png)" in text


def test_lower_is_better_for_bits_per_char(study, tmp_path):
    effects = dict.fromkeys(study.STRATEGIES, 0.0)
    effects.update(zoneout=-0.05)  # fewer bits per character: better
    _write_task(tmp_path / "results" / "shakespeare", effects, seeds=4, noise=0.002, metric="bits_per_char")
    (tmp_path / "docs").mkdir()
    study.report(tmp_path / "results", tmp_path / "docs" / "study.md", tmp_path / "docs" / "study")
    line = next(x for x in (tmp_path / "docs" / "study.md").read_text().splitlines() if x.startswith("| `zoneout`"))
    assert "| better |" in line


def test_report_without_results_says_nothing_ran(study, tmp_path):
    (tmp_path / "docs").mkdir()
    study.report(tmp_path / "none", tmp_path / "docs" / "study.md", tmp_path / "docs" / "study")
    text = (tmp_path / "docs" / "study.md").read_text()
    assert "**Not run yet:** japanese_vowels, fsdd, shakespeare" in text and "| `none` |" not in text
    assert "python docs/scripts/study.py --task fsdd --download" in text


def test_committed_page_is_rendered_from_the_committed_json(study):
    page = ROOT / "docs" / "study.md"
    expected = study.page_from_json(ROOT / "docs" / "study" / "results.json", page)
    assert page.read_text() == expected, "docs/study.md is stale: run python docs/scripts/study.py --render"
