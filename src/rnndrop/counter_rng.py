"""Counter-based random draws for dropout masks: a keyed integer hash, no generator state.

Every mask element is a pure function of a per-call seed and the element's coordinates, so the
same seed gives the same masks, bit for bit, whatever the batch size or split, the thread count
or the device (CPU, CUDA, with or without the compiled extension). :mod:`rnndrop.masks` says which
mask uses which coordinates; this module is the arithmetic, and imports only torch.

Definition (all words unsigned 32-bit, arithmetic modulo ``2**32``; ``lowbias32`` is C. Wellons'
integer hash ``x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16``):

* **seed**: two words ``(s0, s1)``, drawn once per forward call by :func:`draw_seed` (one
  ``torch.randint`` on the generator's device, or from torch's global CPU RNG without one);
* **keys** of one mask: ``(k0, k1) = mask_keys((s0, s1), layer, direction, kind)`` with
  ``stream = (layer * 2 + direction) * 8 + kind`` (:data:`MASK_KINDS`),
  ``k0 = lowbias32(lowbias32(stream ^ s0) ^ s1)``, ``k1 = lowbias32(lowbias32(stream ^ s1 ^ 0x9e3779b9) ^ s0)``;
* **draw** of element ``(row, sample, unit)`` of a mask laid out as ``(A, B, C)``: with
  ``lo = (row * C + unit) mod 2**32`` and ``hi = sample``,
  ``x = lowbias32(lowbias32(lo ^ k0) ^ lowbias32(hi ^ k1))``; the element is ``below`` when
  ``x >> 8 < round(p * 2**24)`` (probability ``p`` at a resolution of ``2**-24``), else ``above``.

The compiled CPU extension (``csrc/cpu/rnn.cpp``, ``keyed_draws`` and ``mask_keys``) computes the very
same numbers, about a word per nanosecond-fraction; it registers itself with
:func:`register_fast_sampler` when it loads. The pure-torch code here is the definition (tests
compare the two) and runs everywhere else, also inside ``torch.compile``'s graph (keys as tensors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

MASK_KINDS: dict[str, int] = {
    "input": 0, "recurrent": 1, "weight_hh": 2, "candidate": 3, "zoneout_h": 4, "zoneout_c": 5, "between": 6,
}
RESOLUTION = 1 << 24  # a draw's probability is round(p * 2**24) / 2**24
_MASK32 = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32's
_GOLDEN = 0x9E3779B9

Word = int | torch.Tensor  # a 32-bit word: a Python int, or an int64 tensor of them (inside torch.compile)
Seed = tuple[Word, Word]

# (k0, k1, threshold, (A, B, C), below, above, dtype, device) -> the (A, B, C) draws, or None for a call it does
# not serve.
FastSampler = Callable[[int, int, int, tuple[int, int, int], float, float, torch.dtype, torch.device],
                       "torch.Tensor | None"]
_fast: dict[str, FastSampler] = {}


def register_fast_sampler(sampler: FastSampler | None, device_type: str = "cpu") -> None:
    """Install (or remove, with ``None``) an implementation of :func:`keyed_draws` for ``device_type``."""
    if sampler is None:
        _fast.pop(device_type, None)
    else:
        _fast[device_type] = sampler


def fast_sampler(device_type: str = "cpu") -> FastSampler | None:
    """The registered implementation for ``device_type``, if any."""
    return _fast.get(device_type)


def _mul32(x: Word, c: int) -> Word:
    """``x * c mod 2**32`` for ``x`` in ``[0, 2**32)``, never leaving int64's range (tensors)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def lowbias32(x: Word) -> Word:
    """C. Wellons' ``lowbias32`` integer hash of 32-bit words (a Python int or an int64 tensor)."""
    if isinstance(x, int):  # Python ints do not overflow: the plain products, reduced
        x ^= x >> 16
        x = (x * _MULTIPLIERS[0]) & _MASK32
        x ^= x >> 15
        x = (x * _MULTIPLIERS[1]) & _MASK32
        return x ^ (x >> 16)
    x = x ^ (x >> 16)
    x = _mul32(x, _MULTIPLIERS[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _MULTIPLIERS[1])
    return x ^ (x >> 16)


def draw_seed(generator: torch.Generator | None = None) -> Seed:
    """One forward call's seed ``(s0, s1)``: one ``torch.randint`` from ``generator`` (on its device) or
    torch's global CPU RNG; the only draw a call takes from torch's RNGs.

    Python ints (a CUDA generator costs one host sync), or a 2-element int64 tensor's items while
    ``torch.compile`` traces (the draw stays in the graph and follows ``torch.manual_seed``).
    """
    device = generator.device if generator is not None else torch.device("cpu")
    seed = torch.randint(0, 1 << 32, (2,), generator=generator, dtype=torch.int64, device=device)
    if _is_compiling():
        return seed[0], seed[1]
    s0, s1 = seed.tolist()
    return s0, s1


def mask_keys(seed: Seed, layer: int, direction: int, kind: str) -> tuple[Word, Word]:
    """The keys ``(k0, k1)`` of one mask: layer ``layer``, direction ``direction`` (0 forward, 1 reverse;
    0 for the between-layer mask after ``layer``) and ``kind``, one of :data:`MASK_KINDS`."""
    stream = (int(layer) * 2 + int(direction)) * 8 + MASK_KINDS[kind]
    s0, s1 = seed
    k0 = lowbias32(lowbias32(s0 ^ stream) ^ s1)
    k1 = lowbias32(lowbias32(s1 ^ (stream ^ _GOLDEN)) ^ s0)
    return k0, k1


def _on(word: Word, device: torch.device) -> Word:
    return word.to(device) if isinstance(word, torch.Tensor) else word


def keyed_draws(
    keys: tuple[Word, Word],
    p: float,
    shape: Sequence[int],
    *,
    below: float,
    above: float,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """Draws of shape ``(A, B, C)`` (rows, samples, units): ``below`` with probability ``p``, else ``above``.

    Element ``(a, b, c)`` depends on ``keys``, ``a * C + c`` and ``b`` only (module docstring): a
    prefix of rows or of samples is the same whatever ``A`` or ``B`` is.
    """
    a_n, b_n, c_n = shape
    threshold = round(p * RESOLUTION)
    if not isinstance(device, torch.device):
        device = torch.device(device)
    k0, k1 = keys
    if type(k0) is int and type(k1) is int:
        fast = _fast.get(device.type)
        if fast is not None:
            out = fast(k0, k1, threshold, (a_n, b_n, c_n), below, above, dtype, device)
            if out is not None:
                return out
    lo = torch.arange(a_n * c_n, device=device, dtype=torch.int64) & _MASK32
    hi = torch.arange(b_n, device=device, dtype=torch.int64)
    u = lowbias32(lo ^ _on(k0, device)).view(a_n, 1, c_n)
    v = lowbias32(hi ^ _on(k1, device)).view(1, b_n, 1)
    x = lowbias32(u ^ v)
    hit = (x >> 8) < threshold
    return torch.where(hit, torch.tensor(below, dtype=dtype, device=device),
                       torch.tensor(above, dtype=dtype, device=device))


def _is_compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling()) if is_compiling is not None else False
