"""Summaries and the recommendation line of a study on synthetic run records."""

import math

import numpy as np
import pytest

from rnndrop.study.metrics import t_quantile
from rnndrop.study.report import comparisons, recommendation, summarize, table


def _runs(values: dict[str, list[float]], metric: str = "accuracy") -> list[dict]:
    runs = []
    for name, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            m = {"accuracy": 0.5, "nll": 1.0, "ece": 0.1, metric: v}
            runs.append({
                "strategy": name, "seed": seed, "rate": 0.0 if name == "none" else 0.25,
                "implementation": "x", "mc_implementation": "y", "test": dict(m), "test_mc": dict(m),
                "best_epoch": 3, "epochs_run": 5, "train_seconds": 1.0, "eval_seconds": 0.5,
            })
    return runs


def _advice(values, **kwargs):
    runs = _runs(values, kwargs.get("metric", "accuracy"))
    return recommendation(runs, summarize(runs, list(values)), **kwargs)


def test_clear_winner_is_named():
    line = _advice({
        "none": [0.90, 0.91, 0.92, 0.90], "good": [0.95, 0.96, 0.97, 0.955], "same": [0.9, 0.91, 0.92, 0.9],
    })
    assert line.startswith("Dropout helps here: use good at rate 0.25: 0.051 higher test accuracy than no dropout")
    assert "same" not in line


def test_no_winner_when_the_interval_includes_zero():
    line = _advice({"none": [0.90, 0.95, 0.91], "noisy": [0.96, 0.90, 0.97]})
    assert line.startswith("No strategy is measurably better") and "noisy" in line and "includes 0" in line


def test_no_winner_with_one_seed():
    line = _advice({"none": [0.9], "a": [0.99]})
    assert line.startswith("No winner claimed: with 1 seed(s)") and "the highest mean is a at rate 0.25" in line


def test_one_seed_never_calls_a_strategy_below_none_best():
    # issue 19, part 4: with one seed the summary called the best of the dropouts "best" although it was
    # below no dropout
    line = _advice({"none": [0.95], "a": [0.93], "b": [0.90]})
    assert "best" not in line and "highest" not in line
    assert "no strategy has a higher mean test accuracy than no dropout (0.950)" in line


def test_lower_is_better_metric():
    line = _advice({"none": [2.0, 2.1, 2.05], "a": [1.5, 1.55, 1.52]}, metric="bits_per_char",
                   higher_is_better=False, label="test bits/char")
    assert line.startswith("Dropout helps here: use a at rate 0.25: 0.527 lower test bits/char than no dropout")


def test_language_model_gain_is_told_in_its_direction():
    # issue 19, part 4: "beats no dropout by -0.004 bits/char" read as a loss
    line = _advice({"none": [2.000, 2.010, 2.005], "a": [1.996, 2.0061, 2.0009]}, metric="bits_per_char",
                   higher_is_better=False, label="test bits/char")
    assert "beats" not in line and "by -" not in line
    assert "0.004 lower test bits/char than no dropout" in line


def test_no_recommendation_from_nan_metrics():
    # issue 19, part 4: a diverged run (NaN metrics) still produced a recommendation
    runs = _runs({"none": [0.90, 0.91, 0.92], "a": [0.95, 0.96, float("nan")]})
    line = recommendation(runs, summarize(runs, ["none", "a"]))
    assert line.startswith("No recommendation: test accuracy is not a finite number in runs of a")


def test_worse_strategies_are_named():
    line = _advice({"none": [0.95, 0.96, 0.955], "bad": [0.80, 0.81, 0.805], "meh": [0.94, 0.97, 0.95]})
    assert "measurably worse: bad at rate 0.25" in line


def test_bonferroni_interval_width():
    values = {"none": [0.90, 0.91, 0.93], "a": [0.92, 0.95, 0.94], "b": [0.9, 0.9, 0.9]}
    (ca, _) = comparisons(_runs(values))
    d = np.subtract(values["a"], values["none"])
    half = t_quantile(1 - 0.05 / 2 / 2, 2) * d.std(ddof=1) / math.sqrt(3)  # two comparisons
    assert (ca["low"], ca["high"]) == pytest.approx((d.mean() - half, d.mean() + half))


def test_table_lists_every_strategy_and_unavailable_ones():
    runs = _runs({"none": [0.9, 0.91], "a": [0.95, 0.96]})
    text = table(summarize(runs, ["none", "a"]), [("zoneout", "not in this version")])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["strategy", "rate", "test", "acc"]
    assert lines[2].startswith("none") and "0.905 ± 0.007" in lines[2] and lines[3].split()[1] == "0.25"
    assert lines[-1].startswith("zoneout") and "unavailable: not in this version" in lines[-1]
