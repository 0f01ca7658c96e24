"""Conversion between rnndrop and other frameworks' recurrent layers (framework imports stay optional)."""

from .keras import KerasBidirectional, KerasRecurrent, from_keras, to_keras

__all__ = ["KerasBidirectional", "KerasRecurrent", "from_keras", "to_keras"]
