"""``LSTM``, ``GRU`` and ``RNN``: drop-in replacements for the torch.nn layers, plus dropout.

The modules own parameters (torch.nn names, shapes, initialisation and order, so state dicts
are interchangeable), validate arguments, sample the dropout masks of a call
(:mod:`rnndrop.masks`) and run the sequence loop (:mod:`rnndrop.reference`).

Shape legend: ``N`` batch, ``L`` sequence length, ``D`` 2 if bidirectional else 1,
``H_in`` input_size, ``H_cell`` hidden_size, ``H_out`` proj_size if > 0 else hidden_size.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ._kernels import BACKENDS, select_stack_fn
from ._kernels.registry import take_fallback
from ._pickling import GeneratorPicklingMixin
from ._runtime import is_compiling
from .activations import resolve_activation
from .cells import NUM_GATES
from .errors import (
    KernelUnavailableError,
    RnnDropDtypeError,
    RnnDropShapeError,
    RnnDropTypeError,
    RnnDropValueError,
)
from .init import INIT_SCHEMES, InitScheme, initialize_
from .masks import (
    MASK_SCOPE_CHOICES,
    DropoutMasks,
    GateMasks,
    MaskScope,
    MaskSpec,
    check_choice,
    check_gate_masks,
    check_probability,
)
from .reference import CellConfig, DirectionParams, run_stack

_DOC_DROPOUT_ARGS = """
    Dropout arguments (rnndrop's additions; all off by default, active only in training mode):
        dropout: torch.nn's meaning, kept for drop-in use: dropout on the outputs of each layer
            except the last, a fresh mask per element **and timestep**. Default 0.
        input_dropout: Keras ``dropout``. Fraction of the layer's input features ``x_t`` dropped,
            one mask per sequence (per layer, per direction) reused at every timestep. Default 0.
        recurrent_dropout: Keras ``recurrent_dropout``. Fraction of ``h_{t-1}`` dropped before the
            recurrent weights, one mask per sequence reused at every timestep; ``c`` is never
            masked. Default 0.
        gate_masks: ``"shared"`` — one mask per sequence shared by all gates (Gal's "tied") — or
            ``"per_gate"`` — an independent mask for each gate (Gal's "untied"; what Keras uses
            whenever ``recurrent_dropout > 0``). Applies to both masks. Default ``"shared"``.
        weight_dropout: DropConnect on the recurrent weights ``W_hh`` (Wan et al. 2013; AWD-LSTM's
            WeightDrop): one weight mask per forward call, shared by the batch and all timesteps.
            The stored parameter stays the raw weight. Default 0.
        candidate_dropout: Semeniuta et al. 2016, "recurrent dropout without memory loss": a
            time-locked mask on the LSTM candidate ``g`` / GRU candidate ``n``. Not for ``RNN``
            (there the candidate is the whole state). Default 0.
        zoneout_hidden: Zoneout (Krueger et al. 2016) on ``h``: in training each unit keeps its
            previous value with this probability, a fresh draw per timestep; in eval ``h`` is
            the expectation ``z h_{t-1} + (1 - z) h̃_t``. Default 0.
        zoneout_cell (LSTM only): the same for ``c``. Default 0.
        mask_scope: ``"sample"`` — an independent mask per sequence (Gal; default) — or
            ``"batch"`` — one mask shared by the whole batch (cheaper).
        locked_dropout: make torch's between-layer ``dropout`` time-locked (one mask per
            sequence, reused at every timestep) instead of per timestep. Default False.
        zero_output_for_mask: with a ``step_mask``, masked steps output zeros instead of
            repeating the previous output (Keras's option of the same name). Default False.
        generator: a ``torch.Generator`` the masks are drawn from (default: torch's global RNG).
            ``forward(generator=...)`` overrides it for one call.
        backend: ``"auto"`` (default) takes the fastest implementation that computes the call
            exactly: torch's own kernel (oneDNN / cuDNN) when the call is torch.nn's maths once the
            active dropout is folded in (eval mode or no dropout; a shared per-sample input mask on a
            one-directional layer; ``mask_scope="batch"`` masks; DropConnect; between-layer dropout;
            ``lengths=`` / packed input; torch's activations) and that kernel is the faster one —
            where both it and rnndrop's kernel can run a call, the first call of its kind times both
            and later ones take the faster (``RNNDROP_AUTOTUNE=0``: a static rule measured on the
            bench configs, docs/benchmarks.md) — else rnndrop's compiled kernel
            (float32/64 parameters, no projection, tanh/sigmoid/relu/linear activations): the C++
            extension for CPU tensors, the Triton kernels for CUDA tensors (also under autocast); else
            torch's kernel if it can, else the reference loop.
            ``"torch"`` / ``"fused"`` insist on torch's kernel / rnndrop's kernels and raise
            ``KernelUnavailableError`` with the reason; ``"reference"`` always runs the pure-torch loop.
            ``layer.last_backend`` (``"torch"``, ``"fused"``, ``"triton"`` or ``"reference"``) /
            ``last_backend_reason`` tell what the last call ran and why (the times measured, the rule,
            or why no compiled kernel could run it).

    Masks are ``Bernoulli(1-p)/(1-p)``, sampled once per forward call; see :mod:`rnndrop.masks`.
    In eval mode the layer is deterministic and equals the same layer without dropout.

    Initialisation:
        init: ``"torch"`` (default; torch.nn's ``U(±1/sqrt(hidden_size))`` for every parameter) or
            ``"keras"`` (Keras 3's defaults: glorot-uniform ``W_ih``, orthogonal ``W_hh`` over all gates,
            zero biases, LSTM forget bias 1 in ``b_ih``); see :mod:`rnndrop.init`. Used by
            ``reset_parameters()``.
"""

_DOC_FORWARD = """
        Args:
            input: ``(L, N, H_in)``, ``(N, L, H_in)`` if ``batch_first``, ``(L, H_in)`` unbatched,
                or a ``PackedSequence``.
            hx: initial state{hx_doc}; zeros if omitted.
            step_mask: Keras-style boolean mask ``(N, L)`` (always batch first; ``(L,)`` unbatched),
                True = real step. Any pattern is allowed (left/right padding, holes, empty rows);
                at a masked step all states are carried over and the output repeats the previous
                output (zeros if ``zero_output_for_mask``). On the input's device, or on the CPU (then
                moved to the input's device, like ``lengths``).
            lengths: ``(N,)`` integer lengths in ``[0, L]`` (a number for unbatched input) of right-padded
                sequences; equivalent to
                packing: outputs past a sequence's length are zeros and the final state is the
                state at its last real step. On the CPU (as torch's packing wants them) or the input's device.
            dropout_masks: pre-sampled :class:`~rnndrop.DropoutMasks` to use instead of sampling
                (in any mode) — for reproducing or comparing implementations. Each mask must have the
                input's dtype and device and finite values (e.g. from ``layer.sample_masks``).
            generator: overrides the layer's generator for this call.
        Returns:
            ``(output, {ret_doc})`` exactly as torch.nn: ``output`` is ``(L, N, D * H_out)``
            (batch first if ``batch_first``; packed if the input was packed), final states are
            ``(D * num_layers, N, ·)``.
"""

Backend = Literal["auto", "torch", "fused", "reference"]


def _exporter() -> str | None:
    """Name of the export / tracing machinery running this forward, or None in plain eager or torch.compile."""
    # Checked in this order: the ONNX exporters also set one of the other flags.
    if torch.onnx.is_in_onnx_export():
        return "torch.onnx.export"
    if getattr(torch.compiler, "is_exporting", lambda: False)():  # torch >= 2.5
        return "torch.export"
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    return None


def _refuse_random_masks_in_export(layer: nn.Module, exporter: str | None) -> None:
    """Raise when a training-mode layer with dropout is being exported or traced (by ``exporter``).

    An exported graph would either freeze one random draw as a constant (tracing) or ship a
    sampling op that the runtime replays differently; neither is what a served model wants.
    """
    if exporter is not None:
        raise RnnDropValueError(
            f"{type(layer).__name__} is in training mode with dropout active during {exporter}: the exported "
            "graph would contain random dropout masks. Call model.eval() before exporting (dropout is then off), "
            "or pass dropout_masks= explicitly"
        )


@torch.compiler.disable
def _sample_outside_graph(spec: MaskSpec, batch: int, time: int, **kwargs: Any) -> DropoutMasks:
    """``spec.sample`` run eagerly even inside ``torch.compile`` (for a user's ``torch.Generator``)."""
    return spec.sample(batch, time, **kwargs)


def _check_positive_int(value: object, argument: str, minimum: int = 1) -> int:
    # torch.nn's wording is included ("... should be of type int", "... must be greater than zero").
    if isinstance(value, bool) or not isinstance(value, int):
        raise RnnDropTypeError(
            f"{argument} must be an int >= {minimum}, got {type(value).__name__} "
            f"({argument} should be of type int, got: {type(value).__name__})"
        )
    if value < minimum:
        torch_says = "must be greater than zero" if minimum == 1 else "should be a positive integer or zero"
        raise RnnDropValueError(f"{argument} must be an int >= {minimum}, got {value} ({argument} {torch_says})")
    return value


def _check_bool(value: object, argument: str) -> bool:
    """torch.nn's check of ``bias`` / ``batch_first``: a bool, nothing else (``"False"`` would be true)."""
    if not isinstance(value, bool):
        raise RnnDropTypeError(f"{argument} should be of type bool, got: {type(value).__name__}")
    return value


def _check_rate(layer: RecurrentBase, value: object, argument: str) -> float:
    p = check_probability(value, argument)
    if p and argument == "candidate_dropout" and layer.mode == "RNN":
        raise RnnDropValueError(
            "candidate_dropout (Semeniuta et al.) is defined for LSTM and GRU only; for RNN the candidate "
            f"is the whole new state: use recurrent_dropout instead (got candidate_dropout={value})"
        )
    if p and argument == "zoneout_cell" and layer.mode != "LSTM":
        raise RnnDropValueError(f"zoneout_cell is for LSTM only (it has no cell state c), got {layer.mode}")
    return p


def _check_generator(value: object, argument: str = "generator") -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise RnnDropTypeError(f"{argument} must be a torch.Generator or None, got {type(value).__name__}")
    return value


def _check_backend(value: object) -> str:
    if value not in BACKENDS:
        raise RnnDropValueError(f"backend must be one of {BACKENDS}, got {value!r}")
    return value  # type: ignore[return-value]


# The options a user may change after construction (``layer.recurrent_dropout = 0.3``): each assignment
# runs the constructor's check, so a bad value fails there, with the constructor's message, instead of
# as NaNs or a kernel error at the next call.
_OPTION_CHECKS: dict[str, Any] = {
    "dropout": lambda layer, v: check_probability(v, "dropout", allow_one=True),
    **{name: functools.partial(lambda name, layer, v: _check_rate(layer, v, name), name)
       for name in ("input_dropout", "recurrent_dropout", "weight_dropout", "candidate_dropout",
                    "zoneout_hidden", "zoneout_cell")},
    "gate_masks": lambda layer, v: check_gate_masks(v),
    "mask_scope": lambda layer, v: check_choice(v, "mask_scope", MASK_SCOPE_CHOICES),
    "generator": lambda layer, v: _check_generator(v),
    "backend": lambda layer, v: _check_backend(v),
    "activation": lambda layer, v: resolve_activation(v, "nonlinearity" if layer.mode == "RNN" else "activation"),
    "recurrent_activation": lambda layer, v: resolve_activation(v, "recurrent_activation"),
}


def _torch_dtype_message(x: torch.Tensor, weight: torch.Tensor) -> str:
    """torch.nn's text for an input whose dtype is not the weights'."""
    return (f"RNN input dtype ({x.dtype}) does not match weight dtype ({weight.dtype}). Convert input: "
            f"input.to({weight.dtype}), or convert model: model.to({x.dtype})")


class RecurrentBase(GeneratorPicklingMixin, nn.Module):
    """Shared implementation of :class:`LSTM`, :class:`GRU` and :class:`RNN` (like torch's RNNBase)."""

    mode: str

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        activation: str | None = "tanh",
        recurrent_activation: str | None = "sigmoid",
        reset_after: bool = True,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        gate_masks: GateMasks = "shared",
        weight_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout_hidden: float = 0.0,
        zoneout_cell: float = 0.0,
        mask_scope: MaskScope = "sample",
        locked_dropout: bool = False,
        zero_output_for_mask: bool = False,
        generator: torch.Generator | None = None,
        backend: Backend = "auto",
        init: InitScheme = "torch",
    ) -> None:
        super().__init__()
        self.mode = mode
        self.input_size = _check_positive_int(input_size, "input_size")
        self.hidden_size = _check_positive_int(hidden_size, "hidden_size")
        self.num_layers = _check_positive_int(num_layers, "num_layers")
        self.proj_size = _check_positive_int(proj_size, "proj_size", minimum=0)
        if self.proj_size and mode != "LSTM":
            raise RnnDropValueError(
                f"proj_size is only supported by LSTM, got proj_size={proj_size} for {mode} "
                "(proj_size argument is only supported for LSTM, not RNN or GRU)"
            )
        if self.proj_size >= self.hidden_size:
            raise RnnDropValueError(
                f"proj_size must be smaller than hidden_size ({hidden_size}), got {proj_size} "
                "(proj_size has to be smaller than hidden_size)"
            )
        self.bias = _check_bool(bias, "bias")
        self.batch_first = _check_bool(batch_first, "batch_first")
        self.bidirectional = bool(bidirectional)
        # The options below are checked by __setattr__ (_OPTION_CHECKS), here and on any later assignment.
        self.dropout = dropout
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(
                "dropout (torch's between-layer dropout) has no effect with num_layers=1; "
                "use input_dropout / recurrent_dropout for dropout inside the layer",
                stacklevel=3,
            )
        self.input_dropout = input_dropout
        self.recurrent_dropout = recurrent_dropout
        self.gate_masks: GateMasks = gate_masks
        self.weight_dropout = weight_dropout
        self.candidate_dropout = candidate_dropout
        self.zoneout_hidden = zoneout_hidden
        self.zoneout_cell = zoneout_cell
        self.mask_scope: MaskScope = mask_scope
        self.locked_dropout = bool(locked_dropout)
        self.activation = activation
        self.recurrent_activation = recurrent_activation
        self.reset_after = bool(reset_after)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.generator = generator
        self.backend: Backend = backend
        self.init: InitScheme = check_choice(init, "init", INIT_SCHEMES)  # type: ignore[assignment]
        # Which implementation the last forward call ran ("torch", "fused", "triton", "reference") and why
        # (the measurement or rule that chose it, or why no compiled kernel could run the call).
        self.last_backend: str | None = None
        self.last_backend_reason: str | None = None

        factory = {"device": device, "dtype": dtype}
        if dtype is not None and not torch.empty((), dtype=dtype).is_floating_point():
            raise RnnDropTypeError(f"dtype must be a floating point dtype, got {dtype}")
        gates = NUM_GATES[mode]
        num_dirs = 2 if self.bidirectional else 1
        h_out = self.proj_size or self.hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else h_out * num_dirs
            for direction in range(num_dirs):
                suffix = "_reverse" if direction == 1 else ""
                shapes = [
                    (f"weight_ih_l{layer}{suffix}", (gates * self.hidden_size, layer_in)),
                    (f"weight_hh_l{layer}{suffix}", (gates * self.hidden_size, h_out)),
                ]
                if self.bias:
                    shapes += [
                        (f"bias_ih_l{layer}{suffix}", (gates * self.hidden_size,)),
                        (f"bias_hh_l{layer}{suffix}", (gates * self.hidden_size,)),
                    ]
                if self.proj_size:
                    shapes.append((f"weight_hr_l{layer}{suffix}", (self.proj_size, self.hidden_size)))
                for name, shape in shapes:
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def __setattr__(self, name: str, value: Any) -> None:
        check = _OPTION_CHECKS.get(name)
        if check is not None:
            value = check(self, value)
        super().__setattr__(name, value)

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Initialise the parameters by ``self.init``: torch.nn's scheme (every parameter ~
        U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))) or Keras's (:func:`rnndrop.init.keras_`)."""
        initialize_(self, self.init)

    def flatten_parameters(self) -> None:
        """No-op kept for drop-in compatibility (rnndrop does not use cuDNN's flat weight buffer)."""

    @property
    def num_directions(self) -> int:
        """2 if bidirectional, else 1 (``D`` in the shapes)."""
        return 2 if self.bidirectional else 1

    @property
    def _flat_weights(self) -> list[nn.Parameter]:
        """The parameters in torch.nn's flat order (``_flat_weights_names``), read afresh (torch.nn keeps a list)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters grouped per layer and direction, in torch.nn's order (as ``nn.LSTM.all_weights``)."""
        per = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i : i + per]] for i in range(0, len(names), per)]

    def _direction_params(self) -> list[list[DirectionParams]]:
        suffixes = ["", "_reverse"][: self.num_directions]
        params = []
        for k in range(self.num_layers):
            layer = []
            for s in suffixes:
                layer.append(
                    DirectionParams(
                        w_ih=getattr(self, f"weight_ih_l{k}{s}"),
                        w_hh=getattr(self, f"weight_hh_l{k}{s}"),
                        b_ih=getattr(self, f"bias_ih_l{k}{s}") if self.bias else None,
                        b_hh=getattr(self, f"bias_hh_l{k}{s}") if self.bias else None,
                        w_hr=getattr(self, f"weight_hr_l{k}{s}") if self.proj_size else None,
                    )
                )
            params.append(layer)
        return params

    @property
    def cell_config(self) -> CellConfig:
        """The cell kind and activations the sequence loop runs (hashable; no tensors)."""
        return CellConfig(self.mode, self.activation, self.recurrent_activation, self.reset_after)

    @property
    def mask_spec(self) -> MaskSpec:
        """What this layer samples per call (see :mod:`rnndrop.masks`)."""
        h_out = self.proj_size or self.hidden_size
        sizes = (self.input_size,) + (h_out * self.num_directions,) * (self.num_layers - 1)
        return MaskSpec(
            num_layers=self.num_layers,
            num_directions=self.num_directions,
            num_gates=NUM_GATES[self.mode],
            input_sizes=sizes,
            hidden_out=h_out,
            input_p=self.input_dropout,
            recurrent_p=self.recurrent_dropout,
            between_p=self.dropout,
            gate_masks=self.gate_masks,
            hidden_size=self.hidden_size,
            weight_p=self.weight_dropout,
            candidate_p=self.candidate_dropout,
            zoneout_h=self.zoneout_hidden,
            zoneout_c=self.zoneout_cell,
            scope=self.mask_scope,
            locked_between=self.locked_dropout,
        )

    @property
    def masks_per_sample(self) -> bool:
        """True when every sequence of a batch gets its own noise (no batch-shared mask).

        False with ``weight_dropout`` (one weight mask per call) or ``mask_scope="batch"``. Monte-Carlo
        inference uses this to know whether repeating a batch equals separate stochastic passes.
        """
        return self.weight_dropout == 0.0 and self.mask_scope == "sample"

    def sample_masks(
        self, batch: int, time: int, *, generator: torch.Generator | None = None
    ) -> DropoutMasks:
        """Draw the masks one training call on ``batch`` sequences of ``time`` steps would use."""
        p = self.weight_ih_l0
        return self.mask_spec.sample(
            batch, time, dtype=p.dtype, device=p.device, generator=generator or self.generator
        )

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        extras = {
            "proj_size": (self.proj_size, 0),
            "num_layers": (self.num_layers, 1),
            "bias": (self.bias, True),
            "batch_first": (self.batch_first, False),
            "dropout": (self.dropout, 0.0),
            "bidirectional": (self.bidirectional, False),
            "input_dropout": (self.input_dropout, 0.0),
            "recurrent_dropout": (self.recurrent_dropout, 0.0),
            "gate_masks": (self.gate_masks, "shared"),
            "weight_dropout": (self.weight_dropout, 0.0),
            "candidate_dropout": (self.candidate_dropout, 0.0),
            "zoneout_hidden": (self.zoneout_hidden, 0.0),
            "zoneout_cell": (self.zoneout_cell, 0.0),
            "mask_scope": (self.mask_scope, "sample"),
            "locked_dropout": (self.locked_dropout, False),
            "zero_output_for_mask": (self.zero_output_for_mask, False),
            "backend": (self.backend, "auto"),
            "init": (self.init, "torch"),
        }
        if self.mode == "RNN":
            extras["nonlinearity"] = (self.activation, "tanh")
        else:
            extras["activation"] = (self.activation, "tanh")
            extras["recurrent_activation"] = (self.recurrent_activation, "sigmoid")
        if self.mode == "GRU":
            extras["reset_after"] = (self.reset_after, True)
        for key, (value, default) in extras.items():
            if value != default:
                s += f", {key}={value!r}"
        return s

    # ------------------------------------------------------------------ forward
    def _num_states(self) -> int:
        return 2 if self.mode == "LSTM" else 1

    def _state_sizes(self) -> list[int]:
        h_out = self.proj_size or self.hidden_size
        return [h_out, self.hidden_size] if self.mode == "LSTM" else [h_out]

    def _prepare_states(
        self, hx: Any, batch: int, batched: bool, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, ...]:
        rows = self.num_layers * self.num_directions
        sizes = self._state_sizes()
        if hx is None:
            return tuple(torch.zeros(rows, batch, s, dtype=dtype, device=device) for s in sizes)
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise RnnDropTypeError(
                    f"hx must be a tuple (h_0, c_0) for LSTM, got {type(hx).__name__}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
                )
            states = tuple(hx)
            names = ("h_0", "c_0")
        else:
            if not isinstance(hx, torch.Tensor):
                raise RnnDropTypeError(f"hx must be a Tensor for {self.mode}, got {type(hx).__name__}")
            states = (hx,)
            names = ("hx",)
        out = []
        for i, (name, s, size) in enumerate(zip(names, states, sizes)):
            if not isinstance(s, torch.Tensor):
                raise RnnDropTypeError(f"{name} must be a Tensor, got {type(s).__name__}")
            want = (rows, batch, size) if batched else (rows, size)
            if tuple(s.shape) != want:
                kind = "batched" if batched else "unbatched"
                raise RnnDropShapeError(
                    f"{name} must have shape {want} for {kind} input, got {tuple(s.shape)} "
                    f"({self._torch_state_message(states, i, want, batched)})"
                )
            if s.dtype != dtype:
                raise RnnDropDtypeError(f"{name} must have dtype {dtype} like the input, got {s.dtype}")
            if s.device != device:
                raise RnnDropValueError(f"{name} must be on device {device} like the input, got {s.device}")
            out.append(s if batched else s.unsqueeze(1))
        return tuple(out)

    def _torch_state_message(
        self, states: tuple[Any, ...], index: int, want: tuple[int, ...], batched: bool
    ) -> str:
        """torch.nn's text for an initial state of the wrong rank or size."""
        rank = 3 if batched else 2
        kind = "batched 3-D" if batched else "unbatched 2-D"
        if any(isinstance(t, torch.Tensor) and t.dim() != rank for t in states):
            if self.mode == "LSTM":
                ranks = ", ".join(f"{t.dim()}-D" for t in states)
                return f"For {kind} input, hx and cx should also be {rank}-D but got ({ranks}) tensors"
            return f"For {kind} input, hx should also be {rank}-D but got {states[0].dim()}-D tensor"
        which = f"hidden[{index}]" if self.mode == "LSTM" else "hidden"
        return f"Expected {which} size {want}, got {list(states[index].shape)}"

    def forward(
        self,
        input: torch.Tensor | PackedSequence,
        hx: Any = None,
        *,
        step_mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        dropout_masks: DropoutMasks | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Any, Any]:
        """Run the layer: see :meth:`LSTM.forward`, :meth:`GRU.forward`, :meth:`RNN.forward`."""
        if generator is not None and not isinstance(generator, torch.Generator):
            raise RnnDropTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        packed = isinstance(input, PackedSequence)
        if packed:
            if step_mask is not None or lengths is not None:
                raise RnnDropValueError("step_mask and lengths cannot be combined with a PackedSequence input")
            x, lens = pad_packed_sequence(input, batch_first=False)
            batched = True
        else:
            if not isinstance(input, torch.Tensor):
                raise RnnDropTypeError(
                    f"input must be a Tensor or PackedSequence, got {type(input).__name__}"
                )
            if input.dim() not in (2, 3):
                raise RnnDropValueError(
                    f"input must be 3-D (batched) or 2-D (unbatched), got {input.dim()}-D of shape "
                    f"{tuple(input.shape)} ({self.mode}: Expected input to be 2D or 3D, got {input.dim()}D instead)"
                )
            batched = input.dim() == 3
            if not batched:
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
        self._check_input(x)
        time, batch = x.shape[0], x.shape[1]
        states = self._prepare_states(hx, batch, batched, x.dtype, x.device)

        zero_masked = self.zero_output_for_mask
        steps = None
        if packed:
            steps = torch.arange(time, device=x.device).unsqueeze(1) < lens.to(x.device).unsqueeze(0)
            zero_masked = True
        elif step_mask is not None and lengths is not None:
            raise RnnDropValueError("pass either step_mask or lengths, not both")
        elif step_mask is not None:
            steps = self._check_step_mask(step_mask, batch, time, batched, x.device)
        elif lengths is not None:
            steps = self._check_lengths(lengths, batch, time, batched, x.device)
            zero_masked = True

        spec = self.mask_spec
        exporter = _exporter()
        if dropout_masks is not None:
            spec.check(dropout_masks, batch, time, dtype=x.dtype, device=x.device)
            masks: DropoutMasks | None = dropout_masks
        elif self.training:
            if not spec.is_empty():
                _refuse_random_masks_in_export(self, exporter)
            gen = generator or self.generator
            # torch.compile cannot trace a torch.Generator (torch 2.13): drawing every mask in one eager call
            # costs one graph break instead of one per mask. Without a generator, sampling stays in the graph.
            sample = spec.sample if gen is None else functools.partial(_sample_outside_graph, spec)
            # DropConnect's mask stays keys for the kernels that draw it themselves; in a compiled graph the
            # keys would be constants (a recompile per call), so there it is a tensor.
            masks = None if spec.is_empty() else sample(batch, time, dtype=x.dtype, device=x.device, generator=gen,
                                                        lazy_weight=not is_compiling())
        else:
            masks = spec.eval_masks(dtype=x.dtype, device=x.device)

        params = self._direction_params()
        if exporter is not None and self.backend != "reference":
            # An exported graph must run without rnndrop (ONNX Runtime, torch.export consumers): export the
            # pure-torch reference loop, which computes the same function, instead of an opaque compiled kernel.
            if self.backend == "fused":
                raise KernelUnavailableError(
                    f"backend='fused' cannot be exported by {exporter}: the compiled kernel is not portable; "
                    "use backend='auto' (exports the equivalent reference loop) or backend='reference'"
                )
            stack_fn, backend, reason = run_stack, "reference", f"{exporter} exports the portable reference loop"
        else:
            stack_fn, backend, reason = select_stack_fn(
                self.backend, self.cell_config, x, states, params, masks, steps, zero_masked
            )
        # Plain attributes, set past nn.Module.__setattr__'s parameter/buffer/module bookkeeping (per call).
        self.__dict__["last_backend"], self.__dict__["last_backend_reason"] = backend, reason
        output, finals = stack_fn(self.cell_config, x, states, params, masks, steps, zero_masked)
        fallback = take_fallback()  # the kernel failed on its first launch: the reference path ran
        if fallback is not None:
            self.__dict__["last_backend"], self.__dict__["last_backend_reason"] = "reference", fallback
        if packed:
            sorted_idx = input.sorted_indices
            out_sorted = output if sorted_idx is None else output.index_select(1, sorted_idx)
            lens_sorted = lens if sorted_idx is None else lens.index_select(0, sorted_idx.cpu())
            repacked = pack_padded_sequence(out_sorted, lens_sorted, enforce_sorted=True)
            output = PackedSequence(repacked.data, input.batch_sizes, input.sorted_indices, input.unsorted_indices)
        elif not batched:
            output = output.squeeze(1)
            finals = tuple(f.squeeze(1) for f in finals)
        elif self.batch_first:
            output = output.transpose(0, 1)
        hidden = finals if self.mode == "LSTM" else finals[0]
        return output, hidden

    def _check_input(self, x: torch.Tensor) -> None:
        # Errors carry torch.nn's wording and are also instances of torch.nn's class (rnndrop.errors).
        params = [(name, getattr(self, name)) for name in self._flat_weights_names]
        first = params[0][1]
        if not x.is_floating_point():
            raise RnnDropDtypeError(
                f"input must be a floating point tensor, got dtype {x.dtype} ({_torch_dtype_message(x, first)})"
            )
        if x.shape[-1] != self.input_size:
            raise RnnDropShapeError(
                f"input must have {self.input_size} features (input_size) in its last dimension, got "
                f"{x.shape[-1]} (input.size(-1) must be equal to input_size. Expected {self.input_size}, "
                f"got {x.shape[-1]})"
            )
        if x.shape[0] == 0:
            raise RnnDropShapeError(
                "input must have at least one timestep, got sequence length 0 "
                "(Expected sequence length to be larger than 0 in RNN)"
            )
        # Every parameter, not only the first: one converted after construction (`layer.weight_hh_l0.data =
        # ....float()`, a partial .to()) would otherwise surface as torch's "m1 and m2 must have the same dtype".
        if any(p.dtype != first.dtype for _, p in params):
            odd = [(n, p) for n, p in params if p.dtype != x.dtype] or params
            raise RnnDropDtypeError(
                f"parameter {odd[0][0]} has dtype {odd[0][1].dtype} but the input has {x.dtype}; every parameter "
                f"must have the input's dtype (was one converted after construction?): convert the whole layer, "
                f"e.g. layer.to({x.dtype})"
            )
        if any(p.device != first.device for _, p in params):
            odd = [(n, p) for n, p in params if p.device != x.device] or params
            raise RnnDropValueError(
                f"parameter {odd[0][0]} is on {odd[0][1].device} but the input is on {x.device}; every parameter "
                f"must be on the input's device: move the whole layer, e.g. layer.to({str(x.device)!r})"
            )
        if x.dtype != first.dtype:
            raise RnnDropDtypeError(
                f"input dtype {x.dtype} does not match the parameters' dtype {first.dtype}; "
                f"convert one of them (e.g. layer.to({x.dtype})) ({_torch_dtype_message(x, first)})"
            )
        if x.device != first.device:
            raise RnnDropValueError(f"input is on {x.device} but the parameters are on {first.device}")

    @staticmethod
    def _check_step_mask(
        step_mask: Any, batch: int, time: int, batched: bool, device: torch.device
    ) -> torch.Tensor:
        if not isinstance(step_mask, torch.Tensor):
            raise RnnDropTypeError(f"step_mask must be a bool Tensor, got {type(step_mask).__name__}")
        if step_mask.dtype != torch.bool:
            raise RnnDropTypeError(f"step_mask must have dtype torch.bool, got {step_mask.dtype}")
        want = (batch, time) if batched else (time,)
        if tuple(step_mask.shape) != want:
            raise RnnDropValueError(
                f"step_mask must have shape {want} (batch, time) — batch first whatever batch_first is — "
                f"got {tuple(step_mask.shape)}"
            )
        if step_mask.device != device and step_mask.device.type != "cpu":
            raise RnnDropValueError(
                f"step_mask must be on the input's device ({device}) or on the CPU (it is then moved to the "
                f"input's device), got {step_mask.device}"
            )
        m = step_mask if batched else step_mask.unsqueeze(0)
        return m.to(device).transpose(0, 1)

    @staticmethod
    def _check_lengths(lengths: Any, batch: int, time: int, batched: bool, device: torch.device) -> torch.Tensor:
        lengths = torch.as_tensor(lengths)
        if lengths.is_floating_point() or lengths.dtype == torch.bool or lengths.is_complex():
            raise RnnDropTypeError(f"lengths must be integers, got dtype {lengths.dtype}")
        if lengths.device != device and lengths.device.type != "cpu":  # CPU lengths are moved, as torch's packing does
            raise RnnDropValueError(
                f"lengths must be on the input's device ({device}) or on the CPU (they are then moved to the "
                f"input's device), got {lengths.device}"
            )
        if not batched and lengths.dim() == 0:  # one unbatched sequence: a plain number is natural
            lengths = lengths.reshape(1)
        if tuple(lengths.shape) != (batch,):
            want = f"({batch},)" if batched else "() or (1,) for unbatched input"
            raise RnnDropValueError(f"lengths must have shape {want}, got {tuple(lengths.shape)}")
        if batch and (int(lengths.min()) < 0 or int(lengths.max()) > time):
            raise RnnDropValueError(
                f"lengths must lie in [0, {time}] (the sequence length), got min {int(lengths.min())} "
                f"and max {int(lengths.max())}"
            )
        return torch.arange(time, device=device).unsqueeze(1) < lengths.to(device).unsqueeze(0)


