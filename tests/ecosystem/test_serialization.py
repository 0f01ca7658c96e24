"""Serialization: pickle, deepcopy, torch.save of whole modules, state_dict round trips, checkpoints
from another device, and resuming training (model + optimizer) with weight dropout.

A layer's ``generator`` is pickled as a portable record (``rnndrop._pickling``): a copy continues
the same stream of masks on the same device type and is re-seeded on another one.
"""

from __future__ import annotations

import copy
import io
import pickle
import zipfile

import pytest
import torch
from torch import nn

import rnndrop
from rnndrop._pickling import GeneratorState

BATCH, STEPS, FEATURES, HIDDEN = 3, 5, 4, 6
ALL = {"input_dropout": 0.2, "recurrent_dropout": 0.2, "weight_dropout": 0.3, "zoneout_hidden": 0.1}
LAYERS = {
    "lstm": lambda g: rnndrop.LSTM(FEATURES, HIDDEN, num_layers=2, dropout=0.2, bidirectional=True, proj_size=3,
                                   zoneout_cell=0.1, candidate_dropout=0.2, generator=g, **ALL),
    "gru": lambda g: rnndrop.GRU(FEATURES, HIDDEN, reset_after=False, gate_masks="per_gate", generator=g, **ALL),
    "rnn": lambda g: rnndrop.RNN(FEATURES, HIDDEN, nonlinearity="relu", mask_scope="batch", generator=g, **ALL),
}


