"""What drawing one forward call's dropout masks costs on the CPU (``layer.sample_masks``).

The masks of one call are drawn before the time loop (rnndrop.masks); at small shapes this fixed cost
is a visible part of a training step (issue 20: about 100 µs of ``bernoulli_`` per small call). ::

    .venv/bin/python benchmarks/bench_masks.py            # the configs below, median of 2000 draws each
    .venv/bin/python benchmarks/bench_masks.py --repeats 200 --threads 1

Configs: ``small`` is the issue's (LSTM, batch 32, input 64, hidden 64, 15 steps, input + recurrent
dropout with one mask per gate); ``small+zoneout`` adds zoneout of h and c (fresh per step);
``main`` is the benchmark's main config (batch 64, 100 steps, input 64, hidden 256), same masks.
Prints the median and the 10th-90th percentiles in microseconds per call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import rnndrop

CONFIGS: dict[str, tuple[int, int, int, int, dict[str, float]]] = {
    # name: (batch, steps, input, hidden, extra rates)
    "small": (32, 15, 64, 64, {}),
    "small+zoneout": (32, 15, 64, 64, {"zoneout_hidden": 0.1, "zoneout_cell": 0.1}),
    "main": (64, 100, 64, 256, {}),
}


def time_config(name: str, repeats: int) -> dict[str, float]:
    batch, steps, features, hidden, extra = CONFIGS[name]
    layer = rnndrop.LSTM(features, hidden, input_dropout=0.25, recurrent_dropout=0.25, gate_masks="per_gate",
                         **extra)
    layer.generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        layer.sample_masks(batch, steps)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        layer.sample_masks(batch, steps)
        runs.append((time.perf_counter_ns() - start) / 1000)
    runs.sort()
    return {"median_us": statistics.median(runs), "p10_us": runs[len(runs) // 10], "p90_us": runs[9 * len(runs) // 10]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="(repeatable) default: all")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from rnndrop._kernels import loader

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU extension "
          f"{'loaded' if loader.load() is not None else 'missing: ' + str(loader.unavailable_reason())}")
    for name in args.config or list(CONFIGS):
        r = time_config(name, args.repeats)
        print(f"{name:>14}: median {r['median_us']:8.1f} us  (p10 {r['p10_us']:.1f}, p90 {r['p90_us']:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
