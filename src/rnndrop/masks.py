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

Sampling order (so that a seeded generator reproduces a run): for each layer, for each
direction: input, recurrent, weight_hh, candidate, zoneout_h, zoneout_c (each only if its rate
is non-zero); then that layer's between-layer mask.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch

from .errors import RnnDropArgumentTypeError, RnnDropTypeError, RnnDropValueError

GateMasks = Literal["shared", "per_gate"]
GATE_MASK_CHOICES: tuple[str, ...] = ("shared", "per_gate")
MaskScope = Literal["sample", "batch"]
MASK_SCOPE_CHOICES: tuple[str, ...] = ("sample", "batch")


def check_probability(p: object, argument: str, *, allow_one: bool = False) -> float:
    """Validate a dropout probability in ``[0, 1)`` (``[0, 1]`` with ``allow_one``) and return it as a float.

    ``allow_one`` is for torch.nn's own ``dropout`` argument, which accepts 1 (everything dropped); the
    time-locked masks scale by ``1 / (1 - p)`` and need ``p < 1``. A value that is not a real number
    raises :class:`~rnndrop.errors.RnnDropArgumentTypeError`, a ``TypeError`` and, as torch.nn's, a
    ``ValueError``.
    """
    interval = "[0, 1]" if allow_one else "[0, 1)"
    # numbers.Real, like torch.nn: numpy scalars (np.float32(0.2)) are accepted, bools are not.
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise RnnDropArgumentTypeError(
            f"{argument} must be a float in {interval}, got {type(p).__name__} "
            f"({argument} should be a number in range {interval} representing the probability of an element "
            "being zeroed)"
        )
    p = float(p)
    if not (0.0 <= p <= 1.0 if allow_one else 0.0 <= p < 1.0):  # NaN fails this test too
        raise RnnDropValueError(
            f"{argument} must be in {interval}, got {p} ({argument} should be a number in range {interval} "
            "representing the probability of an element being zeroed)"
        )
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
    """Sample a dropout mask of ``shape``: entries ``0`` with probability ``p``, else ``1/(1-p)``.

    ``p = 1`` (torch's between-layer ``dropout=1``) drops everything: all zeros, as ``F.dropout``.
    """
    keep = 1.0 - p
    if keep == 0.0:
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    mask = torch.empty(tuple(shape), dtype=dtype, device=device)
    mask.bernoulli_(keep, generator=generator)
    return mask.div_(keep)


# Zoneout's draws are counter-based: element i of a (T, B, H) draw is 1 when a keyed integer hash of
# i falls below p (at a resolution of 2**-24), the two 32-bit keys drawn from the generator once per
# mask. They are the largest random tensors a layer samples (fresh per step), and torch's CPU
# Bernoulli costs about 10 ns per element (15 ms per mask on the main benchmark). The pure-torch code
# below and the compiled kernel's sampler (registered by rnndrop._kernels when the extension loads;
# about 1 ns per element) compute the very same numbers, so a seeded run is the same with or without
# the extension, on any device.
_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # the "lowbias32" integer hash (C. Wellons)
_MASK32 = 0xFFFFFFFF
HASH_RESOLUTION = 1 << 24  # a draw's probability is round(p * 2**24) / 2**24

# (key0, key1, p, shape, dtype) -> the draws, or None for a dtype it does not serve.
FastSampler = Callable[[int, int, float, tuple[int, ...], torch.dtype], "torch.Tensor | None"]
_fast_hashed_bernoulli: FastSampler | None = None


def register_fast_sampler(sampler: FastSampler | None) -> None:
    """Install (or remove, with ``None``) a CPU implementation of :func:`hashed_bernoulli`'s draws."""
    global _fast_hashed_bernoulli
    _fast_hashed_bernoulli = sampler


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)``, without leaving int64's range."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _HASH_MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _HASH_MULTIPLIERS[1])
    return x ^ (x >> 16)


