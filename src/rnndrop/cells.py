"""One timestep of each recurrent cell: the equations, written once, in plain PyTorch.

This module is the definition of rnndrop's maths. The reference sequence loop
(:mod:`rnndrop.reference`) is built on it, and every fast kernel must agree with it.

Layout (the torch.nn layout, so parameters load from ``torch.nn`` state dicts):

* ``w_ih``: ``(G * H, I)``; ``w_hh``: ``(G * H, H_out)``; ``b_ih``, ``b_hh``: ``(G * H,)``;
  ``w_hr`` (projected LSTM only): ``(H_out, H)``. ``G`` gates are stacked in row blocks:
  LSTM ``i, f, g, o``; GRU ``r, z, n``; RNN a single block.
* A step receives ``gi = dropout(x_t) @ w_ih.T + b_ih`` already computed (the input
  projection of all timesteps is one matmul outside the loop), the previous state, and the
  recurrent dropout mask ``(G_m, B, H_out)`` with ``G_m`` 1 (shared) or ``G`` (per gate).

Equations (``σ`` = ``recurrent_activation``, ``φ`` = ``activation``, ``m`` = recurrent mask):

* LSTM: ``[i f g o] = gi + (h ⊙ m) W_hh^T + b_hh``; ``i, f, o = σ(·)``, ``g = φ(·)``;
  ``c' = f ⊙ c + i ⊙ g``; ``h' = o ⊙ φ(c')`` (then ``h' W_hr^T`` when projected).
* GRU, ``reset_after=True`` (torch, Keras default): ``r, z = σ(gi_{r,z} + (h ⊙ m) W_{r,z}^T + b_{r,z})``;
  ``n = φ(gi_n + r ⊙ ((h ⊙ m_n) W_n^T + b_hn))``; ``h' = (1 - z) ⊙ n + z ⊙ h``.
* GRU, ``reset_after=False`` (Keras's other variant): ``n = φ(gi_n + (r ⊙ (h ⊙ m_n)) W_n^T + b_hn)``.
* RNN: ``h' = φ(gi + (h ⊙ m) W_hh^T + b_hh)``.
* Candidate dropout (Semeniuta et al. 2016, "without memory loss"), mask ``d`` ``(1, B, H)``:
  LSTM ``c' = f ⊙ c + i ⊙ (d ⊙ g)``; GRU ``h' = (1 - z) ⊙ (d ⊙ n) + z ⊙ h``.
* Zoneout (Krueger et al. 2016) mixes each state with its previous value after the step:
  ``s' = w ⊙ s + (1 - w) ⊙ s̃`` (:func:`zoneout`). DropConnect on ``W_hh`` is applied to the
  weight before the loop (:func:`drop_weight`), so a step just sees a different ``w_hh``.

The unmasked ``h`` is what ``z ⊙ h`` blends with and what is carried; masks touch only the
inputs of the recurrent matmuls.
"""

from __future__ import annotations

import torch

from .activations import Activation

