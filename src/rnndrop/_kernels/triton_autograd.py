"""The CUDA path: one direction's recurrence as a ``torch.autograd.Function`` over Triton kernels.

Same structure as the CPU extension's :class:`~rnndrop._kernels.autograd.FusedDirection`, and the
same preparation (:func:`~rnndrop._kernels.autograd.prepare_direction`): the input projection of
all timesteps is one matmul outside, differentiated by autograd. Inside, per timestep, exactly
one recurrent matmul (``torch.mm``, or ``torch.bmm`` over the gates for per-gate masks; cuBLAS
on a GPU) and one fused Triton element-wise kernel (:mod:`.triton_kernels`) that does the gates,
the state update, the Keras step-mask carry-over and writes the *masked* state the next step's
matmul reads — so dropout costs no extra launch. A GRU with ``reset_after=False`` needs a second
matmul per step (its n gate multiplies ``r ⊙ h``), hence two of each. The backward is the
hand-derived BPTT of the CPU extension, step by step likewise (one matmul for the gradient
through ``W_hh`` plus one kernel), and the weight gradients are one matmul over all timesteps
after the loop. Only activations are kept (gates, states), never a per-step graph.

Mixed precision (``torch.autocast``, bf16/fp16) — the design: parameters, states and every
element-wise operation stay in float32; only the recurrent matmuls run in the autocast dtype,
as autocast would run them (inputs rounded to it, fp32 accumulation inside cuBLAS, result in
it). The kernel writes the next matmul's input already rounded, so a step still costs one matmul
and one kernel; autocast is switched off inside the function so that nothing else is cast.
The weight-gradient matmul also runs in the autocast dtype, once over all timesteps (autograd
through the reference would sum ``T`` per-step bf16 products instead). Differences from the
reference under autocast: without biases the reference adds ``gi + gh`` in bf16, this path in
float32.

Buffers (``T`` time, ``B`` batch, ``H`` hidden, ``G`` gates; "walk" = order of computation):
``S`` ``(T+1, B, H)`` states in walk order, ``S[0] = h0`` (two rolling slots when no backward
follows); ``C`` the same for the LSTM cell; ``GA`` ``(T, B, G*H)`` activated gates in time order;
``GHN`` ``(T, B, H)`` the GRU's ``W_hn (h ⊙ m) + b_hn`` (reset_after); ``out`` ``(T, B, H)``.

Where it runs: CUDA tensors (``registry.triton_ineligible`` decides), and, for the tests only,
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` when this module first loads
the kernels) inside :func:`cpu_interpreter`. ``triton`` is imported on first use, never when
rnndrop is imported; a missing or too old ``triton`` is a reason the registry reports.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..cells import NUM_GATES
from ..masks import DirectionMasks
from ..reference import CellConfig, DirectionParams, State
from .autograd import MODES, KernelOptions, Recompute, needs_recompute, prepare_direction

MIN_TRITON: tuple[int, int] = (3, 6)  # the oldest triton the kernels are tested with (issue 7)
INSTALL_HINT = "pip install 'triton>=3.6' (Linux x86-64; CUDA wheels of torch bring it)"

_LSTM, _GRU, _RNN = MODES["LSTM"], MODES["GRU"], MODES["RNN"]
_GATES = {MODES[name]: g for name, g in NUM_GATES.items()}

_cache: tuple[ModuleType | None, str | None] | None = None
_cpu_opt_in = False


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:2])


def _try_load() -> tuple[ModuleType | None, str | None]:
    try:
        import triton
    except ImportError as exc:
        return None, f"triton is not installed ({exc}); {INSTALL_HINT}"
    except Exception as exc:  # a broken installation must not break the layers
        return None, f"triton failed to import: {type(exc).__name__}: {exc}"
    version = getattr(triton, "__version__", "0")
    if _version_tuple(version) < MIN_TRITON:
        return None, f"triton {version} is older than {'.'.join(map(str, MIN_TRITON))}; {INSTALL_HINT}"
    try:
        module = importlib.import_module(".triton_kernels", __package__)
    except Exception as exc:
        return None, f"rnndrop's Triton kernels failed to load with triton {version}: {type(exc).__name__}: {exc}"
    return module, None


def kernels() -> ModuleType | None:
    """The kernel module (imports triton on first call), or None; cached for the process."""
    global _cache
    if _cache is None:
        _cache = _try_load()
    return _cache[0]


def unavailable_reason(device_type: str) -> str | None:
    """Why the Triton kernels cannot run tensors of ``device_type`` here, or None when they can."""
    module = kernels()
    if module is None:
        assert _cache is not None
        return _cache[1]
    if device_type == "cpu" and not module.INTERPRETED:
        return ("rnndrop's Triton kernels were loaded compiled for the GPU in this process; CPU tensors need "
                "TRITON_INTERPRET=1 set before their first use")
    return None


def reset() -> None:
    """Forget the cached load (tests)."""
    global _cache
    _cache = None


@contextlib.contextmanager
def cpu_interpreter(enabled: bool = True) -> Iterator[None]:
    """Let eligible CPU-tensor calls be served by the Triton kernels under Triton's interpreter.

    For tests: the interpreter runs the very kernel code a GPU compiles, on CPU tensors, so
    correctness can be checked without a GPU. Takes effect only when the kernels are (or will
    first be) loaded with ``TRITON_INTERPRET=1``; the registry still prefers the CPU extension
    unless a test restricts ``registry.KERNELS``. Not thread-safe (a process-wide switch).
    """
    global _cpu_opt_in
    before, _cpu_opt_in = _cpu_opt_in, enabled
    try:
        yield
    finally:
        _cpu_opt_in = before


def cpu_interpreter_enabled() -> bool:
    return _cpu_opt_in


# ---------------------------------------------------------------------------------------- helpers


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off (casts are explicit here) and, on CUDA, the tensors' GPU current: Triton launches
    on the current device, which need not be the one a layer lives on (``cuda:1``)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
    if device.type == "cuda":
        stack.enter_context(torch.cuda.device(device))
    return stack


def _autocast_dtype(device_type: str, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype autocast would run a matmul of ``param_dtype`` operands in (itself when off)."""
    if param_dtype != torch.float32:  # autocast leaves float64 alone
        return param_dtype
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return param_dtype
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


