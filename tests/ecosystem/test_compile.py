"""torch.compile: rnndrop layers compile into one graph and match eager, forward and backward.

Dropout masks are injected (``dropout_masks=``) so that eager and compiled runs use the same
masks; sampling inside the graph is tested separately. Most tests use the ``aot_eager``
backend (Dynamo capture + AOTAutograd, the same aten ops run eagerly: results are bitwise
equal); one test runs the real Inductor compiler, whose fused kernels reassociate float32
arithmetic. Compilation is slow on small machines, so the layers are tiny.
"""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path

import pytest
import torch
from kernel_policy import skip_or_fail
from torch._dynamo.testing import CompileCounterWithBackend

import rnndrop

BATCH, STEPS, FEATURES, HIDDEN = 2, 3, 3, 4
HAS_BACKEND_ARG = "backend" in inspect.signature(rnndrop.LSTM.__init__).parameters
REFERENCE = {"backend": "reference"} if HAS_BACKEND_ARG else {}

# Every in-layer option of each layer at once (plus stacking, both directions, both mask scopes).
CASES = {
    "lstm": lambda: rnndrop.LSTM(
        FEATURES, HIDDEN, num_layers=2, bidirectional=True, batch_first=True, dropout=0.2, proj_size=2,
        input_dropout=0.2, recurrent_dropout=0.2, weight_dropout=0.3, candidate_dropout=0.2, zoneout_hidden=0.1,
        zoneout_cell=0.1, gate_masks="per_gate", **REFERENCE,
    ),
    "gru": lambda: rnndrop.GRU(
        FEATURES, HIDDEN, num_layers=2, batch_first=True, dropout=0.2, locked_dropout=True, reset_after=False,
        input_dropout=0.2, recurrent_dropout=0.2, weight_dropout=0.3, candidate_dropout=0.2, zoneout_hidden=0.1,
        mask_scope="batch", **REFERENCE,
    ),
    "rnn": lambda: rnndrop.RNN(
        FEATURES, HIDDEN, nonlinearity="relu", batch_first=True, input_dropout=0.2, recurrent_dropout=0.2,
        weight_dropout=0.3, zoneout_hidden=0.1, **REFERENCE,
    ),
}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    # Every layer instance shares RecurrentBase.forward's code object: reset Dynamo's caches so
    # that one test's compilations neither serve nor exhaust the recompile limit of the next.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, STEPS, FEATURES, generator=g).requires_grad_()
    return x, torch.rand(BATCH, STEPS, generator=g) > 0.3


def _forward_backward(layer, x, step_mask, masks):
    layer.zero_grad()
    x.grad = None
    out, h = layer(x, step_mask=step_mask, dropout_masks=masks)
    states = h if isinstance(h, tuple) else (h,)
    (out.sum() + sum(s.sum() for s in states)).backward()
    return [out, *states, x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", sorted(CASES))
def test_compiled_equals_eager_in_one_graph(kind: str, training: bool) -> None:
    torch.manual_seed(0)
    layer = CASES[kind]().train(training)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)  # fullgraph: a graph break fails
    for call in range(2):  # a second call with new masks and inputs must reuse the graph
        x, step_mask = _inputs(call)
        masks = layer.sample_masks(BATCH, STEPS) if training else None
        got = _forward_backward(compiled, x, step_mask, masks)
        want = _forward_backward(layer, x, step_mask, masks)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert counter.frame_count == 1


def test_masks_sampled_inside_the_graph_follow_the_global_seed() -> None:
    torch.manual_seed(0)
    layer = CASES["lstm"]().train()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    x, step_mask = _inputs(0)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        got = compiled(x, step_mask=step_mask)[0]
        torch.manual_seed(seed)
        torch.testing.assert_close(got, layer(x, step_mask=step_mask)[0], rtol=0, atol=0)
        outs.append(got)
    assert not torch.equal(outs[0], outs[1])  # new masks on every call, not constants baked into the graph
    assert counter.frame_count == 1


