"""The fused direction as a ``torch.autograd.Function``, pluggable into ``reference.run_stack``.

:func:`fused_run_direction` has the signature of :func:`rnndrop.reference.run_direction`.
The input projection of all timesteps (with the input mask, shared or per gate) is one matmul
per mask gate before the loop (:class:`MaskedProjection`, the maths of
:func:`rnndrop.cells.input_projection`), and its gradients ``dx``, ``dW_ih``, ``db_ih`` one matmul
each after the loop. The recurrence — per step only the recurrent matmul and fused element-wise work —
runs in the compiled extension, forward and a hand-derived backward; it saves only the
activated gates (and the LSTM cell states, the GRU's ``W_hn h + b_hn``), never a per-step graph.

Masks are constants here (they carry no gradient); the predicate in :mod:`.registry` sends
masks that require grad to the reference. The hand-derived backward is first-order only: when a
second derivative is asked for (``create_graph=True``: gradient penalties, meta-learning,
``gradgradcheck``) or the cotangents are batched (``autograd.grad(..., is_grads_batched=True)``, a
vmap over the backward), the backward recomputes the direction with the reference maths
(:func:`rnndrop.reference.run_recurrence`, :func:`rnndrop.cells.input_projection`) on the same
inputs and masks and differentiates that (:func:`recompute_grads`): exact derivatives of every order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._runtime import cpu_autocast_dtype, is_compiling, under_functorch
from ..cells import drop_weight, input_projection
from ..masks import DirectionMasks, KeyedMask
from ..reference import CellConfig, DirectionParams, State, run_recurrence
from . import ops

MODES = {"LSTM": 0, "GRU": 1, "RNN": 2}
# Activations the kernels implement (code = the C++ enum / the Triton kernels' constants). Their
# derivatives are computed from the activation's output, as torch's own backward functions do.
# hard_sigmoid (Keras 3's, the recurrent activation of many converted Keras models): the CPU kernel only.
ACTIVATION_CODES = {"tanh": 0, "sigmoid": 1, "relu": 2, "linear": 3, "hard_sigmoid": 4}
CPU_ACTIVATIONS = frozenset(ACTIVATION_CODES)
TRITON_ACTIVATIONS = frozenset({"tanh", "sigmoid", "relu", "linear"})


@dataclass(frozen=True)
class KernelOptions:
    """Everything the kernel needs besides tensors (hashable)."""

    mode: int
    act: int
    ract: int
    reset_after: bool
    reverse: bool
    zero_fill: bool


def _no_cpu_autocast(active: bool):
    """A context without CPU autocast (when ``active``): the low-precision casts are explicit there."""
    import contextlib

    return torch.autocast("cpu", enabled=False) if active else contextlib.nullcontext()


def needs_recompute(*grads: torch.Tensor | None) -> bool:
    """Whether a hand-written backward must differentiate the reference maths instead of running its kernel.

    ``create_graph=True`` (grad mode is on inside the backward: its result must itself be
    differentiable) or batched cotangents (a vmap over the backward: they have no storage for a
    kernel to read).
    """
    return torch.is_grad_enabled() or under_functorch(*grads)


def recompute_grads(
    outputs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor | None, ...],
    grads: tuple[torch.Tensor | None, ...], create_graph: bool,
) -> tuple[torch.Tensor | None, ...]:
    """``d outputs / d inputs`` applied to ``grads``, through a graph recomputed by the caller (None where unused).

    With ``create_graph`` (the backward's own grad mode, read before it turned grad mode on to
    recompute) the result is itself differentiable, so derivatives of any order follow.
    """
    wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
    pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
    result: list[torch.Tensor | None] = [None] * len(inputs)
    if not wanted or not pairs:
        return tuple(result)
    found = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs],
        create_graph=create_graph, allow_unused=True,
    )
    for i, g in zip(wanted, found):
        result[i] = g
    return tuple(result)


class _ValueOf(torch.autograd.Function):
    """``value`` in the forward; in the backward the gradient goes to ``anchor`` (same shape) as is.

    A kernel's input whose buffer may since have been reused (the input projection's ``gi``) is
    recomputed as ``value`` and stands in for ``anchor`` in the graph.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(anchor: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


@dataclass(frozen=True, eq=False)
class Recompute:
    """What a fused direction's backward needs to recompute it with the reference maths (second derivatives).

    ``cfg`` the cell; ``x``, ``w_ih``, ``mask`` the input projection's inputs (``gi``'s value is
    recomputed from them: its buffer is reused by later calls).
    """

    cfg: CellConfig
    x: torch.Tensor
    w_ih: torch.Tensor
    mask: torch.Tensor | None
    b_ih: torch.Tensor | None = None  # when the kernel's gi includes b_ih (Triton), else None
    weight_mask: KeyedMask | None = None  # DropConnect applied by the kernel to the raw w_hh it was given

    def gi(self) -> torch.Tensor:
        with torch.no_grad():
            return input_projection(self.x, self.w_ih, self.b_ih, self.mask)

    def backward(
        self, gi_node: torch.Tensor, tensors: tuple[torch.Tensor | None, ...], grads: tuple[torch.Tensor | None, ...],
        reverse: bool, zero_masked_output: bool,
    ) -> tuple[torch.Tensor | None, ...]:
        """A compiled direction's gradients as the derivative of the reference recurrence.

        ``gi_node`` is the kernel's ``gi`` input (the graph node; its values are recomputed);
        ``tensors`` ``(h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc)`` as the kernel took them
        (``b_ih`` None when ``gi`` includes it; ``cmask`` ``(B, H)``); ``grads`` ``(dout, dh_T, dc_T)``.
        Returns ``(dgi, dh0, dc0, dw_hh, db_hh, db_ih)``, differentiable when grad mode was on.
        """
        create_graph = torch.is_grad_enabled()
        h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc = tensors
        with torch.enable_grad():
            gi = self.gi().to(h0.dtype)
            if gi_node.requires_grad:
                gi = _ValueOf.apply(gi_node, gi)
            gi_b = gi if b_ih is None else gi + b_ih
            masks = DirectionMasks(recurrent=rmask, candidate=None if cmask is None else cmask.unsqueeze(0),
                                   zoneout_h=zh, zoneout_c=zc)
            w_eff = w_hh if self.weight_mask is None else drop_weight(w_hh, self.weight_mask.materialize())
            params = DirectionParams(w_ih=w_eff, w_hh=w_eff, b_hh=b_hh)  # w_ih is not read by run_recurrence
            state = (h0,) if c0 is None else (h0, c0)
            out, finals = run_recurrence(self.cfg, gi_b, state, params, masks, steps, reverse, zero_masked_output)
        return recompute_grads((out, *finals), (gi_node, h0, c0, w_hh, b_hh, b_ih), grads, create_graph)


def weight_mask_args(mask: KeyedMask | None) -> tuple[int, int, int, float]:
    """The kernel's DropConnect arguments ``(k0, k1, threshold, scale)``; threshold -1: no mask."""
    if mask is None:
        return (0, 0, -1, 0.0)
    return (mask.keys[0], mask.keys[1], mask.threshold, mask.scale)


class _ThreadBuffers(threading.local):
    def __init__(self) -> None:
        self.by_dtype: dict[torch.dtype, torch.Tensor] = {}


_projection_buffers = _ThreadBuffers()


def projection_buffer(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """A CPU buffer of ``numel`` elements for the input projection ``gi``, reused call after call.

    ``gi`` (``(T, B, G*H)``, 26 MB on the main benchmark) is consumed by the recurrence and saved by
    nothing (the kernels keep the activated gates instead), so one buffer per thread and dtype serves
    every call; allocating it afresh made glibc map new pages that the projection then page-faulted in,
    a quarter of an inference call's time. The returned tensor is overwritten by the next call on this
    thread: only :class:`MaskedProjection` uses it, and its output is read before the next projection
    (a second derivative recomputes it, see :class:`Recompute`).

    It shares the buffer's memory without being a view of it: autograd forbids using a custom
    function's view output after its base changed in place, which every later call does, and the
    recomputing backward still needs ``gi`` as a node of the graph.
    """
    buf = _projection_buffers.by_dtype.get(dtype)
    if buf is None or buf.numel() < numel:
        # A normal tensor even when first needed under torch.inference_mode (an inference tensor could
        # not be written outside it later).
        with torch.inference_mode(False):
            buf = torch.empty(numel, dtype=dtype)
        _projection_buffers.by_dtype[dtype] = buf
    return torch.empty(0, dtype=dtype).set_(buf.untyped_storage(), 0, (numel,), (1,))


def project(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None, mask: torch.Tensor | None,
    lowp: torch.dtype | None = None,
) -> torch.Tensor:
    """:class:`MaskedProjection`'s forward without autograd (no-grad calls skip ``Function.apply``)."""
    t, b, i = x.shape
    gh = w_ih.shape[0]
    blocks = 1 if mask is None else mask.shape[0]
    width = gh // blocks
    x2 = x.reshape(t * b, i)
    # lowp (CPU autocast): the masked input and W_ih rounded to bf16, gi comes back in bf16 and
    # the kernel widens it (b_ih is then added there, in float32). Autocast itself is off in here:
    # the casts are explicit.
    cast = (lambda v: v) if lowp is None else (lambda v: v.to(lowp))
    out_dtype = x.dtype if lowp is None else lowp
    # Under torch.compile Dynamo refuses out= into the (non-contiguous) column blocks; the
    # compiler plans the memory itself, so the blocks are concatenated instead.
    compiling = is_compiling()
    cpu_float = (lowp is None and b_ih is None and x.device.type == "cpu" and x.dtype == torch.float32
                 and w_ih.dtype == torch.float32)
    if compiling and cpu_float and ops.projection_available():
        # The same micro-kernel as eager (bitwise equal results), as one graph node.
        return ops.input_projection(x, w_ih, mask)
    if compiling and blocks > 1:
        gi = None
    elif x.device.type == "cpu" and not compiling:
        gi = projection_buffer(t * b * gh, out_dtype).view(t * b, gh)
    else:
        gi = torch.empty(t * b, gh, dtype=out_dtype, device=x.device)
    parts = []
    # float32 on the CPU: the kernel's own micro-kernel, W_ih^T packed once per parameter version.
    fast = ops.projection_kernel() if gi is not None and not compiling and cpu_float else None
    if fast is not None:
        w = w_ih if w_ih.is_contiguous() else w_ih.contiguous()
        for g in range(blocks):
            xm = x2 if mask is None else (x * mask[g]).reshape(t * b, i)
            fast.project_into(xm.contiguous(), w, g * width, width, gi)
        return gi.view(t, b, gh)
    with _no_cpu_autocast(lowp is not None):
        w_cast = cast(w_ih)
        for g in range(blocks):
            cols = slice(g * width, (g + 1) * width)
            xm = cast(x2 if mask is None else (x * mask[g]).reshape(t * b, i))
            out = None if gi is None else gi[:, cols]
            # W^T laid out contiguously first: MKL's sgemm on this tall, thin-K shape (e.g. 6400 x 64
            # @ 64 x 1024) runs at half speed on a transposed view (measured 10.9 vs 6.0 ms).
            w_t = w_cast[cols].t().contiguous()
            if b_ih is None:
                parts.append(torch.mm(xm, w_t, out=out))
            else:
                parts.append(torch.addmm(cast(b_ih[cols]), xm, w_t, out=out))
    if gi is None:
        gi = torch.cat(parts, dim=1)
    return gi.view(t, b, gh)


class MaskedProjection(torch.autograd.Function):
    """``gi = dropout(x) W_ih^T + b_ih`` for all timesteps, saving only ``x`` and the mask.

    ``x`` ``(T, B, I)``; ``mask`` ``None``, ``(1, B, I)`` (shared) or ``(G, B, I)`` (per gate);
    returns ``(T, B, G*H)``. Each mask gate's block is one ``addmm`` (bias fused) written straight
    into its columns of ``gi``. Autograd of :func:`rnndrop.cells.input_projection` would keep
    ``x * m_g`` for every gate and, per gate, let ``einsum`` copy ``gi`` and its gradient into
    another layout; here ``x * m_g`` is recomputed in the backward, one gate at a time, and the
    gradients are one matmul each over all timesteps.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w_ih: torch.Tensor,
        b_ih: torch.Tensor | None,
        mask: torch.Tensor | None,
        lowp: torch.dtype | None = None,
    ) -> torch.Tensor:
        gi = project(x, w_ih, b_ih, mask, lowp)
        ctx.save_for_backward(x, w_ih, b_ih, mask)
        ctx.has_bias = b_ih is not None
        ctx.lowp = lowp
        return gi

    @staticmethod
    def backward(ctx: Any, dgi: torch.Tensor):  # type: ignore[override]
        if needs_recompute(dgi):
            create_graph = torch.is_grad_enabled()
            x, w_ih, b_ih, mask = ctx.saved_tensors
            with torch.enable_grad():
                gi = input_projection(x, w_ih, b_ih, mask)
            return (*recompute_grads((gi,), (x, w_ih, b_ih), (dgi,), create_graph), None, None)
        return MaskedProjection._backward(ctx, dgi)

    @staticmethod
    @once_differentiable
    def _backward(ctx: Any, dgi: torch.Tensor):
        x, w_ih, _, mask = ctx.saved_tensors
        t, b, i = x.shape
        gh = w_ih.shape[0]
        blocks = 1 if mask is None else mask.shape[0]
        width = gh // blocks
        lowp = ctx.lowp
        # lowp: the matmuls in bf16 as in torch.nn's autocast backward, results widened to float32.
        cast = (lambda v: v) if lowp is None else (lambda v: v.to(lowp))
        d2 = dgi.reshape(t * b, gh)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.empty_like(w_ih) if need_w else None
        with _no_cpu_autocast(lowp is not None):
            d2c = cast(d2)
            w_cast = cast(w_ih) if need_x else None
            for g in range(blocks):
                cols = slice(g * width, (g + 1) * width)
                dg = d2c[:, cols]
                if need_w:
                    xm = x.reshape(t * b, i) if mask is None else (x * mask[g]).reshape(t * b, i)
                    if lowp is None:
                        torch.mm(dg.t(), xm, out=dw[cols])
                    else:
                        dw[cols] = torch.mm(dg.t(), cast(xm))
                if need_x:
                    dxm = (dg @ w_cast[cols]).view(t, b, i)
                    dx += dxm if mask is None else dxm * mask[g]
        db = d2.sum(0).to(x.dtype) if need_b and ctx.has_bias else None
        return dx, dw, db, None, None


class FusedDirection(torch.autograd.Function):
    """One direction's recurrence: ``(gi, h0, c0, w_hh, b_hh, b_ih) -> (out, h_T[, c_T])``.

    Shapes: ``gi`` ``(T, B, G*H)`` = input projection *without* ``b_ih`` (added by the kernel);
    ``h0``, ``c0`` ``(B, H)``; ``w_hh`` ``(G*H, H)``; ``b_hh``, ``b_ih`` ``(G*H,)`` or both None;
    ``rmask`` ``(G_m, B, H)`` or None; ``steps`` ``(T, B)`` bool or None; ``cmask`` the candidate
    (Semeniuta) mask ``(B, H)`` or None; ``zh`` / ``zc`` zoneout keep-previous weights of ``h`` / ``c``
    ``(T|1, B|1, H|1)`` or None; ``wmask`` DropConnect's :class:`~rnndrop.masks.KeyedMask` of ``w_hh``
    (drawn by the kernel as it packs ``w_hh``; ``dw`` is the raw weight's gradient) or None; ``out``
    ``(T, B, H)`` time order even when reverse. Under CPU autocast ``gi`` is bf16 and everything else float32.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor | None,
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        b_ih: torch.Tensor | None,
        rmask: torch.Tensor | None,
        steps: torch.Tensor | None,
        cmask: torch.Tensor | None,
        zh: torch.Tensor | None,
        zc: torch.Tensor | None,
        opts: KernelOptions,
        save: bool,
        recompute: Recompute | None = None,
        wmask: KeyedMask | None = None,
    ) -> tuple[torch.Tensor, ...]:
        out, h_t, c_t, s_buf, c_buf, ga, ghn, c_raw = ops.forward(
            opts.mode, opts.act, opts.ract, opts.reset_after, opts.reverse, opts.zero_fill, save,
            gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc, *weight_mask_args(wmask),
        )
        ctx.opts, ctx.wmask = opts, wmask
        ctx.has_bias = b_hh is not None
        # bf16 gi (autocast): the per-step products and the weight gradient run in bf16 too.
        ctx.lowp = gi.dtype == torch.bfloat16 and h0.dtype == torch.float32
        if save:
            ctx.save_for_backward(h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc, out, s_buf, c_buf, ga,
                                  ghn, c_raw)
        ctx.saved = save
        # For second derivatives: gi itself (the graph node; its buffer is reused later) and how to recompute it.
        ctx.gi, ctx.recompute = gi, recompute
        return (out, h_t) if c_t is None else (out, h_t, c_t)

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None = None):  # type: ignore[override]
        if needs_recompute(dout, dh_t, dc_t):
            return FusedDirection._recomputed_backward(ctx, dout, dh_t, dc_t)
        return FusedDirection._backward(ctx, dout, dh_t, dc_t)

    @staticmethod
    def _recomputed_backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None):
        if ctx.recompute is None:
            raise RuntimeError("rnndrop fused kernel: a second derivative needs the call's inputs, which were not kept")
        grads = ctx.recompute.backward(ctx.gi, ctx.saved_tensors[:10], (dout, dh_t, dc_t), ctx.opts.reverse,
                                       ctx.opts.zero_fill)
        return (*grads, None, None, None, None, None, None, None, None, None)

    @staticmethod
    @once_differentiable
    def _backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None):
        if not ctx.saved:
            raise RuntimeError("rnndrop fused kernel: backward through a forward run without saved activations")
        opts: KernelOptions = ctx.opts
        h0, c0, w_hh, _, _, rmask, steps, cmask, zh, zc, out, s_buf, c_buf, ga, ghn, c_raw = ctx.saved_tensors
        dgi, dh0, dc0, dw, db_hh, db_ih = ops.backward(
            opts.mode, opts.act, opts.ract, opts.reset_after, opts.reverse, opts.zero_fill, ctx.lowp,
            h0, c0, w_hh, ctx.has_bias, rmask, steps, cmask, zh, zc, out, s_buf, c_buf, ga, ghn, c_raw,
            dout.contiguous(), dh_t.contiguous(), None if dc_t is None else dc_t.contiguous(),
            *weight_mask_args(ctx.wmask),
        )
        return dgi, dh0, dc0, dw, db_hh, db_ih, None, None, None, None, None, None, None, None, None