class _Layout:
    """Sizes and compile-time switches of one call (shared by forward and backward)."""

    def __init__(self, opts: KernelOptions, gi_shape: torch.Size, rmask: torch.Tensor | None, cast: bool,
                 block: int) -> None:
        self.T, self.B, self.GH = gi_shape
        self.G = _GATES[opts.mode]
        self.H = self.GH // self.G
        self.N = self.B * self.H
        self.mode = opts.mode
        self.gru_rb = opts.mode == _GRU and not opts.reset_after
        self.gm = 0 if rmask is None else rmask.shape[0]  # mask gates: 0 none, 1 shared, G per gate
        self.per_gate = self.gm == self.G and self.G > 1
        self.ng = 2 if self.gru_rb else self.G  # gates of the (first) recurrent matmul
        self.cast = cast
        self.block = block

    def tix(self, s: int, reverse: bool) -> int:
        return self.T - 1 - s if reverse else s


def _weights(w_hh: torch.Tensor, mm_dtype: torch.dtype) -> torch.Tensor:
    return w_hh.detach().to(mm_dtype).contiguous()


def _masked_prev(prev: torch.Tensor, rmask: torch.Tensor | None, gates: range | int) -> torch.Tensor:
    """``prev ⊙ m_g`` (``prev`` ``(T, B, H)``) for one mask gate, or stacked for a range of gates."""
    if rmask is None:
        return prev
    if isinstance(gates, int):
        return prev * rmask[gates]
    return prev.unsqueeze(0) * rmask[gates.start:gates.stop].unsqueeze(1)


# ---------------------------------------------------------------------------------------- forward


