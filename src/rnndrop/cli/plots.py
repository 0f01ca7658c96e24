"""PNG figures of ``rnndrop compare`` (matplotlib, Agg backend: no display needed).

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

from .report import atomic_write
from .strategies import MaskPanel


def _save(fig: Any, path: Path) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)


def validation_curves(runs: Sequence[dict[str, Any]], order: Sequence[str], path: Path) -> None:
    names = [n for n in order if any(r["strategy"] == n for r in runs)]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False, sharex=True)
    top = max(max(r["history"]["val_loss"]) for r in runs)
    for ax, name in zip(axes.flat, names):
        acc_ax = ax.twinx()
        for k, r in enumerate(sorted((r for r in runs if r["strategy"] == name), key=lambda r: r["seed"])):
            color = f"C{k}"
            epochs = np.arange(1, len(r["history"]["val_loss"]) + 1)
            ax.plot(epochs, r["history"]["val_loss"], color=color, lw=1.2)
            acc_ax.plot(epochs, r["history"]["val_accuracy"], color=color, lw=0.8, ls="--", alpha=0.7)
            b = r["best_epoch"]
            ax.plot([b], [r["history"]["val_loss"][b - 1]], "o", color=color, ms=4)
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
) -> None:
    names = [r["strategy"] for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(6.5, 0.38 * len(rows) + 1.2))
    for offset, prefix, series, color in ((-0.15, "", "deterministic", "C0"), (0.15, "mc_", "MC dropout", "C1")):
        mean = np.array([r[f"{prefix}{metric}_mean"] for r in rows])
        std = np.nan_to_num(np.array([r[f"{prefix}{metric}_std"] for r in rows]))
        ax.errorbar(mean, y + offset, xerr=std, fmt="o", color=color, label=series, capsize=3, ms=4)
    base = next((r for r in rows if r["strategy"] == "none"), None)
    if base is not None:
        ax.axvline(base[f"{metric}_mean"], color="grey", lw=0.8, ls=":", label="none (mean)")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{label} (mean ± std over seeds)")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


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
