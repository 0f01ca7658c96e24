"""The data of ``rnndrop compare``'s experiment: :class:`Task` and :class:`SequenceData`, and the steps every
loader shares (padding, stratified splits, label encoding, standardization).

Every loader returns a :class:`Task`: a training and a test :class:`SequenceData`, each holding
right-padded sequences ``x`` ``(N, T, C)`` float32, their ``lengths`` ``(N,)`` and integer labels.
Malformed data raise :class:`DataError` (a ``ValueError``) naming the file, key or column and what
was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """A data file or data set that ``rnndrop compare`` cannot use, with the reason."""


@dataclass(frozen=True)
class SequenceData:
    """Right-padded variable-length sequences.

    Attributes:
        x: ``(N, T, C)`` float32, zeros past each sequence's length (a language model: ``(N, T)``
            int64 token ids).
        lengths: ``(N,)`` int64 in ``[1, T]``.
        y: ``(N,)`` int64 class indices in ``[0, num_classes)`` (a language model: ``(N, T)``, the next
            token at every step).
    """

    x: np.ndarray
    lengths: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> SequenceData:
        """The sequences at ``index``, trimmed to their own longest length."""
        lengths = self.lengths[index]
        t = int(lengths.max()) if len(lengths) else 1
        return SequenceData(self.x[index, :t], lengths, self.y[index])


@dataclass(frozen=True)
class Task:
    """A classification task: data, class names and where it came from."""

    name: str
    train: SequenceData
    test: SequenceData
    class_names: tuple[str, ...]
    source: str
    test_from_split: bool = False  # True when the test set was split off the training data
    kind: str = "classification"  # or "language_model": x (N, T) token ids, y (N, T) next tokens
    val: SequenceData | None = None  # a fixed validation set; None: split one off train per seed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """Input features per step; for a language model the vocabulary size (one-hot width)."""
        return self.num_classes if self.kind == "language_model" else int(self.train.x.shape[2])

    def describe(self) -> str:
        if self.kind == "language_model":
            assert self.val is not None
            t = self.train.x.shape[1]
            return (
                f"{self.name}: character language model, {len(self.class_names)} symbols, "
                f"{len(self.train) * t} / {len(self.val) * t} / {len(self.test) * t} characters "
                f"(train / validation / test) in chunks of {t}"
            )
        lo = int(min(self.train.lengths.min(), self.test.lengths.min()))
        hi = int(max(self.train.lengths.max(), self.test.lengths.max()))
        split = " (test split off the given data)" if self.test_from_split else ""
        return (
            f"{self.name}: {len(self.train)} train / {len(self.test)} test sequences{split}, "
            f"{self.channels} channels, length {lo}-{hi}, {self.num_classes} classes"
        )


def pad(sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack ``(T_i, C)`` arrays into ``(N, max T_i, C)`` float32 with zeros after each end, and lengths."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    channels = sequences[0].shape[1]
    x = np.zeros((len(sequences), int(lengths.max()), channels), dtype=np.float32)
    for i, s in enumerate(sequences):
        x[i, : len(s)] = s
    return x, lengths


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with about ``fraction`` of every class held out.

    Each class with at least two members gives ``round(fraction * count)`` members (at least one, at
    most ``count - 1``) to the held-out part, drawn with ``numpy.random.default_rng(seed)``; a class
    with one member stays in the kept part. Both parts come back sorted.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 2:
            continue
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.append(rng.choice(members, size=k, replace=False))
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    kept_idx = np.setdiff1d(np.arange(len(y)), held_idx)
    return kept_idx, held_idx


def channel_stats(data: SequenceData, where: str = "the data") -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` (float64) over the real (unpadded) steps; a constant channel gets std 1.

    Computed in float64, so channels of large but finite float32 values (1e20, 3e37) are standardized
    exactly; a channel whose statistics still are not finite numbers raises :class:`DataError` naming it.
    """
    real = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]
    values = data.x[real].astype(np.float64)
    if len(values) == 0:
        raise DataError(f"{where} holds no time steps")
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if len(bad):
        raise DataError(f"{where}: channel(s) {bad.tolist()} cannot be standardized (their mean or standard "
                        "deviation is not a finite number); rescale those features or pass --no-standardize")
    std[std <= 1e-8 * np.maximum(1.0, np.abs(mean))] = 1.0
    return mean, std


def standardize(data: SequenceData, mean: np.ndarray, std: np.ndarray) -> SequenceData:
    """``(x - mean) / std`` on the real steps, computed in float64 and stored as float32; the padding stays zero."""
    real = (np.arange(data.x.shape[1])[None, :] < data.lengths[:, None])[..., None]
    x = np.where(real, (data.x.astype(np.float64) - mean) / std, 0.0)
    if not np.isfinite(x).all():
        raise DataError("standardized features are not finite numbers; rescale the data or pass --no-standardize")
    return SequenceData(x.astype(np.float32), data.lengths, data.y)


