"""The CSV reader (pyarrow's, with rnndrop's checks): ``load_csv`` equal to a plain csv-module reading of the
same file (the oracle below) on many layouts; errors name the right line; memory stays below five times the
file's size (pyarrow's buffers included)."""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from rnndrop.cli import data
from rnndrop.cli.data import DataError

FORMATS = ["%.6f", "%g", "%r", "%.18e", "%.3e", "%.0f", "%.17g", "%E", "%.12f", "%.20f", "%.1f"]


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


@pytest.mark.parametrize(("fmt", "options"), LAYOUTS, ids=[f"{f}-{'-'.join(o) or 'plain'}" for f, o in LAYOUTS])
def test_load_csv_equals_the_plain_reading(tmp_path, fmt, options) -> None:
    text = _write_table(np.random.default_rng(len(fmt) + len(options)), fmt, **options)
    path = tmp_path / "d.csv"
    path.write_bytes(text.encode("utf-8"))
    got, want = data.load_csv(path), _oracle(text)
    assert got.class_names == want.class_names and got.test_from_split == want.test_from_split
    for a, b in ((got.train, want.train), (got.test, want.test)):
        np.testing.assert_array_equal(a.x, b.x)  # bitwise: the same float32 values
        np.testing.assert_array_equal(a.lengths, b.lengths)
        np.testing.assert_array_equal(a.y, b.y)


def _errors_file(tmp_path, bad_line: str, at: int = 40, blank: bool = False) -> str:
    rows = [f"s{i // 3},{i % 3},{i}.5,{i},{'ab'[i // 3 % 2]}" for i in range(60)]
    if blank:  # skipped rows before the bad one: the line count still holds
        rows[5], rows[9], rows[12] = "", ",,,,", "   "
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
@pytest.mark.parametrize("blank", [False, True])
def test_errors_name_the_line(tmp_path, bad_line, message, blank) -> None:
    path = _errors_file(tmp_path, bad_line, blank=blank)
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


def test_memory_stays_below_five_times_the_file(tmp_path) -> None:
    # The 500k-row (41 MB) case of benchmarks/bench_csv.py in miniature (120k rows, 10 MB), in a fresh process:
    # the peak of pyarrow's memory pools (its buffers) plus the peak of Python's own allocations (numpy arrays).
    # (A regression guard: at 41 MB the sum is about 2.3x; pyarrow reads in 2 MiB blocks and its compute kernels
    # keep buffers, which weigh more in a small file.)
    rng = np.random.default_rng(0)
    n = 120_000
    lines = ["sequence,time,f0,f1,f2,f3,f4,f5,f6,f7,label"]
    x = rng.standard_normal((n, 8))
    lines += [f"s{i // 50},{i % 50}," + ",".join(f"{v:.6f}" for v in x[i]) + f",{'abc'[i // 50 % 3]}"
              for i in range(n)]
    path = tmp_path / "big.csv"
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    script = (
        "import json, sys, tracemalloc\n"
        "import numpy as np, pyarrow as pa\n"
        "from rnndrop.cli import data\n"
        "tracemalloc.start()\n"
        "task = data.load_csv(sys.argv[1])\n"
        "python_peak = tracemalloc.get_traced_memory()[1]\n"
        "both = np.concatenate([task.train.x.reshape(-1, 8), task.test.x.reshape(-1, 8)])\n"
        "arrow = pa.default_memory_pool().max_memory() + pa.system_memory_pool().max_memory()\n"
        "print(json.dumps({'sequences': len(task.train) + len(task.test), 'python': python_peak,\n"
        "                  'arrow': arrow, 'max': float(np.abs(both).max())}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.splitlines()[-1])
    assert got["sequences"] == n // 50
    peak = got["python"] + got["arrow"]
    assert peak < 5 * size, f"peak {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB file"
    assert math.isclose(got["max"], float(np.abs(np.round(x, 6)).max()), rel_tol=1e-6)
