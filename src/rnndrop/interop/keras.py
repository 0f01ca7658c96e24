"""Keras 3 interop: turn a serialized Keras recurrent layer into a torch module that computes the same thing.

:func:`from_keras` reads a Keras 3 ``LSTM``, ``GRU``, ``SimpleRNN`` (or generic ``RNN`` over one of their
cells), or a ``Bidirectional`` wrapping one, from plain data — the dict that
``keras.saving.serialize_keras_object(layer)`` returns and a ``.keras`` file's ``config.json`` holds, and the
``layer.get_weights()`` list of numpy arrays — and builds a :class:`KerasRecurrent` /
:class:`KerasBidirectional` around a single-layer :class:`rnndrop.LSTM` / :class:`~rnndrop.GRU` /
:class:`~rnndrop.RNN`. Keras itself is never imported: conversion needs neither Keras nor TensorFlow.

Keras → rnndrop mapping (see ``KERAS_RNN_SEMANTICS.md`` §7 for the maths):

=======================  ====================================================================================
Keras                    rnndrop
=======================  ====================================================================================
``kernel`` (F, G·U)      ``weight_ih_l0`` = kernel.T (GRU gate blocks reordered z, r, h → r, z, n)
``recurrent_kernel``     ``weight_hh_l0`` = recurrent_kernel.T (same reorder)
``bias``                 LSTM / SimpleRNN / GRU(reset_after=False): ``bias_ih_l0`` = bias, ``bias_hh_l0`` = 0;
                         GRU(reset_after=True) ``(2, 3U)``: ``bias_ih_l0`` = row 0, ``bias_hh_l0`` = row 1
``dropout``              ``input_dropout``
``recurrent_dropout``    ``recurrent_dropout``
mask layout              ``gate_masks="per_gate"`` when ``recurrent_dropout > 0`` or ``implementation == 1``
                         (Keras's implementation 1, independent masks for each gate), else ``"shared"``
``activation`` etc.      same names (``None`` = ``"linear"``; ``hard_sigmoid`` is Keras 3's clip(x/6 + 1/2))
``zero_output_for_mask`` ``zero_output_for_mask`` (forced to ``return_sequences`` inside ``Bidirectional``,
                         as Keras does)
``Dropout``              :class:`rnndrop.Dropout` (``rate``, ``noise_shape``: both batch first, input order)
``SpatialDropout1D``     :class:`rnndrop.SpatialDropout1d` (batch first, mask ``(B, 1, C)``)
=======================  ====================================================================================

Initialisers, regularisers, constraints, ``unit_forget_bias``, ``seed``, ``unroll`` and ``use_cudnn`` do not
change the forward pass and are accepted and ignored (regularisers and constraints act only in Keras's
training step). Keras 3 does not serialise ``implementation``; a layer built with an explicit
``implementation=1`` and ``recurrent_dropout == 0`` therefore converts with shared input masks unless the
config carries ``"implementation": 1`` (as Keras 2 configs do) — eval-mode outputs are identical either way.
Activation names are read with Keras 3's definitions (Keras 2's ``hard_sigmoid`` was 0.2x + 0.5).

Masked steps follow Keras's TensorFlow and torch backends: before the first real step the "previous output"
is zeros. (Keras on JAX/NumPy repeats the initial ``h`` there instead; the two differ only for a mask that
starts with padding together with a non-zero ``initial_state``.)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..activations import resolve_activation
from ..cells import NUM_GATES
from ..dropout import Dropout, SpatialDropout1d, check_noise_shape
from ..errors import RnnDropTypeError, RnnDropValueError
from ..layers import GRU, LSTM, RNN, RecurrentBase
from ..masks import DropoutMasks, GateMasks

# Keras layer class -> rnndrop mode, and the generic RNN layer's cell classes.
_LAYER_MODES = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}
_CELL_MODES = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "RNN"}
_MERGE_MODES = ("concat", "sum", "mul", "ave", None)

# Keys that never change the forward pass (training-time only, bookkeeping, or execution strategy).
_IGNORED_KEYS = frozenset({
    "name", "trainable", "dtype", "seed", "unroll", "use_cudnn",
    "kernel_initializer", "recurrent_initializer", "bias_initializer",
    "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
    "kernel_constraint", "recurrent_constraint", "bias_constraint",
    # Keras 2 leftovers describing the input, not the layer's maths.
    "batch_input_shape", "batch_shape", "input_shape", "input_dim", "input_length",
})
_SEQUENCE_KEYS = ("return_sequences", "return_state", "go_backwards", "stateful", "zero_output_for_mask")
_CELL_KEYS = {
    "LSTM": {"units", "activation", "recurrent_activation", "use_bias", "unit_forget_bias", "dropout",
             "recurrent_dropout", "implementation"},
    "GRU": {"units", "activation", "recurrent_activation", "use_bias", "reset_after", "dropout",
            "recurrent_dropout", "implementation"},
    "RNN": {"units", "activation", "use_bias", "dropout", "recurrent_dropout"},
}


@dataclass(frozen=True)
class _RecurrentSpec:
    """Everything from one Keras recurrent layer config that the torch module needs."""

    class_name: str
    mode: str  # rnndrop mode: "LSTM" | "GRU" | "RNN"
    units: int
    activation: str
    recurrent_activation: str
    use_bias: bool
    reset_after: bool
    dropout: float
    recurrent_dropout: float
    gate_masks: GateMasks
    return_sequences: bool
    return_state: bool
    go_backwards: bool
    stateful: bool
    zero_output_for_mask: bool
    trainable: bool

    @property
    def num_weights(self) -> int:
        return 3 if self.use_bias else 2

    def weight_shapes(self, input_size: int) -> list[tuple[int, ...]]:
        """``get_weights()`` shapes: kernel, recurrent_kernel[, bias]."""
        gu = NUM_GATES[self.mode] * self.units
        shapes: list[tuple[int, ...]] = [(input_size, gu), (self.units, gu)]
        if self.use_bias:
            shapes.append((2, gu) if self.mode == "GRU" and self.reset_after else (gu,))
        return shapes


# ---------------------------------------------------------------------------------------------- config parsing
class _Config:
    """Typed access to one config dict; every error names the key by its path (``where``)."""

    def __init__(self, config: Mapping[str, Any], where: str) -> None:
        self.config = config
        self.where = where

    def path(self, key: str) -> str:
        return f"{self.where}[{key!r}]"

    def bool(self, key: str, default: bool) -> bool:
        value = self.config.get(key, default)
        if not isinstance(value, (bool, np.bool_)):
            raise RnnDropTypeError(f"{self.path(key)} must be a bool, got {value!r}")
        return bool(value)

    def units(self) -> int:
        if "units" not in self.config:
            raise RnnDropValueError(f"{self.path('units')} is missing (expected a positive int)")
        value = self.config["units"]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise RnnDropValueError(f"{self.path('units')} must be a positive int, got {value!r}")
        return int(value)

    def rate(self, key: str) -> float:
        value = self.config.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise RnnDropTypeError(f"{self.path(key)} must be a float in [0, 1), got {value!r}")
        value = float(value)
        if not 0.0 <= value < 1.0:
            # Keras clips rates into [0, 1]; at 1 its paths disagree (some skip dropout, some zero the input).
            raise RnnDropValueError(f"{self.path(key)} must be in [0, 1) for conversion, got {value!r}")
        return value

    def activation(self, key: str, default: str) -> str:
        value = self.config.get(key, default)
        if value is not None and not isinstance(value, str):
            raise RnnDropValueError(
                f"{self.path(key)} must be the name of a built-in activation (or None), got {value!r}; "
                "custom activation functions cannot be converted"
            )
        return resolve_activation(value, self.path(key))


def _require_mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RnnDropTypeError(f"{where} must be a dict, got {type(value).__name__}")
    return value


def _class_and_config(layer_config: object, where: str) -> tuple[str, Mapping[str, Any]]:
    layer_config = _require_mapping(layer_config, where)
    for key in ("class_name", "config"):
        if key not in layer_config:
            raise RnnDropValueError(
                f"{where} must hold 'class_name' and 'config' (the dict keras.saving.serialize_keras_object "
                f"returns), missing {key!r}"
            )
    class_name = layer_config["class_name"]
    if not isinstance(class_name, str):
        raise RnnDropTypeError(f"{where}['class_name'] must be a str, got {class_name!r}")
    return class_name, _require_mapping(layer_config["config"], f"{where}['config']")


def _warn_unknown(config: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(config) - known - _IGNORED_KEYS)
    if unknown:
        warnings.warn(
            f"{where}: ignoring Keras config keys rnndrop does not know: {unknown}", UserWarning, stacklevel=4
        )


def _dropout_from_keras(class_name: str, config: Mapping[str, Any], weights: object) -> Dropout | SpatialDropout1d:
    """Keras ``Dropout`` / ``SpatialDropout1D`` (no weights; Keras's ``seed`` is ignored: torch's RNG draws)."""
    cfg = _Config(config, "layer_config['config']")
    if not isinstance(weights, Sequence) or isinstance(weights, (str, bytes)) or len(weights) != 0:
        got = len(weights) if isinstance(weights, Sequence) else type(weights).__name__
        raise RnnDropValueError(f"weights must be empty for a Keras {class_name} (it has no weights), got {got}")
    if class_name == "SpatialDropout1D":
        _warn_unknown(config, {"rate"}, cfg.where)
        return SpatialDropout1d(cfg.rate("rate"), batch_first=True)
    _warn_unknown(config, {"rate", "noise_shape"}, cfg.where)
    # A Keras noise_shape lists the input's axes batch first, which is the input's own order here.
    noise_shape = check_noise_shape(config.get("noise_shape"), cfg.path("noise_shape"))
    return Dropout(cfg.rate("rate"), noise_shape, batch_first=True)


def _parse_recurrent(layer_config: object, where: str) -> _RecurrentSpec:
    class_name, config = _class_and_config(layer_config, where)
    seq = _Config(config, f"{where}['config']")
    if class_name in _LAYER_MODES:
        mode = _LAYER_MODES[class_name]
        cell = seq
        _warn_unknown(config, _CELL_KEYS[mode] | set(_SEQUENCE_KEYS) | {"time_major"}, seq.where)
    elif class_name == "RNN":
        # Generic RNN layer: cell hyper-parameters live in the serialized cell, loop flags on the layer.
        cell_class, cell_config = _class_and_config(config.get("cell"), seq.path("cell"))
        if cell_class not in _CELL_MODES:
            raise RnnDropValueError(
                f"{seq.path('cell')}['class_name'] must be one of {sorted(_CELL_MODES)} "
                f"(stacked or custom cells cannot be converted), got {cell_class!r}"
            )
        mode = _CELL_MODES[cell_class]
        cell = _Config(cell_config, f"{seq.path('cell')}['config']")
        _warn_unknown(config, set(_SEQUENCE_KEYS) | {"cell", "time_major"}, seq.where)
        _warn_unknown(cell_config, _CELL_KEYS[mode], cell.where)
    else:
        raise RnnDropValueError(
            f"{where}['class_name'] must be one of {[*_LAYER_MODES, 'RNN', 'Bidirectional']}, got {class_name!r}"
        )
    if seq.bool("time_major", False):
        raise RnnDropValueError(f"{seq.path('time_major')} must be False (inputs are batch-major), got True")

    dropout = cell.rate("dropout")
    recurrent_dropout = cell.rate("recurrent_dropout")
    implementation = cell.config.get("implementation", 2)
    if implementation not in (1, 2):
        raise RnnDropValueError(f"{cell.path('implementation')} must be 1 or 2, got {implementation!r}")
    # Keras forces implementation 1 (independent masks per gate) whenever recurrent_dropout > 0.
    per_gate = mode != "RNN" and (recurrent_dropout > 0 or implementation == 1)
    return _RecurrentSpec(
        class_name=class_name,
        mode=mode,
        units=cell.units(),
        activation=cell.activation("activation", "tanh"),
        recurrent_activation=(
            cell.activation("recurrent_activation", "sigmoid") if mode != "RNN" else "sigmoid"
        ),
        use_bias=cell.bool("use_bias", True),
        reset_after=cell.bool("reset_after", True) if mode == "GRU" else True,
        dropout=dropout,
        recurrent_dropout=recurrent_dropout,
        gate_masks="per_gate" if per_gate else "shared",
        return_sequences=seq.bool("return_sequences", False),
        return_state=seq.bool("return_state", False),
        go_backwards=seq.bool("go_backwards", False),
        stateful=seq.bool("stateful", False),
        zero_output_for_mask=seq.bool("zero_output_for_mask", False),
        trainable=seq.bool("trainable", True) and cell.bool("trainable", True),
    )


# ---------------------------------------------------------------------------------------------- weights
def _gru_swap(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Swap the first two of three gate blocks: Keras z, r, h <-> torch r, z, n (its own inverse)."""
    a, b, c = t.chunk(3, dim=dim)
    return torch.cat([b, a, c], dim=dim)


