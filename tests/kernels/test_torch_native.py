"""torch's own kernels as a registry entry: taken exactly when the call is torch.nn's maths after folding.

Every eligible configuration equals the reference path with the same masks (float64 1e-10, float32
1e-5 relative to the tensor's scale), outputs and every gradient; a spy proves ``torch._VF`` ran;
each ineligible configuration goes to rnndrop's kernels with the reason. These tests need no
compiled extension (torch's kernels are always there).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import TOLERANCE, Case, max_scaled_error, run_twins

import rnndrop
from rnndrop._kernels import torch_native
from rnndrop.errors import KernelUnavailableError

ELIGIBLE = {
    "eval": dict(training=False, input_p=0.3, recurrent_p=0.3),
    "no dropout": dict(input_p=0.0, recurrent_p=0.0),
    "batch scope shared": dict(mask_scope="batch"),
    "batch scope per gate": dict(mask_scope="batch", gate_masks="per_gate"),
    "per-sample shared input mask": dict(recurrent_p=0.0),
    "weight dropout": dict(input_p=0.0, recurrent_p=0.0, weight_p=0.4),
    "between-layer dropout": dict(input_p=0.0, recurrent_p=0.0, between_p=0.3, num_layers=2),
    "lengths": dict(mask_scope="batch", steps="lengths_nonzero"),
    "packed": dict(input_p=0.0, recurrent_p=0.0, steps="packed", num_layers=2, bidirectional=True),
    "everything batch scope": dict(mask_scope="batch", gate_masks="per_gate", weight_p=0.3, between_p=0.3,
                                   num_layers=2, bidirectional=True, steps="packed"),
}
CELLS = [("LSTM", "tanh"), ("GRU", "tanh"), ("RNN", "tanh"), ("RNN", "relu")]


def _case(mode: str, activation: str, options: dict, dtype: torch.dtype) -> Case:
    options = dict(options)
    steps = options.pop("steps", "none")
    return Case(mode=mode, activation=activation, steps=steps, dtype=dtype, batch=4, time=6, hidden=5, **options)


_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (cuDNN, same code)")
DEVICES = ["cpu", pytest.param("cuda", marks=_NO_CUDA)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", list(ELIGIBLE))
@pytest.mark.parametrize("mode,activation", CELLS, ids=[f"{m}-{a}" for m, a in CELLS])
def test_torch_kernel_equals_reference(mode: str, activation: str, name: str, dtype: torch.dtype,
                                       device: str) -> None:
    case = _case(mode, activation, ELIGIBLE[name], dtype)
    case.device = device
    res = run_twins(case, backend="torch")
    assert res["backends"] == ["torch", "reference"], res["backends"]
    err, where = max_scaled_error(res["pairs"])
    assert err <= TOLERANCE[dtype], f"{where}: scaled error {err:.3e} for {case}"


@pytest.mark.parametrize("options", [dict(training=False), dict(mask_scope="batch", gate_masks="per_gate"),
                                     dict(steps="packed", bidirectional=True, num_layers=2, mask_scope="batch")])
def test_projected_lstm_runs_on_torch_kernel(options: dict) -> None:
    case = Case(mode="LSTM", hidden=6, proj_size=3, dtype=torch.float64, **options)
    res = run_twins(case, backend="torch")
    assert res["backends"] == ["torch", "reference"]
    err, where = max_scaled_error(res["pairs"])
    assert err <= 1e-10, f"{where}: {err:.3e}"


class _VFSpy:
    """Counts calls into torch._VF's sequence ops while forwarding them."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str):
        fn = getattr(torch._VF, name)

        def spy(*args, **kwargs):
            self.calls.append(name)
            return fn(*args, **kwargs)

        return spy


def test_spy_eval_mode_is_one_call_for_the_whole_stack(monkeypatch) -> None:
    spy = _VFSpy()
    monkeypatch.setattr(torch_native, "_VF", spy)
    layer = rnndrop.LSTM(3, 4, num_layers=3, bidirectional=True, input_dropout=0.5, recurrent_dropout=0.5,
                         backend="torch").eval()
    layer(torch.randn(5, 2, 3))
    assert layer.last_backend == "torch" and spy.calls == ["lstm"]


def test_spy_batch_scope_training_is_one_call_per_layer(monkeypatch) -> None:
    spy = _VFSpy()
    monkeypatch.setattr(torch_native, "_VF", spy)
    layer = rnndrop.GRU(3, 4, num_layers=2, recurrent_dropout=0.5, mask_scope="batch", backend="torch")
    out, _ = layer(torch.randn(5, 2, 3))
    out.sum().backward()
    assert layer.last_backend == "torch" and spy.calls == ["gru", "gru"]
    assert layer.weight_hh_l0.grad is not None  # gradients flow through the fold into the raw weight


