"""Your own data for ``rnndrop compare``: ``--data`` (a ``.npz`` or a long-format ``.csv``) and ``--text``.

Accepted user files (``--data PATH``):

* ``.npz`` with ``X`` and ``y``; ``X`` either ``(N, T, C)`` numeric (``(N, T)`` = one channel) with an
  optional ``lengths`` ``(N,)`` (right padding), or an object array of ``N`` arrays ``(T_i, C)``
  (object arrays are pickled by numpy: only load files you trust). Optionally ``X_test`` / ``y_test``
  (and ``lengths_test``); without them a stratified, seeded part of the data becomes the test set.
* ``.csv`` in long format with a header: one row per (sequence, time step); a sequence-id column, a
  time-step column (integers, order within the sequence), one or more numeric feature columns, and a
  label column (constant within a sequence). An optional ``split`` column with values ``train`` /
  ``test`` chooses the test set; otherwise it is split off as for ``.npz``.

Malformed files raise :class:`~rnndrop.study.data.DataError` naming the file, line, key or column
and what was expected. CSV files are read by pyarrow's CSV reader (:mod:`rnndrop.cli.csv_table`; figures
in ``benchmarks/bench_csv.py`` and docs/compare.md).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..study.data import DataError, SequenceData, Task, make_task, pad
from .csv_table import CsvColumns, read_long_csv


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
    return make_task(path.name, str(path), (x, lengths, arrays["y"]), test, test_fraction, split_seed)


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
    table = read_long_csv(path, id_column, time_column, label_column, split_column)
    return _csv_task(table, path, split_column, test_fraction, split_seed)


def _csv_task(table: CsvColumns, path: Path, split_name: str, test_fraction: float, split_seed: int) -> Task:
    """Cross-row checks (labels, splits, repeated steps), then sequences ordered by time step."""
    lines = table.lines
    seq, names, first_row = table.ids.codes, table.ids.names, table.ids.first_row
    label_code, label_names = table.labels.codes, table.labels.names
    seq_label = label_code[first_row]
    mixed = np.flatnonzero(label_code != seq_label[seq])
    if len(mixed):
        r = int(mixed[0])
        first, second = label_names[seq_label[seq[r]]], label_names[label_code[r]]
        raise DataError(f"{path}:{lines[r]}: sequence {names[seq[r]]!r} has two labels ({first!r} and {second!r}); "
                        "the label must be constant within a sequence")
    seq_split = None
    if table.splits is not None:
        seq_split = table.splits[first_row]
        both = np.flatnonzero(table.splits != seq_split[seq])
        if len(both):
            r = int(both[0])
            raise DataError(f"{path}:{lines[r]}: sequence {names[seq[r]]!r} lies in both train and test")
    times = table.times
    order = np.lexsort((times, seq))  # by sequence, then time step (stable for equal steps)
    seq_sorted, times_sorted = seq[order], times[order]
    repeated = np.flatnonzero((seq_sorted[1:] == seq_sorted[:-1]) & (times_sorted[1:] == times_sorted[:-1]))
    if len(repeated):
        raise DataError(f"{path}: sequence {names[seq_sorted[repeated[0]]]!r} repeats a time step")
    del times_sorted
    lengths = np.bincount(seq, minlength=len(names)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    step = np.empty(len(order), dtype=np.int64)
    step[order] = np.arange(len(order)) - starts[seq_sorted]  # each row's step within its sequence
    del order, seq_sorted
    labels = np.array(label_names)[seq_label]

    every = np.arange(len(names))
    if seq_split is None:
        train, test = _padded(every, seq, step, table.values, lengths, labels), None
    else:
        in_train, in_test = every[seq_split == 0], every[seq_split == 1]
        if not len(in_train) or not len(in_test):
            raise DataError(f"{path}: column {split_name!r} must name at least one train and one test sequence")
        train = _padded(in_train, seq, step, table.values, lengths, labels)
        test = _padded(in_test, seq, step, table.values, lengths, labels)
    table.values.clear()
    return make_task(path.name, str(path), train, test, test_fraction, split_seed)


def _padded(keep: np.ndarray, seq: np.ndarray, step: np.ndarray, values: list[np.ndarray], lengths: np.ndarray,
            labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequences ``keep`` (codes, in this order) as ``(x, lengths, labels)``; row ``i`` of the concatenated
    ``values`` blocks is step ``step[i]`` of sequence ``seq[i]`` (rows in any order)."""
    slot = np.full(len(lengths), -1, dtype=np.int64)
    slot[keep] = np.arange(len(keep))
    t = int(lengths[keep].max())
    width = values[0].shape[1]
    x = np.zeros((len(keep) * t, width), dtype=np.float32)
    start = 0
    for block in values:
        stop = start + len(block)
        where = slot[seq[start:stop]]
        rows = where >= 0
        x[where[rows] * t + step[start:stop][rows]] = block if rows.all() else block[rows]
        start = stop
    return x.reshape(len(keep), t, width), lengths[keep], labels[keep]


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
