"""``rnndrop compare``'s protocol (SequenceExperiment): initialisation, learning-rate schedule, refit, and the
same records from one or two worker processes."""

import json
import math

import pytest
import torch

from rnndrop.cli import main
from rnndrop.study.engine import TrialContext, Unit, build_for_trial
from rnndrop.study.protocol import SequenceExperiment, TrainConfig, learning_rate

from .helpers import FakeTrial, model, task


def test_cosine_schedule_anneals_from_lr_to_zero_over_the_epochs():
    cfg = TrainConfig(lr=0.004, epochs=10, schedule="cosine")
    assert learning_rate(cfg, 0) == pytest.approx(0.004)
    assert learning_rate(cfg, 5) == pytest.approx(0.002)
    assert learning_rate(cfg, 2.5) == pytest.approx(0.002 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cfg, 10) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainConfig(lr=0.004, epochs=10, schedule="constant"), 7.3) == 0.004
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate(TrainConfig(schedule="step"), 1)


@pytest.mark.parametrize("lm", [False, True])
def test_keras_init_covers_every_layer_of_the_model(lm):
    m = model("keras_both", 0.25, "lstm", 12, 16, 9, language_model=lm, init="keras")
    assert m.rnn.init == "keras" and m.rnn.input_dropout == 0.25
    assert torch.count_nonzero(m.head.bias) == 0
    assert m.head.weight.abs().max() <= math.sqrt(6 / (16 + m.head.out_features))
    if lm:
        assert m.embed.weight.abs().max() <= 0.05
    default = model("keras_both", 0.25, "lstm", 12, 16, 9, language_model=lm)
    assert default.rnn.init == "torch" and torch.count_nonzero(default.head.bias) > 0


def _trial(experiment, strategy, rate, seed, phase="final"):
    """Fit and (final) test ``experiment`` as the engine does, outside a study; returns the records."""
    ctx = TrialContext(FakeTrial(), Unit(phase, strategy, seed, rate), rate, experiment)
    m = build_for_trial(experiment, strategy, rate, seed)
    value = experiment.fit(m, ctx)
    record = {**ctx._records, "value": value}
    if phase == "final":
        record["test"] = experiment.test(m, ctx)
    return record


def test_refit_retrains_on_all_training_sequences_for_the_selected_epochs():
    cfg = TrainConfig(hidden_size=8, epochs=4, patience=4, mc_samples=2, init="keras", schedule="cosine",
                      refit=True, clip_norm=0.0)
    data = task()
    record = _trial(SequenceExperiment(data, cfg), "recurrent", 0.25, 0)
    refit = record["refit"]
    assert refit["epochs"] == record["best_epoch"] >= 1 and len(refit["train_loss"]) == refit["epochs"]
    assert refit["train_size"] == record["sizes"]["train"] + record["sizes"]["val"] == 30
    assert set(refit["selected_test"]) == {"accuracy", "nll", "ece"}
    no_refit = _trial(SequenceExperiment(data, TrainConfig(**{**cfg.to_dict(), "refit": False})), "recurrent", 0.25, 0)
    assert "refit" not in no_refit and no_refit["history"] == record["history"]  # selection is unchanged
    assert no_refit["test"] == refit["selected_test"]  # the selected model, tested before the refit
    assert no_refit["test"]["nll"] != record["test"]["nll"]  # the refit model is another model
    # A search trial of the same strategy, rate and seed trains the same selection phase: a final trial that
    # takes its selected epoch gives the same refit model, bit for bit.
    search = _trial(SequenceExperiment(data, cfg), "recurrent", 0.25, 0, phase="search")
    assert search["history"] == record["history"] and "refit" not in search and "test" not in search
    experiment = SequenceExperiment(data, cfg)
    ctx = TrialContext(FakeTrial(), Unit("final", "recurrent", 0, 0.25), 0.25, experiment)
    ctx.search_record = {**search, "number": 7}
    m = build_for_trial(experiment, "recurrent", 0.25, 0)
    assert experiment.fit(m, ctx) == record["value"]
    assert experiment.test(m, ctx) == record["test"] and ctx._records["refit"]["selection_from_trial"] == 7


@pytest.mark.slow
def test_parallel_runs_give_the_same_records_as_sequential(tmp_path, capsys):
    base = ["compare", "--seeds", "2", "--epochs", "2", "--patience", "2", "--hidden", "6", "--mc-samples", "2",
            "--train-limit", "54", "--test-limit", "36", "--no-progress", "--no-plots", "--strategies",
            "none,recurrent", "--init", "keras", "--schedule", "cosine", "--refit", "--search-rates", "0.1,0.3",
            "--search-seeds", "1"]
    assert main([*base, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert "6 trial(s) run" in capsys.readouterr().out  # 2 search (recurrent at 0.3, seed 0) ... + 4 final
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    timing = ("train_seconds", "eval_seconds", "seconds", "refit", "trial")
    for a, b in zip(one["runs"], two["runs"]):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert a["refit"]["selected_test"] == b["refit"]["selected_test"]
    assert one["recommendation"] == two["recommendation"] and one["search"] == two["search"]


def test_protocol_usage_errors(tmp_path, capsys):
    tiny = ["compare", "--quick", "--no-progress", "--out", str(tmp_path / "o")]
    assert main([*tiny, "--clip-norm", "-1"]) == 2
    assert "--clip-norm must be >= 0" in capsys.readouterr().err
    assert main([*tiny, "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main([*tiny, "--lr", "0"]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err
