"""The cell equations (rnndrop.cells) and their gradients.

* ``gradcheck`` (float64, tiny sizes) of every cell run through a layer with input and recurrent
  dropout both on, masks fixed by a seed and injected, shared and per-gate, with and without a
  Keras step mask, with respect to the input, the initial states and every parameter.
* GRU ``reset_after=False`` — which torch.nn lacks — against its formula written out here.
* The per-gate mask products against a plain loop over gate blocks.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import rnndrop
from rnndrop.activations import get_activation
from rnndrop.cells import gru_step, input_projection, lstm_step, recurrent_product, rnn_step

F64 = torch.float64
INPUT, HIDDEN, TIME, BATCH = 2, 3, 3, 2
GATES = {"lstm": 4, "lstm_proj": 4, "gru_after": 3, "gru_before": 3, "rnn": 1}


def make_layer(kind: str, **kw) -> torch.nn.Module:
    if kind.startswith("lstm"):
        return rnndrop.LSTM(INPUT, HIDDEN, proj_size=2 if kind == "lstm_proj" else 0, dtype=F64, **kw)
    if kind.startswith("gru"):
        return rnndrop.GRU(INPUT, HIDDEN, reset_after=kind == "gru_after", dtype=F64, **kw)
    return rnndrop.RNN(INPUT, HIDDEN, dtype=F64, **kw)


# The reference path (the definition) and the default dispatch (the fused kernel where eligible).
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("kind", list(GATES))
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
@pytest.mark.parametrize("with_step_mask", [False, True])
def test_gradcheck_with_dropout(kind, gate_masks, with_step_mask, backend):
    torch.manual_seed(0)
    layer = make_layer(kind, bidirectional=True, input_dropout=0.5, recurrent_dropout=0.5, gate_masks=gate_masks,
                       backend=backend)
    # At these sizes a mask can come out all kept; take the first seed whose every mask has both
    # dropped and kept entries, so both are exercised (deterministic: the search is seeded too).
    for seed in range(100):
        masks = layer.sample_masks(BATCH, TIME, generator=torch.Generator().manual_seed(seed))
        tensors = [m for dm in masks.layers[0] for m in (dm.input, dm.recurrent)]
        if all((m == 0).any() and (m != 0).any() for m in tensors):
            break
    else:
        pytest.fail("no seed below 100 gives mixed masks")
    # A hole in row 0 and left padding in row 1 (carry-over in both directions).
    step_mask = torch.tensor([[True, False, True], [False, True, True]]) if with_step_mask else None
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    x = torch.randn(TIME, BATCH, INPUT, dtype=F64, requires_grad=True)
    h_out = layer.proj_size or HIDDEN
    h0 = torch.randn(2, BATCH, h_out, dtype=F64, requires_grad=True)
    c0 = torch.randn(2, BATCH, HIDDEN, dtype=F64, requires_grad=True)
    is_lstm = kind.startswith("lstm")

    def run(x, h0, c0, *flat):
        hx = (h0, c0) if is_lstm else h0
        out, hidden = functional_call(
            layer, dict(zip(names, flat)), (x, hx), {"dropout_masks": masks, "step_mask": step_mask}
        )
        return (out, *hidden) if is_lstm else (out, hidden)

    inputs = (x, h0, c0, *params) if is_lstm else (x, h0, c0.detach(), *params)
    # The full Jacobian check costs ~1 s per case here, so it runs on the richest configuration
    # (per-gate masks and a step mask); the others use gradcheck's fast mode (random projections
    # of the same Jacobians, which catches any wrong backward with probability ~1).
    fast = not (gate_masks == "per_gate" and with_step_mask)
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast)


# --------------------------------------------------------------------------- GRU reset_after=False
def _gru_before_formula(x, h, w_ih, w_hh, b_ih, b_hh, m_r, m_z, m_n):
    """Keras's reset-before GRU written out: the reset gate scales ``h`` *before* the recurrent matmul.

    r = σ(x W_ir^T + b_ir + (h⊙m_r) W_hr^T + b_hr);  z = σ(x W_iz^T + b_iz + (h⊙m_z) W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + (r ⊙ h⊙m_n) W_hn^T + b_hn);  h' = (1 - z) n + z h
    """
    hs = h.shape[-1]
    w_ir, w_iz, w_in = w_ih[:hs], w_ih[hs : 2 * hs], w_ih[2 * hs :]
    w_hr, w_hz, w_hn = w_hh[:hs], w_hh[hs : 2 * hs], w_hh[2 * hs :]
    b_ir, b_iz, b_in = b_ih[:hs], b_ih[hs : 2 * hs], b_ih[2 * hs :]
    b_hr, b_hz, b_hn = b_hh[:hs], b_hh[hs : 2 * hs], b_hh[2 * hs :]
    r = torch.sigmoid(x @ w_ir.T + b_ir + (h * m_r) @ w_hr.T + b_hr)
    z = torch.sigmoid(x @ w_iz.T + b_iz + (h * m_z) @ w_hz.T + b_hz)
    n = torch.tanh(x @ w_in.T + b_in + (r * h * m_n) @ w_hn.T + b_hn)
    return (1 - z) * n + z * h


@pytest.mark.parametrize("mask_kind", ["none", "shared", "per_gate"])
def test_gru_reset_before_step_matches_formula(mask_kind):
    gen = torch.Generator().manual_seed(2)
    batch, hs, ins = 4, 5, 3
    x = torch.randn(batch, ins, generator=gen, dtype=F64)
    h = torch.randn(batch, hs, generator=gen, dtype=F64)
    w_ih = torch.randn(3 * hs, ins, generator=gen, dtype=F64)
    w_hh = torch.randn(3 * hs, hs, generator=gen, dtype=F64)
    b_ih = torch.randn(3 * hs, generator=gen, dtype=F64)
    b_hh = torch.randn(3 * hs, generator=gen, dtype=F64)
    ones = torch.ones(batch, hs, dtype=F64)
    if mask_kind == "none":
        mask, gate_masks = None, (ones, ones, ones)
    else:
        g = 1 if mask_kind == "shared" else 3
        mask = torch.randint(0, 2, (g, batch, hs), generator=gen).to(F64) * 2.0
        gate_masks = tuple(mask[j if g == 3 else 0] for j in range(3))
    gi = input_projection(x.unsqueeze(0), w_ih, b_ih, None)[0]
    got = gru_step(gi, h, w_hh, b_hh, mask, torch.tanh, torch.sigmoid, reset_after=False)
    want = _gru_before_formula(x, h, w_ih, w_hh, b_ih, b_hh, *gate_masks)
    assert torch.allclose(got, want, rtol=0, atol=1e-13)
    after = gru_step(gi, h, w_hh, b_hh, mask, torch.tanh, torch.sigmoid, reset_after=True)
    assert (after - want).abs().max() > 1e-3, "the two reset variants must differ"


def test_gru_reset_before_layer_two_steps():
    torch.manual_seed(3)
    layer = rnndrop.GRU(3, 4, reset_after=False, dtype=F64)
    x = torch.randn(2, 1, 3, dtype=F64)
    h = torch.randn(1, 1, 4, dtype=F64)
    out, h_n = layer(x, h)
    ones = torch.ones(1, 4, dtype=F64)
    p = [layer.weight_ih_l0, layer.weight_hh_l0, layer.bias_ih_l0, layer.bias_hh_l0]
    h1 = _gru_before_formula(x[0], h[0], *p, ones, ones, ones)
    h2 = _gru_before_formula(x[1], h1, *p, ones, ones, ones)
    assert torch.allclose(out[:, 0], torch.cat([h1, h2]), rtol=0, atol=1e-13)
    assert torch.allclose(h_n[0], h2, rtol=0, atol=1e-13)


# --------------------------------------------------------------------------- per-gate products, activations
@pytest.mark.parametrize("gates", [1, 3, 4])
def test_per_gate_products_equal_block_loop(gates):
    gen = torch.Generator().manual_seed(4)
    t, b, i, h, h_out = 3, 5, 4, 6, 2
    x = torch.randn(t, b, i, generator=gen, dtype=F64)
    hp = torch.randn(b, h_out, generator=gen, dtype=F64)
    w_ih = torch.randn(gates * h, i, generator=gen, dtype=F64)
    w_hh = torch.randn(gates * h, h_out, generator=gen, dtype=F64)
    m_in = torch.rand(gates, b, i, generator=gen, dtype=F64)
    m_rec = torch.rand(gates, b, h_out, generator=gen, dtype=F64)
    want_in = torch.cat([(x * m_in[g]) @ w_ih[g * h : (g + 1) * h].T for g in range(gates)], -1)
    want_rec = torch.cat([(hp * m_rec[g]) @ w_hh[g * h : (g + 1) * h].T for g in range(gates)], -1)
    assert torch.allclose(input_projection(x, w_ih, None, m_in), want_in, rtol=0, atol=1e-13)
    assert torch.allclose(recurrent_product(hp, w_hh, m_rec), want_rec, rtol=0, atol=1e-13)
    # A batch-broadcast mask (B = 1) means the same mask for every sample.
    assert torch.allclose(
        recurrent_product(hp, w_hh, m_rec[:, :1]),
        recurrent_product(hp, w_hh, m_rec[:, :1].expand(-1, b, -1)), rtol=0, atol=1e-13,
    )


def test_lstm_step_with_hard_sigmoid_recurrent_activation():
    gen = torch.Generator().manual_seed(5)
    b, hs = 3, 4
    gi = torch.randn(b, 4 * hs, generator=gen, dtype=F64) * 4  # wide range: hit both clip ends
    h = torch.randn(b, hs, generator=gen, dtype=F64)
    c = torch.randn(b, hs, generator=gen, dtype=F64)
    w_hh = torch.randn(4 * hs, hs, generator=gen, dtype=F64)
    hard = get_activation("hard_sigmoid")
    h_new, c_new = lstm_step(gi, h, c, w_hh, None, None, None, torch.tanh, hard)
    pre = gi + h @ w_hh.T
    i, f, g, o = pre.chunk(4, -1)

    def clip(v):
        return torch.clamp(v / 6 + 0.5, 0, 1)

    want_c = clip(f) * c + clip(i) * torch.tanh(g)
    assert torch.allclose(c_new, want_c, rtol=0, atol=1e-13)
    assert torch.allclose(h_new, clip(o) * torch.tanh(want_c), rtol=0, atol=1e-13)


def test_rnn_step_linear_activation():
    gen = torch.Generator().manual_seed(6)
    gi, h = torch.randn(2, 3, generator=gen, dtype=F64), torch.randn(2, 3, generator=gen, dtype=F64)
    w, b = torch.randn(3, 3, generator=gen, dtype=F64), torch.randn(3, generator=gen, dtype=F64)
    assert torch.allclose(rnn_step(gi, h, w, b, None, get_activation("linear")), gi + h @ w.T + b, rtol=0, atol=1e-14)
