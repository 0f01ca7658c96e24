"""Kernel tests need the compiled extension (``make test`` builds it first).

With ``CI`` or ``RNNDROP_REQUIRE_KERNELS`` set (``make test`` sets the latter), a missing extension
fails these tests (the suite must not pass by skipping the fast path); otherwise they skip with the
loader's reason (tests/kernel_policy.py).
"""

from __future__ import annotations

import pytest
from kernel_policy import skip_or_fail
from triton_support import triton_device  # noqa: F401  (the Triton tests' device fixture)

from rnndrop._kernels import loader


@pytest.fixture(scope="session")
def kernel():
    """The loaded extension module; fails (``make test``, CI) or skips (elsewhere) when it is unavailable."""
    module = loader.load()
    if module is None:
        skip_or_fail(f"CPU extension unavailable: {loader.unavailable_reason()}")
    return module
