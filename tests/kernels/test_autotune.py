"""backend="auto" measures which exact kernel is faster for a kind of call, once, and keeps to it."""

from __future__ import annotations

import pytest
import torch

import rnndrop
from rnndrop._kernels import autotune


@pytest.fixture
def measuring(monkeypatch):
    """Autotune on, no decisions yet, and a clock under the test's control: {kernel name: seconds per run}."""
    monkeypatch.setenv("RNNDROP_AUTOTUNE", "1")
    autotune.forget()
    costs: dict[str, float] = {}
    now = [0.0]
    runs: list[str] = []
    real_run = autotune._run

    def fake_run(stack_fn, call, backward):
        name = next(n for n, fn in candidates_seen if fn is stack_fn)
        runs.append(name)
        real_run(stack_fn, call, backward)  # the real work still runs (its gradients must go nowhere)
        now[0] += costs[name]

    candidates_seen: list = []
    real_choose = autotune.choose

    def spy_choose(call, candidates, backward, **kw):
        candidates_seen[:] = list(candidates)
        return real_choose(call, candidates, backward, clock=lambda: now[0], **kw)

    monkeypatch.setattr(autotune, "_run", fake_run)
    monkeypatch.setattr(autotune, "choose", spy_choose)
    yield costs, runs
    autotune.forget()


@pytest.mark.parametrize("faster", ["torch", "fused"])
def test_the_measured_faster_kernel_runs_and_is_remembered(kernel, measuring, faster) -> None:
    costs, runs = measuring
    costs.update({"torch": 2.0, "fused": 1.0} if faster == "fused" else {"torch": 1.0, "fused": 2.0})
    layer = rnndrop.GRU(4, 8)  # no dropout: torch's kernel and the fused one both run it exactly
    x = torch.randn(9, 3, 4)
    layer(x)[0].sum().backward()
    assert layer.last_backend == faster
    assert "auto measured" in layer.last_backend_reason and "ms" in layer.last_backend_reason
    measured = len(runs)
    assert measured >= 4 and set(runs) == {"torch", "fused"}
    layer(torch.randn(12, 3, 4))[0].sum().backward()  # the same kind (T 9 and 12 share a bucket)
    assert len(runs) == measured and layer.last_backend == faster
    with torch.no_grad():  # inference is another kind of call: measured on its own
        layer(x)
    assert len(runs) > measured


def test_measuring_leaves_the_callers_gradients_alone(kernel, measuring) -> None:
    costs, _ = measuring
    costs.update({"torch": 1.0, "fused": 2.0})
    torch.manual_seed(0)
    layer = rnndrop.LSTM(4, 8)
    twin = rnndrop.LSTM(4, 8, backend="torch")
    twin.load_state_dict(layer.state_dict())
    x = torch.randn(6, 2, 4, requires_grad=True)
    layer(x)[0].square().sum().backward()
    grads = [p.grad.clone() for p in layer.parameters()] + [x.grad.clone()]
    x.grad = None
    twin(x)[0].square().sum().backward()
    for a, b in zip(grads, [p.grad for p in twin.parameters()] + [x.grad]):
        torch.testing.assert_close(a, b)  # one backward's worth, not the measurement's too


def test_signature_buckets() -> None:
    assert [autotune._bucket(n) for n in (1, 7, 8, 9, 33, 64, 65)] == [1, 7, 8, 16, 64, 64, 128]


def test_off_means_the_static_rule(kernel, monkeypatch) -> None:
    monkeypatch.setenv("RNNDROP_AUTOTUNE", "0")
    layer = rnndrop.GRU(4, 8)
    layer(torch.randn(5, 2, 4))[0].sum().backward()
    assert layer.last_backend == "fused" and "static rule" in layer.last_backend_reason


def test_a_remembered_decision_asks_only_its_kernel_and_never_runs_a_call_it_refuses(
        kernel, measuring, monkeypatch) -> None:
    from rnndrop._kernels import registry

    costs, _ = measuring
    costs.update({"torch": 1.0, "fused": 2.0})
    layer = rnndrop.GRU(4, 8)
    x = torch.randn(5, 2, 4)
    layer(x)
    assert layer.last_backend == "torch"
    asked: list[str] = []
    refuse_torch = [False]

    def spied(k):
        def ineligible(call):
            asked.append(k.name)
            if k.name == "torch" and refuse_torch[0]:
                return "refused by the test"
            return k.ineligible(call)
        return registry.Kernel(k.name, ineligible, k.stack_fn, k.yields)

    monkeypatch.setattr(registry, "KERNELS", tuple(spied(k) for k in registry.KERNELS))
    layer(x)  # the same kind: only the remembered kernel's predicate is asked
    assert asked == ["torch"] and layer.last_backend == "torch" and "auto measured" in layer.last_backend_reason
    asked.clear()
    refuse_torch[0] = True  # now it cannot run the call: the full choice runs, never the refused kernel
    out = layer(x)[0]
    assert layer.last_backend == "fused" and "torch" in asked and "fused" in asked
    reference = rnndrop.GRU(4, 8, backend="reference")
    reference.load_state_dict(layer.state_dict())
    torch.testing.assert_close(out, reference(x)[0])