def test_layer_generator_costs_at_most_one_graph_break_and_matches_eager() -> None:
    """torch 2.13's Dynamo cannot trace a torch.Generator: all masks are drawn in one eager call."""
    torch.manual_seed(0)
    layer = CASES["gru"]().train()
    layer.generator = torch.Generator()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter)
    x, step_mask = _inputs(0)
    layer.generator.manual_seed(7)
    got = compiled(x, step_mask=step_mask)[0]
    layer.generator.manual_seed(7)
    torch.testing.assert_close(got, layer(x, step_mask=step_mask)[0], rtol=0, atol=0)
    assert counter.frame_count <= 2  # the graph before and after the sampling call


def test_compiled_weight_dropout_training_updates_raw_weights_without_warnings() -> None:
    """Issue 3: weight dropout under torch.compile, with an optimizer, and no warnings at all."""
    torch.manual_seed(0)
    model = torch.nn.Sequential()  # the layer inside a user's model, as usually compiled
    model.rnn = rnndrop.LSTM(FEATURES, HIDDEN, batch_first=True, weight_dropout=0.5, **REFERENCE)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    raw = model.rnn.weight_hh_l0.detach().clone()
    x, _ = _inputs(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        for _ in range(2):
            opt.zero_grad()
            compiled(x)[0].square().mean().backward()
            opt.step()
    assert [str(w.message) for w in caught] == []
    assert not torch.equal(model.rnn.weight_hh_l0, raw)


def _foreign(w: warnings.WarningMessage) -> bool:
    """torch's own deprecation notices from inside Inductor's import chain are not ours to fix."""
    return issubclass(w.category, DeprecationWarning) and Path(torch.__file__).parent in Path(w.filename).parents


@pytest.mark.slow
def test_inductor_compiled_lstm_matches_eager_forward_and_backward() -> None:
    torch.manual_seed(0)
    layer = rnndrop.LSTM(FEATURES, HIDDEN, batch_first=True, input_dropout=0.2, recurrent_dropout=0.2,
                         weight_dropout=0.3, **REFERENCE).train()
    x, step_mask = _inputs(0)
    masks = layer.sample_masks(BATCH, STEPS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(layer, fullgraph=True)  # default backend: Inductor, C++ kernels on CPU
        got = _forward_backward(compiled, x, step_mask, masks)
    want = _forward_backward(layer, x, step_mask, masks)
    # Inductor fuses and reorders float32 arithmetic: a few dozen roundings on values of order one.
    tol = 64 * torch.finfo(torch.float32).eps
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
    assert [str(w.message) for w in caught if not _foreign(w)] == []


@pytest.mark.skipif(not HAS_BACKEND_ARG, reason="no backend= argument: only the reference path exists")
@pytest.mark.parametrize("kind", ["lstm", "gru_per_gate"])
def test_default_backend_compiles_in_one_graph(kind: str) -> None:
    """backend='auto' picks the fused CPU kernel, a registered custom op: one graph, equal to eager bitwise."""
    from rnndrop._kernels import loader

    if loader.load() is None:
        skip_or_fail(f"CPU extension unavailable: {loader.unavailable_reason()}")
    torch.manual_seed(0)
    if kind == "lstm":
        layer = rnndrop.LSTM(FEATURES, HIDDEN, batch_first=True, input_dropout=0.2, recurrent_dropout=0.2)
    else:  # per-gate input masks: the input projection's column blocks, bidirectional, GRU reset_after=False
        layer = rnndrop.GRU(FEATURES, HIDDEN, batch_first=True, bidirectional=True, reset_after=False,
                            input_dropout=0.2, recurrent_dropout=0.2, gate_masks="per_gate")
    layer.train()
    counter = CompileCounterWithBackend("aot_eager")
    x, step_mask = _inputs(0)
    masks = layer.sample_masks(BATCH, STEPS)
    got = _forward_backward(torch.compile(layer, backend=counter, fullgraph=True), x, step_mask, masks)
    assert layer.last_backend == "fused"
    for g, w in zip(got, _forward_backward(layer, x, step_mask, masks)):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert counter.frame_count == 1
