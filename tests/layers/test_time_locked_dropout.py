"""Keras-style time-locked input / recurrent dropout, seen through the layers.

Three kinds of checks: (1) identity constructions that expose the mask a layer used (a linear
RNN whose output *is* the mask) for rates, time constancy and fresh draws per call; (2) hand-
written equations of two steps with injected masks, per cell and mask layout; (3) generator and
mode rules (seeded reproducibility, eval = no dropout and no random draws).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import rnndrop
from rnndrop import DirectionMasks, DropoutMasks

F64 = torch.float64
SIGMAS = 6.0


def assert_rate(events: torch.Tensor, q: float) -> None:
    """Observed frequency of ``events`` (independent trials) within 6 binomial sigmas of ``q``."""
    n = events.numel()
    rate = events.double().mean().item()
    tol = SIGMAS * math.sqrt(q * (1 - q) / n)
    assert abs(rate - q) < tol, f"rate {rate:.5f} vs {q} over {n} trials (tol {tol:.5f})"


def linear_rnn(size: int, *, w_ih: torch.Tensor, w_hh: torch.Tensor, **kw) -> rnndrop.RNN:
    layer = rnndrop.RNN(size, size, nonlinearity="linear", bias=False, dtype=F64, **kw)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(w_ih)
        layer.weight_hh_l0.copy_(w_hh)
    return layer


# --------------------------------------------------------------------------- identity constructions
def test_input_mask_rate_values_constant_over_time_and_fresh_per_call():
    """``h_t = (x_t ⊙ m) I``: with ``x = 1`` every output step is the input mask itself."""
    p, size, batch, time = 0.3, 200, 100, 4
    eye = torch.eye(size, dtype=F64)
    layer = linear_rnn(size, w_ih=eye, w_hh=torch.zeros(size, size, dtype=F64), input_dropout=p)
    x = torch.ones(time, batch, size, dtype=F64)
    torch.manual_seed(0)
    out, _ = layer(x)
    mask = out[0]
    assert torch.all((mask == 0) | (mask == 1 / (1 - p)))
    assert_rate(mask == 0, p)
    for t in range(1, time):
        assert torch.equal(out[t], mask), "the input mask must be the same at every timestep"
    again, _ = layer(x)
    assert_rate((again[0] == 0) & (mask == 0), p * p)  # an independent draw, not the same mask
    layer.eval()
    assert torch.equal(layer(x)[0], x)


def test_recurrent_mask_constant_over_time():
    """``h_t = (h_{t-1} ⊙ m) I`` from ``h_0 = 1`` gives ``h_t = m^t``: the same ``m`` at every step."""
    p, size, batch, time = 0.4, 100, 100, 5
    layer = linear_rnn(size, w_ih=torch.zeros(size, size, dtype=F64), w_hh=torch.eye(size, dtype=F64),
                       recurrent_dropout=p)
    torch.manual_seed(1)
    out, h_n = layer(torch.randn(time, batch, size, dtype=F64), torch.ones(1, batch, size, dtype=F64))
    mask = out[0]
    assert torch.all((mask == 0) | (mask == 1 / (1 - p)))
    assert_rate(mask == 0, p)
    for t in range(1, time):
        assert torch.equal(out[t], out[t - 1] * mask)
    assert torch.equal(h_n[0], out[-1])


@pytest.mark.parametrize("kind", ["lstm", "gru_after", "gru_before"])
def test_recurrent_mask_never_touches_c_or_the_blended_h(kind):
    """With ``W_hh = 0`` the recurrent mask has nothing to multiply: the output must not change.

    If the mask also hit ``c`` (LSTM) or the ``z ⊙ h`` blend (GRU) the training run would differ
    from eval. The control with random ``W_hh`` shows the mask does act on ``h``.
    """
    torch.manual_seed(2)
    if kind == "lstm":
        layer = rnndrop.LSTM(3, 16, recurrent_dropout=0.5, dtype=F64)
        hx = (torch.randn(1, 8, 16, dtype=F64), torch.randn(1, 8, 16, dtype=F64))
    else:
        layer = rnndrop.GRU(3, 16, recurrent_dropout=0.5, reset_after=kind == "gru_after", dtype=F64)
        hx = torch.randn(1, 8, 16, dtype=F64)
    x = torch.randn(6, 8, 3, dtype=F64)
    layer.eval()
    control_eval, _ = layer(x, hx)
    layer.train()
    control_train, _ = layer(x, hx)
    assert (control_train - control_eval).abs().max() > 1e-3
    with torch.no_grad():
        layer.weight_hh_l0.zero_()
    layer.eval()
    want, want_h = layer(x, hx)
    layer.train()
    got, got_h = layer(x, hx)
    assert torch.allclose(got, want, rtol=0, atol=1e-14)
    for a, b in zip(got_h if kind == "lstm" else (got_h,), want_h if kind == "lstm" else (want_h,)):
        assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_zero_recurrent_mask_feeds_zero_h_but_carries_c():
    """An all-zero recurrent mask makes every step see ``h = 0`` while ``c`` flows on (LSTMCell loop)."""
    torch.manual_seed(3)
    layer = rnndrop.LSTM(3, 5, recurrent_dropout=0.5, dtype=F64)
    cell = nn.LSTMCell(3, 5, dtype=F64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(layer, f"{name}_l0"))
    x = torch.randn(4, 2, 3, dtype=F64)
    h0, c0 = torch.randn(1, 2, 5, dtype=F64), torch.randn(1, 2, 5, dtype=F64)
    masks = DropoutMasks(((DirectionMasks(None, torch.zeros(1, 2, 5, dtype=F64)),),))
    out, (h_n, c_n) = layer(x, (h0, c0), dropout_masks=masks)
    c = c0[0]
    for t in range(4):
        h, c = cell(x[t], (torch.zeros(2, 5, dtype=F64), c))
        assert torch.allclose(out[t], h, rtol=0, atol=1e-14)
    assert torch.allclose(c_n[0], c, rtol=0, atol=1e-14)
    assert torch.allclose(h_n[0], h, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- hand-written equations
def _blocks(w: torch.Tensor | None, gates: int) -> list[torch.Tensor | None]:
    return [None] * gates if w is None else list(w.chunk(gates, 0))


def hand_step(kind: str, layer: nn.Module, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None,
              m_in: torch.Tensor, m_rec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step from the equations, gate by gate; ``m_in``/``m_rec`` are ``(G_m, B, ·)`` with ``G_m`` 1 or G."""
    gates = {"lstm": 4, "lstm_proj": 4, "gru_after": 3, "gru_before": 3, "rnn": 1}[kind]
    wi, wh = _blocks(layer.weight_ih_l0, gates), _blocks(layer.weight_hh_l0, gates)
    bi, bh = _blocks(layer.bias_ih_l0, gates), _blocks(layer.bias_hh_l0, gates)

    def mi(j):
        return m_in[j if m_in.shape[0] > 1 else 0]

    def mr(j):
        return m_rec[j if m_rec.shape[0] > 1 else 0]

    def x_part(j):
        return (x * mi(j)) @ wi[j].T + bi[j]

    def h_part(j):
        return (h * mr(j)) @ wh[j].T + bh[j]

    sig = torch.sigmoid
    if kind.startswith("lstm"):
        i, f, g, o = (x_part(j) + h_part(j) for j in range(4))
        c_new = sig(f) * c + sig(i) * torch.tanh(g)
        h_new = sig(o) * torch.tanh(c_new)
        if kind == "lstm_proj":
            h_new = h_new @ layer.weight_hr_l0.T
        return h_new, c_new
    if kind == "rnn":
        return torch.tanh(x_part(0) + h_part(0)), None
    r = sig(x_part(0) + h_part(0))
    z = sig(x_part(1) + h_part(1))
    if kind == "gru_after":
        n = torch.tanh(x_part(2) + r * h_part(2))
    else:  # reset before the matmul: (r ⊙ h ⊙ m_n) W_hn^T + b_hn
        n = torch.tanh(x_part(2) + (r * h * mr(2)) @ wh[2].T + bh[2])
    return (1 - z) * n + z * h, None


