"""Keras-style boolean step masks against an independent, per-sample oracle.

The oracle below is written from the Keras rule, not from rnndrop's code: for each sample, each
layer and each direction it walks the timesteps with a ``torch.nn`` cell (LSTMCell / GRUCell /
RNNCell carrying the layer's weights). At a real step the cell runs; at a masked step every state
is carried over unchanged and the output is the previous output of this walk (zeros before the
first real step — also with a non-zero initial state) or zeros with ``zero_output_for_mask``.
The reverse direction walks ``T-1 … 0`` with the same rule. Stacked layers feed the visible
outputs (carried-over ones included) to the next layer, with the same step mask.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rnn_pairs import BACKENDS, F64, as_tuple, max_abs, record
from torch import nn

import rnndrop

TOL = 1e-10
INPUT, HIDDEN = 3, 4

# One row per pattern the issue names: right padding, left padding, holes, a fully masked row,
# a row with a single real step, and a full row. Time is the second axis.
PATTERNS = torch.tensor(
    [
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [1, 0, 1, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=torch.bool,
)
BATCH, TIME = PATTERNS.shape

LAYERS = {
    "lstm": lambda **kw: rnndrop.LSTM(INPUT, HIDDEN, dtype=F64, **kw),
    "gru": lambda **kw: rnndrop.GRU(INPUT, HIDDEN, dtype=F64, **kw),
    "rnn_tanh": lambda **kw: rnndrop.RNN(INPUT, HIDDEN, nonlinearity="tanh", dtype=F64, **kw),
    "rnn_relu": lambda **kw: rnndrop.RNN(INPUT, HIDDEN, nonlinearity="relu", dtype=F64, **kw),
}


def torch_cell(layer: nn.Module, k: int, d: int) -> nn.Module:
    """A torch.nn cell carrying the weights of layer ``k``, direction ``d`` of ``layer``."""
    sfx = "_reverse" if d else ""
    w_ih = getattr(layer, f"weight_ih_l{k}{sfx}")
    if isinstance(layer, rnndrop.LSTM):
        cell = nn.LSTMCell(w_ih.shape[1], layer.hidden_size, bias=layer.bias, dtype=F64)
    elif isinstance(layer, rnndrop.GRU):
        cell = nn.GRUCell(w_ih.shape[1], layer.hidden_size, bias=layer.bias, dtype=F64)
    else:
        cell = nn.RNNCell(w_ih.shape[1], layer.hidden_size, bias=layer.bias, nonlinearity=layer.nonlinearity,
                          dtype=F64)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            if hasattr(cell, name) and getattr(cell, name) is not None:
                getattr(cell, name).copy_(getattr(layer, f"{name}_l{k}{sfx}"))
    return cell


def oracle(
    layer: nn.Module,
    x: torch.Tensor,
    states: tuple[torch.Tensor, ...],
    mask: torch.Tensor,
    zero_output: bool,
    masks: rnndrop.DropoutMasks | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Keras carry-over semantics, one sample at a time.

    Args:
        x: ``(B, T, I)`` batch first. states: each ``(L * D, B, ·)``. mask: ``(B, T)`` bool.
        masks: optional shared-layout (``G = 1``) dropout masks: ``x_t`` is multiplied by the
            input mask and ``h_{t-1}`` by the recurrent mask before the torch cell sees them
            (correct for LSTMCell and RNNCell, where ``h`` enters only through the matmul).
    Returns:
        output ``(B, T, D * H)`` and final states, each ``(L * D, B, ·)``.
    """
    num_dirs = 2 if layer.bidirectional else 1
    finals = [s.clone() for s in states]
    outputs = []
    for b in range(x.shape[0]):
        layer_in = x[b]
        for k in range(layer.num_layers):
            dir_outs = []
            for d in range(num_dirs):
                cell = torch_cell(layer, k, d)
                idx = k * num_dirs + d
                dm = masks.layers[k][d] if masks is not None else rnndrop.DirectionMasks()
                state = [s[idx, b : b + 1] for s in states]
                prev = torch.zeros(1, layer.hidden_size, dtype=F64)
                outs: list[Any] = [None] * x.shape[1]
                order = range(x.shape[1] - 1, -1, -1) if d else range(x.shape[1])
                for t in order:
                    if mask[b, t]:
                        xt = layer_in[t : t + 1]
                        if dm.input is not None:
                            xt = xt * dm.input[0, b]
                        h_in = state[0] if dm.recurrent is None else state[0] * dm.recurrent[0, b]
                        new = cell(xt, (h_in, *state[1:])) if len(state) == 2 else cell(xt, h_in)
                        state = list(as_tuple(new))
                        prev = state[0]
                        outs[t] = state[0]
                    else:
                        outs[t] = torch.zeros_like(prev) if zero_output else prev
                for f, s in zip(finals, state):
                    f[idx, b] = s[0]
                dir_outs.append(torch.cat(outs, 0))
            layer_in = torch.cat(dir_outs, -1)
        outputs.append(layer_in)
    return torch.stack(outputs, 0), tuple(finals)


