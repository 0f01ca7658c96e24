"""Metrics and interval statistics of a study.

* :func:`accuracy`, :func:`nll` (mean negative log-likelihood in nats) and :func:`ece` (expected
  calibration error, Guo et al. 2017: equal-width confidence bins) of predicted class probabilities.
* :func:`paired_interval` and :func:`mean_interval`: Student-t intervals (``scipy.stats.t``) for the mean
  of paired differences between two strategies over seeds, with Bonferroni's correction for comparing
  many strategies at once, and for a mean over seeds.
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
def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (``scipy.stats.t.ppf``)."""
    from scipy import stats

    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return float(stats.t.ppf(q, df))


def paired_interval(
    a: np.ndarray | list[float], b: np.ndarray | list[float], confidence: float = 0.95, comparisons: int = 1
) -> tuple[float, float, float] | None:
    """Mean of ``a - b`` over paired runs and its two-sided t-interval ``(mean, low, high)``.

    ``comparisons`` > 1 applies Bonferroni's correction (each interval at ``1 - (1 - confidence) /
    comparisons``) so that all of them hold together with probability ``confidence``. Returns ``None``
    when fewer than two pairs exist (no spread can be estimated) or a value is not finite.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1:
        raise ValueError("a and b must be one-dimensional and of equal length")
    if len(diff) < 2 or not np.isfinite(diff).all():
        return None
    return mean_interval(diff, 1.0 - (1.0 - confidence) / max(1, comparisons))


def mean_interval(values: np.ndarray | list[float], confidence: float = 0.95) -> tuple[float, float, float] | None:
    """Mean of ``values`` and its two-sided Student-t interval ``(mean, low, high)`` (``scipy.stats``);
    ``None`` with fewer than two values or a value that is not finite."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2 or not np.isfinite(x).all():
        return None
    mean = float(x.mean())
    sem = float(stats.sem(x))
    if sem == 0.0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(x) - 1, loc=mean, scale=sem)
    return mean, float(low), float(high)


def finite(x: float | None) -> bool:
    """True for a finite number (not None, NaN or infinite)."""
    return x is not None and math.isfinite(x)
