"""Error types of rnndrop.

Argument errors are plain ``ValueError`` / ``TypeError`` subclasses so that callers
catching the builtin types keep working; messages always name the argument and say
what was expected and what was given.
"""

from __future__ import annotations


class RnnDropValueError(ValueError):
    """An argument has the right type but an unusable value (shape, range, name)."""


class RnnDropTypeError(TypeError):
    """An argument has the wrong type or dtype."""


class KernelUnavailableError(RuntimeError):
    """A fast kernel was requested explicitly but cannot run for this call (the message says why)."""


class KernelFallbackWarning(RuntimeWarning):
    """A compiled kernel is missing, so the slower reference path runs (issued once per process).

    Silence it with ``warnings.filterwarnings("ignore", category=rnndrop.KernelFallbackWarning)``,
    or choose the reference path on purpose with ``RNNDROP_DISABLE_KERNELS=1``.
    """
