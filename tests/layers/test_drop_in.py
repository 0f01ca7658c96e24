"""Code written for torch.nn keeps working: transforms, higher derivatives, conversions, options, dtypes.

Each test runs on every backend ``auto`` may pick for the call (and the reference), and compares with
torch.nn or the reference loop. torch's own ModuleInfo checks are in test_torch_module_db.py; weights
written between calls in tests/kernels/test_weight_writes.py.
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vjp, vmap

import rnndrop
from rnndrop._kernels import ops, registry

F64 = torch.float64
LAYERS = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}


def _pair(mode: str, backend: str, **kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = LAYERS[mode](4, 6, num_layers=2, dtype=F64, backend=backend, **kw)
    ref = LAYERS[mode](4, 6, num_layers=2, dtype=F64, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


# ----------------------------------------------------------------------------- torch.func, batched grads
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_torch_func_transforms(kernel, mode, backend) -> None:
    ours, ref = _pair(mode, backend)
    x = torch.randn(5, 3, 4, dtype=F64)
    params = dict(ours.named_parameters())

    def loss(p, x, m=ours):
        return functional_call(m, p, (x,))[0].square().sum()

    got = grad(loss)(params, x)
    want = torch.autograd.grad(loss(dict(ref.named_parameters()), x, ref), list(ref.parameters()))
    for name, w in zip(params, want):
        torch.testing.assert_close(got[name], w)
    out, pullback = vjp(lambda x: functional_call(ours, params, (x,))[0], x)
    cot = torch.randn_like(out)
    x_ref = x.clone().requires_grad_()
    torch.testing.assert_close(pullback(cot)[0], torch.autograd.grad(ref(x_ref)[0], x_ref, cot)[0])
    jac = jacrev(lambda x: functional_call(ours, params, (x,))[0][-1].sum())(x)
    torch.testing.assert_close(jac, torch.autograd.grad(ref(x_ref)[0][-1].sum(), x_ref)[0])


@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_vmap_over_a_batch_of_sequences(kernel, mode) -> None:
    """vmap, which torch.nn's recurrent layers refuse ("Batching rule not implemented"), runs the reference."""
    ours, ref = _pair(mode, "auto")
    xs = torch.randn(3, 5, 2, 4, dtype=F64)
    got = vmap(lambda x: ours(x)[0])(xs)
    torch.testing.assert_close(got, torch.stack([ref(x)[0] for x in xs]))


@pytest.mark.parametrize("backend", ["auto", "fused", "torch"])
@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_batched_gradients(kernel, mode, backend) -> None:
    """``autograd.grad(..., is_grads_batched=True)`` (gradcheck's batched check): a vmap over the backward."""
    ours, ref = _pair(mode, backend, **({"recurrent_dropout": 0.3} if backend == "fused" else {}))
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    masks = ours.sample_masks(3, 5)
    kw = {"dropout_masks": masks} if backend == "fused" else {}
    cots = torch.randn(4, 5, 3, 6, dtype=F64)
    got = torch.autograd.grad(ours(x, **kw)[0], x, cots, is_grads_batched=True)[0]
    assert backend == "auto" or ours.last_backend == backend
    out = ref(x, **kw)[0]
    want = torch.stack([torch.autograd.grad(out, x, c, retain_graph=True)[0] for c in cots])
    torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- second derivatives
