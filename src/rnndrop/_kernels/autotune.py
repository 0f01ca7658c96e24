"""Which of several exact kernels is faster for a call: measured on the first call of its kind, then remembered.

When ``backend="auto"`` finds more than one registry entry that computes a call exactly (torch's own
kernel and rnndrop's fused kernel, typically), it times each on this call's own shapes — as
``torch.backends.cudnn.benchmark`` does for convolutions — and keeps the faster for every later call
with the same :func:`signature` in this process. The results never depend on the choice (every entry
computes the reference's function); only the time does.

The measurement runs each candidate on the call's inputs (detached: no gradient reaches the caller's
tensors) and, when a backward will follow, through a backward of its own, ``warmup`` untimed and
``repeats`` timed runs each, interleaved; the fastest run of each counts. That costs a few calls' time
once per signature. ``RNNDROP_AUTOTUNE=0`` turns it off: the registry's static rule
(:func:`rnndrop._kernels.registry.torch_yields`) decides instead.

Shapes that vary from call to call share a decision: the batch and the sequence length are rounded
up to a power of two (exactly below 8), so a last, smaller batch or a new sequence length does not
measure again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from .._runtime import cpu_autocast_dtype

# A candidate: (name, stack_fn); stack_fn has the contract of rnndrop.reference.run_stack.
Candidate = tuple[str, Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]]


def enabled() -> bool:
    """Whether ``auto`` measures (``RNNDROP_AUTOTUNE``, default on; ``0`` / ``false`` / ``no`` turn it off)."""
    return os.environ.get("RNNDROP_AUTOTUNE", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Decision:
    """What was measured for one signature: the kernel taken and each candidate's best time in ms."""

    kernel: str
    times_ms: tuple[tuple[str, float], ...]
    backward: bool

    @cached_property  # asked on every call that reuses the decision: formatted once
    def reason_text(self) -> str:
        return self.reason()

    def reason(self) -> str:
        timings = ", ".join(f"{name} {ms:.3g} ms" for name, ms in self.times_ms)
        what = "forward + backward" if self.backward else "forward"
        return f"auto measured this call's kind ({what}): {timings}; the fastest runs it"


_decisions: dict[tuple, Decision] = {}
_lock = threading.Lock()


def decisions() -> dict[tuple, Decision]:
    """Every decision of this process, by signature (a copy; for tests and profiling)."""
    with _lock:
        return dict(_decisions)


def forget() -> None:
    """Drop every decision (the next call of each kind measures again)."""
    with _lock:
        _decisions.clear()


def _bucket(n: int) -> int:
    return n if n < 8 else 1 << (n - 1).bit_length()


def _tensor_kind(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (tuple(t.shape[:1]), t.dim())


def signature(call, backward: bool) -> tuple:
    """What a call's speed depends on: cell, dtypes, sizes, masks, step masks, threads, autocast, backward."""
    x = call.x
    time_steps, batch = x.shape[0], x.shape[1]
    layers = tuple(tuple((p.w_ih.shape, p.w_hh.shape, p.b_ih is not None, p.w_hr is not None) for p in layer)
                   for layer in call.params)
    masks = None
    if call.masks is not None:  # which masks, how many gate blocks, whether shared by the batch
        def kind(t) -> tuple:
            shape = tuple(t.shape)
            return (shape[0], shape[1:2] == (1,))

        masks = (tuple(tuple(tuple((name, kind(getattr(m, name))) for name in m.active()) for m in layer)
                       for layer in call.masks.layers),
                 tuple(t is not None for t in call.masks.between))
    if call.step_mask is None:
        steps = "none"
    else:  # padding makes torch's LSTM a slow loop, so its presence matters, not its pattern
        steps = "all" if bool(call.step_mask.all()) else "padded"
    return (x.device.type, x.dtype, call.cfg, _bucket(time_steps), _bucket(batch), layers, masks, steps,
            call.zero_masked_output, backward, torch.get_num_threads(), cpu_autocast_dtype())


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    """The same values, cut from the caller's graph (a gradient of the measurement lands nowhere)."""
    return None if t is None else t.detach().requires_grad_(t.requires_grad)


def _run(stack_fn, call, backward: bool) -> None:
    from ..reference import DirectionParams  # the registry imports this module; reference does not

    x = _detached(call.x)
    states = [_detached(s) for s in call.init_states]
    params = [[DirectionParams(*(_detached(getattr(p, f)) for f in ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")))
               for p in layer] for layer in call.params]
    if not backward:
        with torch.no_grad():
            stack_fn(call.cfg, x, states, params, call.masks, call.step_mask, call.zero_masked_output)
        return
    with torch.enable_grad():
        out, finals = stack_fn(call.cfg, x, states, params, call.masks, call.step_mask, call.zero_masked_output)
        loss = out.float().sum() + sum(f.float().sum() for f in finals)
        leaves = [t for t in (x, *states, *(v for layer in params for p in layer
                                              for v in (p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.w_hr)))
                  if t is not None and t.requires_grad]
        if leaves:
            torch.autograd.grad(loss, leaves)


def known(call, backward: bool) -> Decision | None:
    """The decision already measured for this call's kind, if any (nothing is measured)."""
    key = signature(call, backward)
    with _lock:
        return _decisions.get(key)


def choose(call, candidates: Sequence[Candidate], backward: bool, *, warmup: int = 1, repeats: int = 3,
           clock: Callable[[], float] | None = None) -> Decision:
    """The candidate that ran this call's kind fastest, measured now if its signature is new."""
    clock = clock or time.perf_counter
    key = signature(call, backward)
    with _lock:
        known = _decisions.get(key)
    if known is not None and known.kernel in {name for name, _ in candidates}:
        return known
    best: dict[str, float] = {name: float("inf") for name, _ in candidates}
    for _ in range(warmup):
        for _, fn in candidates:
            _run(fn, call, backward)
    rounds = repeats
    for r in range(rounds):
        for name, fn in candidates:
            start = clock()
            _run(fn, call, backward)
            best[name] = min(best[name], clock() - start)
        if r == 0 and min(best.values()) > 0.25:  # a long call: one timed round is already a fair comparison
            break
    # Registry order breaks ties: the first candidate wins unless another is strictly faster.
    kernel = min(candidates, key=lambda c: best[c[0]])[0]
    decision = Decision(kernel, tuple((name, best[name] * 1e3) for name, _ in candidates), backward)
    with _lock:
        _decisions[key] = decision
    return decision
