"""``rnndrop.from_keras`` / ``to_keras`` against real Keras 3 layers (torch backend): forward and gradients.

Every case builds a Keras layer, gives it random weights, serialises it (through JSON, as a ``.keras`` file
stores it), converts it and compares outputs and the gradients w.r.t. the input, the initial states and all
weights (Keras's own autograd graph: its variables are torch tensors on this backend).

Float64 note: Keras >= 3.12 maps float64 type promotion to float32 on torch, so ``keras.ops.matmul`` of two
float64 tensors computes in float32 (its fused LSTM/GRU loops use torch.matmul and stay float64). The grid
below undoes that mapping (one dict entry, test-only) so that Keras computes truly in float64 and parity can
be asserted to ``EXACT_TOL``; ``test_unpatched_keras_float64`` checks stock Keras at the issue's 1e-5.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import keras
import numpy as np
import pytest
import torch
from keras.src.backend.common import dtypes as keras_dtypes

import rnndrop
from rnndrop import DirectionMasks, DropoutMasks
from rnndrop.activations import ACTIVATIONS
from rnndrop.interop import KerasBidirectional, KerasRecurrent

F64 = torch.float64
EXACT_TOL = 1e-10  # Keras in true float64: only summation-order rounding differs
# torch's hardsigmoid backward (which Keras's hard_sigmoid uses) multiplies by the float32 constant 1/6 even in
# float64: a relative gradient error of 3e-8 on Keras's side; rnndrop's clamp(x/6 + 1/2) is exact.
HARD_SIGMOID_GRAD_TOL = 1e-6
KERAS_TOL = 1e-5  # stock Keras (float32 matmuls inside float64 layers): the bar
KERAS_F64_PROMOTION = keras_dtypes.BIT64_TO_BIT32_DTYPE["float64"]
MAX_ERR: dict[tuple[str, str], float] = defaultdict(float)

assert keras.backend.backend() == "torch", "tests/conftest.py must set KERAS_BACKEND=torch before keras is imported"


@pytest.fixture(autouse=True)
def exact_float64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(keras_dtypes.BIT64_TO_BIT32_DTYPE, "float64", "float64")


@pytest.fixture(scope="module", autouse=True)
def report_max_errors() -> Iterator[None]:
    yield
    # Visible with `pytest -s`: the parity figures quoted in the notes.
    for (regime, what), err in sorted(MAX_ERR.items()):
        print(f"\n[keras parity] {regime:>14} {what:>8} max abs err = {err:.3e}")


# ---------------------------------------------------------------------------------------------- builders
def keras_rnn(kind: str, units: int, **kwargs: Any) -> keras.layers.Layer:
    if kind == "lstm":
        return keras.layers.LSTM(units, dtype="float64", **kwargs)
    if kind == "gru":
        return keras.layers.GRU(units, reset_after=True, dtype="float64", **kwargs)
    if kind == "gru_before":
        return keras.layers.GRU(units, reset_after=False, dtype="float64", **kwargs)
    assert kind == "simple"
    kwargs.pop("recurrent_activation", None)
    return keras.layers.SimpleRNN(units, dtype="float64", **kwargs)


KINDS = ("lstm", "gru", "gru_before", "simple")
NUM_STATES = {"lstm": 2, "gru": 1, "gru_before": 1, "simple": 1}


def finish(layer: keras.layers.Layer, batch: int, features: int, seed: int, scale: float = 0.6) -> keras.layers.Layer:
    """Build ``layer`` and give it random weights (biases too, unlike Keras's zero init)."""
    layer(torch.zeros(batch, 2, features, dtype=F64))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.uniform(-scale, scale, w.shape) for w in layer.get_weights()])
    if getattr(layer, "stateful", False):
        layer.reset_states()
    return layer


def convert(layer: keras.layers.Layer, config_edit: dict[str, Any] | None = None) -> torch.nn.Module:
    # Through JSON, as config.json stores it (tuples become lists, numpy scalars are gone).
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(layer)))
    config["config"].update(config_edit or {})
    return rnndrop.from_keras(config, layer.get_weights())


