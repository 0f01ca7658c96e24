"""Bad arguments get a ValueError / TypeError whose message names the argument.

Every check asserts the error type (rnndrop's subclasses of the builtin ones) and that the
argument's name appears as a whole word in the message. Hypothesis draws the bad values where a
whole family of them is bad (probabilities, sizes, lengths, shapes).
"""

from __future__ import annotations

import math
import re
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import rnndrop
from rnndrop import RnnDropTypeError, RnnDropValueError

F64 = torch.float64
LAYERS = [rnndrop.LSTM, rnndrop.GRU, rnndrop.RNN]
FAST = settings(max_examples=25, deadline=None)


def names(argument: str) -> str:
    """A regex matching ``argument`` as a whole name (``dropout`` must not match ``input_dropout``)."""
    return rf"(?<![\w.]){re.escape(argument)}(?!\w)"


def raises_naming(exc: type[Exception], argument: str) -> AbstractContextManager[Any]:
    return pytest.raises(exc, match=names(argument))


# --------------------------------------------------------------------------- constructor
def _bad_probabilities() -> st.SearchStrategy[Any]:
    numbers = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(lambda p: not 0.0 <= p < 1.0),
        st.integers().filter(lambda p: p != 0),
    )
    others = st.one_of(st.booleans(), st.none(), st.text(max_size=3), st.just([0.5]), st.just(torch.tensor(0.5)))
    return st.one_of(numbers, others)


@pytest.mark.parametrize("argument", ["dropout", "input_dropout", "recurrent_dropout"])
@given(value=_bad_probabilities(), cls=st.sampled_from(LAYERS))
@FAST
def test_bad_probabilities(argument, value, cls):
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    # torch.nn's own between-layer `dropout` accepts 1 (everything dropped); the time-locked rates cannot.
    interval = "[0, 1]" if argument == "dropout" else "[0, 1)"
    if argument == "dropout" and numeric and value == 1:
        assert cls(3, 4, num_layers=2, dropout=value).dropout == 1.0
        return
    with raises_naming(RnnDropValueError if numeric else RnnDropTypeError, argument) as err:
        cls(3, 4, num_layers=2, **{argument: value})
    if numeric and not math.isnan(value):
        assert interval in str(err.value)
    if not numeric:  # torch.nn raises ValueError for a dropout that is not a number: so does rnndrop
        assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("argument", ["dropout", "input_dropout", "recurrent_dropout"])
def test_valid_probability_edges(argument):
    layer = rnndrop.GRU(3, 4, num_layers=2, **{argument: 0})
    assert getattr(layer, argument) == 0.0 and isinstance(getattr(layer, argument), float)
    assert getattr(rnndrop.GRU(3, 4, num_layers=2, **{argument: 0.999}), argument) == 0.999
    # Any real number, as torch.nn accepts: numpy scalars from configs or sweeps included.
    assert getattr(rnndrop.GRU(3, 4, num_layers=2, **{argument: np.float32(0.25)}), argument) == 0.25
    with raises_naming(RnnDropTypeError, argument):
        rnndrop.GRU(3, 4, num_layers=2, **{argument: np.bool_(False)})


@given(
    argument=st.sampled_from(["input_size", "hidden_size", "num_layers"]),
    value=st.one_of(st.integers(max_value=0), st.floats(), st.booleans(), st.text(max_size=2), st.none()),
    cls=st.sampled_from(LAYERS),
)
@FAST
def test_bad_sizes(argument, value, cls):
    kwargs = {"input_size": 3, "hidden_size": 4, "num_layers": 1, argument: value}
    is_int = isinstance(value, int) and not isinstance(value, bool)
    with raises_naming(RnnDropValueError if is_int else RnnDropTypeError, argument):
        cls(**kwargs)


@pytest.mark.parametrize("proj_size, exc", [(4, RnnDropValueError), (7, RnnDropValueError), (-1, RnnDropValueError),
                                            (1.5, RnnDropTypeError), (True, RnnDropTypeError)])