class LSTM(RecurrentBase):
    __doc__ = (
        """Drop-in ``torch.nn.LSTM`` with Keras-style time-locked input and recurrent dropout.

    Same arguments, parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
    ``bias_hh_l{k}``, ``weight_hr_l{k}``, ``_reverse`` suffixes), initialisation, inputs and
    outputs as :class:`torch.nn.LSTM`. Gates ``i, f, g, o``::

        i, f, o = σ(·), g = φ(·) of  x_t W_ih^T + b_ih + (h_{t-1} ⊙ m) W_hh^T + b_hh
        c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ φ(c_t)

    with ``x_t`` multiplied by the input mask and ``m`` the recurrent mask.

    Extra arguments:
        activation: ``φ``, default ``"tanh"``; recurrent_activation: ``σ``, default ``"sigmoid"``
            (names: see ``rnndrop.activations.ACTIVATIONS``; ``"hard_sigmoid"`` is Keras 3's).
    """
        + _DOC_DROPOUT_ARGS
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        gate_masks: GateMasks = "shared",
        weight_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout_hidden: float = 0.0,
        zoneout_cell: float = 0.0,
        mask_scope: MaskScope = "sample",
        locked_dropout: bool = False,
        activation: str | None = "tanh",
        recurrent_activation: str | None = "sigmoid",
        zero_output_for_mask: bool = False,
        generator: torch.Generator | None = None,
        backend: Backend = "auto",
        init: InitScheme = "torch",
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, activation=activation, recurrent_activation=recurrent_activation,
            input_dropout=input_dropout, recurrent_dropout=recurrent_dropout, gate_masks=gate_masks,
            weight_dropout=weight_dropout, candidate_dropout=candidate_dropout, zoneout_hidden=zoneout_hidden,
            zoneout_cell=zoneout_cell, mask_scope=mask_scope, locked_dropout=locked_dropout,
            zero_output_for_mask=zero_output_for_mask, generator=generator, backend=backend, init=init,
        )

    def forward(self, input, hx=None, **kwargs):  # type: ignore[override]
        return super().forward(input, hx, **kwargs)

    forward.__doc__ = "Run the LSTM." + _DOC_FORWARD.format(
        hx_doc=" ``(h_0, c_0)``, each ``(D * num_layers, N, ·)``", ret_doc="(h_n, c_n)"
    )


