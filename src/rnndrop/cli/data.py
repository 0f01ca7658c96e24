"""Sequence-classification data for ``rnndrop compare``: the bundled set, user files, splits.

Every loader returns a :class:`Task`: a training and a test :class:`SequenceData`, each holding
right-padded sequences ``x`` ``(N, T, C)`` float32, their ``lengths`` ``(N,)`` and integer labels.
Nothing here downloads anything.

Accepted user files (``--data PATH``):

* ``.npz`` with ``X`` and ``y``; ``X`` either ``(N, T, C)`` numeric (``(N, T)`` = one channel) with an
  optional ``lengths`` ``(N,)`` (right padding), or an object array of ``N`` arrays ``(T_i, C)``
  (object arrays are pickled by numpy: only load files you trust). Optionally ``X_test`` / ``y_test``
  (and ``lengths_test``); without them a stratified, seeded part of the data becomes the test set.
* ``.csv`` in long format with a header: one row per (sequence, time step); a sequence-id column, a
  time-step column (integers, order within the sequence), one or more numeric feature columns, and a
  label column (constant within a sequence). An optional ``split`` column with values ``train`` /
  ``test`` chooses the test set; otherwise it is split off as for ``.npz``.

Malformed files raise :class:`DataError` (a ``ValueError``) naming the file, key or column and what was
expected.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

BUNDLED = "japanese_vowels"


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


# ---------------------------------------------------------------------------------------------- helpers
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


def channel_stats(data: SequenceData) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,)`` over the real (unpadded) steps; a constant channel gets std 1."""
    real = np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]
    values = data.x[real]
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(data: SequenceData, mean: np.ndarray, std: np.ndarray) -> SequenceData:
    """``(x - mean) / std`` on the real steps; the padding stays zero."""
    real = (np.arange(data.x.shape[1])[None, :] < data.lengths[:, None])[..., None]
    x = np.where(real, (data.x - mean) / std, 0.0).astype(np.float32)
    return SequenceData(x, data.lengths, data.y)