def _forward(K: ModuleType, gi: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None, w_hh: torch.Tensor,
             b_hh: torch.Tensor | None, rmask: torch.Tensor | None, steps: torch.Tensor | None,
             opts: KernelOptions, save: bool, mm_dtype: torch.dtype) -> dict[str, Any]:
    ct = h0.dtype
    lay = _Layout(opts, gi.shape, rmask, mm_dtype != ct, K.block_for(gi.shape[1] * h0.shape[1]))
    T, B, H, N, G, GH, ng = lay.T, lay.B, lay.H, lay.N, lay.G, lay.GH, lay.ng
    grid = K.grid_for(N, lay.block)
    w = _weights(w_hh, mm_dtype)
    if lay.per_gate:
        w_first = w[: ng * H].view(ng, H, H).transpose(1, 2)  # (ng, H_in, H_out) for bmm
    else:
        w_first = w[: ng * H].t()
    w_n = w[2 * H:].t() if lay.gru_rb else None

    slots = T + 1 if save else 2
    S = torch.empty(slots, B, H, dtype=ct, device=gi.device)
    S[0] = h0
    C = None
    if lay.mode == _LSTM:
        assert c0 is not None
        C = torch.empty(slots, B, H, dtype=ct, device=gi.device)
        C[0] = c0
    out = torch.empty(T, B, H, dtype=ct, device=gi.device)
    if lay.mode != _RNN and (save or lay.gru_rb):
        GA = torch.empty(T if save else 1, B, GH, dtype=ct, device=gi.device)
    else:
        GA = out  # unused
    GHN = torch.empty(T, B, H, dtype=ct, device=gi.device) if save and lay.mode == _GRU and opts.reset_after else out
    gh = torch.empty((ng, B, H) if lay.per_gate else (B, ng * H), dtype=mm_dtype, device=gi.device)
    gh_sg, gh_sb = (N, H) if lay.per_gate else (H, ng * H)
    # HM: the next matmul's input h ⊙ m_g (rounded to the matmul dtype); without masks only when cast.
    nhm = (1 if lay.cast else 0) if lay.gm == 0 else (1 if lay.gm == 1 else ng)
    if nhm:
        if lay.gm == 0:
            hm = h0.unsqueeze(0)
        elif lay.gm == 1:
            hm = (h0 * rmask[0]).unsqueeze(0)  # type: ignore[index]
        else:
            hm = h0.unsqueeze(0) * rmask[:ng]  # type: ignore[index]
        HM = hm.to(mm_dtype).contiguous()
        mm_in = HM if lay.per_gate else HM[0]
    else:
        HM = out  # unused
    s_views = S.unbind(0)
    PO = torch.zeros(B, H, dtype=ct, device=gi.device) if steps is not None and not opts.zero_fill else out
    st = steps.view(torch.uint8) if steps is not None else out
    mask = rmask if rmask is not None else out
    bias = b_hh if b_hh is not None else out
    if lay.gru_rb:
        U = torch.empty(B, H, dtype=mm_dtype, device=gi.device)
        ghn2 = torch.empty(B, H, dtype=mm_dtype, device=gi.device)
        bias_n = b_hh[2 * H:] if b_hh is not None else out
    Cb = C if C is not None else out
    flags = dict(G=G, ACT=opts.act, RACT=opts.ract, HAS_BIAS=b_hh is not None, HAS_STEPS=steps is not None,
                 ZERO_FILL=opts.zero_fill, SAVE=save, GM=lay.gm, NHM=nhm, BLOCK=lay.block)
    for s in range(T):
        t = lay.tix(s, opts.reverse)
        sp, sn = (s, s + 1) if save else (s % 2, (s + 1) % 2)
        a = mm_in if nhm else s_views[sp]
        if lay.per_gate:
            torch.bmm(a, w_first, out=gh)
        else:
            torch.mm(a, w_first, out=gh)
        ga_off = t * B * GH if save else 0
        if lay.gru_rb:
            K.fwd_gru_gates[grid](gi, t * B * GH, gh, gh_sg, gh_sb, bias, S, sp * N, mask, U, GA, ga_off, N, H,
                                  RACT=opts.ract, HAS_BIAS=b_hh is not None, GM=lay.gm, BLOCK=lay.block)
            torch.mm(U, w_n, out=ghn2)
            K.fwd_cell[grid](gi, t * B * GH, ghn2, 0, H, bias_n, S, sp * N, sn * N, Cb, 0, 0, out, t * N, PO, st,
                             t * B, mask, HM, GA, ga_off, GHN, 0, N, H, MODE=K.MODE_GRU_N, **flags)
        else:
            K.fwd_cell[grid](gi, t * B * GH, gh, gh_sg, gh_sb, bias, S, sp * N, sn * N, Cb, sp * N, sn * N, out,
                             t * N, PO, st, t * B, mask, HM, GA, ga_off, GHN, t * N, N, H, MODE=lay.mode, **flags)
    last = T if save else T % 2
    return {"out": out, "h": S[last].clone(), "c": None if C is None else C[last].clone(), "S": S, "C": C,
            "GA": GA if save and lay.mode != _RNN else None, "GHN": GHN if GHN is not out else None, "lay": lay}


# --------------------------------------------------------------------------------------- backward


def _flows(steps: torch.Tensor, reverse: bool, zero_fill: bool) -> torch.Tensor:
    """``(T, B)`` uint8, time order: 1 where a step's output is the state after it (its gradient flows).

    A masked step outputs the carried state, unless ``zero_fill`` or no real step came before
    (then a constant zero)."""
    walk = steps.flip(0) if reverse else steps
    keep = walk.to(torch.int32)
    flows = walk if zero_fill else walk | ((keep.cumsum(0) - keep) > 0)
    return (flows.flip(0) if reverse else flows).to(torch.uint8).contiguous()