def _check_weights(
    weights: object, specs: Sequence[_RecurrentSpec], where: str
) -> list[list[np.ndarray]]:
    """Validate ``weights`` against the layers' expected count and shapes; split it per layer."""
    if isinstance(weights, (str, bytes, Mapping)) or not isinstance(weights, Sequence):
        raise RnnDropTypeError(f"{where} must be a list of numpy arrays (layer.get_weights()), got "
                               f"{type(weights).__name__}")
    want = sum(s.num_weights for s in specs)
    if len(weights) != want:
        names = " + ".join(
            f"{s.class_name}(use_bias={s.use_bias}): {s.num_weights}" for s in specs
        )
        raise RnnDropValueError(f"{where} must hold {want} arrays ({names}), got {len(weights)}")
    arrays = []
    for i, w in enumerate(weights):
        a = np.asarray(w)
        if not np.issubdtype(a.dtype, np.floating):
            raise RnnDropTypeError(f"{where}[{i}] must be a floating point array, got dtype {a.dtype}")
        arrays.append(a)
    out: list[list[np.ndarray]] = []
    start = 0
    for spec in specs:
        chunk = arrays[start : start + spec.num_weights]
        if chunk[0].ndim != 2:
            raise RnnDropValueError(f"{where}[{start}] (kernel) must be 2-D, got shape {chunk[0].shape}")
        for j, (a, shape) in enumerate(zip(chunk, spec.weight_shapes(chunk[0].shape[0]))):
            if a.shape != shape:
                name = ("kernel", "recurrent_kernel", "bias")[j]
                raise RnnDropValueError(
                    f"{where}[{start + j}] ({name} of {spec.class_name} with units={spec.units}) must have shape "
                    f"{shape}, got {a.shape}"
                )
        out.append(chunk)
        start += spec.num_weights
    return out


