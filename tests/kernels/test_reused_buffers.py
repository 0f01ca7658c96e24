"""The input projection's buffer is reused call after call: no call may see another's numbers.

Two forwards before one backward (gradient accumulation, two sequences through one layer), the two
directions of a layer, and a buffer first made under ``torch.inference_mode`` then used outside it.
"""

from __future__ import annotations

import torch

import rnndrop


def _pair(**kw):
    torch.manual_seed(0)
    fused = rnndrop.GRU(5, 7, backend="fused", **kw)
    ref = rnndrop.GRU(5, 7, backend="reference", **kw)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def test_two_forwards_then_one_backward(kernel) -> None:
    fused, ref = _pair(num_layers=2, bidirectional=True, recurrent_dropout=0.3, input_dropout=0.2)
    x1, x2 = torch.randn(6, 3, 5), torch.randn(9, 4, 5)  # different sizes: the buffer is re-cut
    m1, m2 = fused.sample_masks(3, 6), fused.sample_masks(4, 9)
    grads = []
    for layer in (fused, ref):
        layer.zero_grad()
        out1, _ = layer(x1, dropout_masks=m1)
        out2, _ = layer(x2, dropout_masks=m2)
        (out1.square().sum() + out2.sin().sum()).backward()
        assert layer.last_backend == ("fused" if layer is fused else "reference")
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_buffer_made_in_inference_mode_serves_training(kernel) -> None:
    fused, ref = _pair()
    x = torch.randn(20, 8, 5)  # larger than anything before: a fresh buffer is made here
    with torch.inference_mode():
        fused(x)
    out, _ = fused(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref(x)[0])
