"""The dropout strategies ``rnndrop compare`` trains, all on one base model.

Base model (:class:`SequenceClassifier`): ``pre`` (a dropout on the input sequence, or identity) →
one recurrent layer (``rnndrop.LSTM`` / ``GRU`` / ``RNN``, batch first, ``lengths=`` for right padding,
with the strategy's in-layer dropout options) → ``post`` (a dropout on the final state, or identity) →
a linear head on the state at each sequence's last real step. Only the dropout differs between
strategies; with the same seed every strategy starts from the same weights and sees the same batches.

The language-model mode uses :class:`CharLanguageModel` instead: a character embedding → ``pre`` →
the recurrent layer → ``post`` on every step's output → a linear head at every step.

Each strategy is a named preset with one rate ``p`` (``--rate``, or ``--rates NAME=P``). A strategy
whose feature is not in the installed rnndrop is reported as unavailable, never imitated — except the
two input-sequence dropouts ``noise_shape`` and ``spatial``, which fall back to a local, clearly
labelled ``(B, 1, C)`` mask module when ``rnndrop.Dropout`` / ``rnndrop.SpatialDropout1d`` are absent.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import rnndrop

CELLS = ("lstm", "gru", "rnn")


# ---------------------------------------------------------------------------------------------- model
def recurrent_layer(
    cell: str, input_size: int, hidden_size: int, rnn_kwargs: dict[str, Any] | None
) -> rnndrop.RecurrentBase:
    """The one batch-first rnndrop layer of the compared models, ``cell`` in :data:`CELLS`."""
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    layer = {"lstm": rnndrop.LSTM, "gru": rnndrop.GRU, "rnn": rnndrop.RNN}[cell]
    return layer(input_size, hidden_size, batch_first=True, **(rnn_kwargs or {}))


class SequenceClassifier(nn.Module):
    """``pre`` → one recurrent layer → ``post`` → linear head on the last real step's state.

    Args:
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        input_size: channels ``C`` of the input ``(batch, time, C)``.
        hidden_size: units of the recurrent layer.
        num_classes: outputs of the head.
        pre: module applied to the input sequence ``(batch, time, C)`` (default identity).
        post: module applied to the final state ``(batch, hidden)`` (default identity).
        rnn_kwargs: extra keyword arguments of the recurrent layer (its dropout options).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_classes: int,
        *,
        pre: nn.Module | None = None,
        post: nn.Module | None = None,
        rnn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.pre = pre if pre is not None else nn.Identity()
        self.rnn = recurrent_layer(cell, input_size, hidden_size, rnn_kwargs)
        self.post = post if post is not None else nn.Identity()
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, time, C)`` right-padded, ``lengths`` ``(batch,)`` → logits ``(batch, classes)``."""
        _, state = self.rnn(self.pre(x), lengths=lengths)
        h = state[0] if isinstance(state, tuple) else state  # (num_layers, batch, hidden)
        return self.head(self.post(h[-1]))

    def stochastic_parts(self) -> list[nn.Module]:
        """The parts that draw random masks in training mode (what MC dropout switches on)."""
        parts = [m for m in (self.pre, self.post) if not isinstance(m, nn.Identity)]
        if not self.rnn.mask_spec.is_empty():
            parts.append(self.rnn)
        return parts


class CharLanguageModel(nn.Module):
    """Embedding → ``pre`` → one recurrent layer → ``post`` → linear head at every step.

    Args:
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        vocab_size: number of symbols (input ids and output classes).
        hidden_size: units of the recurrent layer.
        embed_size: width of the character embedding the recurrent layer reads.
        pre: module applied to the embedded sequence ``(batch, time, embed_size)``.
        post: module applied to the output sequence ``(batch, time, hidden)``.
        rnn_kwargs: extra keyword arguments of the recurrent layer.
    """

    def __init__(
        self,
        cell: str,
        vocab_size: int,
        hidden_size: int,
        embed_size: int = 32,
        *,
        pre: nn.Module | None = None,
        post: nn.Module | None = None,
        rnn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.pre = pre if pre is not None else nn.Identity()
        self.rnn = recurrent_layer(cell, embed_size, hidden_size, rnn_kwargs)
        self.post = post if post is not None else nn.Identity()
        self.head = nn.Linear(hidden_size, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` ``(batch, time)`` ids → next-symbol logits ``(batch, time, vocab)``."""
        out, _ = self.rnn(self.pre(self.embed(x)), lengths=lengths)
        return self.head(self.post(out))

    stochastic_parts = SequenceClassifier.stochastic_parts


