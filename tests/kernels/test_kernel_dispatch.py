"""Dispatch: the fused kernel really runs when eligible (spy), ineligible calls fall back with a
reason, ``backend="fused"`` raises it, and a missing extension gives one warning, never a crash."""

from __future__ import annotations

import inspect
import sys
import types
import warnings

import pytest
import torch

import rnndrop
from rnndrop import KernelUnavailableError, RnnDropValueError
from rnndrop._kernels import loader, ops, registry


class _Spy(types.ModuleType):
    """Wraps the extension and counts calls into it."""

    def __init__(self, inner: types.ModuleType) -> None:
        super().__init__("spy")
        self.inner = inner
        self.calls = {"forward": 0, "backward": 0}

    def forward(self, *args):
        self.calls["forward"] += 1
        return self.inner.forward(*args)

    def backward(self, *args):
        self.calls["backward"] += 1
        return self.inner.backward(*args)


@pytest.mark.parametrize("cls", [rnndrop.LSTM, rnndrop.GRU, rnndrop.RNN])
def test_spy_fused_kernel_runs_forward_and_backward(kernel, monkeypatch, cls) -> None:
    spy = _Spy(kernel)
    monkeypatch.setattr(loader, "_cache", (spy, None))
    layer = cls(3, 4, num_layers=2, bidirectional=True, input_dropout=0.2, recurrent_dropout=0.2)
    out, _ = layer(torch.randn(5, 2, 3))
    assert layer.last_backend == "fused" and "only kernel" in layer.last_backend_reason
    assert spy.calls["forward"] == 4  # 2 layers x 2 directions
    out.sum().backward()
    assert spy.calls["backward"] == 4


def test_reference_backend_never_calls_the_kernel(kernel, monkeypatch) -> None:
    spy = _Spy(kernel)
    monkeypatch.setattr(loader, "_cache", (spy, None))
    layer = rnndrop.LSTM(3, 4, backend="reference")
    layer(torch.randn(5, 2, 3))
    assert layer.last_backend == "reference" and spy.calls["forward"] == 0


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda b: rnndrop.LSTM(3, 4, proj_size=2, recurrent_dropout=0.1, backend=b), "proj_size"),
        (lambda b: rnndrop.LSTM(3, 4, recurrent_activation="softsign", backend=b), "softsign"),
        (lambda b: rnndrop.GRU(3, 4, activation="gelu", backend=b), "gelu"),
    ],
)
def test_ineligible_calls_fall_back_or_raise_with_the_reason(kernel, make, reason: str) -> None:
    x = torch.randn(4, 2, 3)
    auto = make("auto")
    auto(x)
    assert auto.last_backend == "reference"
    assert reason in auto.last_backend_reason
    with pytest.raises(KernelUnavailableError, match=reason):
        make("fused")(x)


def test_bf16_autocast_runs_fused_where_the_cpu_has_bf16(kernel) -> None:
    layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(4, 2, 3))
    if ops.cpu_has_bf16():
        assert layer.last_backend == "fused"
    else:
        assert layer.last_backend == "reference" and "AVX512_BF16" in layer.last_backend_reason


def test_fp16_autocast_falls_back_with_the_reason(kernel) -> None:
    layer = rnndrop.GRU(3, 4, recurrent_dropout=0.1)
    with torch.autocast("cpu", dtype=torch.float16):
        layer(torch.randn(4, 2, 3))
    assert layer.last_backend == "reference" and "torch.float16" in layer.last_backend_reason


@pytest.mark.parametrize("make", [
    lambda: rnndrop.LSTM(3, 4, zoneout_hidden=0.2, zoneout_cell=0.3, candidate_dropout=0.2),
    lambda: rnndrop.GRU(3, 4, zoneout_hidden=0.2, candidate_dropout=0.2),
    lambda: rnndrop.RNN(3, 4, zoneout_hidden=0.2),
    lambda: rnndrop.LSTM(3, 4, zoneout_hidden=0.2, zoneout_cell=0.3).eval(),  # the expectation in eval
], ids=["lstm", "gru", "rnn", "lstm-eval"])
def test_zoneout_and_candidate_run_fused(kernel, make) -> None:
    layer = make()
    layer(torch.randn(4, 2, 3))
    assert layer.last_backend == "fused", layer.last_backend_reason


def test_weight_dropout_runs_fused(kernel) -> None:
    # DropConnect is folded into W_hh before the direction function, so the kernel serves it.
    layer = rnndrop.LSTM(3, 4, weight_dropout=0.3, recurrent_dropout=0.2)
    layer(torch.randn(4, 2, 3))
    assert layer.last_backend == "fused"


def test_invalid_backend_name() -> None:
    with pytest.raises(RnnDropValueError, match="backend must be one of"):
        rnndrop.GRU(3, 4, backend="fast")  # type: ignore[arg-type]


