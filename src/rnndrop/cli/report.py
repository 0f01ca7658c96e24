"""Summaries, the table, the recommendation and the result files of ``rnndrop compare``.

Every file is written atomically (:func:`atomic_write`): to a temporary file in the same folder,
then ``os.replace`` — an interrupted run leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .metrics import paired_interval


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
        json.dump(_jsonable(data), f, indent=2, allow_nan=False)
        f.write("\n")


def _jsonable(value: Any) -> Any:
    """Replace NaN/inf floats by None so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def summarize(runs: Sequence[dict[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
    """One row per strategy (in ``order``) with the mean and sample std over its seeds."""
    rows = []
    for name in order:
        mine = sorted((r for r in runs if r["strategy"] == name), key=lambda r: r["seed"])
        if not mine:
            continue
        row: dict[str, Any] = {
            "strategy": name,
            "rate": mine[0]["rate"],
            "seeds": [r["seed"] for r in mine],
            "implementation": mine[0]["implementation"],
            "mc_implementation": mine[0]["mc_implementation"],
            "backend": mine[0].get("backend") or "",
        }
        for prefix, key in (("", "test"), ("mc_", "test_mc")):
            for m in mine[0][key]:
                row[f"{prefix}{m}_mean"], row[f"{prefix}{m}_std"] = _mean_std([r[key][m] for r in mine])
        row["best_epoch_mean"], _ = _mean_std([r["best_epoch"] for r in mine])
        row["epochs_run_mean"], _ = _mean_std([r["epochs_run"] for r in mine])
        row["seconds_mean"], _ = _mean_std([r["train_seconds"] + r["eval_seconds"] for r in mine])
        rows.append(row)
    return rows


def comparisons(
    runs: Sequence[dict[str, Any]], baseline: str = "none", metric: str = "accuracy", key: str = "test",
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
        ci = paired_interval(a, b, confidence, comparisons=len(names)) if pairs else None
        entry: dict[str, Any] = {"strategy": name, "pairs": len(pairs)}
        if pairs:
            entry["difference"] = float(np.mean(np.subtract(a, b)))
        if ci is not None:
            entry["low"], entry["high"] = ci[1], ci[2]
        out.append(entry)
    return out


def recommendation(
    runs: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    baseline: str = "none",
    confidence: float = 0.95,
    metric: str = "accuracy",
    higher_is_better: bool = True,
    label: str = "test accuracy",
) -> str:
    """One line drawn from the measured test ``metric``, claiming a winner only when its interval says so.

    A strategy counts as better (worse) than ``baseline`` when its whole simultaneous paired interval
    (:func:`comparisons`) lies on the better (worse) side of 0.
    """
    if not any(r["strategy"] == baseline for r in rows):
        return f"No recommendation: the baseline {baseline!r} was not run."
    others = [r for r in rows if r["strategy"] != baseline]
    if not others:
        return "No recommendation: only the baseline was run."
    sign = 1.0 if higher_is_better else -1.0
    comps = {c["strategy"]: c for c in comparisons(runs, baseline, metric=metric, confidence=confidence)}
    n = min(c["pairs"] for c in comps.values())
    level = f"{confidence:.0%} simultaneous paired t-intervals over {n} seeds"
    best = max(others, key=lambda r: sign * r[f"{metric}_mean"])
    c = comps[best["strategy"]]
    if "low" not in c:
        return (
            f"No winner claimed: with {n} seed(s) there is no spread to judge differences by "
            f"(best mean {label}: {best['strategy']} {best[f'{metric}_mean']:.3f} vs {baseline} "
            f"{_row(rows, baseline)[f'{metric}_mean']:.3f}); run --seeds 3 or more."
        )

    def num(x: float) -> str:
        return f"{x:+.3f}" if abs(x) >= 5e-4 or x == 0 else f"{x:+.1e}"  # keep the sign of a bound near 0

    def span(c: dict[str, Any]) -> str:
        return f"[{num(c['low'])}, {num(c['high'])}]"

    better = [comps[r["strategy"]] for r in others if "low" in comps[r["strategy"]]
              and min(sign * comps[r["strategy"]]["low"], sign * comps[r["strategy"]]["high"]) > 0]
    worse = [comps[r["strategy"]] for r in others if "low" in comps[r["strategy"]]
             and max(sign * comps[r["strategy"]]["low"], sign * comps[r["strategy"]]["high"]) < 0]
    if better:
        top = max(better, key=lambda c: sign * c["difference"])
        also = [c["strategy"] for c in better if c is not top]
        return (
            f"Dropout helps here: {top['strategy']} beats no dropout by {num(top['difference'])} {label} "
            f"(interval {span(top)}, {level})" + (f"; also better: {', '.join(also)}" if also else "")
            + ". Strategies are not ranked against each other."
        )
    tail = f"; measurably worse: {', '.join(c['strategy'] for c in worse)}" if worse else ""
    return (
        f"No strategy is measurably better than no dropout on this data: the best, {best['strategy']}, "
        f"differs in {label} by {num(c['difference'])} (interval {span(c)} includes 0; {level}){tail}. "
        "More seeds (--seeds) narrow the intervals."
    )


def _row(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in rows if r["strategy"] == name)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cells(r: dict[str, Any]) -> list[str]:
    tail = [f"{r['best_epoch_mean']:.0f}/{r['epochs_run_mean']:.0f}", f"{r['seconds_mean']:.1f}", r["backend"] or "-"]
    if "bits_per_char_mean" in r:
        keys = ("bits_per_char", "mc_bits_per_char", "perplexity", "mc_perplexity", "accuracy", "ece", "mc_ece")
    else:
        keys = ("accuracy", "mc_accuracy", "nll", "mc_nll", "ece", "mc_ece")
    return [r["strategy"], *(_pm(r[f"{k}_mean"], r[f"{k}_std"]) for k in keys), *tail]


TABLE_COLUMNS = (
    "strategy", "test acc", "MC acc", "NLL", "MC NLL", "ECE", "MC ECE", "epochs", "seconds", "path",
)
LM_COLUMNS = (
    "strategy", "bits/char", "MC bits/char", "perplexity", "MC perplexity", "next-char acc", "ECE", "MC ECE",
    "epochs", "seconds", "path",
)


def _columns(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    return LM_COLUMNS if rows and "bits_per_char_mean" in rows[0] else TABLE_COLUMNS


def table(rows: Sequence[dict[str, Any]], unavailable: Sequence[tuple[str, str]] = ()) -> str:
    """The final table as aligned text: mean ± std over seeds; epochs = best / run (means); seconds per run
    (training + evaluation); path = the recurrent layer's implementation in training (fused / reference)."""
    columns = _columns(rows)
    body = [list(columns)]
    for r in rows:
        body.append(_cells(r))
    widths = [max(len(line[i]) for line in body) for i in range(len(columns))]
    lines = []
    for k, line in enumerate(body):
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:], widths[1:])]
        lines.append("  ".join(cells))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    for name, reason in unavailable:
        lines.append(f"{name.ljust(widths[0])}  unavailable: {reason}")
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict[str, Any]], unavailable: Sequence[tuple[str, str]] = ()) -> str:
    """The same table in Markdown (for docs)."""
    columns = _columns(rows)
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        c = _cells(r)
        out.append("| " + " | ".join([f"`{c[0]}`", *c[1:]]) + " |")
    for name, reason in unavailable:
        out.append(f"| `{name}` | unavailable: {reason} |" + " |" * (len(columns) - 2))
    return "\n".join(out)


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]], unavailable: Sequence[tuple[str, str]] = ()) -> None:
    """``results.csv``: one line per strategy (summary), unavailable ones with empty metrics and the reason."""
    metrics = [k[: -len("_mean")] for k in (rows[0] if rows else {}) if k.endswith("_mean") and "mc_" not in k
               and k[: -len("_mean")] not in ("best_epoch", "epochs_run", "seconds")]
    fields = [
        "strategy", "rate", "n_seeds",
        *(f"{p}{m}_{s}" for p in ("", "mc_") for m in metrics for s in ("mean", "std")),
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
