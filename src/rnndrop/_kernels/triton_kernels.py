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
                CT: tl.constexpr, ALIAS: tl.constexpr):
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
    if not ALIAS:  # ALIAS: the output is a view of the state slots (no step mask: out == state)
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


@triton.jit
def _fwd_cell_at(
    offs, valid, GI, gi_off, GH, gh_sg, gh_sb, BIAS,
    S, s_prev, s_new, C, c_prev, c_new, OUT, out_off, PO, STEPS, st_off,
    MASK, HM, GA, ga_off, GHN, ghn_off, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_STEPS: tl.constexpr, ZERO_FILL: tl.constexpr, SAVE: tl.constexpr, GM: tl.constexpr, NHM: tl.constexpr,
    ALIAS: tl.constexpr,
):
    """One forward step's element-wise work on the elements ``offs`` of ``(B, H)``, after the step's
    recurrent matmul ``GH`` (gate ``g`` of row ``b`` at ``g*gh_sg + b*gh_sb``).

    LSTM, GRU (reset_after=True) and RNN; ``MODE_GRU_N`` finishes a reset_after=False GRU step
    (``GH`` then holds ``(r ⊙ h ⊙ m_n) W_n^T``, ``BIAS`` the n block of ``b_hh``, ``GA`` r and z).
    """
    CT: tl.constexpr = S.dtype.element_ty
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
                HAS_STEPS, ZERO_FILL, GM, NHM, CT, ALIAS)


# Per-step offsets change with t: not specialised (by divisibility), or every step could compile anew.
@triton.jit(do_not_specialize=["gi_off", "s_prev", "s_new", "c_prev", "c_new", "out_off", "st_off", "ga_off",
                               "ghn_off"])
def fwd_cell(
    GI, gi_off, GH, gh_sg, gh_sb, BIAS,
    S, s_prev, s_new, C, c_prev, c_new, OUT, out_off, PO, STEPS, st_off,
    MASK, HM, GA, ga_off, GHN, ghn_off, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_STEPS: tl.constexpr, ZERO_FILL: tl.constexpr, SAVE: tl.constexpr, GM: tl.constexpr, NHM: tl.constexpr,
    ALIAS: tl.constexpr, BLOCK: tl.constexpr,
):
    """One forward step after its recurrent matmul (:func:`_fwd_cell_at` on this program's block)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _fwd_cell_at(offs, offs < N, GI, gi_off, GH, gh_sg, gh_sb, BIAS, S, s_prev, s_new, C, c_prev, c_new, OUT,
                 out_off, PO, STEPS, st_off, MASK, HM, GA, ga_off, GHN, ghn_off, N, H, MODE, G, ACT, RACT, HAS_BIAS,
                 HAS_STEPS, ZERO_FILL, SAVE, GM, NHM, ALIAS)


@triton.jit
def _fwd_gru_gates_at(
    offs, valid, GI, gi_off, GH, gh_sg, gh_sb, BIAS, S, s_prev, MASK, U, GA, ga_off, N, H,
    RACT: tl.constexpr, HAS_BIAS: tl.constexpr, GM: tl.constexpr,
):
    """First half of a reset_after=False GRU step: r, z (into ``GA``) and ``U = r ⊙ (h ⊙ m_n)``."""
    CT: tl.constexpr = S.dtype.element_ty
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


@triton.jit(do_not_specialize=["gi_off", "s_prev", "ga_off"])
def fwd_gru_gates(
    GI, gi_off, GH, gh_sg, gh_sb, BIAS, S, s_prev, MASK, U, GA, ga_off, N, H,
    RACT: tl.constexpr, HAS_BIAS: tl.constexpr, GM: tl.constexpr, BLOCK: tl.constexpr,
):
    """:func:`_fwd_gru_gates_at` on this program's block."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _fwd_gru_gates_at(offs, offs < N, GI, gi_off, GH, gh_sg, gh_sb, BIAS, S, s_prev, MASK, U, GA, ga_off, N, H,
                      RACT, HAS_BIAS, GM)


