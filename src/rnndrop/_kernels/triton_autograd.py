"""The CUDA path: one direction's recurrence as a ``torch.autograd.Function`` over Triton kernels.

Same structure as the CPU extension's :class:`~rnndrop._kernels.autograd.FusedDirection`, and the
same preparation (:func:`~rnndrop._kernels.autograd.kernel_direction_fn`): the input projection of
all timesteps is one matmul outside, differentiated by autograd; the recurrence inside is one of
four **time loops** (:data:`LOOPS`, chosen by ``RNNDROP_CUDA_LOOP`` or :func:`use_loop`), all running
the same element-wise Triton code (:mod:`.triton_kernels`: the gates, the state update, the Keras
step-mask carry-over, the *masked* state the next product reads, so dropout costs no extra launch):

* ``steps`` (the default until a GPU run measures the others): per timestep one recurrent matmul
  (``torch.mm``, or ``torch.bmm`` over the gates for per-gate masks; cuBLAS) and one Triton
  element-wise kernel — 2 launches per step forward and 2 backward (4 + 4 for a GRU with
  ``reset_after=False``, whose n gate multiplies ``r ⊙ h``), each issued from Python;
* ``fused_steps``: one Triton launch per step, the recurrent product inside it (``tl.dot``);
* ``persistent``: one Triton launch per direction for all ``T`` steps, forward and backward: each
  program owns a block of batch rows and walks the whole sequence (rows of a recurrence are
  independent: no grid-wide synchronisation), reading ``W_hh`` from L2 at every step;
* ``graph``: the ``steps`` loop captured once per call signature into a CUDA graph and replayed
  (static input buffers; outputs and saved activations copied out, since a later call replays the
  same buffers): one graph launch per direction, forward and backward.

The backward is the hand-derived BPTT of the CPU extension, step by step likewise (the gradient
through ``W_hh`` plus the element-wise kernel), and the weight gradients are one matmul over all
timesteps after the loop. Only activations are kept (gates, states), never a per-step graph.

Mixed precision (``torch.autocast``, bf16/fp16), as the CPU path: the products run in the autocast
dtype (the input projection and its gradients too, as autocast would run them), states and every
element-wise operation in float32; the kernel writes the next product's input already rounded.
Saved for backward, as on the CPU path: the states and the activated gates in float32, the outputs
being a view of the states when there is no step mask (no second copy of them). The weight-gradient
matmul also runs in the autocast dtype, once over all timesteps. Differences from the reference under
autocast: without biases the reference adds ``gi + gh`` in bf16, this path in float32. ``tl.dot`` on
float32 operands follows torch's matmul precision flags (TF32 only when ``torch.backends.cuda.matmul``
allows it).

Buffers (``T`` time, ``B`` batch, ``H`` hidden, ``G`` gates; "walk" = order of computation):
``S`` the states: without a step mask ``(T+1, B, H)`` in time order with ``out`` a view of it
(``S[1:]`` forward, ``S[:T]`` reverse; the initial state in the remaining slot), else ``(T+1, B, H)``
in walk order (two rolling slots when no backward follows) beside ``out`` ``(T, B, H)``; ``C`` the
LSTM cell in walk order; ``GA`` ``(T, B, G*H)`` activated gates in time order; ``GHN`` ``(T, B, H)``
the GRU's ``W_hn (h ⊙ m) + b_hn`` (reset_after).

Where it runs: CUDA tensors (``registry.triton_ineligible`` decides), and, for the tests only,
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` when this module first loads
the kernels) inside :func:`cpu_interpreter`. ``triton`` is imported on first use, never when
rnndrop is imported; a missing or too old ``triton``, kernels loaded interpreted in a process
that runs CUDA tensors, or a failed first launch on the GPU is a reason the registry reports (the
call that failed runs on the reference path instead, with a warning).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from ..cells import NUM_GATES
from ..masks import DirectionMasks
from ..reference import DirectionParams
from .autograd import MODES, DirectionTensors, KernelOptions, Recompute, kernel_direction_fn, needs_recompute

MIN_TRITON: tuple[int, int] = (3, 6)  # the oldest triton the kernels are tested with (issue 7)
INSTALL_HINT = "pip install 'triton>=3.6' (Linux x86-64; CUDA wheels of torch bring it)"

_LSTM, _GRU, _RNN = MODES["LSTM"], MODES["GRU"], MODES["RNN"]
_GATES = {MODES[name]: g for name, g in NUM_GATES.items()}

_cache: tuple[ModuleType | None, str | None] | None = None
_cpu_opt_in = False
_failed: str | None = None  # why the kernels failed their first launch on the GPU (then never used again)
_verified: set[str] = set()  # loops whose first CUDA launch succeeded in this process

LOOPS: tuple[str, ...] = ("steps", "fused_steps", "persistent", "graph")
LOOP_VARIABLE = "RNNDROP_CUDA_LOOP"
DEFAULT_LOOP = "steps"  # until a GPU run measures the others (docs/benchmarks.md, CUDA section)
_loop_override: str | None = None


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
    if device_type == "cuda":
        if module.INTERPRETED:
            return ("Triton's interpreter was on (TRITON_INTERPRET=1) when rnndrop loaded its Triton kernels: CUDA "
                    "calls would run interpreted on the host, so they take another path (unset TRITON_INTERPRET)")
        if _failed is not None:
            return _failed
    return None


def loop_variant() -> str:
    """The time loop of the CUDA path (:data:`LOOPS`): :func:`use_loop`'s, else ``$RNNDROP_CUDA_LOOP``, else
    :data:`DEFAULT_LOOP`. An unknown name in the variable raises (a typo must not time the wrong loop)."""
    if _loop_override is not None:
        return _loop_override
    name = os.environ.get(LOOP_VARIABLE, "").strip() or DEFAULT_LOOP
    if name not in LOOPS:
        raise ValueError(f"{LOOP_VARIABLE}={name!r} is not one of {LOOPS}")
    return name


@contextlib.contextmanager
def use_loop(name: str) -> Iterator[None]:
    """Run the CUDA path's calls inside the block with the time loop ``name`` (benchmarks, tests; a
    process-wide switch, not thread-safe)."""
    global _loop_override
    if name not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {name!r}")
    before, _loop_override = _loop_override, name
    try:
        yield
    finally:
        _loop_override = before


class LaunchError(RuntimeError):
    """The Triton kernels failed on their first launch on the GPU (compiler, driver, launcher)."""


def mark_failed(reason: str) -> None:
    """Take the Triton kernels out of service for this process (the registry then says ``reason``)."""
    global _failed
    _failed = reason


def reset() -> None:
    """Forget the cached load and any failed launch (tests)."""
    global _cache, _failed
    _cache = None
    _failed = None
    _verified.clear()
    _graphs.clear()


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


def dot_precision() -> str:
    """``tl.dot``'s ``input_precision`` for float32 operands: "tf32" exactly when torch's own float32
    matmuls (cuBLAS) use TF32, else "ieee"; so every loop computes its products at the same precision."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)  # torch >= 2.9
    if precision in ("tf32", "ieee"):
        return precision
    try:
        return "tf32" if matmul.allow_tf32 else "ieee"
    except RuntimeError:  # torch refuses the legacy flag once the new API was used: not TF32 then
        return "ieee"