# (gi, h0, c0, w_hh, b_hh, rmask, steps), see prepare_direction.
DirectionTensors = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None,
    torch.Tensor | None, torch.Tensor | None,
]


def prepare_direction(
    cfg: CellConfig,
    x: torch.Tensor,
    state: State,
    params: DirectionParams,
    masks: DirectionMasks,
    step_mask: torch.Tensor | None,
    reverse: bool,
    zero_masked_output: bool,
    input_bias_in_gi: bool = True,
    lowp: torch.dtype | None = None,
) -> tuple[DirectionTensors, KernelOptions, bool]:
    """What every compiled recurrence (CPU extension, Triton) takes, from a ``run_direction`` call.

    With ``input_bias_in_gi=False`` ``gi`` leaves out ``b_ih`` (the CPU kernel adds it in its
    element-wise pass, saving a pass over ``gi``); the caller then passes ``params.b_ih`` on.
    With ``lowp`` (``torch.bfloat16`` under CPU autocast) ``gi`` is computed and returned in that dtype.

    Runs the input projection of all timesteps (:class:`MaskedProjection`: one matmul per mask
    gate, its gradients one matmul each) and returns
    ``((gi, h0, c0, w_hh, b_hh, rmask, steps), options, save)``: ``gi`` ``(T, B, G*H)``, ``h0``/``c0``
    ``(B, H)`` (``c0`` None unless LSTM), ``rmask`` ``(G_m, B, H)`` expanded to the batch or None,
    ``steps`` ``(T, B)`` bool or None, all contiguous; ``save`` says whether a backward will follow.
    """
    batch = x.shape[1]
    imask = masks.input
    if imask is not None:
        imask = imask.expand(imask.shape[0], batch, imask.shape[2])
    b_gi = params.b_ih if input_bias_in_gi else None
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, params.w_ih, b_gi)):
        gi = MaskedProjection.apply(x, params.w_ih, b_gi, imask, lowp)
    else:  # nothing to differentiate: skip autograd.Function's per-call overhead
        gi = project(x, params.w_ih, b_gi, imask, lowp)
    rmask = masks.recurrent
    if rmask is not None:
        rmask = rmask.expand(rmask.shape[0], batch, rmask.shape[2]).contiguous()
    steps = None if step_mask is None else step_mask.contiguous()
    h0 = state[0].contiguous()
    c0 = state[1].contiguous() if cfg.mode == "LSTM" else None
    w_hh = params.w_hh.contiguous()
    b_hh = None if params.b_hh is None else params.b_hh.contiguous()
    opts = KernelOptions(
        mode=MODES[cfg.mode],
        act=ACTIVATION_CODES[cfg.activation],
        ract=ACTIVATION_CODES.get(cfg.recurrent_activation, 3) if cfg.mode != "RNN" else 3,
        reset_after=bool(cfg.reset_after),
        reverse=bool(reverse),
        zero_fill=bool(zero_masked_output),
    )
    tensors = (gi, h0, c0, w_hh, b_hh)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return (gi, h0, c0, w_hh, b_hh, rmask, steps), opts, save


