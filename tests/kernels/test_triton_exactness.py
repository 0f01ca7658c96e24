"""The Triton kernels equal the reference path given the same masks (issue 7): outputs, final states
and every gradient (input, h0/c0, all weights and biases), float64 to 1e-10 and float32 to 1e-5.

On a machine without a GPU the kernels run under Triton's interpreter on CPU tensors (the very
kernel code a GPU compiles); with a GPU the same tests run on CUDA tensors as well (fixture
``triton_device``, see ``triton_support``). Shapes are tiny because the interpreter runs every
program in numpy.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import TOLERANCE, Case, masks_to, max_scaled_error, run_twins

import rnndrop
from rnndrop._kernels.triton_autograd import triton_run_direction
from rnndrop.masks import DirectionMasks
from rnndrop.reference import CellConfig, DirectionParams

CELLS = [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)]


def check(case: Case) -> None:
    res = run_twins(case)
    assert res["backends"] == ["triton", "reference"], res["backends"]
    err, where = max_scaled_error(res["pairs"])
    assert err <= TOLERANCE[case.dtype], f"{where}: scaled error {err:.3e} for {case}"


# Every cell variant x mask layout, two bidirectional layers (reverse direction, layer input from
# both directions, between-layer dropout), with a random step mask (carry-over mid-sequence).
@pytest.mark.parametrize("mode,reset_after", CELLS)
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
def test_grid_bidirectional_two_layers(triton_device: str, mode: str, reset_after: bool, gate_masks: str) -> None:
    check(Case(mode=mode, reset_after=reset_after, gate_masks=gate_masks, steps="random", batch=3, time=4,
               input_size=3, hidden=4, num_layers=2, bidirectional=True, between_p=0.2, device=triton_device))


@st.composite
def cases(draw: st.DrawFn, dtype: torch.dtype, device: str) -> Case:
    mode, reset_after = draw(st.sampled_from(CELLS))
    return Case(
        mode=mode,
        reset_after=reset_after,
        activation="tanh" if mode != "RNN" else draw(st.sampled_from(["tanh", "relu"])),
        batch=draw(st.integers(1, 4)),
        time=draw(st.integers(1, 4)),
        input_size=draw(st.integers(1, 3)),
        hidden=draw(st.integers(1, 5)),
        num_layers=1,
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        gate_masks=draw(st.sampled_from(["shared", "per_gate"])),
        input_p=draw(st.sampled_from([0.0, 0.4])),
        recurrent_p=draw(st.sampled_from([0.0, 0.4])),
        steps=draw(st.sampled_from(["none", "random", "left", "lengths", "packed", "empty_rows"])),
        zero_output_for_mask=draw(st.booleans()),
        with_h0=draw(st.booleans()),
        dtype=dtype,
        seed=draw(st.integers(0, 2**16)),
        device=device,
    )


_SWEEP = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@settings(_SWEEP, max_examples=40)
@given(data=st.data())
def test_sweep_float64(triton_device: str, data: st.DataObject) -> None:
    check(data.draw(cases(torch.float64, triton_device)))


@settings(_SWEEP, max_examples=15)
@given(data=st.data())
def test_sweep_float32(triton_device: str, data: st.DataObject) -> None:
    check(data.draw(cases(torch.float32, triton_device)))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_activations_beyond_tanh(triton_device: str, mode: str) -> None:
    # relu / sigmoid / linear derivatives are taken from the activation's output in the kernel.
    for act in ("relu", "sigmoid", "linear"):
        check(Case(mode=mode, activation=act, time=3, batch=2, hidden=3, steps="random", device=triton_device))


@pytest.mark.parametrize("mode,reset_after", CELLS)
def test_inference_without_saved_activations(triton_device: str, mode: str, reset_after: bool) -> None:
    # Under no_grad the forward keeps two rolling state slots instead of the whole history; an odd
    # number of steps makes the final state live in the slot a history would not use.
    g = torch.Generator().manual_seed(3)
    cls = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}[mode]
    kw = {"reset_after": reset_after} if mode == "GRU" else {}
    ours = cls(3, 4, dtype=torch.float64, input_dropout=0.3, recurrent_dropout=0.3, gate_masks="per_gate",
               bidirectional=True, backend="fused", **kw)
    ref = cls(3, 4, dtype=torch.float64, input_dropout=0.3, recurrent_dropout=0.3, gate_masks="per_gate",
              bidirectional=True, backend="reference", **kw)
    ref.load_state_dict(ours.state_dict())
    masks = masks_to(ours.sample_masks(2, 5, generator=g), triton_device)
    ours.to(triton_device)
    ref.to(triton_device)
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=g).to(triton_device)
    step_mask = (torch.rand(2, 5, generator=g) < 0.6).to(triton_device)
    with torch.no_grad():
        got = ours(x, dropout_masks=masks, step_mask=step_mask)
        want = ref(x, dropout_masks=masks, step_mask=step_mask)
    assert ours.last_backend == "triton"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,reset_after", [("LSTM", True), ("GRU", False)])
def test_gradcheck_one_direction(triton_device: str, mode: str, reset_after: bool) -> None:
    # The hand-derived backward against finite differences, every input at once: x, h0 (c0),
    # weights and biases, per-gate masks, a step mask with carry-over, reverse direction.
    g = torch.Generator().manual_seed(1)
    gates = {"LSTM": 4, "GRU": 3}[mode]
    t, b, i, h = 3, 2, 2, 2

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * 0.6).to(triton_device).requires_grad_()

    x, h0, c0 = rand(t, b, i), rand(b, h), rand(b, h)
    w_ih, w_hh, b_ih, b_hh = rand(gates * h, i), rand(gates * h, h), rand(gates * h), rand(gates * h)
    keep = torch.tensor([[True, False], [False, True], [True, True]], device=triton_device)
    m_in = (torch.rand(gates, b, i, generator=g) < 0.7).double().to(triton_device) / 0.7
    m_rec = (torch.rand(gates, b, h, generator=g) < 0.7).double().to(triton_device) / 0.7
    cfg = CellConfig(mode, reset_after=reset_after)
    masks = DirectionMasks(input=m_in, recurrent=m_rec)

    def fn(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        state = (h0, c0) if mode == "LSTM" else (h0,)
        out, final = triton_run_direction(cfg, x, state, DirectionParams(w_ih, w_hh, b_ih, b_hh), masks, keep,
                                          True, False)
        return (out, *final)

    inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh) if mode == "LSTM" else (x, h0, None, w_ih, w_hh, b_ih, b_hh)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, fast_mode=True)


def test_second_derivatives_match_the_reference(triton_device: str) -> None:
    """create_graph=True through the Triton kernels: the backward differentiates the reference maths."""
    layers = [rnndrop.GRU(2, 3, dtype=torch.float64, recurrent_dropout=0.2, backend=b).to(triton_device)
              for b in ("fused", "reference")]
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=triton_device, requires_grad=True)
    masks = layers[0].sample_masks(2, 3)
    results = []
    for layer in layers:
        (gx,) = torch.autograd.grad(layer(x, dropout_masks=masks)[0].square().sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), [x, *layer.parameters()]))
    assert layers[0].last_backend == "triton"
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
