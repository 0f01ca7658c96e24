"""Fast paths for the recurrences: registry, lazy loader and autograd wrappers.

Nothing here imports the compiled extension or ``triton`` at import time; :mod:`.loader` and
:mod:`.triton_autograd` load them on first use and never raise (a missing or broken build, or a
missing ``triton``, is a *reason*, reported by the registry).
The C++ sources are under ``csrc/``; ``python -m rnndrop._kernels.build`` compiles them.
"""

from __future__ import annotations

from .registry import BACKENDS, KERNELS, Kernel, cpu_ineligible, select_stack_fn, triton_ineligible

__all__ = ["BACKENDS", "KERNELS", "Kernel", "cpu_ineligible", "select_stack_fn", "triton_ineligible"]