def _make(kind: str, seed: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return LAYERS[kind](torch.Generator().manual_seed(seed))


def _x() -> torch.Tensor:
    return torch.randn(STEPS, BATCH, FEATURES, generator=torch.Generator().manual_seed(3))


def _torch_roundtrip(obj, **load_kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, **load_kwargs)


COPIERS = {
    "pickle": lambda m: pickle.loads(pickle.dumps(m)),
    "deepcopy": copy.deepcopy,
    "torch.save": lambda m: _torch_roundtrip(m, weights_only=False, map_location="cpu"),
}


@pytest.mark.parametrize("how", sorted(COPIERS))
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_copy_keeps_config_weights_and_mask_stream(kind: str, how: str) -> None:
    layer = _make(kind)
    x = _x()
    layer(x)  # advance the generator: the copy must carry its current state, not the seed
    clone = COPIERS[how](layer)
    assert type(clone) is type(layer) and repr(clone) == repr(layer)
    for (name, p), (name2, q) in zip(layer.named_parameters(), clone.named_parameters()):
        assert name == name2 and torch.equal(p, q) and p is not q
    # Training mode: the clone's generator continues the very same stream of masks ...
    torch.testing.assert_close(clone(x)[0], layer(x)[0], rtol=0, atol=0)
    # ... but it is its own generator: drawing from one does not advance the other.
    assert clone.generator is not layer.generator
    layer(x)
    assert not torch.equal(clone(x)[0], layer(x)[0])
    clone.eval(), layer.eval()
    torch.testing.assert_close(clone(x)[0], layer(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_state_dict_round_trip_with_weights_only_load(kind: str) -> None:
    layer, fresh = _make(kind), LAYERS[kind](None)
    state = _torch_roundtrip(layer.state_dict())  # torch.load's default weights_only=True suffices
    # Only parameters, under torch.nn's names: no masks, no generator, no rnndrop-only entries.
    assert list(state) == [name for name, _ in layer.named_parameters()]
    fresh.load_state_dict(state)
    x = _x()
    torch.testing.assert_close(fresh.eval()(x)[0], layer.eval()(x)[0], rtol=0, atol=0)


def _as_if_saved_on_cuda(checkpoint: bytes) -> bytes:
    """Rewrite a CPU ``torch.save`` archive so that it reads as one written on a CUDA machine.

    Every location tag ``'cpu'`` in ``data.pkl`` (pickle protocol 2 ``BINUNICODE``, memoised after
    the first use) becomes ``'cuda'``: storages then deserialize onto CUDA unless ``map_location``
    says otherwise, and a pickled generator record claims a CUDA generator — exactly a GPU
    checkpoint as a CPU-only machine sees it.
    """
    src, dst = zipfile.ZipFile(io.BytesIO(checkpoint)), io.BytesIO()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x04\x00\x00\x00cuda")
            out.writestr(info, data)
    return dst.getvalue()


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a GPU checkpoint on a machine without CUDA")
def test_checkpoint_saved_on_another_device_loads_with_map_location() -> None:
    layer = _make("lstm", seed=1234)
    saved = {"whole": io.BytesIO(), "state_dict": io.BytesIO()}
    torch.save(layer, saved["whole"])
    torch.save(layer.state_dict(), saved["state_dict"])
    gpu = {k: _as_if_saved_on_cuda(v.getvalue()) for k, v in saved.items()}
    # The simulation is real: without map_location torch refuses to place the storages.
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(io.BytesIO(gpu["state_dict"]))

    state = torch.load(io.BytesIO(gpu["state_dict"]), map_location="cpu")
    whole = torch.load(io.BytesIO(gpu["whole"]), map_location="cpu", weights_only=False)
    fresh = LAYERS["lstm"](None)
    fresh.load_state_dict(state)
    x = _x()
    for loaded in (fresh, whole):
        assert all(p.device.type == "cpu" for p in loaded.parameters())
        torch.testing.assert_close(loaded.eval()(x)[0], layer.eval()(x)[0], rtol=0, atol=0)
    # A CUDA generator state means nothing to a CPU generator: the reloaded layer draws from a
    # CPU generator seeded with the saved seed (reproducible, documented).
    assert whole.generator.device.type == "cpu" and whole.generator.initial_seed() == 1234
    expected = torch.Generator().manual_seed(1234)
    torch.testing.assert_close(whole.train()(x)[0], layer.train()(x, generator=expected)[0], rtol=0, atol=0)


def test_generator_record_restores_state_on_same_device_type_and_reseeds_on_another() -> None:
    g = torch.Generator().manual_seed(99)
    torch.rand(5, generator=g)
    record = GeneratorState.capture(g)
    same = record.restore(torch.device("cpu"))
    torch.testing.assert_close(torch.rand(4, generator=same), torch.rand(4, generator=g), rtol=0, atol=0)
    other = GeneratorState("cuda", 99, torch.zeros(16, dtype=torch.uint8)).restore(torch.device("cpu"))
    assert other.initial_seed() == 99
    torch.testing.assert_close(
        torch.rand(4, generator=other), torch.rand(4, generator=torch.Generator().manual_seed(99)), rtol=0, atol=0
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    opt.zero_grad()
    out, _ = model(x)
    loss = out.square().mean()
    loss.backward()
    opt.step()
    return loss.detach()


def test_resume_training_with_weight_dropout_from_model_and_optimizer_state_dicts() -> None:
    """Issue 3: weight dropout works with state_dict, optimizers, .to() and deepcopy."""
    torch.manual_seed(0)
    model = rnndrop.LSTM(FEATURES, HIDDEN, weight_dropout=0.5, recurrent_dropout=0.2,
                         generator=torch.Generator().manual_seed(5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = _x()
    raw_before = model.weight_hh_l0.detach().clone()
    _step(model, opt, x)
    # The optimizer updates the raw weight (the parameter), not a masked copy of it.
    assert not torch.equal(model.weight_hh_l0, raw_before)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in nn.LSTM(FEATURES, HIDDEN).named_parameters()]

    ckpt = _torch_roundtrip({"model": model.state_dict(), "opt": opt.state_dict(),
                             "rng": model.generator.get_state()})
    resumed = rnndrop.LSTM(FEATURES, HIDDEN, weight_dropout=0.5, recurrent_dropout=0.2,
                           generator=torch.Generator())
    resumed.load_state_dict(ckpt["model"])
    resumed.generator.set_state(ckpt["rng"])
    resumed_opt = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(ckpt["opt"])
    for _ in range(2):
        torch.testing.assert_close(_step(resumed, resumed_opt, x), _step(model, opt, x), rtol=0, atol=0)
    for p, q in zip(model.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

    # .to() converts the raw weights in place of the module; the layer keeps training in float64.
    twin = copy.deepcopy(model).to(torch.float64)
    assert twin.weight_hh_l0.dtype == torch.float64 and model.weight_hh_l0.dtype == torch.float32
    loss64 = _step(twin, torch.optim.SGD(twin.parameters(), lr=0.1), x.double())
    assert loss64.dtype == torch.float64 and torch.isfinite(loss64)
