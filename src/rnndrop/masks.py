"""Dropout masks: the one place where randomness enters a recurrent layer.

Convention (every path — reference, fused CPU, GPU — uses exactly these tensors):

* A dropout mask is ``Bernoulli(1 - p) / (1 - p)``: every entry is exactly ``0`` or ``1 / (1 - p)``.
* Masks are sampled **once per forward call**, before the time loop, and discarded after it.
  Kernels never draw random numbers; they receive masks as tensors, so a test can feed the
  very same masks to two implementations.
* ``B`` below is the batch size with ``mask_scope="sample"`` (Gal: an independent mask per
  sequence, the default) or ``1`` with ``mask_scope="batch"`` (one mask shared by the batch,
  broadcast; cheaper and lets a recurrent mask be folded into the weights).

  ===============  ==========================  ==============================================  =========
  field            shape                       where it acts                                   lifetime
  ===============  ==========================  ==============================================  =========
  ``input``        ``(G, B, input_size)``      multiplies ``x_t`` before the input weights     sequence
  ``recurrent``    ``(G, B, H_out)``           multiplies ``h_{t-1}`` before recurrent weights sequence
  ``weight_hh``    ``(G * H, H_out)``          multiplies ``W_hh`` (DropConnect)               call
  ``candidate``    ``(1, B, H)``               multiplies the LSTM ``g`` / GRU ``n`` candidate sequence
  ``zoneout_h``    ``(T, B, H_out)``           keep-previous weight of ``h`` (see below)        step
  ``zoneout_c``    ``(T, B, H)``               keep-previous weight of ``c`` (LSTM)             step
  ===============  ==========================  ==============================================  =========

  ``G`` is 1 when one mask is shared by all gates (``gate_masks="shared"``, Gal's "tied"
  variant) or the number of gates (LSTM 4, GRU 3, RNN 1) with ``gate_masks="per_gate"``
  (Keras's layout whenever ``recurrent_dropout > 0``; Gal's "untied"). Gate blocks follow the
  torch weight layout: LSTM ``i, f, g, o``; GRU ``r, z, n``. ``H`` is ``hidden_size``; ``H_out``
  is ``proj_size`` for a projected LSTM, else ``hidden_size``. The cell state ``c`` is never
  dropped (only zoned out).
* Time-locked masks (``input``, ``recurrent``, ``candidate``; Keras ``dropout`` /
  ``recurrent_dropout``, Gal & Ghahramani 2016, Semeniuta et al. 2016) have no time axis: one
  draw per sequence, reused at every timestep. ``weight_hh`` (Wan et al. 2013; Merity et al.
  2017) is one draw per call, shared by the batch and all timesteps.
* Zoneout (Krueger et al. 2016) is not scaled: its tensors are the weight ``w`` of the previous
  state in ``s_t = w ⊙ s_{t-1} + (1 - w) ⊙ s̃_t``: Bernoulli(z) draws, fresh per timestep, in
  training; the constant ``z`` (shape ``(1, 1, 1)``) in eval — the expectation.
* Between stacked layers, torch's own ``dropout`` argument keeps its torch meaning: an
  independent mask per element **and timestep**, shape ``(T, B, D * H_out)``; with
  ``locked_dropout=True`` one mask per sequence, shape ``(1, B, D * H_out)``.

Sampling (:mod:`rnndrop.counter_rng` has the arithmetic): a training call draws **one seed**, two
32-bit words, from the layer's (or the call's) ``torch.Generator``, else from torch's global CPU
RNG — its only draw from torch's RNGs. Every mask element is then a keyed hash of counters, a pure
function of (seed, layer ``k``, direction ``d``, mask kind, row, sample ``b``, unit ``j``); a mask of
shape ``(rows, B, units)`` is drawn as ``counter_rng.keyed_draws(mask_keys(seed, k, d, kind), ...)``:

  ===============  =====================================  ==================  ================
  kind             rows (``a``)                           sample (``b``)      units (``j``)
  ===============  =====================================  ==================  ================
  ``input``        gate ``g`` (0 when shared)             ``b``               input feature
  ``recurrent``    gate ``g`` (0 when shared)             ``b``               unit of ``h``
  ``weight_hh``    row of ``W_hh`` (``G * H``)            always 0            column of ``W_hh``
  ``candidate``    0                                      ``b``               unit of ``c``
  ``zoneout_h/c``  timestep ``t``                         ``b``               unit
  ``between``      timestep ``t`` (0 when locked)         ``b``               feature (``D * H_out``)
  ===============  =====================================  ==================  ================

  (``d`` is 0 for the between-layer mask after layer ``k``; ``b`` is always 0 with
  ``mask_scope="batch"``, except for the per-step between-layer mask, which is per sample.)

What is invariant, so that a seeded layer gives the same masks bit for bit: the batch size and how a
batch is split (masks drawn for batch 8 restricted to samples 0..2 equal the masks drawn for batch 3;
sample ``b``'s masks do not depend on the other samples), the sequence length (a per-step mask of
``T`` steps is a prefix of one of ``T' > T`` steps), the thread count and the device (CPU, CUDA, with
or without the compiled extension, whose sampler computes the same numbers). What changes them: the
seed, the layer's sizes (``input_size``, ``hidden_size``, ``proj_size``, ``num_gates``, ``gate_masks``
layout), the mask kind, the layer and the direction.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch

from .counter_rng import Seed, draw_seed, keyed_draws, mask_keys
from .errors import RnnDropTypeError, RnnDropValueError

GateMasks = Literal["shared", "per_gate"]
GATE_MASK_CHOICES: tuple[str, ...] = ("shared", "per_gate")
MaskScope = Literal["sample", "batch"]
MASK_SCOPE_CHOICES: tuple[str, ...] = ("sample", "batch")


def check_probability(p: object, argument: str) -> float:
    """Validate a dropout probability in ``[0, 1)`` and return it as a float."""
    # numbers.Real, like torch.nn: numpy scalars (np.float32(0.2)) are accepted, bools are not.
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise RnnDropTypeError(f"{argument} must be a float in [0, 1), got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:  # NaN fails this test too
        raise RnnDropValueError(f"{argument} must be in [0, 1), got {p}")
    return p


def check_choice(value: object, argument: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RnnDropValueError(f"{argument} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


def check_gate_masks(value: object) -> GateMasks:
    return check_choice(value, "gate_masks", GATE_MASK_CHOICES)  # type: ignore[return-value]


def bernoulli_mask(
    shape: Sequence[int],
    p: float,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample a dropout mask of ``shape``: entries ``0`` with probability ``p``, else ``1/(1-p)``."""
    keep = 1.0 - p
    mask = torch.empty(tuple(shape), dtype=dtype, device=device)
    mask.bernoulli_(keep, generator=generator)
    return mask.div_(keep)


