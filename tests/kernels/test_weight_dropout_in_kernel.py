"""DropConnect drawn inside the fused kernel: the same numbers as the reference loop's materialised mask.

A layer's own call keeps DropConnect's mask as its counter keys (rnndrop.masks.KeyedMask); the fused
CPU kernel draws each element while it packs W_hh (forward and backward) and multiplies dW by it, so
the mask never exists as a tensor. The reference loop and torch's kernel materialise the same mask.
"""

from __future__ import annotations

import pytest
import torch

import rnndrop
from rnndrop import masks
from rnndrop._kernels import ops

CASES = [("LSTM", {}), ("GRU", {}), ("GRU", {"reset_after": False}), ("RNN", {})]


def _pair(mode: str, dtype: torch.dtype, **kw):
    torch.manual_seed(0)
    opts = {"weight_dropout": 0.3, "recurrent_dropout": 0.2, "num_layers": 2, "bidirectional": True, **kw}
    fused = getattr(rnndrop, mode)(5, 21, backend="fused", dtype=dtype, **opts)
    ref = getattr(rnndrop, mode)(5, 21, backend="reference", dtype=dtype, **opts)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,kw", CASES)
def test_in_kernel_weight_mask_equals_the_reference(kernel, monkeypatch, mode, kw, dtype) -> None:
    fused, ref = _pair(mode, dtype, **kw)
    x = torch.randn(7, 3, 5, dtype=dtype, requires_grad=True)
    seen = []
    forward = ops.forward
    monkeypatch.setattr(ops, "forward", lambda *a: seen.append(a[-2]) or forward(*a))
    outs, grads = [], []
    for layer in (fused, ref):
        out = layer(x, generator=torch.Generator().manual_seed(11))[0]
        outs.append(out)
        grads.append(torch.autograd.grad(out.square().sum(), [x, *layer.parameters()]))
    assert fused.last_backend == "fused" and seen and all(thr >= 0 for thr in seen)  # the kernel drew the mask
    eps = 1e-5 if dtype == torch.float32 else 1e-12

    def close(a: torch.Tensor, b: torch.Tensor) -> None:  # relative to the tensor's scale (sums reassociate)
        torch.testing.assert_close(a, b, rtol=0, atol=eps * max(1.0, float(b.abs().max())))

    close(outs[0], outs[1])
    for a, b in zip(*grads):
        close(a, b)
    with torch.no_grad():  # inference (MC dropout) too
        got = fused(x, generator=torch.Generator().manual_seed(12))[0]
        want = ref(x, generator=torch.Generator().manual_seed(12))[0]
    close(got, want)


def test_the_fused_kernel_never_materialises_the_mask(kernel, monkeypatch) -> None:
    layer = rnndrop.LSTM(4, 16, weight_dropout=0.5, backend="fused")

    def refuse(self):
        raise AssertionError("DropConnect's mask was materialised on the fused path")

    monkeypatch.setattr(masks.KeyedMask, "materialize", refuse)
    layer(torch.randn(5, 2, 4))[0].sum().backward()
    assert layer.last_backend == "fused"


def test_masks_given_as_tensors_are_folded(kernel) -> None:
    """dropout_masks= with a weight mask tensor (a user's own mask): folded before the kernel, same result."""
    fused, ref = _pair("LSTM", torch.float64)
    m = fused.sample_masks(3, 7)
    assert isinstance(m.layers[0][0].weight_hh, torch.Tensor)  # sample_masks materialises
    x = torch.randn(7, 3, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(x, dropout_masks=m)[0], ref(x, dropout_masks=m)[0])
