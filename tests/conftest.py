import os

import pytest

# Keras (a test dependency for parity tests) must run on the torch backend; set before any import.
os.environ.setdefault("KERAS_BACKEND", "torch")
# backend="auto" measures which exact kernel is faster on first calls (rnndrop._kernels.autotune): a choice
# that could flip with the machine's load. Tests see the static rule; tests of the measurement turn it on.
os.environ.setdefault("RNNDROP_AUTOTUNE", "0")


@pytest.fixture(scope="session")
def kernel():
    """The loaded CPU extension; fails (``make test``, CI) or skips (elsewhere) when it is unavailable.

    With ``CI`` or ``RNNDROP_REQUIRE_KERNELS`` set (``make test`` sets the latter), a missing extension
    fails the tests that ask for it (the suite must not pass by skipping the fast path); otherwise they
    skip with the loader's reason (tests/kernel_policy.py).
    """
    from kernel_policy import skip_or_fail

    from rnndrop._kernels import loader

    module = loader.load()
    if module is None:
        skip_or_fail(f"CPU extension unavailable: {loader.unavailable_reason()}")
    return module
