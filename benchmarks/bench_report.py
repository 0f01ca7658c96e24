"""Markdown tables from a ``bench_cpu.py`` JSON: the figures, best rounds, and issue 10's targets checked.

    .venv/bin/python benchmarks/bench_report.py benchmarks/results/bench_cpu_2026-12-03_amd.json > table.md

Every figure comes from the JSON (medians of the interleaved rounds, and each variant's best round);
nothing is typed by hand. Ratios are to ``torch.nn`` float32 of the same config and cell; bf16 rows
also to ``torch.nn bf16`` (torch.nn under the same autocast). The targets are issue 10's, each checked
on the medians and, for a second reading, on the best rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Entry = dict[str, Any]


def _best(e: Entry, kind: str) -> float:
    return min(e[f"{kind}_runs_ms"])


def figures_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| config | cell | variant | train ms | × torch.nn | × bf16 bar | infer ms | × torch.nn | × bf16 bar "
        "| peak MiB | × torch.nn |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cfg, by_cell in results.items():
        for cell, variants in by_cell.items():
            bar, bar16 = variants["torch.nn"], variants.get("torch.nn bf16")
            if "unavailable" in (bar16 or {}):
                bar16 = None
            for name, e in variants.items():
                if "unavailable" in e:  # a variant this CPU cannot run (bench_cpu.unavailable says why)
                    lines.append(f"| {cfg} | {cell} | {name} | not run: {e['unavailable']} |" + " |" * 7)
                    continue
                low = "bf16" in name and bar16 is not None
                mem, bar_mem = e.get("peak_mib"), bar.get("peak_mib")
                cells = [
                    cfg, cell, name, f"{e['train']:.2f}", f"{e['train'] / bar['train']:.2f}",
                    f"{e['train'] / bar16['train']:.2f}" if low else "",
                    f"{e['infer']:.2f}", f"{e['infer'] / bar['infer']:.2f}",
                    f"{e['infer'] / bar16['infer']:.2f}" if low else "",
                    f"{mem:.1f}" if mem is not None else "-",
                    f"{mem / bar_mem:.2f}" if mem is not None and bar_mem else "-",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return lines


# (target name, variant, which ratio, bound, cells it applies to)
Ratio = Callable[[dict[str, Entry], str, str], float]


def _to_f32(v: dict[str, Entry], name: str, kind: str, best: bool) -> float:
    get = _best if best else (lambda e, k: e[k])
    return get(v[name], kind) / get(v["torch.nn"], kind)


def _to_bf16(v: dict[str, Entry], name: str, kind: str, best: bool) -> float:
    get = _best if best else (lambda e, k: e[k])
    return get(v[name], kind) / get(v["torch.nn bf16"], kind)


def _to_fused(v: dict[str, Entry], name: str, kind: str, best: bool) -> float:
    get = _best if best else (lambda e, k: e[k])
    return get(v[name], kind) / get(v["fused+drop"], kind)


TARGETS: list[tuple[str, str, Any, float, tuple[str, ...], tuple[str, ...]]] = [
    ("eval through torch's kernel", "torch eval", _to_f32, 1.05, ("LSTM", "GRU"), ("train", "infer")),
    ("batch-scope masks folded into torch's kernel", "torch batch-scope", _to_f32, 1.10, ("LSTM", "GRU"),
     ("train", "infer")),
    ("bf16 autocast train vs torch.nn under autocast", "fused+drop bf16", _to_bf16, 1.0, ("LSTM", "GRU"),
     ("train",)),
    ("bf16 autocast MC inference vs torch.nn under autocast", "fused+drop bf16", _to_bf16, 1.2, ("LSTM", "GRU"),
     ("infer",)),
    ("bf16 autocast vs torch.nn float32", "fused+drop bf16", _to_f32, 0.6, ("LSTM", "GRU"), ("train", "infer")),
    ("float32 fused with dropout, training", "fused+drop", _to_f32, 0.9, ("LSTM",), ("train",)),
    ("float32 fused with dropout, MC inference", "fused+drop", _to_f32, 1.1, ("LSTM", "GRU"), ("infer",)),
    ("zoneout on top of dropout vs fused+drop", "fused+drop+zoneout", _to_fused, 1.15, ("LSTM", "GRU"),
     ("train", "infer")),
    ("candidate dropout on top of dropout vs fused+drop", "fused+drop+cand", _to_fused, 1.15, ("LSTM", "GRU"),
     ("train", "infer")),
]
MEMORY_VARIANTS = ("torch eval", "torch batch-scope", "auto eval", "fused+drop", "fused+drop bf16",
                   "fused+drop+zoneout", "fused+drop+cand")


def targets_table(results: dict[str, Any]) -> list[str]:
    lines = ["| target | bound | figures (median; best round) | met? |", "|---|---:|---|---|"]
    for label, variant, ratio, bound, cells, kinds in TARGETS:
        parts, misses, best_misses = [], [], []
        for cfg, by_cell in results.items():
            for cell in cells:
                v = by_cell.get(cell)
                if v is None or variant not in v:
                    continue
                for kind in kinds:
                    try:
                        med, best = ratio(v, variant, kind, False), ratio(v, variant, kind, True)
                    except KeyError:  # the variant or its bar did not run on this CPU
                        parts.append(f"{cfg} {cell} {kind}: not run on this CPU")
                        continue
                    where = f"{cfg} {cell} {kind}"
                    parts.append(f"{where} {med:.2f}; {best:.2f}")
                    if med > bound:
                        misses.append(where)
                    if best > bound:
                        best_misses.append(where)
        measured = [p for p in parts if "not run" not in p]
        verdict = ("not measured: this CPU cannot run it" if not measured
                   else "yes" if not misses else "**no**: " + ", ".join(misses))
        if misses and len(best_misses) < len(misses):
            verdict += f" (best rounds: {'all met' if not best_misses else ', '.join(best_misses)})"
        lines.append(f"| {label} (`{variant}`) | ≤ {bound:g} | {'<br>'.join(parts)} | {verdict} |")
    mem_parts, mem_miss = [], []
    for cfg, by_cell in results.items():
        for cell, v in by_cell.items():
            bar = v["torch.nn"].get("peak_mib")
            for name in MEMORY_VARIANTS:
                mem = v.get(name, {}).get("peak_mib")
                if mem is None or not bar:
                    continue
                r = mem / bar
                mem_parts.append(f"{cfg} {cell} {name} {r:.2f}")
                if r > 1.1:
                    mem_miss.append(f"{cfg} {cell} {name} {r:.2f}")
    verdict = "yes" if not mem_miss else "**no**: " + ", ".join(mem_miss)
    lines.append(f"| peak memory of a training step, every row above | ≤ 1.1 | {'<br>'.join(mem_parts)} | {verdict} |")
    return lines


def readme_table(results: dict[str, Any], configs: dict[str, dict[str, int]]) -> list[str]:
    """The README's summary: per config, train / inference, ratios to torch.nn float32 unless noted."""
    lines = [
        "| config (B, T, in, hidden) | torch.nn LSTM | rnndrop LSTM, dropout 0.25/0.25 | same, bf16 autocast "
        "(× torch.nn bf16) | rnndrop LSTM, eval | torch.nn GRU | rnndrop GRU, dropout 0.25/0.25 | rnndrop GRU, eval |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def pair(v: dict[str, Entry], name: str, bar: str = "torch.nn") -> str:
        if "unavailable" in v[name] or "unavailable" in v[bar]:
            return "not on this CPU"
        return f"{v[name]['train'] / v[bar]['train']:.2f}× / {v[name]['infer'] / v[bar]['infer']:.2f}×"

    for cfg, by_cell in results.items():
        c = configs[cfg]
        lstm, gru = by_cell.get("LSTM"), by_cell.get("GRU")
        if lstm is None or gru is None:
            continue
        shape = f"{cfg} ({c['batch']}, {c['time']}, {c['input']}, {c['hidden']})"
        lines.append(
            f"| {shape} | {lstm['torch.nn']['train']:.1f} ms / {lstm['torch.nn']['infer']:.1f} ms | "
            f"{pair(lstm, 'fused+drop')} | {pair(lstm, 'fused+drop bf16', 'torch.nn bf16')} | "
            f"{pair(lstm, 'auto eval')} | {gru['torch.nn']['train']:.1f} ms / {gru['torch.nn']['infer']:.1f} ms | "
            f"{pair(gru, 'fused+drop')} | {pair(gru, 'auto eval')} |"
        )
    return lines


def compare_table(results: dict[str, Any], before: dict[str, Any], before_name: str,
                  variants: tuple[str, ...] = ("fused", "fused+drop", "fused+drop/gate", "auto eval")) -> list[str]:
    """Ratios to torch.nn of the same run, this run against an earlier one (same machine and session)."""
    lines = [f"| config | cell | variant | {before_name}: train / infer × torch.nn | this run |",
             "|---|---|---|---|---|"]

    def ratio(res: dict[str, Any], cfg: str, cell: str, name: str) -> str:
        e, bar = res[cfg][cell].get(name, {}), res[cfg][cell]["torch.nn"]
        if "train" not in e:
            return "not run"
        return f"{e['train'] / bar['train']:.2f} / {e['infer'] / bar['infer']:.2f}"

    for cfg, by_cell in results.items():
        for cell in by_cell:
            if cell not in before.get(cfg, {}):
                continue
            for name in variants:
                lines.append(f"| {cfg} | {cell} | {name} | {ratio(before, cfg, cell, name)} | "
                             f"{ratio(results, cfg, cell, name)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a bench_cpu.py result file")
    parser.add_argument("--part", choices=("figures", "targets", "readme", "compare", "all"), default="all")
    parser.add_argument("--baseline", type=Path, help="an earlier bench_cpu.py result file (--part compare)")
    args = parser.parse_args(argv)
    if args.part == "compare" and args.baseline is None:
        parser.error("--part compare needs --baseline FILE (an earlier bench_cpu.py result)")
    data = json.loads(args.json.read_text())
    results = data["results"]
    m = data["machine"]
    out = [f"Run of {data['date']}: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['torch_threads']} torch "
           f"threads, torch {m['torch']}, load average at start {m.get('load_average_at_start')}, "
           f"GLIBC_TUNABLES {'set' if m.get('GLIBC_TUNABLES') else 'unset'}; medians of {data['repeats']} "
           "interleaved rounds.", ""]
    if args.part in ("figures", "all"):
        out += [*figures_table(results), ""]
    if args.part in ("targets", "all"):
        out += [*targets_table(results), ""]
    if args.part == "readme":
        out += [*readme_table(results, data["configs"]), ""]
    if args.part == "compare":
        out += [*compare_table(results, json.loads(args.baseline.read_text())["results"], args.baseline.stem), ""]
    sys.stdout.write("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