class LocalChannelDropout(nn.Module):
    """LOCAL FALLBACK used only when rnndrop lacks ``Dropout(noise_shape=...)`` / ``SpatialDropout1d``.

    Input ``(batch, time, C)``; in training it multiplies by a ``Bernoulli(1-p)/(1-p)`` mask of shape
    ``(batch, 1, C)`` (the same mask at every timestep = Keras ``SpatialDropout1D`` = ``Dropout`` with
    ``noise_shape=(None, 1, None)``); identity in eval mode.
    """

    masks_per_sample = True  # each row draws its own mask (lets rnndrop.mc_predict vectorize)

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], 1, x.shape[2], dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p} [rnndrop compare local fallback]"


# ---------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Parts:
    """What a strategy adds to the base model, and which implementation provides it."""

    pre: nn.Module | None = None
    post: nn.Module | None = None
    rnn_kwargs: dict[str, Any] = field(default_factory=dict)
    implementation: str = ""


@dataclass(frozen=True)
class Strategy:
    """A named dropout preset.

    Attributes:
        name: identifier used by ``--strategies`` and in the outputs.
        drops: what is dropped, with the mask's shape and lifetime (one line).
        reference: the paper or library it comes from.
        build: ``(p, cell) -> Parts``.
        needs: constructor arguments of the recurrent layers this preset uses (availability check).
        cells: cells it applies to.
    """

    name: str
    drops: str
    reference: str
    build: Callable[[float, str], Parts]
    needs: tuple[str, ...] = ()
    cells: tuple[str, ...] = CELLS

    def availability(self, cell: str) -> str | None:
        """``None`` when the strategy can run for ``cell`` here, else the reason it cannot."""
        if cell not in self.cells:
            return f"not defined for the {cell.upper()} cell"
        if self.needs:
            layer = {"lstm": rnndrop.LSTM, "gru": rnndrop.GRU, "rnn": rnndrop.RNN}[cell]
            params = inspect.signature(layer).parameters
            missing = [n for n in self.needs if n not in params]
            if missing:
                return f"rnndrop.{layer.__name__} has no {', '.join(missing)} argument (not in this version)"
        return None


def _has_noise_shape_dropout() -> bool:
    cls = getattr(rnndrop, "Dropout", None)
    return cls is not None and "noise_shape" in inspect.signature(cls).parameters


def _per_step(p: float, cell: str) -> Parts:
    if hasattr(rnndrop, "Dropout"):
        return Parts(pre=rnndrop.Dropout(p), implementation="rnndrop.Dropout(p)")
    return Parts(pre=nn.Dropout(p), implementation="torch.nn.Dropout(p)")


def _noise_shape(p: float, cell: str) -> Parts:
    if _has_noise_shape_dropout():
        return Parts(
            pre=rnndrop.Dropout(p, noise_shape=(None, 1, None)),
            implementation="rnndrop.Dropout(p, noise_shape=(None, 1, None))",
        )
    return Parts(pre=LocalChannelDropout(p), implementation="local fallback (rnndrop.Dropout missing)")


def _spatial(p: float, cell: str) -> Parts:
    if hasattr(rnndrop, "SpatialDropout1d"):
        return Parts(pre=rnndrop.SpatialDropout1d(p), implementation="rnndrop.SpatialDropout1d(p)")
    return Parts(pre=LocalChannelDropout(p), implementation="local fallback (rnndrop.SpatialDropout1d missing)")


