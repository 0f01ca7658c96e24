"""Triton element-wise kernels of the CUDA path: the fused work of one timestep, forward and backward.

Imported only by :mod:`.triton_autograd`, lazily (this module imports ``triton``). Whether the
kernels are compiled for the GPU or run by Triton's interpreter (``TRITON_INTERPRET=1``, CPU
tensors, numpy) is Triton's decision at import time; :data:`INTERPRETED` records it.

Every kernel treats one timestep's ``(B, H)`` elements as a flat range split into blocks; element
``k`` is row ``b = k // H``, unit ``j = k % H``, and gate ``g`` of that unit sits at ``b*G*H + g*H + j``
of a ``(B, G*H)`` row-major block (torch's gate layout: LSTM ``i f g o``, GRU ``r z n``).
Time offsets are element offsets computed by the caller (one integer per buffer), so a launch
creates no tensor views. The maths is :mod:`rnndrop.cells` / ``reference.run_direction``,
operation for operation (same association of sums, derivatives taken from the activations'
outputs as torch's own backward functions do); buffers are described in :mod:`.triton_autograd`.

Element-wise work runs in the states' dtype ``CT`` (float32, or float64): values read in a lower
precision (bf16/fp16 matmul results under autocast) are widened on load, and the copies that
feed the next matmul are rounded to the matmul dtype on store.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Activation codes: rnndrop._kernels.autograd.ACTIVATION_CODES (tanh 0, sigmoid 1, relu 2, linear 3).
MODE_LSTM, MODE_GRU, MODE_RNN, MODE_GRU_N = 0, 1, 2, 3  # MODE_GRU_N: second half of a reset_after=False step


@triton.jit
def _tanh(x):
    # 1 - 2 / (e^{2x} + 1): libdevice's tanh is not available to the interpreter, and this form is
    # exact at the saturated ends (e^{2x} overflowing to inf gives 1, underflowing to 0 gives -1).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _act(x, A: tl.constexpr):
    if A == 0:
        y = _tanh(x)
    elif A == 1:
        y = 1.0 / (1.0 + tl.exp(-x))  # torch's sigmoid: 1 / (1 + e^{-x})
    elif A == 2:
        y = tl.where(x > 0.0, x, 0.0)
    else:
        y = x
    return y


@triton.jit
def _act_grad(g, y, A: tl.constexpr):
    """``g * act'(.)`` from the activation's output ``y``."""
    if A == 0:
        r = g * (1.0 - y * y)
    elif A == 1:
        r = g * (1.0 - y) * y
    elif A == 2:
        r = tl.where(y > 0.0, g, 0.0)
    else:
        r = g
    return r


@triton.jit
def _ld(ptr, valid, CT: tl.constexpr):
    return tl.load(ptr, mask=valid, other=0.0).to(CT)


@triton.jit
def _store_step(h_new, keep, offs, valid, S, s_prev, s_new, OUT, out_off, PO, MASK, HM, N,
                HAS_STEPS: tl.constexpr, ZERO_FILL: tl.constexpr, GM: tl.constexpr, NHM: tl.constexpr,
                CT: tl.constexpr):
    """Keras carry-over at masked steps, then store state, output and the next matmul's inputs."""
    if HAS_STEPS:
        h_state = tl.where(keep, h_new, _ld(S + s_prev + offs, valid, CT))
        if ZERO_FILL:
            out = tl.where(keep, h_new, 0.0)
        else:
            # PO holds the previous output (zeros before the first step).
            out = tl.where(keep, h_new, _ld(PO + offs, valid, CT))
            tl.store(PO + offs, out, mask=valid)
    else:
        h_state = h_new
        out = h_new
    tl.store(S + s_new + offs, h_state, mask=valid)
    tl.store(OUT + out_off + offs, out, mask=valid)
    # HM: h (times each recurrent mask), rounded to the matmul dtype, for the next step's matmul.
    for g in tl.static_range(NHM):
        if GM == 0:
            v = h_state
        elif GM == 1:
            v = h_state * _ld(MASK + offs, valid, CT)
        else:
            v = h_state * _ld(MASK + g * N + offs, valid, CT)
        tl.store(HM + g * N + offs, v.to(HM.dtype.element_ty), mask=valid)