@triton.jit
def _bwd_cell_at(
    offs, valid, D, DC, DHM, MASK, DOUT, out_off, FLOWS, STEPS, st_off,
    GA, ga_off, GHN, ghn_off, S, s_prev, s_new, C, c_prev, c_new, DGI, dgi_off, DGL, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_STEPS: tl.constexpr,
    GM: tl.constexpr, NDHM: tl.constexpr, WRITE_DGL: tl.constexpr,
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


@triton.jit(do_not_specialize=["out_off", "st_off", "ga_off", "ghn_off", "s_prev", "s_new", "c_prev", "c_new",
                               "dgi_off"])
def bwd_cell(
    D, DC, DHM, MASK, DOUT, out_off, FLOWS, STEPS, st_off,
    GA, ga_off, GHN, ghn_off, S, s_prev, s_new, C, c_prev, c_new, DGI, dgi_off, DGL, N, H,
    MODE: tl.constexpr, G: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr, HAS_STEPS: tl.constexpr,
    GM: tl.constexpr, NDHM: tl.constexpr, WRITE_DGL: tl.constexpr, BLOCK: tl.constexpr,
):
    """One BPTT step (:func:`_bwd_cell_at` on this program's block)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _bwd_cell_at(offs, offs < N, D, DC, DHM, MASK, DOUT, out_off, FLOWS, STEPS, st_off, GA, ga_off, GHN, ghn_off,
                 S, s_prev, s_new, C, c_prev, c_new, DGI, dgi_off, DGL, N, H, MODE, G, ACT, RACT, HAS_STEPS, GM,
                 NDHM, WRITE_DGL)


@triton.jit
def _bwd_gru_r_at(
    offs, valid, D, DU, MASK, GA, ga_off, S, s_prev, DGI, dgi_off, DGL, N, H,
    RACT: tl.constexpr, GM: tl.constexpr, WRITE_DGL: tl.constexpr,
):
    """Second half of a reset_after=False GRU BPTT step, after ``DU = d n_pre W_n`` (the gradient of
    ``u = r ⊙ (h ⊙ m_n)``): the r gate, and ``D += DU ⊙ r ⊙ m_n``. ``DU`` is zero at a carried step."""
    CT: tl.constexpr = S.dtype.element_ty
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


@triton.jit(do_not_specialize=["ga_off", "s_prev", "dgi_off"])
def bwd_gru_r(
    D, DU, MASK, GA, ga_off, S, s_prev, DGI, dgi_off, DGL, N, H,
    RACT: tl.constexpr, GM: tl.constexpr, WRITE_DGL: tl.constexpr, BLOCK: tl.constexpr,
):
    """:func:`_bwd_gru_r_at` on this program's block."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    _bwd_gru_r_at(offs, offs < N, D, DU, MASK, GA, ga_off, S, s_prev, DGI, dgi_off, DGL, N, H, RACT, GM, WRITE_DGL)


# ------------------------------------------------------------------------ whole sequences, one launch
#
# The same element-wise work as the per-step kernels above, with the recurrent product inside: program p
# owns batch rows [p*BB, p*BB + BB) and walks the steps [s_begin, s_end) on its own (rows of a recurrence
# are independent), so no grid-wide synchronisation is needed; a barrier between the phases of a step
# makes this program's writes (the product into GH, the states) visible to all its threads. One launch
# for all T steps is the "persistent" loop; one launch per step (s_end = s_begin + 1) the "fused_steps"
# loop. The per-step scratch (GH, HM, U, ...) holds only this program's rows.


@triton.jit
def _slot(s, T, REVERSE: tl.constexpr, ALIAS: tl.constexpr, ROLL: tl.constexpr):
    """The state buffer's slot of walk position ``s`` (the state before step ``s``).

    ``ALIAS``: the buffer is ``(T+1, B, H)`` with the outputs as a view of it (time order: the state
    before step s is slot s forward, T - s in reverse); else walk order, two rolling slots with ``ROLL``."""
    if ALIAS:
        if REVERSE:
            r = T - s
        else:
            r = s
    elif ROLL:
        r = s % 2
    else:
        r = s
    return r


@triton.jit
def _mm_rows(A, sa, W, swk, swc, O, so, b0, B, K, NC,
             BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr):
    """``O[r, n] = Σ_k A[r, k] W(k, n)`` for this program's rows ``r`` in ``[b0, b0+BB) ∩ [0, B)``, all
    ``n < NC``: ``A[r, k]`` at ``A + r*sa + k``, ``W(k, n)`` at ``W + k*swk + n*swc``, ``O[r, n]`` at
    ``O + r*so + n``. Accumulated in float32 (float64 for float64 operands), stored in ``O``'s dtype (a
    bf16/fp16 product rounded as a cuBLAS matmul of that dtype returns it). ``PREC``: ``tl.dot``'s
    ``input_precision`` for float32 operands ("ieee" or "tf32", following torch's matmul flags; "ieee" for
    float64). Only core builtins here (no ``tl.zeros`` / ``tl.sum``): the interpreter tests load
    ``triton.language`` before switching the interpreter on, and its library functions are compiled ones."""
    rows = b0 + tl.arange(0, BB)
    rm = rows < B
    for n0 in range(0, NC, BN):
        cols = n0 + tl.arange(0, BN)
        cm = cols < NC
        if F64:
            acc = tl.full((BB, BN), 0.0, tl.float64)
        else:
            acc = tl.full((BB, BN), 0.0, tl.float32)
        for k0 in range(0, K, BK):
            ks = k0 + tl.arange(0, BK)
            km = ks < K
            a = tl.load(A + rows[:, None] * sa + ks[None, :], mask=rm[:, None] & km[None, :], other=0.0)
            w = tl.load(W + ks[:, None] * swk + cols[None, :] * swc, mask=km[:, None] & cm[None, :], other=0.0)
            if F64:  # triton 3.6's tl.dot defaults out_dtype to float32 whatever the accumulator
                acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=tl.float64)
            else:
                acc = tl.dot(a, w, acc, input_precision=PREC)
        tl.store(O + rows[:, None] * so + cols[None, :], acc.to(O.dtype.element_ty), mask=rm[:, None] & cm[None, :])


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def fwd_seq(
    GI, GH, BIAS, S, C, OUT, PO, STEPS, MASK, HM, GA, GHN, W, U, GHN2, BIAS_N, T, B, H, s_begin, s_end,
    MODE: tl.constexpr, G: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_STEPS: tl.constexpr, ZERO_FILL: tl.constexpr, SAVE: tl.constexpr,
    GM: tl.constexpr, NHM: tl.constexpr, PER_GATE: tl.constexpr, GRU_RB: tl.constexpr, ALIAS: tl.constexpr,
    REVERSE: tl.constexpr, BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr,
    PREC: tl.constexpr, F64: tl.constexpr,
):
    """Forward steps ``[s_begin, s_end)`` of one direction for this program's rows, product included.

    Buffers as the per-step kernels' (:mod:`.triton_autograd`); ``W`` is ``W_hh`` in the matmul dtype,
    ``GH`` the product's scratch (``(NG, B, H)`` per gate, else ``(B, NG*H)``), ``U``/``GHN2`` the second
    product's of a reset_after=False GRU (``BIAS_N`` its bias block).
    """
    b0 = tl.program_id(0) * BB
    N = B * H
    GHS = G * H
    e_begin = b0 * H
    e_end = tl.minimum(b0 + BB, B) * H
    if PER_GATE:
        gh_sg = N
        gh_sb = H
    else:
        gh_sg = H
        gh_sb = NG * H
    ROLL: tl.constexpr = not SAVE
    for s in range(s_begin, s_end):
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        sp = _slot(s, T, REVERSE, ALIAS, ROLL) * N
        sn = _slot(s + 1, T, REVERSE, ALIAS, ROLL) * N
        cp = _slot(s, T, REVERSE, False, ROLL) * N
        cn = _slot(s + 1, T, REVERSE, False, ROLL) * N
        if SAVE:
            ga_off = t * B * GHS
        else:
            ga_off = t * 0
        # The recurrent product of this program's rows: (h ⊙ m_g) W_g^T into GH.
        if PER_GATE:
            for g in tl.static_range(NG):
                _mm_rows(HM + g * N, H, W + g * H * H, 1, H, GH + g * N, H, b0, B, H, H, BB, BN, BK, PREC, F64)
        elif NHM > 0:
            _mm_rows(HM, H, W, 1, H, GH, NG * H, b0, B, H, NG * H, BB, BN, BK, PREC, F64)
        else:
            _mm_rows(S + sp, H, W, 1, H, GH, NG * H, b0, B, H, NG * H, BB, BN, BK, PREC, F64)
        tl.debug_barrier()
        if GRU_RB:
            for e0 in range(e_begin, e_end, BLOCK):
                offs = e0 + tl.arange(0, BLOCK)
                _fwd_gru_gates_at(offs, offs < e_end, GI, t * B * GHS, GH, gh_sg, gh_sb, BIAS, S, sp, MASK, U, GA,
                                  ga_off, N, H, RACT, HAS_BIAS, GM)
            tl.debug_barrier()
            _mm_rows(U, H, W + 2 * H * H, 1, H, GHN2, H, b0, B, H, H, BB, BN, BK, PREC, F64)
            tl.debug_barrier()
            for e0 in range(e_begin, e_end, BLOCK):
                offs = e0 + tl.arange(0, BLOCK)
                _fwd_cell_at(offs, offs < e_end, GI, t * B * GHS, GHN2, 0, H, BIAS_N, S, sp, sn, C, 0, 0, OUT, t * N,
                             PO, STEPS, t * B, MASK, HM, GA, ga_off, GHN, 0, N, H, 3, G, ACT, RACT, HAS_BIAS,
                             HAS_STEPS, ZERO_FILL, SAVE, GM, NHM, ALIAS)
        else:
            for e0 in range(e_begin, e_end, BLOCK):
                offs = e0 + tl.arange(0, BLOCK)
                _fwd_cell_at(offs, offs < e_end, GI, t * B * GHS, GH, gh_sg, gh_sb, BIAS, S, sp, sn, C, cp, cn, OUT,
                             t * N, PO, STEPS, t * B, MASK, HM, GA, ga_off, GHN, t * N, N, H, MODE, G, ACT, RACT,
                             HAS_BIAS, HAS_STEPS, ZERO_FILL, SAVE, GM, NHM, ALIAS)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["s_begin", "s_end"])
