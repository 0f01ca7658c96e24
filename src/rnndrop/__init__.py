"""rnndrop: PyTorch LSTM / GRU / RNN with every kind of recurrent dropout, Keras-exact."""

from . import init as init  # the rnndrop.init module (initialisation schemes)
from ._version import __version__
from .dropout import (
    Dropout,
    EmbeddingDropout,
    LockedDropout,
    SpatialDropout1d,
    SpatialDropout2d,
    SpatialDropout3d,
    embedding_dropout,
)
from .errors import (
    KernelFallbackWarning,
    KernelUnavailableError,
    RnnDropArgumentTypeError,
    RnnDropDtypeError,
    RnnDropShapeError,
    RnnDropTypeError,
    RnnDropValueError,
)
from .inference import MCPrediction, mc_dropout, mc_predict
from .interop import from_keras, to_keras
from .layers import GRU, LSTM, RNN, RecurrentBase
from .masks import DirectionMasks, DropoutMasks, MaskSpec

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "DirectionMasks",
    "Dropout",
    "DropoutMasks",
    "EmbeddingDropout",
    "KernelFallbackWarning",
    "KernelUnavailableError",
    "LockedDropout",
    "MCPrediction",
    "MaskSpec",
    "RecurrentBase",
    "RnnDropArgumentTypeError",
    "RnnDropDtypeError",
    "RnnDropShapeError",
    "RnnDropTypeError",
    "RnnDropValueError",
    "SpatialDropout1d",
    "SpatialDropout2d",
    "SpatialDropout3d",
    "__version__",
    "embedding_dropout",
    "from_keras",
    "mc_dropout",
    "mc_predict",
    "to_keras",
]
