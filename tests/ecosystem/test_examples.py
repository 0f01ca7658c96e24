"""The example training scripts run on a tiny budget and learn.

"Learns" is judged against chance on the 512-sequence validation set of three balanced
classes: accuracy must exceed 1/3 by five binomial standard deviations.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
VAL_SIZE, CHANCE = 512, 1 / 3
LEARNED = CHANCE + 5 * math.sqrt(CHANCE * (1 - CHANCE) / VAL_SIZE)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_plain_loop_learns_and_its_checkpoint_reloads(tmp_path) -> None:
    plain = _load("train_plain")
    ckpt = tmp_path / "model.pt"
    metrics = plain.main(["--steps", "40", "--save", str(ckpt)])
    assert metrics["steps"] == 40 and metrics["last_loss"] < metrics["first_loss"]
    assert metrics["val_accuracy"] > LEARNED
    # The state_dict checkpoint reproduces the reported validation accuracy in a fresh model.
    model = plain.Classifier()
    model.load_state_dict(torch.load(ckpt, map_location="cpu"))
    x, y = plain.make_data(VAL_SIZE, 24, seed=20_000).tensors
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(-1) == y).float().mean().item()
    assert accuracy == metrics["val_accuracy"]


def test_plain_loop_under_torchrun_keeps_ranks_in_sync(tmp_path) -> None:
    """Two processes launched by torchrun (as on several machines), with bf16 autocast."""
    # Each rank's stdout goes to its own file: two ranks printing to one pipe can interleave lines.
    _run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "--log-dir", str(tmp_path), "--redirects", "1",
         str(EXAMPLES / "train_plain.py"), "--steps", "6", "--bf16", "--json")
    logs = sorted(tmp_path.rglob("stdout.log"))
    assert len(logs) == 2, logs
    ranks = sorted((m for log in logs for m in _json_lines(log.read_text())), key=lambda m: m["rank"])
    assert [m["rank"] for m in ranks] == [0, 1] and all(m["world_size"] == 2 for m in ranks)
    # Identical parameters after training give an identical validation loss on every rank ...
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]
    # ... while each rank saw its own data shard and masks.
    assert ranks[0]["first_loss"] != ranks[1]["first_loss"]


def test_lightning_example_learns() -> None:
    pytest.importorskip("lightning", reason="PyTorch Lightning is the optional extra rnndrop[lightning]")
    proc = _run(str(EXAMPLES / "train_lightning.py"), "--steps", "40", "--json")
    [metrics] = _json_lines(proc.stdout)
    assert metrics["steps"] == 40 and metrics["val_accuracy"] > LEARNED


# ---------------------------------------------------------------------------------------------- dropout studies
STUDY_TINY = ["--strategies", "none,recurrent,noise_shape", "--rates", "0.2,0.4", "--search-seeds", "1", "--seeds",
              "2", "--epochs", "2"]


def _check_study(summary: dict, out: Path, strategies: int) -> None:
    assert summary["missing"] == [] and set(summary["tuned_rates"]) == set(STUDY_TINY[1].split(","))
    assert summary["tuned_rates"]["none"] == 0.0
    assert all(summary["tuned_rates"][s] in (0.2, 0.4) for s in STUDY_TINY[1].split(",")[1:])
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == strategies * 2 and all(0 <= r["test"]["accuracy"] <= 1 for r in result["runs"])
    assert result["search"]["recurrent"]["grid"][0]["seeds"] == [0]
    for name in ("results.csv", "search.csv", "study.db", "masks.json"):
        assert (out / name).exists()


@pytest.mark.slow
def test_dropout_study_on_a_torch_tagger_with_its_own_loop(tmp_path) -> None:
    """The user-model API: a torch.nn bidirectional two-layer GRU tagger, its own fit/test functions."""
    tagger = _load("study_tagger")
    summary = tagger.main([*STUDY_TINY, "--out", str(tmp_path / "one"), "--no-plots"])
    _check_study(summary, tmp_path / "one", 3)
    # Two worker processes on one study (the functions are pickled into them): the same answer.
    proc = _run(str(EXAMPLES / "study_tagger.py"), *STUDY_TINY, "--out", str(tmp_path / "two"), "--workers", "2",
                "--no-plots", timeout=600)
    two = _json_lines(proc.stdout)[-1]
    _check_study(two, tmp_path / "two", 3)
    assert two["tuned_rates"] == summary["tuned_rates"] and two["accuracy"] == summary["accuracy"]


@pytest.mark.slow
def test_dropout_study_with_a_lightning_loop(tmp_path) -> None:
    pytest.importorskip("lightning")
    lit = _load("study_lightning")
    summary = lit.main([*STUDY_TINY, "--out", str(tmp_path / "lit")])
    _check_study(summary, tmp_path / "lit", 3)
    assert (tmp_path / "lit" / "dose_response.png").exists() and (tmp_path / "lit" / "masks.png").exists()
