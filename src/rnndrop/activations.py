"""Activation functions addressable by name, with Keras 3 definitions.

Names are what Keras configs and our layer arguments use. Only elementwise, parameter-free
functions are listed; ``None`` and ``"linear"`` both mean identity (Keras convention).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .errors import RnnDropTypeError, RnnDropValueError

Activation = Callable[[torch.Tensor], torch.Tensor]


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


def _hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    # Keras 3: clip(x / 6 + 1/2, 0, 1) (Keras 2 used 0.2 x + 0.5).
    return torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


def _exponential(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "hard_sigmoid": _hard_sigmoid,
    "linear": _linear,
    "elu": F.elu,
    "selu": F.selu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "exponential": _exponential,
}


def resolve_activation(name: str | None, argument: str) -> str:
    """Return the canonical activation name, or raise naming ``argument``.

    ``None`` maps to ``"linear"`` as in Keras.
    """
    if name is None:
        return "linear"
    if not isinstance(name, str):
        raise RnnDropTypeError(
            f"{argument} must be an activation name (one of {sorted(ACTIVATIONS)}), got {type(name).__name__}"
        )
    key = name.lower()
    if key not in ACTIVATIONS:
        # torch.nn.RNN's wording for its argument (it knows only tanh and relu; rnndrop knows these all).
        torch_says = f" (Unknown nonlinearity '{name}')" if argument == "nonlinearity" else ""
        raise RnnDropValueError(f"{argument} must be one of {sorted(ACTIVATIONS)}, got {name!r}{torch_says}")
    return key


def get_activation(name: str) -> Activation:
    """The function for a canonical name (see :func:`resolve_activation`)."""
    return ACTIVATIONS[name]
