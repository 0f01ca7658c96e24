"""The dropout strategies a study compares, and :func:`apply_strategy`: one call that puts a strategy at a
rate into any model.

A strategy is a named placement of dropout with one rate ``p``:

* in-layer options of every recurrent layer (``input_dropout``, ``recurrent_dropout``, ``gate_masks``,
  ``weight_dropout``, ``zoneout_hidden`` / ``zoneout_cell``, ``candidate_dropout``);
* or a dropout module *before* every recurrent layer (on its input sequence: per element and step,
  one mask per sequence, or whole channels);
* or a dropout module *after* every recurrent layer (on its output sequence and its final hidden
  state ``h_n``; never on an LSTM's cell state).

:func:`apply_strategy` does it to a model as it is: rnndrop layers get their options set, ``torch.nn``
LSTM / GRU / RNN layers are first converted to rnndrop's (same parameters and state-dict keys), and
the before / after dropouts are attached to the recurrent layer itself (as child modules run by
forward hooks), so ``model.train()`` / ``model.eval()``, :func:`rnndrop.mc_predict` and the
state dict behave as for any dropout module, and the model's code is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnndrop

from ..layers import RecurrentBase
from ..masks import check_probability

CELLS = ("lstm", "gru", "rnn")
#: The in-layer options a strategy may set; a layer that already uses one is refused by apply_strategy.
LAYER_OPTIONS = ("input_dropout", "recurrent_dropout", "weight_dropout", "candidate_dropout", "zoneout_hidden",
                 "zoneout_cell")
BEFORE_KINDS = ("per_step", "noise_shape", "spatial")
_APPLIED = "study_strategy"  # attribute set on every layer a strategy was applied to: (name, rate)


class StrategyError(ValueError):
    """A strategy that cannot be applied to this model (with the reason and what to change)."""


@dataclass(frozen=True)
class Strategy:
    """A named dropout placement.

    Attributes:
        name: identifier (``--strategies``, the outputs).
        drops: what is dropped, with the mask's shape and lifetime (one line).
        reference: the paper or library it comes from.
        layer_options: ``(p, mode) -> dict`` of recurrent-layer options (``mode`` is ``"LSTM"``,
            ``"GRU"`` or ``"RNN"``).
        before: a dropout on each recurrent layer's input: ``"per_step"``, ``"noise_shape"``,
            ``"spatial"`` or ``None``.
        after: a dropout on each recurrent layer's outputs (output sequence and ``h_n``).
        cells: the cells it is defined for (lower case).
    """

    name: str
    drops: str
    reference: str
    layer_options: Callable[[float, str], dict[str, Any]] = lambda p, mode: {}
    before: str | None = None
    after: bool = False
    cells: tuple[str, ...] = CELLS

    def availability(self, cell: str) -> str | None:
        """``None`` when the strategy is defined for ``cell``, else the reason it is not."""
        if cell.lower() not in self.cells:
            return f"not defined for the {cell.upper()} cell"
        return None


def _options(**options: Any) -> Callable[[float, str], dict[str, Any]]:
    """Layer options where the value ``"p"`` stands for the rate."""
    return lambda p, mode: {k: (p if v == "p" else v) for k, v in options.items()}


def _zoneout(p: float, mode: str) -> dict[str, Any]:
    return {"zoneout_hidden": p, **({"zoneout_cell": p} if mode == "LSTM" else {})}


STRATEGIES: tuple[Strategy, ...] = (
    Strategy("none", "nothing", "baseline"),
    Strategy("input_dropout_per_step", "input features x_t, a fresh (B, T, C) mask at every element and timestep",
             "torch.nn.Dropout / Keras Dropout() before the RNN", before="per_step"),
    Strategy("noise_shape", "input features x_t, one (B, 1, C) mask per sequence reused at every timestep",
             "Keras Dropout(noise_shape=(B, 1, C))", before="noise_shape"),
    Strategy("spatial", "whole input channels for all timesteps, (B, 1, C) mask (same distribution as noise_shape)",
             "Keras SpatialDropout1D; Tompson et al. 2015", before="spatial"),
    Strategy("output_dropout",
             "the RNN's outputs: every step's output (B, T, H) and the final state h_n (B, H), fresh masks",
             "Zaremba et al. 2014 (non-recurrent connections)", after=True),
    Strategy("keras_input", "x_t inside the layer, one (B, C) mask per sequence shared by all gates",
             "Keras LSTM(dropout=p); Gal & Ghahramani 2016", _options(input_dropout="p")),
    Strategy("recurrent", "h_{t-1} before the recurrent weights, one (B, H) mask per sequence shared by all gates",
             "Keras recurrent_dropout; Gal & Ghahramani 2016 (tied)", _options(recurrent_dropout="p")),
    Strategy("keras_both", "x_t and h_{t-1}, an independent mask per gate (4 for LSTM, 3 for GRU), one per sequence",
             "Keras LSTM(dropout=p, recurrent_dropout=p) exactly; Gal & Ghahramani 2016 (untied)",
             _options(input_dropout="p", recurrent_dropout="p", gate_masks="per_gate")),
    Strategy("keras_both_shared", "x_t and h_{t-1}, one mask per sequence shared by all gates",
             "Gal & Ghahramani 2016 (tied)", _options(input_dropout="p", recurrent_dropout="p", gate_masks="shared"),
             cells=("lstm", "gru")),  # a simple RNN has one gate: identical to keras_both
    Strategy("weight_dropout", "entries of the recurrent weight matrix W_hh, one mask per batch, every timestep",
             "DropConnect (Wan et al. 2013); AWD-LSTM WeightDrop (Merity et al. 2017)",
             _options(weight_dropout="p")),
    Strategy("zoneout", "state updates: each unit of h (and c) keeps its previous value with probability p, per step",
             "Krueger et al. 2016", _zoneout),
    Strategy("semeniuta", "the candidate update (LSTM g / GRU n), one mask per sequence; memory is never erased",
             "Semeniuta et al. 2016, recurrent dropout without memory loss", _options(candidate_dropout="p"),
             cells=("lstm", "gru")),
)

BY_NAME: dict[str, Strategy] = {s.name: s for s in STRATEGIES}


def get_strategy(strategy: str | Strategy) -> Strategy:
    """The :class:`Strategy` named ``strategy`` (or ``strategy`` itself)."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in BY_NAME:
        raise StrategyError(f"unknown strategy {strategy!r}; choose from {list(BY_NAME)}")
    return BY_NAME[strategy]


