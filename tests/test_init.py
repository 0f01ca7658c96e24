"""``rnndrop.init`` / ``init="keras"``: the distributions of Keras 3's own initialisers, and torch.nn's unchanged.

Keras's random streams are not reproduced, so the Keras side is compared through statistics of freshly built
Keras layers (torch backend): bounds and variance of the kernel, orthonormality of the whole recurrent kernel
and the (non-)orthogonality of its gate blocks, and the exact bias.
"""

from __future__ import annotations

import copy
import math

import keras
import numpy as np
import pytest
import torch
from torch import nn

import rnndrop
from rnndrop.errors import RnnDropTypeError, RnnDropValueError

F, U = 12, 64
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
KERAS_LAYERS = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "RNN": keras.layers.SimpleRNN}
RNNDROP_LAYERS = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}


def keras_weights(mode: str, **kwargs: object) -> list[np.ndarray]:
    layer = KERAS_LAYERS[mode](U, **kwargs)
    layer.build((None, None, F))
    return [np.asarray(w, dtype=np.float64) for w in layer.get_weights()]


def ours_in_keras_layout(mode: str, **kwargs: object) -> list[np.ndarray]:
    layer = RNNDROP_LAYERS[mode](F, U, init="keras", **kwargs)
    return [w.astype(np.float64) for w in rnndrop.to_keras(layer)]


def gram_of_blocks(recurrent: np.ndarray, gates: int) -> list[np.ndarray]:
    """``R_g R_g^T`` for each gate block ``R_g`` ``(U, U)`` of a Keras recurrent kernel ``(U, G·U)``."""
    return [recurrent[:, g * U : (g + 1) * U] @ recurrent[:, g * U : (g + 1) * U].T for g in range(gates)]


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_kernel_matches_keras_glorot_uniform_over_the_whole_matrix(mode: str) -> None:
    torch.manual_seed(0)
    g = GATES[mode]
    limit = math.sqrt(6.0 / (F + g * U))  # fan_in F, fan_out G·U: the concatenated kernel
    for kernel in (keras_weights(mode)[0], ours_in_keras_layout(mode)[0]):
        assert kernel.shape == (F, g * U)
        assert np.abs(kernel).max() <= limit * (1 + 1e-6)
        assert np.abs(kernel).max() >= 0.98 * limit  # thousands of uniform draws reach the bound
        assert kernel.var() == pytest.approx(limit**2 / 3, rel=0.12)
        assert abs(kernel.mean()) < 0.1 * limit


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN"])
def test_recurrent_kernel_is_orthogonal_over_all_gates_like_keras(mode: str) -> None:
    torch.manual_seed(1)
    g = GATES[mode]
    theirs, ours = keras_weights(mode)[1], ours_in_keras_layout(mode)[1]
    for recurrent in (theirs, ours):
        assert recurrent.shape == (U, g * U)
        np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(U), atol=1e-5)  # rows orthonormal
        assert recurrent.var() == pytest.approx(1.0 / (g * U), rel=0.1)
    # Keras does not make each gate block orthogonal: a block's rows have squared norm about 1/G. Ours too.
    for a, b in zip(gram_of_blocks(theirs, g), gram_of_blocks(ours, g)):
        assert np.diag(a).mean() == pytest.approx(1.0 / g, abs=0.03)
        assert np.diag(b).mean() == pytest.approx(1.0 / g, abs=0.03)
        if g > 1:
            assert np.abs(a - np.eye(U)).max() > 0.3 and np.abs(b - np.eye(U)).max() > 0.3


@pytest.mark.parametrize(("mode", "kwargs"), [("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False}),
                                              ("RNN", {})])
def test_bias_equals_keras_exactly(mode: str, kwargs: dict) -> None:
    theirs, ours = keras_weights(mode, **kwargs)[2], ours_in_keras_layout(mode, **kwargs)[2]
    assert theirs.shape == ours.shape
    np.testing.assert_array_equal(ours, theirs)  # LSTM: zeros, ones on the forget block (unit_forget_bias)


def test_lstm_forget_bias_sums_to_one_split_into_b_ih() -> None:
    torch.manual_seed(2)
    h = 5
    lstm = rnndrop.LSTM(3, h, num_layers=2, bidirectional=True, proj_size=2, init="keras")
    forget = torch.zeros(4 * h)
    forget[h : 2 * h] = 1.0
    for k in range(2):
        for suffix in ("", "_reverse"):
            b_ih, b_hh = getattr(lstm, f"bias_ih_l{k}{suffix}"), getattr(lstm, f"bias_hh_l{k}{suffix}")
            assert torch.equal(b_ih + b_hh, forget)
            assert torch.equal(b_hh, torch.zeros(4 * h))
            w_hh = getattr(lstm, f"weight_hh_l{k}{suffix}")  # (4H, P): orthonormal columns
            torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(2), atol=1e-6, rtol=0)
    # layer 1 reads D * P = 4 features: its glorot bound uses them
    assert lstm.weight_ih_l1.abs().max() <= math.sqrt(6.0 / (4 + 4 * h))


