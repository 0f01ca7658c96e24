"""``rnndrop compare``'s protocol options: initialisation, learning-rate schedule, refit, parallel runs."""

import json
import math

import numpy as np
import pytest
import torch

from rnndrop.cli import main
from rnndrop.cli.data import SequenceData, Task
from rnndrop.cli.runner import TrainConfig, learning_rate, train_run
from rnndrop.cli.strategies import BY_NAME, build_model


def test_cosine_schedule_anneals_from_lr_to_zero_over_the_epochs():
    cfg = TrainConfig(lr=0.004, epochs=10, schedule="cosine")
    assert learning_rate(cfg, 0) == pytest.approx(0.004)
    assert learning_rate(cfg, 5) == pytest.approx(0.002)
    assert learning_rate(cfg, 2.5) == pytest.approx(0.002 * (1 + math.cos(math.pi / 4)))
    assert learning_rate(cfg, 10) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainConfig(lr=0.004, epochs=10), 7.3) == 0.004
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate(TrainConfig(schedule="step"), 1)


@pytest.mark.parametrize("lm", [False, True])
def test_keras_init_covers_every_layer_of_the_model(lm):
    torch.manual_seed(0)
    model, _ = build_model(BY_NAME["keras_both"], 0.25, "lstm", 12, 16, 9, language_model=lm, init="keras")
    assert model.rnn.init == "keras" and model.rnn.input_dropout == 0.25
    assert torch.count_nonzero(model.head.bias) == 0
    assert model.head.weight.abs().max() <= math.sqrt(6 / (16 + model.head.out_features))
    if lm:
        assert model.embed.weight.abs().max() <= 0.05
    torch.manual_seed(0)
    default, _ = build_model(BY_NAME["keras_both"], 0.25, "lstm", 12, 16, 9, language_model=lm)
    assert default.rnn.init == "torch" and torch.count_nonzero(default.head.bias) > 0


def _task(n=30, t=6, c=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, t, c)).astype(np.float32) + y[:, None, None]
    lengths = rng.integers(2, t + 1, size=n).astype(np.int64)
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    data = SequenceData(x, lengths, y.astype(np.int64))
    return Task("toy", data, data.subset(np.arange(12)), tuple("abc"), "generated")


def test_refit_retrains_on_all_training_sequences_for_the_selected_epochs():
    task = _task()
    cfg = TrainConfig(hidden_size=8, epochs=4, patience=4, mc_samples=2, init="keras", schedule="cosine",
                      refit=True, clip_norm=0.0)
    record = train_run(task, BY_NAME["recurrent"], 0.25, 0, cfg)
    refit = record["refit"]
    assert refit["epochs"] == record["best_epoch"] >= 1 and len(refit["train_loss"]) == refit["epochs"]
    assert refit["train_size"] == record["sizes"]["train"] + record["sizes"]["val"] == 30
    assert set(refit["selected_test"]) == {"accuracy", "nll", "ece"}
    no_refit = train_run(task, BY_NAME["recurrent"], 0.25, 0, TrainConfig(**{**cfg.to_dict(), "refit": False}))
    assert no_refit["refit"] is None and no_refit["history"] == record["history"]  # selection is unchanged
    assert no_refit["test"] == refit["selected_test"]  # the selected model, tested before the refit
    assert no_refit["test"]["nll"] != record["test"]["nll"]  # the refit model is another model


@pytest.mark.slow
def test_parallel_runs_give_the_same_records_as_sequential(tmp_path, capsys):
    base = ["compare", "--seeds", "2", "--epochs", "2", "--patience", "2", "--hidden", "6", "--mc-samples", "2",
            "--train-limit", "54", "--test-limit", "36", "--no-progress", "--no-plots", "--strategies",
            "none,recurrent", "--init", "keras", "--schedule", "cosine", "--refit"]
    assert main([*base, "--jobs", "1", "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert "4 run(s) trained" in capsys.readouterr().out
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["machine"]["processes"] == 2 and one["machine"]["processes"] == 1
    timing = ("train_seconds", "eval_seconds", "refit")
    for a, b in zip(one["runs"], two["runs"]):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
        assert a["refit"]["selected_test"] == b["refit"]["selected_test"]
    assert one["recommendation"] == two["recommendation"]


def test_protocol_usage_errors(tmp_path, capsys):
    tiny = ["compare", "--quick", "--no-progress", "--out", str(tmp_path / "o")]
    assert main([*tiny, "--clip-norm", "-1"]) == 2
    assert "--clip-norm must be >= 0" in capsys.readouterr().err
    assert main([*tiny, "--jobs", "0"]) == 2
    assert "--jobs must be >= 1" in capsys.readouterr().err
    assert main([*tiny, "--lr", "0"]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err
