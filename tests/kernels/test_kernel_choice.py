"""``backend="auto"``'s speed rule: on the CPU torch's kernel yields to the fused one, except for LSTM inference.

Both compute the reference's function (the exactness tests); what is pinned here is *which* runs:
torch's CPU GRU / RNN and its float64 kernels are unfused per-step loops, and the fused LSTM
training step is faster than oneDNN's (figures: docs/benchmarks.md, ``torch_yields``' docstring),
so those calls take the fused kernel; float32 LSTM inference stays on torch's. A call the fused
kernel cannot run goes back to torch's kernel (never to the reference loop), and an explicit
``backend="torch"`` is never yielded.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from differential import threads

import rnndrop
from rnndrop._kernels import registry
from rnndrop._kernels.torch_native import onednn_bf16


def _run(layer: torch.nn.Module, x: torch.Tensor, grad: bool, **kwargs) -> str:
    with torch.set_grad_enabled(grad):
        out, _ = layer(x, **kwargs)
    if grad:
        out.sum().backward()
    return layer.last_backend


@pytest.mark.parametrize("cls,dtype,grad,want", [
    (rnndrop.LSTM, torch.float32, False, "torch"),   # oneDNN inference: at least as fast
    (rnndrop.LSTM, torch.float32, True, "fused"),    # a backward follows
    (rnndrop.LSTM, torch.float64, False, "fused"),   # torch's float64 LSTM is an unfused loop
    (rnndrop.GRU, torch.float32, False, "fused"),
    (rnndrop.GRU, torch.float32, True, "fused"),
    (rnndrop.RNN, torch.float32, False, "fused"),
    (rnndrop.RNN, torch.float64, True, "fused"),
])
def test_auto_takes_the_faster_kernel(kernel, cls, dtype: torch.dtype, grad: bool, want: str) -> None:
    layer = cls(3, 5, num_layers=2, input_dropout=0.3, recurrent_dropout=0.3).to(dtype).eval()
    with threads(2):
        assert _run(layer, torch.randn(6, 2, 3, dtype=dtype), grad) == want
    assert layer.last_backend_reason is None


def test_input_without_grad_but_parameters_with_grad_is_training(kernel) -> None:
    layer = rnndrop.LSTM(3, 5)  # no dropout: torch's kernel could run it
    x = torch.randn(4, 2, 3)  # does not require grad; the weights do
    with threads(2):
        assert _run(layer, x, grad=True) == "fused"
        layer.requires_grad_(False)
        assert _run(layer, x, grad=False) == "torch"


def test_bf16_autocast_lstm_inference_stays_on_torch(kernel) -> None:
    layer = rnndrop.LSTM(3, 5).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(4, 2, 3))
    if onednn_bf16():
        assert layer.last_backend == "torch"
    else:  # torch's oneDNN LSTM would raise on this CPU (no AVX512-BF16 / AMX): the call goes elsewhere
        assert layer.last_backend != "torch" and "needs oneDNN's bf16 support" in layer.last_backend_reason


def test_a_yielded_call_goes_back_to_torch_when_the_fused_kernel_cannot_run_it(monkeypatch) -> None:
    # As without a compiler: the fused entry refuses everything; GRU training must still run torch's
    # kernel (what it yielded), not the reference loop.
    refuse = [dataclasses.replace(k, ineligible=lambda call: "test: no fused kernel") if k.name == "fused" else k
              for k in registry.KERNELS]
    monkeypatch.setattr(registry, "KERNELS", tuple(refuse))
    layer = rnndrop.GRU(3, 5, num_layers=2, dropout=0.2)
    assert _run(layer, torch.randn(6, 2, 3), grad=True) == "torch"
    assert layer.last_backend_reason is None


def test_projected_lstm_training_takes_torch_kernel(kernel) -> None:
    # proj_size: the fused kernel refuses it, torch's kernel yields it only to a kernel that accepts.
    layer = rnndrop.LSTM(3, 6, proj_size=2, mask_scope="batch", recurrent_dropout=0.3)
    assert _run(layer, torch.randn(5, 2, 3), grad=True) == "torch"


def test_explicit_torch_backend_is_never_yielded(kernel) -> None:
    layer = rnndrop.GRU(3, 5, backend="torch")
    assert _run(layer, torch.randn(5, 2, 3), grad=True) == "torch"


def test_calls_off_the_cpu_never_yield() -> None:  # CUDA: cuDNN is not measured against Triton yet
    meta = torch.empty(3, 2, 4, device="meta")
    call = registry.Call(rnndrop.GRU(4, 5).cell_config, meta, (), (), None, None)
    assert registry.torch_yields(call) is None
    cpu = registry.Call(rnndrop.GRU(4, 5).cell_config, torch.empty(3, 2, 4), (), (), None, None)
    assert registry.torch_yields(cpu) is not None


def test_wide_float64_inference_stays_on_torch(kernel) -> None:
    # At hidden 512 both run MKL's dgemm per step and torch's loop was the faster (bench_choice.py).
    layer = rnndrop.RNN(3, 512).double().eval()
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    assert _run(layer, x, grad=False) == "torch"
    assert _run(layer, x, grad=True) == "fused"


def test_single_threaded_dense_lstm_training_stays_on_torch_when_small(kernel) -> None:
    # One thread: oneDNN's dense LSTM training step measured as fast as the fused one, or faster, for small
    # per-step products (batch * hidden^2 below 3M); for larger ones the fused step wins again.
    x = torch.randn(2, 2, 3)
    with threads(1):
        assert _run(rnndrop.LSTM(3, 5), x, grad=True) == "torch"
        assert _run(rnndrop.GRU(3, 5), x, grad=True) == "fused"  # torch's GRU is an unfused loop either way
        assert _run(rnndrop.LSTM(3, 256), torch.randn(2, 64, 3), grad=True) == "fused"  # 64 * 256^2 = 4.2M
        assert _run(rnndrop.LSTM(3, 256), torch.randn(2, 32, 3), grad=True) == "torch"  # 2.1M


@pytest.mark.parametrize("grad", [False, True])
def test_padded_lstm_takes_the_fused_kernel(kernel, grad: bool) -> None:
    # lengths= make torch's kernel take its packed path, an unfused loop: 0.3-0.5x with the fused kernel.
    layer = rnndrop.LSTM(3, 5, batch_first=True).eval()
    x = torch.randn(4, 6, 3)
    with threads(1):
        assert _run(layer, x, grad, lengths=torch.tensor([6, 3, 5, 1])) == "fused"
        assert _run(layer, x, grad, lengths=torch.tensor([6, 6, 6, 6])) == "torch"  # no padding: dense rule