class _Layout:
    """Sizes and compile-time switches of one call (shared by forward and backward)."""

    def __init__(self, opts: KernelOptions, gi_shape: torch.Size, rmask: torch.Tensor | None, cast: bool,
                 block: int, alias: bool, save: bool) -> None:
        self.T, self.B, self.GH = gi_shape
        self.G = _GATES[opts.mode]
        self.H = self.GH // self.G
        self.N = self.B * self.H
        self.mode = opts.mode
        self.reverse = opts.reverse
        self.gru_rb = opts.mode == _GRU and not opts.reset_after
        self.gm = 0 if rmask is None else rmask.shape[0]  # mask gates: 0 none, 1 shared, G per gate
        self.per_gate = self.gm == self.G and self.G > 1
        self.ng = 2 if self.gru_rb else self.G  # gates of the (first) recurrent matmul
        self.cast = cast
        self.block = block
        self.alias = alias  # no step mask: the outputs are a view of the state buffer
        self.save = save

    def tix(self, s: int) -> int:
        return self.T - 1 - s if self.reverse else s

    def slot(self, s: int) -> int:
        """The state buffer's slot before walk step ``s`` (``triton_kernels._slot``)."""
        if self.alias:
            return self.T - s if self.reverse else s
        return s if self.save else s % 2

    def cslot(self, s: int) -> int:
        """The cell buffer's slot before walk step ``s`` (walk order)."""
        return s if self.save else s % 2


