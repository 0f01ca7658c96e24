"""Conversion between rnndrop and other frameworks' recurrent layers (framework imports stay optional)."""

from .awd import awd_lstm_state_dict
from .keras import KerasBidirectional, KerasRecurrent, from_keras, to_keras

__all__ = ["KerasBidirectional", "KerasRecurrent", "awd_lstm_state_dict", "from_keras", "to_keras"]