# ---------------------------------------------------------------------------------------------- conversion
def _from_torch(layer: nn.RNNBase) -> RecurrentBase:
    """An rnndrop layer with ``layer``'s arguments and parameters (torch.nn and rnndrop share names)."""
    first = next(layer.parameters())
    common = {"num_layers": layer.num_layers, "bias": layer.bias, "batch_first": layer.batch_first,
              "dropout": layer.dropout, "bidirectional": layer.bidirectional, "device": first.device,
              "dtype": first.dtype}
    if isinstance(layer, nn.LSTM):
        new: RecurrentBase = rnndrop.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size, **common)
    elif isinstance(layer, nn.GRU):
        new = rnndrop.GRU(layer.input_size, layer.hidden_size, **common)
    elif isinstance(layer, nn.RNN):
        new = rnndrop.RNN(layer.input_size, layer.hidden_size, nonlinearity=layer.nonlinearity, **common)
    else:
        raise StrategyError(f"cannot convert {type(layer).__name__}: only torch.nn.LSTM, GRU and RNN")
    new.load_state_dict(layer.state_dict())
    new.train(layer.training)
    return new


def convert_recurrent_layers(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` inside ``model`` by the rnndrop layer with the same
    arguments and weights (in place; state-dict keys unchanged). Returns ``model``, or the converted layer
    when ``model`` itself is one."""
    if isinstance(model, nn.RNNBase):
        return _from_torch(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.RNNBase) and type(child) in (nn.LSTM, nn.GRU, nn.RNN):
                setattr(parent, name, _from_torch(child))
    return model


def recurrent_layers(model: nn.Module) -> list[tuple[str, RecurrentBase]]:
    """``(qualified name, layer)`` of every rnndrop recurrent layer in ``model`` (``""`` for the model itself)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, RecurrentBase)]


# ---------------------------------------------------------------------------------------------- hooks
class InputDropout(nn.Module):
    """The dropout a strategy puts before a recurrent layer, on its input sequence.

    ``kind``: ``"per_step"`` (a fresh mask per element and step: :class:`rnndrop.Dropout`),
    ``"noise_shape"`` (one mask per sequence: ``rnndrop.Dropout(p, noise_shape=...)``) or
    ``"spatial"`` (whole channels: :class:`rnndrop.SpatialDropout1d`). Takes the layer's input:
    ``(B, T, C)`` (``batch_first``), ``(T, B, C)``, unbatched ``(T, C)`` or a ``PackedSequence`` (the
    time-locked kinds then draw one mask per sequence, as :class:`rnndrop.LockedDropout` does).
    """

    def __init__(self, kind: str, p: float, batch_first: bool) -> None:
        super().__init__()
        if kind not in BEFORE_KINDS:
            raise StrategyError(f"kind must be one of {BEFORE_KINDS}, got {kind!r}")
        self.kind, self.batch_first = kind, batch_first
        if kind == "per_step":
            self.drop: nn.Module = rnndrop.Dropout(p, batch_first=batch_first)
        elif kind == "noise_shape":
            shape = (None, 1, None) if batch_first else (1, None, None)
            self.drop = rnndrop.Dropout(p, noise_shape=shape, batch_first=batch_first)
        else:
            self.drop = rnndrop.SpatialDropout1d(p, batch_first=batch_first)
        self.locked = rnndrop.LockedDropout(p, batch_first=batch_first)  # PackedSequence input

    def forward(self, x: torch.Tensor | PackedSequence) -> torch.Tensor | PackedSequence:
        if isinstance(x, PackedSequence):
            if self.kind == "per_step":
                return x._replace(data=self.drop(x.data))
            return self.locked(x)
        if x.dim() == 2 and self.kind == "noise_shape":  # unbatched (T, C): one mask for the sequence
            return self.locked(x)
        return self.drop(x)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class OutputDropout(nn.Module):
    """The dropout a strategy puts after a recurrent layer: on its output sequence (per element and step)
    and on its final hidden state ``h_n`` (per element); an LSTM's cell state is left alone."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.on_output = rnndrop.Dropout(p)
        self.on_state = rnndrop.Dropout(p)

    def forward(self, result: Any) -> Any:
        out, state = result
        out = out._replace(data=self.on_output(out.data)) if isinstance(out, PackedSequence) else self.on_output(out)
        if isinstance(state, tuple):
            state = (self.on_state(state[0]), *state[1:])
        elif state is not None:
            state = self.on_state(state)
        return out, state


def _before_hook(module: RecurrentBase, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    drop = module.study_input_dropout
    if args:
        return (drop(args[0]), *args[1:]), kwargs
    if "input" in kwargs:
        return args, {**kwargs, "input": drop(kwargs["input"])}
    return None


def _after_hook(module: RecurrentBase, args: tuple[Any, ...], output: Any) -> Any:
    return module.study_output_dropout(output)


# ---------------------------------------------------------------------------------------------- apply
def apply_strategy(model: nn.Module, strategy: str | Strategy, rate: float, *, convert: bool = True) -> nn.Module:
    """Put ``strategy`` at ``rate`` into every recurrent layer of ``model``, in place; returns the model.

    Args:
        model: any ``nn.Module`` holding rnndrop recurrent layers, or ``torch.nn`` LSTM / GRU / RNN layers
            (converted to rnndrop's first when ``convert`` is true; state-dict keys stay the same). A
            bare ``torch.nn`` layer passed as ``model`` comes back converted: use the returned module.
        strategy: a name from :data:`STRATEGIES` (``"recurrent"``, ``"keras_both"``, ...) or a
            :class:`Strategy`.
        rate: the dropout probability ``p`` in ``[0, 1)`` (ignored by ``"none"``).
        convert: convert ``torch.nn`` recurrent layers (else they are an error).

    The model must come without the dropouts the study adds: a layer that already has a non-zero
    in-layer option (``input_dropout``, ``recurrent_dropout``, ``weight_dropout``, ``candidate_dropout``,
    ``zoneout_*``) or an applied strategy is refused, so that a comparison measures what it names.
    Torch's between-layer ``dropout=`` is left as it is. Raises :class:`StrategyError` with the reason.
    """
    spec = get_strategy(strategy)
    if spec.name != "none" and not (isinstance(rate, (int, float)) and 0.0 <= float(rate) < 1.0):
        raise StrategyError(f"rate must be in [0, 1), got {rate!r}")
    if convert:
        model = convert_recurrent_layers(model)
    torch_layers = [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if torch_layers:
        raise StrategyError(f"torch.nn recurrent layers {torch_layers} are not rnndrop layers: pass convert=True "
                            "or build the model with rnndrop.LSTM / GRU / RNN")
    layers = recurrent_layers(model)
    if not layers:
        raise StrategyError(f"{type(model).__name__} holds no recurrent layer (rnndrop or torch.nn LSTM / GRU / RNN)")
    for name, layer in layers:
        where = f"recurrent layer {name or type(model).__name__!r}"
        if getattr(layer, _APPLIED, None) is not None:
            raise StrategyError(f"{where} already has strategy {getattr(layer, _APPLIED)[0]!r} applied; "
                                "build a fresh model for each strategy")
        used = {k: getattr(layer, k) for k in LAYER_OPTIONS if getattr(layer, k, 0.0)}
        if used:
            raise StrategyError(f"{where} already uses {used}; build the model without dropout: the study adds it")
        reason = spec.availability(layer.mode)
        if reason is not None:
            raise StrategyError(f"strategy {spec.name!r} is {reason} ({where})")
    p = float(rate) if spec.name != "none" else 0.0
    for _, layer in layers:
        if spec.name != "none":
            for key, value in spec.layer_options(p, layer.mode).items():
                if key == "gate_masks":
                    layer.gate_masks = value
                else:
                    setattr(layer, key, check_probability(value, key))
            if spec.before is not None:
                layer.add_module("study_input_dropout", InputDropout(spec.before, p, layer.batch_first))
                layer.register_forward_pre_hook(_before_hook, with_kwargs=True)
            if spec.after:
                layer.add_module("study_output_dropout", OutputDropout(p))
                layer.register_forward_hook(_after_hook)
            if spec.before is not None or spec.after:
                layer.train(layer.training)  # the new children follow the layer's mode
        setattr(layer, _APPLIED, (spec.name, p))
    return model


def applied_strategy(model: nn.Module) -> tuple[str, float] | None:
    """``(strategy, rate)`` that :func:`apply_strategy` put into ``model``, or None."""
    for _, layer in recurrent_layers(model):
        found = getattr(layer, _APPLIED, None)
        if found is not None:
            return found
    return None


def model_cells(model: nn.Module) -> list[str]:
    """The cells (``"lstm"``, ``"gru"``, ``"rnn"``) of the model's recurrent layers, torch.nn ones included."""
    cells = []
    for m in model.modules():
        if isinstance(m, RecurrentBase):
            cells.append(m.mode.lower())
        elif isinstance(m, nn.RNNBase):
            cells.append("rnn" if isinstance(m, nn.RNN) else m.mode.lower())
    return cells


def unavailable_for(model: nn.Module, names: list[str]) -> dict[str, str]:
    """``{name: reason}`` of the strategies in ``names`` that one of the model's layers does not define."""
    cells = set(model_cells(model))
    out = {}
    for name in names:
        for cell in sorted(cells):
            reason = get_strategy(name).availability(cell)
            if reason:
                out[name] = reason
                break
    return out


def iter_study_dropouts(layer: RecurrentBase) -> Iterator[tuple[str, nn.Module]]:
    """The before / after dropout modules a strategy attached to ``layer``."""
    for attr in ("study_input_dropout", "study_output_dropout"):
        module = getattr(layer, attr, None)
        if module is not None:
            yield attr, module
