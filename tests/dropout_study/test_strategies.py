"""The strategies and apply_strategy: on the built-in models and on models that are not ours."""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnndrop
from rnndrop.study import BY_NAME, STRATEGIES, StrategyError, applied_strategy, apply_strategy
from rnndrop.study.models import mask_panels
from rnndrop.study.protocol import has_dropout, mc_proba, predict_proba
from rnndrop.study.strategies import CELLS, InputDropout, OutputDropout

from .helpers import data, model


def _runnable(cell):
    return [s for s in STRATEGIES if s.availability(cell) is None]


@pytest.mark.parametrize("cell", CELLS)
def test_eval_mode_equals_no_dropout(cell):
    """Same seed -> same weights; in eval mode every dropout is off (zoneout uses its expectation)."""
    d = data()
    ref = predict_proba(model("none", 0.0, cell).eval(), d)
    for s in _runnable(cell):
        out = predict_proba(model(s.name, 0.3, cell).eval(), d)
        if s.name == "zoneout":
            assert not np.allclose(out, ref)  # eval zoneout mixes in the previous state
        else:
            np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6, err_msg=s.name)


@pytest.mark.parametrize("cell", CELLS)
def test_training_mode_is_stochastic_for_every_dropout(cell):
    d = data()
    for s in _runnable(cell):
        m = model(s.name, 0.3, cell).train()
        a, b = predict_proba(m, d), predict_proba(m, d)
        assert np.allclose(a, b) == (s.name == "none"), s.name
        assert has_dropout(m) == (s.name != "none")
        assert applied_strategy(m) == (s.name, 0.3 if s.name != "none" else 0.0)


def test_unavailable_reasons():
    assert BY_NAME["semeniuta"].availability("rnn") == "not defined for the RNN cell"
    assert BY_NAME["keras_both_shared"].availability("rnn") is not None
    assert all(s.availability("lstm") is None for s in STRATEGIES)
    with pytest.raises(StrategyError, match="not defined for the RNN cell"):
        model("semeniuta", 0.2, "rnn")


def test_layer_options_and_attached_modules():
    m = model("keras_both", 0.3)
    assert (m.rnn.input_dropout, m.rnn.recurrent_dropout, m.rnn.gate_masks) == (0.3, 0.3, "per_gate")
    m = model("zoneout", 0.1)
    assert (m.rnn.zoneout_hidden, m.rnn.zoneout_cell) == (0.1, 0.1)
    assert model("zoneout", 0.1, "gru").rnn.zoneout_cell == 0.0
    m = model("noise_shape", 0.2)
    assert isinstance(m.rnn.study_input_dropout, InputDropout) and m.rnn.study_input_dropout.kind == "noise_shape"
    assert isinstance(model("output_dropout", 0.2).rnn.study_output_dropout, OutputDropout)
    # the attached dropouts follow the model's mode and add nothing to the state dict
    assert model("spatial", 0.2).eval().rnn.study_input_dropout.drop.training is False
    assert set(model("spatial", 0.2).state_dict()) == set(model("none", 0.0).state_dict())


def test_before_dropout_reaches_the_layer_input_time_locked():
    m = model("noise_shape", 0.5, channels=6)
    seen = []
    m.rnn.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(args[0]), with_kwargs=True)
    m.train()(torch.ones(8, 5, 6), torch.full((8,), 5))
    x = seen[0]  # hooks run in registration order: the strategy's dropout ran first
    assert set(x.unique().tolist()) <= {0.0, 2.0} and (x == 0).any()
    assert torch.equal(x, x[:, :1].expand_as(x))  # one mask per sequence, every step