def _weights(w_hh: torch.Tensor, mm_dtype: torch.dtype) -> torch.Tensor:
    return w_hh.detach().to(mm_dtype).contiguous()


def _masked_prev(prev: torch.Tensor, rmask: torch.Tensor | None, gates: range | int) -> torch.Tensor:
    """``prev ⊙ m_g`` (``prev`` ``(T, B, H)``) for one mask gate, or stacked for a range of gates."""
    if rmask is None:
        return prev
    if isinstance(gates, int):
        return prev * rmask[gates]
    return prev.unsqueeze(0) * rmask[gates.start:gates.stop].unsqueeze(1)


def _seq_flags(K: ModuleType, lay: _Layout, ct: torch.dtype) -> dict[str, Any]:
    """The sequence kernels' tile sizes, product precision and switches shared by forward and backward."""
    bb, bn, bk = K.seq_blocks(ct == torch.float64)
    return dict(G=lay.G, NG=lay.ng, PER_GATE=lay.per_gate, GRU_RB=lay.gru_rb, ALIAS=lay.alias, REVERSE=lay.reverse,
                BB=bb, BN=bn, BK=bk, BLOCK=lay.block, PREC="ieee" if ct == torch.float64 else dot_precision(),
                F64=ct == torch.float64)


# ---------------------------------------------------------------------------------------- forward


