"""Statistics and layout of the time-locked dropout masks (rnndrop.masks).

Rates are checked with tolerances from the binomial variance: an observed frequency of an event
of probability ``q`` over ``n`` independent trials must lie within ``SIGMAS * sqrt(q (1-q) / n)``
of ``q``. With six sigmas a correct sampler fails about once in 5e8 runs; generators are seeded
anyway, so a run is reproducible.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from rnndrop import DirectionMasks, DropoutMasks, MaskSpec, RnnDropTypeError, RnnDropValueError
from rnndrop.counter_rng import keyed_draws, mask_keys

SIGMAS = 6.0
F64 = torch.float64


def tolerance(q: float, n: int) -> float:
    return SIGMAS * math.sqrt(q * (1.0 - q) / n)


def assert_rate(events: torch.Tensor, q: float) -> None:
    """``events`` is a bool tensor of independent trials with success probability ``q``."""
    n = events.numel()
    rate = events.double().mean().item()
    assert abs(rate - q) < tolerance(q, n), f"rate {rate:.5f} vs {q} over {n} trials (tol {tolerance(q, n):.5f})"


def spec(
    num_gates: int = 4,
    *,
    num_layers: int = 2,
    num_directions: int = 2,
    input_size: int = 5,
    hidden_out: int = 6,
    input_p: float = 0.3,
    recurrent_p: float = 0.4,
    between_p: float = 0.5,
    gate_masks: str = "shared",
) -> MaskSpec:
    sizes = (input_size,) + (num_directions * hidden_out,) * (num_layers - 1)
    return MaskSpec(
        num_layers=num_layers, num_directions=num_directions, num_gates=num_gates, input_sizes=sizes,
        hidden_out=hidden_out, input_p=input_p, recurrent_p=recurrent_p, between_p=between_p,
        gate_masks=gate_masks,
    )


def input_mask(batch: int, features: int, p: float, seed: int, dtype: torch.dtype = F64) -> torch.Tensor:
    """A layer's input mask ``(1, batch, features)`` as MaskSpec.sample draws it, from a seeded generator."""
    s = spec(1, num_layers=1, num_directions=1, input_size=features, input_p=p, recurrent_p=0.0, between_p=0.0)
    masks = s.sample(batch, 1, dtype=dtype, device="cpu", generator=torch.Generator().manual_seed(seed))
    return masks.layers[0][0].input


# --------------------------------------------------------------------------- values and rate
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_mask_values_and_drop_rate(p):
    mask = input_mask(400, 500, p, int(p * 100))
    scale = 1.0 / (1.0 - p)
    zero, kept = mask == 0, mask == scale
    assert torch.all(zero | kept), "every entry must be exactly 0 or 1/(1-p)"
    assert_rate(zero, p)
    # The scaling keeps the expectation: E[m] = 1.
    n = mask.numel()
    assert abs(mask.mean().item() - 1.0) < SIGMAS * math.sqrt(p / (1 - p) / n)


def test_float32_mask_values():
    mask = input_mask(64, 64, 0.3, 0, torch.float32)
    assert mask.dtype == torch.float32
    kept = mask[mask != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.7), rtol=1e-7, atol=0)


# --------------------------------------------------------------------------- layout
@pytest.mark.parametrize("num_gates", [4, 3, 1])
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
def test_sample_shapes(num_gates, gate_masks):
    s = spec(num_gates, gate_masks=gate_masks)
    batch, time = 7, 9
    masks = s.sample(batch, time, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(0))
    g = num_gates if gate_masks == "per_gate" else 1
    assert len(masks.layers) == 2 and all(len(d) == 2 for d in masks.layers)
    for k, dirs in enumerate(masks.layers):
        for m in dirs:
            assert m.input.shape == (g, batch, s.input_sizes[k])  # no time axis: time-locked
            assert m.recurrent.shape == (g, batch, s.hidden_out)
    assert len(masks.between) == 1
    assert masks.between[0].shape == (time, batch, 2 * s.hidden_out)  # torch's: fresh per timestep
    s.check(masks, batch, time)


def test_zero_rates_sample_nothing():
    s = spec(input_p=0.0, recurrent_p=0.0, between_p=0.0)
    assert s.is_empty()
    masks = s.sample(3, 4, dtype=F64, device="cpu")
    assert all(m.input is None and m.recurrent is None for dirs in masks.layers for m in dirs)
    assert masks.between == (None,)
    assert spec(num_layers=1, input_p=0.0, recurrent_p=0.0, between_p=0.5).is_empty()
    assert not spec(input_p=0.0, recurrent_p=0.2, between_p=0.0).is_empty()