class GRU(RecurrentBase):
    __doc__ = (
        """Drop-in ``torch.nn.GRU`` with Keras-style time-locked dropout and both reset variants.

    Gates ``r, z, n`` as torch.nn::

        r, z = σ(x_t W_i{r,z}^T + b_i{r,z} + (h ⊙ m) W_h{r,z}^T + b_h{r,z})
        reset_after=True  (torch, Keras default): n = φ(x_t W_in^T + b_in + r ⊙ ((h ⊙ m) W_hn^T + b_hn))
        reset_after=False (Keras's other variant): n = φ(x_t W_in^T + b_in + (r ⊙ h ⊙ m) W_hn^T + b_hn)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    Extra arguments:
        reset_after: see above, default True.
        activation: ``φ``, default ``"tanh"``; recurrent_activation: ``σ``, default ``"sigmoid"``.
        proj_size: accepted as torch.nn.GRU accepts it: anything but 0 raises ``ValueError``.
    """
        + _DOC_DROPOUT_ARGS
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        reset_after: bool = True,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        gate_masks: GateMasks = "shared",
        weight_dropout: float = 0.0,
        candidate_dropout: float = 0.0,
        zoneout_hidden: float = 0.0,
        mask_scope: MaskScope = "sample",
        locked_dropout: bool = False,
        activation: str | None = "tanh",
        recurrent_activation: str | None = "sigmoid",
        zero_output_for_mask: bool = False,
        generator: torch.Generator | None = None,
        backend: Backend = "auto",
        init: InitScheme = "torch",
        proj_size: int = 0,
    ) -> None:
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, activation=activation, recurrent_activation=recurrent_activation,
            reset_after=reset_after, input_dropout=input_dropout, recurrent_dropout=recurrent_dropout,
            gate_masks=gate_masks, weight_dropout=weight_dropout, candidate_dropout=candidate_dropout,
            zoneout_hidden=zoneout_hidden, mask_scope=mask_scope, locked_dropout=locked_dropout,
            zero_output_for_mask=zero_output_for_mask, generator=generator, backend=backend, init=init,
        )

    def forward(self, input, hx=None, **kwargs):  # type: ignore[override]
        return super().forward(input, hx, **kwargs)

    forward.__doc__ = "Run the GRU." + _DOC_FORWARD.format(
        hx_doc=" ``h_0`` ``(D * num_layers, N, H_out)``", ret_doc="h_n"
    )