@dataclass(frozen=True)
class DirectionMasks:
    """Masks of one layer and one direction, for one forward call (shapes: module docstring).

    A field is ``None`` when its technique is off.
    """

    input: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None
    weight_hh: torch.Tensor | None = None
    candidate: torch.Tensor | None = None
    zoneout_h: torch.Tensor | None = None
    zoneout_c: torch.Tensor | None = None

    def active(self) -> tuple[str, ...]:
        """Names of the fields that are set (what a kernel must support to run these masks)."""
        return tuple(name for name in _DIRECTION_MASK_FIELDS if getattr(self, name) is not None)


_DIRECTION_MASK_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DirectionMasks))


@dataclass(frozen=True)
class DropoutMasks:
    """Every mask a stacked (bi)directional layer uses in one forward call.

    Attributes:
        layers: ``layers[k][d]`` holds layer ``k``, direction ``d`` (0 forward, 1 reverse).
        between: ``between[k]`` is the ``(T or 1, B, D * H_out)`` mask applied to the output of
            layer ``k`` before layer ``k + 1`` (``None`` when off); length ``num_layers - 1`` or 0.
    """

    layers: tuple[tuple[DirectionMasks, ...], ...]
    between: tuple[torch.Tensor | None, ...] = ()


@dataclass(frozen=True)
class MaskSpec:
    """What a layer needs sampled: rates, layouts and sizes (no randomness, no tensors)."""

    num_layers: int
    num_directions: int
    num_gates: int
    input_sizes: tuple[int, ...]  # input size of each layer
    hidden_out: int  # size of h (proj_size if projected)
    input_p: float
    recurrent_p: float
    between_p: float
    gate_masks: GateMasks
    hidden_size: int = 0  # size of c and of the gates' blocks; 0 means hidden_out
    weight_p: float = 0.0
    candidate_p: float = 0.0
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0
    scope: MaskScope = "sample"
    locked_between: bool = False

    @property
    def mask_gates(self) -> int:
        return self.num_gates if self.gate_masks == "per_gate" else 1

    @property
    def cell_size(self) -> int:
        return self.hidden_size or self.hidden_out

    def is_empty(self) -> bool:
        """True when a training call samples nothing."""
        rates = (self.input_p, self.recurrent_p, self.weight_p, self.candidate_p, self.zoneout_h, self.zoneout_c)
        return all(r == 0.0 for r in rates) and (self.between_p == 0.0 or self.num_layers == 1)

    def has_zoneout(self) -> bool:
        return self.zoneout_h > 0 or self.zoneout_c > 0

    def sample(
        self,
        batch: int,
        time: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: torch.Generator | None = None,
        seed: Seed | None = None,
    ) -> DropoutMasks:
        """Draw all masks of a training call on ``batch`` sequences of ``time`` steps.

        One seed from ``generator`` (torch's global CPU RNG without one), unless ``seed`` (two 32-bit
        words, see :func:`rnndrop.counter_rng.draw_seed`) is given; nothing is drawn when the spec
        samples nothing. The masks are a function of the seed (module docstring).
        """
        if self.is_empty():
            return self._empty_masks()
        if seed is None:
            seed = draw_seed(generator)
        b = batch if self.scope == "sample" else 1
        h, c = self.hidden_out, self.cell_size

        def dropout(k: int, d: int, kind: str, shape: tuple[int, int, int], p: float) -> torch.Tensor:
            return keyed_draws(mask_keys(seed, k, d, kind), p, shape, below=0.0, above=1.0 / (1.0 - p),
                               dtype=dtype, device=device)

        def zoneout(k: int, d: int, kind: str, size: int, z: float) -> torch.Tensor:
            return keyed_draws(mask_keys(seed, k, d, kind), z, (time, b, size), below=1.0, above=0.0, dtype=dtype,
                               device=device)

        g = self.mask_gates
        layers = []
        between: list[torch.Tensor | None] = []
        for k in range(self.num_layers):
            directions = []
            for d in range(self.num_directions):
                m: dict[str, torch.Tensor] = {}
                if self.input_p > 0:
                    m["input"] = dropout(k, d, "input", (g, b, self.input_sizes[k]), self.input_p)
                if self.recurrent_p > 0:
                    m["recurrent"] = dropout(k, d, "recurrent", (g, b, h), self.recurrent_p)
                if self.weight_p > 0:
                    rows = self.num_gates * c
                    m["weight_hh"] = dropout(k, d, "weight_hh", (rows, 1, h), self.weight_p).view(rows, h)
                if self.candidate_p > 0:
                    m["candidate"] = dropout(k, d, "candidate", (1, b, c), self.candidate_p)
                if self.zoneout_h > 0:
                    m["zoneout_h"] = zoneout(k, d, "zoneout_h", h, self.zoneout_h)
                if self.zoneout_c > 0:
                    m["zoneout_c"] = zoneout(k, d, "zoneout_c", c, self.zoneout_c)
                directions.append(DirectionMasks(**m))
            layers.append(tuple(directions))
            if k < self.num_layers - 1:
                steps, samples = (1, b) if self.locked_between else (time, batch)
                shape = (steps, samples, self.num_directions * h)
                between.append(dropout(k, 0, "between", shape, self.between_p) if self.between_p > 0 else None)
        return DropoutMasks(tuple(layers), tuple(between))

    def _empty_masks(self) -> DropoutMasks:
        direction = DirectionMasks()
        layers = tuple((direction,) * self.num_directions for _ in range(self.num_layers))
        return DropoutMasks(layers, (None,) * (self.num_layers - 1))

    def eval_masks(self, *, dtype: torch.dtype, device: torch.device | str) -> DropoutMasks | None:
        """What an eval-mode call uses: nothing, except zoneout's expectation (constant ``z``)."""
        if not self.has_zoneout():
            return None
        m: dict[str, torch.Tensor] = {}
        if self.zoneout_h > 0:
            m["zoneout_h"] = torch.full((1, 1, 1), self.zoneout_h, dtype=dtype, device=device)
        if self.zoneout_c > 0:
            m["zoneout_c"] = torch.full((1, 1, 1), self.zoneout_c, dtype=dtype, device=device)
        direction = DirectionMasks(**m)
        layers = tuple((direction,) * self.num_directions for _ in range(self.num_layers))
        return DropoutMasks(layers, ())

    def check(
        self,
        masks: DropoutMasks,
        batch: int,
        time: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        """Validate user-supplied masks against this spec: types, shapes and, when given, the input's
        ``dtype`` and ``device``; values must be finite (checked in eager mode only: under
        ``torch.compile`` a data-dependent check would break the graph). Other values are the caller's."""
        if not isinstance(masks, DropoutMasks):
            raise RnnDropTypeError(f"dropout_masks must be a rnndrop.DropoutMasks, got {type(masks).__name__}")
        if len(masks.layers) != self.num_layers or any(len(d) != self.num_directions for d in masks.layers):
            raise RnnDropValueError(
                f"dropout_masks.layers must be {self.num_layers} layers x {self.num_directions} directions"
            )
        h, c = self.hidden_out, self.cell_size
        allowed = {
            "input": None,  # per layer, filled below
            "recurrent": ((1, self.num_gates), (1, batch), (h,)),
            "weight_hh": ((self.num_gates * c,), (h,)),
            "candidate": ((1,), (1, batch), (c,)),
            "zoneout_h": ((1, time), (1, batch), (1, h)),
            "zoneout_c": ((1, time), (1, batch), (1, c)),
        }
        for k, dirs in enumerate(masks.layers):
            allowed["input"] = ((1, self.num_gates), (1, batch), (self.input_sizes[k],))
            for d, m in enumerate(dirs):
                if not isinstance(m, DirectionMasks):
                    raise RnnDropTypeError(
                        f"dropout_masks.layers[{k}][{d}] must be a rnndrop.DirectionMasks, got {type(m).__name__}"
                    )
                for name in m.active():
                    t = getattr(m, name)
                    options = allowed[name]
                    if not isinstance(t, torch.Tensor) or t.dim() != len(options) or any(
                        size not in ok for size, ok in zip(t.shape, options)
                    ):
                        want = " x ".join("|".join(str(o) for o in ok) for ok in options)
                        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                        raise RnnDropValueError(
                            f"dropout_masks.layers[{k}][{d}].{name} must have shape ({want}), got {got}"
                        )
                    _check_mask_tensor(t, f"dropout_masks.layers[{k}][{d}].{name}", dtype, device)
        if len(masks.between) not in (0, self.num_layers - 1):
            raise RnnDropValueError(f"dropout_masks.between must have {self.num_layers - 1} entries")
        for k, t in enumerate(masks.between):
            size = self.num_directions * self.hidden_out
            if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[0] not in (1, time)
                                  or t.shape[1] not in (1, batch) or t.shape[2] != size):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise RnnDropValueError(
                    f"dropout_masks.between[{k}] must have shape (1|{time}, 1|{batch}, {size}), got {got}"
                )
            if t is not None:
                _check_mask_tensor(t, f"dropout_masks.between[{k}]", dtype, device)


def _is_compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling()) if is_compiling is not None else False


def _check_mask_tensor(
    t: torch.Tensor, argument: str, dtype: torch.dtype | None, device: torch.device | str | None
) -> None:
    """A user-supplied mask has the input's dtype and device (no silent promotion or copy) and finite values."""
    if dtype is not None and t.dtype != dtype:
        raise RnnDropTypeError(f"{argument} must have dtype {dtype} (the input's), got {t.dtype}")
    if device is not None and t.device != torch.device(device):
        raise RnnDropValueError(f"{argument} must be on {torch.device(device)} (the input's device), got {t.device}")
    if not t.is_floating_point():
        raise RnnDropTypeError(f"{argument} must be a floating point tensor, got dtype {t.dtype}")
    # A NaN or inf would spread silently through every step; meta tensors have no values to look at.
    if t.device.type != "meta" and not _is_compiling() and not bool(torch.isfinite(t).all()):
        raise RnnDropValueError(f"{argument} must hold finite values, got NaN or inf")
