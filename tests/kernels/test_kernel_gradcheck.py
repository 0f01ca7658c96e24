"""``torch.autograd.gradcheck`` of the fused direction (float64, tiny sizes): the hand-derived
backward against finite differences, for every cell, mask layout, step mask and direction."""

from __future__ import annotations

import pytest
import torch

from rnndrop._kernels.autograd import fused_run_direction
from rnndrop.masks import DirectionMasks, bernoulli_mask
from rnndrop.reference import CellConfig, DirectionParams

F64 = torch.float64


@pytest.mark.parametrize("mode,reset_after", [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)])
@pytest.mark.parametrize("gates", [0, 1, "all"])
@pytest.mark.parametrize("reverse,zero_fill", [(False, False), (True, True)])
def test_gradcheck_fused_direction(kernel, mode: str, reset_after: bool, gates, reverse: bool, zero_fill: bool) -> None:
    g = torch.Generator().manual_seed(7)
    t, b, i, h = 4, 5, 3, 2
    n_gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    n_mask = n_gates if gates == "all" else gates
    cfg = CellConfig(mode, "tanh", "sigmoid" if mode != "RNN" else "linear", reset_after)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, dtype=F64, generator=g) * 0.6).requires_grad_()

    x = rand(t, b, i)
    w_ih, w_hh, b_ih, b_hh = rand(n_gates * h, i), rand(n_gates * h, h), rand(n_gates * h), rand(n_gates * h)
    states = [rand(b, h) for _ in range(2 if mode == "LSTM" else 1)]
    masks = DirectionMasks()
    if n_mask:
        masks = DirectionMasks(
            input=bernoulli_mask((n_mask, b, i), 0.3, dtype=F64, device="cpu", generator=g),
            recurrent=bernoulli_mask((n_mask, b, h), 0.3, dtype=F64, device="cpu", generator=g),
        )
    steps = torch.rand(t, b, generator=g) < 0.7
    steps[:, 0] = True  # one row without holes

    def fn(x, w_ih, w_hh, b_ih, b_hh, *states):
        p = DirectionParams(w_ih, w_hh, b_ih, b_hh)
        out, final = fused_run_direction(cfg, x, tuple(states), p, masks, steps, reverse, zero_fill)
        return (out, *final)

    assert torch.autograd.gradcheck(fn, (x, w_ih, w_hh, b_ih, b_hh, *states), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode,reset_after", [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)])
def test_second_derivatives_of_the_fused_direction(kernel, mode: str, reset_after: bool) -> None:
    """create_graph=True through the fused kernel: the backward differentiates the reference maths on the
    same inputs and masks (rnndrop._kernels.autograd.Recompute), so gradgradcheck holds, batched too."""
    g = torch.Generator().manual_seed(3)
    t, b, i, h = 3, 2, 2, 2
    n_gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode]
    cfg = CellConfig(mode, "tanh", "sigmoid" if mode != "RNN" else "linear", reset_after)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, dtype=F64, generator=g) * 0.6).requires_grad_()

    x, w_ih, w_hh, b_ih, b_hh = rand(t, b, i), rand(n_gates * h, i), rand(n_gates * h, h), rand(n_gates * h), \
        rand(n_gates * h)
    states = [rand(b, h) for _ in range(2 if mode == "LSTM" else 1)]
    masks = DirectionMasks(
        input=bernoulli_mask((n_gates, b, i), 0.3, dtype=F64, device="cpu", generator=g),
        recurrent=bernoulli_mask((n_gates, b, h), 0.3, dtype=F64, device="cpu", generator=g),
    )
    steps = torch.tensor([[True, True], [False, True], [True, False]])

    def fn(x, w_ih, w_hh, b_ih, b_hh, *states):
        p = DirectionParams(w_ih, w_hh, b_ih, b_hh)
        out, final = fused_run_direction(cfg, x, tuple(states), p, masks, steps, True, False)
        return (out, *final)

    inputs = (x, w_ih, w_hh, b_ih, b_hh, *states)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, check_batched_grad=True)
