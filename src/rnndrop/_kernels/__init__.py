"""Fast paths for the recurrences: registry, lazy loader and autograd wrappers.

Nothing here imports the compiled extension or ``triton`` at import time; :mod:`.loader` and
:mod:`.triton_autograd` load them on first use and never raise (a missing or broken build, or a
missing ``triton``, is a *reason*, reported by the registry).
The C++ sources are under ``csrc/``; the first call that needs them compiles them into the per-user
kernel cache (:mod:`.build`, :mod:`.cache`), or ``rnndrop build-kernels`` does ahead of time.
"""

from __future__ import annotations

from .registry import BACKENDS, KERNELS, Kernel, cpu_ineligible, select_stack_fn, triton_ineligible

__all__ = ["BACKENDS", "KERNELS", "Kernel", "cpu_ineligible", "select_stack_fn", "triton_ineligible"]
