"""Smoke parity with torch.nn; the full parity suite lives beside this file."""

import pytest
import torch

import rnndrop


@pytest.mark.parametrize(
    "ours, theirs, kwargs",
    [
        (rnndrop.LSTM, torch.nn.LSTM, {"proj_size": 3}),
        (rnndrop.LSTM, torch.nn.LSTM, {}),
        (rnndrop.GRU, torch.nn.GRU, {}),
        (rnndrop.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
    ],
)
def test_same_init_same_forward(ours, theirs, kwargs):
    torch.manual_seed(0)
    ref = theirs(5, 7, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    torch.manual_seed(0)
    mine = ours(5, 7, 2, bidirectional=True, dtype=torch.float64, **kwargs)
    assert list(ref.state_dict()) == list(mine.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(v, mine.state_dict()[k])
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    out_ref, h_ref = ref(x)
    out, h = mine(x)
    assert (out - out_ref).abs().max() < 1e-10
    for a, b in zip(h if isinstance(h, tuple) else (h,), h_ref if isinstance(h_ref, tuple) else (h_ref,)):
        assert (a - b).abs().max() < 1e-10