def _load_keras_weights(rnn: RecurrentBase, arrays: Sequence[np.ndarray], suffix: str = "") -> None:
    """Copy Keras-layout ``arrays`` into ``rnn``'s layer-0 parameters (direction ``suffix``)."""
    p = rnn.weight_ih_l0
    kernel, recurrent = (torch.as_tensor(a).to(dtype=p.dtype, device=p.device) for a in arrays[:2])
    gru = rnn.mode == "GRU"
    if gru:
        kernel, recurrent = _gru_swap(kernel, 1), _gru_swap(recurrent, 1)
    with torch.no_grad():
        getattr(rnn, f"weight_ih_l0{suffix}").copy_(kernel.T)
        getattr(rnn, f"weight_hh_l0{suffix}").copy_(recurrent.T)
        if rnn.bias:
            bias = torch.as_tensor(arrays[2]).to(dtype=p.dtype, device=p.device)
            if gru and bias.dim() == 2:  # reset_after=True: row 0 input side, row 1 recurrent side
                b_ih, b_hh = _gru_swap(bias[0], 0), _gru_swap(bias[1], 0)
            else:
                # Only the sum b_ih + b_hh matters for these cells (GRU reset_after=False adds b_hn outside
                # the r-product too), so the whole Keras bias goes to the input side.
                b_ih, b_hh = (_gru_swap(bias, 0) if gru else bias), torch.zeros_like(bias)
            getattr(rnn, f"bias_ih_l0{suffix}").copy_(b_ih)
            getattr(rnn, f"bias_hh_l0{suffix}").copy_(b_hh)


