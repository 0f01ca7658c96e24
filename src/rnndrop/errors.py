"""Error types of rnndrop.

Argument errors are plain ``ValueError`` / ``TypeError`` subclasses so that callers
catching the builtin types keep working; messages always name the argument and say
what was expected and what was given.

Where ``torch.nn.LSTM/GRU/RNN`` raise a different builtin class for the same mistake, the error is
also an instance of torch's class and its message includes torch's text, so code written against
torch.nn (``except RuntimeError``, ``assertRaisesRegex``) keeps working with rnndrop's layers:

* :class:`RnnDropShapeError` (also ``ValueError`` and ``RuntimeError``): ``hx`` or input sizes,
  sequence length 0 (torch.nn: ``RuntimeError``);
* :class:`RnnDropDtypeError` (also ``TypeError``, ``ValueError`` and ``RuntimeError``): input vs weight
  dtype (torch.nn: ``ValueError``), state vs input dtype (``RuntimeError``);
* :class:`RnnDropArgumentTypeError` (also ``TypeError`` and ``ValueError``): a dropout rate that is not
  a number (torch.nn: ``ValueError``).
"""

from __future__ import annotations


class RnnDropValueError(ValueError):
    """An argument has the right type but an unusable value (shape, range, name)."""


class RnnDropTypeError(TypeError):
    """An argument has the wrong type or dtype."""


class RnnDropShapeError(RnnDropValueError, RuntimeError):
    """A tensor's size or rank does not fit the layer (torch.nn raises ``RuntimeError`` for these)."""


class RnnDropDtypeError(RnnDropTypeError, ValueError, RuntimeError):
    """A tensor's dtype does not fit the layer (torch.nn raises ``ValueError`` or ``RuntimeError``)."""


class RnnDropArgumentTypeError(RnnDropTypeError, ValueError):
    """An argument of the wrong type where torch.nn raises ``ValueError`` (e.g. ``dropout="0.2"``)."""


class KernelUnavailableError(RuntimeError):
    """A fast kernel was requested explicitly but cannot run for this call (the message says why)."""


class KernelFallbackWarning(RuntimeWarning):
    """A compiled kernel is missing, so the slower reference path runs (issued once per process).

    Silence it with ``warnings.filterwarnings("ignore", category=rnndrop.KernelFallbackWarning)``,
    or choose the reference path on purpose with ``RNNDROP_DISABLE_KERNELS=1``.
    """