def test_bad_proj_size(proj_size, exc):
    with raises_naming(exc, "proj_size"):
        rnndrop.LSTM(3, 4, proj_size=proj_size)


def test_proj_size_only_for_lstm():
    with raises_naming(RnnDropValueError, "proj_size"):
        rnndrop.RecurrentBase("GRU", 3, 4, proj_size=2)


@pytest.mark.parametrize("value", ["tied", "PER_GATE", None, 1])
def test_bad_gate_masks(value):
    with raises_naming(RnnDropValueError, "gate_masks") as err:
        rnndrop.LSTM(3, 4, gate_masks=value)
    assert "per_gate" in str(err.value)


@pytest.mark.parametrize(
    "cls, argument",
    [(rnndrop.LSTM, "activation"), (rnndrop.LSTM, "recurrent_activation"), (rnndrop.GRU, "activation"),
     (rnndrop.GRU, "recurrent_activation"), (rnndrop.RNN, "nonlinearity")],
)
def test_unknown_activation_names(cls, argument):
    with raises_naming(RnnDropValueError, argument):
        cls(3, 4, **{argument: "leaky"})
    with raises_naming(RnnDropTypeError, argument):
        cls(3, 4, **{argument: torch.tanh})


@pytest.mark.parametrize("cls", LAYERS)
def test_bad_dtype_and_generator(cls):
    with raises_naming(RnnDropTypeError, "dtype"):
        cls(3, 4, dtype=torch.int64)
    with raises_naming(RnnDropTypeError, "generator"):
        cls(3, 4, generator=0)


# --------------------------------------------------------------------------- forward: input
def _layer(cls=rnndrop.LSTM, **kw):
    return cls(3, 4, num_layers=2, bidirectional=True, dtype=F64, **kw)


@given(rank=st.sampled_from([0, 1, 4, 5]), cls=st.sampled_from(LAYERS))
@FAST
def test_wrong_input_rank(rank, cls):
    with raises_naming(RnnDropValueError, "input") as err:
        _layer(cls)(torch.zeros((2,) * (rank - 1) + (3,) if rank else (), dtype=F64))
    assert f"{rank}-D" in str(err.value)


@given(features=st.integers(1, 9).filter(lambda f: f != 3), batched=st.booleans(), cls=st.sampled_from(LAYERS))
@FAST
def test_wrong_feature_size(features, batched, cls):
    x = torch.zeros((5, 2, features) if batched else (5, features), dtype=F64)
    with raises_naming(RnnDropValueError, "input_size") as err:
        _layer(cls)(x)
    assert re.search(names("input"), str(err.value)) and str(features) in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_non_floating_input(dtype):
    with raises_naming(RnnDropTypeError, "input"):
        _layer()(torch.zeros(5, 2, 3, dtype=dtype))


def test_input_dtype_mismatch_and_type():
    with raises_naming(RnnDropTypeError, "input") as err:
        _layer()(torch.zeros(5, 2, 3, dtype=torch.float32))
    assert "float64" in str(err.value)
    with raises_naming(RnnDropTypeError, "input"):
        _layer()([[0.0, 0.0, 0.0]])
    with raises_naming(RnnDropValueError, "input"):
        _layer()(torch.zeros(0, 2, 3, dtype=F64))


# --------------------------------------------------------------------------- forward: states
@given(
    which=st.sampled_from(["h_0", "c_0"]),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 5)).filter(lambda s: s != (4, 2, 4)),
)
@FAST
def test_lstm_state_wrong_shape(which, shape):
    good = torch.zeros(4, 2, 4, dtype=F64)
    bad = torch.zeros(shape, dtype=F64)
    hx = (bad, good) if which == "h_0" else (good, bad)
    with raises_naming(RnnDropValueError, which) as err:
        _layer()(torch.zeros(5, 2, 3, dtype=F64), hx)
    assert "(4, 2, 4)" in str(err.value)