@pytest.mark.parametrize("options", [{}, {"input_dropout": 0.3, "recurrent_dropout": 0.3, "gate_masks": "per_gate"},
                                     {"zoneout_hidden": 0.2, "candidate_dropout": 0.2}], ids=["plain", "masks", "zone"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradient_penalty_matches_reference(kernel, mode, options) -> None:
    """A gradient penalty (create_graph=True) through the fused kernel: the same second derivatives."""
    ours, ref = _pair(mode, "fused", **options)
    x = torch.randn(6, 3, 4, dtype=F64, requires_grad=True)
    masks = ours.sample_masks(3, 6)
    results = []
    for m in (ours, ref):
        out = m(x, dropout_masks=masks)[0]
        (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        penalty = gx.square().sum()
        results.append(torch.autograd.grad(penalty, [x, *m.parameters()]))
    assert ours.last_backend == "fused"
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_swap_module_params_on_conversion(kernel, mode) -> None:
    """torch.__future__'s swap_tensors conversion after a forward and backward: nothing of ours holds weakrefs."""
    before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m = LAYERS[mode](4, 6)
        m(torch.randn(3, 2, 4))[0].sum().backward()
        m.to(F64)
        assert all(p.dtype == F64 for p in m.parameters())
        m(torch.randn(3, 2, 4, dtype=F64))[0].sum().backward()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(before)


def test_flat_weights_follow_the_parameters() -> None:
    m, theirs = rnndrop.LSTM(4, 6, num_layers=2, bidirectional=True), nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    assert m._flat_weights_names == theirs._flat_weights_names
    assert all(a is getattr(m, n) for a, n in zip(m._flat_weights, m._flat_weights_names))
    m.weight_hh_l1 = nn.Parameter(torch.zeros_like(m.weight_hh_l1))
    assert m._flat_weights[m._flat_weights_names.index("weight_hh_l1")] is m.weight_hh_l1


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("name", ["input_dropout", "recurrent_dropout", "weight_dropout", "zoneout_hidden"])
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1, float("nan"), "0.2"])
def test_options_assigned_later_are_checked(name, value) -> None:
    layer = rnndrop.GRU(4, 6)
    with pytest.raises((ValueError, TypeError), match=rf"{name} must be") as caught:
        setattr(layer, name, value)
    try:  # the constructor says the same
        rnndrop.GRU(4, 6, **{name: value})
    except (ValueError, TypeError) as exc:
        assert type(exc) is type(caught.value) and str(exc) == str(caught.value)
    else:
        pytest.fail("the constructor accepted what assignment refused")
    assert getattr(layer, name) == 0.0
    setattr(layer, name, 0.3)
    assert getattr(layer, name) == 0.3


def test_mode_specific_options_assigned_later() -> None:
    with pytest.raises(ValueError, match="candidate_dropout"):
        rnndrop.RNN(4, 6).candidate_dropout = 0.2
    with pytest.raises(ValueError, match="zoneout_cell"):
        rnndrop.GRU(4, 6).zoneout_cell = 0.2
    with pytest.raises(ValueError, match="gate_masks"):
        rnndrop.LSTM(4, 6).gate_masks = "tied"
    with pytest.raises(ValueError, match="backend"):
        rnndrop.LSTM(4, 6).backend = "cudnn"


@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_dropout_one_as_torch_nn(mode) -> None:
    """torch.nn accepts dropout=1 (the next layer sees zeros); so does rnndrop, in construction and later."""
    torch.manual_seed(0)
    theirs = getattr(nn, mode)(4, 6, num_layers=2, dropout=1.0)
    ours = LAYERS[mode](4, 6, num_layers=2, dropout=1.0)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(5, 3, 4)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    ours.dropout = 0.0
    ours.dropout = 1.0
    assert ours.dropout == 1.0


def test_non_bool_flags_are_refused_as_torch_does() -> None:
    for flag in ("bias", "batch_first"):
        for value in ("False", 0, 1):
            with pytest.raises(TypeError, match=f"{flag} should be of type bool, got: {type(value).__name__}"):
                rnndrop.LSTM(4, 6, **{flag: value})


@pytest.mark.parametrize("cls", [rnndrop.GRU, rnndrop.RNN])
def test_proj_size_on_gru_and_rnn(cls) -> None:
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM, not RNN or GRU"):
        cls(4, 6, proj_size=2)
    assert cls(4, 6, proj_size=0).proj_size == 0


@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_runtime_errors_are_torch_runtime_errors(mode) -> None:
    """hx / input sizes and empty sequences: RuntimeError with torch.nn's text (and still rnndrop's ValueError)."""
    m = LAYERS[mode](4, 5)
    bad_h = torch.zeros(1, 3, 5)
    hx = (bad_h, torch.zeros(1, 2, 5)) if mode == "LSTM" else bad_h
    which = "hidden\\[0\\]" if mode == "LSTM" else "hidden"
    cases = [
        (lambda: m(torch.randn(3, 2, 4), hx), rf"Expected {which} size \(1, 2, 5\), got \[1, 3, 5\]"),
        (lambda: m(torch.randn(3, 2, 6)), r"input.size\(-1\) must be equal to input_size. Expected 4, got 6"),
        (lambda: m(torch.randn(0, 2, 4)), "Expected sequence length to be larger than 0 in RNN"),
        (lambda: m(torch.randn(3, 2, 4), (torch.zeros(2, 5), torch.zeros(2, 5)) if mode == "LSTM" else bad_h[0]),
         "For batched 3-D input, hx (and cx )?should also be 3-D but got"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message) as caught:
            call()
        assert isinstance(caught.value, ValueError | TypeError)
    with pytest.raises(ValueError, match=re.escape("RNN input dtype (torch.float64) does not match weight dtype")):
        m(torch.randn(3, 2, 4, dtype=F64))


# ----------------------------------------------------------------------------- no silent slow path
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", sorted(LAYERS))
def test_low_precision_parameters_run_the_fused_kernel(kernel, mode, dtype) -> None:
    """``model.to(torch.bfloat16)``: the fused kernel in float32, at least as close to the exact answer."""
    torch.manual_seed(0)
    kw = {"input_dropout": 0.2, "recurrent_dropout": 0.2}
    ours = LAYERS[mode](8, 32, **kw).to(dtype)
    ref = LAYERS[mode](8, 32, backend="reference", **kw).to(dtype)
    exact = LAYERS[mode](8, 32, backend="reference", **kw).to(F64)
    ref.load_state_dict(ours.state_dict())
    exact.load_state_dict(ours.state_dict())
    x = torch.randn(12, 4, 8).to(dtype).requires_grad_()
    masks = ours.sample_masks(4, 12)
    got, want = ours(x, dropout_masks=masks)[0], ref(x, dropout_masks=masks)[0]
    assert ours.last_backend == "fused" and got.dtype == dtype
    x64 = x.detach().to(F64).requires_grad_()
    truth = exact(x64, dropout_masks=masks.to(F64))[0]
    assert (got.to(F64) - truth).abs().max() <= (want.to(F64) - truth).abs().max()
    g_ours = torch.autograd.grad(got.float().sum(), [x, *ours.parameters()])
    g_truth = torch.autograd.grad(truth.sum(), [x64, *exact.parameters()])
    g_ref = torch.autograd.grad(want.float().sum(), [x, *ref.parameters()])
    for a, t, r in zip(g_ours, g_truth, g_ref):
        assert a.dtype == dtype
        assert (a.to(F64) - t).abs().max() <= (r.to(F64) - t).abs().max() * 1.5 + 1e-6


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_keras_hard_sigmoid_runs_the_fused_kernel(kernel, mode) -> None:
    ours, ref = _pair(mode, "auto", recurrent_activation="hard_sigmoid", recurrent_dropout=0.3)
    x = torch.randn(6, 3, 4, dtype=F64, requires_grad=True)
    masks = ours.sample_masks(3, 6)
    outs = [m(x, dropout_masks=masks)[0] for m in (ours, ref)]
    assert ours.last_backend == "fused"
    torch.testing.assert_close(outs[0], outs[1])
    grads = [torch.autograd.grad(o.sum(), [x, *m.parameters()]) for o, m in zip(outs, (ours, ref))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_a_reference_fallback_warns_once_at_the_users_line(kernel, monkeypatch) -> None:
    monkeypatch.setattr(registry, "_warned_reasons", set())
    m = rnndrop.LSTM(4, 6, proj_size=3, recurrent_dropout=0.2)  # per-sample masks with a projection
    x = torch.randn(5, 2, 4)
    with pytest.warns(rnndrop.KernelFallbackWarning, match="reference loop.*proj_size.*Cost") as record:
        m(x)
    assert record[0].filename == __file__
    assert m.last_backend == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(x)  # once per process and reason


@pytest.mark.skipif(torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has oneDNN's bf16 LSTM")
def test_lstm_autocast_on_a_cpu_without_onednn_bf16(kernel) -> None:
    """torch.nn.LSTM raises here under bf16 autocast ("could not create a primitive descriptor"); rnndrop runs."""
    m = rnndrop.LSTM(4, 6).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(torch.randn(5, 2, 4))[0]
        with pytest.raises(RuntimeError, match="primitive descriptor"):
            nn.LSTM(4, 6).eval()(torch.randn(5, 2, 4))
    assert out.dtype == torch.float32 and m.last_backend != "torch"
    assert "oneDNN has no torch.bfloat16 LSTM" in m.last_backend_reason or m.last_backend == "fused"


def test_projection_available_on_avx2_and_avx512(kernel) -> None:
    """The float32 micro-kernel (and with it the packed input projection) is built for AVX2 and AVX-512."""
    from rnndrop._kernels import loader

    if loader.cpu_capability() in ("AVX2", "AVX512"):
        assert ops.projection_available()
