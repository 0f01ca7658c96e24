"""Dispatch of the Triton path: its kernels really run (spy), CPU calls keep the C++ extension, a
missing or old ``triton`` is a reason (never an import-time cost or a crash), and mixed precision
under autocast follows the documented design."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from typing import Any

import pytest
import torch
from kernel_cases import masks_to

import rnndrop
from rnndrop import KernelUnavailableError
from rnndrop._kernels import registry, triton_autograd
from rnndrop.masks import DirectionMasks, DropoutMasks


class _CountingKernel:
    """Stands in for a ``@triton.jit`` kernel: counts ``kernel[grid](...)`` launches, then launches."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.launches = 0

    def __getitem__(self, grid: Any):
        def launch(*args: Any, **kwargs: Any) -> Any:
            self.launches += 1
            return self.inner[grid](*args, **kwargs)

        return launch


@pytest.mark.parametrize("mode,reset_after", [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)])
def test_spy_triton_kernels_run_forward_and_backward(triton_device: str, monkeypatch, mode: str,
                                                     reset_after: bool) -> None:
    module = triton_autograd.kernels()
    spies = {name: _CountingKernel(getattr(module, name)) for name in ("fwd_cell", "fwd_gru_gates", "bwd_cell",
                                                                        "bwd_gru_r")}
    for name, spy in spies.items():
        monkeypatch.setattr(module, name, spy)
    cls = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}[mode]
    kw = {"reset_after": reset_after} if mode == "GRU" else {}
    layer = cls(3, 4, num_layers=2, bidirectional=True, input_dropout=0.2, recurrent_dropout=0.2,
                backend="fused", **kw).to(triton_device)
    out, _ = layer(torch.randn(5, 2, 3, device=triton_device))
    assert layer.last_backend == "triton" and layer.last_backend_reason == "backend='fused' asks for this kernel"
    steps = 2 * 2 * 5  # layers x directions x timesteps: one fused kernel per step (two halves for reset_after=False)
    rb = mode == "GRU" and not reset_after
    assert spies["fwd_cell"].launches == steps
    assert spies["fwd_gru_gates"].launches == (steps if rb else 0)
    assert spies["bwd_cell"].launches == 0
    out.sum().backward()
    assert spies["bwd_cell"].launches == steps
    assert spies["bwd_gru_r"].launches == (steps if rb else 0)


def test_one_recurrent_matmul_per_step(triton_device: str, monkeypatch) -> None:
    # The minimum: per timestep one matmul (mm, or bmm over the gates) plus one kernel.
    calls = {"mm": 0, "bmm": 0}
    real = {"mm": torch.mm, "bmm": torch.bmm}

    def counting(name: str):
        def f(*args: Any, **kwargs: Any) -> torch.Tensor:
            calls[name] += 1
            return real[name](*args, **kwargs)

        return f

    for gate_masks, op in (("shared", "mm"), ("per_gate", "bmm")):
        layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.3, gate_masks=gate_masks, backend="fused").to(triton_device)
        x = torch.randn(6, 2, 3, device=triton_device)
        monkeypatch.setattr(torch, "mm", counting("mm"))
        monkeypatch.setattr(torch, "bmm", counting("bmm"))
        calls.update(mm=0, bmm=0)
        with torch.no_grad():
            layer(x)
        monkeypatch.setattr(torch, "mm", real["mm"])
        monkeypatch.setattr(torch, "bmm", real["bmm"])
        assert layer.last_backend == "triton"
        assert calls[op] == 6, (gate_masks, calls)


def test_cpu_tensors_keep_the_cpp_extension(kernel) -> None:
    # Even with the interpreter opt-in on, the default order serves CPU calls with the C++ kernel.
    layer = rnndrop.GRU(3, 4, recurrent_dropout=0.2)
    with triton_autograd.cpu_interpreter():
        layer(torch.randn(4, 2, 3))
    assert layer.last_backend == "fused"
    assert [k.name for k in registry.KERNELS] == ["torch", "fused", "triton"]


def test_cpu_tensors_are_not_for_triton_without_the_opt_in() -> None:
    layer = rnndrop.LSTM(3, 4)
    call = registry.Call(layer.cell_config, torch.randn(4, 2, 3), (torch.zeros(1, 2, 4),) * 2,
                         layer._direction_params(), None, None)
    assert "CUDA" in registry.triton_ineligible(call)