def _encode_labels(
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


def _check_finite(x: np.ndarray, lengths: np.ndarray, where: str) -> None:
    real = np.arange(x.shape[1])[None, :] < lengths[:, None]
    bad = ~np.isfinite(x[real])
    if bad.any():
        seq = int(np.flatnonzero((~np.isfinite(x)).any(axis=(1, 2)) & (lengths > 0))[0])
        raise DataError(f"{where}: NaN or infinite values in the features (first in sequence {seq})")


def _finish(
    name: str,
    source: str,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    test_fraction: float,
    split_seed: int,
) -> Task:
    """Encode labels, check values, split a test set off when none was given."""
    x, lengths, labels = train
    _check_finite(x, lengths, f"{source} (training data)")
    if test is not None:
        _check_finite(test[0], test[1], f"{source} (test data)")
        if test[0].shape[2] != x.shape[2]:
            raise DataError(
                f"{source}: test data has {test[0].shape[2]} channels, training data {x.shape[2]}"
            )
    y, y_test, class_names = _encode_labels(labels, None if test is None else test[2], source)
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


# ---------------------------------------------------------------------------------------------- bundled
def bundled_path() -> Path:
    """Path of the bundled JapaneseVowels file (inside the installed package)."""
    return Path(str(resources.files("rnndrop").joinpath("datasets", "japanese_vowels.npz")))


def load_japanese_vowels() -> Task:
    """The bundled JapaneseVowels set (Kudo, Toyama & Shimbo 1999): 270 train / 370 test, 12 channels.

    Sequences are 7-29 frames of 12 LPC cepstrum coefficients; the class is one of 9 speakers. The
    official train/test split is kept. See ``rnndrop/datasets/README.md`` for source and licence.
    """
    path = bundled_path()
    with np.load(path, allow_pickle=False) as f:
        parts = {}
        for split in ("train", "test"):
            lengths = f[f"{split}_lengths"].astype(np.int64)
            values = f[f"{split}_values"]
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            seqs = [values[bounds[i] : bounds[i + 1]] for i in range(len(lengths))]
            x, lens = pad(seqs)
            parts[split] = SequenceData(x, lens, f[f"{split}_labels"].astype(np.int64))
        class_names = tuple(str(c) for c in f["class_names"])
    return Task(
        "JapaneseVowels", parts["train"], parts["test"], class_names,
        "bundled JapaneseVowels (UCI; Kudo, Toyama & Shimbo 1999)",
    )


# ---------------------------------------------------------------------------------------------- .npz
def _npz_sequences(
    arrays: dict[str, np.ndarray], x_key: str, len_key: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    x = arrays[x_key]
    where = f"{path}: {x_key!r}"
    if x.dtype == object:
        if len_key in arrays:
            raise DataError(f"{where} is a list of arrays; {len_key!r} is only for a padded (N, T, C) array")
        seqs = []
        for i, s in enumerate(x.ravel() if x.ndim == 1 else x):
            try:
                a = np.asarray(s, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DataError(f"{where}[{i}] is not a numeric array ({exc})") from None
            if a.ndim == 1:
                a = a[:, None]
            if a.ndim != 2:
                raise DataError(f"{where}[{i}] must be (time, channels), got shape {a.shape}")
            if len(a) == 0:
                raise DataError(f"{where}[{i}] is empty (length 0)")
            seqs.append(a)
        if not seqs:
            raise DataError(f"{where} holds no sequences")
        widths = sorted({s.shape[1] for s in seqs})
        if len(widths) > 1:
            first = next(i for i, s in enumerate(seqs) if s.shape[1] != seqs[0].shape[1])
            raise DataError(
                f"{where}: ragged channels, sequences have {widths} channels (sequence 0 has "
                f"{seqs[0].shape[1]}, sequence {first} has {seqs[first].shape[1]})"
            )
        return pad(seqs)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{where} must be numeric or a list of arrays, got dtype {x.dtype}")
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise DataError(f"{where} must be (N, T, C) or (N, T), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{where} is empty, shape {x.shape}")
    if len_key in arrays:
        lengths = np.asarray(arrays[len_key])
        if lengths.shape != (x.shape[0],) or lengths.dtype.kind not in "iu":
            raise DataError(
                f"{path}: {len_key!r} must be ({x.shape[0]},) integers, got shape {lengths.shape} "
                f"dtype {lengths.dtype}"
            )
        if lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise DataError(
                f"{path}: {len_key!r} must lie in [1, {x.shape[1]}], got {lengths.min()}..{lengths.max()}"
            )
        lengths = lengths.astype(np.int64)
        x = np.where((np.arange(x.shape[1])[None, :] < lengths[:, None])[..., None], x, 0)
    else:
        lengths = np.full(x.shape[0], x.shape[1], dtype=np.int64)
    return x.astype(np.float32), lengths


def load_npz(path: str | Path, test_fraction: float = 0.3, split_seed: int = 0) -> Task:
    """Load a user ``.npz`` (format: module docstring)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):  # also keeps a non-.npz file away from numpy's pickle fallback
        raise DataError(f"{path}: not a readable .npz file (not a zip archive as np.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise DataError(f"{path}: not a readable .npz file ({exc})") from None
        # Object arrays (lists of variable-length sequences) are stored pickled by numpy.
        with np.load(path, allow_pickle=True) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(f"{path}: missing key {key!r} (found keys: {sorted(arrays)}); expected X and y")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: give both 'X_test' and 'y_test' or neither")
    x, lengths = _npz_sequences(arrays, "X", "lengths", path)
    if len(arrays["y"]) != len(x):
        raise DataError(f"{path}: 'X' holds {len(x)} sequences but 'y' {len(arrays['y'])} labels")
    test = None
    if "X_test" in arrays:
        xt, lt = _npz_sequences(arrays, "X_test", "lengths_test", path)
        if len(arrays["y_test"]) != len(xt):
            raise DataError(f"{path}: 'X_test' holds {len(xt)} sequences but 'y_test' {len(arrays['y_test'])} labels")
        test = (xt, lt, arrays["y_test"])
    return _finish(path.name, str(path), (x, lengths, arrays["y"]), test, test_fraction, split_seed)


# ---------------------------------------------------------------------------------------------- .csv
def load_csv(
    path: str | Path,
    *,
    id_column: str = "sequence",
    time_column: str = "time",
    label_column: str = "label",
    split_column: str = "split",
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> Task:
    """Load a long-format ``.csv`` (format: module docstring); feature columns are all the others."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file, expected a header row")
        header = [h.strip() for h in header]
        missing = [c for c in (id_column, time_column, label_column) if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing} in the header {header}; expected a sequence-id "
                f"column {id_column!r}, a time column {time_column!r} and a label column {label_column!r} "
                "(rename them or pass --id-col / --time-col / --label-col)"
            )
        if len(set(header)) != len(header):
            raise DataError(f"{path}: duplicate column names in the header {header}")
        special = {id_column, time_column, label_column, split_column}
        features = [i for i, h in enumerate(header) if h not in special]
        if not features:
            raise DataError(f"{path}: no feature columns besides {sorted(special & set(header))}")
        i_id, i_t, i_y = header.index(id_column), header.index(time_column), header.index(label_column)
        i_split = header.index(split_column) if split_column in header else None
        rows: dict[str, list[tuple[float, list[float]]]] = {}
        labels: dict[str, str] = {}
        splits: dict[str, str] = {}
        for lineno, row in enumerate(reader, 2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{lineno}: ragged row with {len(row)} fields, the header has {len(header)}"
                )
            sid = row[i_id].strip()
            try:
                t = float(row[i_t])
            except ValueError:
                raise DataError(f"{path}:{lineno}: time step {row[i_t]!r} is not a number") from None
            try:
                values = [float(row[i]) for i in features]
            except ValueError:
                bad = next(header[i] for i in features if not _is_float(row[i]))
                raise DataError(
                    f"{path}:{lineno}: feature column {bad!r} holds a non-numeric value "
                    f"{row[header.index(bad)]!r}"
                ) from None
            if not all(math.isfinite(v) for v in values):
                bad = next(header[i] for i, v in zip(features, values) if not math.isfinite(v))
                raise DataError(f"{path}:{lineno}: NaN or infinite value in feature column {bad!r}")
            label = row[i_y].strip()
            if label == "":
                raise DataError(f"{path}:{lineno}: empty label")
            if labels.setdefault(sid, label) != label:
                raise DataError(
                    f"{path}:{lineno}: sequence {sid!r} has two labels ({labels[sid]!r} and {label!r}); "
                    "the label must be constant within a sequence"
                )
            if i_split is not None:
                split = row[i_split].strip().lower()
                if split not in ("train", "test"):
                    raise DataError(
                        f"{path}:{lineno}: column {split_column!r} must be 'train' or 'test', got {split!r}"
                    )
                if splits.setdefault(sid, split) != split:
                    raise DataError(f"{path}:{lineno}: sequence {sid!r} lies in both train and test")
            rows.setdefault(sid, []).append((t, values))
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    seqs: dict[str, np.ndarray] = {}
    for sid, steps in rows.items():
        times = [t for t, _ in steps]
        if len(set(times)) != len(times):
            raise DataError(f"{path}: sequence {sid!r} repeats a time step")
        order = np.argsort(times, kind="stable")
        seqs[sid] = np.array([steps[i][1] for i in order], dtype=np.float64)
    ids = list(seqs)
    name = path.name
    if i_split is not None:
        train_ids = [s for s in ids if splits[s] == "train"]
        test_ids = [s for s in ids if splits[s] == "test"]
        if not train_ids or not test_ids:
            raise DataError(f"{path}: column {split_column!r} must name at least one train and one test sequence")
        x, lens = pad([seqs[s] for s in train_ids])
        xt, lt = pad([seqs[s] for s in test_ids])
        return _finish(
            name, str(path), (x, lens, np.array([labels[s] for s in train_ids])),
            (xt, lt, np.array([labels[s] for s in test_ids])), test_fraction, split_seed,
        )
    x, lens = pad([seqs[s] for s in ids])
    return _finish(name, str(path), (x, lens, np.array([labels[s] for s in ids])), None, test_fraction, split_seed)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- Fashion-MNIST
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (``.gz`` or plain): magic ``0 0 type ndim``, big-endian dims, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read idx file ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: idx header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}")
    return body.reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).exists():
            return data_dir / name
    raise DataError(f"{data_dir}: missing {stem}.gz (the Fashion-MNIST idx files)")


