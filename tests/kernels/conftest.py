"""Kernel tests need the compiled extension (``make test`` builds it first; the ``kernel`` fixture: tests/conftest.py).

With ``CI`` or ``RNNDROP_REQUIRE_KERNELS`` set (``make test`` sets the latter), a missing extension
fails these tests (the suite must not pass by skipping the fast path); otherwise they skip with the
loader's reason (tests/kernel_policy.py).
"""

from __future__ import annotations

from triton_support import triton_device  # noqa: F401  (the Triton tests' device fixture)
