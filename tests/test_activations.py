"""Activations by name, with Keras 3 definitions (rnndrop.activations)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rnndrop
from rnndrop import RnnDropTypeError, RnnDropValueError
from rnndrop.activations import ACTIVATIONS, get_activation, resolve_activation

F64 = torch.float64
GRID = torch.linspace(-8, 8, 1601, dtype=F64)  # step 0.01: includes the clip ends ±3 exactly


def test_hard_sigmoid_is_keras3_definition():
    hard = get_activation("hard_sigmoid")
    want = torch.clamp(GRID / 6 + 0.5, 0, 1)
    assert torch.equal(hard(GRID), want)
    # Keras 3, not Keras 2 (0.2 x + 0.5): the two differ at x = 1, and the clip ends are ±3.
    assert hard(torch.tensor(1.0, dtype=F64)).item() == pytest.approx(1 / 6 + 0.5, abs=1e-15)
    assert hard(torch.tensor([-3.0, 3.0], dtype=F64)).tolist() == [0.0, 1.0]


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
@settings(max_examples=50, deadline=None)
def test_hard_sigmoid_property(x):
    got = get_activation("hard_sigmoid")(torch.tensor(x, dtype=F64)).item()
    assert got == min(max(x / 6 + 0.5, 0.0), 1.0)


@pytest.mark.parametrize(
    "name, reference",
    [
        ("tanh", torch.tanh),
        ("sigmoid", torch.sigmoid),
        ("relu", torch.relu),
        ("linear", lambda v: v),
        ("exponential", torch.exp),
        ("softsign", lambda v: v / (1 + v.abs())),
    ],
)
def test_named_activations(name, reference):
    x = GRID[::10]
    assert torch.allclose(get_activation(resolve_activation(name, "activation"))(x), reference(x), rtol=1e-15,
                          atol=0)


def test_resolve_names():
    assert resolve_activation(None, "activation") == "linear"  # Keras: None means identity
    assert resolve_activation("TANH", "activation") == "tanh"
    assert set(ACTIVATIONS) >= {"tanh", "relu", "sigmoid", "hard_sigmoid", "linear"}


@pytest.mark.parametrize("argument", ["activation", "recurrent_activation"])
def test_unknown_or_non_string_names_rejected(argument):
    with pytest.raises(RnnDropValueError, match=f"^{argument} must be one of") as err:
        resolve_activation("swishy", argument)
    assert "'swishy'" in str(err.value) and "hard_sigmoid" in str(err.value)
    with pytest.raises(RnnDropTypeError, match=f"^{argument} must be an activation name"):
        resolve_activation(torch.tanh, argument)  # type: ignore[arg-type]


def test_layers_use_the_named_activations():
    """A layer built with activation names computes with those functions (linear RNN = affine map)."""
    torch.manual_seed(0)
    layer = rnndrop.RNN(2, 3, nonlinearity="linear", dtype=F64)
    x, h0 = torch.randn(1, 1, 2, dtype=F64), torch.randn(1, 1, 3, dtype=F64)
    out, _ = layer(x, h0)
    want = x[0] @ layer.weight_ih_l0.T + layer.bias_ih_l0 + h0[0] @ layer.weight_hh_l0.T + layer.bias_hh_l0
    assert torch.allclose(out[0], want, rtol=0, atol=1e-14)
    assert rnndrop.GRU(2, 3, recurrent_activation="hard_sigmoid").recurrent_activation == "hard_sigmoid"
    assert rnndrop.RNN(2, 3, nonlinearity="relu").nonlinearity == "relu"