def make_mask(pattern: str | None, batch: int, time: int, rng: np.random.Generator) -> torch.Tensor | None:
    if pattern is None:
        return None
    lengths = rng.integers(1, time + 1, size=batch)
    steps = np.arange(time)[None, :]
    if pattern == "right":
        m = steps < lengths[:, None]
    elif pattern == "left":
        m = steps >= time - lengths[:, None]
    else:  # holes anywhere; "empty" also has a fully masked row
        m = rng.random((batch, time)) < 0.55
        m[np.arange(batch), rng.integers(0, time, size=batch)] = True
        if pattern == "empty":
            m[rng.integers(0, batch)] = False
    return torch.from_numpy(m)


# ---------------------------------------------------------------------------------------------- comparison
def as_list(y: Any) -> list[torch.Tensor]:
    return list(y) if isinstance(y, (list, tuple)) else [y]


def gru_blocks(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Keras GRU blocks z, r, h -> torch r, z, n (written here independently of the library)."""
    u = t.shape[dim] // 3
    return torch.cat([t.narrow(dim, i * u, u) for i in (1, 0, 2)], dim)


def keras_grads_in_torch_layout(rnn: rnndrop.RecurrentBase, grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Chain rule through the spec's weight mapping: the expected grads of weight_ih, weight_hh, bias_ih, bias_hh."""
    gru = rnn.mode == "GRU"

    def blocks(t: torch.Tensor, dim: int) -> torch.Tensor:
        return gru_blocks(t, dim) if gru else t

    out = [blocks(grads[0], 1).T, blocks(grads[1], 1).T]
    if rnn.bias:
        gb = grads[2]
        if gru and rnn.reset_after:
            out += [blocks(gb[0], 0), blocks(gb[1], 0)]
        else:  # the Keras bias is b_ih + b_hh: both receive its gradient
            out += [blocks(gb, 0), blocks(gb, 0)]
    return out


def sublayers(module: torch.nn.Module) -> list[rnndrop.RecurrentBase]:
    if isinstance(module, KerasBidirectional):
        return [module.forward_layer.rnn, module.backward_layer.rnn]
    assert isinstance(module, KerasRecurrent)
    return [module.rnn]


def check_parity(
    layer: keras.layers.Layer,
    module: torch.nn.Module,
    x: np.ndarray,
    mask: torch.Tensor | None = None,
    init: list[np.ndarray] | None = None,
    *,
    training: bool = False,
    dropout_masks: DropoutMasks | None = None,
    tol: float = EXACT_TOL,
    regime: str = "exact-float64",
) -> list[torch.Tensor]:
    """Assert equal outputs and equal gradients (input, initial states, weights); return our outputs."""
    grad_tol, grad_regime = tol, regime
    if "hard_sigmoid" in json.dumps(keras.saving.serialize_keras_object(layer)):
        grad_tol, grad_regime = max(tol, HARD_SIGMOID_GRAD_TOL), f"{regime}/hard_sigmoid"
    xk = torch.tensor(x, requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    init_k = None if init is None else [torch.tensor(s, requires_grad=True) for s in init]
    init_t = None if init is None else [torch.tensor(s, requires_grad=True) for s in init]
    module.train(training)
    yk = as_list(layer(xk, mask=mask, initial_state=init_k, training=training))
    yt = as_list(module(xt, mask, init_t, dropout_masks=dropout_masks))
    assert [tuple(a.shape) for a in yk] == [tuple(b.shape) for b in yt]
    err = max(float((a - b).detach().abs().max()) for a, b in zip(yk, yt))
    MAX_ERR[(regime, "forward")] = max(MAX_ERR[(regime, "forward")], err)
    assert err <= tol, f"forward differs from Keras by {err:.3e}"

    rng = np.random.default_rng(0)
    weights = [torch.tensor(rng.standard_normal(tuple(a.shape))) for a in yk]
    loss_k = sum((a * w).sum() for a, w in zip(yk, weights))
    loss_t = sum((b * w).sum() for b, w in zip(yt, weights))
    k_vars = [v.value for v in layer.trainable_weights]
    k_in = [xk, *(init_k or [])]
    t_in = [xt, *(init_t or [])]
    params = list(module.parameters())
    gk = torch.autograd.grad(loss_k, k_in + k_vars, allow_unused=True)
    gt = torch.autograd.grad(loss_t, t_in + params, allow_unused=True)
    gk = [torch.zeros_like(v) if g is None else g for g, v in zip(gk, k_in + k_vars)]
    gt = [torch.zeros_like(v) if g is None else g for g, v in zip(gt, t_in + params)]
    expected = list(gk[: len(k_in)])
    start = len(k_in)
    for rnn in sublayers(module):
        n = 3 if rnn.bias else 2
        expected += keras_grads_in_torch_layout(rnn, list(gk[start : start + n]))
        start += n
    assert len(expected) == len(gt)
    gerr = max(float((a - b).abs().max()) for a, b in zip(expected, gt))
    MAX_ERR[(grad_regime, "grad")] = max(MAX_ERR[(grad_regime, "grad")], gerr)
    assert gerr <= grad_tol, f"gradients differ from Keras by {gerr:.3e}"
    return yt


# ---------------------------------------------------------------------------------------------- generated grid
MASK_PATTERNS = (None, "right", "left", "holes", "empty")
GATED_ACTIVATIONS = (
    ("tanh", "sigmoid"), ("tanh", "sigmoid"), ("relu", "hard_sigmoid"), (None, "sigmoid"),
    ("softsign", "hard_sigmoid"), ("tanh", "hard_sigmoid"),
)
SIMPLE_ACTIVATIONS = (("tanh", None), ("relu", None), (None, None), ("softsign", None))
FLAG_COMBOS = list(itertools.product((False, True), repeat=3))  # return_sequences, return_state, go_backwards


def generated_cases() -> list[dict[str, Any]]:
    rng = random.Random(1234)
    cases = []
    # Every cell kind with every mask pattern (flags cycle through all combinations), then every cell kind
    # inside a Bidirectional with every merge mode.
    grid = [(kind, pattern, False) for kind in KINDS for pattern in MASK_PATTERNS]
    merges = ("concat", "sum", "mul", "ave", None)
    grid += [(kind, rng.choice(MASK_PATTERNS), merge) for kind in KINDS for merge in merges]
    for i, (kind, pattern, merge) in enumerate(grid):
        seqs, state, backwards = FLAG_COMBOS[i % len(FLAG_COMBOS)]
        act, ract = rng.choice(SIMPLE_ACTIVATIONS if kind == "simple" else GATED_ACTIVATIONS)
        cases.append({
            "kind": kind, "mask": pattern, "merge": merge, "return_sequences": seqs, "return_state": state,
            "go_backwards": backwards and merge is False, "initial_state": rng.random() < 0.5,
            "use_bias": rng.random() < 0.75, "zero_output_for_mask": rng.random() < 0.35,
            "activation": act, "recurrent_activation": ract,
            "batch": rng.randint(1, 3), "time": rng.randint(1, 6), "features": rng.randint(1, 4),
            "units": rng.randint(1, 4), "seed": rng.randrange(2**31),
        })
    return cases


CASES = generated_cases()


def case_id(c: dict[str, Any]) -> str:
    wrap = "" if c["merge"] is False else f"bi-{c['merge']}-"
    flags = "".join(k[0] for k, v in (("seq", c["return_sequences"]), ("state", c["return_state"]),
                                       ("back", c["go_backwards"]), ("init", c["initial_state"])) if v)
    return f"{wrap}{c['kind']}-{c['mask']}-{flags or 'plain'}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_generated_parity(case: dict[str, Any]) -> None:
    kw: dict[str, Any] = {
        "return_sequences": case["return_sequences"], "return_state": case["return_state"],
        "go_backwards": case["go_backwards"], "use_bias": case["use_bias"],
        "zero_output_for_mask": case["zero_output_for_mask"], "activation": case["activation"],
    }
    if case["recurrent_activation"] is not None:
        kw["recurrent_activation"] = case["recurrent_activation"]
    layer = keras_rnn(case["kind"], case["units"], **kw)
    n_states = NUM_STATES[case["kind"]]
    if case["merge"] is not False:
        layer = keras.layers.Bidirectional(layer, merge_mode=case["merge"], dtype="float64")
        n_states *= 2
    B, T, F, U = case["batch"], case["time"], case["features"], case["units"]
    finish(layer, B, F, case["seed"])
    module = convert(layer)
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((B, T, F))
    mask = make_mask(case["mask"], B, T, rng)
    init = [rng.standard_normal((B, U)) for _ in range(n_states)] if case["initial_state"] else None
    check_parity(layer, module, x, mask, init)


def test_grid_covers_every_option() -> None:
    """The generated grid really exercises each option both ways (so the parity test above cannot go vacuous)."""
    for key in ("return_sequences", "return_state", "go_backwards", "initial_state", "use_bias",
                "zero_output_for_mask"):
        assert {c[key] for c in CASES} == {False, True}, key
    assert {c["mask"] for c in CASES} == set(MASK_PATTERNS)
    assert {c["merge"] for c in CASES} == {False, "concat", "sum", "mul", "ave", None}
    assert "hard_sigmoid" in {c["recurrent_activation"] for c in CASES}
    assert any(c["time"] == 1 for c in CASES) and any(c["batch"] == 1 for c in CASES)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_name(name: str) -> None:
    """Each activation rnndrop accepts means what Keras 3 means by it (SimpleRNN; LSTM for gate activations)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 3))
    for layer in (keras.layers.SimpleRNN(3, activation=name, return_sequences=True, dtype="float64"),
                  keras.layers.LSTM(2, recurrent_activation=name, return_sequences=True, dtype="float64")):
        finish(layer, 2, 3, seed=11, scale=0.4)
        check_parity(layer, convert(layer), x)


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell", "SimpleRNNCell"])
def test_generic_rnn_layer_over_a_cell(cell: str) -> None:
    kwargs = {"reset_after": False} if cell == "GRUCell" else {}
    layer = keras.layers.RNN(getattr(keras.layers, cell)(3, dtype="float64", **kwargs), return_sequences=True,
                             go_backwards=True, return_state=True, dtype="float64")
    finish(layer, 2, 3, seed=5)
    rng = np.random.default_rng(5)
    check_parity(layer, convert(layer), rng.standard_normal((2, 5, 3)), make_mask("holes", 2, 5, rng))


@pytest.mark.parametrize("kind", ["lstm", "gru_before"])
def test_unpatched_keras_float64(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stock Keras (float32 matmuls inside float64 layers) still agrees to the issue's 1e-5."""
    monkeypatch.setitem(keras_dtypes.BIT64_TO_BIT32_DTYPE, "float64", KERAS_F64_PROMOTION)
    layer = keras.layers.Bidirectional(keras_rnn(kind, 4, return_sequences=True, return_state=True), dtype="float64")
    finish(layer, 3, 4, seed=3)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 6, 4))
    init = [rng.standard_normal((3, 4)) for _ in range(2 * NUM_STATES[kind])]
    check_parity(layer, convert(layer), x, make_mask("holes", 3, 6, rng), init, tol=KERAS_TOL,
                 regime="stock-keras")