def _forward(K: ModuleType, gi: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor | None, w_hh: torch.Tensor,
             b_hh: torch.Tensor | None, rmask: torch.Tensor | None, steps: torch.Tensor | None,
             opts: KernelOptions, save: bool, mm_dtype: torch.dtype, loop: str) -> dict[str, Any]:
    ct = h0.dtype
    lay = _Layout(opts, gi.shape, rmask, mm_dtype != ct, K.block_for(gi.shape[1] * h0.shape[1]), steps is None, save)
    T, B, H, N, GH, ng = lay.T, lay.B, lay.H, lay.N, lay.GH, lay.ng
    dev = gi.device
    w = _weights(w_hh, mm_dtype)
    if lay.alias:
        S = torch.empty(T + 1, B, H, dtype=ct, device=dev)
        out = S[:T] if lay.reverse else S[1:]
    else:
        S = torch.empty(T + 1 if save else 2, B, H, dtype=ct, device=dev)
        out = torch.empty(T, B, H, dtype=ct, device=dev)
    S[lay.slot(0)] = h0
    C = None
    if lay.mode == _LSTM:
        assert c0 is not None
        C = torch.empty(T + 1 if save else 2, B, H, dtype=ct, device=dev)
        C[0] = c0
    if lay.mode != _RNN and (save or lay.gru_rb):
        # In the states' dtype, as the CPU path keeps them (saved in bf16 under autocast they doubled the
        # gradients' error against autocast through the reference: tests/kernels/test_triton_dispatch.py).
        GA = torch.empty(T if save else 1, B, GH, dtype=ct, device=dev)
    else:
        GA = out  # unused
    GHN = torch.empty(T, B, H, dtype=ct, device=dev) if save and lay.mode == _GRU and opts.reset_after else out
    gh = torch.empty((ng, B, H) if lay.per_gate else (B, ng * H), dtype=mm_dtype, device=dev)
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
    else:
        HM = out  # unused
    PO = torch.zeros(B, H, dtype=ct, device=dev) if steps is not None and not opts.zero_fill else out
    st = steps.view(torch.uint8) if steps is not None else out
    mask = rmask if rmask is not None else out
    bias = b_hh if b_hh is not None else out
    U = ghn2 = bias_n = out  # unused unless reset_after=False
    if lay.gru_rb:
        U = torch.empty(B, H, dtype=mm_dtype, device=dev)
        ghn2 = torch.empty(B, H, dtype=mm_dtype, device=dev)
        bias_n = b_hh[2 * H:] if b_hh is not None else out
    Cb = C if C is not None else out
    common = dict(ACT=opts.act, RACT=opts.ract, HAS_BIAS=b_hh is not None, HAS_STEPS=steps is not None,
                  ZERO_FILL=opts.zero_fill, SAVE=save, GM=lay.gm, NHM=nhm)
    if loop == "steps":
        _forward_steps(K, lay, gi, gh, gh_sg, gh_sb, w, bias, bias_n, S, Cb, out, PO, st, mask, HM, GA, GHN, U, ghn2,
                       nhm, save, common)
    else:
        args = (gi, gh, bias, S, Cb, out, PO, st, mask, HM, GA, GHN, w, U, ghn2, bias_n, T, B, H)
        flags = dict(MODE=lay.mode, **common, **_seq_flags(K, lay, ct))
        grid = K.seq_grid(B, flags["BB"])
        if loop == "persistent":
            K.fwd_seq[grid](*args, 0, T, **flags)
        else:  # fused_steps
            for s in range(T):
                K.fwd_seq[grid](*args, s, s + 1, **flags)
    last = lay.slot(T)
    return {"out": out, "h": S[last].clone(), "c": None if C is None else C[lay.cslot(T)].clone(), "S": S, "C": C,
            "GA": GA if save and lay.mode != _RNN else None, "GHN": GHN if GHN is not out else None, "lay": lay}


def _forward_steps(K: ModuleType, lay: _Layout, gi: torch.Tensor, gh: torch.Tensor, gh_sg: int, gh_sb: int,
                   w: torch.Tensor, bias: torch.Tensor, bias_n: torch.Tensor, S: torch.Tensor, Cb: torch.Tensor,
                   out: torch.Tensor, PO: torch.Tensor, st: torch.Tensor, mask: torch.Tensor, HM: torch.Tensor,
                   GA: torch.Tensor, GHN: torch.Tensor, U: torch.Tensor, ghn2: torch.Tensor, nhm: int, save: bool,
                   common: dict[str, Any]) -> None:
    """The ``steps`` loop: per step a cuBLAS product and the element-wise kernel (two of each for a GRU
    with ``reset_after=False``)."""
    T, B, H, N, G, GH, ng = lay.T, lay.B, lay.H, lay.N, lay.G, lay.GH, lay.ng
    grid = K.grid_for(N, lay.block)
    if lay.per_gate:
        w_first = w[: ng * H].view(ng, H, H).transpose(1, 2)  # (ng, H_in, H_out) for bmm
    else:
        w_first = w[: ng * H].t()
    w_n = w[2 * H:].t() if lay.gru_rb else None
    mm_in = HM if lay.per_gate else HM[0]
    s_views = S.unbind(0)
    flags = dict(G=G, **common, ALIAS=lay.alias, BLOCK=lay.block)
    for s in range(T):
        t = lay.tix(s)
        sp, sn = lay.slot(s) * N, lay.slot(s + 1) * N
        cp, cn = lay.cslot(s) * N, lay.cslot(s + 1) * N
        a = mm_in if nhm else s_views[lay.slot(s)]
        if lay.per_gate:
            torch.bmm(a, w_first, out=gh)
        else:
            torch.mm(a, w_first, out=gh)
        ga_off = t * B * GH if save else 0
        if lay.gru_rb:
            K.fwd_gru_gates[grid](gi, t * B * GH, gh, gh_sg, gh_sb, bias, S, sp, mask, U, GA, ga_off, N, H,
                                  RACT=common["RACT"], HAS_BIAS=common["HAS_BIAS"], GM=lay.gm, BLOCK=lay.block)
            torch.mm(U, w_n, out=ghn2)
            K.fwd_cell[grid](gi, t * B * GH, ghn2, 0, H, bias_n, S, sp, sn, Cb, 0, 0, out, t * N, PO, st, t * B, mask,
                             HM, GA, ga_off, GHN, 0, N, H, MODE=K.MODE_GRU_N, **flags)
        else:
            K.fwd_cell[grid](gi, t * B * GH, gh, gh_sg, gh_sb, bias, S, sp, sn, Cb, cp, cn, out, t * N, PO, st, t * B,
                             mask, HM, GA, ga_off, GHN, t * N, N, H, MODE=lay.mode, **flags)