# --------------------------------------------------------------------------- independence
def _joint_zero(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a == 0) & (b == 0)


def test_independent_across_batch_and_features():
    p = 0.3
    m = input_mask(600, 600, p, 1)[0]
    # Disjoint pairs: feature 2j with 2j+1 of the same sample, sample 2i with 2i+1 at the same feature.
    assert_rate(_joint_zero(m[:, 0::2], m[:, 1::2]), p * p)
    assert_rate(_joint_zero(m[0::2, :], m[1::2, :]), p * p)


def test_per_gate_masks_independent_across_gates_shared_is_one():
    p = 0.4
    s = spec(4, num_layers=1, num_directions=1, input_size=300, hidden_out=300, input_p=p, recurrent_p=p,
             between_p=0.0, gate_masks="per_gate")
    masks = s.sample(300, 2, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(2))
    for m in (masks.layers[0][0].input, masks.layers[0][0].recurrent):
        assert m.shape[0] == 4
        for g in range(4):
            assert_rate(m[g] == 0, p)
        # Identical gate masks would give a joint rate p, independent ones p^2.
        for g, h in ((0, 1), (1, 2), (2, 3), (3, 0)):
            assert_rate(_joint_zero(m[g], m[h]), p * p)
    shared = spec(4, gate_masks="shared").sample(5, 2, dtype=F64, device="cpu")
    assert shared.layers[0][0].input.shape[0] == 1 and shared.layers[0][0].recurrent.shape[0] == 1


def test_layers_directions_and_kinds_are_independent():
    p = 0.5
    s = spec(1, input_size=200, hidden_out=100, input_p=p, recurrent_p=p, between_p=0.0)
    masks = s.sample(200, 1, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(3))
    fwd, bwd = masks.layers[0]
    assert_rate(_joint_zero(fwd.input, bwd.input), p * p)  # each direction draws its own
    assert_rate(_joint_zero(fwd.recurrent, masks.layers[1][0].recurrent), p * p)  # each layer too
    assert_rate(_joint_zero(fwd.input[..., :100], fwd.recurrent), p * p)  # input vs recurrent


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_every_mask_kind_independent_across_directions_and_layers(mode):
    """Each DirectionMasks field (every kind a layer samples: input, recurrent, DropConnect weight_hh,
    candidate, zoneout h / c) and the between-layer masks: forward vs reverse direction and layer k vs
    k+1 are independent draws. At rate 0.5 every kind is 0 with probability 1/2 (a dropped unit, or a
    zoneout draw that takes the new state), so independent draws are both 0 at rate 1/4, one draw
    reused at rate 1/2. A kind added to DirectionMasks fails this test until it gets a rate here."""
    import rnndrop

    h, p = 24, 0.5
    rates = {"input_dropout": p, "recurrent_dropout": p, "weight_dropout": p, "zoneout_hidden": p, "dropout": p}
    if mode != "RNN":
        rates["candidate_dropout"] = p
    if mode == "LSTM":
        rates["zoneout_cell"] = p
    cls = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}[mode]
    # input_size = 2 * hidden: layer 0's input masks have the shape of the later layers'.
    layer = cls(2 * h, h, num_layers=3, bidirectional=True, gate_masks="per_gate", dtype=F64, **rates)
    masks = layer.sample_masks(40, 8, generator=torch.Generator().manual_seed(7))
    kinds = [f.name for f in dataclasses.fields(DirectionMasks)]
    expected = set(kinds) - ({"candidate", "zoneout_c"} if mode == "RNN" else {"zoneout_c"} if mode == "GRU" else set())
    sampled = {name for dirs in masks.layers for m in dirs for name in m.active()}
    assert sampled == expected, "a mask kind is not sampled: give it a rate above"
    for name in sorted(sampled):
        for k in range(3):
            fwd, rev = (getattr(m, name) for m in masks.layers[k])
            assert not torch.equal(fwd, rev), f"{name}: layer {k} reuses the forward mask for the reverse direction"
            assert_rate(_joint_zero(fwd, rev), p * p)
            if k < 2:
                nxt = getattr(masks.layers[k + 1][0], name)
                assert not torch.equal(fwd, nxt), f"{name}: layers {k} and {k + 1} share a mask"
                assert_rate(_joint_zero(fwd, nxt), p * p)
    first, second = masks.between
    assert not torch.equal(first, second)
    assert_rate(_joint_zero(first, second), p * p)


