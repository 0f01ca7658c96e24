"""Fast paths for the recurrences: registry, lazy loader and autograd wrappers.

Nothing here imports the compiled extension or ``triton`` at import time; :mod:`.loader` and
:mod:`.triton_autograd` load them on first use and never raise (a missing or broken build, or a
missing ``triton``, is a *reason*, reported by the registry).
The C++ sources are under ``csrc/``; the first call that needs them compiles them into the per-user
kernel cache (:mod:`.build`, :mod:`.cache`), or ``rnndrop build-kernels`` does ahead of time.
"""

from __future__ import annotations

from .. import counter_rng
from .registry import BACKENDS, KERNELS, Kernel, cpu_ineligible, select_stack_fn, triton_ineligible
from .triton_autograd import keyed_draws_on_device

# The masks' draws on CUDA tensors in one Triton launch each (loads triton on the first CUDA draw only).
counter_rng.register_fast_sampler(keyed_draws_on_device, "cuda")

__all__ = ["BACKENDS", "KERNELS", "Kernel", "cpu_ineligible", "select_stack_fn", "triton_ineligible"]
