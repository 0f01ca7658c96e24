"""benchmarks/gpu_check.sh's dry run on this GPU-less machine: it parses its arguments, checks that the
benchmark parses its own, and writes every one of its (at most 8) files, the CUDA steps marked skipped
with the very commands a GPU run executes (time limits by SIGINT, --maxfail instead of -x)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
FILES = {"env.txt", "pytest.log", "bench_f32.txt", "bench_f32.json", "bench_bf16.txt", "bench_bf16.json",
         "profile.txt", "summary.txt"}


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_dry_run_writes_every_file(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    proc = _run("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == FILES  # 8 files: the device tool brings back at most 8
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split()[0] for line in summary[:3]] == ["pytest", "bench_f32", "bench_bf16"]
    assert all("skipped: dry run" in line for line in summary[:3])
    pytest_cmd = (out / "pytest.log").read_text()
    assert pytest_cmd.startswith("skipped (dry run): timeout -s INT") and "--maxfail=" in pytest_cmd
    assert " -x " not in pytest_cmd and "test_triton_cuda.py" in pytest_cmd and "test_counter_rng.py" in pytest_cmd
    bench = (out / "bench_f32.txt").read_text()
    for config in ("small", "main", "large", "large-batch"):
        assert f"--config {config} " in bench
    assert "--precision ieee" in bench and "--amp bf16" in (out / "bench_bf16.txt").read_text()
    env = (out / "env.txt").read_text()
    assert "torch" in env and "loops ('steps', 'fused_steps', 'persistent', 'graph')" in env


def test_bad_arguments_exit_2() -> None:
    proc = _run("--dry-run", "--frobnicate")
    assert proc.returncode == 2 and "unknown argument: --frobnicate" in proc.stderr
    assert _run("--out").returncode == 2
