"""The numpy CSV reader: numbers exactly as ``float()`` reads them, and ``load_csv`` equal to a plain
csv-module reading of the same file (the oracle below) on many layouts, chunk boundaries included;
errors name the right line; memory stays below three times the file's size."""

from __future__ import annotations

import csv
import io
import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnndrop.cli import csv_columns, data
from rnndrop.cli.data import DataError


def _matrix(texts: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned byte matrix and widths, as the reader hands number columns to parse_numbers."""
    s = np.array(texts, dtype=np.bytes_) if any(texts) else np.zeros(len(texts), dtype="S1")
    widths = np.array([len(t) for t in texts], dtype=np.int64)
    left = s.view(np.uint8).reshape(len(texts), s.dtype.itemsize)
    return csv_columns._right_align(left, widths), widths


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))).all())


FORMATS = ["%.6f", "%g", "%r", "%.18e", "%.3e", "%.0f", "%.17g", "%E", "%.12f", "%.20f", "%.1f"]
SPECIAL = [b"+1.5", b"-.5", b".5", b"5.", b"-0", b"+0.0", b"1e5", b"1E+05", b"1e-5", b" 1.5", b"1.5 ", b"nan",
           b"-inf", b"Infinity", b"1_000", b"0001.2500", b"00000000000000000000012.5",
           b"123456789012345678901234567890", b"1e400", b"-1e-400", b"9007199254740993", b"1.0000000000000002",
           b"4.9406564584124654e-324", b"1.7976931348623157e308", b"9999999999999999", b"-9999999999999.99"]
NOT_NUMBERS = [b"", b"-", b".", b"e5", b"1e", b"1e+", b"1.2.3", b"--1", b"1-", b"abc", b"0x10", b"1e5.5", b"+",
               b"-.", b"1 2", b"1\t2", b"1.5e", b"12a"]


def test_numbers_are_what_float_reads_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 9, 3000),
                        rng.integers(-10**6, 10**6, 500).astype(float), [0.0, -0.0, 1e22, 1e-22, 5e-324]])
    texts = [repr(float(v)).encode() if f == "%r" else (f % v).encode() for f in FORMATS for v in x[::4]]
    texts += [b"%d" % v for v in rng.integers(-10**15, 10**15, 500)] + SPECIAL
    # 16 digits above 2**53 with a dot (what the 64-bit fast path reads): the mantissa itself is no longer
    # exact in float64, so a value computed from it is not float()'s (about a third differ) unless handled.
    for mantissa, decimals in zip(rng.integers(2**53, 10**16, 300), rng.integers(1, 16, 300)):
        digits = str(mantissa)
        texts.append(f"{digits[:-decimals]}.{digits[-decimals:]}".encode())
    m, widths = _matrix(texts)
    expected = np.array([float(t) for t in texts])
    values, bad = csv_columns.parse_numbers(m, widths)
    assert bad is None and _same_bits(values, expected)
    values32, bad = csv_columns.parse_numbers(m, widths, single=True)
    with np.errstate(over="ignore"):
        assert bad is None and _same_bits(values32.astype(np.float32).astype(np.float64),
                                          expected.astype(np.float32).astype(np.float64))


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_not_a_number_is_reported_at_its_row(text: bytes) -> None:
    m, widths = _matrix([b"1.5", b"-2", text, b"3"])
    _, bad = csv_columns.parse_numbers(m, widths)
    assert bad == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, width=64), st.sampled_from(FORMATS)),
                min_size=1, max_size=40))
def test_numbers_property(values) -> None:
    texts = [repr(v).encode() if f == "%r" else (f % v).encode() for v, f in values]
    m, widths = _matrix(texts)
    parsed, bad = csv_columns.parse_numbers(m, widths)
    assert bad is None and _same_bits(parsed, np.array([float(t) for t in texts]))


# ---------------------------------------------------------------------------------------------- load_csv
def _oracle(text: str, test_fraction: float = 0.3) -> data.Task:
    """The long-format CSV read the plain way: csv module, float() per value, dicts per sequence."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip() for h in next(reader)]
    i_id, i_t, i_y = header.index("sequence"), header.index("time"), header.index("label")
    i_split = header.index("split") if "split" in header else None
    feats = [i for i, h in enumerate(header) if h not in ("sequence", "time", "label", "split")]
    steps: dict[str, list] = {}
    labels, splits = {}, {}
    for row in reader:
        if not row or all(not v.strip() for v in row):
            continue
        sid = row[i_id].strip()
        steps.setdefault(sid, []).append((float(row[i_t]), [float(row[i]) for i in feats]))
        labels[sid] = row[i_y].strip()
        if i_split is not None:
            splits[sid] = row[i_split].strip().lower()
    seqs = {s: np.array([v for _, v in sorted(rows, key=lambda p: p[0])]) for s, rows in steps.items()}

    def part(ids):
        x, lengths = data.pad([seqs[s] for s in ids])
        return x, lengths, np.array([labels[s] for s in ids])

    ids = list(seqs)
    if i_split is None:
        return data.make_task("d.csv", "d.csv", part(ids), None, test_fraction, 0)
    return data.make_task("d.csv", "d.csv", part([s for s in ids if splits[s] == "train"]),
                          part([s for s in ids if splits[s] == "test"]), test_fraction, 0)


def _write_table(rng, fmt: str, *, crlf=False, quoted=False, blank=False, spaces=False, bom=False, split=False,
                 shuffle=True) -> str:
    n_seq, feats = 23, 3
    rows = []
    for s in range(n_seq):
        label = ["cat", "dog", "bird"][s % 3]
        for t in range(int(rng.integers(1, 9))):
            values = rng.standard_normal(feats) * 10.0 ** rng.integers(-5, 5, feats)
            cells = [repr(float(v)) if fmt == "%r" else fmt % v for v in values]
            if spaces:
                cells = [f" {c} " for c in cells]
            sid = f'"s,{s}"' if quoted else f"s{s}"
            row = [sid, str(t), *cells, label] + (["test" if s % 4 == 0 else "train"] if split else [])
            rows.append(",".join(row))
    if shuffle:
        rows = [rows[i] for i in rng.permutation(len(rows))]
    if blank:
        rows.insert(5, "")
        rows.insert(9, ",,,,,")
        rows.insert(12, "   ")
    header = "sequence,time,f1,f2,f3,label" + (",split" if split else "")
    end = "\r\n" if crlf else "\n"
    return ("\ufeff" if bom else "") + end.join([header, *rows]) + end


LAYOUTS = [
    ("%.6f", {}), ("%r", {}), ("%.18e", {}), ("%g", {"crlf": True}), ("%.3f", {"quoted": True}),
    ("%.6f", {"blank": True}), ("%.4f", {"spaces": True}), ("%.6f", {"bom": True, "split": True}),
    ("%.2e", {"shuffle": False}),
]


@pytest.mark.parametrize("chunk", [1 << 21, 97])
@pytest.mark.parametrize(("fmt", "options"), LAYOUTS, ids=[f"{f}-{'-'.join(o) or 'plain'}" for f, o in LAYOUTS])
def test_load_csv_equals_the_plain_reading(tmp_path, monkeypatch, fmt, options, chunk) -> None:
    monkeypatch.setattr(csv_columns, "CHUNK_BYTES", chunk)  # 97 bytes: rows cross chunk boundaries
    text = _write_table(np.random.default_rng(len(fmt) + len(options)), fmt, **options)
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8"))
    got, want = data.load_csv(path), _oracle(text)
    assert got.class_names == want.class_names and got.test_from_split == want.test_from_split
    for a, b in ((got.train, want.train), (got.test, want.test)):
        np.testing.assert_array_equal(a.x, b.x)  # bitwise: the same float32 values
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.y, b.y)