def make_layer(kind: str, **kw) -> nn.Module:
    if kind.startswith("lstm"):
        return rnndrop.LSTM(3, 4, proj_size=2 if kind == "lstm_proj" else 0, dtype=F64, **kw)
    if kind.startswith("gru"):
        return rnndrop.GRU(3, 4, reset_after=kind == "gru_after", dtype=F64, **kw)
    return rnndrop.RNN(3, 4, dtype=F64, **kw)


@pytest.mark.parametrize("kind", ["lstm", "lstm_proj", "gru_after", "gru_before", "rnn"])
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
@pytest.mark.parametrize("training", [True, False])
def test_injected_masks_equal_hand_equations(kind, gate_masks, training):
    """Two steps, the same injected masks at both: the layer equals the equations written out."""
    torch.manual_seed(4)
    layer = make_layer(kind, input_dropout=0.5, recurrent_dropout=0.5, gate_masks=gate_masks)
    layer.train(training)  # injected masks are used in either mode
    batch = 3
    masks = layer.sample_masks(batch, 2, generator=torch.Generator().manual_seed(5))
    dm = masks.layers[0][0]
    g = {"lstm": 4, "lstm_proj": 4, "gru_after": 3, "gru_before": 3, "rnn": 1}[kind]
    assert dm.input.shape[0] == dm.recurrent.shape[0] == (g if gate_masks == "per_gate" else 1)
    assert (dm.input == 0).any() and (dm.recurrent == 0).any()
    h_out = 2 if kind == "lstm_proj" else 4
    x = torch.randn(2, batch, 3, dtype=F64)
    h = torch.randn(batch, h_out, dtype=F64)
    c = torch.randn(batch, 4, dtype=F64) if kind.startswith("lstm") else None
    hx = (h.unsqueeze(0), c.unsqueeze(0)) if c is not None else h.unsqueeze(0)
    out, hidden = layer(x, hx, dropout_masks=masks)
    for t in range(2):
        h, c = hand_step(kind, layer, x[t], h, c, dm.input, dm.recurrent)
        assert torch.allclose(out[t], h, rtol=0, atol=1e-13), f"step {t}"
    if c is not None:
        assert torch.allclose(hidden[1][0], c, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kind", ["lstm", "gru_after", "gru_before"])
def test_per_gate_with_identical_gate_masks_equals_shared(kind):
    torch.manual_seed(6)
    shared = make_layer(kind, input_dropout=0.5, recurrent_dropout=0.5)
    per_gate = make_layer(kind, input_dropout=0.5, recurrent_dropout=0.5, gate_masks="per_gate")
    per_gate.load_state_dict(shared.state_dict())
    masks = shared.sample_masks(3, 4)
    dm = masks.layers[0][0]
    g = 4 if kind == "lstm" else 3
    tiled = DropoutMasks(((DirectionMasks(dm.input.expand(g, -1, -1), dm.recurrent.expand(g, -1, -1)),),))
    x = torch.randn(4, 3, 3, dtype=F64)
    a, _ = shared(x, dropout_masks=masks)
    b, _ = per_gate(x, dropout_masks=tiled)
    assert torch.allclose(a, b, rtol=0, atol=1e-14)


def test_between_layer_mask_equals_manual_composition():
    """torch's ``dropout`` between layers: the injected ``(T, B, D*H)`` mask multiplies layer 0's output."""
    torch.manual_seed(7)
    stack = rnndrop.GRU(3, 4, num_layers=2, bidirectional=True, dropout=0.5, dtype=F64)
    first = rnndrop.GRU(3, 4, bidirectional=True, dtype=F64)
    second = rnndrop.GRU(8, 4, bidirectional=True, dtype=F64)
    sd = stack.state_dict()
    first.load_state_dict({k: v for k, v in sd.items() if "_l0" in k})
    second.load_state_dict({k.replace("_l1", "_l0"): v for k, v in sd.items() if "_l1" in k})
    masks = stack.sample_masks(2, 5)
    between = masks.between[0]
    assert between.shape == (5, 2, 8) and (between == 0).any()
    x = torch.randn(5, 2, 3, dtype=F64)
    out, h_n = stack(x, dropout_masks=masks)
    mid, h0 = first(x)
    want, h1 = second(mid * between)
    assert torch.allclose(out, want, rtol=0, atol=1e-14)
    assert torch.allclose(h_n, torch.cat([h0, h1]), rtol=0, atol=1e-14)


def test_between_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="dropout"):
        rnndrop.LSTM(3, 4, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rnndrop.LSTM(3, 4, num_layers=2, dropout=0.5)


# --------------------------------------------------------------------------- generators and modes
def _layer_with_dropout(**kw) -> rnndrop.LSTM:
    torch.manual_seed(8)
    return rnndrop.LSTM(3, 6, num_layers=2, bidirectional=True, dropout=0.3, input_dropout=0.3,
                        recurrent_dropout=0.3, gate_masks="per_gate", dtype=F64, **kw)


def test_layer_generator_reproducible_and_fresh_per_call():
    x = torch.randn(5, 4, 3, dtype=F64)
    a = _layer_with_dropout(generator=torch.Generator().manual_seed(10))
    b = _layer_with_dropout(generator=torch.Generator().manual_seed(10))
    a1, b1 = a(x)[0], b(x)[0]
    a2, b2 = a(x)[0], b(x)[0]
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, a2)  # new masks each call
    # The masks the layer draws are exactly the ones sample_masks draws from the same state.
    a.generator.manual_seed(11)
    out = a(x)[0]
    masks = a.sample_masks(4, 5, generator=torch.Generator().manual_seed(11))
    assert torch.equal(out, a(x, dropout_masks=masks)[0])


