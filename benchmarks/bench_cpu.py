"""CPU benchmark: rnndrop's fused path against torch.nn and the usual ways of doing recurrent dropout.

One command, everything side by side in one process::

    .venv/bin/python benchmarks/bench_cpu.py            # full run (small, main, large configs)
    .venv/bin/python benchmarks/bench_cpu.py --quick    # small config, fewer repeats

For each config ``(B, T, in, hidden)`` and cell (LSTM, GRU) it measures:

* ``torch.nn``            torch.nn.LSTM / GRU without dropout, float32 — the bar every ratio is taken to;
* ``torch.nn bf16``       the same under ``torch.autocast("cpu", dtype=torch.bfloat16)`` — the bar of the
                          bf16 rows (the table shows both ratios);
* ``torch eval``          rnndrop with dropout 0.25/0.25 in eval mode (every dropout off), ``backend="torch"``:
                          torch's own kernel through rnndrop's registry entry;
* ``torch batch-scope``   rnndrop, input+recurrent dropout 0.25 per gate with ``mask_scope="batch"``, training
                          mode, ``backend="torch"``: torch's kernel with the masks folded into the weights;
* ``auto eval``           ``torch eval`` with ``backend="auto"``: what a user gets (the faster of torch's and the
                          fused kernel, measured on the first call of each kind; the JSON's ``backend`` says which);
* ``fused``               rnndrop, compiled kernel, no dropout;
* ``fused+drop``          rnndrop, compiled kernel, input_dropout = recurrent_dropout = 0.25, shared masks,
                          one mask per sequence (the default scope);
* ``fused+drop/gate``     the same with one mask per gate (Keras's layout);
* ``fused+drop bf16``     ``fused+drop`` under bf16 autocast;
* ``fused+drop+zoneout``  ``fused+drop`` plus zoneout 0.1 on h (and on c for the LSTM);
* ``fused+drop+cand``     ``fused+drop`` plus candidate (Semeniuta) dropout 0.25;
* ``reference+drop``      rnndrop's pure-torch reference loop with the same dropout;
* ``cell loop+drop``      a plain Python loop over torch.nn.LSTMCell / GRUCell with time-locked masks
                          on x and h (what PyTorch users write today).

Times: one *training step* (forward, ``sum`` loss, backward; gradients reset to None) and one
*inference* call (forward under ``torch.no_grad``; torch.nn, ``fused`` and ``auto eval`` in eval
mode, dropout variants in training mode, i.e. Monte-Carlo dropout). Every variant is warmed up,
then the variants run interleaved round after round and each reports the median of its rounds.
Before timing, every rnndrop variant is checked to run the backend its name says.

Peak memory of a training step, per variant: the growth of the process's resident set during
one step, read from Linux's ``VmHWM`` after resetting it (``/proc/self/clear_refs`` = 5) and
returning free heap pages first (``malloc_trim``). This counts every allocation, torch's and
MKL's/oneDNN's alike; ``tracemalloc`` would see none of them. It is a per-process figure, so it
includes the step's transient buffers, and pages glibc keeps cached from earlier variants can
hide some growth: each variant is measured twice and the larger figure kept.

Results: a table on stdout and a JSON file (``--json``), with the machine, thread count, torch
version, date and whether ``GLIBC_TUNABLES`` was set (glibc's default malloc returns large
blocks to the OS on free, so every step page-faults them back in; see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import rnndrop
import rnndrop._kernels.ops

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper module
from bench_common import CellLoop, P, write_results

CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "small": (32, 50, 32, 128),
    "main": (64, 100, 64, 256),
    "large": (16, 200, 128, 512),
    "tiny": (4, 6, 3, 8),  # for the smoke test only
}


@dataclass
class Variant:
    """One row of the table: a module, how it runs, and the rnndrop backend it must take (checked)."""

    module: nn.Module
    backend: str | tuple[str, ...] | None = None  # expected ``last_backend`` (or any of these); None: not rnndrop
    infer_backend: str | None = None  # expected ``last_backend`` of the inference call, if not ``backend``
    train_mode: bool = True  # module.train() for the training step (False: eval, e.g. ``auto eval``)
    mc_inference: bool = False  # inference in training mode (Monte-Carlo dropout)
    bf16: bool = False  # under CPU autocast to bfloat16


def variants(mode: str, input_size: int, hidden: int) -> dict[str, Variant]:
    """name -> Variant, in table order."""
    torch_cls = nn.LSTM if mode == "LSTM" else nn.GRU
    ours = rnndrop.LSTM if mode == "LSTM" else rnndrop.GRU
    drop = {"input_dropout": P, "recurrent_dropout": P}
    zone = {"zoneout_hidden": 0.1, **({"zoneout_cell": 0.1} if mode == "LSTM" else {})}
    return {
        "torch.nn": Variant(torch_cls(input_size, hidden)),
        "torch.nn bf16": Variant(torch_cls(input_size, hidden), bf16=True),
        "torch eval": Variant(ours(input_size, hidden, backend="torch", **drop), "torch", train_mode=False),
        "torch batch-scope": Variant(ours(input_size, hidden, backend="torch", gate_masks="per_gate",
                                          mask_scope="batch", **drop), "torch", mc_inference=True),
        # auto measures torch's and the fused kernel on its first call of each kind and keeps the faster
        # (RNNDROP_AUTOTUNE=0: the static rule of docs/benchmarks.md); either compiled kernel, never the reference.
        "auto eval": Variant(ours(input_size, hidden, **drop), ("fused", "torch"), train_mode=False),
        "fused": Variant(ours(input_size, hidden, backend="fused"), "fused"),
        "fused+drop": Variant(ours(input_size, hidden, backend="fused", **drop), "fused", mc_inference=True),
        "fused+drop/gate": Variant(ours(input_size, hidden, backend="fused", gate_masks="per_gate", **drop),
                                   "fused", mc_inference=True),
        "fused+drop bf16": Variant(ours(input_size, hidden, backend="fused", **drop), "fused", mc_inference=True,
                                   bf16=True),
        "fused+drop+zoneout": Variant(ours(input_size, hidden, backend="fused", **drop, **zone), "fused",
                                      mc_inference=True),
        "fused+drop+cand": Variant(ours(input_size, hidden, backend="fused", candidate_dropout=P, **drop), "fused",
                                   mc_inference=True),
        "reference+drop": Variant(ours(input_size, hidden, backend="reference", **drop), "reference",
                                  mc_inference=True),
        "cell loop+drop": Variant(CellLoop(mode, input_size, hidden), mc_inference=True),
    }


def unavailable(name: str, mode: str) -> str | None:
    """Why this CPU cannot run a variant (the bf16 ones need bf16 kernels), else None."""
    if "bf16" not in name:
        return None
    if name == "torch.nn bf16" and mode == "LSTM" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "oneDNN has no bf16 LSTM on this CPU (torch.nn.LSTM under bf16 autocast raises here)"
    if name.startswith("fused") and not rnndrop._kernels.ops.cpu_has_bf16():
        return "the fused kernel's bf16 micro-kernel needs AVX512_BF16 (this CPU runs such calls on the reference)"
    return None


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value,index]


def _autocast(v: Variant):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.bf16)


def train_step(v: Variant, x: torch.Tensor) -> None:
    v.module.train(v.train_mode)
    for p in v.module.parameters():
        p.grad = None
    with _autocast(v):
        loss = _first(v.module(x)).float().sum()
    loss.backward()


def infer_step(v: Variant, x: torch.Tensor) -> None:
    v.module.train(v.mc_inference)
    with torch.no_grad(), _autocast(v):
        v.module(x)


_libc = ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_growth_mib(fn: Callable[[], None]) -> float | None:
    """RSS high-water growth during ``fn`` in MiB (method: module docstring); None off Linux."""
    if _libc is None or not Path("/proc/self/clear_refs").exists():
        return None
    gc.collect()
    _libc.malloc_trim(0)
    base = _status_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    fn()
    return (_status_kib("VmHWM") - base) / 1024.0


def bench_config(cfg_name: str, mode: str, repeats: int, warmup: int, with_memory: bool) -> dict[str, dict]:
    batch, steps, input_size, hidden = CONFIGS[cfg_name]
    torch.manual_seed(0)
    mods = variants(mode, input_size, hidden)
    skipped = {name: why for name in mods if (why := unavailable(name, mode)) is not None}
    mods = {name: v for name, v in mods.items() if name not in skipped}
    x = torch.randn(steps, batch, input_size)
    runs: dict[str, dict[str, Callable[[], None]]] = {}
    for name, v in mods.items():
        runs[name] = {
            "train": (lambda v=v: train_step(v, x)),
            "infer": (lambda v=v: infer_step(v, x)),
        }
    # Check the backend really used before timing anything (a silent fallback would fake the figures).
    ran: dict[str, dict[str, str | None]] = {name: {} for name in mods}
    for name, v in mods.items():
        for kind in ("train", "infer"):
            runs[name][kind]()
            ran[name][kind] = getattr(v.module, "last_backend", None)
            want = v.infer_backend if kind == "infer" and v.infer_backend is not None else v.backend
            if want is not None:
                got = v.module.last_backend
                ok = got in want if isinstance(want, tuple) else got == want
                assert ok, f"{name} ({kind}) ran {got}, not {want}: {v.module.last_backend_reason}"
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in mods}
    for kind in ("train", "infer"):
        for _ in range(warmup):
            for name in mods:
                runs[name][kind]()
        for _ in range(repeats):
            for name in mods:
                start = time.perf_counter()
                runs[name][kind]()
                times[name][kind].append(time.perf_counter() - start)
    result: dict[str, dict] = {}
    for name in mods:
        entry = {k: statistics.median(v) * 1e3 for k, v in times[name].items()}
        entry["train_runs_ms"] = [t * 1e3 for t in times[name]["train"]]
        entry["infer_runs_ms"] = [t * 1e3 for t in times[name]["infer"]]
        if ran[name]["train"] is not None:
            entry["backend"] = ran[name]
        if with_memory:
            figures = [peak_rss_growth_mib(runs[name]["train"]) for _ in range(2)]
            entry["peak_mib"] = None if None in figures else max(figures)  # type: ignore[type-var]
        result[name] = entry
    for name, why in skipped.items():
        result[name] = {"unavailable": why}
    return result


def machine() -> dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES"),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def print_table(results: dict[str, dict[str, dict[str, dict]]]) -> None:
    """Ratios to torch.nn float32; bf16 rows also to torch.nn under the same autocast ("bf16 bar")."""
    header = (f"{'config':<7} {'cell':<5} {'variant':<19} {'train ms':>9} {'ratio':>6} {'/bf16':>6} "
              f"{'infer ms':>9} {'ratio':>6} {'/bf16':>6} {'peak MiB':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for cfg_name, by_mode in results.items():
        for mode, by_variant in by_mode.items():
            bar = by_variant["torch.nn"]
            bar16 = by_variant.get("torch.nn bf16")
            bar16 = None if bar16 is None or "unavailable" in bar16 else bar16
            for name, e in by_variant.items():
                if "unavailable" in e:
                    print(f"{cfg_name:<7} {mode:<5} {name:<19} not run: {e['unavailable']}")
                    continue
                mem = e.get("peak_mib")
                bar_mem = bar.get("peak_mib")
                mem_s = f"{mem:9.1f}" if mem is not None else f"{'-':>9}"
                mem_r = f"{mem / bar_mem:6.2f}" if mem is not None and bar_mem else f"{'-':>6}"
                low = "bf16" in name and bar16 is not None
                t16 = f"{e['train'] / bar16['train']:6.2f}" if low else f"{'':>6}"
                i16 = f"{e['infer'] / bar16['infer']:6.2f}" if low else f"{'':>6}"
                print(
                    f"{cfg_name:<7} {mode:<5} {name:<19} {e['train']:9.2f} {e['train'] / bar['train']:6.2f} {t16} "
                    f"{e['infer']:9.2f} {e['infer'] / bar['infer']:6.2f} {i16} {mem_s} {mem_r}"
                )
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small config only, 3 rounds (a smoke run)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="configs to run (repeatable)")
    parser.add_argument("--cell", action="append", choices=["LSTM", "GRU"], help="cells to run (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 15, quick 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds per variant first")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default benchmarks/results/bench_cpu[_quick].json)")
    args = parser.parse_args(argv)
    configs = args.config or (["small"] if args.quick else ["small", "main", "large"])
    cells = args.cell or ["LSTM", "GRU"]
    repeats = args.repeats or (3 if args.quick else 15)
    default_name = "bench_cpu_quick.json" if args.quick else "bench_cpu.json"
    out_path = args.json or Path(__file__).parent / "results" / default_name

    info = machine()
    print(f"rnndrop CPU benchmark, {dt.datetime.now().isoformat(timespec='seconds')}; {info}")
    results: dict[str, dict[str, dict[str, dict]]] = {}
    for cfg_name in configs:
        for mode in cells:
            start = time.perf_counter()
            results.setdefault(cfg_name, {})[mode] = bench_config(
                cfg_name, mode, repeats, args.warmup, not args.no_memory
            )
            print(f"  {cfg_name} {mode}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    print_table(results)
    write_results(
        out_path, machine=info,
        configs={k: dict(zip(("batch", "time", "input", "hidden"), CONFIGS[k])) for k in configs},
        repeats=repeats, warmup=args.warmup, results=results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
