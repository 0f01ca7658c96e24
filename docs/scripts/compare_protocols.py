"""Compare training protocols of ``rnndrop compare`` from finished result folders, paired by seed.

Each folder is one ``rnndrop compare --out DIR ...`` run (same data, strategies and seeds, different
protocol flags). For every strategy and protocol the script reports the mean test accuracy ± sd over
seeds and the paired difference to the baseline protocol (same seed = same validation split and batch
order) with a Student-t interval, Bonferroni-corrected over all (strategy, protocol) comparisons. A
protocol with ``--refit`` also yields its selected model before the refit, as ``NAME:before-refit``.
Then, per protocol, the seed-to-seed sd of the paired difference ``strategy - none`` and the power of a
default-size run to separate a given true difference (:func:`power`).

Usage::

    python docs/scripts/compare_protocols.py --baseline today today=DIR_A keras=DIR_B ... \\
        [--json docs/compare/protocols.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rnndrop.study.metrics import paired_interval, t_quantile


def load_protocol(folder: Path) -> tuple[dict[str, Any], dict[tuple[str, int], dict[str, Any]]]:
    """(config, {(strategy, seed): run record}) of one result folder: its study (``study.db``, the final
    trials) or, for folders of the earlier ``rnndrop compare``, its ``runs/*.json``."""
    config = json.loads((folder / "config.json").read_text())
    runs = {}
    if (folder / "study.db").exists():
        from rnndrop.study import load_results

        records = load_results(f"sqlite:///{(folder / 'study.db').resolve()}", "rnndrop-compare").runs
    else:
        records = [json.loads(f.read_text()) for f in sorted((folder / "runs").glob("*.json"))]
    for r in records:
        runs[(r["strategy"], r["seed"])] = r
    if not runs:
        raise SystemExit(f"{folder}: no finished runs")
    return config, runs


def accuracies(runs: dict[tuple[str, int], dict[str, Any]], before_refit: bool = False) -> dict[tuple[str, int], float]:
    out = {}
    for key, r in runs.items():
        if before_refit:
            if r.get("refit"):
                out[key] = r["refit"]["selected_test"]["accuracy"]
        else:
            out[key] = r["test"]["accuracy"]
    return out


def power(sd: float, seeds: int, difference: float, comparisons: int, confidence: float = 0.95,
          draws: int = 20000, seed: int = 0) -> float:
    """Chance that a run with ``seeds`` seeds names a strategy better by ``difference`` as better.

    Simulated: paired differences ~ Normal(difference, sd) per seed; "named" = the Bonferroni interval
    over ``comparisons`` lies above 0 (what ``rnndrop compare``'s recommendation requires).
    """
    rng = np.random.default_rng(seed)
    d = rng.normal(difference, sd, size=(draws, seeds))
    q = t_quantile(1.0 - (1.0 - confidence) / comparisons / 2.0, seeds - 1)
    low = d.mean(axis=1) - q * d.std(axis=1, ddof=1) / math.sqrt(seeds)
    return float((low > 0).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("protocols", nargs="+", metavar="NAME=DIR")
    p.add_argument("--baseline", required=True, help="NAME of the protocol the others are compared with")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--comparisons-in-default-run", type=int, default=11,
                   help="strategies compared with none in the default run (for the power estimate)")
    p.add_argument("--difference", type=float, default=0.01, help="true difference for the power estimate")
    args = p.parse_args(argv)

    protocols: dict[str, dict[tuple[str, int], float]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for item in args.protocols:
        name, _, folder = item.partition("=")
        config, runs = load_protocol(Path(folder))
        configs[name] = {"folder": folder, **config}
        protocols[name] = accuracies(runs)
        before = accuracies(runs, before_refit=True)
        if before:
            protocols[f"{name}:before-refit"] = before
    if args.baseline not in protocols:
        raise SystemExit(f"--baseline {args.baseline!r} is not among {list(protocols)}")
    base = protocols[args.baseline]
    strategies = sorted({s for s, _ in base}, key=lambda s: (s != "none", s))
    others = [n for n in protocols if n != args.baseline]
    m = len(strategies) * len(others)

    summary, diffs = [], []
    for name, acc in protocols.items():
        for s in strategies:
            values = [v for (st, _), v in sorted(acc.items()) if st == s]
            if values:
                summary.append({"protocol": name, "strategy": s, "seeds": len(values),
                                "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))})
    for name in others:
        for s in strategies:
            seeds = sorted(seed for st, seed in protocols[name] if st == s and (s, seed) in base)
            a = [protocols[name][(s, k)] for k in seeds]
            b = [base[(s, k)] for k in seeds]
            ci = paired_interval(a, b, comparisons=m)
            if ci:
                diffs.append({"protocol": name, "strategy": s, "pairs": len(seeds), "difference": ci[0],
                              "low": ci[1], "high": ci[2], "sd_of_differences": float(np.std(np.subtract(a, b),
                                                                                             ddof=1))})
    within = []
    for name, acc in protocols.items():
        for s in strategies:
            if s == "none":
                continue
            seeds = sorted(seed for st, seed in acc if st == s and ("none", seed) in acc)
            if len(seeds) < 2:
                continue
            d = np.array([acc[(s, k)] - acc[("none", k)] for k in seeds])
            sd = float(d.std(ddof=1))
            entry = {"protocol": name, "strategy": s, "pairs": len(seeds), "mean": float(d.mean()), "sd": sd,
                     "power": {str(n): power(sd, n, args.difference, args.comparisons_in_default_run)
                               for n in (5, 10, 15, 20)}}
            within.append(entry)

    print(f"Mean test accuracy ± sd over seeds; paired difference to '{args.baseline}' with 95% intervals, "
          f"Bonferroni over {m} comparisons.\n")
    print("| protocol | strategy | seeds | test accuracy | difference to baseline [95% interval] |")
    print("|---|---|---|---|---|")
    for row in summary:
        d = next((x for x in diffs if x["protocol"] == row["protocol"] and x["strategy"] == row["strategy"]), None)
        text = f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]" if d else "–"
        print(f"| {row['protocol']} | {row['strategy']} | {row['seeds']} | {row['mean']:.4f} ± {row['sd']:.4f} "
              f"| {text} |")
    print(f"\nPaired difference strategy - none within each protocol; power = chance that a run with that many "
          f"seeds names a strategy truly better by {args.difference} (Bonferroni over "
          f"{args.comparisons_in_default_run}, normal differences with the measured sd):\n")
    print("| protocol | strategy | mean difference | sd of differences | power 5 / 10 / 15 / 20 seeds |")
    print("|---|---|---|---|---|")
    for w in within:
        pw = " / ".join(f"{w['power'][k]:.2f}" for k in ("5", "10", "15", "20"))
        print(f"| {w['protocol']} | {w['strategy']} | {w['mean']:+.4f} | {w['sd']:.4f} | {pw} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python docs/scripts/compare_protocols.py " + " ".join(argv if argv is not None else
                                                                            sys.argv[1:]),
            "baseline": args.baseline, "metric": "test accuracy", "confidence": 0.95, "correction": "Bonferroni",
            "comparisons": m, "protocols": configs, "summary": summary, "differences_to_baseline": diffs,
            "strategy_minus_none": within, "power_difference": args.difference,
            "power_comparisons": args.comparisons_in_default_run,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
