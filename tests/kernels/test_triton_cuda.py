"""What only a GPU can check (skipped without one; ``benchmarks/gpu_check.sh`` runs them): torch.compile
with CUDA tensors, no host synchronisation in a call without step masks, half/bf16 parameters and a
bidirectional layer with shared input masks on cuDNN. The CPU-vs-CUDA masks from one seed are in
``test_counter_rng.py``; every loop's exactness runs on CUDA tensors in ``test_triton_loops.py`` too."""

from __future__ import annotations

import pytest
import torch
from kernel_cases import TOLERANCE, Case, max_scaled_error, run_twins
from torch._dynamo.testing import CompileCounterWithBackend

import rnndrop
from rnndrop._kernels import triton_autograd

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _compiled_kernels() -> None:
    module = triton_autograd.kernels()
    if module is None or module.INTERPRETED:
        pytest.skip(f"no compiled Triton kernels: {triton_autograd.unavailable_reason('cuda')}")


@pytest.mark.parametrize("loop", triton_autograd.LOOPS)
def test_compile_on_cuda_matches_eager(loop: str) -> None:
    """torch.compile: the Triton stack runs outside the graph (no custom op), results equal eager."""
    _compiled_kernels()
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = rnndrop.LSTM(4, 8, num_layers=2, input_dropout=0.2, recurrent_dropout=0.2, dropout=0.1).cuda()
    x = torch.randn(5, 3, 4, device="cuda", requires_grad=True)
    masks = layer.sample_masks(3, 5)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter)
    with triton_autograd.use_loop(loop):
        got = compiled(x, dropout_masks=masks)[0]
        assert layer.last_backend == "triton", layer.last_backend_reason
        (gx,) = torch.autograd.grad(got.sum(), x)
        want = layer(x, dropout_masks=masks)[0]
        (wx,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(gx, wx, rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("loop", triton_autograd.LOOPS)
def test_no_host_sync_in_a_call_without_step_masks(loop: str) -> None:
    """A training call with dropout sampled from torch's global RNG (CPU seed) never waits for the GPU."""
    _compiled_kernels()
    layer = rnndrop.GRU(8, 16, input_dropout=0.2, recurrent_dropout=0.2, backend="fused").cuda()
    x = torch.randn(6, 4, 8, device="cuda", requires_grad=True)
    with triton_autograd.use_loop(loop):
        layer(x)[0].sum().backward()  # first call: compiles, captures (the graph loop), may synchronise
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, h = layer(x)
            (out.sum() + h.sum()).backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert layer.last_backend == "triton"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_parameters_run_on_cudnn(dtype: torch.dtype) -> None:
    layer = rnndrop.LSTM(4, 8, input_dropout=0.2).to("cuda", dtype)
    layer(torch.randn(5, 3, 4, device="cuda", dtype=dtype))
    assert layer.last_backend == "torch", layer.last_backend_reason
    layer.eval()
    layer(torch.randn(5, 3, 4, device="cuda", dtype=dtype))
    assert layer.last_backend == "torch", layer.last_backend_reason


def test_bidirectional_shared_input_masks_on_cudnn() -> None:
    # float64: cuDNN's float32 RNN runs TF32 by default in torch 2.13 (torch.backends.cudnn.rnn.fp32_precision)
    case = Case(mode="LSTM", bidirectional=True, num_layers=2, input_p=0.3, recurrent_p=0.0, batch=3, time=4,
                dtype=torch.float64, device="cuda")
    res = run_twins(case, backend="auto")
    assert res["backends"] == ["torch", "reference"], res["backends"]
    err, where = max_scaled_error(res["pairs"])
    assert err <= TOLERANCE[case.dtype], f"{where}: {err:.2e}"
