"""Semantics of the in-layer dropout family: DropConnect, candidate dropout, zoneout, mask scope,
locked between-layer dropout. Each test pins one documented rule of rnndrop.masks."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import rnndrop
from rnndrop import DirectionMasks, DropoutMasks

F64 = torch.float64


def six_sigma(p: float, n: int) -> float:
    return 6.0 * math.sqrt(p * (1 - p) / n)


def one_layer_masks(**fields) -> DropoutMasks:
    return DropoutMasks(((DirectionMasks(**fields),),))


# ---------------------------------------------------------------- weight dropout (DropConnect)
@pytest.mark.parametrize("cls", [rnndrop.LSTM, rnndrop.GRU, rnndrop.RNN])
def test_weight_dropout_equals_layer_with_dropped_weight(cls):
    torch.manual_seed(0)
    layer = cls(3, 4, weight_dropout=0.5, dtype=F64)
    plain = cls(3, 4, dtype=F64)
    plain.load_state_dict(layer.state_dict())
    mask = layer.sample_masks(2, 5).layers[0][0].weight_hh
    assert mask.shape == layer.weight_hh_l0.shape
    with torch.no_grad():
        plain.weight_hh_l0.mul_(mask)
    x = torch.randn(5, 2, 3, dtype=F64)
    out, _ = layer(x, dropout_masks=one_layer_masks(weight_hh=mask))
    ref, _ = plain(x)
    assert torch.allclose(out, ref, atol=1e-12, rtol=0)


def test_weight_dropout_keeps_raw_weight_and_trains_it():
    torch.manual_seed(1)
    layer = rnndrop.LSTM(3, 4, weight_dropout=0.5)
    keys = list(layer.state_dict())
    assert keys == list(torch.nn.LSTM(3, 4).state_dict())  # no extra or renamed entries
    before = layer.weight_hh_l0.detach().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    mask = layer.sample_masks(2, 5).layers[0][0].weight_hh
    out, _ = layer(torch.randn(5, 2, 3), dropout_masks=one_layer_masks(weight_hh=mask))
    out.sum().backward()
    grad = layer.weight_hh_l0.grad
    assert torch.all(grad[mask == 0] == 0)  # dropped connections get no gradient this step
    assert grad[mask != 0].abs().sum() > 0
    opt.step()
    assert not torch.equal(before, layer.weight_hh_l0.detach())  # the raw parameter itself moved
    clone = copy.deepcopy(layer).to(F64)
    clone.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    assert torch.equal(clone.weight_hh_l0, layer.weight_hh_l0.double())


def test_weight_mask_rate_and_fresh_per_call():
    layer = rnndrop.GRU(8, 64, weight_dropout=0.3)
    gen = torch.Generator().manual_seed(0)
    a = layer.sample_masks(4, 3, generator=gen).layers[0][0].weight_hh
    b = layer.sample_masks(4, 3, generator=gen).layers[0][0].weight_hh
    n = a.numel()
    assert abs((a == 0).double().mean().item() - 0.3) < six_sigma(0.3, n)
    assert torch.all((a == 0) | torch.isclose(a, torch.tensor(1 / 0.7)))
    assert not torch.equal(a, b)


# ---------------------------------------------------------------- candidate dropout (Semeniuta)
def test_lstm_candidate_dropout_one_step_by_hand():
    torch.manual_seed(2)
    layer = rnndrop.LSTM(3, 4, candidate_dropout=0.5, dtype=F64)
    x = torch.randn(1, 2, 3, dtype=F64)
    h0, c0 = torch.randn(1, 2, 4, dtype=F64), torch.randn(1, 2, 4, dtype=F64)
    d = layer.sample_masks(2, 1).layers[0][0].candidate
    _, (h1, c1) = layer(x, (h0, c0), dropout_masks=one_layer_masks(candidate=d))
    gates = x[0] @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h0[0] @ layer.weight_hh_l0.T + layer.bias_hh_l0
    i, f, g, o = gates.chunk(4, -1)
    c_ref = torch.sigmoid(f) * c0[0] + torch.sigmoid(i) * (d[0] * torch.tanh(g))
    assert torch.allclose(c1[0], c_ref, atol=1e-12)
    assert torch.allclose(h1[0], torch.sigmoid(o) * torch.tanh(c_ref), atol=1e-12)


def test_candidate_dropout_keeps_memory():
    # With every candidate unit dropped the LSTM still remembers: c' = f * c, never zeroed.
    torch.manual_seed(3)
    layer = rnndrop.LSTM(3, 4, candidate_dropout=0.5, dtype=F64)
    c0 = torch.ones(1, 2, 4, dtype=F64)
    zeros = torch.zeros(1, 2, 4, dtype=F64)
    _, (_, c1) = layer(torch.randn(1, 2, 3, dtype=F64), (zeros, c0), dropout_masks=one_layer_masks(candidate=zeros))
    assert torch.all(c1 > 0)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_candidate_dropout_one_step_by_hand(reset_after):
    torch.manual_seed(4)
    layer = rnndrop.GRU(3, 4, candidate_dropout=0.5, reset_after=reset_after, dtype=F64)
    plain = rnndrop.GRU(3, 4, reset_after=reset_after, dtype=F64)
    plain.load_state_dict(layer.state_dict())
    x, h0 = torch.randn(1, 2, 3, dtype=F64), torch.randn(1, 2, 4, dtype=F64)
    d = layer.sample_masks(2, 1).layers[0][0].candidate
    _, h1 = layer(x, h0, dropout_masks=one_layer_masks(candidate=d))
    # n is recovered from an undropped run: h' = (1 - z) n + z h, z from the r/z gates.
    gi = x[0] @ layer.weight_ih_l0.T + layer.bias_ih_l0
    gh = h0[0] @ layer.weight_hh_l0.T + layer.bias_hh_l0
    z = torch.sigmoid(gi[:, 4:8] + gh[:, 4:8])
    _, h_plain = plain(x, h0)
    n = (h_plain[0] - z * h0[0]) / (1 - z)
    assert torch.allclose(h1[0], (1 - z) * d[0] * n + z * h0[0], atol=1e-10)


def test_candidate_dropout_rejected_for_rnn():
    with pytest.raises(ValueError, match="candidate_dropout"):
        rnndrop.RecurrentBase("RNN", 3, 4, candidate_dropout=0.1)


# ---------------------------------------------------------------- zoneout
def test_zoneout_train_masks_fresh_per_step_and_binary():
    layer = rnndrop.LSTM(3, 32, zoneout_hidden=0.3, zoneout_cell=0.1)
    m = layer.sample_masks(64, 50, generator=torch.Generator().manual_seed(0)).layers[0][0]
    assert m.zoneout_h.shape == (50, 64, 32) and m.zoneout_c.shape == (50, 64, 32)
    assert set(m.zoneout_h.unique().tolist()) == {0.0, 1.0}  # unscaled keep-previous weights
    n = m.zoneout_h.numel()
    assert abs(m.zoneout_h.mean().item() - 0.3) < six_sigma(0.3, n)
    assert abs(m.zoneout_c.mean().item() - 0.1) < six_sigma(0.1, n)
    # fresh per timestep: consecutive steps agree only at the rate of independent draws
    agree = (m.zoneout_h[1:] == m.zoneout_h[:-1]).double().mean().item()
    expected = 0.3**2 + 0.7**2
    assert abs(agree - expected) < six_sigma(expected, m.zoneout_h[1:].numel())


@pytest.mark.parametrize("cls", [rnndrop.LSTM, rnndrop.GRU, rnndrop.RNN])
def test_zoneout_all_keep_freezes_state(cls):
    torch.manual_seed(5)
    kwargs = {"zoneout_cell": 0.5} if cls is rnndrop.LSTM else {}
    layer = cls(3, 4, zoneout_hidden=0.5, dtype=F64, **kwargs)
    x = torch.randn(6, 2, 3, dtype=F64)
    h0 = torch.randn(1, 2, 4, dtype=F64)
    hx = (h0, torch.randn(1, 2, 4, dtype=F64)) if cls is rnndrop.LSTM else h0
    ones = torch.ones(6, 2, 4, dtype=F64)
    masks = one_layer_masks(zoneout_h=ones, zoneout_c=ones if cls is rnndrop.LSTM else None)
    out, h = layer(x, hx, dropout_masks=masks)
    assert torch.equal(out, h0.expand(6, 2, 4))  # every step keeps the previous h exactly
    if cls is rnndrop.LSTM:
        assert torch.equal(h[1], hx[1])


def test_zoneout_eval_is_expectation():
    torch.manual_seed(6)
    z_h, z_c = 0.3, 0.2
    layer = rnndrop.LSTM(3, 4, zoneout_hidden=z_h, zoneout_cell=z_c, dtype=F64).eval()
    plain = rnndrop.LSTM(3, 4, dtype=F64)
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(1, 2, 3, dtype=F64)
    h0, c0 = torch.randn(1, 2, 4, dtype=F64), torch.randn(1, 2, 4, dtype=F64)
    _, (h_new, c_new) = plain(x, (h0, c0))  # one step: the undisturbed update
    _, (h1, c1) = layer(x, (h0, c0))
    # Krueger et al. eq. for LSTM: h and c each mix with their previous value; h's candidate
    # o * tanh(f c + i g) uses the undisturbed new c, not the zoned-out one.
    assert torch.allclose(c1, z_c * c0 + (1 - z_c) * c_new, atol=1e-12)
    assert torch.allclose(h1, z_h * h0 + (1 - z_h) * h_new, atol=1e-12)
    assert torch.equal(layer(x, (h0, c0))[0], layer(x, (h0, c0))[0])  # deterministic


def test_zoneout_cell_rejected_for_gru():
    with pytest.raises(ValueError, match="zoneout_cell"):
        rnndrop.RecurrentBase("GRU", 3, 4, zoneout_cell=0.1)


# ---------------------------------------------------------------- mask scope and locked between-layer dropout
def test_mask_scope_batch_shares_masks_across_the_batch():
    torch.manual_seed(7)
    x = torch.randn(5, 1, 3).expand(5, 6, 3)  # the same sequence six times
    shared = rnndrop.GRU(3, 8, input_dropout=0.5, recurrent_dropout=0.5, mask_scope="batch")
    out, _ = shared(x)
    assert torch.allclose(out, out[:, :1].expand_as(out))
    per_sample = rnndrop.GRU(3, 8, input_dropout=0.5, recurrent_dropout=0.5)
    out, _ = per_sample(x)
    assert not torch.allclose(out, out[:, :1].expand_as(out))
    masks = shared.sample_masks(6, 5).layers[0][0]
    assert masks.input.shape == (1, 1, 3) and masks.recurrent.shape == (1, 1, 8)


def test_mask_scope_rejects_unknown():
    with pytest.raises(ValueError, match="mask_scope"):
        rnndrop.LSTM(3, 4, mask_scope="timestep")


def test_locked_between_layer_dropout_is_time_locked():
    layer = rnndrop.LSTM(3, 16, num_layers=3, dropout=0.4, locked_dropout=True)
    masks = layer.sample_masks(32, 20, generator=torch.Generator().manual_seed(0))
    assert len(masks.between) == 2
    for m in masks.between:
        assert m.shape == (1, 32, 16)
        assert abs((m == 0).double().mean().item() - 0.4) < six_sigma(0.4, m.numel())
    unlocked = rnndrop.LSTM(3, 16, num_layers=3, dropout=0.4).sample_masks(32, 20)
    assert unlocked.between[0].shape == (20, 32, 16)


# ---------------------------------------------------------------- everything together
@pytest.mark.parametrize("cls, extra", [
    (rnndrop.LSTM, {"zoneout_cell": 0.2, "candidate_dropout": 0.3}),
    (rnndrop.GRU, {"candidate_dropout": 0.3}),
    (rnndrop.RNN, {}),
])
def test_all_options_compose_gradcheck(cls, extra):
    torch.manual_seed(8)
    layer = cls(2, 3, num_layers=2, bidirectional=True, dropout=0.3, input_dropout=0.3, recurrent_dropout=0.3,
                weight_dropout=0.3, zoneout_hidden=0.2, gate_masks="per_gate", dtype=F64, **extra)
    masks = layer.sample_masks(2, 4)
    step_mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    x = torch.randn(4, 2, 2, dtype=F64, requires_grad=True)
    params = tuple(layer.parameters())

    def f(x, *ps):
        with torch.nn.utils.stateless._reparametrize_module(layer, dict(zip(dict(layer.named_parameters()), ps))):
            out, _ = layer(x, step_mask=step_mask, dropout_masks=masks)
        return out

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-6)


def test_masks_per_sample_declares_batch_shared_noise():
    assert rnndrop.LSTM(3, 4, recurrent_dropout=0.2).masks_per_sample
    assert not rnndrop.LSTM(3, 4, weight_dropout=0.2).masks_per_sample
    assert not rnndrop.GRU(3, 4, input_dropout=0.2, mask_scope="batch").masks_per_sample


def test_unbatched_lengths_may_be_a_number():
    layer = rnndrop.GRU(3, 4, dtype=F64)
    x = torch.randn(6, 3, dtype=F64)
    out, h = layer(x, lengths=4)
    ref, h_ref = layer(x[:4])
    assert torch.equal(out[4:], torch.zeros(2, 4, dtype=F64))
    assert torch.allclose(out[:4], ref, atol=1e-14) and torch.allclose(h, h_ref, atol=1e-14)