def hashed_bernoulli(
    shape: Sequence[int], p: float, keys: tuple[int, int] | torch.Tensor, *, dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Counter-based Bernoulli(p) draws: ``1`` where ``hash(i; keys) >> 8 < round(p * 2**24)``, else ``0``.

    ``i`` is the element's row-major index in ``shape``; ``keys`` two integers in ``[0, 2**32)``.
    """
    shape = tuple(int(n) for n in shape)
    threshold = round(p * HASH_RESOLUTION)
    # Keys as Python ints for the compiled sampler; under torch.compile they stay tensors (no graph break).
    if isinstance(keys, torch.Tensor) and not getattr(torch.compiler, "is_compiling", lambda: False)():
        keys = (int(keys[0]), int(keys[1]))
    device = torch.device(device)
    if _fast_hashed_bernoulli is not None and device.type == "cpu" and isinstance(keys, tuple):
        fast = _fast_hashed_bernoulli(keys[0], keys[1], threshold / HASH_RESOLUTION, shape, dtype)
        if fast is not None:
            return fast
    k0, k1 = (keys[0], keys[1])
    if isinstance(k0, torch.Tensor):
        k0, k1 = k0.to(device), k1.to(device)
    index = torch.arange(math.prod(shape), device=device, dtype=torch.int64)
    x = _lowbias32((index & _MASK32) ^ k0)
    x = _lowbias32(x ^ k1 ^ (index >> 32))
    return ((x >> 8) < threshold).to(dtype).view(shape)


def bernoulli_draw(
    shape: Sequence[int],
    p: float,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unscaled Bernoulli(p) draws (1 with probability ``p``): zoneout's keep-previous weights.

    Counter-based (:func:`hashed_bernoulli`), keyed by two integers drawn from ``generator`` (torch's
    global RNG without one), so seeded runs repeat.
    """
    key_device = generator.device if generator is not None else torch.device("cpu")
    keys = torch.randint(0, 1 << 32, (2,), generator=generator, dtype=torch.int64, device=key_device)
    return hashed_bernoulli(shape, p, keys, dtype=dtype, device=device)


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

    def to(self, dtype: torch.dtype) -> DropoutMasks:
        """The same masks in ``dtype`` (values unchanged where ``dtype`` holds them: 0, 1/(1-p) as stored)."""
        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype)

        layers = tuple(
            tuple(DirectionMasks(**{f: cast(getattr(m, f)) for f in _DIRECTION_MASK_FIELDS}) for m in layer)
            for layer in self.layers
        )
        return DropoutMasks(layers, tuple(cast(t) for t in self.between))


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
    ) -> DropoutMasks:
        """Draw all masks of a training call on ``batch`` sequences of ``time`` steps.

        The order of draws is fixed (module docstring), so a seeded generator reproduces them.
        """
        g = self.mask_gates
        b = batch if self.scope == "sample" else 1
        kw = {"dtype": dtype, "device": device, "generator": generator}
        layers = []
        between: list[torch.Tensor | None] = []
        for k in range(self.num_layers):
            directions = []
            for _ in range(self.num_directions):
                m: dict[str, torch.Tensor] = {}
                if self.input_p > 0:
                    m["input"] = bernoulli_mask((g, b, self.input_sizes[k]), self.input_p, **kw)
                if self.recurrent_p > 0:
                    m["recurrent"] = bernoulli_mask((g, b, self.hidden_out), self.recurrent_p, **kw)
                if self.weight_p > 0:
                    shape = (self.num_gates * self.cell_size, self.hidden_out)
                    m["weight_hh"] = bernoulli_mask(shape, self.weight_p, **kw)
                if self.candidate_p > 0:
                    m["candidate"] = bernoulli_mask((1, b, self.cell_size), self.candidate_p, **kw)
                if self.zoneout_h > 0:
                    m["zoneout_h"] = bernoulli_draw((time, b, self.hidden_out), self.zoneout_h, **kw)
                if self.zoneout_c > 0:
                    m["zoneout_c"] = bernoulli_draw((time, b, self.cell_size), self.zoneout_c, **kw)
                directions.append(DirectionMasks(**m))
            layers.append(tuple(directions))
            if k < self.num_layers - 1:
                steps = 1 if self.locked_between else time
                shape = (steps, b if self.locked_between else batch, self.num_directions * self.hidden_out)
                between.append(bernoulli_mask(shape, self.between_p, **kw) if self.between_p > 0 else None)
        return DropoutMasks(tuple(layers), tuple(between))

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
