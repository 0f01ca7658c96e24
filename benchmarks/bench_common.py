"""What the CPU and CUDA benchmark scripts share: the dropout rate and the hand-written baseline."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

P = 0.25  # input and recurrent dropout rate of every dropout variant


class CellLoop(nn.Module):
    """The usual hand-written recurrent dropout: a Python loop over an nn cell, time-locked masks.

    Input ``(T, B, F)``; returns the outputs ``(T, B, H)``. Masks are drawn on the input's device.
    """

    def __init__(self, mode: str, input_size: int, hidden: int) -> None:
        super().__init__()
        self.mode = mode
        self.cell = (nn.LSTMCell if mode == "LSTM" else nn.GRUCell)(input_size, hidden)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b, _ = x.shape
        keep = 1.0 - P
        m_in = x.new_empty(b, x.shape[2]).bernoulli_(keep) / keep
        m_h = x.new_empty(b, self.hidden).bernoulli_(keep) / keep
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        outs = []
        for step in range(t):
            if self.mode == "LSTM":
                h, c = self.cell(x[step] * m_in, (h * m_h, c))
            else:
                h = self.cell(x[step] * m_in, h * m_h)
            outs.append(h)
        return torch.stack(outs)


def write_results(
    out_path: Path, *, machine: dict[str, Any], configs: dict[str, dict[str, int]], repeats: int, warmup: int,
    results: dict[str, Any], dropout: float = P, **extra: Any,
) -> None:
    """Write a run's JSON (date, machine, configs, settings, every round's figures) and say where.

    ``dropout``: the rate of the run's dropout variants (0 for a run without dropout)."""
    payload = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        **extra,
        "configs": configs,
        "repeats": repeats,
        "warmup": warmup,
        "dropout": dropout,
        "results": results,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out_path}")
