"""PNG figures of a study (matplotlib, Agg backend: no display needed; imported only when plotting).

* ``dose_response.png`` — per strategy, the validation score of the search against the rate: the mean over
  the search seeds, a band from the lowest to the highest seed, each seed's point (hollow: pruned), the
  baseline ``none`` at rate 0 (its final trials on the same seeds) and a star at the tuned rate.
* ``validation_curves.png`` — per strategy, validation NLL and accuracy per epoch, one line per seed,
  a dot at the selected (best validation loss) epoch.
* ``accuracy.png`` — test accuracy (language model: bits per character) per strategy, mean ± std over
  seeds, deterministic and MC dropout,
  the no-dropout mean as a reference line.
* ``masks.png`` — for each strategy, one sampled training-mode mask over (time × features): what it drops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, works without a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from .models import MaskPanel
from .report import atomic_write


def _save(fig: Any, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def validation_curves(runs: Sequence[dict[str, Any]], order: Sequence[str], path: Path) -> None:
    names = [n for n in order if any(r["strategy"] == n for r in runs)]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, sharex=True)
    def floats(values: Sequence[float | None]) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=float)

    top = float(np.nanmax([np.nanmax(floats(r["history"]["val_loss"])) for r in runs]))
    top = top if math.isfinite(top) else 3.0
    for ax, name in zip(axes.flat, names):
        acc_ax = ax.twinx()
        for k, r in enumerate(sorted((r for r in runs if r["strategy"] == name), key=lambda r: r["seed"])):
            color = f"C{k}"
            epochs = np.arange(1, len(r["history"]["val_loss"]) + 1)
            loss = floats(r["history"]["val_loss"])
            ax.plot(epochs, loss, color=color, lw=1.2)
            acc_ax.plot(epochs, floats(r["history"]["val_accuracy"]), color=color, lw=0.8, ls="--", alpha=0.7)
            b = r["best_epoch"]
            if b:
                ax.plot([b], [loss[b - 1]], "o", color=color, ms=4)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, min(top, 3.0) * 1.05)
        acc_ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        acc_ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    fig.supxlabel("epoch")
    fig.supylabel("validation NLL (solid; dot = selected epoch)")
    fig.text(1.0, 0.5, "validation accuracy (dashed)", rotation=90, va="center", ha="left")
    fig.suptitle("Validation curves (one colour per seed)")
    fig.tight_layout()
    _save(fig, path)


def accuracy_bars(
    rows: Sequence[dict[str, Any]], path: Path, metric: str = "accuracy", label: str = "test accuracy"
) -> Any:
    """Test ``metric`` per strategy at its rate (y labels: ``name (rate)``), mean ± std over seeds,
    deterministic and (when measured) MC dropout; the legend sits above the axes. Returns the figure
    (closed)."""
    names = [r["strategy"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 0.38 * len(rows) + 1.4))
    series = [(-0.15, "", "deterministic", "C0")]
    if rows and f"mc_{metric}_mean" in rows[0]:
        series.append((0.15, "mc_", "MC dropout", "C1"))
    for offset, prefix, series_name, color in series:
        mean = np.array([r[f"{prefix}{metric}_mean"] for r in rows])
        std = np.nan_to_num(np.array([r[f"{prefix}{metric}_std"] for r in rows]))
        ax.errorbar(mean, y + offset, xerr=std, fmt="o", color=color, label=series_name, capsize=3, ms=4)
    base = next((r for r in rows if r["strategy"] == "none"), None)
    if base is not None:
        ax.axvline(base[f"{metric}_mean"], color="grey", lw=0.8, ls=":", label="none (mean)")
    ax.set_yticks(y, [f"{n} ({r['rate']:g})" for n, r in zip(names, rows)])
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} (mean ± std over seeds)")
    # Above the axes, never over the data: a legend inside may hide a strategy's marker.
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3, frameon=False, borderaxespad=0.0)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _join(panels: Sequence[MaskPanel]) -> tuple[np.ndarray, str, str, str]:
    """Panels of one strategy side by side (blank columns between): image, title, x label, y label."""
    if len(panels) == 1 or len({p.values.shape[0] for p in panels}) > 1:
        p = panels[0]
        return p.values, p.title, p.xlabel, p.ylabel
    gap = np.full((panels[0].values.shape[0], 2), np.nan)
    parts: list[np.ndarray] = []
    for k, p in enumerate(panels):
        parts += [gap, p.values] if k else [p.values]
    return (np.concatenate(parts, axis=1), " | ".join(p.title for p in panels),
            " | ".join(p.xlabel for p in panels), panels[0].ylabel)


def mask_patterns(panels: Sequence[tuple[str, Sequence[MaskPanel]]], path: Path) -> None:
    """``panels``: (strategy, its mask panels); dark = dropped, light = kept, white = not applicable.

    One picture per strategy; a strategy with several masks (input and recurrent, h and c) shows
    them side by side when they share the time axis.
    """
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), squeeze=False)
    cmap = ListedColormap(["#1f3b73", "#dbe6f6"]).with_extremes(bad="white")
    for ax, (name, mine) in zip(axes.flat, panels):
        if not mine:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=9, fontweight="bold")
            ax.text(0.5, 0.5, "nothing dropped", ha="center", va="center", fontsize=9)
            continue
        image, title, xlabel, ylabel = _join(mine)
        ax.imshow(np.ma.masked_invalid(image), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(f"{name}\n{title}", fontsize=7.5)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel(ylabel, fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle("What each strategy drops: one sampled training mask for one sequence (dark = dropped)",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def dose_response(results: Any, path: Path, label: str = "validation score") -> None:
    """Validation score against rate for every searched strategy (see the module docstring)."""
    names = [n for n, info in results.search.items() if info["grid"]]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows), squeeze=False, sharey=True)
    search_seeds = list(results.plan["search_seeds"])
    base = [results.baseline_validation[s] for s in search_seeds if s in results.baseline_validation]
    finite_values = [v for n in names for g in results.search[n]["grid"] for v in g["values"] if v is not None]
    for ax, name in zip(axes.flat, names):
        grid = results.search[name]["grid"]
        rates = np.array([g["rate"] for g in grid])
        mean = np.array([g["mean"] for g in grid], dtype=float)
        low = np.array([g["low"] for g in grid], dtype=float)
        high = np.array([g["high"] for g in grid], dtype=float)
        if base:
            rates_all = np.concatenate([[0.0], rates])
            mean = np.concatenate([[float(np.mean(base))], mean])
            low = np.concatenate([[min(base)], low])
            high = np.concatenate([[max(base)], high])
            ax.plot([0.0] * len(base), base, "s", color="grey", ms=3.5, label="none (rate 0)")
        else:
            rates_all = rates
        ax.fill_between(rates_all, low, high, color="C0", alpha=0.2, lw=0, label="range over seeds")
        ax.plot(rates_all, mean, "-", color="C0", lw=1.4, label="mean over seeds")
        for g in grid:
            for seed, v in zip(g["seeds"], g["values"]):
                if v is None:
                    continue
                pruned = seed in g.get("pruned_seeds", [])
                ax.plot([g["rate"]], [v], "o", ms=3.5, color=f"C{1 + search_seeds.index(seed) % 8}",
                        mfc="none" if pruned else None)
        chosen = results.search[name]["rate"]
        if chosen is not None:
            g = next(g for g in grid if g["rate"] == chosen)
            ax.plot([chosen], [g["mean"]], "*", color="C3", ms=12, label=f"tuned rate {chosen:g}", zorder=5)
        ax.set_title(f"{name}: tuned {chosen:g}" if chosen is not None else f"{name}: search unfinished", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlim(-0.03, max(rates_all) + 0.05)
    if finite_values:
        lo, hi = min(finite_values + base), max(finite_values + base)
        pad = 0.08 * (hi - lo or 1.0)
        for ax in axes.flat[: len(names)]:
            ax.set_ylim(lo - pad, hi + pad)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    handles, texts = axes.flat[0].get_legend_handles_labels()
    keep = [(h, t) for h, t in zip(handles, texts) if not t.startswith("tuned")]
    fig.legend([h for h, _ in keep], [t for _, t in keep], loc="upper center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.supxlabel("dropout rate (0 = none; star = tuned rate; hollow = pruned trial)")
    fig.supylabel(f"{label} (search seeds {', '.join(map(str, search_seeds))})")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    _save(fig, path)
