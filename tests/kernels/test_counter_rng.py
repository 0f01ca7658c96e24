"""The counter-based mask draws (``rnndrop.counter_rng``): one definition, two implementations, and
what a seeded layer's masks do and do not depend on.

The pure-torch code is the definition; the compiled kernel's sampler must give the very same numbers
(so a seeded run does not depend on whether the extension is built), the draws must behave like
Bernoulli(p) (the right rate, no correlation between neighbours in any axis, fresh seeds every call),
and a sample's masks must not depend on the batch it is drawn in (module docstring of rnndrop.masks).
"""

from __future__ import annotations

import math

import pytest
import torch

import rnndrop
from rnndrop import counter_rng
from rnndrop._kernels import loader


@pytest.fixture
def torch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure-torch definition, even where the extension registered its sampler."""
    monkeypatch.setattr(counter_rng, "_fast", {})


def _draws(keys, p, shape, dtype=torch.float64, below=1.0, above=0.0):
    return counter_rng.keyed_draws(keys, p, shape, below=below, above=above, dtype=dtype, device="cpu")


def _definition(keys, p, shape, dtype, below, above):
    saved = dict(counter_rng._fast)
    counter_rng._fast.clear()
    try:
        return _draws(keys, p, shape, dtype, below, above)
    finally:
        counter_rng._fast.update(saved)


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 3, 5), (4, 1, 300), (100, 64, 256), (3, 0, 4)])
@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_sampler_equals_the_torch_definition(kernel, shape, p, dtype) -> None:
    loader.load()
    assert counter_rng.fast_sampler("cpu") is not None, "loading the extension registers its sampler"
    keys = (0xDEADBEEF, 12345)
    scale = 1.0 / (1.0 - p)
    fast = _draws(keys, p, shape, dtype, 0.0, scale)
    assert torch.equal(fast, _definition(keys, p, shape, dtype, 0.0, scale))


def test_kernel_key_derivation_equals_the_python_one(kernel) -> None:
    module = loader.load()
    for seed in ((0, 0), (0xFFFFFFFF, 7), (123456789, 987654321)):
        for layer, direction, kind in ((0, 0, "input"), (3, 1, "zoneout_c"), (1, 0, "between"), (70, 1, "weight_hh")):
            want = counter_rng.mask_keys(seed, layer, direction, kind)
            assert tuple(module.mask_keys(*seed, layer, direction, counter_rng.MASK_KINDS[kind])) == want


def test_the_definition_on_a_few_words(torch_only) -> None:
    """The docstring's formulas, written out once more with Python ints (lowbias32 from its constants)."""

    def lowbias32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    s0, s1 = 0x12345678, 0x9ABCDEF0
    stream = (2 * 2 + 1) * 8 + counter_rng.MASK_KINDS["recurrent"]
    k0 = lowbias32(lowbias32(stream ^ s0) ^ s1)
    k1 = lowbias32(lowbias32(s1 ^ stream ^ 0x9E3779B9) ^ s0)
    assert counter_rng.mask_keys((s0, s1), 2, 1, "recurrent") == (k0, k1)
    a_n, b_n, c_n, p = 3, 4, 5, 0.5
    got = _draws((k0, k1), p, (a_n, b_n, c_n))
    for a in range(a_n):
        for b in range(b_n):
            for c in range(c_n):
                x = lowbias32(lowbias32((a * c_n + c) ^ k0) ^ lowbias32(b ^ k1))
                assert got[a, b, c].item() == (1.0 if (x >> 8) < round(p * (1 << 24)) else 0.0)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_rate_and_independence_along_every_axis(torch_only, p: float) -> None:
    a_n, b_n, c_n = 16, 128, 128
    draws = _draws((7, 11), p, (a_n, b_n, c_n))
    n = draws.numel()
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert abs(draws.mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    centred = draws - draws.mean()
    var = centred.var()
    # Neighbouring units, samples and rows (the three counters), and a unit against the next row's.
    for name, x, y in (("unit", centred[..., :-1], centred[..., 1:]), ("sample", centred[:, :-1], centred[:, 1:]),
                       ("row", centred[:-1], centred[1:]), ("row/unit", centred[:-1, :, 1:], centred[1:, :, :-1])):
        corr = (x * y).mean() / var
        assert abs(corr.item()) < 5 / math.sqrt(x.numel()), f"{name}: correlation {corr.item():.4f}"


def test_masks_do_not_depend_on_the_batch(torch_only) -> None:
    """Sample b's masks are the same in a batch of 8 as in a batch of 3 (any batch holding it), and a
    per-step mask of 5 steps is a prefix of the one of 9 steps, every kind, every layer and direction."""
    layer = rnndrop.LSTM(5, 6, num_layers=2, bidirectional=True, dropout=0.3, input_dropout=0.3,
                         recurrent_dropout=0.3, gate_masks="per_gate", candidate_dropout=0.3, zoneout_hidden=0.3,
                         zoneout_cell=0.3, weight_dropout=0.3, dtype=torch.float64)
    big = layer.mask_spec.sample(8, 9, dtype=torch.float64, device="cpu", seed=(5, 6))
    small = layer.mask_spec.sample(3, 5, dtype=torch.float64, device="cpu", seed=(5, 6))
    for k in range(2):
        for d in range(2):
            b_m, s_m = big.layers[k][d], small.layers[k][d]
            assert b_m.active() == s_m.active() == ("input", "recurrent", "weight_hh", "candidate", "zoneout_h",
                                                    "zoneout_c")
            for name in ("input", "recurrent", "candidate"):
                assert torch.equal(getattr(b_m, name)[:, :3], getattr(s_m, name)), name
            for name in ("zoneout_h", "zoneout_c"):
                assert torch.equal(getattr(b_m, name)[:5, :3], getattr(s_m, name)), name
            assert torch.equal(b_m.weight_hh, s_m.weight_hh)
    assert torch.equal(big.between[0][:5, :3], small.between[0])
    # And the rows 3..7 are not a copy of rows 0..4: the samples differ.
    assert not torch.equal(big.layers[0][0].input[:, 3:6], big.layers[0][0].input[:, :3])


def test_the_extension_draws_the_same_masks_as_torch(kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    loader.load()
    layer = rnndrop.GRU(3, 5, num_layers=2, dropout=0.2, input_dropout=0.3, recurrent_dropout=0.3,
                        zoneout_hidden=0.3, weight_dropout=0.2, candidate_dropout=0.1)
    with_fast = layer.sample_masks(4, 6, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(counter_rng, "_fast", {})
    without = layer.sample_masks(4, 6, generator=torch.Generator().manual_seed(0))
    for dirs_a, dirs_b in zip(with_fast.layers, without.layers):
        for m1, m2 in zip(dirs_a, dirs_b):
            for name in m1.active():
                assert torch.equal(getattr(m1, name), getattr(m2, name)), name
    assert torch.equal(with_fast.between[0], without.between[0])


def test_one_draw_from_the_generator_per_call() -> None:
    """A call takes one seed (two words) from the generator, whatever it samples, and the next call a new one."""
    layer = rnndrop.LSTM(3, 4, num_layers=3, bidirectional=True, dropout=0.2, input_dropout=0.2,
                         recurrent_dropout=0.2, zoneout_hidden=0.2, gate_masks="per_gate")
    g = torch.Generator().manual_seed(3)
    first = layer.sample_masks(2, 4, generator=g)
    after_one = torch.Generator().manual_seed(3)
    torch.randint(0, 1 << 32, (2,), generator=after_one, dtype=torch.int64)
    assert torch.equal(g.get_state(), after_one.get_state())
    second = layer.sample_masks(2, 4, generator=g)
    assert not torch.equal(first.layers[0][0].input, second.layers[0][0].input)
    replay = layer.sample_masks(2, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.layers[2][1].zoneout_h, replay.layers[2][1].zoneout_h)


def test_seeds_decorrelate_calls() -> None:
    g3 = torch.Generator().manual_seed(3)
    g4 = torch.Generator().manual_seed(4)
    keys_a = counter_rng.mask_keys(counter_rng.draw_seed(g3), 0, 0, "zoneout_h")
    keys_b = counter_rng.mask_keys(counter_rng.draw_seed(g4), 0, 0, "zoneout_h")
    a, c = _draws(keys_a, 0.5, (50, 1, 40)), _draws(keys_b, 0.5, (50, 1, 40))
    agree = (a == c).float().mean().item()
    assert 0.45 < agree < 0.55  # independent halves agree half of the time


def test_a_cpu_generator_serves_a_layer_on_another_device() -> None:
    """The seed comes from the generator's device and the masks are drawn on the layer's ('meta' here: no
    values, but the devices and shapes are checked; the CUDA version of this test is below)."""
    layer = rnndrop.LSTM(3, 4, input_dropout=0.2, recurrent_dropout=0.2, zoneout_hidden=0.1, device="meta")
    masks = layer.sample_masks(2, 3, generator=torch.Generator().manual_seed(1))
    m = masks.layers[0][0]
    assert (m.input.device.type, m.recurrent.device.type, m.zoneout_h.device.type) == ("meta",) * 3
    assert m.input.shape == (1, 2, 3) and m.zoneout_h.shape == (3, 2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_masks_equal_cpu_masks_from_the_same_seed() -> None:
    """The same seeded generator gives the same masks on CUDA as on the CPU, and generators of either
    device serve layers of either device."""
    kw = dict(num_layers=2, bidirectional=True, dropout=0.2, input_dropout=0.3, recurrent_dropout=0.3,
              zoneout_hidden=0.2, zoneout_cell=0.2, weight_dropout=0.2, candidate_dropout=0.2, gate_masks="per_gate")
    cpu_layer = rnndrop.LSTM(5, 6, **kw)
    cuda_layer = rnndrop.LSTM(5, 6, **kw).cuda()
    on_cpu = cpu_layer.sample_masks(4, 7, generator=torch.Generator().manual_seed(9))
    on_cuda = cuda_layer.sample_masks(4, 7, generator=torch.Generator().manual_seed(9))
    for dirs_a, dirs_b in zip(on_cpu.layers, on_cuda.layers):
        for m1, m2 in zip(dirs_a, dirs_b):
            assert m1.active() == m2.active()
            for name in m1.active():
                got = getattr(m2, name)
                assert got.device.type == "cuda" and torch.equal(getattr(m1, name), got.cpu()), name
    assert torch.equal(on_cpu.between[0], on_cuda.between[0].cpu())
    cuda_gen = torch.Generator(device="cuda").manual_seed(9)
    a = cpu_layer.sample_masks(4, 7, generator=cuda_gen)
    cuda_gen.manual_seed(9)
    b = cuda_layer.sample_masks(4, 7, generator=cuda_gen)
    assert torch.equal(a.layers[1][1].recurrent, b.layers[1][1].recurrent.cpu())