class RNN(RecurrentBase):
    __doc__ = (
        """Drop-in ``torch.nn.RNN`` (Elman / Keras SimpleRNN) with Keras-style time-locked dropout.

    ``h_t = φ(x_t W_ih^T + b_ih + (h_{t-1} ⊙ m) W_hh^T + b_hh)``.

    Extra arguments:
        nonlinearity: ``φ``; torch accepts ``"tanh"`` and ``"relu"``, rnndrop any name in
            ``rnndrop.activations.ACTIVATIONS`` (Keras SimpleRNN ``activation``). Default ``"tanh"``.
        proj_size: accepted as torch.nn.RNN accepts it: anything but 0 raises ``ValueError``.
    """
        + _DOC_DROPOUT_ARGS
    )

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str | None = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        gate_masks: GateMasks = "shared",
        weight_dropout: float = 0.0,
        zoneout_hidden: float = 0.0,
        mask_scope: MaskScope = "sample",
        locked_dropout: bool = False,
        zero_output_for_mask: bool = False,
        generator: torch.Generator | None = None,
        backend: Backend = "auto",
        init: InitScheme = "torch",
        proj_size: int = 0,
    ) -> None:
        super().__init__(
            "RNN", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, device, dtype, activation=resolve_activation(nonlinearity, "nonlinearity"),
            recurrent_activation=None, input_dropout=input_dropout,
            recurrent_dropout=recurrent_dropout, gate_masks=gate_masks, weight_dropout=weight_dropout,
            zoneout_hidden=zoneout_hidden, mask_scope=mask_scope, locked_dropout=locked_dropout,
            zero_output_for_mask=zero_output_for_mask, generator=generator, backend=backend, init=init,
        )

    @property
    def nonlinearity(self) -> str:
        """torch.nn's name for the activation ``φ`` (``"tanh"``, ``"relu"`` or any rnndrop activation name)."""
        return self.activation

    def forward(self, input, hx=None, **kwargs):  # type: ignore[override]
        return super().forward(input, hx, **kwargs)

    forward.__doc__ = "Run the RNN." + _DOC_FORWARD.format(
        hx_doc=" ``h_0`` ``(D * num_layers, N, H_out)``", ret_doc="h_n"
    )