def _export_keras_weights(rnn: RecurrentBase, suffix: str = "") -> list[np.ndarray]:
    """``rnn``'s layer-0 parameters (direction ``suffix``) in Keras ``get_weights()`` layout."""
    gru = rnn.mode == "GRU"
    with torch.no_grad():
        w_ih = getattr(rnn, f"weight_ih_l0{suffix}").detach()
        w_hh = getattr(rnn, f"weight_hh_l0{suffix}").detach()
        kernel, recurrent = w_ih.T, w_hh.T
        if gru:
            kernel, recurrent = _gru_swap(kernel, 1), _gru_swap(recurrent, 1)
        out = [kernel, recurrent]
        if rnn.bias:
            b_ih = getattr(rnn, f"bias_ih_l0{suffix}").detach()
            b_hh = getattr(rnn, f"bias_hh_l0{suffix}").detach()
            if gru and rnn.reset_after:
                out.append(torch.stack([_gru_swap(b_ih, 0), _gru_swap(b_hh, 0)]))
            else:
                total = b_ih + b_hh
                out.append(_gru_swap(total, 0) if gru else total)
    return [t.cpu().contiguous().numpy().copy() for t in out]


# ---------------------------------------------------------------------------------------------- modules
def _num_states(rnn: RecurrentBase) -> int:
    return 2 if rnn.mode == "LSTM" else 1


