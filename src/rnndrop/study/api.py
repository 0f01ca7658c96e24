"""``run_study``: which dropout, at which rate, for your own model and training loop."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .engine import (
    DEFAULT_RATES,
    Experiment,
    FunctionExperiment,
    StudyPlan,
    TrialContext,
    TrialOutcome,
    WorkerSettings,
    _quiet_optuna,
    build_for_trial,
    open_study,
    run_worker,
    run_workers,
    sqlite_url,
)
from .results import StudyResults, collect, write_results
from .strategies import STRATEGIES

DEFAULT_STUDY = "rnndrop-study"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def run_study(
    experiment: Experiment | None = None,
    *,
    build_model: Callable[[int], nn.Module] | None = None,
    fit: Callable[[nn.Module, TrialContext], float] | None = None,
    test: Callable[[nn.Module, TrialContext], Mapping[str, float]] | None = None,
    strategies: Sequence[str] | None = None,
    rates: Sequence[float] = DEFAULT_RATES,
    fixed_rates: Mapping[str, float] | None = None,
    search_seeds: int | Sequence[int] = 2,
    seeds: int | Sequence[int] = 10,
    direction: str = "minimize",
    metric: str = "accuracy",
    higher_is_better: bool = True,
    out: str | Path | None = None,
    storage: str | None = None,
    study_name: str = DEFAULT_STUDY,
    config: Mapping[str, Any] | None = None,
    workers: int = 1,
    settings: WorkerSettings | None = None,
    plots: bool = True,
    on_trial: Callable[[TrialOutcome], None] | None = None,
) -> StudyResults:
    """Run (or continue) a dropout study on your model and training loop; returns what it found.

    Give either an :class:`~rnndrop.study.Experiment` or the three functions:

    * ``build_model(seed) -> nn.Module``: a fresh model **without dropout** (torch is seeded with ``seed``
      first). rnndrop layers or ``torch.nn`` LSTM / GRU / RNN (converted); the engine applies each
      strategy with :func:`~rnndrop.study.apply_strategy`.
    * ``fit(model, trial) -> float``: train, return the validation score (``direction``: ``"minimize"``
      a loss, ``"maximize"`` an accuracy); call ``trial.report(epoch, score)`` after each epoch so a
      hopeless search trial can be pruned. ``trial.seed``, ``trial.strategy``, ``trial.rate``,
      ``trial.phase``; ``trial.fresh_model()`` for a refit; ``trial.record(...)`` keeps extras.
    * ``test(model, trial) -> {metric: value}``: the test metrics (final phase only).

    The study: for every strategy but ``none`` and those in ``fixed_rates``, each rate of ``rates`` on
    ``search_seeds`` seeds (a count: seeds 0..n-1, or a list), scored on validation only; each strategy's
    tuned rate is the one with the best mean validation score; then every strategy at its rate on ``seeds``
    seeds, tested, and compared with ``none`` seed by seed (``metric``, ``higher_is_better``) with
    Bonferroni-simultaneous 95% intervals. Trials live in an Optuna study (``study_name``) in ``storage``
    (a database URL or a journal file; default: ``out/study.db``, SQLite); running the same call again
    continues it, and any number of processes or machines may work on one study (``workers`` local
    processes here; functions must then be picklable: module-level). ``config`` identifies the
    experiment (its data, protocol): a study holding another configuration is refused. With ``out``, the
    results folder gets ``results.json``, ``results.csv``, ``search.csv`` and (``plots``, matplotlib)
    ``dose_response.png``, ``accuracy.png``, ``masks.png``.
    """
    if experiment is None:
        if build_model is None or fit is None or test is None:
            raise TypeError("give an experiment, or build_model, fit and test")
        experiment = FunctionExperiment(build_model, fit, test)
    if storage is None:
        if out is None:
            raise TypeError("give out (a results folder, which then holds the study as study.db) or storage")
        Path(out).mkdir(parents=True, exist_ok=True)
        storage = sqlite_url(Path(out) / "study.db")
    plan = StudyPlan(
        strategies=tuple(strategies) if strategies is not None else tuple(s.name for s in STRATEGIES),
        rates=tuple(rates), fixed_rates=dict(fixed_rates or {}),
        search_seeds=tuple(range(search_seeds)) if isinstance(search_seeds, int) else tuple(search_seeds),
        seeds=tuple(range(seeds)) if isinstance(seeds, int) else tuple(seeds), direction=direction)
    _quiet_optuna()
    handle = open_study(storage, study_name, plan, dict(config or {}))
    settings = settings or WorkerSettings()
    if workers > 1:
        run_workers(storage, study_name, experiment, settings, workers, on_trial=on_trial)
    else:
        run_worker(handle, experiment, settings, on_trial=on_trial)
    label = f"test {metric.replace('_', ' ')}"
    results = collect(handle, metric=metric, higher_is_better=higher_is_better, label=label)
    if out is not None:
        write_results(results, out, plots=plots, extra=run_info(storage, study_name),
                      build_model=lambda name, rate: build_for_trial(experiment, name, rate, 0))
    return results


def load_results(storage: str, study_name: str = DEFAULT_STUDY, metric: str = "accuracy",
                 higher_is_better: bool = True) -> StudyResults:
    """What a study holds now (finished trials only), from its storage: for a report at any time."""
    _quiet_optuna()
    handle = open_study(storage, study_name, None, None)
    return collect(handle, metric=metric, higher_is_better=higher_is_better, label=f"test {metric.replace('_', ' ')}")


def run_info(storage: str, study_name: str) -> dict[str, Any]:
    """Where and on what a report was written (for ``results.json``)."""
    import torch

    from .engine import _redact

    return {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "study": {"storage": _redact(str(storage)), "name": study_name},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other processes compete for the cores when this exceeds cpu_count: times inflate
                    "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