def _backward(K: ModuleType, ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor,
              dc_t: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    opts: KernelOptions = ctx.opts
    lay: _Layout = ctx.lay
    mm_dtype: torch.dtype = ctx.mm_dtype
    w_hh, rmask, steps, S, C, GA, GHN = ctx.saved_tensors[:7]
    T, B, H, N, G, GH, ng = lay.T, lay.B, lay.H, lay.N, lay.G, lay.GH, lay.ng
    ct = S.dtype
    dev = S.device
    grid = K.grid_for(N, lay.block)
    w = _weights(w_hh, mm_dtype)
    dout = dout.to(ct).contiguous()
    dGI = torch.empty(T, B, GH, dtype=ct, device=dev)
    D = dh_t.to(ct).contiguous().clone()
    DC = dc_t.to(ct).contiguous().clone() if lay.mode == _LSTM and dc_t is not None else (
        torch.zeros(B, H, dtype=ct, device=dev) if lay.mode == _LSTM else D)
    ndhm = ng if lay.per_gate else 1
    DHM = torch.zeros(ndhm, B, H, dtype=mm_dtype, device=dev)  # step T's (non-existent) matmul: zero
    write_dgl = lay.cast or (lay.mode == _GRU and opts.reset_after)
    DGL = torch.empty(B, GH, dtype=mm_dtype, device=dev) if write_dgl else dGI
    flows = _flows(steps, opts.reverse, opts.zero_fill) if steps is not None else dGI
    st = steps.view(torch.uint8) if steps is not None else dGI
    mask = rmask if rmask is not None else dGI
    Cb = C if C is not None else dGI
    GAb = GA if GA is not None else dGI
    GHNb = GHN if GHN is not None else dGI
    w_first = w[: ng * H]
    w_first_g = w_first.view(ng, H, H) if lay.per_gate else None
    if lay.gru_rb:
        DU = torch.empty(B, H, dtype=mm_dtype, device=dev)
        w_n = w[2 * H:]
    mode = K.MODE_GRU_N if lay.gru_rb else lay.mode
    flags = dict(G=G, ACT=opts.act, RACT=opts.ract, HAS_STEPS=steps is not None, GM=lay.gm, NDHM=ndhm,
                 WRITE_DGL=write_dgl, BLOCK=lay.block)
    for s in range(T - 1, -1, -1):
        t = lay.tix(s, opts.reverse)
        K.bwd_cell[grid](D, DC, DHM, mask, dout, t * N, flows, st, t * B, GAb, t * B * GH, GHNb, t * N,
                         S, s * N, (s + 1) * N, Cb, s * N, (s + 1) * N, dGI, t * B * GH, DGL, N, H, MODE=mode,
                         **flags)
        src = DGL if write_dgl else dGI[t]  # (B, G*H): the pre-activation gradients the matmul sees
        if lay.gru_rb:
            torch.mm(src[:, 2 * H:], w_n, out=DU)
            K.bwd_gru_r[grid](D, DU, mask, GAb, t * B * GH, S, s * N, dGI, t * B * GH, DGL, N, H,
                              RACT=opts.ract, GM=lay.gm, WRITE_DGL=write_dgl, BLOCK=lay.block)
        if lay.per_gate:
            torch.bmm(src.view(B, G, H)[:, :ng].transpose(0, 1), w_first_g, out=DHM)
        else:
            torch.mm(src[:, : ng * H], w_first, out=DHM[0])
    # dh0: the direct part plus step 0's matmul result, as the kernel would have combined them.
    dh0 = D
    for g in range(ndhm):
        d = DHM[g].to(ct)
        dh0 = dh0 + (d if lay.gm == 0 else d * rmask[0 if lay.gm == 1 else g])
    dc0 = DC if lay.mode == _LSTM else None

    dw = db = None
    if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
        dGH = dGI
        if lay.mode == _GRU and opts.reset_after:
            dGH = dGI.clone()
            dGH[..., 2 * H:] *= GA[..., :H]  # the n block reaches W_hn through r ⊙ (.)
    if ctx.needs_input_grad[3]:
        # One matmul over all timesteps: dW_g = Σ_t dG_g[t]^T (h_{t-1} ⊙ m_g), in the matmul dtype.
        prev = S[:T].flip(0) if opts.reverse else S[:T]  # h_{t-1}, time order
        a = dGH.reshape(T * B, GH).to(mm_dtype)
        dw = torch.empty(GH, H, dtype=mm_dtype, device=dev)
        if lay.per_gate:
            x = _masked_prev(prev, rmask, range(ng)).reshape(ng, T * B, H).to(mm_dtype)
            torch.bmm(a.view(T * B, G, H)[:, :ng].permute(1, 2, 0), x, out=dw[: ng * H].view(ng, H, H))
        else:
            x = _masked_prev(prev, rmask, 0).reshape(T * B, H).to(mm_dtype)
            torch.mm(a[:, : ng * H].t(), x, out=dw[: ng * H])
        if lay.gru_rb:
            u = GA[..., :H] * _masked_prev(prev, rmask, 0 if lay.gm <= 1 else 2)
            torch.mm(a[:, 2 * H:].t(), u.reshape(T * B, H).to(mm_dtype), out=dw[2 * H:])
        dw = dw.to(w_hh.dtype)
    if ctx.needs_input_grad[4] and ctx.has_bias:
        db = dGH.sum((0, 1))
    return dGI.to(ctx.gi_dtype), dh0, dc0, dw, db


class TritonDirection(torch.autograd.Function):
    """One direction's recurrence on the Triton kernels: ``(gi, h0, c0, w_hh, b_hh) -> (out, h_T[, c_T])``.

    Same signature and shapes as :class:`rnndrop._kernels.autograd.FusedDirection`, plus
    ``mm_dtype``, the dtype of the recurrent matmuls (the autocast dtype, or the parameters').
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        gi: torch.Tensor,
        h0: torch.Tensor,
        c0: torch.Tensor | None,
        w_hh: torch.Tensor,
        b_hh: torch.Tensor | None,
        rmask: torch.Tensor | None,
        steps: torch.Tensor | None,
        opts: KernelOptions,
        save: bool,
        mm_dtype: torch.dtype,
        recompute: Recompute | None = None,
    ) -> tuple[torch.Tensor, ...]:
        K = kernels()
        assert K is not None, "TritonDirection called without triton (the registry must prevent this)"
        with _on_device(gi.device):
            r = _forward(K, gi, h0, c0, w_hh, b_hh, rmask, steps, opts, save, mm_dtype)
        ctx.opts, ctx.lay, ctx.mm_dtype, ctx.saved = opts, r["lay"], mm_dtype, save
        ctx.has_bias, ctx.gi_dtype = b_hh is not None, gi.dtype
        if save:
            ctx.save_for_backward(w_hh, rmask, steps, r["S"], r["C"], r["GA"], r["GHN"], h0, c0, b_hh)
        # For second derivatives (see rnndrop._kernels.autograd.Recompute).
        ctx.gi, ctx.recompute = gi, recompute
        outs = (r["out"], r["h"]) if r["c"] is None else (r["out"], r["h"], r["c"])
        return outs

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None = None):  # type: ignore[override]
        if needs_recompute(dout, dh_t, dc_t):
            if ctx.recompute is None:
                raise RuntimeError("rnndrop Triton kernel: a second derivative needs the call's inputs, which were "
                                   "not kept")
            w_hh, rmask, steps, *_, h0, c0, b_hh = ctx.saved_tensors
            tensors = (h0, c0, w_hh, b_hh, None, rmask, steps, None, None, None)
            grads = ctx.recompute.backward(ctx.gi, tensors, (dout, dh_t, dc_t), ctx.opts.reverse, ctx.opts.zero_fill)
            return (*grads[:5], None, None, None, None, None, None)
        return TritonDirection._backward(ctx, dout, dh_t, dc_t)

    @staticmethod
    @once_differentiable
    def _backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None):
        if not ctx.saved:
            raise RuntimeError("rnndrop Triton kernel: backward through a forward run without saved activations")
        K = kernels()
        with _on_device(dout.device):
            grads = _backward(K, ctx, dout, dh_t, dc_t)
        return (*grads, None, None, None, None, None, None)


def triton_run_direction(
    cfg: CellConfig,
    x: torch.Tensor,
    state: State,
    params: DirectionParams,
    masks: DirectionMasks,
    step_mask: torch.Tensor | None,
    reverse: bool,
    zero_masked_output: bool,
) -> tuple[torch.Tensor, State]:
    """Drop-in for :func:`rnndrop.reference.run_direction` on the Triton kernels (same contract).

    Only call it for configurations :func:`rnndrop._kernels.registry.triton_ineligible` accepts.
    """
    tensors, opts, save = prepare_direction(cfg, x, state, params, masks, step_mask, reverse, zero_masked_output)
    mm_dtype = _autocast_dtype(x.device.type, params.w_hh.dtype)
    recompute = Recompute(cfg, x, params.w_ih, masks.input, params.b_ih)
    outs = TritonDirection.apply(*tensors, opts, save, mm_dtype, recompute)
    return outs[0], tuple(outs[1:])
