"""What a study found, read from its Optuna study at any time: the search (validation score per strategy and
rate), the tuned rates, the final runs at those rates, the paired comparison with ``none`` and the
recommendation; and the files of a results folder (``results.json``, ``results.csv``, ``search.csv``,
plots)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from . import report
from .engine import StudyHandle, _unit_of

FINISHED = ("COMPLETE", "PRUNED")


@dataclass
class StudyResults:
    """The state of a study as a report sees it.

    Attributes:
        plan: the study's plan (as a dict).
        config: the experiment's configuration stored in the study.
        search: ``{strategy: {"rate": tuned rate or None, "source": "search" | "fixed" | "none",
            "grid": [{"rate", "seeds", "values", "pruned", "mean", "low", "high"}]}}``.
        runs: the final runs (one dict per finished final trial; see :mod:`rnndrop.study.report`).
        rows: :func:`report.summarize` of the runs.
        comparisons: paired differences to ``none`` with simultaneous intervals.
        recommendation: one line.
        baseline_validation: ``{seed: validation score}`` of ``none`` (the dose-response plots' rate 0).
        counts: trials per state; missing: units of the plan without a finished trial.
    """

    plan: dict[str, Any]
    config: dict[str, Any]
    search: dict[str, Any]
    runs: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    recommendation: str
    metric: str
    higher_is_better: bool
    label: str
    baseline_validation: dict[int, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def tuned_rates(self) -> dict[str, float | None]:
        return {name: info["rate"] for name, info in self.search.items()}

    def table(self, unavailable: Sequence[tuple[str, str]] = ()) -> str:
        return report.table(self.rows, unavailable, self.comparisons)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan, "config": self.config, "tuned_rates": self.tuned_rates, "search": self.search,
                "summary": self.rows,
                "comparisons_vs_none": {"metric": self.metric, "higher_is_better": self.higher_is_better,
                                        "baseline": "none", "confidence": 0.95, "correction": "Bonferroni",
                                        "paired_by": "seed", "results": self.comparisons},
                "recommendation": self.recommendation, "trial_counts": self.counts, "missing": self.missing,
                "runs": self.runs}


def collect(handle: StudyHandle, metric: str = "accuracy", higher_is_better: bool = True,
            label: str = "test accuracy") -> StudyResults:
    """Read the study: tuned rates from the search trials, the final runs, statistics and recommendation."""
    plan = handle.plan
    trials = sorted(handle.trials(), key=lambda t: t.number)
    counts: dict[str, int] = {}
    for t in trials:
        if _unit_of(t) is not None:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    search: dict[str, Any] = {}
    for name in plan.strategies:
        if name == "none":
            search[name] = {"rate": 0.0, "source": "none", "grid": []}
            continue
        if name in plan.fixed_rates:
            search[name] = {"rate": plan.fixed_rates[name], "source": "fixed", "grid": []}
            continue
        scores = handle.search_scores(name, trials)
        grid = []
        for rate in plan.rates:
            by_seed = scores.get(rate, {})
            seeds = [s for s in plan.search_seeds if s in by_seed]
            values = [by_seed[s].value for s in seeds]
            values = [v if v is not None and math.isfinite(v) else None for v in values]
            grid.append({"rate": rate, "seeds": seeds, "values": values,
                         "pruned": sum(by_seed[s].state.name == "PRUNED" for s in seeds),
                         "pruned_seeds": [s for s in seeds if by_seed[s].state.name == "PRUNED"],
                         **report.grid_summary(values)})
        search[name] = {"rate": handle.tuned_rate(name, trials), "source": "search", "grid": grid}
    runs, seen = [], set()
    baseline_validation: dict[int, float] = {}
    for t in trials:
        u = _unit_of(t)
        if u is None or u.phase != "final" or t.state.name != "COMPLETE" or u.key in seen:
            continue
        if u.strategy not in plan.strategies or u.seed not in plan.seeds:
            continue
        seen.add(u.key)
        attrs = dict(t.user_attrs)
        run = {"strategy": u.strategy, "seed": u.seed, "rate": float(t.params.get("rate", u.rate or 0.0)),
               "trial": t.number, "validation": t.value, **dict(attrs.get("record") or {}),
               **{k: v for k, v in attrs.items() if k not in ("phase", "rate_choice", "record")}}
        if "test" not in run or not isinstance(run["test"], Mapping):
            continue
        run["test"] = {k: (math.nan if v is None else v) for k, v in run["test"].items()}
        if isinstance(run.get("test_mc"), Mapping):
            run["test_mc"] = {k: (math.nan if v is None else v) for k, v in run["test_mc"].items()}
        runs.append(run)
        if u.strategy == "none" and t.value is not None:
            baseline_validation[u.seed] = t.value
    order = [s for s in plan.strategies if any(r["strategy"] == s for r in runs)]
    runs.sort(key=lambda r: (order.index(r["strategy"]), r["seed"]))
    rows = report.summarize(runs, order)
    comps = report.comparisons(runs, metric=metric) if any(r["strategy"] == "none" for r in runs) else []
    advice = report.recommendation(runs, rows, metric=metric, higher_is_better=higher_is_better, label=label)
    finished = {(_unit_of(t).key) for t in trials if _unit_of(t) is not None and t.state.name in FINISHED}  # type: ignore[union-attr]
    missing = [u.key for u in plan.units() if u.key not in finished]
    return StudyResults(plan.to_dict(), dict(handle.config), search, runs, rows, comps, advice, metric,
                        higher_is_better, label, baseline_validation, counts, missing)


def search_csv(results: StudyResults) -> str:
    """``search.csv``: one line per strategy and rate of the search (validation scores per seed)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["strategy", "rate", "chosen", "mean", "min", "max", "seeds", "values", "pruned"])
    for r in report.search_rows(results.search):
        w.writerow([r["strategy"], f"{r['rate']:g}", int(r["chosen"]), f"{r['mean']:.6g}", f"{r['low']:.6g}",
                    f"{r['high']:.6g}", " ".join(map(str, r["seeds"])),
                    " ".join("" if v is None else f"{v:.6g}" for v in r["values"]), r["pruned"]])
    return buf.getvalue()


