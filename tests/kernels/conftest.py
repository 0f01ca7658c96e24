"""Kernel tests need the compiled extension (``make test`` builds it first).

With ``CI`` or ``RNNDROP_REQUIRE_KERNELS`` set, a missing extension fails these tests (CI must
not pass by skipping the fast path); otherwise they skip with the loader's reason.
"""

from __future__ import annotations

import os

import pytest
from triton_support import triton_device  # noqa: F401  (the Triton tests' device fixture)

from rnndrop._kernels import loader


def kernels_required() -> bool:
    return any(os.environ.get(v, "").lower() not in ("", "0", "false") for v in ("CI", "RNNDROP_REQUIRE_KERNELS"))


@pytest.fixture(scope="session")
def kernel():
    """The loaded extension module; fails (CI) or skips (elsewhere) when it is unavailable."""
    module = loader.load()
    if module is None:
        reason = f"CPU extension unavailable: {loader.unavailable_reason()}"
        if kernels_required():
            pytest.fail(reason + " (required because CI / RNNDROP_REQUIRE_KERNELS is set)")
        pytest.skip(reason)
    return module