def load_fashion_mnist(data_dir: str | Path, train_limit: int | None = None, test_limit: int | None = None,
                       seed: int = 0) -> Task:
    """Sequential Fashion-MNIST: each 28x28 image read row by row as 28 steps of 28 features in [0, 1].

    ``data_dir`` holds ``train-images-idx3-ubyte.gz`` etc. (Debian ``dataset-fashion-mnist`` installs them
    in ``/usr/share/datasets/fashion-mnist``). ``train_limit`` / ``test_limit`` keep a stratified,
    seeded subset.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder")
    parts = {}
    for split, prefix, limit in (("train", "train", train_limit), ("test", "t10k", test_limit)):
        images = read_idx(_find_idx(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{data_dir}: {prefix} images {images.shape} and labels {labels.shape} do not match")
        x = images.astype(np.float32) / 255.0
        data = SequenceData(x, np.full(len(x), x.shape[1], dtype=np.int64), labels)
        if limit is not None and limit < len(data):
            _, keep = stratified_split(labels, limit / len(labels), seed)
            data = data.subset(keep)
        parts[split] = data
    return Task("Fashion-MNIST (sequential)", parts["train"], parts["test"], FASHION_CLASSES, str(data_dir))


def load_user_data(
    path: str | Path,
    *,
    test_fraction: float = 0.3,
    id_column: str = "sequence",
    time_column: str = "time",
    label_column: str = "label",
) -> Task:
    """Load ``--data PATH``: a ``.npz`` or a long-format ``.csv`` (formats: module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"--data {path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path, test_fraction=test_fraction)
    if suffix == ".csv":
        return load_csv(path, id_column=id_column, time_column=time_column, label_column=label_column,
                        test_fraction=test_fraction)
    raise DataError(f"--data {path}: expected a .npz or .csv file, got {suffix or 'no suffix'!r}")


# ---------------------------------------------------------------------------------------------- text
UNKNOWN = "\ufffd"  # stands for characters that never occur in the training part


def load_text(
    path: str | Path, seq_len: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.1,
    max_chars: int | None = None,
) -> Task:
    """A character-level language-modelling task from a UTF-8 text file.

    The text (its first ``max_chars`` characters if given) is cut into contiguous train / validation /
    test parts (the last ``test_fraction`` is the test part, the ``val_fraction`` before it validation),
    each into non-overlapping chunks of ``seq_len`` characters: ``x`` ``(N, seq_len)`` the character ids,
    ``y`` ``(N, seq_len)`` the next character at every position. The vocabulary is the training part's
    characters (sorted) plus one symbol for characters unseen in training.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--text {path}: cannot read as UTF-8 text ({exc})") from None
    return text_task(text, path.name, str(path), f"--text {path}", seq_len, val_fraction, test_fraction, max_chars)


def text_task(
    text: str, name: str, source: str, where: str, seq_len: int = 64, val_fraction: float = 0.1,
    test_fraction: float = 0.1, max_chars: int | None = None,
) -> Task:
    """:func:`load_text`'s task from ``text`` itself; ``where`` names it in error messages."""
    if max_chars is not None:
        text = text[:max_chars]
    n = len(text)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    parts = {"train": text[: n - n_test - n_val], "val": text[n - n_test - n_val : n - n_test],
             "test": text[n - n_test :]}
    for part_name, part in parts.items():
        if len(part) < 2 * seq_len + 1:
            raise DataError(
                f"{where}: {n} characters leave the {part_name} part {len(part)} characters, fewer than two "
                f"chunks of {seq_len} (+1); give a longer text or a smaller --seq-len"
            )
    vocab = sorted(set(parts["train"]))
    if len(vocab) < 2:
        raise DataError(f"{where}: the training part holds a single distinct character")
    index = {c: i for i, c in enumerate(vocab)}
    unknown = len(vocab)

    def chunks(part: str) -> SequenceData:
        ids = np.array([index.get(c, unknown) for c in part], dtype=np.int64)
        count = (len(ids) - 1) // seq_len
        x = ids[: count * seq_len].reshape(count, seq_len)
        y = ids[1 : count * seq_len + 1].reshape(count, seq_len)
        return SequenceData(x, np.full(count, seq_len, dtype=np.int64), y)

    return Task(
        name, chunks(parts["train"]), chunks(parts["test"]), (*vocab, UNKNOWN), source,
        kind="language_model", val=chunks(parts["val"]),
    )
