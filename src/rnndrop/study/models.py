"""The two base models of ``rnndrop compare`` (built without dropout; a study applies each strategy with
:func:`rnndrop.study.apply_strategy`), and the pictures of the masks a model draws.

* :class:`SequenceClassifier`: one recurrent layer (batch first, ``lengths=`` for right padding) and a
  linear head on the state at each sequence's last real step.
* :class:`CharLanguageModel`: a character embedding, one recurrent layer, a linear head at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import rnndrop

from ..layers import RecurrentBase
from .strategies import CELLS, InputDropout, OutputDropout, recurrent_layers

INITS = ("torch", "keras")


def recurrent_layer(cell: str, input_size: int, hidden_size: int, init: str = "torch") -> RecurrentBase:
    """The one batch-first rnndrop layer of the built-in models, ``cell`` in :data:`CELLS`, no dropout."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    layer = {"lstm": rnndrop.LSTM, "gru": rnndrop.GRU, "rnn": rnndrop.RNN}[cell]
    return layer(input_size, hidden_size, batch_first=True, **({"init": "keras"} if init == "keras" else {}))


def _keras_dense_(linear: nn.Linear) -> None:
    with torch.no_grad():
        nn.init.xavier_uniform_(linear.weight)  # Keras Dense: glorot_uniform over (in, out)
        nn.init.zeros_(linear.bias)


class SequenceClassifier(nn.Module):
    """One recurrent layer → linear head on the last real step's state.

    Args:
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        input_size: channels ``C`` of the input ``(batch, time, C)``.
        hidden_size: units of the recurrent layer.
        num_classes: outputs of the head.
        init: ``"torch"`` (torch.nn's defaults) or ``"keras"`` (Keras 3's: :mod:`rnndrop.init` for the
            layer, glorot-uniform / zero bias for the head, as a Keras ``Dense``).
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_classes: int, init: str = "torch") -> None:
        super().__init__()
        self.rnn = recurrent_layer(cell, input_size, hidden_size, init)
        self.head = nn.Linear(hidden_size, num_classes)
        if init == "keras":
            _keras_dense_(self.head)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, time, C)`` right-padded, ``lengths`` ``(batch,)`` → logits ``(batch, classes)``."""
        _, state = self.rnn(x, lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state  # (num_layers, batch, hidden)
        return self.head(h[-1])


class CharLanguageModel(nn.Module):
    """Embedding → one recurrent layer → linear head at every step.

    Args:
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        vocab_size: number of symbols (input ids and output classes).
        hidden_size: units of the recurrent layer.
        embed_size: width of the character embedding the recurrent layer reads.
        init: ``"torch"`` or ``"keras"`` (the embedding then ``U(±0.05)``, Keras's default).
    """

    def __init__(self, cell: str, vocab_size: int, hidden_size: int, embed_size: int = 32,
                 init: str = "torch") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.rnn = recurrent_layer(cell, embed_size, hidden_size, init)
        self.head = nn.Linear(hidden_size, vocab_size)
        if init == "keras":
            _keras_dense_(self.head)
            with torch.no_grad():
                nn.init.uniform_(self.embed.weight, -0.05, 0.05)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, time)`` ids → next-symbol logits ``(batch, time, vocab)``."""
        out, _ = self.rnn(self.embed(x), lengths=lengths)
        return self.head(out)


# ---------------------------------------------------------------------------------------------- mask pictures
@dataclass(frozen=True)
class MaskPanel:
    """One picture of what a strategy drops: ``values`` ``(rows, cols)``, 0 = dropped, NaN = separator."""

    title: str
    values: np.ndarray
    xlabel: str
    ylabel: str = "time step"


def _gates_side_by_side(mask: torch.Tensor, steps: int) -> np.ndarray:
    """``(G, 1, F)`` time-locked mask → ``(steps, G*F + G-1)`` with NaN columns between gates."""
    g = mask.shape[0]
    cols = []
    for k in range(g):
        cols.append(np.repeat(mask[k, 0].numpy()[None, :], steps, axis=0))
        if k < g - 1:
            cols.append(np.full((steps, 1), np.nan))
    return np.concatenate(cols, axis=1)


def mask_panels(model: nn.Module, steps: int, seed: int = 0, max_units: int = 16) -> list[MaskPanel]:
    """One training-mode draw of every dropout mask the model's first recurrent layer uses, for one sequence
    of ``steps`` steps, with the global torch generator seeded by ``seed``.

    The draws happen in the order of a forward call (the dropout before the layer, then the layer's own
    masks, then the dropout after it), so models whose masks follow the same law from the same stream
    show the same picture: ``noise_shape`` and ``spatial`` draw one ``(B, C)`` input mask and, seeded
    alike, the same one (their runs are identical too); ``keras_input`` draws that law from the layer's
    counter-based sampler (other numbers). Hidden-size axes show the first ``max_units`` units. Entries
    are 0 (dropped) or 1 (kept).
    """
    layers = recurrent_layers(model)
    if not layers:
        return []
    rnn = layers[0][1]
    torch.manual_seed(seed)
    panels: list[MaskPanel] = []
    c = rnn.input_size
    h = min(max_units, rnn.hidden_size)
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            before = getattr(rnn, "study_input_dropout", None)
            if isinstance(before, InputDropout):
                m = before(torch.ones(1, steps, c) if rnn.batch_first else torch.ones(steps, 1, c))
                m = m[0] if rnn.batch_first else m[:, 0]
                panels.append(MaskPanel("x_t before the layer", (m > 0).float().numpy(), "input channel"))
            masks = rnn.sample_masks(1, steps).layers[0][0]
            gate_note = lambda t: f" ({t.shape[0]} gates)" if t.shape[0] > 1 else ""  # noqa: E731
            if masks.input is not None:
                t = (masks.input > 0).float()
                panels.append(MaskPanel(f"x_t in the layer{gate_note(t)}", _gates_side_by_side(t, steps),
                                        "input channel"))
            if masks.recurrent is not None:
                t = (masks.recurrent[..., :h] > 0).float()
                panels.append(MaskPanel(f"h_(t-1) before W_hh{gate_note(t)}", _gates_side_by_side(t, steps),
                                        f"hidden unit (first {h})"))
            weight = getattr(masks, "weight_hh", None)
            if weight is not None:
                w = (weight[:h, :h] > 0).float().numpy()
                panels.append(MaskPanel("W_hh entries (same mask every step)", w, f"h unit (first {h})",
                                        ylabel=f"gate-i row (first {h})"))
            cand = getattr(masks, "candidate", None)
            if cand is not None:
                t = (cand[..., :h] > 0).float()
                panels.append(MaskPanel("candidate update g / n", _gates_side_by_side(t, steps),
                                        f"hidden unit (first {h})"))
            for attr, what in (("zoneout_h", "h"), ("zoneout_c", "c")):
                z = getattr(masks, attr, None)
                if z is not None:
                    # zoneout weight 1 = keep the previous value (the update is dropped)
                    panels.append(MaskPanel(f"zoneout {what}: update skipped", (z[:, 0, :h] == 0).float().numpy(),
                                            f"hidden unit (first {h})"))
            after = getattr(rnn, "study_output_dropout", None)
            if isinstance(after, OutputDropout):
                hs = rnn.proj_size or rnn.hidden_size
                m = (after.on_output(torch.ones(1, steps, hs))[0, :, :h] > 0).float().numpy()
                panels.append(MaskPanel("outputs after the layer (and h_n)", m, f"hidden unit (first {h})"))
    finally:
        model.train(was_training)
    return panels