# Per-step offsets change with t: not specialised (by divisibility), or every step could compile anew.
@triton.jit(do_not_specialize=["gi_off", "s_prev", "s_new", "c_prev", "c_new", "out_off", "st_off", "ga_off",
                               "ghn_off"])
def fwd_cell(
    GI, gi_off, GH, gh_sg, gh_sb, BIAS,
    S, s_prev, s_new, C, c_prev, c_new, OUT, out_off, PO, STEPS, st_off,
    MASK, HM, GA, ga_off, GHN, ghn_off, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_STEPS: tl.constexpr, ZERO_FILL: tl.constexpr, SAVE: tl.constexpr, GM: tl.constexpr, NHM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One forward step after its recurrent matmul ``GH`` (gate ``g`` of row ``b`` at ``g*gh_sg + b*gh_sb``).

    LSTM, GRU (reset_after=True) and RNN; ``MODE_GRU_N`` finishes a reset_after=False GRU step
    (``GH`` then holds ``(r ⊙ h ⊙ m_n) W_n^T``, ``BIAS`` the n block of ``b_hh``, ``GA`` r and z).
    """
    CT: tl.constexpr = S.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    b = offs // H
    j = offs - b * H
    gi = GI + gi_off + b * (G * H) + j
    gh = GH + b * gh_sb + j
    ga = GA + ga_off + b * (G * H) + j
    keep = offs >= 0
    if HAS_STEPS:
        keep = tl.load(STEPS + st_off + b, mask=valid, other=0) != 0
    if MODE == 3:  # GRU reset_after=False, n gate: n = act(gi_n + ((r ⊙ h ⊙ m_n) W_n^T + b_n))
        ghn = _ld(gh, valid, CT)
        if HAS_BIAS:
            ghn = ghn + _ld(BIAS + j, valid, CT)
        n = _act(_ld(gi + 2 * H, valid, CT) + ghn, ACT)
        z = _ld(ga + H, valid, CT)
        h_prev = _ld(S + s_prev + offs, valid, CT)
        h_new = (1.0 - z) * n + z * h_prev
        if SAVE:
            tl.store(ga + 2 * H, n, mask=valid)
    elif MODE == 2:  # RNN
        pre = _ld(gh, valid, CT)
        if HAS_BIAS:
            pre = pre + _ld(BIAS + j, valid, CT)
        h_new = _act(_ld(gi, valid, CT) + pre, ACT)
    elif MODE == 1:  # GRU reset_after=True
        gh_r = _ld(gh, valid, CT)
        gh_z = _ld(gh + gh_sg, valid, CT)
        gh_n = _ld(gh + 2 * gh_sg, valid, CT)
        if HAS_BIAS:
            gh_r = gh_r + _ld(BIAS + j, valid, CT)
            gh_z = gh_z + _ld(BIAS + H + j, valid, CT)
            gh_n = gh_n + _ld(BIAS + 2 * H + j, valid, CT)
        r = _act(_ld(gi, valid, CT) + gh_r, RACT)
        z = _act(_ld(gi + H, valid, CT) + gh_z, RACT)
        n = _act(_ld(gi + 2 * H, valid, CT) + r * gh_n, ACT)
        h_prev = _ld(S + s_prev + offs, valid, CT)
        h_new = (1.0 - z) * n + z * h_prev
        if SAVE:
            tl.store(ga, r, mask=valid)
            tl.store(ga + H, z, mask=valid)
            tl.store(ga + 2 * H, n, mask=valid)
            tl.store(GHN + ghn_off + offs, gh_n, mask=valid)
    else:  # LSTM
        p_i = _ld(gh, valid, CT)
        p_f = _ld(gh + gh_sg, valid, CT)
        p_g = _ld(gh + 2 * gh_sg, valid, CT)
        p_o = _ld(gh + 3 * gh_sg, valid, CT)
        if HAS_BIAS:
            p_i = p_i + _ld(BIAS + j, valid, CT)
            p_f = p_f + _ld(BIAS + H + j, valid, CT)
            p_g = p_g + _ld(BIAS + 2 * H + j, valid, CT)
            p_o = p_o + _ld(BIAS + 3 * H + j, valid, CT)
        i_ = _act(_ld(gi, valid, CT) + p_i, RACT)
        f_ = _act(_ld(gi + H, valid, CT) + p_f, RACT)
        g_ = _act(_ld(gi + 2 * H, valid, CT) + p_g, ACT)
        o_ = _act(_ld(gi + 3 * H, valid, CT) + p_o, RACT)
        c_old = _ld(C + c_prev + offs, valid, CT)
        c_n = f_ * c_old + i_ * g_
        h_new = o_ * _act(c_n, ACT)
        if HAS_STEPS:
            c_n = tl.where(keep, c_n, c_old)
        tl.store(C + c_new + offs, c_n, mask=valid)
        if SAVE:
            tl.store(ga, i_, mask=valid)
            tl.store(ga + H, f_, mask=valid)
            tl.store(ga + 2 * H, g_, mask=valid)
            tl.store(ga + 3 * H, o_, mask=valid)
    _store_step(h_new, keep, offs, valid, S, s_prev, s_new, OUT, out_off, PO, MASK, HM, N,
                HAS_STEPS, ZERO_FILL, GM, NHM, CT)


@triton.jit(do_not_specialize=["gi_off", "s_prev", "ga_off"])
def fwd_gru_gates(
    GI, gi_off, GH, gh_sg, gh_sb, BIAS, S, s_prev, MASK, U, GA, ga_off, N, H,
    RACT: tl.constexpr, HAS_BIAS: tl.constexpr, GM: tl.constexpr, BLOCK: tl.constexpr,
):
    """First half of a reset_after=False GRU step: r, z (into ``GA``) and ``U = r ⊙ (h ⊙ m_n)``."""
    CT: tl.constexpr = S.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    b = offs // H
    j = offs - b * H
    gi = GI + gi_off + b * (3 * H) + j
    gh = GH + b * gh_sb + j
    gh_r = _ld(gh, valid, CT)
    gh_z = _ld(gh + gh_sg, valid, CT)
    if HAS_BIAS:
        gh_r = gh_r + _ld(BIAS + j, valid, CT)
        gh_z = gh_z + _ld(BIAS + H + j, valid, CT)
    r = _act(_ld(gi, valid, CT) + gh_r, RACT)
    z = _act(_ld(gi + H, valid, CT) + gh_z, RACT)
    h_n = _ld(S + s_prev + offs, valid, CT)
    if GM == 1:
        h_n = h_n * _ld(MASK + offs, valid, CT)
    elif GM == 3:
        h_n = h_n * _ld(MASK + 2 * N + offs, valid, CT)
    tl.store(U + offs, (r * h_n).to(U.dtype.element_ty), mask=valid)
    ga = GA + ga_off + b * (3 * H) + j
    tl.store(ga, r, mask=valid)
    tl.store(ga + H, z, mask=valid)


@triton.jit(do_not_specialize=["out_off", "st_off", "ga_off", "ghn_off", "s_prev", "s_new", "c_prev", "c_new",
                               "dgi_off"])
def bwd_cell(
    D, DC, DHM, MASK, DOUT, out_off, FLOWS, STEPS, st_off,
    GA, ga_off, GHN, ghn_off, S, s_prev, s_new, C, c_prev, c_new, DGI, dgi_off, DGL, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_STEPS: tl.constexpr,
    GM: tl.constexpr, NDHM: tl.constexpr, WRITE_DGL: tl.constexpr, BLOCK: tl.constexpr,
):
    """One BPTT step: gradient of the state after the step, then of the step's pre-activations.

    ``D`` holds the gradient reaching ``h`` directly (not through a matmul; for a carried step
    all of it) and ``DHM`` the later step's recurrent-matmul result ``dG W`` (``NDHM`` blocks, one
    per mask gate); ``dh = D + Σ_g DHM_g ⊙ m_g + dout`` (``dout`` only where the output is this
    state, ``FLOWS``). Writes ``dGI[t]`` (zeros at a carried step), the new ``D`` (and ``DC``) for
    the step before, and ``DGL``, the matmul's input in the matmul dtype (for the GRU with
    reset_after the n block times ``r``). ``MODE_GRU``/``MODE_GRU_N`` pair: with ``MODE_GRU_N`` this
    is the first half of a reset_after=False step (z and n; r follows in :func:`bwd_gru_r`).
    """
    CT: tl.constexpr = S.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    b = offs // H
    j = offs - b * H
    dh = _ld(D + offs, valid, CT)
    for g in tl.static_range(NDHM):
        d = _ld(DHM + g * N + offs, valid, CT)
        if GM == 0:
            dh = dh + d
        elif GM == 1:
            dh = dh + d * _ld(MASK + offs, valid, CT)
        else:
            dh = dh + d * _ld(MASK + g * N + offs, valid, CT)
    dout = _ld(DOUT + out_off + offs, valid, CT)
    keep = offs >= 0
    if HAS_STEPS:
        flows = tl.load(FLOWS + st_off + b, mask=valid, other=0) != 0
        dh = dh + tl.where(flows, dout, 0.0)
        keep = tl.load(STEPS + st_off + b, mask=valid, other=0) != 0
    else:
        dh = dh + dout
    ga = GA + ga_off + b * (G * H) + j
    dgi = DGI + dgi_off + b * (G * H) + j
    dgl = DGL + b * (G * H) + j
    if MODE == 2:  # RNN
        d_a = tl.where(keep, _act_grad(dh, _ld(S + s_new + offs, valid, CT), ACT), 0.0)
        tl.store(D + offs, tl.where(keep, 0.0, dh), mask=valid)
        tl.store(dgi, d_a, mask=valid)
        if WRITE_DGL:
            tl.store(dgl, d_a.to(DGL.dtype.element_ty), mask=valid)
    elif MODE == 0:  # LSTM
        dc = _ld(DC + offs, valid, CT)
        i_ = _ld(ga, valid, CT)
        f_ = _ld(ga + H, valid, CT)
        g_ = _ld(ga + 2 * H, valid, CT)
        o_ = _ld(ga + 3 * H, valid, CT)
        tc = _act(_ld(C + c_new + offs, valid, CT), ACT)
        c_old = _ld(C + c_prev + offs, valid, CT)
        d_o = tl.where(keep, _act_grad(dh * tc, o_, RACT), 0.0)
        dcc = dc + _act_grad(dh * o_, tc, ACT)
        d_i = tl.where(keep, _act_grad(dcc * g_, i_, RACT), 0.0)
        d_f = tl.where(keep, _act_grad(dcc * c_old, f_, RACT), 0.0)
        d_g = tl.where(keep, _act_grad(dcc * i_, g_, ACT), 0.0)
        tl.store(DC + offs, tl.where(keep, dcc * f_, dc), mask=valid)
        tl.store(D + offs, tl.where(keep, 0.0, dh), mask=valid)
        tl.store(dgi, d_i, mask=valid)
        tl.store(dgi + H, d_f, mask=valid)
        tl.store(dgi + 2 * H, d_g, mask=valid)
        tl.store(dgi + 3 * H, d_o, mask=valid)
        if WRITE_DGL:
            tl.store(dgl, d_i.to(DGL.dtype.element_ty), mask=valid)
            tl.store(dgl + H, d_f.to(DGL.dtype.element_ty), mask=valid)
            tl.store(dgl + 2 * H, d_g.to(DGL.dtype.element_ty), mask=valid)
            tl.store(dgl + 3 * H, d_o.to(DGL.dtype.element_ty), mask=valid)
    else:  # GRU: z and n (both variants); r too with reset_after
        z = _ld(ga + H, valid, CT)
        n = _ld(ga + 2 * H, valid, CT)
        h_prev = _ld(S + s_prev + offs, valid, CT)
        d_n = tl.where(keep, _act_grad(dh * (1.0 - z), n, ACT), 0.0)
        d_z = tl.where(keep, _act_grad(dh * (h_prev - n), z, RACT), 0.0)
        tl.store(D + offs, tl.where(keep, dh * z, dh), mask=valid)
        tl.store(dgi + H, d_z, mask=valid)
        tl.store(dgi + 2 * H, d_n, mask=valid)
        if MODE == 1:
            r = _ld(ga, valid, CT)
            d_r = tl.where(keep, _act_grad(d_n * _ld(GHN + ghn_off + offs, valid, CT), r, RACT), 0.0)
            tl.store(dgi, d_r, mask=valid)
            if WRITE_DGL:
                tl.store(dgl, d_r.to(DGL.dtype.element_ty), mask=valid)
                tl.store(dgl + 2 * H, (d_n * r).to(DGL.dtype.element_ty), mask=valid)
        elif WRITE_DGL:
            tl.store(dgl + 2 * H, d_n.to(DGL.dtype.element_ty), mask=valid)
        if WRITE_DGL:
            tl.store(dgl + H, d_z.to(DGL.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["ga_off", "s_prev", "dgi_off"])
def bwd_gru_r(
    D, DU, MASK, GA, ga_off, S, s_prev, DGI, dgi_off, DGL, N, H,
    RACT: tl.constexpr, GM: tl.constexpr, WRITE_DGL: tl.constexpr, BLOCK: tl.constexpr,
):
    """Second half of a reset_after=False GRU BPTT step, after ``DU = d n_pre W_n`` (the gradient of
    ``u = r ⊙ (h ⊙ m_n)``): the r gate, and ``D += DU ⊙ r ⊙ m_n``. ``DU`` is zero at a carried step."""
    CT: tl.constexpr = S.dtype.element_ty
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < N
    b = offs // H
    j = offs - b * H
    du = _ld(DU + offs, valid, CT)
    r = _ld(GA + ga_off + b * (3 * H) + j, valid, CT)
    h_n = _ld(S + s_prev + offs, valid, CT)
    if GM == 0:
        dd = du * r
    else:
        if GM == 1:
            m_n = _ld(MASK + offs, valid, CT)
        else:
            m_n = _ld(MASK + 2 * N + offs, valid, CT)
        h_n = h_n * m_n
        dd = du * r * m_n
    d_r = _act_grad(du * h_n, r, RACT)
    tl.store(D + offs, _ld(D + offs, valid, CT) + dd, mask=valid)
    tl.store(DGI + dgi_off + b * (3 * H) + j, d_r, mask=valid)
    if WRITE_DGL:
        tl.store(DGL + b * (3 * H) + j, d_r.to(DGL.dtype.element_ty), mask=valid)


def _is_interpreted(fn: object) -> bool:
    # A compiled kernel is a JITFunction; under TRITON_INTERPRET=1 triton.jit returns an
    # InterpretedFunction instead (triton 3.x), which is not one.
    return not isinstance(fn, triton.runtime.jit.JITFunction)


INTERPRETED: bool = _is_interpreted(fwd_cell)
TRITON_VERSION: str = triton.__version__


def block_for(n: int) -> int:
    """Elements per program (a power of two).

    Compiled: a fixed 256 (2 per thread with 4 warps; a block size is a compile-time constant, so
    one size means one compilation per configuration, and small steps still spread over several
    multiprocessors). Interpreted: the whole step in one program up to 1024 elements, since the
    interpreter pays per program, not per element.
    """
    if INTERPRETED:
        return min(1024, triton.next_power_of_2(max(n, 1)))
    return 256


def grid_for(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)
