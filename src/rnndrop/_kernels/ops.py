"""The compiled CPU extension as PyTorch custom ops: ``torch.ops.rnndrop.fused_forward`` / ``fused_backward``.

Registered when this module is imported, which :mod:`.loader` does only after the extension
has loaded (never at ``import rnndrop``, never without the extension). As registered ops with
fake (meta) implementations, Dynamo and AOTAutograd put them into a graph as single nodes
instead of breaking the graph at the opaque pybind functions. Eager calls skip the op and call
the extension directly (:func:`forward`, :func:`backward`): the same kernel, without the op's
Python dispatch.

Custom ops cannot return ``None``: outputs a configuration does not produce (the LSTM cell
state of a GRU, buffers not saved without a backward) come back as empty ``(0,)`` tensors;
:func:`present` says which outputs are real, so callers map the placeholders back to ``None``.
Differentiation stays in :class:`~rnndrop._kernels.autograd.FusedDirection`, which calls these
ops in its forward and backward (Dynamo traces such an ``autograd.Function`` whole).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._runtime import is_compiling
from . import loader

_NAMESPACE = "rnndrop"
_LSTM, _GRU, _RNN = 0, 1, 2  # the C++ enum (autograd.MODES)
_GATES = {_LSTM: 4, _GRU: 3, _RNN: 1}

FORWARD_SCHEMA = (
    "(int mode, int act, int ract, bool reset_after, bool reverse, bool zero_fill, bool save, "
    "Tensor gi, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hh, Tensor? b_ih, Tensor? rmask, Tensor? steps, "
    "Tensor? cmask, Tensor? zh, Tensor? zc, int wk0, int wk1, int wthr, float wscale) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)
BACKWARD_SCHEMA = (
    "(int mode, int act, int ract, bool reset_after, bool reverse, bool zero_fill, bool lowp, "
    "Tensor h0, Tensor? c0, Tensor w_hh, bool has_bias, Tensor? rmask, Tensor? steps, "
    "Tensor? cmask, Tensor? zh, Tensor? zc, Tensor out, "
    "Tensor? S, Tensor? C, Tensor? GA, Tensor? GHN, Tensor? CR, Tensor dout, Tensor dhT, Tensor? dcT, "
    "int wk0, int wk1, int wthr, float wscale) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def present_forward(
    mode: int, reset_after: bool, save: bool, has_steps: bool, has_zh: bool = False, has_zc: bool = False
) -> tuple[bool, ...]:
    """Which of ``(out, h_T, c_T, S, C, GA, GHN, CR)`` the forward produces (the others are placeholders)."""
    lstm = mode == _LSTM
    return (True, True, lstm, has_steps, lstm and save, save and (mode != _RNN or has_zh),
            save and mode == _GRU and reset_after, save and lstm and has_zc)


def present_backward(mode: int, has_bias: bool) -> tuple[bool, ...]:
    """Which of ``(dgi, dh0, dc0, dw_hh, db_hh, db_ih)`` the backward produces."""
    return (True, True, mode == _LSTM, True, has_bias, has_bias)


def as_optional(tensors: Sequence[torch.Tensor], present: Sequence[bool]) -> tuple[torch.Tensor | None, ...]:
    """Placeholders back to ``None``."""
    return tuple(t if p else None for t, p in zip(tensors, present))


def _placeholders(outs: Sequence[torch.Tensor | None], like: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # A fresh empty tensor each: custom op outputs must not alias each other or an input.
    return tuple(like.new_empty(0) if t is None else t for t in outs)


def _ext():
    ext = loader.load()
    if ext is None:
        raise RuntimeError(f"rnndrop::fused_* called without the compiled extension: {loader.unavailable_reason()}")
    return ext


_registered = False


def registered() -> bool:
    """Whether ``torch.ops.rnndrop.fused_*`` exist in this process."""
    return _registered


def _forward_impl(mode, act, ract, reset_after, reverse, zero_fill, save, gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps,
                  cmask, zh, zc, wk0, wk1, wthr, wscale):
    outs = _ext().forward(mode, act, ract, reset_after, reverse, zero_fill, save, gi, h0, c0, w_hh, b_hh, b_ih,
                          rmask, steps, cmask, zh, zc, wk0, wk1, wthr, wscale)
    return _placeholders(outs, h0)


def _forward_fake(mode, act, ract, reset_after, reverse, zero_fill, save, gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps,
                  cmask, zh, zc, wk0, wk1, wthr, wscale):
    # The shapes csrc/cpu/rnn.cpp's forward allocates (in the states' dtype: gi may be bf16 under
    # autocast), (0,) where it returns an undefined tensor.
    t, b, gh = gi.shape
    h = gh // _GATES[mode]
    shapes = ((t, b, h), (b, h), (b, h), (t, b, h), (t, b, h), (t, b, gh), (t, b, h), (t, b, h))
    present = present_forward(mode, reset_after, save, steps is not None, zh is not None, zc is not None)
    return tuple(h0.new_empty(s if p else (0,)) for s, p in zip(shapes, present))


def _backward_impl(mode, act, ract, reset_after, reverse, zero_fill, lowp, h0, c0, w_hh, has_bias, rmask, steps,
                   cmask, zh, zc, out, S, C, GA, GHN, CR, dout, dhT, dcT, wk0, wk1, wthr, wscale):
    grads = _ext().backward(mode, act, ract, reset_after, reverse, zero_fill, lowp, h0, c0, w_hh, has_bias, rmask,
                            steps, cmask, zh, zc, out, S, C, GA, GHN, CR, dout, dhT, dcT, wk0, wk1, wthr, wscale)
    return _placeholders(grads, out)


def _backward_fake(mode, act, ract, reset_after, reverse, zero_fill, lowp, h0, c0, w_hh, has_bias, rmask, steps,
                   cmask, zh, zc, out, S, C, GA, GHN, CR, dout, dhT, dcT, wk0, wk1, wthr, wscale):
    t, b, h = out.shape
    gh = h * _GATES[mode]
    shapes = ((t, b, gh), (b, h), (b, h), (gh, h), (gh,), (gh,))
    present = present_backward(mode, has_bias)
    return tuple(out.new_empty(s if p else (0,)) for s, p in zip(shapes, present))


PROJECTION_SCHEMA = "(Tensor x, Tensor w, Tensor? mask) -> Tensor"


def _projection_impl(x, w, mask):
    return _ext().input_projection(x, w, mask)


def _projection_fake(x, w, mask):
    return x.new_empty((x.shape[0], x.shape[1], w.shape[0]))


def register() -> bool:
    """Define the ops once per process (the loader calls it after loading the extension).

    Returns False, registering nothing, on a torch without ``torch.library.custom_op`` (< 2.4):
    :func:`forward` and :func:`backward` then call the extension directly (eager only, as before).
    """
    global _registered
    if _registered:
        return True
    if not hasattr(torch.library, "custom_op") or not hasattr(torch.library, "register_fake"):
        return False
    ops = [("fused_forward", FORWARD_SCHEMA, _forward_impl, _forward_fake),
           ("fused_backward", BACKWARD_SCHEMA, _backward_impl, _backward_fake),
           # Registered unconditionally: asking the extension here would re-enter the loader's lock.
           ("input_projection", PROJECTION_SCHEMA, _projection_impl, _projection_fake)]
    for name, schema, impl, fake in ops:
        op = torch.library.custom_op(f"{_NAMESPACE}::{name}", impl, mutates_args=(), device_types="cpu",
                                     schema=schema)
        op.register_fake(fake)
    _registered = True
    return True


# Eagerly the extension is called directly: the custom op's Python dispatch (torch.library's autograd
# and functorch layers) costs about 80 µs per call, as much as a whole small-sequence kernel call. Under
# torch.compile the op is what Dynamo traces (one graph node with a fake implementation).
def forward(*args: object) -> tuple[torch.Tensor | None, ...]:
    """The extension's ``forward`` (same arguments); the op while compiling; ``None`` for outputs not made."""
    mode, reset_after, save, steps, zh, zc = args[0], args[3], args[6], args[14], args[16], args[17]
    if _registered and is_compiling():
        outs = torch.ops.rnndrop.fused_forward(*args)
        return as_optional(outs, present_forward(mode, reset_after, save, steps is not None, zh is not None,
                                                 zc is not None))
    return tuple(_ext().forward(*args))


