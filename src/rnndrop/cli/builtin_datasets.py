"""Built-in data sets of ``rnndrop compare``: the bundled JapaneseVowels set and Fashion-MNIST read row
by row from its idx files (found on disk, e.g. from the Debian package; nothing is downloaded).
"""

from __future__ import annotations

import gzip
import struct
from importlib import resources
from pathlib import Path

import numpy as np

from ..study.data import DataError, SequenceData, Task, pad, stratified_split

BUNDLED = "japanese_vowels"


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