def _output(p: float, cell: str) -> Parts:
    if hasattr(rnndrop, "Dropout"):
        return Parts(post=rnndrop.Dropout(p), implementation="rnndrop.Dropout(p) on the final state")
    return Parts(post=nn.Dropout(p), implementation="torch.nn.Dropout(p) on the final state")


def _layer(**options: Any) -> Callable[[float, str], Parts]:
    """A preset made of recurrent-layer arguments; the value ``"p"`` stands for the rate."""

    def build(p: float, cell: str) -> Parts:
        kwargs = {k: (p if v == "p" else v) for k, v in options.items()}
        shown = ", ".join(f"{k}={v!r}" if v != "p" else f"{k}=p" for k, v in options.items())
        return Parts(rnn_kwargs=kwargs, implementation=f"rnndrop.{cell.upper()}({shown})")

    return build


def _zoneout(p: float, cell: str) -> Parts:
    kwargs = {"zoneout_hidden": p, **({"zoneout_cell": p} if cell == "lstm" else {})}
    shown = "zoneout_hidden=p" + (", zoneout_cell=p" if cell == "lstm" else "")
    return Parts(rnn_kwargs=kwargs, implementation=f"rnndrop.{cell.upper()}({shown})")


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("none", "nothing", "baseline", lambda p, cell: Parts(implementation="no dropout")),
    Strategy(
        "input_dropout_per_step",
        "input features x_t, a fresh (B, T, C) mask at every element and timestep",
        "torch.nn.Dropout / Keras Dropout() before the RNN",
        _per_step,
    ),
    Strategy(
        "noise_shape",
        "input features x_t, one (B, 1, C) mask per sequence reused at every timestep",
        "Keras Dropout(noise_shape=(B, 1, C))",
        _noise_shape,
    ),
    Strategy(
        "spatial",
        "whole input channels for all timesteps, (B, 1, C) mask (same distribution as noise_shape)",
        "Keras SpatialDropout1D; Tompson et al. 2015",
        _spatial,
    ),
    Strategy(
        "output_dropout",
        "the RNN's output before the head: the final state, a (B, H) mask (language model: every step, (B, T, H))",
        "Zaremba et al. 2014 (non-recurrent connections)",
        _output,
    ),
    Strategy(
        "keras_input",
        "x_t inside the layer, one (B, C) mask per sequence shared by all gates",
        "Keras LSTM(dropout=p); Gal & Ghahramani 2016",
        _layer(input_dropout="p"),
    ),
    Strategy(
        "recurrent",
        "h_{t-1} before the recurrent weights, one (B, H) mask per sequence shared by all gates",
        "Keras recurrent_dropout; Gal & Ghahramani 2016 (tied)",
        _layer(recurrent_dropout="p"),
    ),
    Strategy(
        "keras_both",
        "x_t and h_{t-1}, an independent mask per gate (4 for LSTM, 3 for GRU), one per sequence",
        "Keras LSTM(dropout=p, recurrent_dropout=p) exactly; Gal & Ghahramani 2016 (untied)",
        _layer(input_dropout="p", recurrent_dropout="p", gate_masks="per_gate"),
    ),
    Strategy(
        "keras_both_shared",
        "x_t and h_{t-1}, one mask per sequence shared by all gates",
        "Gal & Ghahramani 2016 (tied)",
        _layer(input_dropout="p", recurrent_dropout="p", gate_masks="shared"),
        cells=("lstm", "gru"),  # a simple RNN has one gate: identical to keras_both
    ),
    Strategy(
        "weight_dropout",
        "entries of the recurrent weight matrix W_hh, one mask per batch, every timestep",
        "DropConnect (Wan et al. 2013); AWD-LSTM WeightDrop (Merity et al. 2017)",
        _layer(weight_dropout="p"),
        needs=("weight_dropout",),
    ),
    Strategy(
        "zoneout",
        "state updates: each unit of h (and c) keeps its previous value with probability p, per step",
        "Krueger et al. 2016",
        _zoneout,
        needs=("zoneout_hidden",),
    ),
    Strategy(
        "semeniuta",
        "the candidate update (LSTM g / GRU n), one mask per sequence; memory is never erased",
        "Semeniuta et al. 2016, recurrent dropout without memory loss",
        _layer(candidate_dropout="p"),
        needs=("candidate_dropout",),
        cells=("lstm", "gru"),
    ),
)