# --------------------------------------------------------------------------------------- backward


def _flows(steps: torch.Tensor, reverse: bool, zero_fill: bool) -> torch.Tensor:
    """``(T, B)`` uint8, time order: 1 where a step's output is the state after it (its gradient flows).

    A masked step outputs the carried state, unless ``zero_fill`` or no real step came before
    (then a constant zero)."""
    walk = steps.flip(0) if reverse else steps
    keep = walk.to(torch.int32)
    flows = walk if zero_fill else walk | ((keep.cumsum(0) - keep) > 0)
    return (flows.flip(0) if reverse else flows).to(torch.uint8).contiguous()


# (w_hh, rmask, steps, S, C, GA, GHN): what the forward saves for the backward.
Saved = tuple[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None", torch.Tensor, "torch.Tensor | None",
              "torch.Tensor | None", "torch.Tensor | None"]


def _backward(K: ModuleType, saved: Saved, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None,
              opts: KernelOptions, lay: _Layout, mm_dtype: torch.dtype, need_w: bool, need_b: bool, has_bias: bool,
              gi_dtype: torch.dtype, loop: str) -> tuple[torch.Tensor | None, ...]:
    w_hh, rmask, steps, S, C, GA, GHN = saved
    T, B, H, N, G, GH, ng = lay.T, lay.B, lay.H, lay.N, lay.G, lay.GH, lay.ng
    ct = S.dtype
    dev = S.device
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
    DU = torch.empty(B, H, dtype=mm_dtype, device=dev) if lay.gru_rb else dGI
    mode = K.MODE_GRU_N if lay.gru_rb else lay.mode
    common = dict(ACT=opts.act, RACT=opts.ract, HAS_STEPS=steps is not None, GM=lay.gm, NDHM=ndhm,
                  WRITE_DGL=write_dgl)
    if loop == "steps":
        w_first = w[: ng * H]
        w_first_g = w_first.view(ng, H, H) if lay.per_gate else None
        w_n = w[2 * H:] if lay.gru_rb else None
        grid = K.grid_for(N, lay.block)
        flags = dict(G=G, **common, BLOCK=lay.block)
        for s in range(T - 1, -1, -1):
            t = lay.tix(s)
            sp, sn = lay.slot(s) * N, lay.slot(s + 1) * N
            K.bwd_cell[grid](D, DC, DHM, mask, dout, t * N, flows, st, t * B, GAb, t * B * GH, GHNb, t * N,
                             S, sp, sn, Cb, s * N, (s + 1) * N, dGI, t * B * GH, DGL, N, H, MODE=mode, **flags)
            src = DGL if write_dgl else dGI[t]  # (B, G*H): the pre-activation gradients the matmul sees
            if lay.gru_rb:
                torch.mm(src[:, 2 * H:], w_n, out=DU)
                K.bwd_gru_r[grid](D, DU, mask, GAb, t * B * GH, S, sp, dGI, t * B * GH, DGL, N, H,
                                  RACT=opts.ract, GM=lay.gm, WRITE_DGL=write_dgl, BLOCK=lay.block)
            if lay.per_gate:
                torch.bmm(src.view(B, G, H)[:, :ng].transpose(0, 1), w_first_g, out=DHM)
            else:
                torch.mm(src[:, : ng * H], w_first, out=DHM[0])
    else:
        args = (D, DC, DHM, mask, dout, flows, st, GAb, GHNb, S, Cb, dGI, DGL, w, DU, T, B, H)
        flags = dict(MODE=mode, **common, **_seq_flags(K, lay, ct))
        grid = K.seq_grid(B, flags["BB"])
        if loop == "persistent":
            K.bwd_seq[grid](*args, 0, T, **flags)
        else:  # fused_steps
            for s in range(T - 1, -1, -1):
                K.bwd_seq[grid](*args, s, s + 1, **flags)
    # dh0: the direct part plus step 0's matmul result, as the kernel would have combined them.
    dh0 = D
    for g in range(ndhm):
        d = DHM[g].to(ct)
        dh0 = dh0 + (d if lay.gm == 0 else d * rmask[0 if lay.gm == 1 else g])  # type: ignore[index]
    dc0 = DC if lay.mode == _LSTM else None

    dw = db = None
    if need_w or need_b:
        dGH = dGI
        if lay.mode == _GRU and opts.reset_after:
            dGH = dGI.clone()
            dGH[..., 2 * H:] *= GA[..., :H]  # type: ignore[index]  # the n block reaches W_hn through r ⊙ (.)
    if need_w:
        # One matmul over all timesteps: dW_g = Σ_t dG_g[t]^T (h_{t-1} ⊙ m_g), in the matmul dtype.
        if lay.alias:  # h_{t-1} in time order
            prev = S[1:] if opts.reverse else S[:T]
        else:
            prev = S[:T].flip(0) if opts.reverse else S[:T]
        a = dGH.reshape(T * B, GH).to(mm_dtype)
        dw = torch.empty(GH, H, dtype=mm_dtype, device=dev)
        if lay.per_gate:
            x = _masked_prev(prev, rmask, range(ng)).reshape(ng, T * B, H).to(mm_dtype)
            torch.bmm(a.view(T * B, G, H)[:, :ng].permute(1, 2, 0), x, out=dw[: ng * H].view(ng, H, H))
        else:
            x = _masked_prev(prev, rmask, 0).reshape(T * B, H).to(mm_dtype)
            torch.mm(a[:, : ng * H].t(), x, out=dw[: ng * H])
        if lay.gru_rb:
            u = GA[..., :H] * _masked_prev(prev, rmask, 0 if lay.gm <= 1 else 2)  # type: ignore[index]
            torch.mm(a[:, 2 * H:].t(), u.reshape(T * B, H).to(mm_dtype), out=dw[2 * H:])
        dw = dw.to(w_hh.dtype)
    if need_b and has_bias:
        db = dGH.sum((0, 1))
    return dGI.to(gi_dtype), dh0, dc0, dw, db


