"""Weight initialisation of recurrent layers: torch.nn's scheme and Keras 3's, for rnndrop and torch.nn layers.

The same model trains differently in PyTorch and Keras largely because the two libraries start from
different weights. :func:`keras_` gives a layer Keras 3's default start, :func:`torch_` torch.nn's;
``rnndrop.LSTM(..., init="keras")`` (also ``GRU``, ``RNN``) uses :func:`keras_` in ``reset_parameters``.
Both functions accept an :class:`rnndrop.LSTM` / ``GRU`` / ``RNN`` or a :class:`torch.nn.LSTM` / ``GRU`` /
``RNN`` and work in place on every layer and direction (the parameters ``weight_ih_l{k}[_reverse]`` …).

torch.nn (:func:`torch_`): every parameter ~ ``U(-1/sqrt(H), 1/sqrt(H))``, ``H`` = hidden_size; the
forget-gate bias is about 0. Keras 3 (:func:`keras_`): glorot-uniform input kernel, orthogonal recurrent
kernel, zero biases and forget bias 1 — the details are in :func:`keras_`'s docstring.
"""

from __future__ import annotations

import math
import re
from typing import Literal

import torch
from torch import nn

from .errors import RnnDropTypeError, RnnDropValueError

InitScheme = Literal["torch", "keras"]
INIT_SCHEMES: tuple[str, ...] = ("torch", "keras")

_PARAM = re.compile(r"^(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(\d+)(_reverse)?$")


def _recurrent_parameters(module: nn.Module) -> tuple[str, int, list[tuple[str, nn.Parameter]]]:
    """(mode "LSTM" / "GRU" / "RNN", hidden_size, [(kind, parameter)]) of a recurrent layer, or a clear error."""
    mode = getattr(module, "mode", None)
    hidden = getattr(module, "hidden_size", None)
    if not isinstance(mode, str) or not isinstance(hidden, int):
        raise RnnDropTypeError(
            "module must be a recurrent layer (rnndrop.LSTM / GRU / RNN or torch.nn.LSTM / GRU / RNN), "
            f"got {type(module).__name__}"
        )
    mode = "RNN" if mode.startswith("RNN") else mode  # torch.nn.RNN says RNN_TANH / RNN_RELU
    if mode not in ("LSTM", "GRU", "RNN"):
        raise RnnDropValueError(f"module.mode must be LSTM, GRU or RNN, got {mode!r}")
    params = []
    for name, p in module.named_parameters(recurse=False):
        match = _PARAM.match(name)
        if match:
            params.append((match.group(1), p))
    if not params:
        raise RnnDropTypeError(f"{type(module).__name__} has no weight_ih_l0 / weight_hh_l0 parameters")
    return mode, hidden, params


def _glorot_uniform_(w: torch.Tensor, generator: torch.Generator | None) -> None:
    """Keras ``glorot_uniform`` of the transposed (Keras-layout) matrix: ``U(±sqrt(6 / (rows + cols)))``."""
    limit = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    w.uniform_(-limit, limit, generator=generator)


def _orthonormal_columns_(w: torch.Tensor, generator: torch.Generator | None) -> None:
    """``w`` ``(R, C)`` with ``R >= C``: Keras's ``orthogonal`` of ``w.T`` (orthonormal rows), i.e. ``w.T @ w = I``.

    Keras: Gaussian ``(max, min)`` → QR → ``Q * sign(diag(R))`` (Haar-distributed) → transposed when the Keras
    matrix has fewer rows than columns. ``w`` is that matrix transposed, so Q lands in ``w`` untransposed.
    """
    rows, cols = w.shape
    work_dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32  # QR needs float32+
    a = torch.empty(max(rows, cols), min(rows, cols), dtype=work_dtype, device=w.device)
    a.normal_(0.0, 1.0, generator=generator)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    w.copy_(q if rows >= cols else q.T)