def test_missing_triton_is_a_reason_and_auto_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(triton_autograd, "_cache", (None, "simulated: triton missing"))
    monkeypatch.setattr(registry, "KERNELS", tuple(k for k in registry.KERNELS if k.name == "triton"))
    x = torch.randn(4, 2, 3)
    with triton_autograd.cpu_interpreter():
        auto = rnndrop.LSTM(3, 4, recurrent_dropout=0.2)
        twin = rnndrop.LSTM(3, 4, recurrent_dropout=0.2, backend="reference")
        twin.load_state_dict(auto.state_dict())
        masks = auto.sample_masks(2, 4, generator=torch.Generator().manual_seed(0))
        out, _ = auto(x, dropout_masks=masks)
        assert auto.last_backend == "reference" and "simulated: triton missing" in auto.last_backend_reason
        torch.testing.assert_close(out, twin(x, dropout_masks=masks)[0], rtol=0, atol=0)
        with pytest.raises(KernelUnavailableError, match="simulated: triton missing"):
            rnndrop.LSTM(3, 4, backend="fused")(x)


def test_try_load_reports_missing_or_old_triton(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` raises ImportError
    module, reason = triton_autograd._try_load()
    assert module is None and "triton is not installed" in reason and "pip install" in reason
    monkeypatch.setitem(sys.modules, "triton", types.SimpleNamespace(__version__="3.5.1"))
    module, reason = triton_autograd._try_load()
    assert module is None and "3.5.1 is older than 3.6" in reason


def test_importing_rnndrop_loads_no_triton_kernels() -> None:
    # In a fresh interpreter: importing and running rnndrop on CPU never imports the kernel module,
    # and with triton unimportable rnndrop still imports and runs.
    code = (
        "import sys, torch, rnndrop\n"
        "rnndrop.GRU(2, 3, recurrent_dropout=0.2)(torch.randn(3, 1, 2))[0].sum().backward()\n"
        "assert 'rnndrop._kernels.triton_kernels' not in sys.modules\n"
        "sys.modules['triton'] = None\n"
        "from rnndrop._kernels import triton_autograd\n"
        "assert 'not installed' in triton_autograd.unavailable_reason('cuda')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _scaled_error(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x.double() - y.double()).abs().max().item() / max(1.0, y.abs().max().item()) for x, y in zip(a, b))


@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])
def test_autocast_matmuls_in_low_precision_elementwise_in_float32(triton_device: str, amp_dtype) -> None:
    # The design (triton_autograd docstring): the recurrent matmuls in the autocast dtype, states and
    # element-wise maths in float32. Measured against a float64 run of the same layer and masks,
    # the Triton path must be (a) visibly low precision (so the matmuls did run in amp_dtype),
    # and (b) no less accurate than autocast through the reference loop.
    g = torch.Generator().manual_seed(0)
    ours = rnndrop.LSTM(8, 16, input_dropout=0.25, recurrent_dropout=0.25, backend="fused")
    ref = rnndrop.LSTM(8, 16, input_dropout=0.25, recurrent_dropout=0.25, backend="reference")
    truth = rnndrop.LSTM(8, 16, input_dropout=0.25, recurrent_dropout=0.25, backend="reference",
                         dtype=torch.float64)
    ref.load_state_dict(ours.state_dict())
    truth.load_state_dict(ours.state_dict())
    masks = ours.sample_masks(4, 6, generator=g)
    masks64 = DropoutMasks(tuple(tuple(DirectionMasks(**{n: getattr(m, n).double() for n in m.active()})
                                       for m in layer) for layer in masks.layers))
    x = torch.randn(6, 4, 8, generator=g)
    results = []
    for layer, dtype, mk in ((ours, torch.float32, masks), (ref, torch.float32, masks), (truth, torch.float64,
                                                                                      masks64)):
        layer.to(triton_device)
        xi = x.to(triton_device, dtype).clone().requires_grad_()
        with torch.autocast(device_type=triton_device, dtype=amp_dtype, enabled=dtype == torch.float32):
            out, (h, c) = layer(xi, dropout_masks=masks_to(mk, triton_device))
        (out.square().sum() + h.sum() + c.sum()).backward()
        results.append([out, h, c, xi.grad, *(p.grad for p in layer.parameters())])
    assert ours.last_backend == "triton" and ref.last_backend == "reference"
    assert all(t.dtype == torch.float32 for t in results[0])  # outputs, states and every gradient
    err_ours, err_ref = _scaled_error(results[0], results[2]), _scaled_error(results[1], results[2])
    eps = torch.finfo(amp_dtype).eps
    assert err_ours > eps / 16, f"error {err_ours:.2e}: the matmuls did not run in {amp_dtype}"
    assert err_ours <= 2 * err_ref, f"Triton {err_ours:.2e} vs reference {err_ref:.2e} under autocast"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_auto_picks_triton_or_warns_once(monkeypatch) -> None:
    layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.2).cuda()
    x = torch.randn(4, 2, 3, device="cuda")
    layer(x)
    if triton_autograd.kernels() is not None and not triton_autograd.kernels().INTERPRETED:
        assert layer.last_backend == "triton"
    monkeypatch.setattr(triton_autograd, "_cache", (None, "simulated: no triton"))
    monkeypatch.setattr(registry, "_warned_triton", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)
        layer(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "simulated: no triton" in messages[0]
    assert layer.last_backend == "reference"