def bwd_seq(
    D, DC, DHM, MASK, DOUT, FLOWS, STEPS, GA, GHN, S, C, DGI, DGL, W, DU, T, B, H, s_begin, s_end,
    MODE: tl.constexpr, G: tl.constexpr, NG: tl.constexpr, ACT: tl.constexpr, RACT: tl.constexpr,
    HAS_STEPS: tl.constexpr, GM: tl.constexpr, NDHM: tl.constexpr, WRITE_DGL: tl.constexpr,
    PER_GATE: tl.constexpr, GRU_RB: tl.constexpr, ALIAS: tl.constexpr, REVERSE: tl.constexpr,
    BB: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BLOCK: tl.constexpr, PREC: tl.constexpr,
    F64: tl.constexpr,
):
    """BPTT over walk positions ``s_end - 1`` down to ``s_begin`` for this program's rows: per step the
    element-wise gradients (:func:`_bwd_cell_at`), then the product ``dG W`` the step before reads
    (``DHM``: per mask gate, or one block). ``MODE`` is ``MODE_GRU_N`` for a reset_after=False GRU,
    whose r gate follows its own product ``DU = dn W_n`` (:func:`_bwd_gru_r_at`)."""
    b0 = tl.program_id(0) * BB
    N = B * H
    GHS = G * H
    e_begin = b0 * H
    e_end = tl.minimum(b0 + BB, B) * H
    for i in range(s_begin, s_end):
        s = s_end - 1 - (i - s_begin)
        if REVERSE:
            t = T - 1 - s
        else:
            t = s
        sp = _slot(s, T, REVERSE, ALIAS, False) * N
        sn = _slot(s + 1, T, REVERSE, ALIAS, False) * N
        for e0 in range(e_begin, e_end, BLOCK):
            offs = e0 + tl.arange(0, BLOCK)
            _bwd_cell_at(offs, offs < e_end, D, DC, DHM, MASK, DOUT, t * N, FLOWS, STEPS, t * B, GA, t * B * GHS,
                         GHN, t * N, S, sp, sn, C, s * N, (s + 1) * N, DGI, t * B * GHS, DGL, N, H, MODE, G, ACT,
                         RACT, HAS_STEPS, GM, NDHM, WRITE_DGL)
        tl.debug_barrier()
        if GRU_RB:
            if WRITE_DGL:
                _mm_rows(DGL + 2 * H, GHS, W + 2 * H * H, H, 1, DU, H, b0, B, H, H, BB, BN, BK, PREC, F64)
            else:
                _mm_rows(DGI + t * B * GHS + 2 * H, GHS, W + 2 * H * H, H, 1, DU, H, b0, B, H, H, BB, BN, BK, PREC,
                         F64)
            tl.debug_barrier()
            for e0 in range(e_begin, e_end, BLOCK):
                offs = e0 + tl.arange(0, BLOCK)
                _bwd_gru_r_at(offs, offs < e_end, D, DU, MASK, GA, t * B * GHS, S, sp, DGI, t * B * GHS, DGL, N, H,
                              RACT, GM, WRITE_DGL)
            tl.debug_barrier()
        if PER_GATE:
            for g in tl.static_range(NG):
                if WRITE_DGL:
                    _mm_rows(DGL + g * H, GHS, W + g * H * H, H, 1, DHM + g * N, H, b0, B, H, H, BB, BN, BK, PREC,
                             F64)
                else:
                    _mm_rows(DGI + t * B * GHS + g * H, GHS, W + g * H * H, H, 1, DHM + g * N, H, b0, B, H, H, BB,
                             BN, BK, PREC, F64)
        elif WRITE_DGL:
            _mm_rows(DGL, GHS, W, H, 1, DHM, H, b0, B, NG * H, H, BB, BN, BK, PREC, F64)
        else:
            _mm_rows(DGI + t * B * GHS, GHS, W, H, 1, DHM, H, b0, B, NG * H, H, BB, BN, BK, PREC, F64)
        tl.debug_barrier()


