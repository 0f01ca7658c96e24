"""Which implementation runs a call: eligibility predicates (with reasons) and the selection.

A kernel is registered as ``(name, predicate, direction_fn)``: the predicate returns ``None``
when the kernel can run a call exactly like the reference, else a short reason, so that
``backend="fused"`` can raise with it and ``backend="auto"`` can fall back knowingly.

Options the kernels do not know fall back by construction: any field of
:class:`~rnndrop.reference.CellConfig`, :class:`~rnndrop.masks.DirectionMasks` or
:class:`~rnndrop.reference.DirectionParams` beyond the ones listed here (e.g. zoneout or
Semeniuta masks added later) makes a call ineligible unless it holds its default value.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..errors import KernelUnavailableError
from ..masks import DropoutMasks
from ..reference import CellConfig, DirectionFn, DirectionParams, run_direction
from . import loader
from .autograd import ACTIVATION_CODES, fused_run_direction

BACKENDS: tuple[str, ...] = ("auto", "fused", "reference")

_KNOWN_CELL_FIELDS = {"mode", "activation", "recurrent_activation", "reset_after"}
# weight_hh (DropConnect) is folded into w_hh by run_stack before any direction function runs.
_KNOWN_MASK_FIELDS = {"input", "recurrent", "weight_hh"}
_KNOWN_PARAM_FIELDS = {"w_ih", "w_hh", "b_ih", "b_hh", "w_hr"}


@dataclass(frozen=True)
class Call:
    """What a predicate may look at: one stacked-layer call (time-major ``x`` ``(T, B, I)``)."""

    cfg: CellConfig
    x: torch.Tensor
    init_states: Sequence[torch.Tensor]
    params: Sequence[Sequence[DirectionParams]]
    masks: DropoutMasks | None
    step_mask: torch.Tensor | None


@dataclass(frozen=True)
class Kernel:
    name: str
    ineligible: Callable[[Call], str | None]
    direction_fn: DirectionFn


def _unknown_options(call: Call) -> str | None:
    for f in dataclasses.fields(call.cfg):
        if f.name not in _KNOWN_CELL_FIELDS and getattr(call.cfg, f.name) != f.default:
            return f"option {f.name}={getattr(call.cfg, f.name)!r} is not implemented by the fused kernel"
    for layer in call.params:
        for p in layer:
            for f in dataclasses.fields(p):
                if f.name not in _KNOWN_PARAM_FIELDS and getattr(p, f.name) is not None:
                    return f"parameter {f.name} is not implemented by the fused kernel"
    if call.masks is not None:
        for layer in call.masks.layers:
            for m in layer:
                for f in dataclasses.fields(m):
                    if f.name not in _KNOWN_MASK_FIELDS and getattr(m, f.name) is not None:
                        return f"{f.name} masks are not implemented by the fused kernel"
    return None


def _autocast_cpu() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def cpu_ineligible(call: Call) -> str | None:
    """``None`` if the compiled CPU kernel reproduces the reference for this call, else why not."""
    reason = loader.unavailable_reason()
    if reason is not None:
        return reason
    cfg, x = call.cfg, call.x
    if cfg.mode not in ("LSTM", "GRU", "RNN"):
        return f"mode {cfg.mode!r} has no fused kernel"
    if x.device.type != "cpu":
        return f"input is on {x.device}, the fused kernel is CPU only"
    if x.dtype not in (torch.float32, torch.float64):
        return f"dtype {x.dtype} is not supported by the fused kernel (float32, float64 are)"
    if cfg.activation not in ACTIVATION_CODES:
        return f"activation {cfg.activation!r} is not implemented by the fused kernel ({sorted(ACTIVATION_CODES)} are)"
    if cfg.mode != "RNN" and cfg.recurrent_activation not in ACTIVATION_CODES:
        return (f"recurrent_activation {cfg.recurrent_activation!r} is not implemented by the fused kernel "
                f"({sorted(ACTIVATION_CODES)} are)")
    if _autocast_cpu():
        return "CPU autocast is on; mixed precision runs on the reference path"
    reason = _unknown_options(call)
    if reason is not None:
        return reason
    tensors: list[torch.Tensor] = [*call.init_states]
    for layer in call.params:
        for p in layer:
            if p.w_hr is not None:
                return "proj_size > 0 (projected LSTM) runs on the reference path"
            tensors += [t for t in (p.w_ih, p.w_hh, p.b_ih, p.b_hh) if t is not None]
    if call.masks is not None:
        for layer in call.masks.layers:
            for m in layer:
                for t in (m.input, m.recurrent):
                    if t is None:
                        continue
                    if t.requires_grad:
                        return "dropout masks that require grad run on the reference path"
                    tensors.append(t)
        tensors += [t for t in call.masks.between if t is not None]
    for t in tensors:
        if t.device.type != "cpu":
            return f"a parameter, state or mask is on {t.device}, the fused kernel is CPU only"
        if t.dtype != x.dtype:
            return f"a parameter, state or mask has dtype {t.dtype}, the input {x.dtype}"
    if call.step_mask is not None and call.step_mask.device.type != "cpu":
        return f"step_mask is on {call.step_mask.device}"
    return None


KERNELS: tuple[Kernel, ...] = (Kernel("fused", cpu_ineligible, fused_run_direction),)

_warned_unavailable = False


def select_direction_fn(
    backend: str,
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
) -> tuple[DirectionFn, str, str | None]:
    """Pick the implementation of one direction for a call.

    Returns ``(direction_fn, backend_name, reason)`` where ``reason`` says why the fused kernel
    was not used (``None`` when it was, or when ``backend="reference"`` asked for the reference).
    ``backend="fused"`` raises :class:`KernelUnavailableError` with the reason instead of falling
    back; ``"auto"`` falls back, warning once per process when the extension itself is missing.
    """
    global _warned_unavailable
    if backend == "reference":
        return run_direction, "reference", None
    call = Call(cfg, x, init_states, params, masks, step_mask)
    reasons = []
    for kernel in KERNELS:
        reason = kernel.ineligible(call)
        if reason is None:
            return kernel.direction_fn, kernel.name, None
        reasons.append(reason)
    why = "; ".join(reasons)
    if backend == "fused":
        raise KernelUnavailableError(f"backend='fused' cannot run this call: {why}")
    if loader.unavailable_reason() is not None and not _warned_unavailable:
        _warned_unavailable = True
        warnings.warn(
            f"rnndrop: using the slower reference path because {loader.unavailable_reason()}",
            RuntimeWarning,
            stacklevel=4,
        )
    return run_direction, "reference", why
