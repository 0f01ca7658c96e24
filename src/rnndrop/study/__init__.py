"""Which dropout, at which rate, for your own model: dropout studies on Optuna.

Importable without the CLI extra (matplotlib is needed only to draw plots); the study itself needs the
``study`` extra (``pip install 'rnndrop[study]'``: Optuna, SciPy).

* :func:`apply_strategy` — one call puts a dropout strategy at a rate into any model with recurrent
  layers (rnndrop's, or ``torch.nn``'s, converted), without changing the model's code.
* :func:`run_study` — the study: rates searched per strategy on validation data, every strategy at its
  tuned rate over the seeds, tested and compared with no dropout seed by seed; trials in an Optuna
  study (SQLite by default; PostgreSQL, MySQL or a journal file for many workers); results folder with
  JSON, CSV and plots. :func:`load_results` reads a study at any time.
* :data:`STRATEGIES` — the strategies (``none``, ``recurrent``, ``keras_both``, ``zoneout``, ...).

The ``rnndrop compare`` command is one client of this package (:mod:`rnndrop.study.protocol` is its
experiment).
"""

from __future__ import annotations

from .api import DEFAULT_STUDY, available_cores, load_results, run_study
from .engine import (
    DEFAULT_RATES,
    Experiment,
    FunctionExperiment,
    StudyError,
    StudyPlan,
    TrialContext,
    TrialOutcome,
    WorkerSettings,
)
from .results import StudyResults
from .strategies import (
    BY_NAME,
    STRATEGIES,
    Strategy,
    StrategyError,
    applied_strategy,
    apply_strategy,
    convert_recurrent_layers,
    recurrent_layers,
)

__all__ = [
    "BY_NAME",
    "DEFAULT_RATES",
    "DEFAULT_STUDY",
    "STRATEGIES",
    "Experiment",
    "FunctionExperiment",
    "Strategy",
    "StrategyError",
    "StudyError",
    "StudyPlan",
    "StudyResults",
    "TrialContext",
    "TrialOutcome",
    "WorkerSettings",
    "applied_strategy",
    "apply_strategy",
    "available_cores",
    "convert_recurrent_layers",
    "load_results",
    "recurrent_layers",
    "run_study",
]