def _errors_file(tmp_path, bad_line: str, at: int = 40) -> str:
    rows = [f"s{i // 3},{i % 3},{i}.5,{i},{'ab'[i // 3 % 2]}" for i in range(60)]
    rows[at - 2] = bad_line  # line `at` of the file (the header is line 1)
    path = tmp_path / "e.csv"
    path.write_text("sequence,time,f,g,label\n" + "\n".join(rows) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("s99,0,1.5", "ragged row with 3 fields, the header has 5"),
        ("s99,zero,1.5,2,a", "time step 'zero' is not a number"),
        ("s99,0,1.5,x2,a", "feature column 'g' holds a non-numeric value 'x2'"),
        ("s99,0,nan,2,a", "NaN or infinite value in feature column 'f'"),
        ("s99,0,1.5,inf,a", "NaN or infinite value in feature column 'g'"),
        ("s99,0,1.5,2,  ", "empty label"),
        ("s0,5,1.5,2,b", "sequence 's0' has two labels \\('a' and 'b'\\)"),
    ],
)
@pytest.mark.parametrize("chunk", [1 << 21, 113])
def test_errors_name_the_line(tmp_path, monkeypatch, bad_line, message, chunk) -> None:
    monkeypatch.setattr(csv_columns, "CHUNK_BYTES", chunk)
    path = _errors_file(tmp_path, bad_line)
    with pytest.raises(DataError, match=rf"e\.csv:40: {message}"):
        data.load_csv(path)


