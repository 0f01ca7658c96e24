"""Every call computes with the parameters' current values, however they were written.

Old-style PyTorch code writes weights in ways that bypass autograd's version counter: manual SGD and
EMA through ``p.data``, ``nn.init.orthogonal_(layer.weight_hh_l0.data)``, ``.data = ...``, storage
shared with another tensor. A kernel that kept anything derived from a weight across calls (the
fused kernel's packed ``W_hh`` did, until 2026-12) would compute with the old values, silently.
Here each way of writing is applied between two calls of a layer, on every CPU kernel, in training
(forward + backward) and inference, and the second call must equal the reference loop run on the
weights the layer holds after the write (read back through ``state_dict``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import rnndrop

Write = Callable[[nn.Module, str], None]


def _new_value(like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, dtype=like.dtype, generator=torch.Generator().manual_seed(7)) * 0.3


def _shared_storage(m: nn.Module, name: str) -> None:
    # The parameter shares its storage with another tensor, which is then written: the parameter's
    # own version counter does not move.
    p = getattr(m, name)
    other = p.detach().clone()
    with torch.no_grad():
        p.set_(other.untyped_storage(), 0, p.shape, p.stride())
    other.copy_(_new_value(p))


def _load_state_dict_assign(m: nn.Module, name: str) -> None:
    state = {k: v.clone() for k, v in m.state_dict().items()}
    state[name] = _new_value(state[name])
    m.load_state_dict(state, assign=True)


def _in_place_no_grad(m: nn.Module, name: str) -> None:
    with torch.no_grad():
        getattr(m, name).mul_(-0.7).add_(0.05)


def _set_no_grad(m: nn.Module, name: str) -> None:
    with torch.no_grad():
        getattr(m, name).set_(_new_value(getattr(m, name)))


WRITES: dict[str, Write] = {
    "data.mul_": lambda m, n: getattr(m, n).data.mul_(-0.7),
    "init_on_data": lambda m, n: nn.init.orthogonal_(getattr(m, n).data),
    "data.copy_": lambda m, n: getattr(m, n).data.copy_(_new_value(getattr(m, n))),
    "data_assigned": lambda m, n: setattr(getattr(m, n), "data", _new_value(getattr(m, n))),
    "set_": _set_no_grad,
    "no_grad_in_place": _in_place_no_grad,
    "load_state_dict_assign": _load_state_dict_assign,
    "swapped_into_parameters": lambda m, n: m._parameters.__setitem__(n, nn.Parameter(_new_value(getattr(m, n)))),
    "shared_storage": _shared_storage,
}

# Options each backend runs with dropout in training (the torch kernel folds batch-wide masks only).
BACKENDS = {
    "fused": {"input_dropout": 0.25, "recurrent_dropout": 0.25},
    "torch": {"input_dropout": 0.25, "recurrent_dropout": 0.25, "mask_scope": "batch"},
    "reference": {"input_dropout": 0.25, "recurrent_dropout": 0.25},
}


def _run(layer: nn.Module, x: torch.Tensor, masks, train: bool) -> list[torch.Tensor]:
    """Outputs, and in training every gradient (input and parameters)."""
    layer.train(train)
    if not train:
        with torch.no_grad():
            out, _ = layer(x)
        return [out]
    xg = x.clone().requires_grad_()
    out, state = layer(xg, dropout_masks=masks)
    h = state[0] if isinstance(state, tuple) else state
    loss = out.square().sum() + h.sum()
    grads = torch.autograd.grad(loss, [xg, *layer.parameters()])
    return [out.detach(), *grads]


@pytest.mark.parametrize("train", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("param", ["weight_hh_l0", "weight_ih_l0"])
@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_second_call_sees_the_written_weight(kernel, mode, write, param, backend, train) -> None:
    cls = getattr(rnndrop, mode)
    torch.manual_seed(0)
    layer = cls(6, 20, backend=backend, **BACKENDS[backend])
    x = torch.randn(7, 5, 6)
    masks = layer.sample_masks(5, 7)
    _run(layer, x, masks, train)  # a first call: anything a kernel kept would be filled now
    WRITES[write](layer, param)
    got = _run(layer, x, masks, train)
    assert layer.last_backend == backend
    twin = cls(6, 20, backend="reference", **BACKENDS[backend])
    twin.load_state_dict(layer.state_dict())
    want = _run(twin, x, masks, train)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["auto", "fused", "torch"])
def test_manual_sgd_through_data_tracks_torch_nn(kernel, backend) -> None:
    """The issue's measurement: 30 plain-SGD steps written through ``p.data`` must follow ``nn.GRU``."""
    torch.manual_seed(0)
    ours = rnndrop.GRU(8, 32, backend=backend)
    theirs = nn.GRU(8, 32)
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(12, 16, 8), torch.randn(12, 16, 32)
    for _ in range(30):
        losses = []
        for m in (ours, theirs):
            loss = (m(x)[0] - y).square().mean()
            m.zero_grad()
            loss.backward()
            for p in m.parameters():
                p.data -= 0.5 * p.grad
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_ema_through_data_in_eval_with_lengths(kernel) -> None:
    """An eval LSTM with ``lengths=`` after an EMA update through ``.data`` (0.041 off when stale)."""
    torch.manual_seed(0)
    ours = rnndrop.LSTM(5, 24, batch_first=True).eval()
    live = rnndrop.LSTM(5, 24, batch_first=True)
    x, lengths = torch.randn(6, 9, 5), torch.tensor([9, 7, 5, 3, 9, 1])
    with torch.no_grad():
        ours(x, lengths=lengths)
    for ema, p in zip(ours.parameters(), live.parameters()):
        ema.data.mul_(0.5).add_(0.5 * p.data)
    theirs = nn.LSTM(5, 24, batch_first=True).eval()
    theirs.load_state_dict(ours.state_dict())
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        got = ours(x, lengths=lengths)[0]
        want = nn.utils.rnn.pad_packed_sequence(theirs(packed)[0], batch_first=True, total_length=9)[0]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