# ----------------------------------------------------------------------------------- CUDA graphs


def _copy_into(dst: Any, src: Any) -> None:
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for key, value in dst.items():
            _copy_into(value, src[key])
    elif isinstance(dst, tuple):
        for d, s in zip(dst, src):
            _copy_into(d, s)


def _capture(fn: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
    """``(replay, result)``: ``fn``'s work captured as a CUDA graph whose replay rewrites ``result``.

    On the CPU (Triton's interpreter, tests) there is no graph: a replay runs ``fn`` again and copies its
    result into the first one's buffers, which is what a replay does to them on the GPU."""
    if device.type != "cuda":
        result = fn()
        return (lambda: _copy_into(result, fn())), result
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()  # warm-up outside the capture: compiles the kernels, initialises cuBLAS
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph.replay, result


def _signature(tensors: tuple[torch.Tensor | None, ...]) -> tuple:
    return tuple(None if t is None else (tuple(t.shape), t.dtype, t.device) for t in tensors)


class _GraphCache:
    """The ``graph`` loop: one captured graph per call signature (shapes, dtypes, options), the least
    recently used dropped beyond :attr:`limit` (a new signature costs one capture: variable sequence
    lengths suit this loop badly)."""

    limit = 16

    def __init__(self) -> None:
        self.entries: OrderedDict[tuple, tuple[tuple, Callable[[], None], Any]] = OrderedDict()

    def clear(self) -> None:
        self.entries.clear()

    def run(self, key: tuple, inputs: tuple[torch.Tensor | None, ...], build: Callable[[tuple], Any],
            device: torch.device) -> Any:
        """``build(static_inputs)``'s result for ``inputs``: the graph's buffers (overwritten by the next run
        with this signature: copy what must outlive it)."""
        key = (key, _signature(inputs))
        entry = self.entries.get(key)
        if entry is None:
            static = tuple(None if t is None else t.detach().clone() for t in inputs)
            replay, result = _capture(lambda: build(static), device)
            self.entries[key] = entry = (static, replay, result)
            while len(self.entries) > self.limit:
                self.entries.popitem(last=False)
        else:
            self.entries.move_to_end(key)
            for dst, src in zip(entry[0], inputs):
                if dst is not None:
                    dst.copy_(src)
        entry[1]()
        return entry[2]


_graphs = _GraphCache()


def _graph_forward(K: ModuleType, inputs: tuple, opts: KernelOptions, save: bool,
                   mm_dtype: torch.dtype) -> dict[str, Any]:
    r = _graphs.run(("fwd", opts, save, mm_dtype), inputs,
                    lambda static: _forward(K, *static, opts, save, mm_dtype, "steps"), inputs[0].device)
    lay: _Layout = r["lay"]
    copy = dict(r, h=r["h"].clone(), c=None if r["c"] is None else r["c"].clone())
    if lay.alias:  # the outputs are a view of the states: copy those once
        copy["S"] = r["S"].clone()
        copy["out"] = copy["S"][:lay.T] if lay.reverse else copy["S"][1:]
    else:
        copy["out"] = r["out"].clone()
        copy["S"] = r["S"].clone() if save else r["S"]
    if save:
        for name in ("C", "GA", "GHN"):
            copy[name] = None if r[name] is None else r[name].clone()
    return copy


# ------------------------------------------------------------------------------------ the Function


class TritonDirection(torch.autograd.Function):
    """One direction's recurrence on the Triton kernels: ``(gi, h0, c0, w_hh, b_hh) -> (out, h_T[, c_T])``.

    Same signature and shapes as :class:`rnndrop._kernels.autograd.FusedDirection`, plus
    ``mm_dtype``, the dtype of the recurrent matmuls (the autocast dtype, or the parameters'), and
    ``loop``, the time loop (:data:`LOOPS`) of the forward and of its backward.
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
        loop: str,
        recompute: Recompute | None = None,
    ) -> tuple[torch.Tensor, ...]:
        K = kernels()
        assert K is not None, "TritonDirection called without triton (the registry must prevent this)"
        with _on_device(gi.device):
            if loop == "graph":
                r = _graph_forward(K, (gi, h0, c0, w_hh, b_hh, rmask, steps), opts, save, mm_dtype)
            else:
                r = _forward(K, gi, h0, c0, w_hh, b_hh, rmask, steps, opts, save, mm_dtype, loop)
        ctx.opts, ctx.lay, ctx.mm_dtype, ctx.saved, ctx.loop = opts, r["lay"], mm_dtype, save, loop
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
            return (*grads[:5], None, None, None, None, None, None, None)
        return TritonDirection._backward(ctx, dout, dh_t, dc_t)

    @staticmethod
    @once_differentiable
    def _backward(ctx: Any, dout: torch.Tensor, dh_t: torch.Tensor, dc_t: torch.Tensor | None):
        if not ctx.saved:
            raise RuntimeError("rnndrop Triton kernel: backward through a forward run without saved activations")
        K = kernels()
        need_w, need_b = ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        fixed = (ctx.opts, ctx.lay, ctx.mm_dtype, need_w, need_b, ctx.has_bias, ctx.gi_dtype)
        with _on_device(dout.device):
            if ctx.loop == "graph":
                inputs = (*ctx.saved_tensors[:7], dout, dh_t, dc_t)
                # The key: what the layout is made of besides the inputs' shapes.
                key = ("bwd", ctx.opts, ctx.mm_dtype, need_w, need_b, ctx.has_bias, ctx.gi_dtype)
                r = _graphs.run(key, inputs, lambda st: _backward(K, st[:7], *st[7:], *fixed, "steps"), dout.device)
                grads = tuple(None if g is None else g.clone() for g in r)
            else:
                grads = _backward(K, ctx.saved_tensors[:7], dout, dh_t, dc_t, *fixed, ctx.loop)
        return (*grads, None, None, None, None, None, None, None)


def _triton_apply(
    tensors: DirectionTensors, opts: KernelOptions, save: bool, lowp: torch.dtype | None, params: DirectionParams,
    masks: DirectionMasks, recompute: Recompute,
) -> tuple[torch.Tensor, ...]:
    """The Triton part of a direction call; a failure of the first CUDA launch of a loop is a :class:`LaunchError`
    (the registry then reruns the call on the reference path and takes the kernels out of service)."""
    mm_dtype = lowp or params.w_hh.dtype
    loop = loop_variant()
    if tensors[0].device.type != "cuda" or loop in _verified:
        return TritonDirection.apply(*tensors, opts, save, mm_dtype, loop, recompute)
    try:
        outs = TritonDirection.apply(*tensors, opts, save, mm_dtype, loop, recompute)
    except Exception as exc:
        raise LaunchError(f"rnndrop's Triton kernels failed on their first launch ({loop} loop): "
                          f"{type(exc).__name__}: {exc}") from exc
    _verified.add(loop)
    return outs


# ------------------------------------------------------------------------------------ mask draws

_sampler_failed = False
_values: dict[tuple[float, float, torch.dtype, torch.device], torch.Tensor] = {}


def keyed_draws_on_device(k0: int, k1: int, threshold: int, shape: tuple[int, int, int], below: float, above: float,
                          dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """:func:`rnndrop.counter_rng.keyed_draws` in one Triton launch (the same numbers), or ``None`` where it
    does not serve (no kernels; CPU tensors outside the interpreter; a failed first launch).

    Registered for CUDA tensors (``rnndrop._kernels``): the torch definition would issue some fifty
    element-wise launches per mask. The two values are a small tensor of ``dtype`` on the device, made once
    per (values, dtype, device)."""
    global _sampler_failed
    if _sampler_failed or unavailable_reason(device.type) is not None:
        return None
    K = kernels()
    out = torch.empty(shape, dtype=dtype, device=device)
    n = out.numel()
    if n == 0:
        return out
    key = (below, above, dtype, device)
    vals = _values.get(key)
    if vals is None:
        vals = _values[key] = torch.tensor([below, above], dtype=dtype, device=device)
    block = 1024
    try:
        with _on_device(device):
            K.keyed_draws[(-(-n // block),)](out, vals, k0 >> 16, k0 & 0xFFFF, k1 >> 16, k1 & 0xFFFF, threshold,
                                              *shape, BLOCK=block)
    except Exception:
        if device.type != "cuda" or "sampler" in _verified:
            raise
        _sampler_failed = True  # the torch definition draws the same numbers
        return None
    if device.type == "cuda":
        _verified.add("sampler")
    return out


triton_run_direction = kernel_direction_fn(_triton_apply, input_bias_in_gi=True, name="triton_run_direction",
                                           registry_check="rnndrop._kernels.registry.triton_ineligible")