class KerasRecurrent(nn.Module):
    """A Keras ``LSTM`` / ``GRU`` / ``SimpleRNN`` layer as a torch module, on top of a rnndrop layer.

    Call it like the Keras layer: ``module(x, mask=None, initial_state=None)`` with ``x`` of shape
    ``(batch, time, features)``. It returns ``output`` or, with ``return_state``, ``[output, *states]``
    (LSTM ``[output, h, c]``), where ``output`` is ``(batch, time, units)`` with ``return_sequences`` (in
    processing order: reversed in time when ``go_backwards``) else ``(batch, units)``, and each state is
    ``(batch, units)``. Dropout (``rnn.input_dropout`` / ``rnn.recurrent_dropout``) is active in training
    mode only.

    Args:
        rnn: a single-layer, unidirectional, ``batch_first=True`` :class:`rnndrop.LSTM` / ``GRU`` / ``RNN``
            (no projection). Its ``zero_output_for_mask`` is Keras's option of the same name.
        return_sequences: return the whole output sequence instead of the last step's output.
        return_state: also return the final states.
        go_backwards: process the sequence (and mask) reversed in time.
        stateful: carry the final states of a call over as the initial states of the next call (batch size
            fixed by the first call; detached, so gradients stop at call boundaries, as in Keras);
            :meth:`reset_states` zeros them.
    """

    def __init__(
        self,
        rnn: RecurrentBase,
        *,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(rnn, RecurrentBase):
            raise RnnDropTypeError(f"rnn must be a rnndrop LSTM, GRU or RNN, got {type(rnn).__name__}")
        if rnn.num_layers != 1 or rnn.bidirectional or rnn.proj_size or not rnn.batch_first:
            raise RnnDropValueError(
                "rnn must have num_layers=1, bidirectional=False, proj_size=0 and batch_first=True, got "
                f"num_layers={rnn.num_layers}, bidirectional={rnn.bidirectional}, proj_size={rnn.proj_size}, "
                f"batch_first={rnn.batch_first}"
            )
        self.rnn = rnn
        self.return_sequences = bool(return_sequences)
        self.return_state = bool(return_state)
        self.go_backwards = bool(go_backwards)
        self.stateful = bool(stateful)
        # Stored states of a stateful layer: non-persistent buffers so .to() moves them but state_dict
        # stays the rnndrop layer's (Keras does not count them among the weights either).
        for i in range(_num_states(rnn)):
            self.register_buffer(f"_state_{i}", None, persistent=False)

    @property
    def units(self) -> int:
        return self.rnn.hidden_size

    @property
    def states(self) -> list[torch.Tensor] | None:
        """The stored states of a stateful layer (``None`` before its first call or when not stateful)."""
        stored = [getattr(self, f"_state_{i}") for i in range(_num_states(self.rnn))]
        return None if stored[0] is None else stored

    def reset_states(self) -> None:
        """Zero the stored states of a stateful layer (Keras ``reset_state()``); no-op otherwise."""
        stored = self.states
        if stored is not None:
            for i, s in enumerate(stored):
                setattr(self, f"_state_{i}", torch.zeros_like(s))

    reset_state = reset_states

    def extra_repr(self) -> str:
        flags = ("return_sequences", "return_state", "go_backwards", "stateful")
        return ", ".join(f"{f}=True" for f in flags if getattr(self, f))

    def _check_input(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise RnnDropTypeError(f"x must be a Tensor of shape (batch, time, features), got {type(x).__name__}")
        if x.dim() != 3:
            raise RnnDropValueError(
                f"x must be 3-D (batch, time, features), got {x.dim()}-D of shape {tuple(x.shape)}"
            )
        return x

    def _check_initial_state(self, initial_state: object, x: torch.Tensor, where: str) -> list[torch.Tensor]:
        n = _num_states(self.rnn)
        if isinstance(initial_state, torch.Tensor):
            initial_state = [initial_state]
        if not isinstance(initial_state, (list, tuple)) or len(initial_state) != n:
            raise RnnDropValueError(
                f"{where} must be a list of {n} tensor(s) {'[h, c]' if n == 2 else '[h]'} of shape "
                f"(batch, units), got {initial_state!r:.80}"
            )
        want = (x.shape[0], self.units)
        for i, s in enumerate(initial_state):
            if not isinstance(s, torch.Tensor):
                raise RnnDropTypeError(f"{where}[{i}] must be a Tensor, got {type(s).__name__}")
            if tuple(s.shape) != want:
                raise RnnDropValueError(f"{where}[{i}] must have shape {want} (batch, units), got {tuple(s.shape)}")
            if s.dtype != x.dtype or s.device != x.device:
                raise RnnDropTypeError(
                    f"{where}[{i}] must have the dtype and device of x ({x.dtype}, {x.device}), "
                    f"got ({s.dtype}, {s.device})"
                )
        return list(initial_state)

    @staticmethod
    def _check_mask(mask: object, x: torch.Tensor) -> torch.Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, torch.Tensor):
            raise RnnDropTypeError(f"mask must be a Tensor of shape (batch, time), got {type(mask).__name__}")
        want = tuple(x.shape[:2])
        if tuple(mask.shape) != want:
            raise RnnDropValueError(f"mask must have shape {want} (batch, time), got {tuple(mask.shape)}")
        # Keras casts any mask to bool (non-zero = real step).
        return mask.to(device=x.device, dtype=torch.bool)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        initial_state: Sequence[torch.Tensor] | torch.Tensor | None = None,
        *,
        dropout_masks: DropoutMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run the layer as Keras does.

        Args:
            x: ``(batch, time, features)``.
            mask: ``(batch, time)``, True (non-zero) = real step; masked steps carry every state over and
                output the previous output (zeros before the first real step), or zeros with
                ``zero_output_for_mask``.
            initial_state: ``[h]`` or ``[h, c]`` (LSTM), each ``(batch, units)``; zeros — or the stored states
                of a stateful layer — if omitted.
            dropout_masks: pre-drawn masks for this call, as :class:`rnndrop.DropoutMasks` with one layer and
                one direction, in torch gate order (used in any mode; see :mod:`rnndrop.masks`).
            generator: ``torch.Generator`` to draw this call's dropout masks from.
        Returns:
            ``output`` or ``[output, *states]`` (see the class docstring).
        """
        x = self._check_input(x)
        step_mask = self._check_mask(mask, x)
        states: list[torch.Tensor] | None = None
        if initial_state is not None:
            states = self._check_initial_state(initial_state, x, "initial_state")
        if self.stateful and self.states is not None:
            stored_batch = self.states[0].shape[0]
            if x.shape[0] != stored_batch:
                raise RnnDropValueError(
                    f"x must have batch size {stored_batch} (a stateful layer keeps the batch size of its first "
                    f"call), got {x.shape[0]}"
                )
            if states is None:
                states = [s.to(dtype=x.dtype, device=x.device) for s in self.states]
        if self.go_backwards:
            # Keras reverses input and mask over the whole length (padding included) and keeps the outputs
            # in processing order.
            x = x.flip(1)
            step_mask = None if step_mask is None else step_mask.flip(1)
        hx: Any = None
        if states is not None:
            hx = tuple(s.unsqueeze(0) for s in states) if len(states) == 2 else states[0].unsqueeze(0)
        out, hidden = self.rnn(x, hx, step_mask=step_mask, dropout_masks=dropout_masks, generator=generator)
        finals = [h.squeeze(0) for h in (hidden if isinstance(hidden, tuple) else (hidden,))]
        if self.stateful:
            for i, s in enumerate(finals):
                setattr(self, f"_state_{i}", s.detach())
        output = out if self.return_sequences else out[:, -1]
        return [output, *finals] if self.return_state else output


class KerasBidirectional(nn.Module):
    """A Keras ``Bidirectional`` wrapper as a torch module.

    ``module(x, mask=None, initial_state=None)`` runs ``forward_layer`` and ``backward_layer`` (each a
    :class:`KerasRecurrent`; the backward one normally has ``go_backwards=True``) on the same input and mask.
    With ``return_sequences`` the backward output is flipped back to input time order. Outputs are merged by
    ``merge_mode``: ``"concat"`` (last axis, forward first), ``"sum"``, ``"mul"``, ``"ave"`` (mean) or
    ``None`` (``[forward, backward]``). Returns the merged output, or with ``return_state``
    ``[merged, *forward_states, *backward_states]`` (``merge_mode=None``: ``[fwd, bwd, *states...]``).
    ``initial_state`` is the forward states followed by the backward states.

    As Keras does, both sublayers get ``zero_output_for_mask = return_sequences``.
    """

    def __init__(
        self, forward_layer: KerasRecurrent, backward_layer: KerasRecurrent, merge_mode: str | None = "concat"
    ) -> None:
        super().__init__()
        for name, layer in (("forward_layer", forward_layer), ("backward_layer", backward_layer)):
            if not isinstance(layer, KerasRecurrent):
                raise RnnDropTypeError(f"{name} must be a KerasRecurrent, got {type(layer).__name__}")
        if merge_mode not in _MERGE_MODES:
            raise RnnDropValueError(f"merge_mode must be one of {list(_MERGE_MODES)}, got {merge_mode!r}")
        if forward_layer.go_backwards == backward_layer.go_backwards:
            raise RnnDropValueError(
                "forward_layer and backward_layer must have different go_backwards, both have "
                f"{forward_layer.go_backwards}"
            )
        for attr in ("return_sequences", "return_state", "stateful"):
            if getattr(forward_layer, attr) != getattr(backward_layer, attr):
                raise RnnDropValueError(
                    f"forward_layer and backward_layer must agree on {attr}, got {getattr(forward_layer, attr)} "
                    f"and {getattr(backward_layer, attr)}"
                )
        for layer in (forward_layer, backward_layer):
            layer.rnn.zero_output_for_mask = layer.return_sequences
        self.forward_layer = forward_layer
        self.backward_layer = backward_layer
        self.merge_mode = merge_mode

    @property
    def return_sequences(self) -> bool:
        return self.forward_layer.return_sequences

    @property
    def return_state(self) -> bool:
        return self.forward_layer.return_state

    @property
    def stateful(self) -> bool:
        return self.forward_layer.stateful

    def reset_states(self) -> None:
        """Zero both directions' stored states (stateful layers; no-op otherwise)."""
        self.forward_layer.reset_states()
        self.backward_layer.reset_states()

    reset_state = reset_states

    def extra_repr(self) -> str:
        return f"merge_mode={self.merge_mode!r}"

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        initial_state: Sequence[torch.Tensor] | None = None,
        *,
        dropout_masks: DropoutMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Run both directions and merge (see the class docstring).

        Args:
            x: ``(batch, time, features)``; mask: ``(batch, time)``.
            initial_state: forward states then backward states, each ``(batch, units)``.
            dropout_masks: :class:`rnndrop.DropoutMasks` with one layer and two directions
                (``layers[0][0]`` forward, ``layers[0][1]`` backward).
            generator: draws both directions' masks (forward first).
        """
        fwd_state = bwd_state = None
        if initial_state is not None:
            n_f, n_b = _num_states(self.forward_layer.rnn), _num_states(self.backward_layer.rnn)
            if not isinstance(initial_state, (list, tuple)) or len(initial_state) != n_f + n_b:
                raise RnnDropValueError(
                    f"initial_state must be a list of {n_f + n_b} tensors (forward states then backward "
                    f"states), got {initial_state!r:.80}"
                )
            fwd_state, bwd_state = list(initial_state[:n_f]), list(initial_state[n_f:])
        fwd_masks = bwd_masks = None
        if dropout_masks is not None:
            if not isinstance(dropout_masks, DropoutMasks):
                raise RnnDropTypeError(
                    f"dropout_masks must be a rnndrop.DropoutMasks, got {type(dropout_masks).__name__}"
                )
            if len(dropout_masks.layers) != 1 or len(dropout_masks.layers[0]) != 2:
                raise RnnDropValueError("dropout_masks.layers must be 1 layer x 2 directions (forward, backward)")
            fwd_masks = DropoutMasks((dropout_masks.layers[0][:1],))
            bwd_masks = DropoutMasks((dropout_masks.layers[0][1:],))
        y = self.forward_layer(x, mask, fwd_state, dropout_masks=fwd_masks, generator=generator)
        y_rev = self.backward_layer(x, mask, bwd_state, dropout_masks=bwd_masks, generator=generator)
        states: list[torch.Tensor] = []
        if self.return_state:
            assert isinstance(y, list) and isinstance(y_rev, list)
            states = y[1:] + y_rev[1:]
            y, y_rev = y[0], y_rev[0]
        assert isinstance(y, torch.Tensor) and isinstance(y_rev, torch.Tensor)
        if self.return_sequences:
            y_rev = y_rev.flip(1)
        if self.merge_mode is None:
            return [y, y_rev, *states]
        if self.merge_mode == "concat":
            merged = torch.cat([y, y_rev], dim=-1)
        elif self.merge_mode == "sum":
            merged = y + y_rev
        elif self.merge_mode == "mul":
            merged = y * y_rev
        else:  # "ave"
            merged = (y + y_rev) / 2
        return [merged, *states] if self.return_state else merged


# ---------------------------------------------------------------------------------------------- public API
def _build_recurrent(
    spec: _RecurrentSpec,
    arrays: Sequence[np.ndarray],
    dtype: torch.dtype,
    device: torch.device | str | None,
    zero_output_for_mask: bool,
) -> KerasRecurrent:
    input_size = arrays[0].shape[0]
    common: dict[str, Any] = {
        "bias": spec.use_bias, "batch_first": True, "device": device, "dtype": dtype,
        "input_dropout": spec.dropout, "recurrent_dropout": spec.recurrent_dropout,
        "gate_masks": spec.gate_masks, "zero_output_for_mask": zero_output_for_mask,
    }
    rnn: RecurrentBase
    if spec.mode == "LSTM":
        rnn = LSTM(input_size, spec.units, activation=spec.activation,
                   recurrent_activation=spec.recurrent_activation, **common)
    elif spec.mode == "GRU":
        rnn = GRU(input_size, spec.units, activation=spec.activation,
                  recurrent_activation=spec.recurrent_activation, reset_after=spec.reset_after, **common)
    else:
        rnn = RNN(input_size, spec.units, nonlinearity=spec.activation, **common)
    _load_keras_weights(rnn, arrays)
    rnn.requires_grad_(spec.trainable)
    return KerasRecurrent(
        rnn, return_sequences=spec.return_sequences, return_state=spec.return_state,
        go_backwards=spec.go_backwards, stateful=spec.stateful,
    )


def _resolve_dtype(dtype: torch.dtype | None, arrays: Sequence[np.ndarray]) -> torch.dtype:
    if dtype is None:
        return torch.from_numpy(np.empty(0, dtype=np.result_type(*arrays))).dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise RnnDropTypeError(f"dtype must be a floating point torch.dtype or None, got {dtype!r}")
    return dtype


def from_keras(
    layer_config: Mapping[str, Any],
    weights: Sequence[Any],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> KerasRecurrent | KerasBidirectional | Dropout | SpatialDropout1d:
    """Build a torch module that computes exactly what a Keras 3 recurrent (or dropout) layer computes.

    Args:
        layer_config: the serialized layer, ``{"class_name": ..., "config": layer.get_config(), ...}`` as
            ``keras.saving.serialize_keras_object(layer)`` returns it or a ``.keras`` file's ``config.json``
            holds it (extra keys such as ``"module"``, ``"registered_name"``, ``"build_config"`` are ignored).
            ``class_name``: ``"LSTM"``, ``"GRU"``, ``"SimpleRNN"``, ``"RNN"`` (over an ``LSTMCell``,
            ``GRUCell`` or ``SimpleRNNCell``) or ``"Bidirectional"`` wrapping one of those; or ``"Dropout"``
            (``rate``, ``noise_shape``) / ``"SpatialDropout1D"`` (``rate``), which give :class:`rnndrop.Dropout` /
            :class:`rnndrop.SpatialDropout1d` (batch first; ``weights`` must be ``[]``; ``dtype``/``device``
            unused).
        weights: ``layer.get_weights()``: numpy arrays (kernel, recurrent_kernel[, bias]; Bidirectional:
            forward layer's then backward layer's).
        dtype: parameter dtype; default the weights' dtype (Keras's default float32).
        device: parameter device.
    Returns:
        A :class:`KerasRecurrent` or :class:`KerasBidirectional` in **eval mode** (like a Keras layer called
        without ``training=True``); call ``.train()`` to turn dropout on.
    Raises:
        ValueError / TypeError (rnndrop's subclasses) naming the offending config key or weight index:
        unknown class, custom or unknown activation, ``time_major=True``, rates outside [0, 1), wrong
        weight count, shape or dtype. Unknown config keys only warn.
    """
    class_name, config = _class_and_config(layer_config, "layer_config")
    if class_name in ("Dropout", "SpatialDropout1D"):
        return _dropout_from_keras(class_name, config, weights).eval()
    if class_name == "Bidirectional":
        cfg = _Config(config, "layer_config['config']")
        _warn_unknown(config, {"merge_mode", "layer", "backward_layer"}, cfg.where)
        merge_mode = config.get("merge_mode", "concat")
        if merge_mode not in _MERGE_MODES:
            raise RnnDropValueError(f"{cfg.path('merge_mode')} must be one of {list(_MERGE_MODES)}, got {merge_mode!r}")
        if "layer" not in config:
            raise RnnDropValueError(f"{cfg.path('layer')} is missing (the wrapped layer's serialized dict)")
        fwd = _parse_recurrent(config["layer"], cfg.path("layer"))
        if config.get("backward_layer") is not None:
            bwd = _parse_recurrent(config["backward_layer"], cfg.path("backward_layer"))
        else:  # Keras clones the forward layer with go_backwards flipped on.
            bwd = replace(fwd, go_backwards=True)
        for attr in ("return_sequences", "return_state", "stateful"):
            if getattr(fwd, attr) != getattr(bwd, attr):
                raise RnnDropValueError(
                    f"{cfg.path('layer')} and {cfg.path('backward_layer')} must agree on {attr!r}, got "
                    f"{getattr(fwd, attr)} and {getattr(bwd, attr)}"
                )
        if fwd.go_backwards == bwd.go_backwards:
            raise RnnDropValueError(
                f"{cfg.path('backward_layer')}['config']['go_backwards'] must differ from the forward layer's "
                f"({fwd.go_backwards})"
            )
        fw_arrays, bw_arrays = _check_weights(weights, [fwd, bwd], "weights")
        dt = _resolve_dtype(dtype, [*fw_arrays, *bw_arrays])
        trainable = cfg.bool("trainable", True)
        # Keras forces zero_output_for_mask = return_sequences on both sublayers.
        module: KerasRecurrent | KerasBidirectional = KerasBidirectional(
            _build_recurrent(fwd, fw_arrays, dt, device, fwd.return_sequences),
            _build_recurrent(bwd, bw_arrays, dt, device, bwd.return_sequences),
            merge_mode,
        )
        if not trainable:
            module.requires_grad_(False)
    else:
        spec = _parse_recurrent(layer_config, "layer_config")
        (arrays,) = _check_weights(weights, [spec], "weights")
        module = _build_recurrent(spec, arrays, _resolve_dtype(dtype, arrays), device, spec.zero_output_for_mask)
    return module.eval()


def to_keras(module: nn.Module) -> list[np.ndarray]:
    """The weights of ``module`` as Keras ``get_weights()`` would list them (the way back of :func:`from_keras`).

    Args:
        module: a :class:`KerasRecurrent`, a :class:`KerasBidirectional`, or a single-layer rnndrop
            ``LSTM`` / ``GRU`` / ``RNN`` without projection (bidirectional: forward then reverse weights,
            the order of a Keras ``Bidirectional``).
    Returns:
        numpy arrays ``kernel (F, G·U)``, ``recurrent_kernel (U, G·U)``, ``bias`` (absent without bias;
        ``b_ih + b_hh`` except GRU ``reset_after=True``, whose ``(2, 3U)`` bias keeps both rows), per direction.
        Load them with ``keras_layer.set_weights(...)`` into a Keras layer of the matching config.
    """
    if isinstance(module, KerasBidirectional):
        return to_keras(module.forward_layer) + to_keras(module.backward_layer)
    if isinstance(module, KerasRecurrent):
        return to_keras(module.rnn)
    if not isinstance(module, RecurrentBase):
        raise RnnDropTypeError(
            "module must be a KerasRecurrent, KerasBidirectional or rnndrop LSTM/GRU/RNN, got "
            f"{type(module).__name__}"
        )
    if module.num_layers != 1 or module.proj_size:
        raise RnnDropValueError(
            "module must have num_layers=1 and proj_size=0 to map onto one Keras layer, got "
            f"num_layers={module.num_layers}, proj_size={module.proj_size}"
        )
    out = _export_keras_weights(module)
    if module.bidirectional:
        out += _export_keras_weights(module, "_reverse")
    return out
