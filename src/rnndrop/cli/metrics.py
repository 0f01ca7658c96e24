"""Metrics and interval statistics for ``rnndrop compare`` (numpy only).

* :func:`accuracy`, :func:`nll` (mean negative log-likelihood in nats) and :func:`ece` (expected
  calibration error, Guo et al. 2017: equal-width confidence bins) of predicted class probabilities.
* :func:`t_quantile` and :func:`paired_interval`: Student-t intervals for the mean of paired differences
  between two strategies over seeds, with a Bonferroni option for comparing many strategies at once.
"""

from __future__ import annotations

import math

import numpy as np


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be (N, K) and labels (N,), got {probs.shape} and {labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one row")
    return probs, labels.astype(np.int64)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose most probable class (first on ties) is the label."""
    probs, labels = _check_probs(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean ``-log p(label)`` in nats; probabilities are clipped at ``eps`` so a confident miss is finite."""
    probs, labels = _check_probs(probs, labels)
    picked = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, eps, None))))


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins.

    Confidence is the top probability; bin ``m`` (1-based) holds confidences in ``((m-1)/bins, m/bins]``
    (a confidence of exactly 0 joins bin 1). ECE = ``sum_m |B_m|/N * |accuracy(B_m) - mean confidence(B_m)|``.
    """
    probs, labels = _check_probs(probs, labels)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    which = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for m in range(bins):
        in_bin = which == m
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(total / len(labels))


# ---------------------------------------------------------------------------------------------- intervals
def _t_cdf(t: float, df: int) -> float:
    """CDF of Student's t via the regularized incomplete beta function (continued fraction)."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)`` (Lentz's continued fraction, Numerical Recipes form)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use the symmetry
        return 1.0 - _betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h / a


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (bisection on the CDF)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_interval(
    a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95, comparisons: int = 1
) -> tuple[float, float, float] | None:
    """Mean of ``a - b`` over paired runs and its two-sided t-interval ``(mean, low, high)``.

    ``comparisons`` > 1 applies Bonferroni's correction (each interval at ``1 - (1 - confidence) /
    comparisons``) so that all of them hold together with probability ``confidence``. Returns ``None``
    when fewer than two pairs exist (no spread can be estimated).
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1:
        raise ValueError("a and b must be one-dimensional and of equal length")
    n = len(diff)
    if n < 2:
        return None
    alpha = (1.0 - confidence) / max(1, comparisons)
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * diff.std(ddof=1) / math.sqrt(n)
    mean = float(diff.mean())
    return mean, mean - half, mean + half
