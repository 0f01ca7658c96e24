"""rnndrop: PyTorch LSTM / GRU / RNN with every kind of recurrent dropout, Keras-exact."""

from .errors import KernelUnavailableError, RnnDropTypeError, RnnDropValueError
from .layers import GRU, LSTM, RNN, RecurrentBase
from .masks import DirectionMasks, DropoutMasks, MaskSpec

__version__ = "0.1.0"

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "DirectionMasks",
    "DropoutMasks",
    "KernelUnavailableError",
    "MaskSpec",
    "RecurrentBase",
    "RnnDropTypeError",
    "RnnDropValueError",
    "__version__",
]
