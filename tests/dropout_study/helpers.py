"""Small builders shared by the study tests."""

from __future__ import annotations

import numpy as np
import torch

from rnndrop.study import apply_strategy
from rnndrop.study.data import SequenceData, Task
from rnndrop.study.models import CharLanguageModel, SequenceClassifier


def model(strategy: str, rate: float, cell: str = "lstm", channels: int = 3, hidden: int = 8, classes: int = 3, *,
          language_model: bool = False, init: str = "torch", seed: int = 0) -> torch.nn.Module:
    """The built-in base model with ``strategy`` at ``rate`` applied (torch seeded with ``seed`` first)."""
    torch.manual_seed(seed)
    base = (CharLanguageModel(cell, classes, hidden, 8, init) if language_model
            else SequenceClassifier(cell, channels, hidden, classes, init))
    return apply_strategy(base, strategy, rate)


def data(n: int = 6, t: int = 7, c: int = 3, seed: int = 0) -> SequenceData:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, t + 1, size=n)
    x = rng.normal(size=(n, t, c)).astype(np.float32)
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    return SequenceData(x, lengths.astype(np.int64), np.arange(n) % 3)


def task(n: int = 30, t: int = 6, c: int = 3, classes: int = 3, seed: int = 0) -> Task:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, t, c)).astype(np.float32) + y[:, None, None]
    lengths = rng.integers(2, t + 1, size=n).astype(np.int64)
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0
    d = SequenceData(x, lengths, y.astype(np.int64))
    return Task("toy", d, d.subset(np.arange(12)), tuple("abc")[:classes], "generated")


class FakeTrial:
    """The part of an Optuna trial a TrialContext uses, for running an experiment outside a study."""

    number = 0

    def __init__(self) -> None:
        self.reports: list[tuple[int, float]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((step, value))

    def should_prune(self) -> bool:
        return False