def keras_(module: nn.Module, *, unit_forget_bias: bool = True, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise ``module`` in place as Keras 3 initialises the same layer (its default initialisers).

    Read from ``keras/src/layers/rnn/{lstm,gru,simple_rnn}.py`` and
    ``keras/src/initializers/random_initializers.py`` (3.15). ``G`` = number of gates (LSTM 4, GRU 3,
    RNN 1), ``U`` = units, ``F`` = input features of the layer:

    * ``weight_ih`` ``(G·U, F)`` = Keras's ``kernel`` ``(F, G·U)`` transposed: ``glorot_uniform`` **over the
      whole concatenated kernel**, ``U(-a, a)`` with ``a = sqrt(6 / (F + G·U))`` (fan_in ``F``, fan_out
      ``G·U``, not per gate).
    * ``weight_hh`` ``(G·U, U)`` = Keras's ``recurrent_kernel`` ``(U, G·U)`` transposed: ``orthogonal``
      (gain 1) **on the whole matrix, not per gate block**: Keras draws a Gaussian ``(G·U, U)``, takes the
      sign-corrected Q of its QR factorisation (a uniformly random orthonormal frame) and transposes it, so
      the ``U`` rows of the recurrent kernel are orthonormal — equivalently the ``U`` columns of ``weight_hh``:
      ``weight_hh.T @ weight_hh = I``. A single gate block is then *not* orthogonal (its rows have squared
      norm about ``1/G``); only for ``RNN`` (one gate) is ``weight_hh`` a square orthogonal matrix.
    * biases: zeros; for LSTM with ``unit_forget_bias`` (Keras's default) the forget block is 1. Keras has
      one LSTM / SimpleRNN bias, torch two that are only ever summed: the 1 goes into ``bias_ih``'s forget
      block ``[U:2U]`` (torch's gate order i, f, g, o) and ``bias_hh`` stays 0, so ``bias_ih + bias_hh``
      equals Keras's bias. The GRU's two Keras biases (``reset_after=True``: input and recurrent rows of a
      ``(2, 3U)`` bias) are zeros, as are ``bias_ih`` / ``bias_hh`` here; GRU has no forget bias.
    * rnndrop's projected LSTM (``proj_size > 0``; Keras has none): ``weight_hh`` ``(4U, P)`` orthonormal
      columns as above, ``weight_hr`` ``(P, U)`` glorot-uniform like a Keras ``Dense`` kernel.

    Keras's random streams are not reproduced (only the distributions): the draws come from torch's global
    RNG, or from ``generator``.

    Args:
        module: an ``rnndrop.LSTM`` / ``GRU`` / ``RNN`` or a ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (every layer
            and direction is initialised; layer ``k > 0`` reads ``D * H_out`` features).
        unit_forget_bias: LSTM only: forget-gate bias 1 (Keras's default). Default True.
        generator: draw from this ``torch.Generator`` instead of torch's global RNG.
    Returns:
        ``module`` (for chaining: ``keras_(nn.LSTM(12, 64))``).
    """
    mode, hidden, params = _recurrent_parameters(module)
    with torch.no_grad():
        for kind, p in params:
            if kind == "weight_ih":
                _glorot_uniform_(p, generator)
            elif kind == "weight_hh":
                _orthonormal_columns_(p, generator)
            elif kind == "weight_hr":
                _glorot_uniform_(p, generator)
            else:
                p.zero_()
                if kind == "bias_ih" and mode == "LSTM" and unit_forget_bias:
                    p[hidden : 2 * hidden] = 1.0  # torch's gate order i, f, g, o; bias_hh stays 0
    return module


def torch_(module: nn.Module, *, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise ``module`` in place as torch.nn does: every parameter ~ ``U(-1/sqrt(H), 1/sqrt(H))``.

    With the same global RNG state (and no ``generator``) this draws exactly what torch.nn's own
    ``reset_parameters`` draws, in the same order. Returns ``module``.
    """
    _, hidden, _ = _recurrent_parameters(module)
    bound = 1.0 / math.sqrt(hidden) if hidden > 0 else 0.0
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.uniform_(-bound, bound, generator=generator)
    return module


def initialize_(module: nn.Module, scheme: str, *, generator: torch.Generator | None = None) -> nn.Module:
    """Apply the initialisation named ``scheme`` (``"torch"`` or ``"keras"``) to ``module`` in place."""
    if scheme == "torch":
        return torch_(module, generator=generator)
    if scheme == "keras":
        return keras_(module, generator=generator)
    raise RnnDropValueError(f"init must be one of {INIT_SCHEMES}, got {scheme!r}")


__all__ = ["initialize_", "keras_", "torch_"]
