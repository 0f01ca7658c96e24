"""The reference sequence loop: the oracle every fast path must equal, and the fallback.

Plain PyTorch on top of :mod:`rnndrop.cells`: the input projection of all timesteps is one
matmul, then a Python loop over time calls the cell step. Everything is time-major here:
``x`` is ``(T, B, I)``.

Variable length is one mechanism, a boolean step mask ``(T, B)`` (True = real step), with
Keras's carry-over rule: at a masked step the cell's result is discarded, every state is
carried over unchanged, and the step's output is the previous output (zeros before the
first real step) or zeros when ``zero_masked_output``. Packed sequences / ``lengths`` are the
special case of right padding with zero outputs, which reproduces torch.nn exactly (the
reverse direction walks the padding first, keeping its initial state).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ._runtime import is_compiling
from .activations import get_activation
from .cells import drop_weight, gru_step, input_projection, lstm_step, rnn_step, zoneout
from .masks import DirectionMasks, DropoutMasks, materialize


@dataclass(frozen=True)
class CellConfig:
    """Which cell and activations a layer runs (hashable, no tensors)."""

    mode: str  # "LSTM" | "GRU" | "RNN"
    activation: str = "tanh"
    recurrent_activation: str = "sigmoid"
    reset_after: bool = True  # GRU only


@dataclass(frozen=True)
class DirectionParams:
    """Weights of one layer and direction, torch layout (see :mod:`rnndrop.cells`)."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: torch.Tensor | None = None
    b_hh: torch.Tensor | None = None
    w_hr: torch.Tensor | None = None


State = tuple[torch.Tensor, ...]  # (h,) or (h, c); each (B, size)


def run_direction(
    cfg: CellConfig,
    x: torch.Tensor,
    state: State,
    params: DirectionParams,
    masks: DirectionMasks,
    step_mask: torch.Tensor | None,
    reverse: bool,
    zero_masked_output: bool,
) -> tuple[torch.Tensor, State]:
    """Run one layer in one direction over the whole sequence.

    Args:
        x: ``(T, B, I)``.
        state: initial ``(h0,)`` or ``(h0, c0)``, each ``(B, ·)``.
        step_mask: ``(T, B)`` bool or ``None`` (all steps real).
        reverse: walk ``t = T-1 … 0``; outputs are still stored at their input time index.
    Returns:
        ``output`` ``(T, B, H_out)`` and the final (carried) state.
    """
    gi_all = input_projection(x, params.w_ih, params.b_ih, masks.input)
    return run_recurrence(cfg, gi_all, state, params, masks, step_mask, reverse, zero_masked_output)


def run_recurrence(
    cfg: CellConfig,
    gi_all: torch.Tensor,
    state: State,
    params: DirectionParams,
    masks: DirectionMasks,
    step_mask: torch.Tensor | None,
    reverse: bool,
    zero_masked_output: bool,
) -> tuple[torch.Tensor, State]:
    """:func:`run_direction` after its input projection: ``gi_all`` ``(T, B, G * H)`` includes ``b_ih``.

    Only ``params.w_hh``, ``b_hh``, ``w_hr`` and the recurrent, candidate and zoneout masks are read.
    The compiled kernels recompute through this function when a second derivative is asked for.
    """
    act = get_activation(cfg.activation)
    ract = get_activation(cfg.recurrent_activation)
    rmask, cmask = masks.recurrent, masks.candidate
    zone = (masks.zoneout_h, masks.zoneout_c)
    time = gi_all.shape[0]
    steps = range(time - 1, -1, -1) if reverse else range(time)
    outputs: list[torch.Tensor | None] = [None] * time
    prev_out = torch.zeros_like(state[0])
    for t in steps:
        gi = gi_all[t]
        if cfg.mode == "LSTM":
            new: State = lstm_step(
                gi, state[0], state[1], params.w_hh, params.b_hh, params.w_hr, rmask, act, ract, cmask
            )
        elif cfg.mode == "GRU":
            new = (gru_step(gi, state[0], params.w_hh, params.b_hh, rmask, act, ract, cfg.reset_after, cmask),)
        else:
            new = (rnn_step(gi, state[0], params.w_hh, params.b_hh, rmask, act),)
        # Under autocast a matmul result without a float32 term added (no bias, LSTM projection) comes
        # back in bf16/fp16; carrying it would run the recurrence in low precision and mix dtypes.
        # The states stay in their own dtype (float32): only the matmuls run in low precision.
        new = tuple(n if n.dtype == o.dtype else n.to(o.dtype) for n, o in zip(new, state))
        if zone[0] is not None or zone[1] is not None:
            new = tuple(
                zoneout(n, o, None if z is None else z[t if z.shape[0] > 1 else 0])
                for n, o, z in zip(new, state, zone)
            )
        if step_mask is None:
            state = new
            out = new[0]
        else:
            keep = step_mask[t].unsqueeze(-1)
            state = tuple(torch.where(keep, n, o) for n, o in zip(new, state))
            fill = torch.zeros_like(prev_out) if zero_masked_output else prev_out
            out = torch.where(keep, new[0], fill)
            prev_out = out
        outputs[t] = out
    return torch.stack(outputs, 0), state  # type: ignore[arg-type]


