"""Draw the figure of docs/dropout.md: dropout mask patterns over (time x features).

Every pattern is sampled from rnndrop itself — the dropout modules applied to a tensor of ones,
and a recurrent layer's ``sample_masks`` — for one sequence, with a fixed seed:

    python docs/scripts/mask_patterns.py              # writes docs/mask_patterns.png
    python docs/scripts/mask_patterns.py --out x.png

Needs matplotlib (``pip install matplotlib``); :func:`mask_patterns` alone needs only torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import rnndrop

STEPS = 20  # time axis of every panel
FEATURES = 12  # feature axis (input size = hidden size)
P = 0.3  # drop rate of every panel (zoneout: keep-previous rate)
SEED = 3
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mask_patterns.png"


def _one_sequence(module: torch.nn.Module, generator: torch.Generator) -> np.ndarray:
    """The mask a training call of ``module`` draws for one (1, STEPS, FEATURES) sequence."""
    module.train()
    return module(torch.ones(1, STEPS, FEATURES), generator=generator)[0].numpy()


def _over_time(mask: torch.Tensor) -> np.ndarray:
    """A time-locked ``(G, 1, F)`` layer mask as ``(STEPS, G * F)``: gates side by side."""
    gates = mask[:, 0, :]  # (G, F)
    return gates.reshape(1, -1).expand(STEPS, -1).numpy()


def mask_patterns(seed: int = SEED) -> dict[str, np.ndarray]:
    """Panel title -> ``(STEPS, columns)`` mask: ``0`` dropped, ``1/(1-p)`` kept (zoneout: 1 = keep previous).

    Recurrent per-gate masks put the LSTM's four gates ``i, f, g, o`` side by side.
    """
    g = torch.Generator().manual_seed(seed)
    panels = {
        "Dropout(p)\nper element and step": _one_sequence(rnndrop.Dropout(P), g),
        "Dropout(p, noise_shape=(None, None, 1))\nwhole timesteps dropped": _one_sequence(
            rnndrop.Dropout(P, (None, None, 1)), g
        ),
        "SpatialDropout1d(p) = LockedDropout(p, batch_first=True)\nwhole channels, all steps": _one_sequence(
            rnndrop.SpatialDropout1d(P), g
        ),
    }
    layer = rnndrop.LSTM(FEATURES, FEATURES, input_dropout=P)
    panels["LSTM(input_dropout=p)\nx_t mask, time-locked"] = _over_time(
        layer.sample_masks(1, STEPS, generator=g).layers[0][0].input
    )
    layer = rnndrop.LSTM(FEATURES, FEATURES, recurrent_dropout=P, gate_masks="per_gate")
    panels["LSTM(recurrent_dropout=p, gate_masks='per_gate')\nh_{t-1} mask of gates i | f | g | o"] = _over_time(
        layer.sample_masks(1, STEPS, generator=g).layers[0][0].recurrent
    )
    layer = rnndrop.LSTM(FEATURES, FEATURES, zoneout_hidden=P)
    zone = layer.sample_masks(1, STEPS, generator=g).layers[0][0].zoneout_h  # (T, 1, H) unscaled draws
    panels["LSTM(zoneout_hidden=p)\nunits keeping h_{t-1}, fresh per step"] = zone[:, 0, :].numpy()
    return panels


def draw(out: Path, seed: int = SEED) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = mask_patterns(seed)
    fig, grid = plt.subplots(2, 3, figsize=(11, 7.5), constrained_layout=True)
    axes = grid.flatten()
    kept, dropped = "#f2f2f2", "#1f4e79"
    for ax, (title, mask) in zip(axes, panels.items()):
        zone = "zoneout" in title
        # Dropout panels: dark = dropped (0). Zoneout panel: dark = unit keeps its previous value.
        hit = mask != 0 if zone else mask == 0
        ax.imshow(hit, cmap=ListedColormap([kept, dropped]), vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("features" if mask.shape[1] == FEATURES else "features (4 gates)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([0, STEPS - 1])
        if mask.shape[1] > FEATURES:
            for k in range(1, mask.shape[1] // FEATURES):
                ax.axvline(k * FEATURES - 0.5, color="#c00000", linewidth=1)
    for ax in grid[:, 0]:
        ax.set_ylabel("time step", fontsize=8)
    title = f"rnndrop mask patterns for one sequence, p = {P} (dark = dropped; last panel: zoned out)"
    fig.suptitle(title, fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    print(draw(args.out, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
