"""The benchmark script runs end to end (tiny config, one round) and writes complete JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cpu.py"


def test_bench_cpu_tiny_run(kernel, tmp_path, capsys, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_cpu", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "b.json"
    assert bench.main(["--config", "tiny", "--repeats", "2", "--warmup", "0", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    variants = set(bench.variants("LSTM", 3, 8))
    assert {"torch.nn", "torch.nn bf16", "torch eval", "torch batch-scope", "auto eval", "fused+drop",
            "fused+drop bf16", "fused+drop+zoneout", "fused+drop+cand", "cell loop+drop"} <= variants
    for cell in ("LSTM", "GRU"):
        entry = data["results"]["tiny"][cell]
        assert set(entry) == variants
        for name, v in entry.items():
            if "unavailable" in v:  # a bf16 variant on a CPU without bf16 kernels, with the reason
                assert "bf16" in name and v["unavailable"] == bench.unavailable(name, cell)
                continue
            assert v["train"] > 0 and v["infer"] > 0 and len(v["train_runs_ms"]) == 2
            assert v["peak_mib"] is None or v["peak_mib"] >= 0
    assert "torch.nn" in capsys.readouterr().out  # the table was printed
    for name, v in data["results"]["tiny"]["LSTM"].items():  # which kernel each rnndrop variant ran is recorded
        if name.startswith(("fused", "torch ", "auto")) and "unavailable" not in v:
            assert v["backend"]["train"] in ("fused", "torch") and v["backend"]["infer"] in ("fused", "torch")

    # The docs' tables come from this JSON: every part renders, also the variants this CPU could not run.
    report = _load("bench_report", monkeypatch)
    for part in ("all", "readme"):
        assert report.main([str(out), "--part", part]) == 0
    assert report.main([str(out), "--part", "compare", "--baseline", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| tiny | LSTM | fused+drop |" in text and "tiny (4, 6, 3, 8)" in text


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location(name, BENCH.parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_choice_tiny_run(kernel, tmp_path, capsys, monkeypatch) -> None:
    choice = _load("bench_choice", monkeypatch)
    out = tmp_path / "c.json"
    assert choice.main(["--config", "tiny", "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]["tiny"]
    assert set(rows) == {f"{c} {d}" for c in ("LSTM", "GRU", "RNN") for d in ("float32", "float64", "float32 padded")}
    for name, row in rows.items():
        assert row["ratio_train"] > 0 and row["ratio_infer"] > 0
        # What auto took is recorded, and it is the registry's rule: torch's kernel only for LSTM inference.
        lstm32 = name == "LSTM float32"  # dense; padded LSTM goes to the fused kernel
        assert row["auto_train"] == ("torch" if lstm32 and torch.get_num_threads() == 1 else "fused")
        assert row["auto_infer"] == ("torch" if lstm32 else "fused")
    assert "auto takes" in capsys.readouterr().out


def test_bench_csv_small_run(tmp_path, capsys, monkeypatch) -> None:
    bench = _load("bench_csv", monkeypatch)
    out = tmp_path / "csv.json"
    assert bench.main(["--rows", "1000", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["rows"] == 1000 and len(result["wall_s"]) == 1 and result["peak_over_file"] > 0
    assert "1000 rows" in capsys.readouterr().out


def test_bench_dropin_tiny_run(kernel, tmp_path, capsys, monkeypatch) -> None:
    bench = _load("bench_dropin", monkeypatch)
    out = tmp_path / "d.json"
    assert bench.main(["--config", "tiny", "--pack-config", "tiny", "--repeats", "1", "--warmup", "0",
                       "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results["low_precision_parameters"]) == {"LSTM bfloat16", "GRU bfloat16", "LSTM float16",
                                                        "GRU float16"}
    assert set(results["hard_sigmoid"]) == {"LSTM", "GRU"}
    for row in results["packing"].values():  # empty where the build has no micro-kernel
        assert row["share_inference"] > 0 and row["pack forward"] > 0
    assert "hard_sigmoid" in capsys.readouterr().out