def test_between_mask_fresh_per_timestep():
    p = 0.5
    s = spec(1, hidden_out=100, between_p=p)
    between = s.sample(100, 8, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(4)).between[0]
    assert_rate(between == 0, p)
    assert_rate(_joint_zero(between[:-1], between[1:]), p * p)


def test_new_masks_each_call_and_seed_reproducible():
    p = 0.3
    s = spec(4, input_size=200, hidden_out=200, input_p=p, recurrent_p=p, gate_masks="per_gate")
    gen = torch.Generator().manual_seed(5)
    first = s.sample(50, 3, dtype=F64, device="cpu", generator=gen)
    second = s.sample(50, 3, dtype=F64, device="cpu", generator=gen)
    # Two draws from the running generator are independent: joint-zero rate p^2, not p.
    assert_rate(_joint_zero(first.layers[0][0].input, second.layers[0][0].input), p * p)
    replay = s.sample(50, 3, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(5))
    for a, b in zip(_flatten(first), _flatten(replay)):
        assert torch.equal(a, b)


def _flatten(masks: DropoutMasks) -> list[torch.Tensor]:
    out = [t for dirs in masks.layers for m in dirs for t in (m.input, m.recurrent) if t is not None]
    return out + [t for t in masks.between if t is not None]


def test_documented_sampling_keys():
    """One seed per call; each mask is keyed_draws(mask_keys(seed, layer, direction, kind)) laid out as the
    module docstring's table says (rows, samples, units), the between-layer mask with direction 0."""
    s = dataclasses.replace(spec(3, gate_masks="per_gate"), weight_p=0.2, zoneout_h=0.1)
    batch, time = 4, 5
    masks = s.sample(batch, time, dtype=F64, device="cpu", generator=torch.Generator().manual_seed(6))
    seed = tuple(torch.randint(0, 1 << 32, (2,), generator=torch.Generator().manual_seed(6)).tolist())

    def draw(k, d, kind, shape, p, below, above):
        return keyed_draws(mask_keys(seed, k, d, kind), p, shape, below=below, above=above, dtype=F64, device="cpu")

    for k in range(2):
        for d in range(2):
            m = masks.layers[k][d]
            assert torch.equal(m.input, draw(k, d, "input", (3, batch, s.input_sizes[k]), 0.3, 0.0, 1 / 0.7))
            assert torch.equal(m.recurrent, draw(k, d, "recurrent", (3, batch, 6), 0.4, 0.0, 1 / 0.6))
            assert torch.equal(m.weight_hh, draw(k, d, "weight_hh", (18, 1, 6), 0.2, 0.0, 1 / 0.8)[:, 0])
            assert torch.equal(m.zoneout_h, draw(k, d, "zoneout_h", (time, batch, 6), 0.1, 1.0, 0.0))
    assert torch.equal(masks.between[0], draw(0, 0, "between", (time, batch, 12), 0.5, 0.0, 2.0))


# --------------------------------------------------------------------------- check()
def test_check_rejects_bad_user_masks():
    s = spec(4)
    good = s.sample(3, 4, dtype=F64, device="cpu")
    with pytest.raises(RnnDropTypeError, match="dropout_masks"):
        s.check("masks", 3, 4)  # type: ignore[arg-type]
    with pytest.raises(RnnDropValueError, match=r"dropout_masks\.layers"):
        s.check(DropoutMasks(good.layers[:1], good.between), 3, 4)
    bad_input = DirectionMasks(torch.ones(1, 3, 99), None)
    with pytest.raises(RnnDropValueError, match=r"dropout_masks\.layers\[0\]\[0\]\.input"):
        s.check(DropoutMasks(((bad_input, good.layers[0][1]), good.layers[1]), good.between), 3, 4)
    bad_rec = DirectionMasks(None, torch.ones(2, 3, 6))  # 2 is neither 1 nor the 4 gates
    with pytest.raises(RnnDropValueError, match=r"dropout_masks\.layers\[1\]\[1\]\.recurrent"):
        s.check(DropoutMasks((good.layers[0], (good.layers[1][0], bad_rec)), good.between), 3, 4)
    with pytest.raises(RnnDropValueError, match=r"dropout_masks\.between"):
        s.check(DropoutMasks(good.layers, (torch.ones(4, 3, 7),)), 3, 4)
    # Broadcastable layouts are accepted: one mask for the whole batch (B = 1).
    layers = tuple((DirectionMasks(torch.ones(1, 1, size), torch.ones(4, 1, 6)),) * 2 for size in s.input_sizes)
    s.check(DropoutMasks(layers), 3, 4)