def encode_labels(
    train_labels: np.ndarray, test_labels: np.ndarray | None, where: str
) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Map labels (any type) to 0..K-1 in sorted order; check classes and test labels."""
    train_labels = np.asarray(train_labels)
    if train_labels.ndim != 1:
        raise DataError(f"{where}: labels must be one-dimensional, got shape {train_labels.shape}")
    if train_labels.dtype.kind == "f" and not np.all(np.isfinite(train_labels)):
        raise DataError(f"{where}: labels contain NaN or infinity")
    classes = np.unique(train_labels)
    if len(classes) < 2:
        raise DataError(
            f"{where}: the training labels hold a single class ({classes[0]!r} if any); "
            "classification needs at least two"
        )
    index = {c.item() if hasattr(c, "item") else c: i for i, c in enumerate(classes)}
    y_train = np.array([index[v.item() if hasattr(v, "item") else v] for v in train_labels], dtype=np.int64)
    y_test = None
    if test_labels is not None:
        test_labels = np.asarray(test_labels)
        if test_labels.ndim != 1:
            raise DataError(f"{where}: test labels must be one-dimensional, got shape {test_labels.shape}")
        unseen = sorted({str(v) for v in np.unique(test_labels)} - {str(c) for c in classes})
        if unseen:
            raise DataError(
                f"{where}: test labels {unseen} do not occur in the training labels (classes seen in "
                f"training: {[str(c) for c in classes]})"
            )
        y_test = np.array([index[v.item() if hasattr(v, "item") else v] for v in test_labels], dtype=np.int64)
    return y_train, y_test, tuple(str(c) for c in classes)


def check_finite(x: np.ndarray, lengths: np.ndarray, where: str) -> None:
    """Refuse NaN and infinite values on the real steps (values beyond float32's range count as infinite)."""
    if np.isfinite(x).all():  # the usual case, without copying the real steps out
        return
    real = np.arange(x.shape[1])[None, :] < lengths[:, None]
    bad = ~np.isfinite(x[real])
    if bad.any():
        seq = int(np.flatnonzero((~np.isfinite(x)).any(axis=(1, 2)) & (lengths > 0))[0])
        raise DataError(f"{where}: NaN or infinite values in the features (first in sequence {seq}; float32, the "
                        "features' type, holds magnitudes up to 3.4e38)")


def make_task(
    name: str,
    source: str,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    test_fraction: float,
    split_seed: int,
) -> Task:
    """Encode labels, check values, split a test set off when none was given."""
    x, lengths, labels = train
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: refused just below
        x = x.astype(np.float32, copy=False)
        if test is not None:
            test = (test[0].astype(np.float32, copy=False), test[1], test[2])
    check_finite(x, lengths, f"{source} (training data)")
    if test is not None:
        check_finite(test[0], test[1], f"{source} (test data)")
        if test[0].shape[2] != x.shape[2]:
            raise DataError(
                f"{source}: test data has {test[0].shape[2]} channels, training data {x.shape[2]}"
            )
    y, y_test, class_names = encode_labels(labels, None if test is None else test[2], source)
    full = SequenceData(x.astype(np.float32, copy=False), lengths.astype(np.int64), y)
    if test is None:
        if np.bincount(y).min() < 2:
            raise DataError(
                f"{source}: every class needs at least two sequences to split off a test set; "
                "provide X_test / y_test (or a 'split' column) instead"
            )
        kept, held = stratified_split(y, test_fraction, split_seed)
        return Task(name, full.subset(kept), full.subset(held), class_names, source, test_from_split=True)
    assert y_test is not None
    test_data = SequenceData(test[0].astype(np.float32, copy=False), test[1].astype(np.int64), y_test)
    return Task(name, full, test_data, class_names, source)


def check_split(task: Task, val_fraction: float, where: str = "the training data") -> None:
    """Refuse a task whose training set cannot give a validation part and a training part for every class.

    The protocol splits ``val_fraction`` of each class off the training set per seed; a class needs at least
    two training sequences for that (one to validate on, one to train on). Raises :class:`DataError` with the
    counts and the minimum (two per class).
    """
    if task.kind == "language_model":
        return
    counts = np.bincount(task.train.y, minlength=task.num_classes)
    if len(task.test) == 0:
        raise DataError(f"{where}: the test set is empty")
    if counts.min() < 2:
        short = [task.class_names[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(
            f"{where}: {len(task.train)} training sequences are too few to split off a validation part: class(es) "
            f"{short[:5]}{' ...' if len(short) > 5 else ''} have fewer than 2 (one to validate on, one to train on); "
            f"the minimum is 2 per class, {2 * task.num_classes} for {task.num_classes} classes "
            f"(val fraction {val_fraction:g})"
        )