def backward(*args: object) -> tuple[torch.Tensor | None, ...]:
    """The extension's ``backward`` (same arguments); the op while compiling; ``None`` for grads not made."""
    mode, has_bias = args[0], args[10]
    if _registered and is_compiling():
        return as_optional(torch.ops.rnndrop.fused_backward(*args), present_backward(mode, has_bias))
    return tuple(_ext().backward(*args))


def cpu_has_bf16() -> bool:
    """Whether the loaded extension runs bf16 (autocast) on this CPU (AVX512_BF16); False without it."""
    ext = loader.load()
    return bool(ext is not None and hasattr(ext, "cpu_has_bf16") and ext.cpu_has_bf16())


@torch.compiler.assume_constant_result
def projection_available() -> bool:
    """Whether the extension runs the float32 input projection on its micro-kernel (a compile-time constant)."""
    ext = loader.load()
    return bool(ext is not None and hasattr(ext, "project_into") and ext.has_projection())


def projection_kernel():
    """The extension when it runs the float32 input projection on its micro-kernel (``project_into``), else None.

    Eager only; under torch.compile use :func:`input_projection`, the registered op."""
    return loader.load() if projection_available() else None


def input_projection(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(x * mask_g) @ W_ih[g]^T`` for all timesteps ``(T, B, G*H)`` as one op (what a compiled graph calls)."""
    if _registered and hasattr(torch.ops.rnndrop, "input_projection"):
        return torch.ops.rnndrop.input_projection(x, w, mask)
    return _ext().input_projection(x, w, mask)