@pytest.mark.parametrize("cls", [rnndrop.GRU, rnndrop.RNN])
def test_hx_wrong_shape_dtype_type(cls):
    x = torch.zeros(5, 2, 3, dtype=F64)
    with raises_naming(RnnDropValueError, "hx"):
        _layer(cls)(x, torch.zeros(2, 2, 4, dtype=F64))
    with raises_naming(RnnDropValueError, "hx"):  # batched state with unbatched input
        _layer(cls)(x[:, 0], torch.zeros(4, 2, 4, dtype=F64))
    with raises_naming(RnnDropTypeError, "hx"):
        _layer(cls)(x, torch.zeros(4, 2, 4, dtype=torch.float32))
    with raises_naming(RnnDropTypeError, "hx"):
        _layer(cls)(x, (torch.zeros(4, 2, 4, dtype=F64),))


def test_lstm_hx_not_a_pair_and_wrong_dtype():
    x = torch.zeros(5, 2, 3, dtype=F64)
    h = torch.zeros(4, 2, 4, dtype=F64)
    for bad in (h, (h,), (h, h, h), [h]):
        with raises_naming(RnnDropTypeError, "hx"):
            _layer()(x, bad)
    with raises_naming(RnnDropTypeError, "c_0"):
        _layer()(x, (h, h.float()))
    with raises_naming(RnnDropTypeError, "h_0"):
        _layer()(x, ([[0.0]], h))


# --------------------------------------------------------------------------- forward: step mask, lengths
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=3).filter(lambda s: s != [2, 5]))
@FAST
def test_step_mask_wrong_shape(shape):
    with raises_naming(RnnDropValueError, "step_mask") as err:
        _layer()(torch.zeros(5, 2, 3, dtype=F64), step_mask=torch.ones(shape, dtype=torch.bool))
    assert "(2, 5)" in str(err.value)


@pytest.mark.parametrize("mask", [torch.ones(2, 5), torch.ones(2, 5, dtype=torch.int64), [[True] * 5] * 2])
def test_step_mask_wrong_dtype_or_type(mask):
    with raises_naming(RnnDropTypeError, "step_mask"):
        _layer()(torch.zeros(5, 2, 3, dtype=F64), step_mask=mask)


def test_step_mask_and_lengths_exclusive_and_not_with_packed():
    x = torch.zeros(5, 2, 3, dtype=F64)
    with pytest.raises(RnnDropValueError, match=names("step_mask")) as err:
        _layer()(x, step_mask=torch.ones(2, 5, dtype=torch.bool), lengths=torch.tensor([5, 5]))
    assert re.search(names("lengths"), str(err.value))
    packed = pack_padded_sequence(x, torch.tensor([5, 3]))
    for kw in ({"step_mask": torch.ones(2, 5, dtype=torch.bool)}, {"lengths": torch.tensor([5, 3])}):
        with raises_naming(RnnDropValueError, next(iter(kw))):
            _layer()(packed, **kw)


@given(lengths=st.lists(st.integers(-3, 9), min_size=2, max_size=2).filter(lambda v: min(v) < 0 or max(v) > 5))
@FAST
def test_lengths_out_of_range(lengths):
    with raises_naming(RnnDropValueError, "lengths") as err:
        _layer()(torch.zeros(5, 2, 3, dtype=F64), lengths=torch.tensor(lengths))
    assert "[0, 5]" in str(err.value)


@pytest.mark.parametrize("lengths", [torch.tensor([5.0, 3.0]), torch.tensor([True, True]), [2.5, 1.0]])
def test_lengths_not_integers(lengths):
    with raises_naming(RnnDropTypeError, "lengths"):
        _layer()(torch.zeros(5, 2, 3, dtype=F64), lengths=lengths)


@pytest.mark.parametrize("lengths", [torch.tensor([5, 3, 1]), torch.tensor([[5, 3]]), torch.tensor(5)])
def test_lengths_wrong_shape(lengths):
    with raises_naming(RnnDropValueError, "lengths"):
        _layer()(torch.zeros(5, 2, 3, dtype=F64), lengths=lengths)


