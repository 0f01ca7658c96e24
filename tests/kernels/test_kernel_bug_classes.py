"""One test per class of kernel bug that once passed the suite (issue 12), on every native kernel.

Each compares a registry kernel with the reference given the same weights, inputs and masks
(:mod:`differential`), in a configuration chosen to exercise one code path that the sweeps of
``test_kernel_exactness`` reach rarely or never:

* the **no-grad forward** (inference, Monte-Carlo dropout prediction): no activations are saved,
  the kernel runs separate rolling buffers;
* the **batch split between threads**: forced with ``torch.set_num_threads`` inside the test, so it
  runs even under ``OMP_NUM_THREADS=1``, with batches that split unevenly (grain 4 rows);
* **wide float32 products**: hidden sizes around the AVX-512 micro-kernel's 64-column panels and
  6-row tiles (a per-step product has ``G*H`` columns with a shared mask, ``H`` per gate).

"Native" kernels are the registry's entries that run at full speed here (not Triton's interpreter,
which ``test_triton_exactness`` and the fuzz cover at tiny sizes). A kernel other than the CPU
extension may decline a configuration (its predicate's reason is shown as the skip reason); the
CPU extension must take every one of them.
"""

from __future__ import annotations

import pytest
import torch
from differential import Config, check_kernel, native_kernels

from rnndrop._kernels import registry

CELLS = [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)]
CELL_IDS = ["LSTM", "GRU", "GRU-reset_before", "RNN"]
NATIVE = pytest.mark.parametrize("impl", native_kernels(), ids=lambda k: k.name)


def run(cfg: Config, impl: registry.Kernel) -> None:
    must_run = impl.name == "fused"  # the CPU extension supports every configuration built here
    got = check_kernel(cfg, impl, must_run=must_run)
    if got.backend != impl.name:
        pytest.skip(f"{impl.name} declines {cfg.short()}: {got.reason}")


def cell(mode: str, reset_after: bool, **fields) -> Config:
    cfg = Config(mode=mode, **fields)
    return cfg.with_options(reset_after=reset_after) if mode == "GRU" else cfg


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
@pytest.mark.parametrize("mode,reset_after", CELLS, ids=CELL_IDS)
def test_no_grad_forward_equals_reference(kernel, impl, mode, reset_after, gate_masks, dtype) -> None:
    """Inference with dropout on (MC dropout): torch.no_grad and inference_mode, masks injected with
    ``dropout_masks=`` (from ``layer.sample_masks``) or sampled by the layer from a seeded generator,
    with and without a step mask; two bidirectional layers with every mask the kernel takes."""
    for grad in ("no_grad", "inference_mode"):
        for masks in ("injected", "generator"):
            for steps in ("none", "random"):
                cfg = cell(mode, reset_after, input_size=3, hidden=5, num_layers=2, bidirectional=True, batch=6,
                           time=5, dtype=dtype, grad=grad, masks=masks, steps=steps)
                run(cfg.with_options(input_dropout=0.3, recurrent_dropout=0.4, gate_masks=gate_masks, dropout=0.2,
                                     weight_dropout=0.2), impl)


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("mode,reset_after", CELLS, ids=CELL_IDS)
def test_batch_split_between_threads(kernel, impl, mode, reset_after, dtype) -> None:
    """1 and 2 threads, batches of 5, 9 and 13 rows (2 threads split them 3+2, 5+4 and 7+6): final
    states, outputs and every gradient, with and without a backward (separate buffers)."""
    for threads in (1, 2):
        for batch in (5, 9, 13):
            for grad in ("backward", "no_grad"):
                cfg = cell(mode, reset_after, input_size=2, hidden=3, bidirectional=True, batch=batch, time=4,
                           dtype=dtype, threads=threads, grad=grad, steps="random")
                run(cfg.with_options(input_dropout=0.3, recurrent_dropout=0.3, gate_masks="per_gate"), impl)


@NATIVE
@pytest.mark.parametrize("hidden", [1, 17, 63, 64, 65, 129, 257])
@pytest.mark.parametrize("mode,reset_after", CELLS, ids=CELL_IDS)
def test_wide_float32_products(kernel, impl, mode, reset_after, hidden) -> None:
    """Hidden sizes around the micro-kernel's 64-column panels, 11 rows (tiles of 6 and 5): shared
    masks (G*H columns per step) and per-gate masks (H columns), forward and backward."""
    for gate_masks in ("shared", "per_gate"):
        cfg = cell(mode, reset_after, input_size=7, hidden=hidden, batch=11, time=3, dtype=torch.float32, threads=1)
        run(cfg.with_options(input_dropout=0.2, recurrent_dropout=0.3, gate_masks=gate_masks), impl)