def test_folded_masks_do_drop(monkeypatch) -> None:
    # A fold that forgot the mask would equal the layer without dropout: check it does not.
    torch.manual_seed(0)
    layer = rnndrop.LSTM(3, 8, recurrent_dropout=0.5, input_dropout=0.5, mask_scope="batch", backend="torch")
    x = torch.randn(6, 4, 3)
    masks = layer.sample_masks(4, 6, generator=torch.Generator().manual_seed(1))
    dropped, _ = layer(x, dropout_masks=masks)
    assert layer.last_backend == "torch"
    plain, _ = layer.eval()(x)
    assert (dropped - plain).abs().max() > 1e-3


INELIGIBLE = [
    (lambda: rnndrop.LSTM(3, 4, recurrent_dropout=0.3), {}, "per-sample recurrent"),
    (lambda: rnndrop.LSTM(3, 4, input_dropout=0.3, gate_masks="per_gate"), {}, "per-gate per-sample input"),
    # Issue 20: without padding such a layer runs as two one-directional calls (test below).
    (lambda: rnndrop.GRU(3, 4, input_dropout=0.3, bidirectional=True), {"lengths": torch.tensor([5, 3])},
     "bidirectional layer .* padded sequences"),
    (lambda: rnndrop.GRU(3, 4, reset_after=False).eval(), {}, "reset_after=False"),
    (lambda: rnndrop.LSTM(3, 4, recurrent_activation="hard_sigmoid").eval(), {}, "activations"),
    (lambda: rnndrop.RNN(3, 4, nonlinearity="sigmoid").eval(), {}, "nonlinearity"),
    (lambda: rnndrop.LSTM(3, 4, zoneout_hidden=0.2).eval(), {}, "zoneout"),
    (lambda: rnndrop.GRU(3, 4, candidate_dropout=0.2), {}, "candidate"),
    (lambda: rnndrop.LSTM(3, 4).eval(), {"step_mask": torch.tensor([[True, False, True, True, True]] * 2)},
     "repeats the previous output"),
    (lambda: rnndrop.LSTM(3, 4, zero_output_for_mask=True).eval(),
     {"step_mask": torch.tensor([[True, False, True, True, True]] * 2)}, "holes"),
    (lambda: rnndrop.LSTM(3, 4).eval(), {"lengths": torch.tensor([5, 0])}, "length 0"),
]


def test_bidirectional_shared_input_masks_run_as_two_calls() -> None:
    """A bidirectional layer whose only masks are per-sample input masks shared by the gates: two
    one-directional calls of torch's kernel (the reverse one on the reversed input), equal to the reference."""
    for mode in ("LSTM", "GRU"):
        case = Case(mode=mode, bidirectional=True, num_layers=2, input_p=0.3, recurrent_p=0.0, between_p=0.2,
                    batch=3, time=4)
        res = run_twins(case, backend="torch")
        assert res["backends"] == ["torch", "reference"], res["backends"]
        err, where = max_scaled_error(res["pairs"])
        assert err <= TOLERANCE[case.dtype], f"{mode}: {where}: {err:.2e}"


@pytest.mark.parametrize("make,kwargs,reason", INELIGIBLE, ids=[r for _, _, r in INELIGIBLE])
def test_ineligible_calls_go_elsewhere_with_the_reason(make, kwargs, reason: str) -> None:
    x = torch.randn(5, 2, 3)
    layer = make()
    layer(x, **kwargs)
    assert layer.last_backend != "torch"
    layer.backend = "torch"
    with pytest.raises(KernelUnavailableError, match=reason):
        layer(x, **kwargs)


def test_all_true_step_mask_is_eligible() -> None:
    layer = rnndrop.GRU(3, 4, backend="torch").eval()
    x = torch.randn(5, 2, 3)
    out, _ = layer(x, step_mask=torch.ones(2, 5, dtype=torch.bool))
    assert layer.last_backend == "torch"
    torch.testing.assert_close(out, layer(x)[0], rtol=0, atol=0)


def test_autocast_returns_the_input_dtype() -> None:
    # torch.nn.LSTM returns bf16 under CPU autocast; every rnndrop path returns float32 there.
    layer = rnndrop.LSTM(8, 16).eval()
    x = torch.randn(7, 3, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # LSTM inference: auto takes torch's
        out, (h, c) = layer(x)
    # ... where oneDNN has a bf16 LSTM (AVX512_BF16 CPUs); elsewhere torch.nn.LSTM would raise, rnndrop runs it.
    assert layer.last_backend == ("torch" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "reference")
    assert out.dtype == h.dtype == c.dtype == torch.float32
    ref = rnndrop.LSTM(8, 16, backend="reference").eval()
    ref.load_state_dict(layer.state_dict())
    # bf16 matmuls: a few units of bf16's rounding step (2^-8) on O(1) values.
    torch.testing.assert_close(out, ref(x)[0], rtol=0, atol=4 * 2**-8)


def test_compile_keeps_the_graph_whole() -> None:
    # Dynamo breaks the graph at torch's RNN ops: under torch.compile the predicate declines.
    torch._dynamo.reset()
    layer = rnndrop.RNN(3, 4, backend="reference").eval()
    auto = rnndrop.RNN(3, 4).eval()
    auto.load_state_dict(layer.state_dict())
    x = torch.randn(5, 2, 3)
    compiled = torch.compile(auto, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x)[0], layer(x)[0])
    torch._dynamo.reset()