def test_lengths_as_list_accepted():
    out, _ = _layer()(torch.ones(5, 2, 3, dtype=F64), lengths=[5, 2])
    assert torch.equal(out[2:, 1], torch.zeros(3, 8, dtype=F64))


# --------------------------------------------------------------------------- forward: masks and generator
def test_bad_dropout_masks_and_generator():
    layer = _layer(input_dropout=0.5)
    x = torch.zeros(5, 2, 3, dtype=F64)
    with raises_naming(RnnDropTypeError, "dropout_masks"):
        layer(x, dropout_masks={"input": None})
    wrong_batch = layer.sample_masks(3, 5)
    with raises_naming(RnnDropValueError, r"dropout_masks.layers[0][0].input"):
        layer(x, dropout_masks=wrong_batch)
    with raises_naming(RnnDropTypeError, "generator"):
        layer(x, generator=1)


# --------------------------------------------------------------------------- forward: what used to be raw torch errors
# Each row: what a user does, the error class, the argument the message must name. Before issue 12 these
# surfaced as torch's own messages ("m1 and m2 must have the same dtype", "Cannot copy out of meta
# tensor") or were accepted silently (NaN masks). Meta tensors stand in for "another device" on this
# CPU-only machine: the checks compare devices, whatever they are.
def _convert_param(name: str, **to: Any):
    def apply(layer):
        setattr(layer, name, torch.nn.Parameter(getattr(layer, name).detach().to(**to)))
    return apply


def _mask_edit(path: tuple[int, int, str] | int, edit):
    """Replace one mask of a freshly sampled DropoutMasks by ``edit(mask)``."""
    def apply(layer, masks: rnndrop.DropoutMasks) -> rnndrop.DropoutMasks:
        if isinstance(path, int):
            between = list(masks.between)
            between[path] = edit(between[path])
            return rnndrop.DropoutMasks(masks.layers, tuple(between))
        k, d, name = path
        layers = [list(dirs) for dirs in masks.layers]
        layers[k][d] = replace(layers[k][d], **{name: edit(getattr(layers[k][d], name))})
        return rnndrop.DropoutMasks(tuple(tuple(dirs) for dirs in layers), masks.between)
    return apply


