"""Dropout masks: the one place where randomness enters a recurrent layer.

Convention (every path — reference, fused CPU, GPU — uses exactly these tensors):

* A mask is ``Bernoulli(1 - p) / (1 - p)``: every entry is exactly ``0`` or ``1 / (1 - p)``.
* Masks are sampled **once per forward call**, before the time loop, and discarded after it.
  Kernels never draw random numbers; they receive masks as tensors, so a test can feed the
  very same masks to two implementations.
* Time-locked masks (Keras ``dropout`` / ``recurrent_dropout``, Gal & Ghahramani 2016) have no
  time axis: one draw per sequence, reused at every timestep.

  ============  ======================================  ===========================================
  mask          shape                                   multiplies
  ============  ======================================  ===========================================
  ``input``     ``(G, B, input_size)``                  ``x_t`` before the input weights
  ``recurrent`` ``(G, B, H_out)``                       ``h_{t-1}`` before the recurrent weights
  ============  ======================================  ===========================================

  ``G`` is 1 when one mask is shared by all gates (``gate_masks="shared"``, Gal's "tied"
  variant) or the number of gates (LSTM 4, GRU 3, RNN 1) with ``gate_masks="per_gate"``
  (Keras's layout whenever ``recurrent_dropout > 0``; Gal's "untied"). Gate blocks follow the
  torch weight layout: LSTM ``i, f, g, o``; GRU ``r, z, n``. ``H_out`` is ``proj_size`` for a
  projected LSTM, else ``hidden_size``. The cell state ``c`` is never masked.
* Between stacked layers, torch's own ``dropout`` argument keeps its torch meaning: an
  independent mask per element **and timestep**, shape ``(T, B, D * H_out)``.

Sampling order (so that a seeded generator reproduces a run): for each layer, for each
direction, the input mask then the recurrent mask; then that layer's between-layer mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import RnnDropTypeError, RnnDropValueError

GateMasks = Literal["shared", "per_gate"]
GATE_MASK_CHOICES: tuple[str, ...] = ("shared", "per_gate")


def check_probability(p: object, argument: str) -> float:
    """Validate a dropout probability in ``[0, 1)`` and return it as a float."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise RnnDropTypeError(f"{argument} must be a float in [0, 1), got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p < 1.0:  # NaN fails this test too
        raise RnnDropValueError(f"{argument} must be in [0, 1), got {p}")
    return p


def check_gate_masks(value: object) -> GateMasks:
    if value not in GATE_MASK_CHOICES:
        raise RnnDropValueError(f"gate_masks must be one of {GATE_MASK_CHOICES}, got {value!r}")
    return value  # type: ignore[return-value]


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
    """Time-locked masks of one layer and one direction, for one forward call.

    Attributes:
        input: ``(G, B, input_size)`` or ``None`` (no input dropout).
        recurrent: ``(G, B, H_out)`` or ``None`` (no recurrent dropout).
    """

    input: torch.Tensor | None = None
    recurrent: torch.Tensor | None = None


@dataclass(frozen=True)
class DropoutMasks:
    """Every mask a stacked (bi)directional layer uses in one forward call.

    Attributes:
        layers: ``layers[k][d]`` holds layer ``k``, direction ``d`` (0 forward, 1 reverse).
        between: ``between[k]`` is the torch-style ``(T, B, D * H_out)`` mask applied to the
            output of layer ``k`` before layer ``k + 1`` (``None`` when off); length ``num_layers - 1``.
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

    @property
    def mask_gates(self) -> int:
        return self.num_gates if self.gate_masks == "per_gate" else 1

    def is_empty(self) -> bool:
        return self.input_p == 0.0 and self.recurrent_p == 0.0 and (
            self.between_p == 0.0 or self.num_layers == 1
        )

    def sample(
        self,
        batch: int,
        time: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        generator: torch.Generator | None = None,
    ) -> DropoutMasks:
        """Draw all masks for a call on ``batch`` sequences of ``time`` steps (order: module docstring)."""
        g = self.mask_gates
        layers = []
        between: list[torch.Tensor | None] = []
        for k in range(self.num_layers):
            directions = []
            for _ in range(self.num_directions):
                inp = rec = None
                if self.input_p > 0:
                    inp = bernoulli_mask(
                        (g, batch, self.input_sizes[k]), self.input_p,
                        dtype=dtype, device=device, generator=generator,
                    )
                if self.recurrent_p > 0:
                    rec = bernoulli_mask(
                        (g, batch, self.hidden_out), self.recurrent_p,
                        dtype=dtype, device=device, generator=generator,
                    )
                directions.append(DirectionMasks(inp, rec))
            layers.append(tuple(directions))
            if k < self.num_layers - 1:
                between.append(
                    bernoulli_mask(
                        (time, batch, self.num_directions * self.hidden_out), self.between_p,
                        dtype=dtype, device=device, generator=generator,
                    )
                    if self.between_p > 0
                    else None
                )
        return DropoutMasks(tuple(layers), tuple(between))

    def check(self, masks: DropoutMasks, batch: int, time: int) -> None:
        """Validate user-supplied masks against this spec (shapes only; values are the caller's)."""
        if not isinstance(masks, DropoutMasks):
            raise RnnDropTypeError(f"dropout_masks must be a rnndrop.DropoutMasks, got {type(masks).__name__}")
        if len(masks.layers) != self.num_layers or any(
            len(d) != self.num_directions for d in masks.layers
        ):
            raise RnnDropValueError(
                f"dropout_masks.layers must be {self.num_layers} layers x {self.num_directions} directions"
            )
        for k, dirs in enumerate(masks.layers):
            for d, m in enumerate(dirs):
                for name, t, size in (
                    ("input", m.input, self.input_sizes[k]),
                    ("recurrent", m.recurrent, self.hidden_out),
                ):
                    if t is None:
                        continue
                    ok_shape = t.dim() == 3 and t.shape[0] in (1, self.num_gates) and t.shape[1] in (
                        1, batch) and t.shape[2] == size
                    if not ok_shape:
                        raise RnnDropValueError(
                            f"dropout_masks.layers[{k}][{d}].{name} must have shape (1 or {self.num_gates}, "
                            f"1 or {batch}, {size}), got {tuple(t.shape)}"
                        )
        if len(masks.between) not in (0, self.num_layers - 1):
            raise RnnDropValueError(f"dropout_masks.between must have {self.num_layers - 1} entries")
        for k, t in enumerate(masks.between):
            want = (time, batch, self.num_directions * self.hidden_out)
            if t is not None and tuple(t.shape) != want:
                raise RnnDropValueError(
                    f"dropout_masks.between[{k}] must have shape {want}, got {tuple(t.shape)}"
                )
