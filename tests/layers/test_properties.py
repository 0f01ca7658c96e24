"""Property tests over shapes and options: rnndrop's outputs look exactly like torch.nn's.

For random layer configurations (kind, layers, directions, layout, sizes, batch, length, dropout
options, mode, initial state, batched or not): output and state shapes equal torch.nn's, values
and gradients are finite, and whenever no dropout is active (eval mode, or every rate 0) the
values equal torch.nn's to 1e-10.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rnn_pairs import F64, as_tuple, make_pair, max_abs, random_hx

from rnndrop import GRU

KINDS = ["lstm", "lstm_proj", "gru", "gru_before", "rnn_tanh", "rnn_relu"]


@st.composite
def configs(draw: st.DrawFn) -> dict:
    kind = draw(st.sampled_from(KINDS))
    hidden = draw(st.integers(2 if kind == "lstm_proj" else 1, 5))
    return {
        "kind": kind,
        "input_size": draw(st.integers(1, 4)),
        "hidden": hidden,
        "proj": draw(st.integers(1, hidden - 1)) if kind == "lstm_proj" else 0,
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "batch": draw(st.none() | st.integers(1, 4)),  # None: unbatched input
        "time": draw(st.integers(1, 5)),
        "input_dropout": draw(st.sampled_from([0.0, 0.3])),
        "recurrent_dropout": draw(st.sampled_from([0.0, 0.5])),
        "dropout": draw(st.sampled_from([0.0, 0.2])),
        "gate_masks": draw(st.sampled_from(["shared", "per_gate"])),
        "training": draw(st.booleans()),
        "give_hx": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


@given(cfg=configs())
@settings(max_examples=40, deadline=None)
def test_shapes_values_like_torch(cfg):
    common = {"num_layers": cfg["num_layers"], "bidirectional": cfg["bidirectional"],
              "batch_first": cfg["batch_first"], "dropout": cfg["dropout"] if cfg["num_layers"] > 1 else 0.0}
    ours_kwargs = {k: cfg[k] for k in ("input_dropout", "recurrent_dropout", "gate_masks")}
    base_kind = {"gru_before": "gru", "lstm_proj": "lstm"}.get(cfg["kind"], cfg["kind"])
    if cfg["kind"] == "lstm_proj":
        common["proj_size"] = cfg["proj"]
    ours, theirs = make_pair(base_kind, cfg["input_size"], cfg["hidden"], seed=cfg["seed"], ours_kwargs=ours_kwargs,
                             **common)
    if cfg["kind"] == "gru_before":  # no torch.nn twin: same weights, other equations; shapes still torch's
        reset_before = GRU(cfg["input_size"], cfg["hidden"], reset_after=False, dtype=F64, **common, **ours_kwargs)
        reset_before.load_state_dict(ours.state_dict())
        ours = reset_before
    ours.train(cfg["training"])
    theirs.eval()  # torch's between-layer dropout off: its values are the no-dropout reference

    gen = torch.Generator().manual_seed(cfg["seed"])
    b, t, i = cfg["batch"], cfg["time"], cfg["input_size"]
    if b is None:
        shape = (t, i)
    else:
        shape = (b, t, i) if cfg["batch_first"] else (t, b, i)
    x = torch.randn(*shape, generator=gen, dtype=F64, requires_grad=True)
    hx = random_hx(ours, b, gen) if cfg["give_hx"] else None

    out_o, hid_o = ours(x, hx)
    with torch.no_grad():
        out_t, hid_t = theirs(x, hx)
    assert out_o.shape == out_t.shape
    assert type(hid_o) is type(hid_t)
    assert [h.shape for h in as_tuple(hid_o)] == [h.shape for h in as_tuple(hid_t)]
    for v in (out_o, *as_tuple(hid_o)):
        assert v.dtype == F64 and torch.isfinite(v).all()

    dropout_active = cfg["training"] and (
        cfg["input_dropout"] or cfg["recurrent_dropout"] or common["dropout"]
    )
    if not dropout_active and cfg["kind"] != "gru_before":
        assert max_abs(out_o, out_t) < 1e-10
        for a, c in zip(as_tuple(hid_o), as_tuple(hid_t)):
            assert max_abs(a, c) < 1e-10

    loss = out_o.sum() + sum(h.sum() for h in as_tuple(hid_o))
    loss.backward()
    assert torch.isfinite(x.grad).all()
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
