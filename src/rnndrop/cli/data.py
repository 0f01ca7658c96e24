"""Data for ``rnndrop compare``, in one namespace: every loader and the types they return.

Where things live:

* :mod:`rnndrop.study.data`: :class:`Task`, :class:`SequenceData`, :class:`DataError` and the steps
  every loader shares (padding, stratified splits, label encoding, standardization);
* :mod:`rnndrop.cli.builtin_datasets`: the bundled JapaneseVowels set, Fashion-MNIST from idx files;
* :mod:`rnndrop.cli.user_files`: ``--data`` (``.npz``, long-format ``.csv``, formats in its docstring)
  and ``--text``; :mod:`rnndrop.cli.csv_table` reads CSV files with pyarrow.

Nothing here downloads anything.
"""

from __future__ import annotations

from ..study.data import (
    DataError,
    SequenceData,
    Task,
    channel_stats,
    check_finite,
    encode_labels,
    make_task,
    pad,
    standardize,
    stratified_split,
)
from .builtin_datasets import BUNDLED, FASHION_CLASSES, bundled_path, load_fashion_mnist, load_japanese_vowels, read_idx
from .user_files import UNKNOWN, load_csv, load_npz, load_text, load_user_data, text_task

# The shared steps' names before the split into modules.
_finish = make_task
_encode_labels = encode_labels
_check_finite = check_finite

__all__ = [
    "BUNDLED",
    "FASHION_CLASSES",
    "UNKNOWN",
    "DataError",
    "SequenceData",
    "Task",
    "bundled_path",
    "channel_stats",
    "check_finite",
    "encode_labels",
    "load_csv",
    "load_fashion_mnist",
    "load_japanese_vowels",
    "load_npz",
    "load_text",
    "load_user_data",
    "make_task",
    "pad",
    "read_idx",
    "standardize",
    "stratified_split",
    "text_task",
]