DirectionFn = Callable[..., tuple[torch.Tensor, State]]


class _CallerTensorsUnchanged(torch.autograd.Function):
    """Identity on the tensors a reference call reads from its caller, saving them for the backward.

    Modifying the input or an initial state in place between forward and backward must fail the
    same way whichever implementation ran, with torch's usual "modified by an inplace operation"
    error. The compiled kernels and torch's own save ``x`` and ``h0`` (they recompute from them), so
    there torch's version-counter check raises by itself; the reference loop would not (with an input
    or recurrent mask it saves only ``x * m``) and would silently succeed, so it runs its inputs through
    this function. The first layer's input weights ride along so that the check also runs when only
    the parameters require grad (the usual case: ``x`` is data). The outputs are copies, not views: a
    view returned by a custom function would turn the in-place change into autograd's view+inplace
    error instead of torch's message (the copies cost nothing next to the reference loop's own work).
    Written with ``setup_context`` (and a generated vmap rule) so that torch.func transforms run it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return tuple(t.clone() for t in tensors)

    @staticmethod
    def setup_context(ctx, inputs: tuple[torch.Tensor, ...], output: tuple[torch.Tensor, ...]) -> None:
        ctx.save_for_backward(*inputs)
        ctx.mark_non_differentiable(*(o for o, t in zip(output, inputs) if not t.requires_grad))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        ctx.saved_tensors  # noqa: B018  (torch raises here if one was modified in place since the forward)
        return grads


def _guard_caller_tensors(
    x: torch.Tensor, init_states: Sequence[torch.Tensor], params: Sequence[Sequence[DirectionParams]]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], list[list[DirectionParams]]]:
    """``x``, the states and the first layer's ``w_ih`` through :class:`_CallerTensorsUnchanged` when a
    backward can follow (eager autograd only: no-grad calls, tracing, export and torch.compile, which
    keeps its own saved tensors, are left as they are)."""
    first = [p.w_ih for p in params[0]]
    tensors = (x, *init_states, *first)
    if (not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors) or is_compiling()
            or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return x, tuple(init_states), [list(layer) for layer in params]
    outs = _CallerTensorsUnchanged.apply(*tensors)
    n = len(init_states)
    layers = [list(layer) for layer in params]
    layers[0] = [replace(p, w_ih=w) for p, w in zip(layers[0], outs[1 + n:])]
    return outs[0], tuple(outs[1 : 1 + n]), layers


def run_stack(
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
    zero_masked_output: bool,
    direction_fn: DirectionFn = run_direction,
    fold_weight_mask: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run a stack of (bi)directional layers.

    Args:
        x: ``(T, B, I)``.
        init_states: ``(h0,)`` or ``(h0, c0)``, each ``(L * D, B, ·)`` in torch order
            (layer-major, forward before reverse).
        params: ``params[k][d]``.
        masks: sampled masks, or ``None`` for no dropout at all.
        direction_fn: the implementation of one direction (the reference by default).
        fold_weight_mask: multiply ``W_hh`` by DropConnect's mask here (else ``direction_fn`` gets the mask
            in its masks' ``weight_hh`` and applies it).
    Returns:
        ``output`` ``(T, B, D * H_out)`` of the last layer and the final states, each ``(L * D, B, ·)``.
    """
    num_dirs = len(params[0])
    if direction_fn is run_direction:  # the compiled kernels save x and h0 themselves
        x, init_states, params = _guard_caller_tensors(x, init_states, params)
    finals: list[list[torch.Tensor]] = [[] for _ in init_states]
    layer_input = x
    for k, layer_params in enumerate(params):
        outs = []
        for d, p in enumerate(layer_params):
            idx = k * num_dirs + d
            state = tuple(s[idx] for s in init_states)
            dmasks = masks.layers[k][d] if masks is not None else DirectionMasks()
            if dmasks.weight_hh is not None and fold_weight_mask:
                # DropConnect is folded into the weight here, once per call, for the implementations that do
                # not apply it themselves (the fused CPU kernel does, while it packs W_hh).
                p = replace(p, w_hh=drop_weight(p.w_hh, materialize(dmasks.weight_hh)))
                dmasks = replace(dmasks, weight_hh=None)
            out, state = direction_fn(cfg, layer_input, state, p, dmasks, step_mask, d == 1, zero_masked_output)
            outs.append(out)
            for acc, s in zip(finals, state):
                acc.append(s)
        layer_input = outs[0] if num_dirs == 1 else torch.cat(outs, dim=-1)
        if masks is not None and k < len(params) - 1 and masks.between and masks.between[k] is not None:
            layer_input = layer_input * masks.between[k]
    return layer_input, tuple(torch.stack(f, 0) for f in finals)