def _is_interpreted(fn: object) -> bool:
    # A compiled kernel is a JITFunction; under TRITON_INTERPRET=1 triton.jit returns an
    # InterpretedFunction instead (triton 3.x), which is not one.
    return not isinstance(fn, triton.runtime.jit.JITFunction)


INTERPRETED: bool = _is_interpreted(fwd_cell)
TRITON_VERSION: str = triton.__version__


def block_for(n: int) -> int:
    """Elements per program of the per-step kernels (and per iteration of the sequence kernels' element loop).

    A fixed 256 (2 per thread with 4 warps; a block size is a compile-time constant, so one size means one
    compilation per configuration, and small steps still spread over several multiprocessors), under the
    interpreter too, so that the tests run the very programs, ragged last block included, a GPU runs.
    """
    return 256


def grid_for(n: int, block: int) -> tuple[int]:
    return (triton.cdiv(n, block),)


def seq_blocks(f64: bool) -> tuple[int, int, int]:
    """The sequence kernels' tiles ``(BB, BN, BK)``: batch rows per program, product columns and depth per
    ``tl.dot`` (each at least 16, ``tl.dot``'s minimum); smaller for float64 (twice the registers)."""
    return (16, 32, 16) if f64 else (16, 64, 32)


def seq_grid(batch: int, rows: int) -> tuple[int]:
    """One program per ``rows`` batch rows (the last one ragged)."""
    return (triton.cdiv(batch, rows),)