def test_bidirectional_forces_zero_output_for_mask() -> None:
    """Keras sets both sublayers' zero_output_for_mask to return_sequences whatever their configs say."""
    for seqs in (True, False):
        layer = keras.layers.Bidirectional(keras_rnn("gru", 3, return_sequences=seqs), dtype="float64")
        finish(layer, 3, 2, seed=17)
        edit = {key: {**layer.get_config()[key]} for key in ("layer", "backward_layer")}
        for sub in edit.values():
            sub["config"] = {**sub["config"], "zero_output_for_mask": not seqs}
        module = convert(layer, json.loads(json.dumps(edit)))
        assert isinstance(module, KerasBidirectional)
        assert module.forward_layer.rnn.zero_output_for_mask is seqs
        rng = np.random.default_rng(17)
        check_parity(layer, module, rng.standard_normal((3, 5, 2)), make_mask("empty", 3, 5, rng))
    # Direct construction applies the same rule.
    fwd, bwd = (KerasRecurrent(rnndrop.GRU(2, 3, batch_first=True), return_sequences=True, go_backwards=b)
                for b in (False, True))
    KerasBidirectional(fwd, bwd)
    assert fwd.rnn.zero_output_for_mask and bwd.rnn.zero_output_for_mask


# ---------------------------------------------------------------------------------------------- stateful
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_stateful_calls_and_reset(kind: str, bidirectional: bool) -> None:
    # Keras's Bidirectional.compute_mask crashes for stateful + return_state (a generator times 2), so the
    # wrapped case returns the merged output only.
    layer = keras_rnn(kind, 3, stateful=True, return_sequences=True, return_state=not bidirectional)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, dtype="float64")
    B, T, F = 2, 4, 3
    finish(layer, B, F, seed=21)
    module = convert(layer)
    assert module.stateful
    rng = np.random.default_rng(21)
    n_states = NUM_STATES[kind] * (2 if bidirectional else 1)

    def call_both(mask_pattern: str | None = None, init: bool = False) -> list[torch.Tensor]:
        x = torch.tensor(rng.standard_normal((B, T, F)))
        mask = make_mask(mask_pattern, B, T, rng)
        states = [torch.tensor(rng.standard_normal((B, 3))) for _ in range(n_states)] if init else None
        with torch.no_grad():  # Keras assigns its state variables in place: no autograd across calls
            yk = as_list(layer(x, mask=mask, initial_state=states))
            yt = as_list(module(x, mask, states))
        for a, b in zip(yk, yt):
            torch.testing.assert_close(b, a, rtol=0, atol=EXACT_TOL)
        return yt

    first = call_both()
    second = call_both("holes")  # starts from the first call's final states
    call_both(init=True)  # an explicit initial state overrides the stored one...
    call_both()  # ...and its final states are stored
    layer.reset_states()
    module.reset_states()
    call_both("left")
    # Carrying states really changed something (the stateful path is not vacuous).
    assert not torch.allclose(first[0], second[0])
    with pytest.raises(ValueError, match="batch size"):
        module(torch.zeros(B + 1, T, F, dtype=F64))


