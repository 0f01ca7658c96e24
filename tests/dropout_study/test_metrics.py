"""ECE / NLL / accuracy on hand-computed inputs, and the t quantiles against closed forms."""

import math

import numpy as np
import pytest

from rnndrop.study.metrics import accuracy, ece, nll, paired_interval, t_quantile


def _two_class(conf_label_pairs):
    probs = np.array([[c, 1 - c] for c, _ in conf_label_pairs])
    labels = np.array([y for _, y in conf_label_pairs])
    return probs, labels


def test_ece_hand_computed():
    # bins of width 1/15: 0.9 lies in bin 14 (0.8667, 0.9333], 0.7 in bin 11 (0.6667, 0.7333]
    probs, labels = _two_class([(0.9, 0), (0.9, 1), (0.7, 0), (0.7, 0)])
    # bin 14: accuracy 1/2, confidence 0.9; bin 11: accuracy 1 (both predict class 0), confidence 0.7
    expected = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(1.0 - 0.7)
    assert ece(probs, labels) == pytest.approx(expected, abs=1e-12)


def test_ece_zero_when_calibrated_per_bin():
    # 10 rows at confidence 0.8, 8 of them correct: accuracy equals confidence in the only bin
    probs, labels = _two_class([(0.8, 0)] * 8 + [(0.8, 1)] * 2)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_ece_matches_brute_force_definition():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(500, 5)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 5, size=500)
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() / 500 * abs((pred[sel] == labels[sel]).mean() - conf[sel].mean())
    assert ece(probs, labels) == pytest.approx(total, abs=1e-12)


def test_nll_and_accuracy_hand_computed():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 0])
    assert nll(probs, labels) == pytest.approx(-(math.log(0.5) + math.log(0.8) + math.log(0.2)) / 3)
    assert accuracy(probs, labels) == pytest.approx(2 / 3)


def test_nll_finite_for_a_confident_miss():
    assert math.isfinite(nll(np.array([[1.0, 0.0]]), np.array([1])))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="probs must be"):
        ece(np.ones((3, 2)) / 2, np.array([0, 1]))


@pytest.mark.parametrize("q", [0.6, 0.9, 0.975, 0.999])
def test_t_quantile_closed_forms(q):
    # df=1 is the Cauchy distribution; df=2 has t = (2q-1) / sqrt(2q(1-q))
    assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)
    assert t_quantile(1 - q, 2) == pytest.approx(-t_quantile(q, 2), rel=1e-12)


def test_t_quantile_tends_to_normal():
    normal_975 = math.sqrt(2) * _erfinv(0.95)
    assert t_quantile(0.975, 10**6) == pytest.approx(normal_975, rel=1e-5)


def _erfinv(y: float) -> float:
    lo, hi = 0.0, 6.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return (lo + hi) / 2


def test_paired_interval():
    a, b = [0.9, 0.92, 0.94], [0.88, 0.89, 0.90]
    mean, low, high = paired_interval(a, b)
    d = np.subtract(a, b)
    half = t_quantile(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    # Bonferroni over 10 comparisons widens the interval
    _, low10, high10 = paired_interval(a, b, comparisons=10)
    assert low10 < low and high10 > high
    assert paired_interval([0.9], [0.8]) is None