BY_NAME: dict[str, Strategy] = {s.name: s for s in STRATEGIES}


INITS = ("torch", "keras")


def build_model(
    strategy: Strategy, p: float, cell: str, input_size: int, hidden_size: int, num_classes: int,
    *, language_model: bool = False, embed_size: int = 32, init: str = "torch",
) -> tuple[SequenceClassifier | CharLanguageModel, str]:
    """The base model with ``strategy`` at rate ``p``, and a description of the implementation used.

    ``language_model=True`` builds a :class:`CharLanguageModel` over ``num_classes`` symbols
    (``input_size`` is then ignored). ``init="keras"`` starts every layer from Keras 3's default
    initialisers: the recurrent layer with ``init="keras"`` (:mod:`rnndrop.init`), the head as a Keras
    ``Dense`` (glorot-uniform kernel, zero bias), the embedding as a Keras ``Embedding`` (``U(±0.05)``);
    ``"torch"`` keeps torch.nn's defaults.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    parts = strategy.build(p, cell)
    rnn_kwargs = {**parts.rnn_kwargs, **({"init": "keras"} if init == "keras" else {})}
    model: SequenceClassifier | CharLanguageModel
    if language_model:
        model = CharLanguageModel(
            cell, num_classes, hidden_size, embed_size, pre=parts.pre, post=parts.post, rnn_kwargs=rnn_kwargs
        )
    else:
        model = SequenceClassifier(
            cell, input_size, hidden_size, num_classes, pre=parts.pre, post=parts.post, rnn_kwargs=rnn_kwargs
        )
    if init == "keras":
        with torch.no_grad():
            nn.init.xavier_uniform_(model.head.weight)  # Keras Dense: glorot_uniform over (in, out)
            nn.init.zeros_(model.head.bias)
            if isinstance(model, CharLanguageModel):
                nn.init.uniform_(model.embed.weight, -0.05, 0.05)  # Keras Embedding's default
    return model, parts.implementation


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


def mask_panels(
    model: SequenceClassifier | CharLanguageModel, steps: int, seed: int = 0, max_units: int = 16
) -> list[MaskPanel]:
    """Sample one training-mode mask of every dropout in ``model`` for one sequence of ``steps`` steps.

    Pre/post modules are applied to tensors of ones (so the output *is* the mask); the recurrent
    layer's masks come from its public ``sample_masks``. Hidden-size axes show the first
    ``max_units`` units. Entries are rescaled to 0 (dropped) / 1 (kept).
    """
    torch.manual_seed(seed)
    panels: list[MaskPanel] = []
    c = model.rnn.input_size
    was_training = model.training
    model.train()
    try:
        with torch.no_grad():
            if not isinstance(model.pre, nn.Identity):
                m = model.pre(torch.ones(1, steps, c))[0]
                panels.append(MaskPanel("x_t before the layer", (m > 0).float().numpy(), "input channel"))
            masks = model.rnn.sample_masks(1, steps).layers[0][0]
            h = min(max_units, model.rnn.hidden_size)
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
            if not isinstance(model.post, nn.Identity):
                hs = model.rnn.hidden_size
                if isinstance(model, CharLanguageModel):  # dropout on every step's output
                    m = (model.post(torch.ones(1, steps, hs))[0, :, :h] > 0).float().numpy()
                    panels.append(MaskPanel("RNN outputs before the head", m, f"hidden unit (first {h})"))
                else:
                    m = (model.post(torch.ones(1, hs))[0, :h] > 0).float().numpy()
                    grid = np.full((steps, h), np.nan)
                    grid[-1] = m
                    panels.append(MaskPanel("final state before the head (last step only)", grid,
                                            f"hidden unit (first {h})"))
    finally:
        model.train(was_training)
    return panels