# ------------------------------------------------------------------------------------ mask draws


@triton.jit
def _lowbias32(x):
    """C. Wellons' lowbias32 on uint32 words (rnndrop.counter_rng)."""
    x = x ^ (x >> 16)
    x = x * tl.full([], 0x7FEB352D, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full([], 0x846CA68B, tl.uint32)
    return x ^ (x >> 16)


@triton.jit(do_not_specialize=["k0_hi", "k0_lo", "k1_hi", "k1_lo", "threshold", "A", "BN", "C"])
def keyed_draws(OUT, VALS, k0_hi, k0_lo, k1_hi, k1_lo, threshold, A, BN, C, BLOCK: tl.constexpr):
    """``rnndrop.counter_rng.keyed_draws`` into ``OUT`` ``(A, BN, C)``: element ``(a, b, c)`` is ``VALS[0]``
    when ``lowbias32(lowbias32(lo ^ k0) ^ lowbias32(b ^ k1)) >> 8 < threshold`` (``lo = a*C + c mod 2**32``),
    else ``VALS[1]`` (the two values in ``OUT``'s dtype). The keys come as 16-bit halves, so that every
    integer argument is a small int32 and one compiled kernel serves every key."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < A.to(tl.int64) * BN * C
    c = offs % C
    r = offs // C
    b = r % BN
    a = r // BN
    k0 = (k0_hi.to(tl.uint32) << 16) | k0_lo.to(tl.uint32)
    k1 = (k1_hi.to(tl.uint32) << 16) | k1_lo.to(tl.uint32)
    lo = (a * C + c).to(tl.uint32)  # the low 32 bits: the counter wraps as the definition's
    u = _lowbias32(lo ^ k0)
    v = _lowbias32(b.to(tl.uint32) ^ k1)
    x = _lowbias32(u ^ v)
    hit = (x >> 8) < threshold.to(tl.uint32)
    tl.store(OUT + offs, tl.where(hit, tl.load(VALS), tl.load(VALS + 1)), mask=valid)
