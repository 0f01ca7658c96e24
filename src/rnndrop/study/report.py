"""Summaries, tables, the recommendation and the result files of a study.

Every file is written atomically (:func:`atomic_write`): to a temporary file in the same folder,
then ``os.replace`` — an interrupted run leaves either the old file or the new one, never half.

A *run* here is one final trial as a dict: ``strategy``, ``seed``, ``rate``, ``test`` (``{metric:
value}``), optionally ``test_mc`` (Monte-Carlo dropout metrics), ``best_epoch``, ``epochs_run``,
``train_seconds``, ``eval_seconds``, ``backend``, ``history``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .metrics import finite, mean_interval, paired_interval


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success move it onto ``path``, else delete it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are ordinary files
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data: Any) -> None:
    with atomic_write(path) as f:
        json.dump(jsonable(data), f, indent=2, allow_nan=False)
        f.write("\n")


def jsonable(value: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    return value


def _mean_std(values: Sequence[float | None]) -> tuple[float, float]:
    a = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def summarize(runs: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per strategy (in ``order``) with the mean and sample std over its seeds of every test metric
    (``<metric>_mean`` / ``_std``; Monte-Carlo ones prefixed ``mc_``)."""
    rows = []
    for name in order:
        mine = sorted((r for r in runs if r["strategy"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        row: dict[str, Any] = {"strategy": name, "rate": mine[0]["rate"], "seeds": [r["seed"] for r in mine]}
        for key in ("implementation", "mc_implementation", "backend"):
            if key in mine[0]:
                row[key] = mine[0][key] or ""
        for prefix, key in (("", "test"), ("mc_", "test_mc")):
            if all(isinstance(r.get(key), Mapping) for r in mine):
                for m in mine[0][key]:
                    row[f"{prefix}{m}_mean"], row[f"{prefix}{m}_std"] = _mean_std([r[key].get(m) for r in mine])
        if all("best_epoch" in r and "epochs_run" in r for r in mine):
            row["best_epoch_mean"], _ = _mean_std([r["best_epoch"] for r in mine])
            row["epochs_run_mean"], _ = _mean_std([r["epochs_run"] for r in mine])
        if all("train_seconds" in r for r in mine):
            row["seconds_mean"], _ = _mean_std([r["train_seconds"] + r.get("eval_seconds", 0.0) for r in mine])
        rows.append(row)
    return rows


def comparisons(
    runs: Sequence[Mapping[str, Any]], baseline: str = "none", metric: str = "accuracy", key: str = "test",
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Paired differences of ``metric`` against ``baseline`` (same seeds), with Bonferroni t-intervals.

    Runs with the same seed share the validation split, initial weights and batch order, so the
    per-seed differences are paired. The intervals hold simultaneously for all strategies with
    probability ``confidence`` (Bonferroni over the number of comparisons).
    """
    base = {r["seed"]: r[key][metric] for r in runs if r["strategy"] == baseline}
    names = list(dict.fromkeys(r["strategy"] for r in runs if r["strategy"] != baseline))
    out = []
    for name in names:
        pairs = sorted((r["seed"], r[key][metric]) for r in runs if r["strategy"] == name and r["seed"] in base)
        a = [v for _, v in pairs]
        b = [base[s] for s, _ in pairs]
        entry: dict[str, Any] = {"strategy": name, "rate": next(r["rate"] for r in runs if r["strategy"] == name),
                                 "pairs": len(pairs)}
        if pairs and all(finite(x) for x in (*a, *b)):
            entry["difference"] = float(np.mean(np.subtract(a, b)))
            ci = paired_interval(a, b, confidence, comparisons=len(names))
            if ci is not None:
                entry["low"], entry["high"] = ci[1], ci[2]
        out.append(entry)
    return out


def _num(x: float) -> str:
    return f"{x:+.3f}" if abs(x) >= 5e-4 or x == 0 else f"{x:+.1e}"  # keep the sign of a bound near 0


def _rate_text(rate: float) -> str:
    return f"{rate:g}"


def recommendation(
    runs: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    baseline: str = "none",
    confidence: float = 0.95,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    label: str = "test accuracy",
) -> str:
    """One line drawn from the measured test ``metric``, claiming a winner only when its interval says so.

    A strategy counts as better (worse) than ``baseline`` when its whole simultaneous paired interval
    (:func:`comparisons`) lies on the better (worse) side of 0. Improvements are told in the metric's own
    direction (a lower bits-per-character is "lower by 0.004", never "beats by -0.004"); a strategy is
    called best only when its mean is better than the baseline's; runs with a metric that is not finite
    (a diverged run, NaN) give no recommendation at all. The recommended strategy comes with its rate.
    """
    bad = sorted({r["strategy"] for r in runs if not finite(r.get("test", {}).get(metric))})
    if bad:
        return (f"No recommendation: {label} is not a finite number in runs of {', '.join(bad)} (training diverged "
                "or the data hold values it cannot use); see the runs in results.json.")
    if not any(r["strategy"] == baseline for r in rows):
        return f"No recommendation: the baseline {baseline!r} was not run."
    others = [r for r in rows if r["strategy"] != baseline]
    if not others:
        return "No recommendation: only the baseline was run."
    sign = 1.0 if higher_is_better else -1.0
    comps = {c["strategy"]: c for c in comparisons(runs, baseline, metric=metric, confidence=confidence)}
    n = min(c["pairs"] for c in comps.values())
    level = f"{confidence:.0%} simultaneous paired t-intervals over {n} seeds"
    base_mean = _row(rows, baseline)[f"{metric}_mean"]
    best = max(others, key=lambda r: sign * r[f"{metric}_mean"])
    gain = sign * (best[f"{metric}_mean"] - base_mean)
    word = "higher" if higher_is_better else "lower"

    def at(name: str) -> str:
        return f"{name} at rate {_rate_text(_row(rows, name)['rate'])}"

    def improvement(c: Mapping[str, Any]) -> str:
        # the difference in the metric's own direction: "by 0.009 higher test accuracy", "0.004 lower bits/char"
        d = c["difference"]
        return f"{abs(d):.3f} {'higher' if d > 0 else 'lower'} {label}" if abs(d) >= 5e-4 else f"{d:+.1e} in {label}"

    def span(c: Mapping[str, Any]) -> str:
        return f"[{_num(c['low'])}, {_num(c['high'])}]"

    c = comps[best["strategy"]]
    if "low" not in c:
        if gain > 0:
            lead = f"the highest mean is {at(best['strategy'])}" if higher_is_better else (
                f"the lowest mean is {at(best['strategy'])}")
            return (f"No winner claimed: with {n} seed(s) there is no spread to judge differences by ({lead}, "
                    f"{label} {best[f'{metric}_mean']:.3f} against {baseline} {base_mean:.3f}); "
                    "run --seeds 3 or more.")
        return (f"No winner claimed: no strategy has a {word} mean {label} than no dropout ({base_mean:.3f}) with "
                f"{n} seed(s), and with {n} seed(s) there is no spread to judge differences by; run --seeds 3 or more.")
    better = [comps[r["strategy"]] for r in others if "low" in comps[r["strategy"]]
              and min(sign * comps[r["strategy"]]["low"], sign * comps[r["strategy"]]["high"]) > 0]
    worse = [comps[r["strategy"]] for r in others if "low" in comps[r["strategy"]]
             and max(sign * comps[r["strategy"]]["low"], sign * comps[r["strategy"]]["high"]) < 0]
    if better:
        top = max(better, key=lambda c: sign * c["difference"])
        also = [at(c["strategy"]) for c in better if c is not top]
        return (
            f"Dropout helps here: use {at(top['strategy'])}: {improvement(top)} than no dropout "
            f"(difference {_num(top['difference'])}, interval {span(top)}, {level})"
            + (f"; also better: {', '.join(also)}" if also else "")
            + ". Strategies are not ranked against each other."
        )
    tail = f"; measurably worse: {', '.join(at(c['strategy']) for c in worse)}" if worse else ""
    if gain > 0:
        lead = f"the best mean, {at(best['strategy'])}, differs in {label} by {_num(c['difference'])}"
    else:
        lead = f"no strategy has a {word} mean {label} than no dropout (the closest, {at(best['strategy'])}, " \
               f"differs by {_num(c['difference'])})"
    return (f"No strategy is measurably better than no dropout on this data: {lead} (interval {span(c)} "
            f"includes 0; {level}){tail}. More seeds (--seeds) narrow the intervals.")


def _row(rows: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    return next(r for r in rows if r["strategy"] == name)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "nan"
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


CLASSIFICATION = (("accuracy", "test acc"), ("mc_accuracy", "MC acc"), ("nll", "NLL"), ("mc_nll", "MC NLL"),
                  ("ece", "ECE"), ("mc_ece", "MC ECE"))
LANGUAGE_MODEL = (("bits_per_char", "bits/char"), ("mc_bits_per_char", "MC bits/char"), ("perplexity", "perplexity"),
                  ("mc_perplexity", "MC perplexity"), ("accuracy", "next-char acc"), ("ece", "ECE"),
                  ("mc_ece", "MC ECE"))


def _metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    if not rows:
        return []
    if "bits_per_char_mean" in rows[0]:
        return [c for c in LANGUAGE_MODEL if f"{c[0]}_mean" in rows[0]]
    if "accuracy_mean" in rows[0] and "nll_mean" in rows[0]:
        return [c for c in CLASSIFICATION if f"{c[0]}_mean" in rows[0]]
    names = [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")
             and k[: -len("_mean")] not in ("best_epoch", "epochs_run", "seconds")]
    return [(n, n.replace("_", " ")) for n in names]


def _table_cells(rows: Sequence[Mapping[str, Any]], comps: Mapping[str, Mapping[str, Any]] | None
                 ) -> tuple[list[str], list[list[str]]]:
    cols = _metric_columns(rows)
    header = ["strategy", "rate", *(label for _, label in cols)]
    with_cmp = comps is not None
    if with_cmp:
        header.append("- none [simultaneous 95%]")
    extra = [("epochs", "best_epoch_mean"), ("seconds", "seconds_mean"), ("path", "backend")]
    extra = [(h, k) for h, k in extra if rows and all(k in r for r in rows)]
    header += [h for h, _ in extra]
    body = []
    for r in rows:
        line = [r["strategy"], _rate_text(r["rate"]), *(_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k, _ in cols)]
        if with_cmp:
            c = (comps or {}).get(r["strategy"])
            if c is None:
                line.append("–")
            elif "low" in c:
                line.append(f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]")
            elif "difference" in c:
                line.append(f"{c['difference']:+.4f}")
            else:
                line.append("?")
        for h, k in extra:
            if h == "epochs":
                line.append(f"{r['best_epoch_mean']:.0f}/{r['epochs_run_mean']:.0f}")
            elif h == "seconds":
                line.append(f"{r['seconds_mean']:.1f}")
            else:
                line.append(r[k] or "-")
        body.append(line)
    return header, body


def table(rows: Sequence[Mapping[str, Any]], unavailable: Sequence[tuple[str, str]] = (),
          comps: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The final table as aligned text: mean ± std over seeds at each strategy's rate; with ``comps``
    the paired difference to ``none`` and its simultaneous interval; epochs = best / run (means); seconds
    per run (training + evaluation); path = the recurrent layer's implementation in training."""
    header, body = _table_cells(rows, None if comps is None else {c["strategy"]: c for c in comps})
    lines_in = [header, *body]
    widths = [max(len(line[i]) for line in lines_in) for i in range(len(header))]
    lines = []
    for k, line in enumerate(lines_in):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, reason in unavailable:
        lines.append(f"{name.ljust(widths[0])}  unavailable: {reason}")
    return "\n".join(lines)


def markdown_table(rows: Sequence[Mapping[str, Any]], unavailable: Sequence[tuple[str, str]] = (),
                   comps: Sequence[Mapping[str, Any]] | None = None) -> str:
    """The same table in Markdown (for docs)."""
    header, body = _table_cells(rows, None if comps is None else {c["strategy"]: c for c in comps})
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for line in body:
        out.append("| " + " | ".join([f"`{line[0]}`", *line[1:]]) + " |")
    for name, reason in unavailable:
        out.append(f"| `{name}` | unavailable: {reason} |" + " |" * (len(header) - 2))
    return "\n".join(out)


def search_rows(search: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flatten the search results (``{strategy: {"rate": chosen, "grid": [...]}}``) into one row per rate."""
    out = []
    for name, info in search.items():
        for g in info.get("grid", []):
            out.append({"strategy": name, "rate": g["rate"], "chosen": g["rate"] == info.get("rate"),
                        "seeds": g["seeds"], "values": g["values"], "pruned": g["pruned"], "mean": g["mean"],
                        "low": g["low"], "high": g["high"]})
    return out


def search_table(search: Mapping[str, Any], score: str = "validation score") -> str:
    """The search as text: per strategy, per rate the mean validation score over the search seeds (range
    over seeds, pruned trials); ``*`` marks the tuned rate."""
    lines = [f"{'strategy':<24}  {'rate':>5}  {score + ' (mean [min, max] over seeds)':>44}  pruned"]
    for r in search_rows(search):
        span = f"{r['mean']:.4f} [{r['low']:.4f}, {r['high']:.4f}]" if finite(r["mean"]) else "-"
        mark = "*" if r["chosen"] else " "
        lines.append(f"{r['strategy']:<24}  {r['rate']:>5g}{mark} {span:>44}  {r['pruned']}/{len(r['values'])}")
    return "\n".join(lines)


def grid_summary(values: Sequence[float | None]) -> dict[str, float]:
    """Mean, min and max (and a t-interval when it exists) of a rate's search values over seeds."""
    x = [v for v in values if finite(v)]
    if not x:
        return {"mean": math.nan, "low": math.nan, "high": math.nan}
    ci = mean_interval(x)
    return {"mean": float(np.mean(x)), "low": float(min(x)), "high": float(max(x)),
            **({"ci_low": ci[1], "ci_high": ci[2]} if ci else {})}


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]], unavailable: Sequence[tuple[str, str]] = ()) -> None:
    """``results.csv``: one line per strategy (summary at its rate), unavailable ones with the reason."""
    metrics = [k[: -len("_mean")] for k in (rows[0] if rows else {}) if k.endswith("_mean") and not k.startswith("mc_")
               and k[: -len("_mean")] not in ("best_epoch", "epochs_run", "seconds")]
    mc = bool(rows) and any(k.startswith("mc_") for k in rows[0])
    fields = [
        "strategy", "rate", "n_seeds",
        *(f"{p}{m}_{s}" for p in ("", *(["mc_"] if mc else [])) for m in metrics for s in ("mean", "std")),
        "best_epoch_mean", "epochs_run_mean", "seconds_mean", "backend", "implementation", "mc_implementation",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*fields, "unavailable"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        line = {k: r.get(k, "") for k in fields}
        line["n_seeds"] = len(r["seeds"])
        for k, v in line.items():
            if isinstance(v, float):
                line[k] = "" if math.isnan(v) else f"{v:.6g}"
        writer.writerow(line)
    for name, reason in unavailable:
        writer.writerow({"strategy": name, "unavailable": reason})
    with atomic_write(path) as f:
        f.write(buf.getvalue())