class Tagger(nn.Module):
    """Not ours: a bidirectional two-layer torch.nn GRU tagger on packed sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.gru = nn.GRU(6, 5, num_layers=2, bidirectional=True)
        self.out = nn.Linear(10, 4)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(tokens), lengths, enforce_sorted=False)
        out, _ = self.gru(packed)
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=tokens.shape[0])
        return self.out(padded)


@pytest.mark.parametrize("name", [s.name for s in STRATEGIES if s.availability("gru") is None])
def test_foreign_torch_model_is_converted_and_keeps_its_state_dict(name):
    torch.manual_seed(0)
    tagger = Tagger()
    keys = set(tagger.state_dict())
    tokens, lengths = torch.randint(0, 20, (7, 3)), torch.tensor([7, 4, 2])
    before = tagger.eval()(tokens, lengths)
    apply_strategy(tagger, name, 0.3)
    assert isinstance(tagger.gru, rnndrop.GRU) and tagger.gru.bidirectional and tagger.gru.num_layers == 2
    assert set(tagger.state_dict()) == keys
    after = tagger.eval()(tokens, lengths)  # packed input through the hooks too
    if name != "zoneout":
        torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    tagger.train()
    if name != "none":
        assert not torch.equal(tagger(tokens, lengths), tagger(tokens, lengths))


def test_refusals_name_the_reason():
    with pytest.raises(StrategyError, match=re.escape("already uses {'recurrent_dropout': 0.2}")):
        apply_strategy(nn.Sequential(rnndrop.LSTM(3, 4, recurrent_dropout=0.2)), "keras_input", 0.1)
    m = model("recurrent", 0.2)
    with pytest.raises(StrategyError, match="already has strategy 'recurrent' applied"):
        apply_strategy(m, "zoneout", 0.1)
    with pytest.raises(StrategyError, match="holds no recurrent layer"):
        apply_strategy(nn.Linear(3, 4), "recurrent", 0.1)
    with pytest.raises(StrategyError, match="rate must be in"):
        apply_strategy(nn.LSTM(3, 4), "recurrent", 1.5)
    with pytest.raises(StrategyError, match="unknown strategy 'bogus'"):
        apply_strategy(nn.LSTM(3, 4), "bogus", 0.1)
    layer = apply_strategy(nn.LSTM(3, 4), "recurrent", 0.1)  # a bare layer comes back converted
    assert isinstance(layer, rnndrop.LSTM) and layer.recurrent_dropout == 0.1


def test_mask_panels_show_the_mask_shapes():
    def panels(name, cell="lstm"):
        return mask_panels(model(name, 0.5, cell, channels=6, hidden=32), steps=12, seed=1)

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
    (out,) = panels("output_dropout")
    assert out.values.shape == (12, 16) and not (out.values == out.values[:1]).all()


def test_identical_runs_draw_identical_masks():
    # issue 19, part 4: noise_shape and spatial runs are identical, but masks.png drew different masks. Drawn
    # as the runs draw them (same seed, same stream), they are one mask; keras_input draws the same law from
    # the layer's counter-based sampler: a (B, C) mask, constant over time, other numbers.
    pictures = [mask_panels(model(name, 0.3, channels=12, hidden=16), steps=10, seed=0)[0].values
                for name in ("noise_shape", "spatial", "keras_input")]
    assert (pictures[0] == 0).any()
    np.testing.assert_array_equal(pictures[1], pictures[0])
    assert pictures[2].shape == pictures[0].shape and (pictures[2] == 0).any()
    assert (pictures[2] == pictures[2][:1]).all()  # one mask for every step


def test_mc_proba_without_dropout_is_deterministic_and_modes_restored():
    d = data()
    m = model("none", 0.0).eval()
    np.testing.assert_allclose(mc_proba(m, d, 10), predict_proba(m, d), atol=1e-7)
    m = model("keras_both", 0.4).eval()
    det = predict_proba(m, d)
    mc = mc_proba(m, d, 16, seed=3)
    assert not m.training and not any(x.training for x in m.modules())
    np.testing.assert_allclose(mc.sum(1), 1.0, atol=1e-6)
    assert not np.allclose(mc, det)
    np.testing.assert_allclose(mc_proba(m, d, 16, seed=3), mc, atol=1e-7)  # seeded
    m = model("noise_shape", 0.4).eval()  # a dropout attached before the layer is switched on too
    assert not np.allclose(mc_proba(m, d, 16, seed=3), predict_proba(m, d))
