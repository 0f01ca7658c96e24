"""The fused kernel keeps packed W_hh across calls, and never serves a stale one.

Keyed on the weight's TensorImpl (weakly), version counter and data pointer: every way a user
changes a parameter through torch (optimizer step, load_state_dict, in-place under no_grad,
swapping the storage) invalidates it; per-call temporaries (a DropConnect-folded weight) are never
cached. Writes through ``.data`` bypass the version counter — the documented limit, with
``clear_packed_weights()`` as the remedy.
"""

from __future__ import annotations

import pytest
import torch

import rnndrop
from rnndrop._kernels import ops


def _layer(**kw) -> tuple[rnndrop.LSTM, rnndrop.LSTM]:
    torch.manual_seed(0)
    fused = rnndrop.LSTM(8, 16, input_dropout=0.25, recurrent_dropout=0.25, backend="fused", **kw)
    ref = rnndrop.LSTM(8, 16, input_dropout=0.25, recurrent_dropout=0.25, backend="reference", **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _agree(fused, ref, x, masks) -> None:
    ref.load_state_dict(fused.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fused(x, dropout_masks=masks)[0], ref(x, dropout_masks=masks)[0])


def _needs_packing() -> None:
    if not ops.projection_available():  # W_hh is packed for the AVX-512 micro-kernel only
        pytest.skip("the extension was built without the AVX-512 micro-kernel (this CPU): no packed weights")


def test_repeated_inference_hits_the_cache(kernel) -> None:
    _needs_packing()
    fused, _ = _layer()
    x = torch.randn(5, 3, 8)
    masks = fused.sample_masks(3, 5)
    with torch.no_grad():
        first = fused(x, dropout_masks=masks)[0]
        hits, misses, _ = ops.packed_weight_stats()
        again = fused(x, dropout_masks=masks)[0]
    hits2, misses2, _ = ops.packed_weight_stats()
    assert hits2 >= hits + 1 and misses2 == misses  # W_hh (and W_ih for the projection) served from the cache
    assert torch.equal(first, again)


def test_every_torch_way_of_changing_the_weight_invalidates(kernel) -> None:
    fused, ref = _layer()
    x = torch.randn(5, 3, 8)
    masks = fused.sample_masks(3, 5)
    _agree(fused, ref, x, masks)
    # an optimizer step
    opt = torch.optim.SGD(fused.parameters(), lr=0.5)
    fused(x, dropout_masks=masks)[0].square().sum().backward()
    opt.step()
    _agree(fused, ref, x, masks)
    # load_state_dict
    other = rnndrop.LSTM(8, 16)
    fused.load_state_dict(other.state_dict())
    _agree(fused, ref, x, masks)
    # in place under no_grad
    with torch.no_grad():
        fused.weight_hh_l0.mul_(-0.7)
    _agree(fused, ref, x, masks)
    # a new storage for the same parameter object
    with torch.no_grad():
        fused.weight_hh_l0.set_(torch.randn_like(fused.weight_hh_l0))
    _agree(fused, ref, x, masks)


def test_per_call_temporaries_are_not_cached(kernel) -> None:
    _needs_packing()
    ops.clear_packed_weights()
    fused, ref = _layer(weight_dropout=0.3)  # W_hh * mask is a fresh tensor every call
    x = torch.randn(5, 3, 8)
    entries = []
    for _ in range(3):
        masks = fused.sample_masks(3, 5)
        _agree(fused, ref, x, masks)
        entries.append(ops.packed_weight_stats()[2])
    # Only the parameter W_ih (the input projection's packing) is kept, never a folded W_hh.
    assert entries == [1, 1, 1]


def test_writes_through_data_need_clearing(kernel) -> None:
    fused, ref = _layer()
    x = torch.randn(5, 3, 8)
    masks = fused.sample_masks(3, 5)
    with torch.no_grad():
        before = fused(x, dropout_masks=masks)[0]
    fused.weight_hh_l0.data.mul_(2.0)  # bypasses the version counter, as it bypasses autograd
    ops.clear_packed_weights()
    _agree(fused, ref, x, masks)
    with torch.no_grad():
        assert not torch.equal(before, fused(x, dropout_masks=masks)[0])