def _initial_states(layer: nn.Module, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    rows = layer.num_layers * (2 if layer.bidirectional else 1)
    n = 2 if isinstance(layer, rnndrop.LSTM) else 1
    # Non-zero on purpose: a masked first step must output zeros, not h0, and keep h0 as state.
    return tuple(torch.randn(rows, BATCH, HIDDEN, generator=gen, dtype=F64) for _ in range(n))


def _call(layer: nn.Module, x_bf: torch.Tensor, states: tuple[torch.Tensor, ...], **kw: Any):
    hx = states if isinstance(layer, rnndrop.LSTM) else states[0]
    x = x_bf if layer.batch_first else x_bf.transpose(0, 1)
    out, hidden = layer(x, hx, **kw)
    return (out if layer.batch_first else out.transpose(0, 1)), as_tuple(hidden)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("zero_output", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_mask_matches_oracle(kind, bidirectional, zero_output, num_layers, batch_first, backend):
    torch.manual_seed(num_layers)
    layer = LAYERS[kind](
        num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
        zero_output_for_mask=zero_output, backend=backend,
    )
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(BATCH, TIME, INPUT, generator=gen, dtype=F64)
    states = _initial_states(layer, gen)
    out, finals = _call(layer, x, states, step_mask=PATTERNS)
    want_out, want_finals = oracle(layer, x, states, PATTERNS, zero_output)
    err = max(max_abs(out, want_out), *(max_abs(a, b) for a, b in zip(finals, want_finals)))
    record(kind, "step_mask vs oracle", "forward", err, layer)
    assert err < TOL
    # The fully masked row keeps its initial state in every layer and direction.
    for f, s in zip(finals, states):
        assert torch.equal(f[:, 3], s[:, 3])
    # Masked steps before the first real one output zeros, not h0 (torch/TF Keras backends):
    # left padding (row 1) in the forward direction, right padding (row 0) in the reverse one.
    assert torch.equal(out[1, :2, :HIDDEN], torch.zeros(2, HIDDEN, dtype=F64))
    if bidirectional:
        assert torch.equal(out[0, 4:, HIDDEN:], torch.zeros(2, HIDDEN, dtype=F64))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_step_mask_with_dropout_masks_matches_oracle(kind, bidirectional, backend):
    """Training mode, shared input and recurrent masks injected, step mask with holes: still the oracle."""
    torch.manual_seed(0)
    layer = LAYERS[kind](
        num_layers=2, bidirectional=bidirectional, batch_first=True, input_dropout=0.4, recurrent_dropout=0.4,
        backend=backend,
    )
    masks = layer.sample_masks(BATCH, TIME, generator=torch.Generator().manual_seed(3))
    assert any((m.input == 0).any() for dirs in masks.layers for m in dirs)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(BATCH, TIME, INPUT, generator=gen, dtype=F64)
    states = _initial_states(layer, gen)
    out, finals = _call(layer, x, states, step_mask=PATTERNS, dropout_masks=masks)
    want_out, want_finals = oracle(layer, x, states, PATTERNS, False, masks)
    err = max(max_abs(out, want_out), *(max_abs(a, b) for a, b in zip(finals, want_finals)))
    record(kind, "step_mask+dropout vs oracle", "forward", err, layer)
    assert err < TOL


@pytest.mark.parametrize("kind", list(LAYERS))
def test_lengths_equals_right_padded_step_mask_with_zero_outputs(kind):
    """``lengths`` (zero length allowed) is a right-padding step mask with zero outputs."""
    torch.manual_seed(1)
    layer = LAYERS[kind](num_layers=2, bidirectional=True, batch_first=True)
    lengths = torch.tensor([6, 0, 3, 1, 5, 2])
    mask = torch.arange(TIME).unsqueeze(0) < lengths.unsqueeze(1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(BATCH, TIME, INPUT, generator=gen, dtype=F64)
    states = _initial_states(layer, gen)
    out, finals = _call(layer, x, states, lengths=lengths)
    want_out, want_finals = oracle(layer, x, states, mask, True)
    assert max_abs(out, want_out) < TOL
    for a, b in zip(finals, want_finals):
        assert max_abs(a, b) < TOL
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.parametrize("kind", list(LAYERS))
def test_unbatched_step_mask_equals_batch_of_one(kind):
    torch.manual_seed(2)
    layer = LAYERS[kind](bidirectional=True)
    x = torch.randn(TIME, INPUT, dtype=F64)
    mask = PATTERNS[2]
    out_u, hid_u = layer(x, step_mask=mask)
    out_b, hid_b = layer(x.unsqueeze(1), step_mask=mask.unsqueeze(0))
    assert torch.equal(out_u, out_b.squeeze(1))
    for a, b in zip(as_tuple(hid_u), as_tuple(hid_b)):
        assert torch.equal(a, b.squeeze(1))


def test_all_true_step_mask_changes_nothing():
    torch.manual_seed(3)
    layer = LAYERS["lstm"](num_layers=2, bidirectional=True)
    x = torch.randn(TIME, BATCH, INPUT, dtype=F64)
    out_m, (h_m, c_m) = layer(x, step_mask=torch.ones(BATCH, TIME, dtype=torch.bool))
    out, (h, c) = layer(x)
    assert torch.equal(out_m, out) and torch.equal(h_m, h) and torch.equal(c_m, c)


@given(
    kind=st.sampled_from(list(LAYERS)),
    rows=st.lists(st.lists(st.booleans(), min_size=4, max_size=4), min_size=1, max_size=4),
    bidirectional=st.booleans(),
    zero_output=st.booleans(),
    seed=st.integers(0, 2**16),
    backend=st.sampled_from(BACKENDS),
)
@settings(max_examples=20, deadline=None)
def test_random_step_masks_match_oracle(kind, rows, bidirectional, zero_output, seed, backend):
    torch.manual_seed(seed)
    layer = LAYERS[kind](bidirectional=bidirectional, batch_first=True, zero_output_for_mask=zero_output,
                         backend=backend)
    mask = torch.tensor(rows, dtype=torch.bool)
    batch, time = mask.shape
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, time, INPUT, generator=gen, dtype=F64)
    n = 2 if kind == "lstm" else 1
    states = tuple(torch.randn(2 if bidirectional else 1, batch, HIDDEN, generator=gen, dtype=F64) for _ in range(n))
    out, finals = _call(layer, x, states, step_mask=mask)
    want_out, want_finals = oracle(layer, x, states, mask, zero_output)
    assert max_abs(out, want_out) < TOL
    for a, b in zip(finals, want_finals):
        assert max_abs(a, b) < TOL