# ---------------------------------------------------------------------------------------------- dropout
def keras_mask_form(rnn: rnndrop.RecurrentBase, mask: torch.Tensor | None) -> Any:
    """rnndrop's (G, B, n) mask -> what a Keras cell's get_*dropout_mask returns (a tensor or per-gate list)."""
    if mask is None:
        return None
    if mask.shape[0] == 1:
        return mask[0]
    order = (1, 0, 2) if rnn.mode == "GRU" else range(mask.shape[0])  # torch r, z, n -> Keras z, r, h
    return [mask[i] for i in order]


def inject_masks(monkeypatch: pytest.MonkeyPatch, cell: Any, rnn: rnndrop.RecurrentBase, dm: DirectionMasks) -> None:
    monkeypatch.setattr(cell, "get_dropout_mask", lambda step_input: keras_mask_form(rnn, dm.input))
    monkeypatch.setattr(cell, "get_recurrent_dropout_mask", lambda step_input: keras_mask_form(rnn, dm.recurrent))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rates", [(0.3, 0.0), (0.0, 0.4), (0.3, 0.4)], ids=["input", "recurrent", "both"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_dropout_parity_in_training(
    kind: str, rates: tuple[float, float], bidirectional: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keras fed our masks and rnndrop fed the same masks agree exactly in training mode."""
    dropout, recurrent_dropout = rates
    rng = np.random.default_rng(zlib.crc32(repr((kind, rates, bidirectional)).encode()))
    layer = keras_rnn(kind, 3, dropout=dropout, recurrent_dropout=recurrent_dropout, return_sequences=True,
                      return_state=True, go_backwards=not bidirectional and bool(rng.integers(2)))
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, merge_mode="concat", dtype="float64")
    B, T, F = 3, 5, 4
    finish(layer, B, F, seed=int(rng.integers(2**31)))
    module = convert(layer)
    subs = sublayers(module)
    want_layout = "per_gate" if recurrent_dropout > 0 and kind != "simple" else "shared"
    assert all(r.gate_masks == want_layout for r in subs)
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    per_dir = [r.sample_masks(B, T, generator=g).layers[0][0] for r in subs]
    masks = DropoutMasks((tuple(per_dir),))
    cells = [layer.forward_layer.cell, layer.backward_layer.cell] if bidirectional else [layer.cell]
    for cell, rnn, dm in zip(cells, subs, per_dir):
        inject_masks(monkeypatch, cell, rnn, dm)
    x = rng.standard_normal((B, T, F))
    mask = make_mask((None, "holes", "right")[int(rng.integers(3))], B, T, rng)
    y_train = check_parity(layer, module, x, mask, training=True, dropout_masks=masks)
    # The masks mattered: training output differs from the deterministic eval output.
    y_eval = as_list(module.eval()(torch.tensor(x), mask))
    assert not torch.allclose(y_train[0], y_eval[0])


def test_implementation_1_gives_per_gate_input_masks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras 3 does not serialise `implementation`; a config that carries it (Keras 2 style) is honoured."""
    layer = keras.layers.LSTM(3, dropout=0.3, implementation=1, use_cudnn=False, return_sequences=True,
                              dtype="float64")
    finish(layer, 2, 4, seed=8)
    module = convert(layer, {"implementation": 1})
    assert module.rnn.gate_masks == "per_gate"
    masks = module.rnn.sample_masks(2, 5, generator=torch.Generator().manual_seed(8))
    assert masks.layers[0][0].input.shape == (4, 2, 4)
    inject_masks(monkeypatch, layer.cell, module.rnn, masks.layers[0][0])
    check_parity(layer, module, np.random.default_rng(8).standard_normal((2, 5, 4)), training=True,
                 dropout_masks=masks)