NUM_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_product(h: torch.Tensor, w_hh: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(h ⊙ m_g) W_g^T`` for every gate block ``g``, concatenated: ``(B, G * H)``.

    Args:
        h: ``(B, H_out)`` previous hidden state.
        w_hh: ``(G * H, H_out)``.
        mask: ``None``, ``(1, B|1, H_out)`` (shared by all gates) or ``(G, B|1, H_out)`` (per gate).
    """
    if mask is None:
        return h @ w_hh.T
    gates = mask.shape[0]
    if gates == 1:
        return (h * mask[0]) @ w_hh.T
    w = w_hh.view(gates, -1, w_hh.shape[1])  # (G, H, H_out)
    per_gate = torch.einsum("gbk,ghk->bgh", h.unsqueeze(0) * mask, w)
    return per_gate.reshape(h.shape[0], -1)


def input_projection(
    x: torch.Tensor, w_ih: torch.Tensor, b_ih: torch.Tensor | None, mask: torch.Tensor | None
) -> torch.Tensor:
    """``dropout(x_t) W_ih^T + b_ih`` for all timesteps at once.

    Args:
        x: ``(T, B, I)`` time-major input.
        mask: ``None``, ``(1, B|1, I)`` or ``(G, B|1, I)`` time-locked input mask.
    Returns:
        ``(T, B, G * H)``.
    """
    if mask is None or mask.shape[0] == 1:
        xm = x if mask is None else x * mask[0]
        out = xm @ w_ih.T
    else:
        gates = mask.shape[0]
        w = w_ih.view(gates, -1, w_ih.shape[1])  # (G, H, I)
        out = torch.einsum("tbgi,ghi->tbgh", x.unsqueeze(2) * mask.transpose(0, 1), w)
        out = out.reshape(x.shape[0], x.shape[1], -1)
    return out if b_ih is None else out + b_ih


def _add_bias(t: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    return t if b is None else t + b


def lstm_step(
    gi: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    w_hr: torch.Tensor | None,
    mask: torch.Tensor | None,
    act: Activation,
    ract: Activation,
    candidate_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step. ``gi``: ``(B, 4H)``; ``h``: ``(B, H_out)``; ``c``: ``(B, H)``. Returns ``(h', c')``."""
    gates = gi + _add_bias(recurrent_product(h, w_hh, mask), b_hh)
    i, f, g, o = gates.chunk(4, dim=-1)
    g = act(g) if candidate_mask is None else act(g) * candidate_mask[0]
    c_new = ract(f) * c + ract(i) * g
    h_new = ract(o) * act(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.T
    return h_new, c_new


def gru_step(
    gi: torch.Tensor,
    h: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mask: torch.Tensor | None,
    act: Activation,
    ract: Activation,
    reset_after: bool,
    candidate_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One GRU step. ``gi``: ``(B, 3H)``; ``h``: ``(B, H)``. Returns ``h'``."""
    gi_r, gi_z, gi_n = gi.chunk(3, dim=-1)
    if reset_after:
        gh_r, gh_z, gh_n = _add_bias(recurrent_product(h, w_hh, mask), b_hh).chunk(3, dim=-1)
        r = ract(gi_r + gh_r)
        z = ract(gi_z + gh_z)
        n = act(gi_n + r * gh_n)
    else:
        w_rz, w_n = w_hh.split([2 * h.shape[-1], h.shape[-1]], dim=0)
        b_rz, b_n = (None, None) if b_hh is None else b_hh.split([2 * h.shape[-1], h.shape[-1]])
        m_rz = m_n = mask
        if mask is not None and mask.shape[0] == 3:
            m_rz, m_n = mask[:2], mask[2:]
        gh_r, gh_z = _add_bias(recurrent_product(h, w_rz, m_rz), b_rz).chunk(2, dim=-1)
        r = ract(gi_r + gh_r)
        z = ract(gi_z + gh_z)
        h_n = h if m_n is None else h * m_n[0]
        n = act(gi_n + _add_bias((r * h_n) @ w_n.T, b_n))
    if candidate_mask is not None:
        n = n * candidate_mask[0]
    return (1.0 - z) * n + z * h


def rnn_step(
    gi: torch.Tensor,
    h: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mask: torch.Tensor | None,
    act: Activation,
) -> torch.Tensor:
    """One simple-RNN step. ``gi``: ``(B, H)``; ``h``: ``(B, H)``. Returns ``h'``."""
    return act(gi + _add_bias(recurrent_product(h, w_hh, mask), b_hh))


def zoneout(new: torch.Tensor, old: torch.Tensor, keep_previous: torch.Tensor | None) -> torch.Tensor:
    """Zoneout: ``w ⊙ old + (1 - w) ⊙ new`` with ``w`` Bernoulli(z) draws (training) or ``z`` (eval)."""
    if keep_previous is None:
        return new
    # lerp is exact at both ends: w = 1 returns ``old`` bit for bit, w = 0 returns ``new``.
    return torch.lerp(new, old, keep_previous)


def drop_weight(w_hh: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """DropConnect: the recurrent weight ``(G * H, H_out)`` times a scaled Bernoulli mask of its shape."""
    return w_hh if mask is None else w_hh * mask
