"""``rnndrop.from_keras`` on Keras 3 ``Dropout`` (with ``noise_shape``) and ``SpatialDropout1D`` layers.

Masks cannot be compared draw for draw (Keras and rnndrop use different RNG streams), so both sides are
checked for the same law: values in {0, 1/(1-p)}, constant along the shared axes, and a drop rate within
SIGMAS binomial standard deviations of ``rate``; and identity in eval mode.
"""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import torch

import rnndrop

SIGMAS = 6.0


def serialized(layer: keras.layers.Layer) -> dict:
    # Through JSON, as a .keras file stores it (tuples become lists).
    return json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))


def to_np(t: torch.Tensor) -> np.ndarray:
    # On the torch backend Keras layers return torch tensors.
    return t.detach().cpu().numpy()


def check_law(out: np.ndarray, p: float, shared_axes: tuple[int, ...]) -> None:
    scale = np.float32(1 / (1 - p))
    assert np.isin(out, [0.0, scale]).all(), "entries must be 0 or 1/(1-p)"
    for axis in shared_axes:
        first = np.take(out, [0], axis=axis)
        assert (out == first).all(), f"mask must be constant along axis {axis}"
    draws = out[tuple(slice(0, 1) if a in shared_axes else slice(None) for a in range(out.ndim))] == 0
    tol = SIGMAS * math.sqrt(p * (1 - p) / draws.size)
    assert abs(draws.mean() - p) <= tol, f"drop rate {draws.mean():.4f} vs {p} (tolerance {tol:.4f})"


@pytest.mark.parametrize(
    ("noise_shape", "shared"),
    [(None, ()), ((None, 1, None), (1,)), ((None, None, 1), (2,)), ((1, None, 48), (0,))],
)
def test_keras_dropout_noise_shape(noise_shape, shared) -> None:
    p = 0.35
    layer = keras.layers.Dropout(p, noise_shape=noise_shape, seed=1)
    module = rnndrop.from_keras(serialized(layer), [])
    assert isinstance(module, rnndrop.Dropout) and not module.training
    assert module.p == p and module.noise_shape == (None if noise_shape is None else tuple(noise_shape))
    x = np.ones((40, 30, 48), dtype="float32")
    check_law(to_np(layer(x, training=True)), p, shared)  # Keras's own law ...
    module.train()
    check_law(module(torch.from_numpy(x)).numpy(), p, shared)  # ... is rnndrop's
    xr = np.random.default_rng(0).standard_normal((4, 5, 48)).astype("float32")
    module.eval()
    np.testing.assert_array_equal(module(torch.from_numpy(xr)).numpy(), to_np(layer(xr)))


def test_keras_spatial_dropout_1d() -> None:
    p = 0.25
    layer = keras.layers.SpatialDropout1D(p)
    module = rnndrop.from_keras(serialized(layer), [])
    assert isinstance(module, rnndrop.SpatialDropout1d) and module.batch_first and module.p == p
    x = np.ones((64, 20, 40), dtype="float32")
    check_law(to_np(layer(x, training=True)), p, (1,))
    check_law(module.train()(torch.from_numpy(x)).numpy(), p, (1,))
    xr = np.random.default_rng(1).standard_normal((3, 7, 40)).astype("float32")
    np.testing.assert_array_equal(module.eval()(torch.from_numpy(xr)).numpy(), to_np(layer(xr)))


def test_keras_dropout_errors() -> None:
    cfg = serialized(keras.layers.Dropout(0.5, noise_shape=(None, 1, None)))
    with pytest.raises(ValueError, match="weights must be empty for a Keras Dropout"):
        rnndrop.from_keras(cfg, [np.zeros(3)])
    bad = json.loads(json.dumps(cfg))
    bad["config"]["rate"] = 1.0
    with pytest.raises(ValueError, match=r"\['rate'\] must be in \[0, 1\)"):
        rnndrop.from_keras(bad, [])
    bad["config"].update(rate=0.5, noise_shape=[None, 0, None])
    with pytest.raises(ValueError, match=r"\['noise_shape'\]\[1\] must be None or an int >= 1"):
        rnndrop.from_keras(bad, [])
    bad["config"].update(noise_shape=None, mystery=1)
    with pytest.warns(UserWarning, match="mystery"):
        rnndrop.from_keras(bad, [])