def test_unit_forget_bias_off_and_gru_has_no_forget_bias() -> None:
    lstm = rnndrop.init.keras_(rnndrop.LSTM(3, 4), unit_forget_bias=False)
    assert torch.count_nonzero(lstm.bias_ih_l0) == 0
    gru = rnndrop.GRU(3, 4, init="keras")
    assert torch.count_nonzero(gru.bias_ih_l0) == 0 and torch.count_nonzero(gru.bias_hh_l0) == 0


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_torch_nn_layers_accept_keras_init(cls: type[nn.RNNBase]) -> None:
    layer = rnndrop.init.keras_(cls(F, U, bidirectional=True))
    g = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cls]
    for suffix in ("", "_reverse"):
        w_hh = getattr(layer, f"weight_hh_l0{suffix}").detach()
        torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(U), atol=1e-5, rtol=0)
        assert getattr(layer, f"weight_ih_l0{suffix}").abs().max() <= math.sqrt(6.0 / (F + g * U))
    b = layer.bias_ih_l0.detach() + layer.bias_hh_l0.detach()
    assert torch.count_nonzero(b) == (U if cls is nn.LSTM else 0)


def test_default_init_is_torch_nn_and_torch_init_draws_what_torch_draws() -> None:
    torch.manual_seed(3)
    ref = nn.LSTM(F, 8, num_layers=2)
    torch.manual_seed(3)
    ours = rnndrop.LSTM(F, 8, num_layers=2)
    torch.manual_seed(3)
    again = rnndrop.init.torch_(nn.LSTM(F, 8, num_layers=2))
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(ours, name), p)
    torch.manual_seed(3)
    nn.LSTM(F, 8, num_layers=2)  # the constructor's draws, then ours again on the same RNG stream
    rnndrop.init.torch_(ref)
    for name, p in ref.named_parameters():
        assert torch.equal(getattr(again, name), p)
    assert ours.init == "torch" and "init" not in repr(ours)


def test_reset_parameters_follows_init_and_copies_keep_it() -> None:
    layer = rnndrop.GRU(F, 6, init="keras")
    with torch.no_grad():
        layer.bias_hh_l0.fill_(3.0)
    layer.reset_parameters()
    assert torch.count_nonzero(layer.bias_hh_l0) == 0
    assert copy.deepcopy(layer).init == "keras" and "init='keras'" in repr(layer)


def test_generator_makes_keras_init_reproducible() -> None:
    a = rnndrop.init.keras_(rnndrop.LSTM(3, 4), generator=torch.Generator().manual_seed(7))
    b = rnndrop.init.keras_(rnndrop.LSTM(3, 4), generator=torch.Generator().manual_seed(7))
    for name, p in a.named_parameters():
        assert torch.equal(getattr(b, name), p)


def test_keras_interop_roundtrip_unaffected_by_init() -> None:
    torch.manual_seed(4)
    layer = rnndrop.LSTM(F, 8, init="keras", batch_first=True)
    config = keras.saving.serialize_keras_object(keras.layers.LSTM(8))
    back = rnndrop.from_keras(config, rnndrop.to_keras(layer))
    for ours, theirs in zip(rnndrop.to_keras(back), rnndrop.to_keras(layer)):
        np.testing.assert_array_equal(ours, theirs)


def test_bad_init_is_rejected_with_the_argument_name() -> None:
    with pytest.raises(RnnDropValueError, match=r"init must be one of \('torch', 'keras'\)"):
        rnndrop.LSTM(3, 4, init="glorot")
    with pytest.raises(RnnDropValueError, match="init must be one of"):
        rnndrop.init.initialize_(rnndrop.RNN(3, 4), "xavier")
    with pytest.raises(RnnDropTypeError, match="recurrent layer"):
        rnndrop.init.keras_(nn.Linear(3, 4))
