import os

# Keras (a test dependency for parity tests) must run on the torch backend; set before any import.
os.environ.setdefault("KERAS_BACKEND", "torch")