def test_forward_generator_overrides_layer_generator():
    x = torch.randn(5, 4, 3, dtype=F64)
    own = torch.Generator().manual_seed(12)
    layer = _layer_with_dropout(generator=own)
    before = own.get_state()
    out = layer(x, generator=torch.Generator().manual_seed(13))[0]
    assert torch.equal(own.get_state(), before), "the layer's generator must not be used"
    masks = layer.sample_masks(4, 5, generator=torch.Generator().manual_seed(13))
    assert torch.equal(out, layer(x, dropout_masks=masks)[0])


def test_global_rng_reproducible_without_generator():
    layer = _layer_with_dropout()
    x = torch.randn(5, 4, 3, dtype=F64)
    torch.manual_seed(14)
    first = layer(x)[0]
    torch.manual_seed(14)
    assert torch.equal(layer(x)[0], first)


def test_eval_is_deterministic_and_draws_nothing():
    gen = torch.Generator().manual_seed(15)
    layer = _layer_with_dropout(generator=gen)
    plain = rnndrop.LSTM(3, 6, num_layers=2, bidirectional=True, dtype=F64)
    plain.load_state_dict(layer.state_dict())
    layer.eval()
    x = torch.randn(5, 4, 3, dtype=F64)
    state, global_state = gen.get_state(), torch.get_rng_state()
    out = layer(x)[0]
    assert torch.equal(gen.get_state(), state) and torch.equal(torch.get_rng_state(), global_state)
    assert torch.equal(out, layer(x)[0])
    assert torch.equal(out, plain(x)[0])
