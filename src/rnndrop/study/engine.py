"""The study engine: every trial of a dropout study lives in an Optuna study, on any Optuna storage.

A study answers *which dropout, at which rate* for one model and training loop (an :class:`Experiment`).
Its plan (:class:`StudyPlan`) has two phases:

1. **search** — for each strategy, each rate of a grid (default 0.1, 0.2, 0.3, 0.5) over a few seeds
   (default 2). A trial trains and returns its *validation* score; nothing else is measured. Hopeless
   trials are pruned (:class:`SameSeedPruner`). The strategy's **tuned rate** is the grid rate with
   the best mean validation score over the search seeds (ties: the lower rate).
2. **final** — each strategy at its tuned rate (``none`` at 0; a fixed rate where one was given) over
   all seeds (default 10); the trial trains, returns its validation score and is tested. Only these
   test scores are reported; the test data never influences a choice.

Storage: every (phase, strategy, rate, seed) unit is one Optuna trial, enqueued once (``WAITING``);
workers (processes on any machines sharing the storage) claim the next ready unit by moving it to
``RUNNING`` — an atomic step in Optuna's storages, so no unit runs twice — with search units first and
a strategy's final units only once its search has finished. A running trial writes a heartbeat every
``heartbeat_interval`` seconds; a worker that finds a heartbeat older than ``grace_period`` marks that
trial failed and enqueues it again (a dead worker's unit is retried). Ctrl-C marks the running trial
failed (``interrupted``); running the same study again enqueues every unit that has no live or
finished trial, so nothing finished is lost and nothing is redone.

Trials are ordinary Optuna trials: parameters ``strategy`` (categorical), ``rate`` (float in [0, 1])
and ``seed`` (int), the validation score as the value (``direction`` of the plan), intermediate
values per reported epoch, and user attributes ``phase`` plus what the experiment records (test
metrics, history). optuna-dashboard and ``optuna.visualization`` read the study as it is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .strategies import BY_NAME, apply_strategy

PHASES = ("search", "final")
DEFAULT_RATES = (0.1, 0.2, 0.3, 0.5)
PLAN_ATTR = "rnndrop.plan"
CONFIG_ATTR = "rnndrop.config"
READY_ATTR = "rnndrop.plan_enqueued"
HEARTBEAT_ATTR = "rnndrop:heartbeat"
WORKER_ATTR = "rnndrop:worker"


class StudyError(RuntimeError):
    """A study that cannot run as asked (a storage that does not open, another configuration, ...)."""


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise StudyError("optuna is missing: install the study extra, pip install 'rnndrop[study]'") from None
    return optuna


# ---------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Unit:
    """One trial's worth of work: ``rate`` is None for a final unit at the strategy's tuned rate."""

    phase: str
    strategy: str
    seed: int
    rate: float | None

    @property
    def key(self) -> str:
        return f"{self.phase}/{self.strategy}/{'tuned' if self.rate is None else f'{self.rate:g}'}/{self.seed}"


@dataclass(frozen=True)
class StudyPlan:
    """What a study runs.

    Attributes:
        strategies: strategy names, in report order (``"none"``, the baseline, should be one of them).
        rates: the search grid of rates in ``(0, 1)``.
        fixed_rates: strategies whose rate is given (no search for them).
        search_seeds: seeds of the search phase.
        seeds: seeds of the final phase (paired across strategies).
        direction: ``"minimize"`` or ``"maximize"`` the validation score.
    """

    strategies: tuple[str, ...]
    rates: tuple[float, ...] = DEFAULT_RATES
    fixed_rates: Mapping[str, float] = field(default_factory=dict)
    search_seeds: tuple[int, ...] = (0, 1)
    seeds: tuple[int, ...] = tuple(range(10))
    direction: str = "minimize"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        object.__setattr__(self, "fixed_rates", {k: float(v) for k, v in dict(self.fixed_rates).items()})
        object.__setattr__(self, "search_seeds", tuple(int(s) for s in self.search_seeds))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        unknown = [s for s in self.strategies if s not in BY_NAME]
        if unknown:
            raise StudyError(f"unknown strategies {unknown}; choose from {list(BY_NAME)}")
        if not self.strategies:
            raise StudyError("a study needs at least one strategy")
        if len(set(self.strategies)) != len(self.strategies):
            raise StudyError(f"strategies repeat: {list(self.strategies)}")
        if self.direction not in ("minimize", "maximize"):
            raise StudyError(f"direction must be 'minimize' or 'maximize', got {self.direction!r}")
        for r in (*self.rates, *self.fixed_rates.values()):
            if not 0.0 < r < 1.0:
                raise StudyError(f"rates must lie in (0, 1), got {r}")
        if self.tuned and (not self.rates or not self.search_seeds):
            raise StudyError("tuning rates needs a non-empty grid of rates and at least one search seed")
        if not self.seeds:
            raise StudyError("a study needs at least one seed")

    @property
    def tuned(self) -> tuple[str, ...]:
        """The strategies whose rate the search chooses."""
        return tuple(s for s in self.strategies if s != "none" and s not in self.fixed_rates)

    def units(self) -> list[Unit]:
        """Search units (strategy by strategy, seed-major), then final units (strategy by strategy)."""
        out = [Unit("search", s, seed, r) for s in self.tuned for seed in self.search_seeds for r in self.rates]
        for s in self.strategies:
            rate = 0.0 if s == "none" else self.fixed_rates.get(s)
            out += [Unit("final", s, seed, rate) for seed in self.seeds]
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fixed_rates"] = dict(self.fixed_rates)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyPlan:
        return cls(strategies=tuple(d["strategies"]), rates=tuple(d["rates"]), fixed_rates=dict(d["fixed_rates"]),
                   search_seeds=tuple(d["search_seeds"]), seeds=tuple(d["seeds"]), direction=d["direction"])

    def identity(self) -> dict[str, Any]:
        """What must match for a later run to continue this study: the grid and the search seeds (they
        decide the tuned rates); strategies and final seeds may be added."""
        return {"rates": list(self.rates), "search_seeds": list(self.search_seeds), "direction": self.direction,
                "fixed_rates": dict(sorted(self.fixed_rates.items()))}


# ---------------------------------------------------------------------------------------------- experiment
class Experiment(Protocol):
    """What a study trains: your model and training loop.

    ``build(seed)`` returns a fresh model *without* dropout (the engine seeds torch with ``seed``
    first and then applies the trial's strategy with :func:`rnndrop.study.apply_strategy`);
    ``fit(model, trial)`` trains it and returns the validation score (report per-epoch scores with
    ``trial.report`` so hopeless search trials can be pruned); ``test(model, trial)`` is called in the
    final phase only and returns the test metrics ``{name: value}``.
    """

    def build(self, seed: int) -> nn.Module: ...

    def fit(self, model: nn.Module, trial: TrialContext) -> float: ...

    def test(self, model: nn.Module, trial: TrialContext) -> Mapping[str, float]: ...


@dataclass
class FunctionExperiment:
    """An :class:`Experiment` made of three functions (module-level functions for ``workers > 1``)."""

    build_model: Callable[[int], nn.Module]
    fit_model: Callable[[nn.Module, TrialContext], float]
    test_model: Callable[[nn.Module, TrialContext], Mapping[str, float]]

    def build(self, seed: int) -> nn.Module:
        return self.build_model(seed)

    def fit(self, model: nn.Module, trial: TrialContext) -> float:
        return self.fit_model(model, trial)

    def test(self, model: nn.Module, trial: TrialContext) -> Mapping[str, float]:
        return self.test_model(model, trial)


class TrialContext:
    """What a running trial tells your ``fit`` / ``test`` functions, and what they tell it back.

    Attributes:
        phase: ``"search"`` (validation only) or ``"final"`` (validation, then test).
        strategy, rate, seed: this trial's strategy, its rate and the seed.
        number: the Optuna trial number.
        state: a dict your functions may use to pass things from ``fit`` to ``test`` (not stored).
        search_record: in a final trial whose strategy, rate and seed were also a complete search trial,
            that trial's records (``record(...)`` values, plus ``"value"`` and ``"number"``), else None:
            an experiment whose final training starts as its search training did may reuse it.
    """

    def __init__(self, trial: Any, unit: Unit, rate: float, experiment: Experiment, report_every: int = 1) -> None:
        self._trial = trial
        self.phase, self.strategy, self.seed, self.rate = unit.phase, unit.strategy, unit.seed, rate
        self.number: int = trial.number
        self._experiment = experiment
        self._records: dict[str, Any] = {}
        self.report_every = max(1, int(report_every))
        self.state: dict[str, Any] = {}
        self.search_record: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.phase == "final"

    def report(self, step: int, value: float) -> None:
        """The validation score after ``step`` (an epoch, 1-based); raises ``optuna.TrialPruned`` when the
        pruner judges this search trial hopeless. Every ``report_every``-th step is stored."""
        if self.phase != "search" or step % self.report_every:
            return
        if not math.isfinite(value):
            return
        self._trial.report(float(value), int(step))
        if self._trial.should_prune():
            raise _optuna().TrialPruned(f"pruned at step {step}")

    def record(self, **values: Any) -> None:
        """JSON-ready values kept with the trial (Optuna user attributes): histories, timings, extra metrics."""
        self._records.update(values)

    def fresh_model(self) -> nn.Module:
        """A new model as this trial started from: ``build(seed)`` with torch seeded alike, the strategy applied
        (for a refit on all training data)."""
        return build_for_trial(self._experiment, self.strategy, self.rate, self.seed)


def build_for_trial(experiment: Experiment, strategy: str, rate: float, seed: int) -> nn.Module:
    """``experiment.build(seed)`` after ``torch.manual_seed(seed)``, with ``strategy`` at ``rate`` applied."""
    torch.manual_seed(seed)
    model = experiment.build(seed)
    return apply_strategy(model, strategy, rate)


# ---------------------------------------------------------------------------------------------- pruner
def make_pruner(warmup_fraction: float = 0.5, margin: float = 0.25, total_steps: int | None = None,
                min_delta: float = 0.0) -> Any:
    """A :class:`SameSeedPruner` (built lazily: Optuna is an optional dependency)."""
    optuna = _optuna()

    class SameSeedPruner(optuna.pruners.BasePruner):
        """Prune a search trial whose validation score is far behind another rate of the same strategy on the
        same seed (same split, initial weights and batch order: a paired comparison) at the same step.

        From step ``warmup_fraction * total_steps`` on, a minimizing trial is pruned when its reported value
        exceeds the best completed sibling's value at that step by more than ``margin`` relative to it and
        by more than ``min_delta`` absolute (``value - best > max(margin * |best|, min_delta)``; maximizing
        alike, the other way). Final trials are never pruned.
        """

        def __init__(self) -> None:
            self.warmup_fraction, self.margin, self.total_steps = warmup_fraction, margin, total_steps
            self._done: dict[int, Any] = {}  # completed trials never change: cached by number

        def prune(self, study: Any, trial: Any) -> bool:
            if trial.user_attrs.get("phase") != "search" or trial.last_step is None:
                return False
            step = trial.last_step
            if self.total_steps is not None and step < self.warmup_fraction * self.total_steps:
                return False
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                self._done.setdefault(t.number, t)
            value = trial.intermediate_values[step]
            mine = (trial.params.get("strategy"), trial.params.get("seed"))
            others = [t.intermediate_values[step] for t in self._done.values()
                      if t.user_attrs.get("phase") == "search" and step in t.intermediate_values
                      and (t.params.get("strategy"), t.params.get("seed")) == mine
                      and t.params.get("rate") != trial.params.get("rate")]
            if not others:
                return False
            if study.direction == optuna.study.StudyDirection.MINIMIZE:
                best = min(others)
                return value - best > max(abs(best) * self.margin, min_delta)
            best = max(others)
            return best - value > max(abs(best) * self.margin, min_delta)

    return SameSeedPruner()


# ---------------------------------------------------------------------------------------------- storage
def open_storage(storage: str | Path, *, timeout: float = 60.0) -> Any:
    """An Optuna storage for ``storage``: a database URL (``sqlite:///file.db``, ``postgresql://...``,
    ``mysql://...``) or the path of an Optuna journal file (any path without ``://``)."""
    optuna = _optuna()
    text = str(storage)
    if "://" not in text:
        from optuna.storages.journal import JournalFileBackend

        Path(text).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(text))
    kwargs: dict[str, Any] = {}
    if text.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": timeout}}
    try:
        for attempt in range(8):
            try:
                store = optuna.storages.RDBStorage(text, **kwargs)
                break
            except ImportError:
                raise
            except Exception:  # two processes creating the tables at once (a lost race, a locked file): again
                if attempt == 7:
                    raise
                time.sleep(0.25 * (attempt + 1))
        if text.startswith("sqlite"):
            _fast_sqlite(store)
        return store
    except ImportError as exc:
        raise StudyError(f"--storage {_redact(text)}: the database driver is missing ({exc})") from None
    except Exception as exc:  # sqlalchemy's errors: unreachable server, bad credentials, unknown dialect
        raise StudyError(f"--storage {_redact(text)}: cannot open the storage ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _fast_sqlite(store: Any) -> None:
    """Write-ahead logging with ``synchronous=NORMAL`` on every connection of an SQLite storage.

    SQLite's default syncs the disk at every commit (about 13 ms each here), and a trial makes a few dozen
    commits (claim, parameters, intermediate values, attributes). In WAL mode with NORMAL syncing a
    commit survives a crash or Ctrl-C of the process (only an operating-system crash or power cut may
    lose the last ones), and processes on one machine share the file as before (not on a network file
    system: use PostgreSQL, MySQL or a journal file there).
    """
    from sqlalchemy import event

    def pragmas(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(store.engine, "connect", pragmas)
    store.engine.dispose()  # connections opened before the listener: closed, new ones get the pragmas


def _redact(url: str) -> str:
    """``url`` without a password."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':')[0]}:***@{host}" if ":" in cred else url
    return url


def sqlite_url(path: str | Path) -> str:
    """The SQLite URL of a file (absolute, so worker processes find it from any folder)."""
    return f"sqlite:///{Path(path).resolve()}"


def _unit_of(t: Any) -> Unit | None:
    """The unit of an Optuna trial of a rnndrop study (None for foreign trials)."""
    phase = t.user_attrs.get("phase")
    if phase not in PHASES:
        return None
    fixed = t.system_attrs.get("fixed_params") or {}
    params = {**fixed, **t.params}
    if "strategy" not in params or "seed" not in params:
        return None
    tuned = t.user_attrs.get("rate_choice") == "tuned"
    return Unit(phase, params["strategy"], int(params["seed"]), None if tuned else float(params["rate"]))


LIVE = ("WAITING", "RUNNING", "COMPLETE", "PRUNED")


@dataclass
class StudyHandle:
    """An open study: the Optuna study, its storage, the plan and configuration stored in it."""

    study: Any
    storage: Any
    plan: StudyPlan
    config: dict[str, Any]
    study_id: int  # the storage's id of the study (read once, while opening: retried when the database is busy)

    @property
    def name(self) -> str:
        return self.study.study_name

    def trial_id(self, number: int) -> int:
        """The storage's id of trial ``number`` (through Optuna's public storage API)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def trials(self) -> list[Any]:
        return list(self.study.get_trials(deepcopy=False))

    def by_unit(self, states: Iterable[str] = LIVE) -> dict[str, list[Any]]:
        wanted = set(states)
        out: dict[str, list[Any]] = {}
        for t in self.trials():
            u = _unit_of(t)
            if u is not None and t.state.name in wanted:
                out.setdefault(u.key, []).append(t)
        return out

    def search_finished(self, strategy: str, trials: Sequence[Any] | None = None) -> bool:
        """True when every search unit of ``strategy`` has a complete or pruned trial."""
        if strategy not in self.plan.tuned:
            return True
        done = set()
        for t in trials if trials is not None else self.trials():
            u = _unit_of(t)
            if u is not None and u.phase == "search" and u.strategy == strategy and t.state.name in (
                    "COMPLETE", "PRUNED"):
                done.add(u.key)
        need = {u.key for u in self.plan.units() if u.phase == "search" and u.strategy == strategy}
        return need <= done

    def search_scores(self, strategy: str, trials: Sequence[Any] | None = None) -> dict[float, dict[int, Any]]:
        """``{rate: {seed: trial}}`` of the finished search trials of ``strategy`` (the lowest number per unit)."""
        out: dict[float, dict[int, Any]] = {}
        for t in sorted(trials if trials is not None else self.trials(), key=lambda t: t.number):
            u = _unit_of(t)
            if (u is None or u.phase != "search" or u.strategy != strategy or u.rate is None
                    or t.state.name not in ("COMPLETE", "PRUNED") or t.value is None):
                continue
            if u.rate in self.plan.rates and u.seed in self.plan.search_seeds:
                out.setdefault(u.rate, {}).setdefault(u.seed, t)
        return out

    def tuned_rate(self, strategy: str, trials: Sequence[Any] | None = None) -> float | None:
        """The rate the search chose for ``strategy``: the grid rate with the best mean validation score over
        the search seeds (a pruned trial counts with the value it had when pruned: worse than its sibling's);
        ties go to the lower rate. ``None`` while the search is unfinished. Fixed rates come back as given."""
        if strategy == "none":
            return 0.0
        if strategy in self.plan.fixed_rates:
            return self.plan.fixed_rates[strategy]
        if not self.search_finished(strategy, trials):
            return None
        scores = self.search_scores(strategy, trials)
        sign = 1.0 if self.plan.direction == "minimize" else -1.0
        best: tuple[float, float] | None = None
        for rate in sorted(scores):
            values = [scores[rate][s].value for s in self.plan.search_seeds if s in scores[rate]]
            if len(values) != len(self.plan.search_seeds):
                continue
            mean = sign * sum(values) / len(values)
            if best is None or mean < best[0]:
                best = (mean, rate)
        return None if best is None else best[1]


def open_study(storage: str | Path, study_name: str, plan: StudyPlan | None, config: Mapping[str, Any] | None,
               *, wait_for_plan: float = 60.0) -> StudyHandle:
    """Create or load the Optuna study ``study_name`` (see :func:`_open_study`), retried a few times when the
    database is busy (processes starting at once); a study that cannot be opened raises :class:`StudyError`."""
    for attempt in range(5):
        try:
            return _open_study(storage, study_name, plan, config, wait_for_plan=wait_for_plan)
        except StudyError:
            raise
        except Exception as exc:  # sqlalchemy's OperationalError (database is locked), a lost creation race
            if attempt == 4:
                raise StudyError(f"study {study_name!r} in {_redact(str(storage))} cannot be opened "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _open_study(storage: str | Path, study_name: str, plan: StudyPlan | None, config: Mapping[str, Any] | None,
                *, wait_for_plan: float = 60.0) -> StudyHandle:
    """Create or load the Optuna study ``study_name`` and enqueue what ``plan`` asks and the study lacks.

    The process that creates the study stores the plan and configuration and enqueues every unit;
    others wait (up to ``wait_for_plan`` seconds) for that, check that their configuration and the
    plan's grid match the stored ones (else :class:`StudyError` listing the differences), then enqueue
    any unit of their plan that has no live or finished trial (new seeds or strategies, units whose
    trial was interrupted). ``plan=None`` only reads (for a report).
    """
    optuna = _optuna()
    store = open_storage(storage)
    created = False
    if plan is None:
        try:
            study = optuna.load_study(study_name=study_name, storage=store)
        except KeyError:
            raise StudyError(f"no study named {study_name!r} in {_redact(str(storage))}") from None
    else:
        try:
            study = optuna.create_study(study_name=study_name, storage=store, direction=plan.direction,
                                        load_if_exists=False)
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=study_name, storage=store)
    study.sampler = optuna.samplers.RandomSampler(seed=0)  # never asked: every trial's parameters are fixed
    if created:
        assert plan is not None
        study.set_user_attr(CONFIG_ATTR, dict(config or {}))
        study.set_user_attr(PLAN_ATTR, plan.to_dict())
        for unit in plan.units():
            _enqueue(study, unit, plan)
        study.set_user_attr(READY_ATTR, True)
    elif plan is not None:
        deadline = time.monotonic() + wait_for_plan
        while not study.user_attrs.get(READY_ATTR) and time.monotonic() < deadline:
            time.sleep(0.2)
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None and config is not None:
            diff = config_differences(stored, dict(config))
            if diff:
                raise StudyError(f"study {study_name!r} holds trials of a different configuration ({'; '.join(diff)}); "
                                 "use another study (--study / --out), or the same options to continue it")
        old = study.user_attrs.get(PLAN_ATTR)
        if old is not None:
            diff = config_differences(StudyPlan.from_dict(old).identity(), plan.identity())
            if diff:
                raise StudyError(f"study {study_name!r} was searched with other rates ({'; '.join(diff)}); "
                                 "use another study (--study / --out), or the same --search-rates / --search-seeds")
            merged = StudyPlan.from_dict(old)
            plan = StudyPlan(strategies=tuple(dict.fromkeys((*merged.strategies, *plan.strategies))),
                             rates=plan.rates, fixed_rates=plan.fixed_rates, search_seeds=plan.search_seeds,
                             seeds=tuple(sorted({*merged.seeds, *plan.seeds})), direction=plan.direction)
            if plan.to_dict() != old:
                study.set_user_attr(PLAN_ATTR, plan.to_dict())
        handle = StudyHandle(study, store, plan, dict(stored or config or {}), store.get_study_id_from_name(study_name))
        live = handle.by_unit()
        for unit in plan.units():
            if unit.key not in live:
                _enqueue(study, unit, plan)
        return handle
    stored_plan = study.user_attrs.get(PLAN_ATTR)
    if stored_plan is None:
        raise StudyError(f"study {study_name!r} is not a rnndrop study (no plan stored in it)")
    return StudyHandle(study, store, plan or StudyPlan.from_dict(stored_plan),
                       dict(study.user_attrs.get(CONFIG_ATTR) or {}), store.get_study_id_from_name(study_name))


def _enqueue(study: Any, unit: Unit, plan: StudyPlan) -> None:
    params: dict[str, Any] = {"strategy": unit.strategy, "seed": unit.seed}
    attrs: dict[str, Any] = {"phase": unit.phase}
    if unit.rate is None:
        attrs["rate_choice"] = "tuned"
    else:
        params["rate"] = unit.rate
        attrs["rate_choice"] = "grid" if unit.phase == "search" else ("none" if unit.strategy == "none" else "fixed")
    study.enqueue_trial(params, user_attrs=attrs)


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs."""
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


# ---------------------------------------------------------------------------------------------- worker
@dataclass
class WorkerSettings:
    """How a worker runs trials.

    Attributes:
        heartbeat_interval: seconds between a running trial's heartbeats.
        grace_period: a running trial whose last heartbeat is older than this is taken for dead, failed
            and enqueued again.
        poll_interval: seconds between looks at the study while waiting for other workers.
        report_every: store every k-th intermediate validation score (search trials).
        pruning: prune hopeless search trials (:func:`make_pruner`).
        prune_warmup: fraction of ``total_steps`` before pruning may start.
        prune_margin: relative margin of :func:`make_pruner`.
        prune_min_delta: absolute margin of :func:`make_pruner` (in the validation score's unit).
        total_steps: steps (epochs) of a trial, for the warm-up.
        max_trials: stop after this many trials (None: until the study is done).
    """

    heartbeat_interval: float = 10.0
    grace_period: float = 60.0
    poll_interval: float = 0.5
    report_every: int = 1
    pruning: bool = True
    prune_warmup: float = 0.5
    prune_margin: float = 0.25
    prune_min_delta: float = 0.0
    total_steps: int | None = None
    max_trials: int | None = None


class _Heartbeat:
    """A thread writing ``time.time()`` into the trial's system attributes every ``interval`` seconds."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnndrop-heartbeat", daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a finished trial, a busy SQLite file: try again next time
                self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _fail_stale(handle: StudyHandle, grace: float) -> int:
    """Fail the running trials whose heartbeat is older than ``grace`` seconds and enqueue their units again."""
    optuna = _optuna()
    now = time.time()
    count = 0
    for t in handle.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        beat = t.system_attrs.get(HEARTBEAT_ATTR)
        started = t.datetime_start.timestamp() if t.datetime_start is not None else now
        if now - (beat if beat is not None else started) <= grace:
            continue
        trial_id = handle.trial_id(t.number)
        try:  # the reason first: a finished trial takes no more attributes
            handle.storage.set_trial_user_attr(trial_id, "failure", f"stale: no heartbeat for {grace:g} s "
                                               "(its worker died?); enqueued again")
            if not handle.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except Exception:  # another worker failed it first (UpdateFinishedTrialError), or a busy database
            continue
        unit = _unit_of(t)
        if unit is not None:
            _enqueue(handle.study, unit, handle.plan)
            count += 1
    return count


def _claim(handle: StudyHandle) -> tuple[Any, Unit] | str:
    """The next ready waiting trial, now RUNNING in this worker; or ``"wait"`` (work remains for others or is
    not ready yet) or ``"done"``."""
    optuna = _optuna()
    trials = handle.trials()
    waiting = [t for t in trials if t.state == optuna.trial.TrialState.WAITING and _unit_of(t) is not None]
    running = any(t.state == optuna.trial.TrialState.RUNNING for t in trials)
    if not waiting:
        return "wait" if running else "done"
    waiting.sort(key=lambda t: (PHASES.index(_unit_of(t).phase), t.number))  # type: ignore[union-attr]
    ready_cache: dict[str, bool] = {}
    for t in waiting:
        unit = _unit_of(t)
        assert unit is not None
        if unit.phase == "final" and unit.rate is None:
            if unit.strategy not in ready_cache:
                ready_cache[unit.strategy] = handle.search_finished(unit.strategy, trials)
            if not ready_cache[unit.strategy]:
                continue
        trial_id = handle.trial_id(t.number)
        try:
            if not handle.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.RUNNING):
                continue
        except Exception:  # finished meanwhile, or a busy SQLite file: look at the next one
            continue
        with contextlib.suppress(Exception):  # who runs it: for operators (and the kill test)
            handle.storage.set_trial_system_attr(trial_id, WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        # Two processes that continued a study at the same moment may have enqueued one unit twice: the
        # lowest-numbered live trial of a unit is the one that runs; a higher one is closed unrun.
        twins = [o for o in handle.trials() if o.number < t.number and o.state.name in LIVE and _unit_of(o) == unit]
        if twins:
            handle.storage.set_trial_user_attr(trial_id, "failure", f"duplicate of trial {twins[0].number}")
            handle.storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL)
            continue
        return t, unit
    return "wait"


@dataclass
class TrialOutcome:
    """What :func:`run_worker` reports after each trial (for progress output)."""

    number: int
    unit: Unit
    rate: float
    state: str
    value: float | None
    seconds: float
    test: Mapping[str, float] | None = None


def run_worker(handle: StudyHandle, experiment: Experiment, settings: WorkerSettings,
               on_trial: Callable[[TrialOutcome], None] | None = None,
               on_start: Callable[[Unit, float], None] | None = None) -> int:
    """Claim and run trials of the study until none is left (or ``settings.max_trials``); returns the count.

    Waits while other workers run trials this one may still need (a search to finish, a dead worker's
    trial to be retried). An exception in ``experiment`` marks the trial failed (its message in the
    user attribute ``failure``) and is raised; Ctrl-C marks it failed (``interrupted``) and is raised.
    """
    optuna = _optuna()
    handle.study.pruner = (make_pruner(settings.prune_warmup, settings.prune_margin, settings.total_steps,
                                       settings.prune_min_delta)
                           if settings.pruning else optuna.pruners.NopPruner())
    done = 0
    last_check = -math.inf
    while settings.max_trials is None or done < settings.max_trials:
        if time.monotonic() - last_check >= min(settings.heartbeat_interval, settings.grace_period / 2):
            _fail_stale(handle, settings.grace_period)
            last_check = time.monotonic()
        claimed = _claim(handle)
        if claimed == "done":
            break
        if claimed == "wait":
            time.sleep(settings.poll_interval)
            continue
        frozen, unit = claimed  # type: ignore[misc]
        _run_trial(handle, experiment, settings, frozen, unit, on_trial, on_start)
        done += 1
    return done


def _run_trial(handle: StudyHandle, experiment: Experiment, settings: WorkerSettings, frozen: Any, unit: Unit,
               on_trial: Callable[[TrialOutcome], None] | None,
               on_start: Callable[[Unit, float], None] | None) -> None:
    storage = handle.storage
    trial_id = handle.trial_id(frozen.number)
    with _Heartbeat(storage, trial_id, settings.heartbeat_interval):  # from the claim on: never taken for dead
        try:
            _run_claimed(handle, experiment, settings, frozen, unit, trial_id, on_trial, on_start)
        except _optuna().exceptions.UpdateFinishedTrialError:
            # Another worker took this trial for dead (no heartbeat within the grace period: a stalled machine)
            # and enqueued its unit again: this worker's result is dropped, the retry runs it.
            return


def _run_claimed(handle: StudyHandle, experiment: Experiment, settings: WorkerSettings, frozen: Any, unit: Unit,
                 trial_id: int, on_trial: Callable[[TrialOutcome], None] | None,
                 on_start: Callable[[Unit, float], None] | None) -> None:
    optuna = _optuna()
    storage, study = handle.storage, handle.study
    rate = unit.rate if unit.rate is not None else handle.tuned_rate(unit.strategy)
    assert rate is not None, "a final trial was claimed before its strategy's search finished"
    rate_dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    if unit.rate is None:
        storage.set_trial_param(trial_id, "rate", rate_dist.to_internal_repr(rate), rate_dist)
    trial = optuna.trial.Trial(study, trial_id)
    trial.suggest_categorical("strategy", list(BY_NAME))
    trial.suggest_float("rate", 0.0, 1.0)
    trial.suggest_int("seed", 0, max(1000, unit.seed))
    ctx = TrialContext(trial, unit, rate, experiment, settings.report_every)
    if unit.phase == "final" and unit.seed in handle.plan.search_seeds:
        ctx.search_record = _search_record(handle, unit.strategy, rate, unit.seed)
    if on_start is not None:
        on_start(unit, rate)
    start = time.perf_counter()
    state, value, test = "FAIL", None, None
    try:
        model = build_for_trial(experiment, unit.strategy, rate, unit.seed)
        score = float(experiment.fit(model, ctx))
        if unit.phase == "final":
            test = {k: float(v) for k, v in dict(experiment.test(model, ctx)).items()}
            ctx.record(test=test)
        if not math.isfinite(score):
            ctx.record(diverged=True)
            score = math.inf if handle.plan.direction == "minimize" else -math.inf
        ctx.record(seconds=time.perf_counter() - start)
        _store_records(trial, ctx._records)
        study.tell(trial, score)
        state, value = "COMPLETE", score
    except optuna.TrialPruned:
        ctx.record(seconds=time.perf_counter() - start, pruned=True)
        _store_records(trial, ctx._records)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        state = "PRUNED"
        value = storage.get_trial(trial_id).value
    except optuna.exceptions.UpdateFinishedTrialError:
        raise
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, (KeyboardInterrupt, WorkerStopped)) else repr(exc)[:500]
        with contextlib.suppress(BaseException):
            storage.set_trial_user_attr(trial_id, "failure", reason)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
    if on_trial is not None:
        on_trial(TrialOutcome(frozen.number, unit, rate, state, value, time.perf_counter() - start, test))


def _search_record(handle: StudyHandle, strategy: str, rate: float, seed: int) -> dict[str, Any] | None:
    """The records of the complete search trial of (``strategy``, ``rate``, ``seed``), if there is one."""
    for t in sorted(handle.trials(), key=lambda t: t.number):
        u = _unit_of(t)
        if (u is not None and u.phase == "search" and u.strategy == strategy and u.seed == seed
                and u.rate is not None and abs(u.rate - rate) < 1e-12 and t.state.name == "COMPLETE"):
            return {**dict(t.user_attrs.get("record") or {}), "value": t.value, "number": t.number}
    return None


def _store_records(trial: Any, records: Mapping[str, Any]) -> None:
    """The trial's records as two user attributes (each is a database commit): ``test`` (the test metrics of
    a final trial) and ``record`` (everything else)."""
    rest = {k: v for k, v in records.items() if k != "test"}
    if "test" in records:
        trial.set_user_attr("test", _jsonable(records["test"]))
    trial.set_user_attr("record", _jsonable(rest))


def _jsonable(value: Any) -> Any:
    """Strict-JSON values (NaN and infinities as None; numpy scalars as Python numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


class WorkerStopped(Exception):
    """Raised in a worker process by SIGTERM: the parent was interrupted."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise WorkerStopped


def _stop_with_parent(parent: int) -> None:
    """A thread that stops this worker (as SIGTERM does) when its parent process is gone."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rnndrop-parent-watch", daemon=True).start()


def worker_process(storage: str, study_name: str, experiment: Experiment | str, settings: WorkerSettings,
                   threads: int, events: Any | None, parent: int | None = None) -> None:
    """Entry point of a worker process (spawned with SIGINT ignored: the parent stops it with SIGTERM).

    Runs :func:`run_worker`; puts each trial's :class:`TrialOutcome` on ``events`` (a multiprocessing
    queue) and, at the end, ``("done", None)`` or ``("error", message)``. Never prints a traceback.
    Stops (its running trial marked interrupted) when process ``parent`` is gone. ``experiment`` may be the
    path of a file holding it pickled (what :func:`run_workers` passes).
    """
    signal.signal(signal.SIGTERM, _raise_stopped)
    if parent is not None:
        _stop_with_parent(parent)
    try:
        if isinstance(experiment, str):
            import pickle

            with open(experiment, "rb") as f:
                experiment = pickle.load(f)
        torch.set_num_threads(threads)
        _quiet_optuna()
        handle = open_study(storage, study_name, None, None)
        run_worker(handle, experiment, settings, on_trial=None if events is None else events.put)
        if events is not None:
            events.put(("done", None))
    except (KeyboardInterrupt, WorkerStopped):
        if events is not None:
            with contextlib.suppress(BaseException):
                events.put(("stopped", None))
        os._exit(130)
    except BaseException as exc:
        if events is not None:
            with contextlib.suppress(BaseException):
                events.put(("error", f"{type(exc).__name__}: {exc}"))
        os._exit(1)


def _quiet_optuna() -> None:
    import warnings

    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_workers(storage: str, study_name: str, experiment: Experiment, settings: WorkerSettings, workers: int,
                threads: int = 1, on_trial: Callable[[TrialOutcome], None] | None = None) -> None:
    """Run ``workers`` worker processes on the study until it is done; ``on_trial`` runs here for each finished
    trial. A worker's error is raised here as :class:`StudyError`; Ctrl-C stops every worker (each marks its
    running trial interrupted) and is raised here as ``KeyboardInterrupt``."""
    import multiprocessing
    import pickle
    import tempfile

    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    # The experiment (its data) goes to the workers through a file: starting a process then only forks and
    # execs, so the moment in which Ctrl-C is ignored here (for the children to inherit) is short.
    with tempfile.NamedTemporaryFile(prefix="rnndrop-experiment-", suffix=".pickle", delete=False) as f:
        pickle.dump(experiment, f)
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the children: Ctrl-C reaches only us
        try:
            procs = [ctx.Process(target=worker_process, daemon=True,
                                 args=(storage, study_name, f.name, settings, threads, events, os.getpid()))
                     for _ in range(workers)]
            for p in procs:
                p.start()
        finally:
            signal.signal(signal.SIGINT, old)
        _collect(procs, events, workers, on_trial)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(f.name)


def _collect(procs: list[Any], events: Any, workers: int, on_trial: Callable[[TrialOutcome], None] | None) -> None:
    """Pass the workers' outcomes to ``on_trial`` until every worker is done; stop them on any exception."""
    finished, errors = 0, []
    try:
        while finished < workers:
            try:
                item = events.get(timeout=0.5)
            except Exception:  # queue.Empty
                if all(not p.is_alive() for p in procs) and events.empty():
                    break
                continue
            if isinstance(item, TrialOutcome):
                if on_trial is not None:
                    on_trial(item)
            else:
                finished += 1
                if item[0] == "error":
                    errors.append(item[1])
    except BaseException:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=30)
        raise
    for p in procs:
        p.join()
    if errors:
        raise StudyError(f"a worker failed: {errors[0]}")


def trials_json(handle: StudyHandle) -> list[dict[str, Any]]:
    """Every rnndrop trial of the study as a JSON-ready record (state, unit, value, user attributes)."""
    out = []
    for t in handle.trials():
        unit = _unit_of(t)
        if unit is None:
            continue
        out.append({"number": t.number, "state": t.state.name, "phase": unit.phase, "strategy": unit.strategy,
                    "seed": unit.seed, "rate": t.params.get("rate", unit.rate), "value": t.value,
                    "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                    **{k: v for k, v in t.user_attrs.items() if k not in ("phase",)}})
    return json.loads(json.dumps(_jsonable(out)))
