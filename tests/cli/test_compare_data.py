"""Data loading for ``rnndrop compare``: the bundled set, user .npz / .csv files, their error messages."""

import gzip
import struct

import numpy as np
import pytest

from rnndrop.cli import data
from rnndrop.cli.data import DataError


def test_bundled_japanese_vowels():
    task = data.load_japanese_vowels()
    assert (len(task.train), len(task.test), task.channels, task.num_classes) == (270, 370, 12, 9)
    assert task.class_names == tuple(str(i) for i in range(1, 10))
    assert task.train.lengths.min() == 7 and task.train.lengths.max() == 26
    assert task.test.lengths.min() == 7 and task.test.lengths.max() == 29
    assert np.bincount(task.train.y).tolist() == [30] * 9  # 30 utterances per speaker
    for part in (task.train, task.test):
        real = np.arange(part.x.shape[1])[None, :] < part.lengths[:, None]
        assert not part.x[~real].any()  # zeros past the end
        assert np.isfinite(part.x).all()
        assert (np.abs(part.x[real]).sum(axis=-1) > 0).all()  # every real frame holds data


def test_stratified_split_keeps_class_shares():
    y = np.repeat(np.arange(3), [10, 20, 5])
    kept, held = data.stratified_split(y, 0.2, seed=3)
    assert np.bincount(y[held]).tolist() == [2, 4, 1]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(y)))
    again, _ = data.stratified_split(y, 0.2, seed=3)
    assert np.array_equal(kept, again)
    other, _ = data.stratified_split(y, 0.2, seed=4)
    assert not np.array_equal(kept, other)


def test_standardize_uses_real_steps_only():
    x = np.zeros((2, 3, 1), np.float32)
    x[0, :3, 0] = [1, 2, 3]
    x[1, :1, 0] = [6]
    d = data.SequenceData(x, np.array([3, 1]), np.array([0, 1]))
    mean, std = data.channel_stats(d)
    assert mean[0] == pytest.approx(3.0) and std[0] == pytest.approx(np.std([1, 2, 3, 6]))
    z = data.standardize(d, mean, std)
    assert z.x[1, 1:].tolist() == [[0.0], [0.0]]


# ---------------------------------------------------------------------------------------------- .npz
def _npz(tmp_path, name="d.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_padded_with_lengths_and_test(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5, 2)).astype(np.float32)
    lengths = np.array([5, 3] * 6)
    y = np.array(["a", "b", "c"] * 4)
    path = _npz(tmp_path, X=x, y=y, lengths=lengths, X_test=x[:4], y_test=y[:4])
    task = data.load_npz(path)
    assert task.class_names == ("a", "b", "c") and not task.test_from_split
    assert task.train.y.tolist() == [0, 1, 2] * 4
    assert task.train.lengths.tolist() == lengths.tolist()
    assert not task.train.x[1, 3:].any()  # values past a length are cleared
    assert len(task.test) == 4


def test_npz_object_array_of_variable_length_sequences(tmp_path):
    seqs = np.empty(8, dtype=object)
    for i in range(8):
        seqs[i] = np.full((i + 2, 3), float(i))
    path = _npz(tmp_path, X=seqs, y=np.array([0, 1] * 4))
    task = data.load_npz(path, test_fraction=0.25)
    assert task.test_from_split and len(task.train) + len(task.test) == 8
    assert sorted(task.train.lengths.tolist() + task.test.lengths.tolist()) == list(range(2, 10))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((4, 3, 2))}, "missing key 'y'"),
        ({"X": np.zeros((4, 3, 2)), "y": np.zeros(3)}, "4 sequences but 'y' 3 labels"),
        ({"X": np.zeros((4, 3, 2)), "y": np.zeros(4)}, "single class"),
        ({"X": np.full((4, 3, 2), np.nan), "y": np.arange(4) % 2}, "NaN"),
        ({"X": np.zeros((4, 3, 2)), "y": np.arange(4) % 2, "lengths": np.array([1, 2, 3, 4])}, "must lie in"),
        ({"X": np.zeros((4, 3, 2)), "y": np.arange(4) % 2, "X_test": np.zeros((2, 3, 2))}, "both 'X_test'"),
        (
            {
                "X": np.zeros((4, 3, 2)), "y": np.arange(4) % 2,
                "X_test": np.zeros((2, 3, 2)), "y_test": np.array([0, 7]),
            },
            r"test labels \['7'\] do not occur",
        ),
        ({"X": np.zeros((4, 3, 2, 1)), "y": np.arange(4) % 2}, r"must be \(N, T, C\)"),
    ],
)
def test_npz_errors(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message):
        data.load_npz(_npz(tmp_path, **arrays))


def test_npz_ragged_channels(tmp_path):
    seqs = np.empty(4, dtype=object)
    for i in range(4):
        seqs[i] = np.zeros((3, 2 if i != 2 else 5))
    with pytest.raises(DataError, match="ragged channels"):
        data.load_npz(_npz(tmp_path, X=seqs, y=np.arange(4) % 2))


def test_npz_not_a_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        data.load_npz(bad)


