"""CSV loading benchmark: ``rnndrop compare --data file.csv`` on a 500k-row long-format file.

Writes a generated file (sequence, time, 8 features with 6 decimals, label; 50 steps per sequence,
the shape of ``tests/cli/test_csv_reader.py``'s miniature) into a temporary folder, then loads it
with ``rnndrop.cli.data.load_csv`` (pyarrow's CSV reader) ``--repeats`` times and reports wall and CPU
seconds (median) and the peak memory of one load as a multiple of the file's size: what Python
allocated (``tracemalloc``: numpy's buffers included) plus the peak of pyarrow's memory pool (its
buffers, which tracemalloc does not see). ::

    .venv/bin/python benchmarks/bench_csv.py              # 500k rows, 5 loads
    .venv/bin/python benchmarks/bench_csv.py --rows 50000 --repeats 3

Prints one line per load and a summary; writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from rnndrop.cli import data

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper modules
from bench_cpu import machine


def write_file(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8))
    seq, step = np.arange(rows) // 50, np.arange(rows) % 50
    labels = np.array(list("abc"))[seq % 3]
    with path.open("w") as f:
        f.write("sequence,time,f0,f1,f2,f3,f4,f5,f6,f7,label\n")
        for start in range(0, rows, 50_000):
            stop = min(rows, start + 50_000)
            f.writelines(f"s{seq[i]},{step[i]}," + ",".join(f"{v:.6f}" for v in x[i]) + f",{labels[i]}\n"
                         for i in range(start, stop))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the generated file (default 500000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loads (default 5)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.csv"
        write_file(path, args.rows)
        size = path.stat().st_size
        walls, cpus = [], []
        for k in range(args.repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            task = data.load_csv(path)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            print(f"load {k + 1}/{args.repeats}: {walls[-1]:.2f} s wall, {cpus[-1]:.2f} s CPU", flush=True)
        assert len(task.train) + len(task.test) == (args.rows + 49) // 50
        tracemalloc.start()
        try:
            data.load_csv(path)
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        import pyarrow as pa

        arrow_peak = pa.default_memory_pool().max_memory()  # the same load each time: the peak of one
        peak = python_peak + arrow_peak
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(),
              "rows": args.rows, "file_mib": size / 2**20, "wall_s_median": statistics.median(walls),
              "cpu_s_median": statistics.median(cpus), "wall_s": walls, "cpu_s": cpus,
              "peak_mib": peak / 2**20, "peak_over_file": peak / size, "python_peak_mib": python_peak / 2**20,
              "arrow_peak_mib": arrow_peak / 2**20, "reader": "pyarrow.csv"}
    print(f"{args.rows} rows, {size / 2**20:.1f} MiB: median {result['wall_s_median']:.2f} s wall, "
          f"{result['cpu_s_median']:.2f} s CPU; peak {peak / 2**20:.0f} MiB = {peak / size:.2f}x the file "
          f"(Python {python_peak / 2**20:.0f} MiB + pyarrow {arrow_peak / 2**20:.0f} MiB)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