def test_other_errors(tmp_path) -> None:
    path = tmp_path / "e.csv"
    path.write_bytes(b"sequence,time,f,label\na,0,1,x\nb,0,\xff,y\n")
    with pytest.raises(DataError, match="cannot read as UTF-8 text \\(line 3"):
        data.load_csv(path)
    path.write_text("sequence,time,f,label\n\n,,,\n")
    with pytest.raises(DataError, match="no data rows after the header"):
        data.load_csv(path)
    path.write_text("sequence,time,f,label,split\na,0,1,x,train\na,1,1,x,test\nb,0,1,y,train\n")
    with pytest.raises(DataError, match=r"e\.csv:3: sequence 'a' lies in both train and test"):
        data.load_csv(path)
    path.write_text("sequence,time,f,label,split\na,0,1,x,train\nb,0,1,y,later\n")
    with pytest.raises(DataError, match=r"e\.csv:3: column 'split' must be 'train' or 'test', got 'later'"):
        data.load_csv(path)
    path.write_text("sequence,time,f,label\na,0,1,x\nb,0,1e39,y\n")  # finite as float64, not as float32
    with pytest.raises(DataError, match="NaN or infinite values in the features"):
        data.load_csv(path)


def test_memory_stays_below_three_times_the_file(tmp_path, monkeypatch) -> None:
    # The 500k-row (45 MB) case in miniature: a 3.3 MB file, read in chunks scaled down alike (2 MiB for
    # 45 MB there, 128 KiB here), since the columns grow with the file and a chunk's temporaries do not.
    monkeypatch.setattr(csv_columns, "CHUNK_BYTES", 1 << 17)
    rng = np.random.default_rng(0)
    n = 40_000
    lines = ["sequence,time,f0,f1,f2,f3,f4,f5,f6,f7,label"]
    x = rng.standard_normal((n, 8))
    lines += [f"s{i // 50},{i % 50}," + ",".join(f"{v:.6f}" for v in x[i]) + f",{'abc'[i // 50 % 3]}"
              for i in range(n)]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        task = data.load_csv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(task.train) + len(task.test) == n // 50
    assert peak < 3 * size, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
    both = np.concatenate([task.train.x.reshape(-1, 8), task.test.x.reshape(-1, 8)])
    assert math.isclose(float(np.abs(both).max()), float(np.abs(np.round(x, 6)).max()), rel_tol=1e-6)