# ---------------------------------------------------------------------------------------------- .csv
def _csv(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_CSV = """sequence,time,f1,f2,label
s1,1,0.5,1.0,cat
s1,0,0.1,0.2,cat
s2,0,1.0,1.0,dog
s3,0,2.0,2.0,cat
s3,1,2.5,2.5,cat
s3,2,3.0,3.0,cat
s4,0,1.5,1.5,dog
s4,1,1.5,1.5,dog
"""


def test_csv_long_format_sorted_by_time(tmp_path):
    path = _csv(tmp_path, GOOD_CSV + "s5,0,1,1,dog\ns6,0,1,1,cat\n")
    task = data.load_csv(path, test_fraction=0.34)
    assert task.channels == 2 and task.class_names == ("cat", "dog")
    both = data.SequenceData(
        np.concatenate([_pad(task.train.x, 3), _pad(task.test.x, 3)]),
        np.concatenate([task.train.lengths, task.test.lengths]),
        np.concatenate([task.train.y, task.test.y]),
    )
    assert sorted(both.lengths.tolist()) == [1, 1, 1, 2, 2, 3]
    s1 = next(i for i in range(len(both.y)) if both.lengths[i] == 2 and both.x[i, 0, 0] == pytest.approx(0.1))
    assert both.x[s1, :2, 0].tolist() == pytest.approx([0.1, 0.5])  # rows reordered by time step


def _pad(x, t):
    return np.pad(x, ((0, 0), (0, t - x.shape[1]), (0, 0)))


def test_csv_split_column(tmp_path):
    text = "id,t,v,y,split\na,0,1,x,train\na,1,2,x,train\nb,0,3,z,train\nc,0,4,x,test\n"
    task = data.load_csv(_csv(tmp_path, text), id_column="id", time_column="t", label_column="y")
    assert (len(task.train), len(task.test)) == (2, 1) and not task.test_from_split


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seq,time,f,label\na,0,1,x\n", r"missing column\(s\) \['sequence'\]"),
        ("sequence,time,f,label\na,0,1,x\nb,0,1\n", "ragged row with 3 fields"),
        ("sequence,time,f,label\na,0,nan,x\nb,0,1,y\n", "NaN or infinite value in feature column 'f'"),
        ("sequence,time,f,label\na,0,hello,x\nb,0,1,y\n", "non-numeric value 'hello'"),
        ("sequence,time,f,label\na,0,1,x\nb,0,1,x\n", "single class"),
        ("sequence,time,f,label\na,0,1,x\na,1,1,y\n", "has two labels"),
        ("sequence,time,f,label\na,0,1,x\na,0,2,x\nb,0,1,y\n", "repeats a time step"),
        ("sequence,time,label\na,0,x\n", "no feature columns"),
        ("", "empty file"),
        (
            "sequence,time,f,label,split\na,0,1,x,train\nb,0,1,y,train\nc,0,1,z,test\n",
            r"test labels \['z'\] do not occur",
        ),
    ],
)
def test_csv_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        data.load_csv(_csv(tmp_path, text))


def test_user_data_dispatch(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_user_data(tmp_path / "missing.npz")
    with pytest.raises(DataError, match=r"expected a \.npz or \.csv"):
        data.load_user_data(_csv(tmp_path, "x", name="d.txt"))


# ---------------------------------------------------------------------------------------------- Fashion-MNIST idx
def _idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(n, 28, 28)))
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    task = data.load_fashion_mnist(tmp_path, train_limit=20)
    assert (len(task.train), len(task.test), task.channels, task.num_classes) == (20, 20, 28, 10)
    assert task.train.x.max() <= 1.0 and (task.train.lengths == 28).all()
    assert np.bincount(task.train.y).tolist() == [2] * 10


def test_fashion_mnist_errors(tmp_path):
    with pytest.raises(DataError, match="missing train-images"):
        data.load_fashion_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03")
    with pytest.raises(DataError, match="bad magic"):
        data.load_fashion_mnist(tmp_path)


# ---------------------------------------------------------------------------------------------- text
def test_load_text_contiguous_parts_and_unknown_symbol(tmp_path):
    text = "abcab" * 40 + "xyz" * 10  # 'x', 'y', 'z' occur only in the test part
    path = tmp_path / "t.txt"
    path.write_text(text)
    task = data.load_text(path, seq_len=8, val_fraction=0.1, test_fraction=0.13)
    assert task.kind == "language_model" and task.class_names == ("a", "b", "c", data.UNKNOWN)
    assert task.train.x.shape[1] == 8 and task.train.x.dtype == np.int64
    # targets are the inputs shifted by one character
    assert np.array_equal(task.train.y[:, :-1], task.train.x[:, 1:])
    assert np.array_equal(task.train.y[:-1, -1], task.train.x[1:, 0])
    decoded = "".join(task.class_names[i] for i in task.train.x[0])
    assert decoded == text[:8]
    assert (task.test.x == 3).any()  # unseen characters map to the unknown symbol
    assert task.channels == task.num_classes == 4


def test_load_text_errors(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abc" * 20)
    with pytest.raises(DataError, match="fewer than two chunks"):
        data.load_text(short, seq_len=16)
    one = tmp_path / "one.txt"
    one.write_text("a" * 2000)
    with pytest.raises(DataError, match="single distinct character"):
        data.load_text(one, seq_len=16)
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe\x00" * 100)
    with pytest.raises(DataError, match="UTF-8"):
        data.load_text(binary)