def test_missing_extension_warns_once_and_matches_reference(monkeypatch) -> None:
    monkeypatch.setattr(loader, "_cache", (None, "simulated: extension not built"))
    monkeypatch.setattr(registry, "_warned_unavailable", False)
    layer = rnndrop.GRU(3, 4, input_dropout=0.3, recurrent_dropout=0.3)
    twin = rnndrop.GRU(3, 4, input_dropout=0.3, recurrent_dropout=0.3, backend="reference")
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    masks = layer.sample_masks(2, 5, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        user_line = inspect.currentframe().f_lineno + 1
        out, _ = layer(x, dropout_masks=masks)
        layer(x, dropout_masks=masks)
    fallback = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(fallback) == 1 and "simulated: extension not built" in str(fallback[0].message)
    # Attributed to the caller's `layer(x)` line, not to torch's Module.__call__ or rnndrop's internals.
    assert (fallback[0].filename, fallback[0].lineno) == (__file__, user_line)
    assert fallback[0].category is rnndrop.KernelFallbackWarning
    message = str(fallback[0].message)
    assert "349 ms against 87 ms" in message  # the cost, as measured in docs/benchmarks.md
    assert "RNNDROP_DISABLE_KERNELS=1" in message and "KernelFallbackWarning" in message  # how to silence it
    assert layer.last_backend == "reference"
    torch.testing.assert_close(out, twin(x, dropout_masks=masks)[0], rtol=0, atol=0)
    with pytest.raises(KernelUnavailableError, match="simulated"):
        rnndrop.GRU(3, 4, backend="fused")(x)


def test_missing_extension_warns_when_torch_kernel_takes_a_yielded_call(monkeypatch) -> None:
    # A GRU without dropout would run fused (2-3x faster than torch's CPU GRU): without the extension it
    # runs torch's kernel, and the user is told once what that costs.
    monkeypatch.setattr(loader, "_cache", (None, "simulated: extension not built"))
    monkeypatch.setattr(registry, "_warned_unavailable", False)
    layer = rnndrop.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        user_line = inspect.currentframe().f_lineno + 1
        layer(x)[0].sum().backward()
        layer(x)
    fallback = [w for w in caught if w.category is rnndrop.KernelFallbackWarning]
    assert len(fallback) == 1 and (fallback[0].filename, fallback[0].lineno) == (__file__, user_line)
    message = str(fallback[0].message)
    assert "runs torch's own kernel" in message and "simulated" in message and "unfused" in message
    assert layer.last_backend == "torch"


def test_missing_extension_still_compiles_in_one_graph(monkeypatch) -> None:
    # The once-per-process warning must not reach Dynamo (it cannot trace warnings.warn).
    monkeypatch.setattr(loader, "_cache", (None, "simulated: extension not built"))
    monkeypatch.setattr(registry, "_warned_unavailable", False)
    torch._dynamo.reset()
    layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.3)
    x = torch.randn(5, 2, 3)
    masks = layer.sample_masks(2, 5, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    out, _ = compiled(x, dropout_masks=masks)
    with pytest.warns(rnndrop.KernelFallbackWarning, match="simulated"):
        eager, _ = layer(x, dropout_masks=masks)  # the eager call warns
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
    assert registry._warned_unavailable
    torch._dynamo.reset()


def test_loader_reports_a_missing_build_without_raising(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RNNDROP_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("RNNDROP_BUILD_ON_FIRST_USE", "0")
    monkeypatch.setattr(loader, "_cache", None)
    assert loader.load() is None
    reason = loader.unavailable_reason()
    # The exact command for this interpreter (a bare `python` may be another one, without rnndrop).
    assert "not built" in reason and f"{sys.executable} -m rnndrop build-kernels" in reason
    assert list(tmp_path.iterdir()) == []  # nothing compiled, nothing written


def test_loader_rejects_a_broken_library(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("RNNDROP_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(loader, "_cache", None)
    path = loader.library_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an ELF file")
    assert loader.load() is None
    assert "failed to load" in loader.unavailable_reason()


def test_build_tag_follows_the_sources(monkeypatch, tmp_path) -> None:
    src = tmp_path / "k.cpp"
    src.write_text("int a;")
    monkeypatch.setattr(loader, "SOURCES", (src,))
    before = loader.build_tag()
    src.write_text("int b;")
    assert loader.build_tag() != before  # an edited source never loads a stale binary


def test_disable_env_var(monkeypatch) -> None:
    monkeypatch.setenv("RNNDROP_DISABLE_KERNELS", "1")
    monkeypatch.setattr(loader, "_cache", None)
    monkeypatch.setattr(registry, "_warned_unavailable", False)
    assert loader.load() is None and "RNNDROP_DISABLE_KERNELS" in loader.unavailable_reason()
    layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.3)  # (only the fused kernel could take this call)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reference path on purpose: no fallback warning
        layer(torch.randn(5, 2, 3))
    assert layer.last_backend == "reference" and "RNNDROP_DISABLE_KERNELS" in layer.last_backend_reason


def test_bias_gradients_do_not_share_storage(kernel) -> None:
    # The kernel computes d b_ih and d b_hh from one sum where they are equal; the two parameters
    # must still get separate tensors (an in-place op on one grad must not change the other).
    layer = rnndrop.LSTM(3, 4, backend="fused")
    layer(torch.randn(5, 2, 3))[0].sum().backward()
    assert layer.last_backend == "fused"
    torch.testing.assert_close(layer.bias_ih_l0.grad, layer.bias_hh_l0.grad)
    assert layer.bias_ih_l0.grad.data_ptr() != layer.bias_hh_l0.grad.data_ptr()
