"""The real-model benchmark runs end to end (tiny sizes, one round) and writes every model's rows to its JSON."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_models.py"


def test_bench_models_tiny_run(kernel, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH.parent))
    spec = importlib.util.spec_from_file_location("bench_models", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_models", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "m.json"
    threads = torch.get_num_threads()
    # One thread: tiny calls on a loaded machine otherwise wait on OpenMP barriers (seconds, not milliseconds).
    assert bench.main(["--tiny", "--threads", "1", "--repeats", "1", "--warmup", "0", "--json", str(out)]) == 0
    assert torch.get_num_threads() == threads  # the run's thread count does not leak into the test process
    data = json.loads(out.read_text())
    assert data["tiny"] is True and data["machine"]["cpu"] and data["machine"]["torch_threads"] == 1
    results = data["results"]
    emb, hidden = bench.SIZES["tiny"]["awd"]["sizes"][0]
    forecaster = bench.SIZES["tiny"]["forecaster"]
    expected = {
        "awd_lstm": {f"{emb}/{hidden} stack training step": bench.AWD_STACK_VARIANTS,
                     f"{emb}/{hidden} model training step": bench.AWD_MODEL_VARIANTS},
        "tagger": {"training step": bench.TAGGER_TRAIN_VARIANTS, "inference": bench.TAGGER_INFER_VARIANTS},
        "gru_forecaster": {
            **{f"batch {b} inference latency": bench.LATENCY_VARIANTS for b in forecaster["batches"]},
            **{f"batch {b} MC dropout {n} samples": bench.MC_VARIANTS
               for b in forecaster["batches"] for n in forecaster["mc_samples"]},
        },
        "char_lm": {"training step": bench.CHAR_LM_VARIANTS},
    }
    assert set(results) == set(expected)
    for model, measurements in expected.items():
        assert set(results[model]) == set(measurements), model
        for measurement, variants in measurements.items():
            rows = results[model][measurement]
            assert list(rows) == list(variants), (model, measurement)
            assert rows["torch.nn"]["ratio"] == 1.0
            for name, row in rows.items():
                assert row["ms"] > 0 and row["ratio"] > 0 and len(row["runs_ms"]) == 1, (model, measurement, name)
                requested = bench.rnndrop_backend(name)
                assert row.get("backend_requested") == requested, (model, measurement, name)
                if requested is None:
                    continue
                assert row["backends"], (model, measurement, name)  # every rnndrop layer's record
                for layer in row["backends"]:
                    assert set(layer) == {"last_backend", "last_backend_reason"}
                    assert layer["last_backend"] == requested if requested != "auto" else layer["last_backend"] in (
                        "torch", "fused")
    auto = results["tagger"]["inference"]["rnndrop auto"]  # did auto take the faster of the forced kernels?
    assert auto["faster_forced_backend"] in ("torch", "fused") and auto["ratio_to_faster_forced"] > 0
    assert len(results["awd_lstm"][f"{emb}/{hidden} stack training step"]["rnndrop fused"]["backends"]) == 3
    assert "AWD-LSTM" in capsys.readouterr().out
