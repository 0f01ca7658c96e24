"""Helpers for the Triton-path tests (not a test module): where the kernels run, and how to get them.

The ``triton_device`` fixture is parametrised over ``cpu`` and ``cuda``:

* ``cpu`` runs the kernels under Triton's interpreter on CPU tensors. Triton decides compiled vs
  interpreted when the kernels are first decorated, i.e. when rnndrop first loads them, so the
  fixture sets ``TRITON_INTERPRET=1`` for the test (monkeypatch: the rest of the suite never
  sees it) before that. On a machine with a GPU the process keeps the kernels compiled for the
  CUDA tests, and the ``cpu`` cases skip unless ``TRITON_INTERPRET=1`` was set for the run.
* ``cuda`` runs them compiled on the GPU; it skips without one.

Inside a test, only the Triton entry of ``registry.KERNELS`` is left (so ``backend="fused"``
means Triton even where the CPU extension would take the call) and CPU tensors are opted in.
A missing ``triton`` skips, or fails under ``CI`` / ``RNNDROP_REQUIRE_KERNELS`` like the CPU
extension's tests (``triton`` is in the test extra).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from kernel_policy import kernels_required

from rnndrop._kernels import registry, triton_autograd


def _interpreter_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


@pytest.fixture(params=["cpu", "cuda"])
def triton_device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    device: str = request.param
    if device == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
    elif torch.cuda.is_available() and not _interpreter_requested():
        pytest.skip("a GPU is present: this process runs the kernels compiled (run with TRITON_INTERPRET=1 "
                    "for the interpreter checks)")
    else:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = triton_autograd.kernels()
    if module is None:
        reason = f"Triton kernels unavailable: {triton_autograd.unavailable_reason(device)}"
        if kernels_required():
            pytest.fail(reason + " (required because CI / RNNDROP_REQUIRE_KERNELS is set)")
        pytest.skip(reason)
    if device == "cuda" and module.INTERPRETED:
        pytest.skip("the kernels were loaded by Triton's interpreter in this process (TRITON_INTERPRET=1)")
    if device == "cpu" and not module.INTERPRETED:
        reason = "the kernels were loaded compiled in this process; the interpreter run needs TRITON_INTERPRET=1"
        if kernels_required() and not torch.cuda.is_available():
            pytest.fail(reason + " (without a GPU these are the only Triton checks: something loaded them too early)")
        pytest.skip(reason)
    monkeypatch.setattr(registry, "KERNELS", tuple(k for k in registry.KERNELS if k.name == "triton"))
    with triton_autograd.cpu_interpreter():
        yield device
