"""The CUDA path's time loops (``triton_autograd.LOOPS``, issue 20): each equals the reference, on shapes
with several Triton programs per launch and ragged last blocks; the ``graph`` loop's static buffers
never leak one call's results into another's; the loop's choice, the product precision, the
interpreter in a GPU process and a failed first launch are handled as documented.

Under Triton's interpreter here (CPU tensors, the very kernels a GPU compiles; the ``graph`` loop's
capture is replaced by re-running it, see ``triton_autograd._capture``); on CUDA with a GPU.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from kernel_cases import TOLERANCE, Case, masks_to, max_scaled_error, run_twins

import rnndrop
from rnndrop import KernelFallbackWarning
from rnndrop._kernels import triton_autograd

FAST_LOOPS = ["fused_steps", "persistent", "graph"]


def check(case: Case, loop: str) -> None:
    with triton_autograd.use_loop(loop):
        res = run_twins(case)
    assert res["backends"] == ["triton", "reference"], res["backends"]
    err, where = max_scaled_error(res["pairs"])
    assert err <= TOLERANCE[case.dtype], f"{loop}: {where}: scaled error {err:.3e} for {case}"


# Every cell variant and mask layout on each loop: bidirectional (reverse walk, the outputs a view of the
# states in both orders), step masks with carry-over (separate state buffer) or none (the view). The graph
# loop replays the steps loop (test_triton_exactness): two cases check its buffers with and without the view.
CELL_CASES = [("LSTM", True, "per_gate", "random"), ("LSTM", True, "shared", "none"), ("GRU", True, "per_gate", "none"),
              ("GRU", False, "per_gate", "random"), ("GRU", False, "shared", "none"), ("RNN", True, "shared", "left")]


@pytest.mark.parametrize("loop,mode,reset_after,gate_masks,steps",
                         [(loop, *c) for loop in ("fused_steps", "persistent") for c in CELL_CASES]
                         + [("graph", *CELL_CASES[0]), ("graph", *CELL_CASES[4])])
def test_loop_equals_the_reference(triton_device: str, loop: str, mode: str, reset_after: bool, gate_masks: str,
                                   steps: str) -> None:
    check(Case(mode=mode, reset_after=reset_after, gate_masks=gate_masks, steps=steps, batch=3, time=4, input_size=3,
               hidden=4, bidirectional=True, device=triton_device), loop)


# Several programs per launch and ragged last blocks everywhere: 37 rows are three row blocks of 16 (the
# sequence kernels) and 37 * 20 = 740 elements three blocks of 256 (the per-step kernels); 20 units are
# one ragged product tile, 16 * 20 = 320 elements two ragged iterations of a program's element loop.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("loop", ["steps", "fused_steps", "persistent"])  # graph: the steps loop, replayed
def test_several_programs_and_ragged_blocks(triton_device: str, loop: str, dtype: torch.dtype) -> None:
    check(Case(mode="LSTM", gate_masks="per_gate", steps="random", batch=37, time=3, input_size=5, hidden=20,
               dtype=dtype, device=triton_device), loop)


@pytest.mark.parametrize("loop", FAST_LOOPS)
def test_ragged_blocks_gru_without_reset_after(triton_device: str, loop: str) -> None:
    """The reset_after=False GRU's two products per step, on three row blocks (the last ragged)."""
    check(Case(mode="GRU", reset_after=False, gate_masks="shared", batch=37, time=2, input_size=3, hidden=20,
               device=triton_device), loop)


