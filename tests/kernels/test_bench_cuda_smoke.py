"""The CUDA benchmark script: refuses clearly without a GPU, and its measuring code runs end to end
(tiny config) on the Triton path — on CPU tensors under the interpreter here, on CUDA with a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from rnndrop._kernels import triton_autograd

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cuda.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_cuda", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_exits_with_a_message_without_a_gpu(capsys) -> None:
    assert _load().main(["--quick"]) == 1
    assert "no CUDA device" in capsys.readouterr().err


def test_tiny_config_runs_every_variant_on_the_expected_path(triton_device: str) -> None:
    bench = _load()
    for amp in (None, torch.bfloat16):
        result = bench.bench_config("tiny", "GRU", triton_device, repeats=1, warmup=0, amp=amp)
        loops = {f"{loop}+drop" for loop in triton_autograd.LOOPS}
        assert set(result) == {"torch.nn", "auto", "persistent+drop/gate", "cell loop+drop"} | loops
        for entry in result.values():
            assert entry["train"] > 0 and entry["infer"] > 0 and len(entry["train_runs_ms"]) == 1
            assert (entry["peak_mib"] is None) == (triton_device != "cuda")