def test_training_mode_samples_fresh_reproducible_masks() -> None:
    layer = finish(keras_rnn("gru", 3, dropout=0.4, recurrent_dropout=0.4, return_sequences=True), 2, 3, seed=4)
    module = convert(layer)
    assert not module.training  # converted modules start in eval mode, like a Keras layer called plainly
    x = torch.randn(2, 5, 3, dtype=F64)
    assert torch.equal(module(x), module(x))
    module.train()
    a = module(x, generator=torch.Generator().manual_seed(1))
    b = module(x, generator=torch.Generator().manual_seed(1))
    c = module(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------------------------------------- files and imports
def test_from_saved_keras_file(tmp_path: Any) -> None:
    inp = keras.Input(shape=(5, 3), dtype="float64")
    bi = keras.layers.Bidirectional(keras_rnn("lstm", 4, return_sequences=True), merge_mode="sum", dtype="float64")
    model = keras.Model(inp, keras.layers.Dense(2, dtype="float64")(bi(inp)))
    rng = np.random.default_rng(9)
    model.set_weights([rng.uniform(-0.5, 0.5, w.shape) for w in model.get_weights()])
    path = tmp_path / "model.keras"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    (layer_config,) = [c for c in config["config"]["layers"] if c["class_name"] == "Bidirectional"]
    loaded = keras.saving.load_model(path)
    keras_layer = loaded.get_layer(layer_config["config"]["name"])
    module = rnndrop.from_keras(layer_config, keras_layer.get_weights())
    check_parity(keras_layer, module, rng.standard_normal((2, 5, 3)), make_mask("right", 2, 5, rng))


def test_from_keras_does_not_import_keras(tmp_path: Any) -> None:
    layer = finish(keras.layers.Bidirectional(keras_rnn("gru_before", 2, return_sequences=True), dtype="float64"),
                   1, 3, seed=2)
    (tmp_path / "layer.json").write_text(json.dumps(keras.saving.serialize_keras_object(layer)))
    np.savez(tmp_path / "weights.npz", *layer.get_weights())
    code = (
        "import json, sys, numpy as np, torch, rnndrop\n"
        "cfg = json.load(open(sys.argv[1])); z = np.load(sys.argv[2])\n"
        "m = rnndrop.from_keras(cfg, [z[f'arr_{i}'] for i in range(len(z.files))])\n"
        "print(tuple(m(torch.zeros(1, 4, 3, dtype=torch.float64)).shape))\n"
        "assert 'keras' not in sys.modules, 'from_keras imported keras'\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "layer.json"), str(tmp_path / "weights.npz")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 4, 4)"


# ---------------------------------------------------------------------------------------------- to_keras
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_to_keras_round_trip_is_exact(kind: str, bidirectional: bool) -> None:
    layer = keras_rnn(kind, 3, use_bias=kind != "simple" or not bidirectional)
    if bidirectional:
        layer = keras.layers.Bidirectional(layer, dtype="float64")
    finish(layer, 2, 4, seed=13)
    back = rnndrop.to_keras(convert(layer))
    want = layer.get_weights()
    assert [w.shape for w in back] == [w.shape for w in want]
    for a, b in zip(back, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU-before", "RNN"])
def test_to_keras_from_a_plain_bidirectional_layer(mode: str) -> None:
    """A torch-trained rnndrop layer (non-zero b_hh) exported to a Keras Bidirectional computes the same."""
    torch.manual_seed(0)
    F, U = 3, 4
    common = {"batch_first": True, "bidirectional": True, "dtype": F64}
    if mode == "LSTM":
        ours: rnndrop.RecurrentBase = rnndrop.LSTM(F, U, **common)
    elif mode == "RNN":
        ours = rnndrop.RNN(F, U, nonlinearity="relu", **common)
    else:
        ours = rnndrop.GRU(F, U, reset_after=mode == "GRU", **common)
    kind = {"LSTM": "lstm", "GRU": "gru", "GRU-before": "gru_before", "RNN": "simple"}[mode]
    layer = keras.layers.Bidirectional(keras_rnn(kind, U, return_sequences=True, activation=ours.activation),
                                       dtype="float64")
    layer(torch.zeros(1, 2, F, dtype=F64))
    layer.set_weights(rnndrop.to_keras(ours))
    x = torch.randn(2, 5, F, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ours(x)[0], rtol=0, atol=EXACT_TOL)


def test_to_keras_rejects_what_one_keras_layer_cannot_hold() -> None:
    with pytest.raises(TypeError, match="module"):
        rnndrop.to_keras(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="num_layers"):
        rnndrop.to_keras(rnndrop.LSTM(2, 3, num_layers=2))


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def lstm_serialized() -> tuple[dict[str, Any], list[np.ndarray]]:
    layer = keras.layers.LSTM(3, dtype="float64")
    layer(torch.zeros(1, 2, 2, dtype=F64))
    return json.loads(json.dumps(keras.saving.serialize_keras_object(layer))), layer.get_weights()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"time_major": True}, "time_major"),
        ({"activation": "relu6"}, "activation"),
        ({"recurrent_activation": {"class_name": "function", "config": "my_act"}}, "recurrent_activation"),
        ({"dropout": 1.0}, "dropout"),
        ({"recurrent_dropout": -0.5}, "recurrent_dropout"),
        ({"units": 0}, "units"),
        ({"return_sequences": "yes"}, "return_sequences"),
        ({"implementation": 3}, "implementation"),
    ],
)
def test_bad_config_values_name_the_key(
    lstm_serialized: tuple[dict[str, Any], list[np.ndarray]], edit: dict[str, Any], match: str
) -> None:
    config, weights = lstm_serialized
    bad = {**config, "config": {**config["config"], **edit}}
    with pytest.raises((ValueError, TypeError), match=match):
        rnndrop.from_keras(bad, weights)


