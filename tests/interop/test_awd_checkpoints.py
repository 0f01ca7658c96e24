"""AWD-LSTM checkpoints (fastai / ULMFiT and salesforce key layouts) load into rnndrop layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import rnndrop
from rnndrop.interop import awd_lstm_state_dict

SIZES = [(6, 10), (10, 10), (10, 6)]  # emb -> hid -> hid -> emb, as AWD-LSTM


class TorchAWD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(20, 6)
        self.rnns = nn.ModuleList(nn.LSTM(i, h) for i, h in SIZES)


class RnndropAWD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(20, 6)
        self.rnns = nn.ModuleList(rnndrop.LSTM(i, h, weight_dropout=0.5) for i, h in SIZES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.encoder(tokens)
        for rnn in self.rnns:
            x, _ = rnn(x)
        return x


def _as_saved(state: dict[str, torch.Tensor], layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """The key layout each library's weight-dropping wrapper gives the same weights."""
    out = {}
    for key, value in state.items():
        if not key.startswith("rnns."):
            out[prefix + key] = value
            continue
        _, layer, name = key.split(".")
        if name == "weight_hh_l0":
            raw = f"rnns.{layer}.weight_hh_l0_raw" if layout == "fastai" else f"rnns.{layer}.module.weight_hh_l0_raw"
            out[prefix + raw] = value
            if layout == "salesforce+masked":  # a masked copy from the last call, also saved by some versions
                out[prefix + f"rnns.{layer}.module.weight_hh_l0"] = torch.zeros_like(value)
        else:
            out[prefix + f"rnns.{layer}.module.{name}"] = value
    return out


@pytest.mark.parametrize("layout", ["fastai", "salesforce", "salesforce+masked"])
def test_awd_checkpoint_loads_and_computes_the_same(layout) -> None:
    torch.manual_seed(0)
    theirs = TorchAWD().eval()
    saved = _as_saved(theirs.state_dict(), layout)
    ours = RnndropAWD().eval()
    ours.load_state_dict(awd_lstm_state_dict(saved))  # strict: every key matches
    tokens = torch.randint(0, 20, (7, 3))
    x = theirs.encoder(tokens)
    for rnn in theirs.rnns:
        x, _ = rnn(x)
    torch.testing.assert_close(ours(tokens), x)


def test_ulmfit_prefix_is_kept() -> None:
    saved = _as_saved(TorchAWD().state_dict(), "fastai", prefix="0.")
    converted = awd_lstm_state_dict(saved)
    assert "0.rnns.2.weight_hh_l0" in converted and "0.encoder.weight" in converted
    assert not any("module" in k or k.endswith("_raw") for k in converted)


def test_not_an_awd_checkpoint() -> None:
    with pytest.raises(rnndrop.RnnDropValueError, match="no AWD-LSTM recurrent weights"):
        awd_lstm_state_dict(TorchAWD().state_dict())
