"""The strategy presets: they build, differ only in dropout, and MC dropout behaves."""

import numpy as np
import pytest
import torch

import rnndrop
from rnndrop.cli.data import SequenceData
from rnndrop.cli.runner import mc_proba, predict_proba
from rnndrop.cli.strategies import BY_NAME, CELLS, STRATEGIES, LocalChannelDropout, build_model, mask_panels


def _data(n=6, t=7, c=3, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, t + 1, size=n)
    x = rng.normal(size=(n, t, c)).astype(np.float32)
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    return SequenceData(x, lengths.astype(np.int64), np.arange(n) % 3)


def _runnable(cell):
    return [s for s in STRATEGIES if s.availability(cell) is None]


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_equals_no_dropout(cell):
    """Same seed -> same weights; in eval mode every dropout is off (zoneout uses its expectation)."""
    data = _data()
    torch.manual_seed(0)
    base, _ = build_model(BY_NAME["none"], 0.0, cell, 3, 8, 3)
    ref = predict_proba(base.eval(), data)
    for s in _runnable(cell):
        torch.manual_seed(0)
        model, impl = build_model(s, 0.3, cell, 3, 8, 3)
        assert impl
        out = predict_proba(model.eval(), data)
        if s.name == "zoneout":
            assert not np.allclose(out, ref)  # eval zoneout mixes in the previous state
        else:
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6, err_msg=s.name)


@pytest.mark.parametrize("cell", CELLS)
def test_training_mode_is_stochastic_for_every_dropout(cell):
    data = _data()
    for s in _runnable(cell):
        torch.manual_seed(0)
        model, _ = build_model(s, 0.3, cell, 3, 8, 3)
        model.train()
        a, b = predict_proba(model, data), predict_proba(model, data)
        assert np.allclose(a, b) == (s.name == "none"), s.name
        assert bool(model.stochastic_parts()) == (s.name != "none")


def test_unavailable_reasons():
    assert BY_NAME["semeniuta"].availability("rnn") == "not defined for the RNN cell"
    assert BY_NAME["keras_both_shared"].availability("rnn") is not None
    for s in STRATEGIES:
        assert s.availability("lstm") is None or "not in this version" in s.availability("lstm")


def test_library_modules_used_when_present():
    _, impl = build_model(BY_NAME["noise_shape"], 0.2, "lstm", 3, 8, 3)
    if hasattr(rnndrop, "Dropout"):
        assert impl.startswith("rnndrop.Dropout")
    else:
        assert "local fallback" in impl


def test_local_fallback_mask_is_time_locked():
    torch.manual_seed(0)
    m = LocalChannelDropout(0.5).train()
    out = m(torch.ones(64, 9, 5))
    assert torch.equal(out, out[:, :1].expand_as(out))  # same mask at every timestep
    assert set(out.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(m.eval()(torch.ones(2, 3, 5)), torch.ones(2, 3, 5))


def test_mask_panels_show_the_mask_shapes():
    def panels(name, cell="lstm"):
        torch.manual_seed(0)
        model, _ = build_model(BY_NAME[name], 0.5, cell, 6, 32, 3)
        return mask_panels(model, steps=12, seed=1)

    assert panels("none") == []
    (per_step,) = panels("input_dropout_per_step")
    assert per_step.values.shape == (12, 6)
    assert not (per_step.values == per_step.values[:1]).all()  # varies over time (with p=0.5, 72 draws)
    for name in ("noise_shape", "spatial", "keras_input", "recurrent", "semeniuta"):
        (p,) = panels(name)
        assert (p.values == p.values[:1]).all(), name  # one mask per sequence, every step
    inp, rec = panels("keras_both")
    assert inp.values.shape == (12, 4 * 6 + 3) and rec.values.shape == (12, 4 * 16 + 3)  # 4 gates + separators
    z_h, z_c = panels("zoneout")
    assert z_h.values.shape == z_c.values.shape == (12, 16)


def test_mc_proba_without_dropout_is_deterministic_and_modes_restored():
    data = _data()
    torch.manual_seed(0)
    model, _ = build_model(BY_NAME["none"], 0.0, "lstm", 3, 8, 3)
    model.eval()
    np.testing.assert_allclose(mc_proba(model, data, 10), predict_proba(model, data), atol=1e-7)
    torch.manual_seed(0)
    model, _ = build_model(BY_NAME["keras_both"], 0.4, "lstm", 3, 8, 3)
    model.eval()
    det = predict_proba(model, data)
    mc = mc_proba(model, data, 16, seed=3)
    assert not model.training and not any(m.training for m in model.modules())
    np.testing.assert_allclose(mc.sum(1), 1.0, atol=1e-6)
    assert not np.allclose(mc, det)
    np.testing.assert_allclose(mc_proba(model, data, 16, seed=3), mc, atol=1e-7)  # seeded
