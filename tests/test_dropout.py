"""rnndrop.dropout: mask semantics of the standalone dropout modules.

Statistical checks compare an observed frequency with its expectation within SIGMAS standard
deviations of the binomial law of that frequency (false-failure rate ~1e-9 per check).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnndrop
from rnndrop.dropout import dropout, resolve_noise_shape

SIGMAS = 6.0


def assert_rate(hits: torch.Tensor, p: float) -> None:
    """``hits``: booleans, each True with probability ``p`` independently (if the code is right)."""
    n = hits.numel()
    tol = SIGMAS * math.sqrt(p * (1 - p) / n)
    rate = hits.float().mean().item()
    assert abs(rate - p) <= tol, f"rate {rate:.4f} vs expected {p} (tolerance {tol:.4f}, n={n})"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mask_of(module: nn.Module, shape: tuple[int, ...], **kw) -> torch.Tensor:
    """The mask a training call draws: the module applied to ones."""
    module.train()
    return module(torch.ones(shape), **kw)


# ----------------------------------------------------------------------------- Dropout
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_rate_and_scaling(p: float) -> None:
    m = mask_of(rnndrop.Dropout(p), (32, 40, 24), generator=gen(0))
    scale = torch.tensor(1 / (1 - p), dtype=torch.float32)
    assert bool(((m == 0) | (m == scale)).all()), "entries must be exactly 0 or 1/(1-p)"
    assert_rate(m == 0, p)


def test_dropout_default_is_independent_per_element_and_step() -> None:
    p = 0.5
    m = mask_of(rnndrop.Dropout(p), (64, 50, 32), generator=gen(1)) == 0
    # Independent neighbours along every axis: both dropped with probability p^2
    # (a mask shared along an axis would give p).
    for axis in range(3):
        a, b = m.narrow(axis, 0, m.shape[axis] - 1), m.narrow(axis, 1, m.shape[axis] - 1)
        assert_rate(a & b, p * p)


@pytest.mark.parametrize(
    ("noise_shape", "shared_axes"),
    [((None, 1, None), (1,)), ((None, None, 1), (2,)), ((1, None, None), (0,)), ((None, 1, 1), (1, 2))],
)
def test_dropout_noise_shape_shares_size_one_axes(noise_shape, shared_axes) -> None:
    p = 0.4
    shape = (48, 30, 40)
    m = mask_of(rnndrop.Dropout(p, noise_shape), shape, generator=gen(2))
    for axis in shared_axes:  # constant along each size-1 axis
        assert torch.equal(m, m.narrow(axis, 0, 1).expand_as(m))
    index = tuple(slice(0, 1) if a in shared_axes else slice(None) for a in range(3))
    draws = m[index] == 0
    assert_rate(draws, p)
    for axis in set(range(3)) - set(shared_axes):  # independent along the others
        a, b = draws.narrow(axis, 0, draws.shape[axis] - 1), draws.narrow(axis, 1, draws.shape[axis] - 1)
        assert_rate(a & b, p * p)


def test_dropout_noise_shape_matches_keras_concrete_shape() -> None:
    assert resolve_noise_shape((None, 1, None), (4, 7, 5)) == (4, 1, 5)
    assert resolve_noise_shape((4, None, 5), (4, 7, 5)) == (4, 7, 5)
    assert resolve_noise_shape(None, (4, 7, 5)) == (4, 7, 5)


def test_dropout_time_major_noise_shape_in_input_order() -> None:
    d = rnndrop.Dropout(0.5, (1, None, None), batch_first=False)
    m = mask_of(d, (20, 16, 12), generator=gen(3))
    assert torch.equal(m, m[:1].expand_as(m))
    # Axis 1 holds the samples when time-major: sharing along axis 0 (time) keeps per-sample masks.
    assert d.masks_per_sample
    assert not rnndrop.Dropout(0.5, (None, 1, None), batch_first=False).masks_per_sample
    assert not rnndrop.Dropout(0.5, (1, None, None)).masks_per_sample
    assert rnndrop.Dropout(0.5, (None, 1, None)).masks_per_sample


def test_dropout_fresh_mask_each_call() -> None:
    p = 0.5
    d = rnndrop.Dropout(p, (None, 1, None))
    g = gen(4)
    a = mask_of(d, (64, 5, 64), generator=g)[:, 0] == 0
    b = mask_of(d, (64, 5, 64), generator=g)[:, 0] == 0
    assert_rate(a & b, p * p)  # two calls agree on a drop only by chance


def test_dropout_eval_and_p0_are_identity() -> None:
    x = torch.randn(4, 6, 3)
    d = rnndrop.Dropout(0.7, (None, 1, None)).eval()
    assert torch.equal(d(x), x)
    assert torch.equal(rnndrop.Dropout(0.0).train()(x), x)
    assert torch.equal(dropout(x, 0.7, training=False), x)


def test_dropout_generator_reproducible() -> None:
    x = torch.randn(8, 10, 6)
    d = rnndrop.Dropout(0.5, (None, 1, None), generator=gen(5)).train()
    first = d(x)
    d.generator = gen(5)
    assert torch.equal(d(x), first)
    assert torch.equal(d(x, generator=gen(5)), first)
    assert not torch.equal(d(x, generator=gen(6)), first)
    assert torch.equal(dropout(x, 0.5, noise_shape=(None, 1, None), generator=gen(5)), first)


@pytest.mark.parametrize(
    ("noise_shape", "error", "words"),
    [
        ((None, 1), ValueError, "one entry per input axis"),
        ((None, 3, None), ValueError, "noise_shape[1] must be None, 1 or 7"),
        ((None, 0, None), ValueError, ">= 1"),
        ((None, True, None), TypeError, "got bool"),
        ((None, 1.0, None), TypeError, "got float"),
        ("None,1,None", TypeError, "tuple of ints"),
    ],
)
def test_dropout_noise_shape_errors(noise_shape, error, words) -> None:
    with pytest.raises(error, match=None) as info:
        rnndrop.Dropout(0.5, noise_shape).train()(torch.ones(2, 7, 3))
    assert words in str(info.value)
    assert "noise_shape" in str(info.value)


def test_dropout_noise_shape_checked_in_eval_too() -> None:
    with pytest.raises(ValueError, match="noise_shape"):
        rnndrop.Dropout(0.5, (None, 1)).eval()(torch.ones(2, 7, 3))


@pytest.mark.parametrize("p", [1.0, -0.1, float("nan")])
def test_bad_probability(p: float) -> None:
    for cls in (rnndrop.Dropout, rnndrop.SpatialDropout1d, rnndrop.LockedDropout, rnndrop.SpatialDropout2d):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
            cls(p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        rnndrop.EmbeddingDropout(nn.Embedding(3, 2), p)


def test_bad_types() -> None:
    with pytest.raises(TypeError, match="p must be a float"):
        rnndrop.Dropout("0.5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="floating point"):
        rnndrop.Dropout(0.5).train()(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="generator"):
        rnndrop.Dropout(0.5, generator=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.nn\.Embedding"):
        rnndrop.EmbeddingDropout(nn.Linear(2, 2), 0.1)  # type: ignore[arg-type]


def test_dropout_gradient_is_the_mask() -> None:
    x = torch.randn(6, 5, 4, requires_grad=True)
    d = rnndrop.Dropout(0.5, (None, 1, None)).train()
    y = d(x, generator=gen(7))
    y.sum().backward()
    assert torch.equal(x.grad, mask_of(d, (6, 5, 4), generator=gen(7)))


@pytest.mark.parametrize(
    "module",
    [
        rnndrop.Dropout(0.3, (None, 1, None)),
        rnndrop.SpatialDropout1d(0.3),
        rnndrop.LockedDropout(0.3, batch_first=False),
        rnndrop.SpatialDropout2d(0.3, "channels_last"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradcheck(module: nn.Module) -> None:
    module.train().double()
    shape = (3, 4, 5, 2) if isinstance(module, rnndrop.SpatialDropout2d) else (3, 4, 5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module(t, generator=gen(8)), (x,))


# ----------------------------------------------------------------------------- spatial / locked
@pytest.mark.parametrize("cls", [rnndrop.SpatialDropout1d, rnndrop.LockedDropout])
@pytest.mark.parametrize("batch_first", [True, False])
def test_sequence_masks_locked_over_time(cls, batch_first: bool) -> None:
    p = 0.3
    b, t, c = 64, 12, 48
    shape = (b, t, c) if batch_first else (t, b, c)
    m = mask_of(cls(p, batch_first=batch_first), shape, generator=gen(9))
    time_axis = 1 if batch_first else 0
    assert torch.equal(m, m.narrow(time_axis, 0, 1).expand_as(m)), "one mask for every timestep"
    draws = m.select(time_axis, 0) == 0  # (B, C)
    assert_rate(draws, p)
    assert_rate(draws[:-1] & draws[1:], p * p)  # independent across samples
    assert_rate(draws[:, :-1] & draws[:, 1:], p * p)  # and across channels


def test_spatial1d_equals_dropout_with_noise_shape() -> None:
    x = torch.randn(5, 9, 7)
    a = rnndrop.SpatialDropout1d(0.4).train()(x, generator=gen(10))
    b = rnndrop.Dropout(0.4, (None, 1, None)).train()(x, generator=gen(10))
    c = rnndrop.LockedDropout(0.4, batch_first=True).train()(x, generator=gen(10))
    assert torch.equal(a, b)
    assert torch.equal(a, c)


def test_sequence_unbatched_and_bad_rank() -> None:
    m = mask_of(rnndrop.SpatialDropout1d(0.5), (30, 40), generator=gen(11))
    assert torch.equal(m, m[:1].expand_as(m))
    with pytest.raises(ValueError, match=r"SpatialDropout1d input must be 3-D \(B, T, C\)"):
        rnndrop.SpatialDropout1d(0.5).train()(torch.ones(2, 3, 4, 5))
    with pytest.raises(ValueError, match="at least 2-D"):
        rnndrop.LockedDropout(0.5, batch_first=True).train()(torch.ones(3))


@pytest.mark.parametrize("batch_first", [None, "False", 0])
def test_locked_dropout_needs_an_explicit_layout(batch_first) -> None:
    """rnndrop.LSTM is time-major by default, Keras-style modules batch-first: no default to guess wrong."""
    with pytest.raises(TypeError, match=r"batch_first=True .* batch_first=False"):
        rnndrop.LockedDropout(0.3) if batch_first is None else rnndrop.LockedDropout(0.3, batch_first=batch_first)


def test_locked_dropout_packed_equals_padded() -> None:
    x = torch.randn(4, 6, 3)
    lengths = torch.tensor([2, 6, 3, 5])
    d = rnndrop.LockedDropout(0.5, batch_first=True).train()
    padded = d(x, generator=gen(12))
    packed_in = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_out = d(packed_in, generator=gen(12))
    expected = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
    assert torch.equal(packed_out.data, expected.data)
    assert torch.equal(packed_out.batch_sizes, packed_in.batch_sizes)
    assert torch.equal(packed_out.sorted_indices, packed_in.sorted_indices)
    assert d.eval()(packed_in) is packed_in


@pytest.mark.parametrize(("cls", "dims"), [(rnndrop.SpatialDropout2d, 2), (rnndrop.SpatialDropout3d, 3)])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_spatial_nd_drops_whole_maps(cls, dims: int, data_format: str) -> None:
    p = 0.3
    n, c, s = 40, 30, 3
    spatial = (s,) * dims
    shape = (n, c, *spatial) if data_format == "channels_first" else (n, *spatial, c)
    m = mask_of(cls(p, data_format), shape, generator=gen(13))
    maps = m if data_format == "channels_first" else m.movedim(-1, 1)  # (N, C, *spatial)
    first = maps.flatten(2)[..., :1]
    assert torch.equal(maps.flatten(2), first.expand_as(maps.flatten(2))), "a map is all kept or all dropped"
    draws = first.squeeze(-1) == 0
    assert_rate(draws, p)
    assert_rate(draws[:-1] & draws[1:], p * p)
    assert_rate(draws[:, :-1] & draws[:, 1:], p * p)
    # unbatched: one dimension fewer, the channel axis still kept
    u = mask_of(cls(p, data_format), shape[1:], generator=gen(14))
    assert u.shape == shape[1:]
    with pytest.raises(ValueError, match=f"{cls.__name__} input must be {dims + 2}-D"):
        cls(p, data_format).train()(torch.ones((2,) * (dims + 3)))


def test_spatial_nd_bad_data_format() -> None:
    with pytest.raises(ValueError, match="data_format must be one of"):
        rnndrop.SpatialDropout2d(0.5, "NCHW")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- embedding dropout
def test_embedding_dropout_drops_whole_word_types() -> None:
    p, vocab = 0.3, 3000
    emb = nn.Embedding(vocab, 4)
    d = rnndrop.EmbeddingDropout(emb, p).train()
    ids = torch.randint(0, vocab, (16, 40), generator=gen(15))
    ids[:, :vocab // 16 + 1] = 0  # ensure repeated words across rows and positions
    ids = torch.cat([ids.flatten(), torch.arange(vocab)]).reshape(-1, 1)  # every type present
    out = d(ids, generator=gen(16)).squeeze(1)
    ref = emb(ids).squeeze(1)
    scale = 1 / (1 - p)
    dropped = (out == 0).all(-1)
    assert torch.allclose(out[~dropped], ref[~dropped] * scale)
    # The fate of a word type is the same at every position of every row.
    fate = torch.zeros(vocab, dtype=torch.long).index_add_(0, ids.flatten(), dropped.long())
    count = torch.bincount(ids.flatten(), minlength=vocab)
    assert bool(((fate == 0) | (fate == count)).all())
    assert_rate(fate > 0, p)


def test_embedding_dropout_padding_idx_and_gradients() -> None:
    p, vocab, pad = 0.5, 400, 3
    emb = nn.Embedding(vocab, 5, padding_idx=pad)
    with torch.no_grad():
        emb.weight[pad] = 1.0  # a non-zero pad row makes "never dropped nor scaled" visible
    d = rnndrop.EmbeddingDropout(emb, p).train()
    ids = torch.arange(vocab).repeat(2).reshape(2, vocab)
    out = d(ids, generator=gen(17))
    assert torch.equal(out[:, pad], torch.ones(2, 5))
    out.sum().backward()
    grad = emb.weight.grad
    assert torch.equal(grad[pad], torch.zeros(5)), "no gradient into the padding row"
    kept = (out[0] != 0).any(-1)
    kept[pad] = False
    # Each kept word occurs twice: gradient 2/(1-p); dropped words get none.
    assert torch.allclose(grad[kept], torch.full_like(grad[kept], 2 / (1 - p)))
    dropped = ~kept
    dropped[pad] = False
    assert torch.equal(grad[dropped], torch.zeros_like(grad[dropped]))
    assert dropped.any() and kept.any()


def test_embedding_dropout_eval_sparse_and_max_norm() -> None:
    emb = nn.Embedding(50, 6, max_norm=1.0, sparse=True)
    with torch.no_grad():
        emb.weight.mul_(10)
    ref = nn.Embedding(50, 6, max_norm=1.0)
    ref.load_state_dict(emb.state_dict())
    ids = torch.tensor([[1, 2, 3], [3, 4, 1]])
    d = rnndrop.EmbeddingDropout(emb, 0.4).eval()
    assert torch.equal(d(ids), ref(ids))
    assert torch.equal(emb.weight, ref.weight), "max_norm renormalised the wrapped weight in place"
    d.train()
    d(ids, generator=gen(18)).sum().backward()
    assert emb.weight.grad.is_sparse
    assert not d.masks_per_sample
    assert list(d.state_dict()) == ["embedding.weight"]


def test_embedding_dropout_functional_errors() -> None:
    w = torch.randn(5, 3)
    with pytest.raises(TypeError, match="integer tensor of token ids"):
        rnndrop.embedding_dropout(torch.ones(2), w, 0.1)
    with pytest.raises(ValueError, match="weight must be 2-D"):
        rnndrop.embedding_dropout(torch.ones(2, dtype=torch.long), torch.randn(5), 0.1)
    ids = torch.tensor([0, 1, 4])
    assert torch.equal(rnndrop.embedding_dropout(ids, w, 0.9, training=False), w[ids])


def test_embedding_dropout_scale_as_fastai() -> None:
    """``scale=`` multiplies the embeddings in training and eval (fastai's / salesforce's argument)."""
    emb = nn.Embedding(10, 4)
    d = rnndrop.EmbeddingDropout(emb, 0.4)
    ids = torch.randint(0, 10, (3, 5))
    d.eval()
    torch.testing.assert_close(d(ids, scale=2.5), emb(ids) * 2.5)
    d.train()
    torch.testing.assert_close(d(ids, generator=gen(3), scale=2.5), d(ids, generator=gen(3)) * 2.5)
