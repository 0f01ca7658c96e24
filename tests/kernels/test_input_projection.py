"""The float32 input projection on the extension's micro-kernel (``project_into`` / ``input_projection``).

``gi = (x * m_g) @ W_ih[g]^T`` for all timesteps: row counts that are not a multiple of the 48-row
thread chunk or of a micro-tile, widths that end inside a 64-column panel, tiny and odd K, per-gate
mask blocks written into their own columns, a weight updated in place between calls (the packing
cache must see the new version), the eager buffer path bitwise equal to the compiled graph's op,
and bad arguments refused with a message instead of writing out of bounds.
"""

from __future__ import annotations

import pytest
import torch

from rnndrop._kernels import autograd, ops


@pytest.fixture
def projection(kernel):
    if not ops.projection_available():
        pytest.skip("this build has no AVX-512 micro-kernel (the projection runs on ATen)")
    return kernel


def _expected(x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """float64 ``(x * m_g) @ W_ih[g]^T``, the blocks side by side: what the kernel must round to float32."""
    x64, w64 = x.double(), w.double()
    if mask is None:
        return x64 @ w64.T
    blocks = mask.shape[0]
    width = w.shape[0] // blocks
    return torch.cat([(x64 * mask[g].double()) @ w64[g * width:(g + 1) * width].T for g in range(blocks)], dim=-1)


@pytest.mark.parametrize("t,b,i,gh,blocks", [
    (1, 1, 1, 1, 1),       # one row, one column, K = 1
    (7, 7, 3, 5, 1),       # 49 rows: one full 48-row chunk and a row left over; width inside a panel
    (5, 3, 17, 200, 4),    # 15 rows, width 50 per block (blocks do not start on a panel)
    (50, 32, 64, 512, 1),  # the bench's shapes: several panels, 1600 rows in 34 chunks
    (3, 2, 129, 130, 2),   # K past a multiple of 16; 65-column blocks cross a panel boundary
])
def test_matches_float64_projection(projection, t: int, b: int, i: int, gh: int, blocks: int) -> None:
    g = torch.Generator().manual_seed(t * 1000 + gh)
    x = torch.randn(t, b, i, generator=g)
    w = torch.randn(gh, i, generator=g)
    mask = None if blocks == 1 else (torch.rand(blocks, b, i, generator=g) > 0.3).float() / 0.7
    got = ops.input_projection(x, w, mask)
    assert got.shape == (t, b, gh) and got.dtype == torch.float32
    # float32 accumulation over K terms: a few ulps of the sum of |terms|.
    scale = (x.abs().reshape(t * b, i) @ w.abs().T).reshape(t, b, gh) * (1 if mask is None else 1 / 0.7)
    err = (got.double() - _expected(x, w, mask)).abs()
    assert (err <= 8 * i * 2**-24 * scale.double() + 1e-30).all(), float(err.max())


def test_eager_buffer_path_equals_the_compiled_op(projection) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 4, 11, generator=g)
    w = torch.randn(3 * 13, 11, generator=g)
    mask = (torch.rand(3, 4, 11, generator=g) > 0.5).float() * 2
    eager = autograd.project(x, w, None, mask).clone()  # a view of the reused buffer
    assert torch.equal(eager, ops.input_projection(x, w, mask))
    assert torch.equal(autograd.project(x, w, None, None).clone(), ops.input_projection(x, w, None))


def test_weight_updated_in_place_is_repacked(projection) -> None:
    x = torch.randn(4, 2, 6)
    w = torch.randn(8, 6)
    before = ops.input_projection(x, w, None)
    with torch.no_grad():
        w.mul_(-2.0)  # a new version of the same storage: the cached packing is stale
    after = ops.input_projection(x, w, None)
    torch.testing.assert_close(after, -2.0 * before, rtol=1e-6, atol=1e-6)


def test_transposed_weight_view_is_read_as_its_values(projection) -> None:
    x = torch.randn(3, 2, 5)
    w_t = torch.randn(5, 12)
    got = ops.input_projection(x, w_t.T, None)  # a non-contiguous (12, 5) view
    torch.testing.assert_close(got, x @ w_t, rtol=1e-5, atol=1e-5)


def test_opcheck(projection) -> None:
    x = torch.randn(3, 2, 5)
    w = torch.randn(8, 5)
    mask = torch.ones(2, 2, 5)
    for m in (None, mask):
        torch.library.opcheck(torch.ops.rnndrop.input_projection.default, (x, w, m))


@pytest.mark.parametrize("case", ["x_not_3d", "k_mismatch", "out_too_narrow", "block_past_end", "float64"])
def test_bad_arguments_are_refused(projection, case: str) -> None:
    x = torch.randn(6, 4)
    w = torch.randn(10, 4)
    out = torch.empty(6, 10)
    args = {
        "x_not_3d": lambda: projection.input_projection(x, w, None),
        "k_mismatch": lambda: projection.project_into(x, torch.randn(10, 5), 0, 10, out),
        "out_too_narrow": lambda: projection.project_into(x, w, 0, 10, torch.empty(6, 9)),
        "block_past_end": lambda: projection.project_into(x, w, 6, 5, out),
        "float64": lambda: projection.project_into(x.double(), w.double(), 0, 10, out.double()),
    }[case]
    with pytest.raises(RuntimeError, match="rnndrop"):
        args()
