"""Zoneout (h and c) and candidate (Semeniuta) dropout inside the fused CPU kernel.

The fused kernel equals the reference path given the same masks — outputs, final states and every
gradient — for every cell, in training (fresh zoneout draws per step) and eval (the expectation),
with step masks, both directions and stacked layers; and the masks really act (a kernel that
ignored them would equal the layer without them).
"""

from __future__ import annotations

import pytest
import torch
from kernel_cases import TOLERANCE, Case, max_scaled_error, run_twins

import rnndrop

OPTIONS = {
    "LSTM": [dict(zoneout_h=0.3), dict(zoneout_c=0.4), dict(candidate_p=0.3),
             dict(zoneout_h=0.2, zoneout_c=0.3, candidate_p=0.25)],
    "GRU": [dict(zoneout_h=0.3), dict(candidate_p=0.3), dict(zoneout_h=0.2, candidate_p=0.25)],
    "RNN": [dict(zoneout_h=0.3)],
}
GRID = [(mode, opts) for mode, options in OPTIONS.items() for opts in options]


@pytest.mark.parametrize("steps", ["none", "random", "lengths"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode,opts", GRID, ids=[f"{m}-{'+'.join(o)}" for m, o in GRID])
def test_fused_equals_reference(kernel, mode: str, opts: dict, training: bool, steps: str) -> None:
    for dtype in (torch.float64, torch.float32):
        case = Case(mode=mode, num_layers=2, bidirectional=True, batch=5, time=6, hidden=7, steps=steps,
                    training=training, dtype=dtype, gate_masks="per_gate" if mode == "GRU" else "shared",
                    reset_after=steps != "random", **opts)
        res = run_twins(case)
        assert res["backends"] == ["fused", "reference"], res["backends"]
        err, where = max_scaled_error(res["pairs"])
        assert err <= TOLERANCE[dtype], f"{where}: scaled error {err:.3e} for {case}"


@pytest.mark.parametrize("make", [
    lambda **kw: rnndrop.LSTM(4, 6, zoneout_hidden=0.5, zoneout_cell=0.5, **kw),
    lambda **kw: rnndrop.LSTM(4, 6, candidate_dropout=0.5, **kw),
    lambda **kw: rnndrop.GRU(4, 6, zoneout_hidden=0.5, candidate_dropout=0.5, **kw),
    lambda **kw: rnndrop.RNN(4, 6, zoneout_hidden=0.5, **kw),
], ids=["lstm-zoneout", "lstm-candidate", "gru", "rnn"])
def test_the_masks_act_in_the_kernel(kernel, make) -> None:
    torch.manual_seed(0)
    layer = make(backend="fused")
    plain = make(backend="fused")
    plain.load_state_dict(layer.state_dict())
    x = torch.randn(8, 3, 4)
    masks = layer.sample_masks(3, 8, generator=torch.Generator().manual_seed(2))
    out, _ = layer(x, dropout_masks=masks)
    assert layer.last_backend == "fused"
    empty = rnndrop.DropoutMasks(tuple((rnndrop.DirectionMasks(),) for _ in masks.layers), ())
    ref, _ = plain(x, dropout_masks=empty)
    assert (out - ref).abs().max() > 1e-3
