"""What the drop-in fixes cost or buy (issue 18): packing W_hh every call, low-precision parameters, hard_sigmoid.

Three measurements, each side by side in one process, interleaved round after round, medians::

    .venv/bin/python benchmarks/bench_dropin.py            # all three (about two minutes on 2 cores)
    .venv/bin/python benchmarks/bench_dropin.py --quick    # fewer rounds

1. **Packing** (the fused kernel packs ``W_hh`` afresh in every call instead of keeping it between
   calls, which served stale weights): the time of packing the forward's ``W_hh^T`` and the
   backward's ``W_hh`` (``pack_weight``, what one call does) against one inference call and one
   training step of the same LSTM, at the bench configs and at small MC-dropout shapes (batch 1).
   The share is what a cache valid across calls could at most have saved.
2. **bf16 / fp16 parameters** (``model.to(torch.bfloat16)``): rnndrop's fused kernel (computing in
   float32), its reference loop (what ran before) and ``torch.nn`` with the same parameters, inference
   and training, LSTM and GRU, main config.
3. **Keras's hard_sigmoid** recurrent activation (``from_keras`` of older models): the fused kernel
   against the reference loop, and ``torch.nn`` (sigmoid: the nearest it has) for scale.

Prints tables and writes ``benchmarks/results/bench_dropin.json`` (``--json``), with the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import rnndrop
from rnndrop._kernels import loader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper modules
from bench_common import write_results
from bench_cpu import CONFIGS, machine

# (batch, time, input, hidden): the bench configs and the small calls of MC-dropout serving.
PACK_CONFIGS = {**CONFIGS,
                "mc_b1_t15_h64": (1, 15, 16, 64), "mc_b1_t50_h256": (1, 50, 64, 256), "b8_t15_h128": (8, 15, 32, 128)}


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _train(m: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    for p in m.parameters():
        p.grad = None
    out = m(x)[0]
    out.float().sum().backward()


def _infer(m: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        m(x)


def packing(repeats: int, warmup: int, configs: list[str]) -> dict[str, dict[str, float]]:
    ext = loader.load()
    if ext is None or not hasattr(ext, "pack_weight") or not ext.has_projection():
        print("packing: no float32 micro-kernel in this build (nothing is packed)")
        return {}
    results = {}
    for name in configs:
        b, t, i, h = PACK_CONFIGS[name]
        torch.manual_seed(0)
        layer = rnndrop.LSTM(i, h, input_dropout=0.25, recurrent_dropout=0.25, backend="fused")
        x = torch.randn(t, b, i)
        w = layer.weight_hh_l0.detach()
        r = _median_ms({
            "pack forward": lambda w=w: ext.pack_weight(w, True),
            "pack backward": lambda w=w: ext.pack_weight(w, False),
            "inference": lambda layer=layer, x=x: _infer(layer, x),
            "training": lambda layer=layer, x=x: _train(layer, x),
        }, repeats, warmup)
        r["share_inference"] = r["pack forward"] / r["inference"]
        r["share_training"] = (r["pack forward"] + r["pack backward"]) / r["training"]
        results[name] = r
    print(f"\n{'config':<16} {'pack fwd ms':>11} {'pack bwd ms':>11} {'infer ms':>9} {'share':>6} "
          f"{'train ms':>9} {'share':>6}")
    for name, r in results.items():
        print(f"{name:<16} {r['pack forward']:11.4f} {r['pack backward']:11.4f} {r['inference']:9.3f} "
              f"{r['share_inference']:6.1%} {r['training']:9.3f} {r['share_training']:6.1%}")
    return results


def low_precision(repeats: int, warmup: int, config: str) -> dict[str, dict[str, float]]:
    b, t, i, h = CONFIGS[config]
    results = {}
    for dtype in (torch.bfloat16, torch.float16):
        for mode in ("LSTM", "GRU"):
            torch.manual_seed(0)
            kw = {"input_dropout": 0.25, "recurrent_dropout": 0.25}
            ours = getattr(rnndrop, mode)(i, h, **kw).to(dtype)
            ref = getattr(rnndrop, mode)(i, h, backend="reference", **kw).to(dtype)
            theirs = getattr(nn, mode)(i, h).to(dtype)
            x = torch.randn(t, b, i).to(dtype)
            fns = {}
            for label, m in (("fused", ours), ("reference", ref), ("torch.nn", theirs)):
                fns[f"{label} train"] = lambda m=m, x=x: _train(m, x)
                fns[f"{label} infer"] = lambda m=m, x=x: _infer(m, x)
            r = _median_ms(fns, repeats, warmup)
            assert ours.last_backend == "fused", ours.last_backend_reason
            results[f"{mode} {str(dtype).replace('torch.', '')}"] = r
    _print_three(results, f"{config}: parameters in bf16 / fp16 (rnndrop with dropout 0.25/0.25, torch.nn without)")
    return results


def hard_sigmoid(repeats: int, warmup: int, config: str) -> dict[str, dict[str, float]]:
    b, t, i, h = CONFIGS[config]
    results = {}
    for mode in ("LSTM", "GRU"):
        torch.manual_seed(0)
        kw = {"recurrent_activation": "hard_sigmoid", "input_dropout": 0.25, "recurrent_dropout": 0.25}
        ours = getattr(rnndrop, mode)(i, h, **kw)
        ref = getattr(rnndrop, mode)(i, h, backend="reference", **kw)
        theirs = getattr(nn, mode)(i, h)
        x = torch.randn(t, b, i)
        fns = {}
        for label, m in (("fused", ours), ("reference", ref), ("torch.nn", theirs)):
            fns[f"{label} train"] = lambda m=m, x=x: _train(m, x)
            fns[f"{label} infer"] = lambda m=m, x=x: _infer(m, x)
        results[mode] = _median_ms(fns, repeats, warmup)
        assert ours.last_backend == "fused", ours.last_backend_reason
    _print_three(results, f"{config}: recurrent_activation='hard_sigmoid' (torch.nn: sigmoid, no dropout)")
    return results


def _print_three(results: dict[str, dict[str, float]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'':<14} {'fused ms':>9} {'reference ms':>13} {'torch.nn ms':>12} {'fused/ref':>10} {'fused/nn':>9}")
    for name, r in results.items():
        for kind in ("train", "infer"):
            f, ref, nn_ = r[f"fused {kind}"], r[f"reference {kind}"], r[f"torch.nn {kind}"]
            print(f"{name + ' ' + kind:<14} {f:9.2f} {ref:13.2f} {nn_:12.2f} {f / ref:10.2f} {f / nn_:9.2f}")


TABLES = ("packing", "low_precision_parameters", "hard_sigmoid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, small config for the dtype tables")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 11, quick 3)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--config", default=None, choices=sorted(CONFIGS),
                        help="config of the dtype and activation tables (default main, quick small)")
    parser.add_argument("--pack-config", action="append", choices=sorted(PACK_CONFIGS),
                        help="configs of the packing table (repeatable; default all but tiny)")
    parser.add_argument("--table", action="append", choices=TABLES,
                        help="tables to run (repeatable; default all)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench_dropin.json")
    args = parser.parse_args(argv)
    tables = args.table or list(TABLES)
    repeats = args.repeats or (3 if args.quick else 11)
    config = args.config or ("small" if args.quick else "main")
    info = machine()
    print(f"rnndrop drop-in costs; {info}")
    runs = {
        "packing": lambda: packing(repeats, args.warmup, args.pack_config or [k for k in PACK_CONFIGS if k != "tiny"]),
        "low_precision_parameters": lambda: low_precision(repeats, args.warmup, config),
        "hard_sigmoid": lambda: hard_sigmoid(repeats, args.warmup, config),
    }
    results = {name: runs[name]() for name in tables}
    write_results(args.json, machine=info, configs={"dtype_and_activation": config, "packing": PACK_CONFIGS},
                  repeats=repeats, warmup=args.warmup, results=results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