def write_results(results: StudyResults, out: str | Path, *, extra: Mapping[str, Any] | None = None,
                  plots: bool = True, build_model: Callable[[str, float], nn.Module] | None = None,
                  unavailable: Sequence[tuple[str, str]] = (), validation_label: str = "validation score",
                  mask_steps: int = 20) -> list[str]:
    """Write ``results.json`` (with ``extra`` merged in), ``results.csv``, ``search.csv`` and, with ``plots``
    (matplotlib needed), ``dose_response.png``, ``accuracy.png``, ``validation_curves.png`` (when runs
    record a ``history``) and ``masks.png`` + ``masks.json`` (when ``build_model(strategy, rate)`` is given:
    the model with the strategy applied at its rate, whose masks are drawn). Returns the file names."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = ["results.json", "results.csv", "search.csv"]
    report.write_json(out / "results.json", {**(extra or {}), **results.to_dict()})
    report.write_csv(out / "results.csv", results.rows, unavailable)
    with report.atomic_write(out / "search.csv") as f:
        f.write(search_csv(results))
    if build_model is not None:
        from .models import mask_panels

        masks = {}
        for row in results.rows or [{"strategy": s, "rate": results.search[s]["rate"]} for s in results.search]:
            rate = row["rate"]
            if rate is None:
                continue
            masks[row["strategy"]] = {"rate": rate, "panels": mask_panels(build_model(row["strategy"], rate),
                                                                          mask_steps, seed=0)}
        report.write_json(out / "masks.json", {name: {"rate": m["rate"], "panels": [
            {"title": p.title, "xlabel": p.xlabel, "ylabel": p.ylabel, "values": p.values.tolist()}
            for p in m["panels"]]} for name, m in masks.items()})
        files.append("masks.json")
    if plots:
        from . import plots as figures

        if any(info["grid"] for info in results.search.values()):
            figures.dose_response(results, out / "dose_response.png", label=validation_label)
            files.append("dose_response.png")
        if results.rows:
            figures.accuracy_bars(results.rows, out / "accuracy.png", metric=results.metric, label=results.label)
            files.append("accuracy.png")
        if results.runs and all("history" in r for r in results.runs):
            order = [r["strategy"] for r in results.rows]
            figures.validation_curves(results.runs, order, out / "validation_curves.png")
            files.append("validation_curves.png")
        if build_model is not None:
            figures.mask_patterns([(f"{name} (p = {m['rate']:g})" if name != "none" else name, m["panels"])
                                   for name, m in masks.items()], out / "masks.png")
            files.append("masks.png")
    return files
