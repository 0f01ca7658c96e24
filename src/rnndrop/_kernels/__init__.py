"""Fast paths for the recurrences: registry, lazy loader and autograd wrappers.

Nothing here imports the compiled extension at import time; :mod:`.loader` loads it on first
use and never raises (a missing or broken build is a *reason*, reported by the registry).
The C++ sources are under ``csrc/``; ``python -m rnndrop._kernels.build`` compiles them.
"""

from __future__ import annotations

from .registry import BACKENDS, KERNELS, Kernel, cpu_ineligible, select_direction_fn

__all__ = ["BACKENDS", "KERNELS", "Kernel", "cpu_ineligible", "select_direction_fn"]