def autocast_lowp(device_type: str, param_dtype: torch.dtype) -> torch.dtype | None:
    """The low-precision dtype autocast runs this call's matmuls in (``None`` when it is off).

    On the CPU, the autocast dtype (the registry admits float32 parameters only); on CUDA also only for
    float32 parameters (autocast leaves float64 alone).
    """
    if device_type == "cpu":
        return cpu_autocast_dtype()
    if param_dtype != torch.float32:
        return None
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype()


# A kernel's part of a direction call: (tensors, options, save, lowp, params, masks, recompute) -> (out, h_T[, c_T]).
DirectionApply = Callable[
    [DirectionTensors, KernelOptions, bool, "torch.dtype | None", DirectionParams, DirectionMasks, "Recompute"],
    tuple[torch.Tensor, ...],
]


def kernel_direction_fn(apply: DirectionApply, *, input_bias_in_gi: bool, name: str, registry_check: str) -> Callable:
    """A drop-in for :func:`rnndrop.reference.run_direction` (same contract) on a compiled kernel: the one
    preparation every kernel shares (:func:`prepare_direction`, the autocast dtype), then ``apply``."""

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
        lowp = autocast_lowp(x.device.type, params.w_hh.dtype)
        # DropConnect: a KeyedMask is left to the kernel (the fused one draws it while it packs W_hh); a mask
        # given as a tensor (dropout_masks=) is folded into the weight here, as run_stack does for the others.
        wmask = masks.weight_hh
        if isinstance(wmask, torch.Tensor):
            params, wmask = replace(params, w_hh=drop_weight(params.w_hh, wmask)), None
        tensors, opts, save = prepare_direction(cfg, x, state, params, masks, step_mask, reverse, zero_masked_output,
                                                input_bias_in_gi=input_bias_in_gi, lowp=lowp)
        # What a second derivative needs to recompute the direction with the reference maths.
        recompute = Recompute(cfg, x, params.w_ih, masks.input, params.b_ih if input_bias_in_gi else None, wmask)
        outs = apply(tensors, opts, save, lowp, params, masks, recompute)
        return outs[0], tuple(outs[1:])

    run_direction.__name__ = run_direction.__qualname__ = name
    run_direction.__doc__ = (f"Drop-in for :func:`rnndrop.reference.run_direction` on the {name.split('_')[0]} kernel "
                             f"(same contract). Only call it for configurations :func:`{registry_check}` accepts.")
    return run_direction


