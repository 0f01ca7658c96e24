"""CUDA benchmark: rnndrop's Triton path against cuDNN (torch.nn) and a Python cell loop with masks.

One command on a machine with an NVIDIA GPU (exits with a message and status 1 without one)::

    python benchmarks/bench_cuda.py                 # all configs, LSTM and GRU, float32
    python benchmarks/bench_cuda.py --quick         # small config, LSTM, few rounds
    python benchmarks/bench_cuda.py --amp bf16      # everything under torch.autocast(bfloat16)

For each config ``(B, T, in, hidden)`` and cell (LSTM, GRU) it measures:

* ``torch.nn``             torch.nn.LSTM / GRU (cuDNN) without dropout — the bar every ratio is taken to;
* ``auto``                 rnndrop with input_dropout = recurrent_dropout = 0.25 and ``backend="auto"``:
                           training on the Triton path (default loop), inference in eval mode (cuDNN);
* ``<loop>+drop``          rnndrop on its Triton kernels with that dropout (shared masks, per sample), one
                           row per time loop of the CUDA path (``steps``, ``fused_steps``, ``persistent``,
                           ``graph``: rnndrop/_kernels/triton_autograd.py), inference as Monte-Carlo dropout;
* ``persistent+drop/gate`` the persistent loop with one mask per gate (Keras's layout);
* ``cell loop+drop``       a Python loop over torch.nn.LSTMCell / GRUCell with time-locked masks on x
                           and h (what PyTorch users write today).

Times: one *training step* (forward, ``sum`` loss, backward; gradients reset to None) and one
*inference* call (forward under ``torch.no_grad``; torch.nn and ``auto`` in eval mode, dropout
variants in training mode, i.e. Monte-Carlo dropout). Each call is timed with CUDA events around
it (so the CPU's launch work counts when the GPU waits for it) and synchronised; every variant
is warmed up (which also compiles the Triton kernels), then the variants run interleaved round
after round and each reports the median of its rounds. Peak memory of a training step: the
growth of ``torch.cuda.max_memory_allocated`` during one step.

Float32 precision: both sides run at the same one, recorded in the results (``--precision``: "ieee",
the default, sets cuDNN's RNN and cuBLAS's matmuls to IEEE float32 — torch 2.13's cuDNN RNN defaults
to TF32 while its matmuls do not; "tf32" sets both to TF32). rnndrop's ``tl.dot`` follows the matmul
flag.

Results: a table on stdout and a JSON file (``--json``) with the device, driver, torch, triton,
CUDA and cuDNN versions and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import rnndrop

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper module
from bench_common import CellLoop, P, write_results

CONFIGS: dict[str, tuple[int, int, int, int]] = {
    "small": (32, 50, 32, 128),
    "main": (64, 100, 64, 256),
    "large": (16, 200, 128, 512),
    "large-batch": (256, 100, 256, 1024),
    "tiny": (4, 6, 3, 8),  # for the smoke test only
}
AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


LOOPS = ("steps", "fused_steps", "persistent", "graph")  # triton_autograd.LOOPS (checked in main)
PRECISIONS = ("ieee", "tf32")


class Variant:
    """One timed row: a module, the rnndrop backend each kind of call must take, the CUDA loop it runs."""

    def __init__(self, module: nn.Module, train: str | None = None, infer: str | None = None,
                 loop: str | None = None, eval_infer: bool = False) -> None:
        self.module, self.loop, self.eval_infer = module, loop, eval_infer
        self.expected = {"train": train, "infer": infer}

    def context(self) -> contextlib.AbstractContextManager:
        if self.loop is None:
            return contextlib.nullcontext()
        from rnndrop._kernels import triton_autograd

        return triton_autograd.use_loop(self.loop)


def variants(mode: str, input_size: int, hidden: int, device: str) -> dict[str, Variant]:
    """name -> the variant, its module on ``device``."""
    torch_cls = nn.LSTM if mode == "LSTM" else nn.GRU
    ours = rnndrop.LSTM if mode == "LSTM" else rnndrop.GRU
    drop = {"input_dropout": P, "recurrent_dropout": P}
    mods = {
        "torch.nn": Variant(torch_cls(input_size, hidden), eval_infer=True),
        # auto's eval calls go to cuDNN (the smoke run on CPU tensors keeps only the Triton entry).
        "auto": Variant(ours(input_size, hidden, **drop), "triton", "torch" if device == "cuda" else None,
                        eval_infer=True),
    }
    for loop in LOOPS:
        mods[f"{loop}+drop"] = Variant(ours(input_size, hidden, backend="fused", **drop), "triton", "triton", loop)
    mods["persistent+drop/gate"] = Variant(ours(input_size, hidden, backend="fused", gate_masks="per_gate", **drop),
                                           "triton", "triton", "persistent")
    mods["cell loop+drop"] = Variant(CellLoop(mode, input_size, hidden))
    for v in mods.values():
        v.module.to(device)
    return mods


def set_precision(precision: str) -> dict[str, str]:
    """cuDNN's RNN and cuBLAS's float32 matmuls at one precision ("ieee" or "tf32"); returns what is set."""
    torch.backends.cuda.matmul.fp32_precision = precision
    torch.backends.cudnn.rnn.fp32_precision = precision
    return {"cuda.matmul": torch.backends.cuda.matmul.fp32_precision,
            "cudnn.rnn": torch.backends.cudnn.rnn.fp32_precision}


def _first(out: object) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value,index]


def train_step(v: Variant, x: torch.Tensor, amp: torch.dtype | None) -> None:
    v.module.train()
    for p in v.module.parameters():
        p.grad = None
    with v.context(), torch.autocast(x.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
        loss = _first(v.module(x)).float().sum()
        loss.backward()


def infer_step(v: Variant, x: torch.Tensor, amp: torch.dtype | None) -> None:
    v.module.train(not v.eval_infer)  # dropout variants: Monte-Carlo dropout; torch.nn and auto: eval
    with v.context(), torch.no_grad(), torch.autocast(x.device.type, dtype=amp or torch.bfloat16,
                                                      enabled=amp is not None):
        v.module(x)


def timer(device: str) -> Callable[[Callable[[], None]], float]:
    """``time_ms(fn)``: one synchronised call's duration in ms (CUDA events; wall clock off CUDA)."""
    if device == "cuda":
        def time_ms(fn: Callable[[], None]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:  # the smoke test runs the same code on CPU tensors (Triton's interpreter)
        def time_ms(fn: Callable[[], None]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return time_ms


def peak_mib(fn: Callable[[], None], device: str) -> float | None:
    """Growth of the CUDA allocator's peak during ``fn``, MiB (None off CUDA)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def bench_config(cfg_name: str, mode: str, device: str, repeats: int, warmup: int,
                 amp: torch.dtype | None = None) -> dict[str, dict]:
    """Median train/infer times (ms) and peak memory of every variant for one config and cell."""
    batch, steps, input_size, hidden = CONFIGS[cfg_name]
    torch.manual_seed(0)
    mods = variants(mode, input_size, hidden, device)
    x = torch.randn(steps, batch, input_size, device=device)
    runs: dict[str, dict[str, Callable[[], None]]] = {}
    for name, v in mods.items():
        runs[name] = {
            "train": (lambda v=v: train_step(v, x, amp)),
            "infer": (lambda v=v: infer_step(v, x, amp)),
        }
    # Check the backend really used before timing anything (a silent fallback would fake the figures).
    for name, v in mods.items():
        for kind in ("train", "infer"):
            runs[name][kind]()
            want = v.expected[kind]
            if want is not None:
                got = v.module.last_backend
                assert got == want, f"{name} {kind} ran {got}: {v.module.last_backend_reason}"
    time_ms = timer(device)
    times: dict[str, dict[str, list[float]]] = {n: {"train": [], "infer": []} for n in mods}
    for kind in ("train", "infer"):
        for _ in range(warmup):
            for name in mods:
                runs[name][kind]()
        for _ in range(repeats):
            for name in mods:
                times[name][kind].append(time_ms(runs[name][kind]))
    result: dict[str, dict] = {}
    for name in mods:
        entry: dict = {k: statistics.median(v) for k, v in times[name].items()}
        entry["train_runs_ms"] = times[name]["train"]
        entry["infer_runs_ms"] = times[name]["infer"]
        entry["peak_mib"] = peak_mib(runs[name]["train"], device)
        result[name] = entry
    return result


def machine(device: str) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    driver=_driver())
    else:
        info["device"] = "cpu (Triton interpreter; smoke run, not a measurement)"
    return info


def _driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def profile(cfg_name: str, mode: str, amp: torch.dtype | None, path: Path) -> None:
    """torch.profiler tables of one training step of each dropout loop (where a step's time goes)."""
    batch, steps, input_size, hidden = CONFIGS[cfg_name]
    mods = variants(mode, input_size, hidden, "cuda")
    x = torch.randn(steps, batch, input_size, device="cuda")
    parts = []
    for loop in LOOPS:
        v = mods[f"{loop}+drop"]
        for _ in range(3):
            train_step(v, x, amp)
        torch.cuda.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            train_step(v, x, amp)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        parts.append(f"{cfg_name} {mode} {loop}+drop, one training step, amp={amp}\n{table}\n")
    path.write_text("\n".join(parts))
    print(f"wrote {path}")


def print_table(results: dict[str, dict[str, dict[str, dict]]]) -> None:
    header = (f"{'config':<11} {'cell':<5} {'variant':<20} {'train ms':>9} {'ratio':>6} {'loop/x':>7} "
              f"{'infer ms':>9} {'ratio':>6} {'peak MiB':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for cfg_name, by_mode in results.items():
        for mode, by_variant in by_mode.items():
            if "error" in by_variant:
                print(f"{cfg_name:<11} {mode:<5} FAILED: {by_variant['error']}")
                continue
            bar, loop = by_variant["torch.nn"], by_variant["cell loop+drop"]
            for name, e in by_variant.items():
                mem, bar_mem = e.get("peak_mib"), bar.get("peak_mib")
                mem_s = f"{mem:9.1f}" if mem is not None else f"{'-':>9}"
                mem_r = f"{mem / bar_mem:6.2f}" if mem is not None and bar_mem else f"{'-':>6}"
                print(
                    f"{cfg_name:<11} {mode:<5} {name:<20} {e['train']:9.3f} {e['train'] / bar['train']:6.2f} "
                    f"{loop['train'] / e['train']:7.1f} {e['infer']:9.3f} {e['infer'] / bar['infer']:6.2f} "
                    f"{mem_s} {mem_r}"
                )
        print()
    print("ratio: time / torch.nn's (cuDNN, no dropout); loop/x: the cell loop's training time / this one's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small config, LSTM, 5 rounds (a smoke run)")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="configs to run (repeatable)")
    parser.add_argument("--cell", action="append", choices=["LSTM", "GRU"], help="cells to run (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default 20, quick 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds per variant first")
    parser.add_argument("--amp", choices=sorted(AMP), default="none", help="run under torch.autocast (default none)")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default benchmarks/results/bench_cuda[_quick].json)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write torch.profiler tables of one LSTM training step per loop (main config) here")
    parser.add_argument("--also-gru", action="append", choices=sorted(CONFIGS), default=[],
                        help="(repeatable) also run the GRU on this config, whatever --cell says")
    parser.add_argument("--precision", choices=PRECISIONS, default="ieee",
                        help="float32 precision of cuDNN's RNN and of cuBLAS / tl.dot (the same on both sides)")
    args = parser.parse_args(argv)
    from rnndrop._kernels import triton_autograd

    assert tuple(triton_autograd.LOOPS) == LOOPS, "bench_cuda.LOOPS is out of date"
    if not torch.cuda.is_available():
        print("bench_cuda: no CUDA device (torch.cuda.is_available() is False); this benchmark needs an NVIDIA "
              "GPU. The CPU benchmark is benchmarks/bench_cpu.py.", file=sys.stderr)
        return 1
    configs = args.config or (["small"] if args.quick else ["small", "main", "large", "large-batch"])
    cells = args.cell or (["LSTM"] if args.quick else ["LSTM", "GRU"])
    repeats = args.repeats or (5 if args.quick else 20)
    amp = AMP[args.amp]
    suffix = ("_quick" if args.quick else "") + ("" if amp is None else f"_{args.amp}")
    out_path = args.json or Path(__file__).parent / "results" / f"bench_cuda{suffix}.json"

    info = machine("cuda")
    info["fp32_precision"] = set_precision(args.precision)
    print(f"rnndrop CUDA benchmark, {dt.datetime.now().isoformat(timespec='seconds')}, amp={args.amp}; {info}")
    results: dict[str, dict[str, dict[str, dict]]] = {}
    failed = False
    for cfg_name in configs:
        for mode in cells + [m for m in ("GRU",) if cfg_name in args.also_gru and m not in cells]:
            start = time.perf_counter()
            try:
                entry = bench_config(cfg_name, mode, "cuda", repeats, args.warmup, amp)
            except Exception as exc:  # keep the other configs' figures (one GPU session, one run)
                failed = True
                entry = {"error": f"{type(exc).__name__}: {exc}"}
            results.setdefault(cfg_name, {})[mode] = entry
            print(f"  {cfg_name} {mode}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    print_table(results)
    write_results(
        out_path, machine=info, amp=args.amp,
        configs={k: dict(zip(("batch", "time", "input", "hidden"), CONFIGS[k])) for k in configs},
        repeats=repeats, warmup=args.warmup, results=results,
    )
    if args.profile is not None:
        profile("main", "LSTM", amp, args.profile)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
