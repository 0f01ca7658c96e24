"""rnndrop.inference: Monte-Carlo dropout (mode switching, statistics, chunking, seeding)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import rnndrop
from rnndrop.inference import is_dropout_module, masks_per_sample

SIGMAS = 6.0


def classifier(p: float = 0.5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(p), nn.Linear(16, 3)
    )


def trained_bn(model: nn.Sequential) -> nn.Sequential:
    """Give BatchNorm non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 8) * 3 + 1)
    return model


class Boom(nn.Module):
    """Raises on the n-th call."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise RuntimeError("boom")
        return x


# ----------------------------------------------------------------------------- mode switching
def test_only_dropout_modules_are_switched_on() -> None:
    model = trained_bn(classifier())
    stats = {k: v.clone() for k, v in model[1].state_dict().items()}
    seen: dict[str, bool] = {}
    for name, m in model.named_children():
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, mod.training))
    model.train()
    model[4].eval()  # a mixed pattern of flags, to be restored module by module
    before = [m.training for m in model.modules()]
    rnndrop.mc_predict(model, torch.randn(5, 8), samples=4)
    assert seen == {"0": False, "1": False, "2": False, "3": True, "4": False}
    for k, v in model[1].state_dict().items():
        assert torch.equal(v, stats[k]), f"BatchNorm {k} changed"
    assert [m.training for m in model.modules()] == before


def test_modes_restored_after_exception() -> None:
    model = nn.Sequential(rnndrop.Dropout(0.5, generator=torch.Generator()), Boom(after=1), nn.BatchNorm1d(4))
    own = model[0].generator
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        rnndrop.mc_predict(model, torch.randn(3, 4), samples=5, vectorize=False, seed=1, task="regression")
    assert all(m.training for m in model.modules())
    assert model[0].generator is own
    model.eval()
    with pytest.raises(RuntimeError, match="boom"), rnndrop.mc_dropout(model) as active:
        assert active == [model[0]]
        model(torch.randn(3, 4))
    assert not any(m.training for m in model.modules())


def test_mc_dropout_context_manager_sets_only_own_flag() -> None:
    emb = rnndrop.EmbeddingDropout(nn.Embedding(10, 4), 0.5)
    model = nn.Sequential(emb, rnndrop.LockedDropout(0.2, batch_first=True), nn.LayerNorm(4)).train()
    with rnndrop.mc_dropout(model) as active:
        assert active == [model[0], model[1]]
        assert [m.training for m in model.modules()] == [False, True, False, True, False]
    assert all(m.training for m in model.modules())


def test_which_modules_count_as_dropout() -> None:
    assert is_dropout_module(nn.Dropout(0.1))
    assert is_dropout_module(nn.AlphaDropout(0.1))
    assert is_dropout_module(nn.LSTM(3, 4, num_layers=2, dropout=0.2))
    assert not is_dropout_module(nn.LSTM(3, 4, num_layers=2))
    assert not is_dropout_module(nn.BatchNorm1d(3))
    assert is_dropout_module(rnndrop.LSTM(3, 4, input_dropout=0.2))
    assert not is_dropout_module(rnndrop.LSTM(3, 4))
    assert is_dropout_module(rnndrop.SpatialDropout2d(0.1))
    # Per-row noise, so a batch may be repeated to vectorise passes ...
    assert masks_per_sample(rnndrop.GRU(3, 4, recurrent_dropout=0.2))
    assert masks_per_sample(nn.Dropout2d(0.1))
    # ... but not when one mask serves the whole batch, or when nothing is declared.
    assert not masks_per_sample(rnndrop.EmbeddingDropout(nn.Embedding(4, 2), 0.1))
    assert not masks_per_sample(nn.Linear(2, 2))
    assert not masks_per_sample(rnndrop.LSTM(3, 4, weight_dropout=0.2))
    assert not masks_per_sample(rnndrop.LSTM(3, 4, input_dropout=0.2, mask_scope="batch"))
    assert masks_per_sample(rnndrop.LSTM(3, 4, zoneout_hidden=0.2))


def test_include_switches_custom_modules() -> None:
    class MyDrop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(x, 0.5, self.training)

    model = nn.Sequential(MyDrop())
    x = torch.ones(4, 50)
    off = rnndrop.mc_predict(model, x, samples=3, task="regression")
    assert torch.equal(off.std, torch.zeros(4, 50))
    on = rnndrop.mc_predict(model, x, samples=3, task="regression", include=lambda m: isinstance(m, MyDrop))
    assert on.std.max() > 0
    assert not on.vectorized  # undeclared modules are assumed to share masks


# ----------------------------------------------------------------------------- statistics
def test_p0_single_sample_equals_deterministic() -> None:
    model = trained_bn(classifier(p=0.0)).eval()
    x = torch.randn(6, 8)
    with torch.no_grad():
        expected = model(x).softmax(-1)
    r = rnndrop.mc_predict(model, x, samples=1)
    assert torch.allclose(r.mean, expected)
    assert torch.equal(r.std, torch.zeros_like(expected))
    reg = rnndrop.mc_predict(model, x, samples=1, task="regression")
    with torch.no_grad():
        assert torch.equal(reg.mean, model(x))


def test_shapes_and_information_bounds() -> None:
    model = trained_bn(classifier(p=0.5))
    x = torch.randn(7, 8)
    r = rnndrop.mc_predict(model, x, samples=30, seed=0)
    assert r.mean.shape == r.std.shape == (7, 3)
    assert r.entropy.shape == r.expected_entropy.shape == r.mutual_information.shape == (7,)
    assert torch.allclose(r.mean.sum(-1), torch.ones(7))
    assert bool((r.entropy >= 0).all()) and bool((r.entropy <= math.log(3) + 1e-6).all())
    assert bool((r.mutual_information >= 0).all())
    assert r.mutual_information.max() > 1e-4, "dropout passes disagree, so the weights carry information"
    assert r.outputs is None and r.samples == 30
    # Sequence classifier: class axis last, statistics keep (B, T).
    seq = nn.Sequential(nn.Linear(4, 5), rnndrop.Dropout(0.3))
    s = rnndrop.mc_predict(seq, torch.randn(2, 6, 4), samples=4)
    assert s.mean.shape == (2, 6, 5) and s.entropy.shape == (2, 6)
    # Class axis elsewhere.
    c = rnndrop.mc_predict(seq, torch.randn(2, 6, 4), samples=4, class_dim=1)
    assert torch.allclose(c.mean.sum(1), torch.ones(2, 5)) and c.entropy.shape == (2, 5)


def test_no_dropout_means_no_epistemic_uncertainty() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4)).eval()
    r = rnndrop.mc_predict(model, torch.randn(10, 8), samples=5)
    # Copies of a row in one vectorised call may differ in the last bit (GEMM blocking).
    assert r.std.max() <= 1e-6
    assert r.mutual_information.abs().max() <= 1e-6
    assert torch.allclose(r.entropy, r.expected_entropy, atol=1e-6)


@pytest.mark.parametrize("max_batch", [None, 15, 4])
def test_statistics_equal_direct_computation(max_batch) -> None:
    # 7 passes over 5 rows: max_batch 15 -> calls of 3, 3, 1 passes; 4 -> row chunks of 4 and 1.
    model = trained_bn(classifier(p=0.5))
    r = rnndrop.mc_predict(model, torch.randn(5, 8), samples=7, max_batch=max_batch, seed=3, return_outputs=True)
    probs = r.outputs
    assert probs.shape == (7, 5, 3)
    assert torch.allclose(r.mean, probs.mean(0), atol=1e-6)
    assert torch.allclose(r.std, probs.std(0, correction=0), atol=1e-6)
    entropy = -(probs.mean(0) * probs.mean(0).log()).sum(-1)
    expected = -(probs * probs.log()).sum(-1).mean(0)
    assert torch.allclose(r.entropy, entropy, atol=1e-6)
    assert torch.allclose(r.expected_entropy, expected, atol=1e-6)
    assert torch.allclose(r.mutual_information, (entropy - expected).clamp_min(0), atol=1e-6)
    assert r.forward_calls == {None: 1, 15: 3, 4: 14}[max_batch]


def test_regression_passes_are_dropout_draws() -> None:
    # The identity net with dropout: every pass output is 0 or x/(1-p), in the right row, and
    # the kept fraction follows Binomial(samples * elements, 1-p).
    p, samples = 0.3, 40
    x = torch.arange(1, 7, dtype=torch.float32).reshape(6, 1).expand(6, 50).contiguous()
    r = rnndrop.mc_predict(nn.Sequential(rnndrop.Dropout(p)), x, samples=samples, task="regression",
                           return_outputs=True, max_batch=24)
    kept = r.outputs != 0
    assert torch.allclose(r.outputs[kept], (x / (1 - p)).expand_as(r.outputs)[kept])
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) <= SIGMAS * math.sqrt(p * (1 - p) / n)
    q = kept.float().mean(0)  # per element: fraction of passes that kept it
    assert torch.allclose(r.mean, x / (1 - p) * q, atol=1e-5)
    assert torch.allclose(r.std, x / (1 - p) * (q * (1 - q)).sqrt(), atol=1e-5)
    # vectorised passes got independent masks: no two passes alike
    flat = r.outputs.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == samples
    assert r.vectorized and r.forward_calls == math.ceil(samples / 4)


# ----------------------------------------------------------------------------- seeding and chunk layout
def test_seed_reproducible_and_leaves_global_rng() -> None:
    model = trained_bn(classifier())
    x = torch.randn(4, 8)
    state = torch.get_rng_state()
    a = rnndrop.mc_predict(model, x, samples=9, seed=11, return_outputs=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = rnndrop.mc_predict(model, x, samples=9, seed=11, return_outputs=True)
    c = rnndrop.mc_predict(model, x, samples=9, seed=12, return_outputs=True)
    assert torch.equal(a.outputs, b.outputs) and torch.equal(a.mean, b.mean)
    assert not torch.equal(a.outputs, c.outputs)


def test_seed_overrides_module_generators() -> None:
    own = torch.Generator().manual_seed(0)
    model = nn.Sequential(rnndrop.Dropout(0.5, generator=own))
    x = torch.ones(3, 20)
    before = own.get_state()
    a = rnndrop.mc_predict(model, x, samples=4, seed=5, task="regression", return_outputs=True)
    b = rnndrop.mc_predict(model, x, samples=4, seed=5, task="regression", return_outputs=True)
    assert torch.equal(a.outputs, b.outputs)
    assert torch.equal(own.get_state(), before) and model[0].generator is own


def test_one_pass_per_call_is_layout_independent() -> None:
    # With one pass per call each pass is seeded from (seed, pass index): the same numbers
    # whatever `samples`, `max_batch` (>= batch) or `vectorize` say.
    model = trained_bn(classifier())
    x = torch.randn(6, 8)
    ref = rnndrop.mc_predict(model, x, samples=5, seed=2, vectorize=False, return_outputs=True).outputs
    prefix = rnndrop.mc_predict(model, x, samples=3, seed=2, vectorize=False, return_outputs=True).outputs
    assert torch.equal(prefix, ref[:3])
    k1 = rnndrop.mc_predict(model, x, samples=5, seed=2, max_batch=6, return_outputs=True)
    assert torch.equal(k1.outputs, ref) and not k1.vectorized
    wide = rnndrop.mc_predict(model, x, samples=5, seed=2, vectorize=False, max_batch=1000, return_outputs=True)
    assert torch.equal(wide.outputs, ref)


def test_vectorised_layouts_agree_without_noise_and_in_distribution() -> None:
    # Regrouping passes changes which random numbers each pass sees (documented), never the
    # computation: without noise every layout gives the same numbers ...
    model = trained_bn(classifier(p=0.0))
    x = torch.randn(6, 8)
    results = [rnndrop.mc_predict(model, x, samples=6, seed=0, max_batch=m).mean for m in (None, 12, 6, 4)]
    for r in results[1:]:
        assert torch.allclose(r, results[0], atol=1e-6)
    # ... and with noise the drop rate of each layout is Binomial(n, p).
    p = 0.4
    ones = torch.ones(8, 64)
    for m in (None, 16, 8, 5):
        r = rnndrop.mc_predict(nn.Sequential(nn.Dropout(p)), ones, samples=20, seed=0, max_batch=m,
                               task="regression", return_outputs=True)
        dropped = r.outputs == 0
        assert abs(dropped.float().mean().item() - p) <= SIGMAS * math.sqrt(p * (1 - p) / dropped.numel())


def test_batch_shared_masks_run_pass_by_pass() -> None:
    emb = rnndrop.EmbeddingDropout(nn.Embedding(20, 4), 0.5)
    model = nn.Sequential(emb, nn.Flatten(), nn.Linear(12, 2))
    ids = torch.randint(0, 20, (5, 3))
    r = rnndrop.mc_predict(model, ids, samples=6, return_outputs=True)
    assert not r.vectorized and r.forward_calls == 6
    assert len({tuple(o.flatten().tolist()) for o in r.outputs}) > 1
    with pytest.raises(ValueError, match=r"share one mask across the batch \(EmbeddingDropout\)"):
        rnndrop.mc_predict(model, ids, samples=6, vectorize=True)


def test_recurrent_layers_time_major_with_output_fn() -> None:
    torch.manual_seed(0)
    lstm = rnndrop.LSTM(3, 4, input_dropout=0.3, recurrent_dropout=0.3)
    x = torch.randn(7, 5, 3)  # (T, B, C)
    r = rnndrop.mc_predict(lstm, x, samples=8, batch_dim=1, output_fn=lambda out: out[0], task="regression",
                           return_outputs=True)
    assert r.vectorized and r.forward_calls == 1
    assert r.mean.shape == (7, 5, 4) and r.outputs.shape == (8, 7, 5, 4)
    # every copy of the batch in the one call got its own masks
    assert len({tuple(o.flatten().tolist()) for o in r.outputs}) == 8
    with torch.no_grad():
        assert torch.equal(lstm.eval()(x)[0], lstm(x)[0])  # mode restored to eval, deterministic
    wd = rnndrop.LSTM(3, 4, weight_dropout=0.3)
    s = rnndrop.mc_predict(wd, x, samples=3, batch_dim=1, output_fn=lambda out: out[0], task="regression")
    assert not s.vectorized and s.forward_calls == 3


def test_tuple_inputs_are_repeated_together() -> None:
    class Add(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = rnndrop.Dropout(0.5)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.drop(a) + b

    a, b = torch.zeros(3, 4), torch.arange(3.0).reshape(3, 1).expand(3, 4)
    r = rnndrop.mc_predict(Add(), (a, b), samples=5, task="regression")
    assert torch.equal(r.mean, b) and r.vectorized


# ----------------------------------------------------------------------------- errors
def test_argument_errors() -> None:
    model = classifier()
    x = torch.randn(2, 8)
    with pytest.raises(ValueError, match="samples must be an int >= 1"):
        rnndrop.mc_predict(model, x, samples=0)
    with pytest.raises(ValueError, match="task must be one of"):
        rnndrop.mc_predict(model, x, task="ranking")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="probabilities=True only applies"):
        rnndrop.mc_predict(model, x, task="regression", probabilities=True)
    with pytest.raises(ValueError, match="max_batch must be an int >= 1"):
        rnndrop.mc_predict(model, x, max_batch=0)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        rnndrop.mc_predict(lambda t: t, x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        rnndrop.mc_predict(model, x, probabilities=True)
    with pytest.raises(TypeError, match="output_fn=lambda out: out\\[0\\]"):
        rnndrop.mc_predict(rnndrop.GRU(8, 3, input_dropout=0.1), x.unsqueeze(0), batch_dim=1)
    with pytest.raises(ValueError, match="rows along batch_dim=0"):
        rnndrop.mc_predict(nn.Sequential(nn.Dropout(0.1), nn.Flatten(0)), x, samples=3)
    with pytest.raises(ValueError, match="x\\[1\\] must have 2 rows"):
        rnndrop.mc_predict(model, (x, torch.randn(3, 8)))
    with pytest.raises(ValueError, match="class_dim must be in"):
        rnndrop.mc_predict(model, x, class_dim=2)


class _FunctionalDropout(nn.Module):
    """Dropout written as F.dropout(x, p, self.training): mc_dropout switches it off with the model."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.nn.functional.dropout(x, 0.5, self.training))


def test_mc_predict_warns_when_nothing_is_stochastic() -> None:
    model = _FunctionalDropout()
    x = torch.randn(6, 4)
    with pytest.warns(UserWarning, match="no dropout module to switch on.*include="):
        pred = rnndrop.mc_predict(model, x, samples=5)
    assert float(pred.std.max()) < 1e-6
    # with include= the module draws, and nothing is said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pred = rnndrop.mc_predict(model, x, samples=5, include=lambda m: isinstance(m, _FunctionalDropout))
    assert bool(pred.std.any())


def test_mc_predict_warns_on_identical_passes() -> None:
    model = nn.Sequential(nn.Dropout(0.0), nn.Linear(4, 3))
    with pytest.warns(UserWarning, match="identical outputs.*Dropout"):
        rnndrop.mc_predict(model, torch.randn(6, 4), samples=4)
