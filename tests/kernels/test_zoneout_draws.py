"""Zoneout's counter-based draws (``masks.hashed_bernoulli``): one definition, two implementations.

The pure-torch code is the definition; the compiled kernel's sampler must give the very same numbers
(so a seeded run does not depend on whether the extension is built), and the draws must behave like
Bernoulli(p): the right rate, no correlation between neighbours, fresh keys every call.
"""

from __future__ import annotations

import math

import pytest
import torch

import rnndrop
from rnndrop import masks
from rnndrop._kernels import loader


def _torch_only(shape, p, keys, dtype):
    saved = masks._fast_hashed_bernoulli
    masks.register_fast_sampler(None)
    try:
        return masks.hashed_bernoulli(shape, p, keys, dtype=dtype, device="cpu")
    finally:
        masks.register_fast_sampler(saved)


@pytest.mark.parametrize("shape", [(1,), (7, 3, 5), (100, 64, 256)])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_sampler_equals_the_torch_definition(kernel, shape, p, dtype) -> None:
    loader.load()
    assert masks._fast_hashed_bernoulli is not None, "loading the extension registers its sampler"
    keys = (0xDEADBEEF, 12345)
    fast = masks.hashed_bernoulli(shape, p, keys, dtype=dtype, device="cpu")
    assert torch.equal(fast, _torch_only(shape, p, keys, dtype))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_rate_and_independence(p: float) -> None:
    n = 1 << 18
    draws = _torch_only((n,), p, (7, 11), torch.float64)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    # The rate within 5 standard errors; neighbours (index i, i+1) and a long stride uncorrelated.
    assert abs(draws.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    centred = draws - draws.mean()
    for lag in (1, 256, 64 * 256):
        corr = (centred[:-lag] * centred[lag:]).mean() / centred.var()
        assert abs(corr.item()) < 5 / math.sqrt(n), f"lag {lag}: correlation {corr.item():.4f}"


def test_keys_decorrelate_calls_and_seeds_repeat() -> None:
    a = masks.bernoulli_draw((50, 40), 0.5, dtype=torch.float32, device="cpu",
                             generator=torch.Generator().manual_seed(3))
    b = masks.bernoulli_draw((50, 40), 0.5, dtype=torch.float32, device="cpu",
                             generator=torch.Generator().manual_seed(3))
    c = masks.bernoulli_draw((50, 40), 0.5, dtype=torch.float32, device="cpu",
                             generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    agree = (a == c).float().mean().item()
    assert 0.45 < agree < 0.55  # independent halves agree half of the time


def test_seeded_layer_is_the_same_without_the_extension(monkeypatch) -> None:
    layer = rnndrop.LSTM(3, 5, zoneout_hidden=0.3, zoneout_cell=0.2)
    with_fast = layer.sample_masks(4, 6, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(masks, "_fast_hashed_bernoulli", None)
    without = layer.sample_masks(4, 6, generator=torch.Generator().manual_seed(0))
    for m1, m2 in zip(with_fast.layers[0], without.layers[0]):
        assert torch.equal(m1.zoneout_h, m2.zoneout_h) and torch.equal(m1.zoneout_c, m2.zoneout_c)