def test_graph_replays_do_not_mix_calls(triton_device: str) -> None:
    """Two layers of one shape (the same captured graph), both forwards before both backwards, and a second
    round with new inputs: every output and gradient equals the reference's."""
    kw = dict(input_dropout=0.3, recurrent_dropout=0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(4)
    triton_autograd._graphs.clear()
    ours = [rnndrop.GRU(3, 5, backend="fused", **kw) for _ in range(2)]
    refs = [rnndrop.GRU(3, 5, backend="reference", **kw) for _ in range(2)]
    for a, b in zip(ours, refs):
        b.load_state_dict(a.state_dict())
        a.to(triton_device)
        b.to(triton_device)
    for _ in range(2):
        x = [torch.randn(4, 2, 3, dtype=torch.float64, generator=g).to(triton_device).requires_grad_()
             for _ in range(2)]
        masks = [masks_to(layer.sample_masks(2, 4, generator=g), triton_device) for layer in ours]
        with triton_autograd.use_loop("graph"):
            got = [layer(xi, dropout_masks=m) for layer, xi, m in zip(ours, x, masks)]
            sum(o.sum() + 2 * h.sum() for o, h in got).backward()
        assert all(layer.last_backend == "triton" for layer in ours)
        got_grads = [xi.grad.clone() for xi in x] + [p.grad.clone() for layer in ours for p in layer.parameters()]
        for xi in x:
            xi.grad = None
        want = [layer(xi, dropout_masks=m) for layer, xi, m in zip(refs, x, masks)]
        sum(o.sum() + 2 * h.sum() for o, h in want).backward()
        want_grads = [xi.grad for xi in x] + [p.grad for layer in refs for p in layer.parameters()]
        for (o1, h1), (o2, h2) in zip(got, want):
            torch.testing.assert_close(o1, o2, rtol=0, atol=1e-12)
            torch.testing.assert_close(h1, h2, rtol=0, atol=1e-12)
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
        for layer in ours + refs:
            layer.zero_grad()
        for xi in x:
            xi.grad = None
    # One capture of the forward and one of the backward served all eight calls (one signature each).
    assert len(triton_autograd._graphs.entries) == 2


def test_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(triton_autograd.LOOP_VARIABLE, raising=False)
    assert triton_autograd.loop_variant() == triton_autograd.DEFAULT_LOOP == "steps"
    monkeypatch.setenv(triton_autograd.LOOP_VARIABLE, "persistent")
    assert triton_autograd.loop_variant() == "persistent"
    with triton_autograd.use_loop("graph"):
        assert triton_autograd.loop_variant() == "graph"
    assert triton_autograd.loop_variant() == "persistent"
    monkeypatch.setenv(triton_autograd.LOOP_VARIABLE, "persistant")
    with pytest.raises(ValueError, match="persistant"):
        triton_autograd.loop_variant()
    with pytest.raises(ValueError, match="loop must be one of"), triton_autograd.use_loop("fast"):
        pass


def test_dot_precision_follows_torch_matmul_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert triton_autograd.dot_precision() == "tf32"
        matmul.fp32_precision = "ieee"
        assert triton_autograd.dot_precision() == "ieee"
    finally:
        matmul.fp32_precision = before


def test_interpreted_kernels_refuse_cuda_calls(triton_device: str) -> None:
    """TRITON_INTERPRET=1 in a process with a GPU: CUDA calls must not run interpreted on the host."""
    if not triton_autograd.kernels().INTERPRETED:
        pytest.skip("the kernels are compiled in this process")
    reason = triton_autograd.unavailable_reason("cuda")
    assert reason is not None and "TRITON_INTERPRET" in reason


def test_failed_first_launch_falls_back_with_a_reason(triton_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A launch failure (simulated) runs that call on the reference path with a warning and the reason in
    ``last_backend_reason``, and takes the kernels out of service for the next calls."""
    monkeypatch.setattr(triton_autograd, "_failed", None)

    def fail(*args: Any) -> Any:
        raise triton_autograd.LaunchError("simulated: ptxas failed")

    monkeypatch.setattr(triton_autograd.TritonDirection, "apply", fail)
    monkeypatch.setattr(triton_autograd, "unavailable_reason",
                        lambda device_type: triton_autograd._failed)  # CPU tensors: what CUDA ones would see
    ours = rnndrop.LSTM(3, 4, recurrent_dropout=0.3, backend="auto").to(triton_device)
    ref = rnndrop.LSTM(3, 4, recurrent_dropout=0.3, backend="reference").to(triton_device)
    ref.load_state_dict(ours.state_dict())
    masks = masks_to(ours.sample_masks(2, 3, generator=torch.Generator().manual_seed(0)), triton_device)
    x = torch.randn(3, 2, 3).to(triton_device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, _ = ours(x, dropout_masks=masks)
    assert next(str(w.message) for w in caught if w.category is KernelFallbackWarning).startswith(
        "rnndrop: simulated: ptxas failed")
    assert ours.last_backend == "reference" and ours.last_backend_reason == "simulated: ptxas failed"
    torch.testing.assert_close(out, ref(x, dropout_masks=masks)[0], rtol=0, atol=0)
    ours(x, dropout_masks=masks)
    assert ours.last_backend == "reference" and "simulated: ptxas failed" in ours.last_backend_reason


def test_the_triton_sampler_draws_the_definition(triton_device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The masks' one-launch sampler (registered for CUDA tensors) gives counter_rng's numbers exactly."""
    from rnndrop import counter_rng

    for shape, p, dtype in (((4, 37, 20), 0.3, torch.float32), ((3, 1, 300), 0.5, torch.float64),
                            ((2, 5, 7), 0.05, torch.float64)):
        keys = counter_rng.mask_keys((0x9E3779B9, 12345), 1, 1, "recurrent")
        fast = triton_autograd.keyed_draws_on_device(*keys, round(p * counter_rng.RESOLUTION), shape, 0.0,
                                                     1 / (1 - p), dtype, torch.device(triton_device))
        assert fast is not None
        monkeypatch.setattr(counter_rng, "_fast", {})
        want = counter_rng.keyed_draws(keys, p, shape, below=0.0, above=1 / (1 - p), dtype=dtype,
                                       device=triton_device)
        monkeypatch.undo()
        assert fast.dtype == dtype and torch.equal(fast, want)
    assert counter_rng.fast_sampler("cuda") is triton_autograd.keyed_draws_on_device