def _nan_at_end(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[-1] = float("nan")
    return t


def _inf_at_start(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[0] = float("inf")
    return t


PARAMETER_ROWS = [
    ("weight_hh_l0 converted to float32", _convert_param("weight_hh_l0", dtype=torch.float32), RnnDropTypeError,
     "weight_hh_l0"),
    ("bias_ih_l1_reverse converted to float32", _convert_param("bias_ih_l1_reverse", dtype=torch.float32),
     RnnDropTypeError, "bias_ih_l1_reverse"),
    ("weight_ih_l0 (the first) converted to float32", _convert_param("weight_ih_l0", dtype=torch.float32),
     RnnDropTypeError, "weight_ih_l0"),
    ("weight_hh_l1 moved to another device", _convert_param("weight_hh_l1", device="meta"), RnnDropValueError,
     "weight_hh_l1"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("what, edit, exc, argument", PARAMETER_ROWS, ids=[r[0] for r in PARAMETER_ROWS])
def test_one_parameter_converted_after_construction(backend, what, edit, exc, argument):
    layer = _layer(input_dropout=0.2, recurrent_dropout=0.2, backend=backend)
    edit(layer)
    with raises_naming(exc, argument) as err:
        layer(torch.zeros(5, 2, 3, dtype=F64))
    assert "float64" in str(err.value) or "cpu" in str(err.value)  # the expected value: the input's


MASK_ROWS = [
    ("recurrent mask of another dtype", (0, 1, "recurrent"), lambda t: t.float(), RnnDropTypeError, "float64"),
    ("input mask on another device", (1, 0, "input"), lambda t: t.to("meta"), RnnDropValueError, "cpu"),
    ("weight_hh mask holding NaN", (0, 0, "weight_hh"), _nan_at_end, RnnDropValueError, "finite"),
    ("recurrent mask holding inf", (1, 1, "recurrent"), _inf_at_start, RnnDropValueError, "finite"),
    ("between mask holding NaN", 0, _nan_at_end, RnnDropValueError, "finite"),
    ("between mask of another dtype", 0, lambda t: t.float(), RnnDropTypeError, "float64"),
    ("integer mask", (0, 0, "input"), lambda t: t.long(), RnnDropTypeError, "float64"),
]


@pytest.mark.parametrize("what, path, edit, exc, expected", MASK_ROWS, ids=[r[0] for r in MASK_ROWS])
def test_bad_dropout_mask_values_dtype_device(what, path, edit, exc, expected):
    layer = _layer(input_dropout=0.2, recurrent_dropout=0.2, weight_dropout=0.2, dropout=0.3)
    masks = _mask_edit(path, edit)(layer, layer.sample_masks(2, 5))
    if isinstance(path, int):
        name = f"dropout_masks.between[{path}]"
    else:
        name = f"dropout_masks.layers[{path[0]}][{path[1]}].{path[2]}"
    for mode in ("train", "eval"):  # injected masks are used (so checked) in either mode
        getattr(layer, mode)()
        with raises_naming(exc, name) as err:
            layer(torch.zeros(5, 2, 3, dtype=F64), dropout_masks=masks)
        assert expected in str(err.value)


def test_step_mask_and_lengths_on_another_device():
    x = torch.zeros(5, 2, 3, dtype=F64)
    with raises_naming(RnnDropValueError, "step_mask") as err:
        _layer()(x, step_mask=torch.ones(2, 5, dtype=torch.bool, device="meta"))
    assert "cpu" in str(err.value)
    with raises_naming(RnnDropValueError, "lengths") as err:
        _layer()(x, lengths=torch.tensor([5, 3], device="meta"))
    assert "cpu" in str(err.value)


def test_cpu_step_mask_and_lengths_follow_the_input_device():
    # Documented: a CPU step mask or lengths is moved to the input's device (torch's packing takes CPU lengths).
    layer = _layer().to("meta")
    x = torch.zeros(5, 2, 3, dtype=F64, device="meta")
    for kw in ({"step_mask": torch.ones(2, 5, dtype=torch.bool)}, {"lengths": torch.tensor([5, 3])}):
        out, (h, _) = layer(x, **kw)
        assert out.device.type == h.device.type == "meta" and out.shape == (5, 2, 8)


# Modifying the input or an initial state in place between forward and backward: torch's version-counter
# error on every backend (the fused kernels need the saved tensors; the reference saves them for this
# check, see reference._CallerTensorsUnchanged), as torch.nn.LSTM does, never a silent success on one.
@pytest.mark.parametrize("backend", ["auto", "torch", "reference"])
@pytest.mark.parametrize("cls", LAYERS)
@pytest.mark.parametrize("which", ["input", "h_0"])
@pytest.mark.parametrize("input_requires_grad", [False, True])
def test_in_place_modification_before_backward_fails_on_every_backend(backend, cls, which, input_requires_grad):
    # torch's own kernels take no recurrent mask; "auto" with these masks runs the fused kernel when built.
    dropout = {} if backend == "torch" else {"input_dropout": 0.3, "recurrent_dropout": 0.3}
    layer = cls(3, 4, dtype=F64, backend=backend, **dropout)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=input_requires_grad)
    h = torch.randn(1, 2, 4, dtype=F64)
    hx = (h, torch.zeros(1, 2, 4, dtype=F64)) if cls is rnndrop.LSTM else h
    out, _ = layer(x, hx)
    with torch.no_grad():
        (x if which == "input" else h).add_(1.0)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation|modified inplace"):
        out.sum().backward()
