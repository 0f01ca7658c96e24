"""Train several runs of ``rnndrop compare`` at once, one process per core.

The models are small, so one run keeps one core busy with one torch thread; runs of different seeds or
strategies are independent, so ``--jobs N`` trains ``N`` of them side by side in worker processes
(``spawn``: a fresh interpreter each, safe with torch's thread pools). Every run seeds itself
(:func:`rnndrop.cli.runner.train_run`), so its record is the same whichever process trains it and in
whatever order: ``--jobs 1`` and ``--jobs 4`` give identical results. The parent writes each finished
run's file as it arrives, so an interruption keeps every finished run.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from typing import Any

from .data import Task
from .runner import TrainConfig

_TASK: Task | None = None  # the task of this worker process, sent once by the initializer


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _start_worker(task: Task, threads: int) -> None:
    import torch

    global _TASK
    _TASK = task
    torch.set_num_threads(threads)


def _train(job: tuple[int, str, float, TrainConfig]) -> tuple[int, str, dict[str, Any]]:
    from . import runner
    from .strategies import BY_NAME

    seed, strategy, rate, cfg = job
    assert _TASK is not None, "worker started without a task"
    return seed, strategy, runner.train_run(_TASK, BY_NAME[strategy], rate, seed, cfg)


def train_in_parallel(
    task: Task,
    jobs: Iterable[tuple[int, str, float]],
    cfg: TrainConfig,
    workers: int,
    on_done: Callable[[int, str, dict[str, Any]], None],
    threads: int = 1,
) -> None:
    """Train every ``(seed, strategy name, rate)`` of ``jobs`` in ``workers`` processes.

    ``on_done(seed, strategy, record)`` runs in this process as each run finishes (in completion order,
    the jobs being started in the given order). A worker's error is raised here; on any exception,
    Ctrl-C included, the workers are terminated (their unfinished runs are lost, finished ones were
    passed to ``on_done``).
    """
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers, initializer=_start_worker, initargs=(task, threads))
    try:
        for seed, name, record in pool.imap_unordered(_train, [(s, n, r, cfg) for s, n, r in jobs], chunksize=1):
            on_done(seed, name, record)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
