"""torch's own ModuleInfo entries for nn.LSTM / GRU / RNN, run on rnndrop's classes.

``torch.testing._internal.common_modules.module_db`` ships with torch: for each recurrent module it
lists constructor and forward inputs (with torch.nn's outputs as reference) and the inputs torch.nn
must reject, with the exception class and message pattern. Here every one of them runs on rnndrop's
class, on every backend ``auto`` may pick, at 1 and 2 threads: outputs and gradients equal torch.nn's
with the same weights, and every error is torch's class with torch's message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import rnndrop

common_modules = pytest.importorskip("torch.testing._internal.common_modules")
ModuleErrorEnum = common_modules.ModuleErrorEnum

OURS = {nn.LSTM: rnndrop.LSTM, nn.GRU: rnndrop.GRU, nn.RNN: rnndrop.RNN}
INFOS = [mi for mi in common_modules.module_db if mi.module_cls in OURS]
BACKENDS = ("auto", "fused", "torch", "reference")


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _inputs(info, dtype: torch.dtype, training: bool):
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    return []


def test_module_db_has_the_three_layers() -> None:
    assert {mi.module_cls for mi in INFOS} == set(OURS)


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("info", INFOS, ids=lambda mi: mi.module_cls.__name__)
def test_forward_and_gradients_equal_torch_nn(kernel, info, training, backend, num_threads) -> None:
    for module_input in _inputs(info, torch.float64, training):
        if module_input.forward_input is None:
            continue
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        theirs = info.module_cls(*args, **kwargs).to(torch.float64).train(training)
        ours = OURS[info.module_cls](*args, **kwargs, backend=backend).to(torch.float64).train(training)
        ours.load_state_dict(theirs.state_dict())
        f_args, f_kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
        with threads(num_threads):
            try:
                got = ours(*f_args, **f_kwargs)
            except rnndrop.KernelUnavailableError:
                # A backend asked for by name that cannot run the call (the fused kernel has no proj_size):
                # then auto never picks it for that call, which the "auto" case checks.
                assert backend != "auto"
                continue
            want = theirs(*f_args, **f_kwargs)
            torch.testing.assert_close(got, want)
            if module_input.reference_fn is not None:  # torch's own reference implementation
                torch.testing.assert_close(got, module_input.reference_fn(theirs, *f_args, **f_kwargs))
            cot = [torch.randn_like(t) for t in _tensors(got)]
            inputs = [t for t in _tensors(f_args) if t.requires_grad]
            g_ours = torch.autograd.grad(_tensors(got), inputs + list(ours.parameters()), cot)
            g_theirs = torch.autograd.grad(_tensors(want), inputs + list(theirs.parameters()), cot)
        for a, b in zip(g_ours, g_theirs):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("info", INFOS, ids=lambda mi: mi.module_cls.__name__)
def test_errors_are_torch_nn_errors(info) -> None:
    """Same exception class (rnndrop's subclass of it) and torch's message, for every error torch lists."""
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                           training=True)
    assert errors
    for error in errors:
        module_input = error.module_error_input
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        with pytest.raises(error.error_type) as caught:
            m = OURS[info.module_cls](*args, **kwargs)
            assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, f"constructed {args} {kwargs}"
            m(*module_input.forward_input.args, **module_input.forward_input.kwargs)
        assert caught.match(error.error_regex)


@pytest.mark.parametrize("backend", ["auto", "fused", "reference"])
@pytest.mark.parametrize("info", INFOS, ids=lambda mi: mi.module_cls.__name__)
def test_gradgradcheck(kernel, info, backend) -> None:
    """torch's test_gradgrad on a few of its inputs: exact second derivatives on every backend."""
    for module_input in _inputs(info, torch.float64, True)[3:4]:  # bidirectional, two layers, hx given
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        if backend == "fused" and kwargs.get("proj_size"):
            continue  # the fused kernel has no projection (auto runs these on torch's kernel)
        m = OURS[info.module_cls](*args, **kwargs, backend=backend).to(torch.float64)
        x, *rest = module_input.forward_input.args
        w_ih, w_hh = list(m.parameters())[:2]

        def run(x, w_ih, w_hh, m=m, rest=rest):  # w_ih, w_hh are m's own (gradcheck perturbs them in place)
            return tuple(_tensors(m(x, *rest)))

        assert torch.autograd.gradgradcheck(run, (x, w_ih, w_hh), check_batched_grad=False)
        assert torch.autograd.gradcheck(run, (x, w_ih, w_hh), check_batched_grad=True)