def _fused_apply(
    tensors: DirectionTensors, opts: KernelOptions, save: bool, lowp: torch.dtype | None, params: DirectionParams,
    masks: DirectionMasks, recompute: Recompute,
) -> tuple[torch.Tensor, ...]:
    """The CPU extension's part: ``b_ih`` added in its element-wise pass, candidate, zoneout and DropConnect."""
    wmask = recompute.weight_mask
    gi, h0, c0, w_hh, b_hh, rmask, steps = tensors
    b_ih = None if params.b_ih is None else params.b_ih.contiguous()
    save = save or (torch.is_grad_enabled() and b_ih is not None and b_ih.requires_grad)
    batch = h0.shape[0]
    # Candidate mask (1, B|1, H) -> (B, H); zoneout weights stay (T|1, B|1, H|1), broadcast in the kernel.
    cmask = masks.candidate
    if cmask is not None:
        cmask = cmask[0].expand(batch, cmask.shape[2]).contiguous()
    zh = None if masks.zoneout_h is None else masks.zoneout_h.contiguous()
    zc = None if masks.zoneout_c is None else masks.zoneout_c.contiguous()
    if not save:  # no backward will follow (inference, MC dropout): the kernel without autograd.Function
        out, h_t, c_t = ops.forward(opts.mode, opts.act, opts.ract, opts.reset_after, opts.reverse, opts.zero_fill,
                                    False, gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc,
                                    *weight_mask_args(wmask))[:3]
        return (out, h_t) if c_t is None else (out, h_t, c_t)
    return FusedDirection.apply(gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc, opts, save, recompute,
                                wmask)


# The registry admits bf16 CPU autocast here (on a CPU with AVX512_BF16), never fp16.
fused_run_direction = kernel_direction_fn(_fused_apply, input_bias_in_gi=False, name="fused_run_direction",
                                          registry_check="rnndrop._kernels.registry.cpu_ineligible")