def test_bad_layers_and_weights(lstm_serialized: tuple[dict[str, Any], list[np.ndarray]]) -> None:
    config, weights = lstm_serialized
    with pytest.raises(ValueError, match=r"class_name.*ConvLSTM1D"):
        rnndrop.from_keras({**config, "class_name": "ConvLSTM1D"}, weights)
    with pytest.raises(ValueError, match="'config'"):
        rnndrop.from_keras({"class_name": "LSTM"}, weights)
    with pytest.raises(TypeError, match="layer_config"):
        rnndrop.from_keras("LSTM", weights)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 arrays"):
        rnndrop.from_keras(config, weights[:2])
    with pytest.raises(ValueError, match=r"weights\[1\].*recurrent_kernel.*\(3, 12\)"):
        rnndrop.from_keras(config, [weights[0], weights[1][:, :8], weights[2]])
    with pytest.raises(TypeError, match="floating"):
        rnndrop.from_keras(config, [w.astype(np.int64) for w in weights])
    stacked = {"class_name": "RNN", "config": {"cell": {"class_name": "StackedRNNCells", "config": {}}}}
    with pytest.raises(ValueError, match="cell"):
        rnndrop.from_keras(stacked, weights)
    bi = {"class_name": "Bidirectional", "config": {"merge_mode": "max", "layer": config}}
    with pytest.raises(ValueError, match="merge_mode"):
        rnndrop.from_keras(bi, weights + weights)
    with pytest.warns(UserWarning, match="brand_new_option"):
        rnndrop.from_keras({**config, "config": {**config["config"], "brand_new_option": 1}}, weights)


def test_bad_call_arguments(lstm_serialized: tuple[dict[str, Any], list[np.ndarray]]) -> None:
    config, weights = lstm_serialized
    module = rnndrop.from_keras(config, weights)
    x = torch.zeros(2, 4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x must be 3-D"):
        module(x[0])
    with pytest.raises(ValueError, match="mask"):
        module(x, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="initial_state"):
        module(x, None, [torch.zeros(2, 3, dtype=F64)])
    with pytest.raises(ValueError, match=r"initial_state\[1\].*\(2, 3\)"):
        module(x, None, [torch.zeros(2, 3, dtype=F64), torch.zeros(2, 4, dtype=F64)])
    with pytest.raises(TypeError, match="dtype"):
        module(x, None, [torch.zeros(2, 3), torch.zeros(2, 3)])
