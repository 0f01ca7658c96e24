"""Which kernel should ``backend="auto"`` take on the CPU? torch's own against rnndrop's fused kernel.

The measurement behind the registry's speed rule (``torch_yields`` in src/rnndrop/_kernels/registry.py):
for calls both kernels compute exactly (no dropout), the same layer with ``backend="torch"`` and
``backend="fused"``, for every cell (LSTM, GRU, RNN tanh), float32 and float64, and float32 with
right-padded sequences (``lengths=``: torch's packed path; lengths drawn between a quarter of the
steps and all of them, one sequence full), a training step (forward, ``sum`` loss, backward) and an
inference call (``torch.no_grad``), interleaved round after round, medians. ::

    .venv/bin/python benchmarks/bench_choice.py                 # small, main and large configs (about 3 min)
    .venv/bin/python benchmarks/bench_choice.py --config small  # one config
    .venv/bin/python benchmarks/bench_choice.py --threads 1     # single-threaded (the rule differs)

Prints fused ÷ torch per row (below 1: the fused kernel is faster) and what ``auto`` takes there,
and writes a JSON beside the other results (``--json``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import rnndrop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper modules
from bench_common import write_results
from bench_cpu import CONFIGS, machine

CELLS = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _step(layer: torch.nn.Module, x: torch.Tensor, train: bool, lengths: torch.Tensor | None) -> None:
    kwargs = {} if lengths is None else {"lengths": lengths}
    if train:
        for p in layer.parameters():
            p.grad = None
        layer(x, **kwargs)[0].sum().backward()
    else:
        with torch.no_grad():
            layer(x, **kwargs)


def bench_row(cell: str, dtype: torch.dtype, cfg: str, repeats: int, warmup: int,
              padded: bool = False) -> dict[str, object]:
    batch, steps, input_size, hidden = CONFIGS[cfg]
    torch.manual_seed(0)
    lengths = None
    if padded:
        lengths = torch.randint(max(1, steps // 4), steps + 1, (batch,))
        lengths[0] = steps
    layers = {b: CELLS[cell](input_size, hidden, backend=b).to(dtype) for b in ("torch", "fused")}
    layers["fused"].load_state_dict(layers["torch"].state_dict())
    auto = CELLS[cell](input_size, hidden).to(dtype)
    x = torch.randn(steps, batch, input_size, dtype=dtype)
    row: dict[str, object] = {}
    for kind, train in (("train", True), ("infer", False)):
        _step(auto, x, train, lengths)
        row[f"auto_{kind}"] = auto.last_backend
        times: dict[str, list[float]] = {b: [] for b in layers}
        for r in range(warmup + repeats):
            for b, layer in layers.items():
                start = time.perf_counter()
                _step(layer, x, train, lengths)
                if r >= warmup:
                    times[b].append(time.perf_counter() - start)
        for b in layers:
            row[f"{b}_{kind}_ms"] = statistics.median(times[b]) * 1e3
        row[f"ratio_{kind}"] = row[f"fused_{kind}_ms"] / row[f"torch_{kind}_ms"]  # type: ignore[operator]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="configs (repeatable)")
    parser.add_argument("--repeats", type=int, default=11, help="timed rounds per row (default 11)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench_choice.json",
                        help="where to write the results")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    configs = args.config or ["small", "main", "large"]
    results: dict[str, dict[str, dict[str, object]]] = {}
    print(f"threads {torch.get_num_threads()}")
    print(f"{'config':<7} {'cell':<5} {'dtype':<15} {'train fused/torch':>11} {'infer fused/torch':>18}  auto takes")
    for cfg in configs:
        for cell in CELLS:
            for dname, dtype, padded in [*((d, t, False) for d, t in DTYPES.items()), ("float32", torch.float32, True)]:
                row = bench_row(cell, dtype, cfg, args.repeats, args.warmup, padded)
                name = f"{dname} padded" if padded else dname
                results.setdefault(cfg, {})[f"{cell} {name}"] = row
                print(f"{cfg:<7} {cell:<5} {name:<15} {row['ratio_train']:11.2f} {row['ratio_infer']:18.2f}  "
                      f"train {row['auto_train']}, infer {row['auto_infer']}", flush=True)
    write_results(args.json, machine=machine(), configs={k: dict(zip(("batch", "time", "input", "hidden"),
                                                                     CONFIGS[k])) for k in configs},
                  repeats=args.repeats, warmup=args.warmup, results=results, dropout=0.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
