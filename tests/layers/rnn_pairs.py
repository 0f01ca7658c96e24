"""Helpers shared by the layer tests: an rnndrop layer and its torch.nn twin with equal weights.

Not a test module (no ``test_`` prefix); imported by the tests beside it. ``OBSERVED`` collects
the largest absolute differences seen per comparison kind; ``conftest.py`` prints them in the
terminal summary so the parity figures of a run can be read off the test output.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

import rnndrop

F64 = torch.float64

# kind -> (rnndrop class, torch.nn class, extra constructor arguments common to both)
KINDS: dict[str, tuple[type[nn.Module], type[nn.Module], dict[str, Any]]] = {
    "lstm": (rnndrop.LSTM, nn.LSTM, {}),
    "lstm_proj": (rnndrop.LSTM, nn.LSTM, {"proj_size": 2}),
    "gru": (rnndrop.GRU, nn.GRU, {}),
    "rnn_tanh": (rnndrop.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (rnndrop.RNN, nn.RNN, {"nonlinearity": "relu"}),
}

OBSERVED: dict[tuple[str, str, str], float] = {}  # (case, kind, forward|grad) -> max abs error

# The parity suites run twice: on the pure-torch reference (the definition) and on the default
# dispatch, which is the fused CPU kernel wherever it is built and eligible. Errors are recorded
# under the backend that actually ran (``layer.last_backend``).
BACKENDS = ("reference", "auto")


def record(kind: str, case: str, what: str, err: float, layer: nn.Module | None = None) -> float:
    """Remember the largest ``err`` of ``what`` ("forward" or "grad") for a layer kind and a case.

    The case is tagged with the backend ``layer`` actually ran, when it says. Returns ``err``.
    """
    backend = getattr(layer, "last_backend", None) if layer is not None else None
    key = (f"{case} [{backend}]" if backend else case, kind, what)
    OBSERVED[key] = max(OBSERVED.get(key, 0.0), err)
    return err


def make_pair(
    kind: str,
    input_size: int,
    hidden_size: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = F64,
    backend: str = "auto",
    ours_kwargs: dict[str, Any] | None = None,
    **common: Any,
) -> tuple[nn.Module, nn.Module]:
    """Build ``(ours, theirs)`` from the same seed; ``backend`` and ``ours_kwargs`` go to the rnndrop layer only."""
    ours_cls, theirs_cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    theirs = theirs_cls(input_size, hidden_size, dtype=dtype, **extra, **common)
    torch.manual_seed(seed)
    ours = ours_cls(input_size, hidden_size, dtype=dtype, backend=backend, **extra, **common, **(ours_kwargs or {}))
    return ours, theirs


def is_lstm(module: nn.Module) -> bool:
    return isinstance(module, (rnndrop.LSTM, nn.LSTM))


def state_sizes(module: nn.Module) -> list[int]:
    """Sizes of ``h`` (and ``c``) of a layer: ``[H_out]`` or ``[H_out, H_cell]``."""
    h_out = getattr(module, "proj_size", 0) or module.hidden_size
    return [h_out, module.hidden_size] if is_lstm(module) else [h_out]


def random_hx(module: nn.Module, batch: int | None, gen: torch.Generator, dtype: torch.dtype = F64) -> Any:
    """A random initial state for ``module``: ``(h0, c0)`` for LSTM, else ``h0``; unbatched if ``batch`` is None."""
    rows = module.num_layers * (2 if module.bidirectional else 1)
    states = []
    for size in state_sizes(module):
        shape = (rows, size) if batch is None else (rows, batch, size)
        states.append(torch.randn(*shape, generator=gen, dtype=dtype))
    return tuple(states) if is_lstm(module) else states[0]


def as_tuple(hidden: Any) -> tuple[torch.Tensor, ...]:
    return tuple(hidden) if isinstance(hidden, (tuple, list)) else (hidden,)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return float((a - b).detach().abs().max()) if a.numel() else 0.0
