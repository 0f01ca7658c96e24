"""Drop-in parity with torch.nn.LSTM / GRU / RNN when every rnndrop option is off.

Float64 everywhere; forward outputs, final states and the gradients with respect to the input,
the initial states and every parameter must agree to 1e-10. The largest errors seen are printed
in the terminal summary (see ``conftest.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from rnn_pairs import BACKENDS, F64, KINDS, as_tuple, make_pair, max_abs, random_hx, record
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import rnndrop

TOL = 1e-10
INPUT, HIDDEN, TIME, BATCH = 3, 4, 5, 3


def _leaves(hx: Any) -> list[torch.Tensor]:
    if hx is None:
        return []
    return [h.requires_grad_() for h in as_tuple(hx)]


def _output_tensor(out: Any) -> torch.Tensor:
    return out.data if isinstance(out, PackedSequence) else out


def assert_same_as_torch(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    call_input: Any,
    hx: Any,
    grad_wrt: list[torch.Tensor],
    kind: str,
    case: str,
    ours_call: Any = None,
    theirs_call: Any = None,
) -> None:
    """Forward both layers, compare outputs and final states, then every gradient.

    By default both are called as ``layer(call_input, hx)``; ``ours_call`` / ``theirs_call``
    replace that with a callable returning ``(output, hidden)``. ``grad_wrt`` are the leaves
    besides the parameters (input, h0, c0). The same random cotangents are back-propagated
    through both, so every gradient is compared at once.
    """
    out_o, hid_o = ours_call() if ours_call else ours(call_input, hx)
    out_t, hid_t = theirs_call() if theirs_call else theirs(call_input, hx)
    if isinstance(out_t, PackedSequence):
        assert isinstance(out_o, PackedSequence), "packed input must give a packed output"
        assert torch.equal(out_o.batch_sizes, out_t.batch_sizes)
        for field in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(out_o, field), getattr(out_t, field)
            assert (a is None and b is None) or torch.equal(a, b), field
    res_o = [_output_tensor(out_o), *as_tuple(hid_o)]
    res_t = [_output_tensor(out_t), *as_tuple(hid_t)]
    assert len(res_o) == len(res_t)
    fwd = max(max_abs(a, b) for a, b in zip(res_o, res_t))
    record(kind, case, "forward", fwd, ours)
    assert fwd < TOL

    names_o = [n for n, _ in ours.named_parameters()]
    names_t = [n for n, _ in theirs.named_parameters()]
    assert names_o == names_t
    gen = torch.Generator().manual_seed(1234)
    cotangents = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in res_t]
    # retain_graph: both graphs may share a prefix (the packing of the input).
    g_o = torch.autograd.grad(res_o, [*grad_wrt, *ours.parameters()], cotangents, retain_graph=True)
    g_t = torch.autograd.grad(res_t, [*grad_wrt, *theirs.parameters()], cotangents)
    labels = [f"leaf{i}" for i in range(len(grad_wrt))] + names_o
    worst = 0.0
    for label, a, b in zip(labels, g_o, g_t):
        err = max_abs(a, b)
        assert err < TOL, f"gradient of {label}: {err}"
        worst = max(worst, err)
    record(kind, case, "grad", worst, ours)


@pytest.mark.parametrize("backend", BACKENDS)
# --------------------------------------------------------------------------- dense input
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
# The three binary options in a covering array: every pair of values of every two options occurs.
@pytest.mark.parametrize(
    "batch_first, bias, give_hx", [(False, True, False), (False, False, True), (True, True, True), (True, False, False)]
)
def test_dense_matches_torch(kind, num_layers, bidirectional, batch_first, bias, give_hx, backend):
    ours, theirs = make_pair(
        kind, INPUT, HIDDEN, seed=num_layers, num_layers=num_layers, bidirectional=bidirectional,
        batch_first=batch_first, bias=bias, backend=backend,
    )
    gen = torch.Generator().manual_seed(7)
    shape = (BATCH, TIME, INPUT) if batch_first else (TIME, BATCH, INPUT)
    x = torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True)
    hx = random_hx(ours, BATCH, gen) if give_hx else None
    assert_same_as_torch(ours, theirs, x, hx, [x, *_leaves(hx)], kind, "dense")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("give_hx", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_matches_torch(kind, give_hx, batch_first, backend):
    # batch_first has no effect on unbatched (L, H_in) input, in torch.nn as here.
    ours, theirs = make_pair(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=batch_first,
                             backend=backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(TIME, INPUT, generator=gen, dtype=F64, requires_grad=True)
    hx = random_hx(ours, None, gen) if give_hx else None
    out, hidden = ours(x, hx)
    assert out.shape == (TIME, 2 * (ours.proj_size or HIDDEN))
    assert all(h.dim() == 2 for h in as_tuple(hidden))
    assert_same_as_torch(ours, theirs, x, hx, [x, *_leaves(hx)], kind, "unbatched")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("kind", list(KINDS))
def test_float32_matches_torch(kind, backend):
    """The default dtype too: float32 rounding differences are ~1e-7 at these sizes; the bound is 1e-5."""
    ours, theirs = make_pair(kind, INPUT, HIDDEN, dtype=torch.float32, num_layers=2, bidirectional=True,
                             backend=backend)
    x = torch.randn(TIME, BATCH, INPUT, generator=torch.Generator().manual_seed(2))
    out_o, hid_o = ours(x)
    out_t, hid_t = theirs(x)
    assert out_o.dtype == torch.float32
    err = max(max_abs(a, b) for a, b in zip([out_o, *as_tuple(hid_o)], [out_t, *as_tuple(hid_t)]))
    record(kind, "float32 (tol 1e-5)", "forward", err, ours)
    assert err < 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
# --------------------------------------------------------------------------- packed / lengths
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("give_hx", [False, True])
def test_packed_matches_torch(kind, bidirectional, enforce_sorted, give_hx, backend):
    # batch_first=True on the modules: a PackedSequence carries its own layout and must ignore it.
    ours, theirs = make_pair(kind, INPUT, HIDDEN, num_layers=2, bidirectional=bidirectional, batch_first=True,
                             backend=backend)
    lengths = torch.tensor([5, 4, 2, 1]) if enforce_sorted else torch.tensor([2, 5, 1, 4])
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(len(lengths), TIME, INPUT, generator=gen, dtype=F64, requires_grad=True)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    hx = random_hx(ours, len(lengths), gen) if give_hx else None
    assert_same_as_torch(ours, theirs, packed, hx, [x, *_leaves(hx)], kind, "packed")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_first", [False, True])
def test_lengths_equals_packing(kind, batch_first, backend):
    """``lengths=`` on a padded tensor gives what torch.nn gives on the packed equivalent."""
    ours, theirs = make_pair(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True, batch_first=batch_first,
                             backend=backend)
    lengths = torch.tensor([3, 5, 1, 4])
    gen = torch.Generator().manual_seed(5)
    shape = (len(lengths), TIME, INPUT) if batch_first else (TIME, len(lengths), INPUT)
    x = torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True)
    hx = random_hx(ours, len(lengths), gen)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)

    def theirs_padded():
        out, hidden = theirs(packed, hx)
        return pad_packed_sequence(out, batch_first=batch_first, total_length=TIME)[0], hidden

    assert_same_as_torch(
        ours, theirs, x, hx, [x, *_leaves(hx)], kind, "lengths",
        ours_call=lambda: ours(x, hx, lengths=lengths), theirs_call=theirs_padded,
    )


# --------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_seed_same_parameters(kind, dtype):
    ours, theirs = make_pair(kind, INPUT, HIDDEN, seed=42, dtype=dtype, num_layers=3, bidirectional=True)
    sd_o, sd_t = ours.state_dict(), theirs.state_dict()
    assert list(sd_o) == list(sd_t)
    for key in sd_t:
        assert sd_o[key].shape == sd_t[key].shape, key
        assert sd_o[key].dtype == dtype
        assert torch.equal(sd_o[key], sd_t[key]), key
    assert [[p.shape for p in w] for w in ours.all_weights] == [[p.shape for p in w] for w in theirs.all_weights]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_round_trip(kind, bias):
    """A torch.nn state_dict loads into ours (strict) and ours loads back into torch.nn."""
    ours, theirs = make_pair(kind, INPUT, HIDDEN, num_layers=2, bidirectional=True, bias=bias)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()  # values unlike either layer's init, so a no-op load would be caught
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for name, p in theirs.named_parameters():
        assert torch.equal(getattr(ours, name), p), name
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(2.0)
    fresh = KINDS[kind][1](INPUT, HIDDEN, num_layers=2, bidirectional=True, bias=bias, dtype=F64, **KINDS[kind][2])
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for name, p in ours.named_parameters():
        assert torch.equal(getattr(fresh, name), p), name
    x = torch.randn(TIME, BATCH, INPUT, dtype=F64)
    out_o, _ = ours(x)
    out_t, _ = fresh(x)
    assert max_abs(out_o, out_t) < TOL


@pytest.mark.parametrize("backend", BACKENDS)
# --------------------------------------------------------------------------- eval mode
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("gate_masks", ["shared", "per_gate"])
def test_eval_mode_with_dropout_equals_torch(kind, gate_masks, backend):
    """In eval mode every dropout option is off: deterministic, equal to torch.nn (which also has dropout=0.5)."""
    ours, theirs = make_pair(
        kind, INPUT, HIDDEN, num_layers=3, bidirectional=True, dropout=0.5, backend=backend,
        ours_kwargs={"input_dropout": 0.4, "recurrent_dropout": 0.3, "gate_masks": gate_masks},
    )
    ours.eval()
    theirs.eval()
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(TIME, BATCH, INPUT, generator=gen, dtype=F64, requires_grad=True)
    hx = random_hx(ours, BATCH, gen)
    first, _ = ours(x, hx)
    second, _ = ours(x, hx)
    assert torch.equal(first, second)
    assert_same_as_torch(ours, theirs, x, hx, [x, *_leaves(hx)], kind, "eval+dropout")


# --------------------------------------------------------------------------- constructor signature
@pytest.mark.parametrize(
    "ours_cls, theirs_cls, args",
    [
        # input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size
        (rnndrop.LSTM, torch.nn.LSTM, (3, 4, 2, False, True, 0.25, True, 2)),
        # ..., num_layers, bias, batch_first, dropout, bidirectional
        (rnndrop.GRU, torch.nn.GRU, (3, 4, 2, False, True, 0.25, True)),
        # ..., num_layers, nonlinearity, bias, batch_first, dropout, bidirectional
        (rnndrop.RNN, torch.nn.RNN, (3, 4, 2, "relu", False, True, 0.25, True)),
    ],
)
def test_positional_arguments_mean_what_they_mean_in_torch(ours_cls, theirs_cls, args):
    ours, theirs = ours_cls(*args), theirs_cls(*args)
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size", "nonlinearity"):
        if hasattr(theirs, attr):
            assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in theirs.named_parameters()]
