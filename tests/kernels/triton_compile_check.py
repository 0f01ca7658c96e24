"""Compile the Triton kernels for a GPU without one: ``python triton_compile_check.py [arch ...]``.

The interpreter tests check the kernels' maths but not that Triton's compiler accepts them (typing,
constexpr branches, casts: the interpreter is numpy and forgiving). This script makes the real
code path compile them: a stand-in driver tells Triton the current device is an NVIDIA GPU of
compute capability ``arch`` (default 90, Hopper, the GPU machine's), every kernel launch becomes
``warmup`` (compile to PTX and cubin with the wheel's own ptxas, no launch), and
``triton_run_direction`` runs forward and backward on CPU tensors over the configurations
below, so exactly the specialisations the GPU path would need are compiled. The matmuls between
the kernels see garbage, which is fine: nothing is compared. Prints one line per compiled
specialisation and a summary; exits non-zero on a compile error. Run in its own process: the
kernels must be imported with ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import os
import sys
import time
from itertools import product
from typing import Any

import torch


class _FakeDriver:
    """Enough of ``triton.runtime.driver.active`` for Triton to compile (never to launch)."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0


class _CompileOnly:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](...)`` compiles instead of launching."""

    def __init__(self, inner: Any, seen: set, arch: int) -> None:
        self.inner, self.seen, self.arch = inner, seen, arch

    def __getitem__(self, grid: Any):
        def compile_only(*args: Any, **kwargs: Any) -> None:
            key = (self.inner.__name__, tuple(type(a).__name__ if not isinstance(a, torch.Tensor) else str(a.dtype)
                                              for a in args), tuple(sorted(kwargs.items())))
            if key in self.seen:
                return
            start = time.perf_counter()
            kernel = self.inner.warmup(*args, grid=grid, **kwargs)
            assert "cubin" in kernel.asm, f"{self.inner.__name__}: no cubin"
            self.seen.add(key)
            flags = " ".join(f"{k}={v}" for k, v in sorted(kwargs.items()))
            took = time.perf_counter() - start
            print(f"sm_{self.arch} {self.inner.__name__:<13} {flags}  ({took:.1f} s)", flush=True)

        return compile_only


def configs() -> list[dict[str, Any]]:
    """Cell x mask layout x step mask x precision: what a training step and an inference call need."""
    out = []
    for (mode, reset_after), gm, steps in product(
        [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)], [0, 1, "G"], [False, True]
    ):
        out.append(dict(mode=mode, reset_after=reset_after, gm=gm, steps=steps, dtype=torch.float32, amp=None))
    for mode, reset_after in [("LSTM", True), ("GRU", False)]:
        out.append(dict(mode=mode, reset_after=reset_after, gm="G", steps=True, dtype=torch.float32,
                        amp=torch.bfloat16))
        out.append(dict(mode=mode, reset_after=reset_after, gm=1, steps=False, dtype=torch.float64, amp=None))
    return out


def seq_configs() -> list[dict[str, Any]]:
    """The sequence kernels (``persistent`` / ``fused_steps`` loops; ``graph`` replays the per-step kernels):
    every cell with per-gate masks and a step mask, the shared and unmasked layouts without one (the outputs
    a view of the states), autocast bf16 and float64."""
    out = [dict(mode=m, reset_after=r, gm="G", steps=True, dtype=torch.float32, amp=None)
           for m, r in [("LSTM", True), ("GRU", True), ("GRU", False), ("RNN", True)]]
    out += [dict(mode="LSTM", reset_after=True, gm=gm, steps=False, dtype=torch.float32, amp=None) for gm in (0, 1)]
    out += [dict(mode="GRU", reset_after=False, gm=1, steps=False, dtype=torch.float32, amp=None),
            dict(mode="LSTM", reset_after=True, gm="G", steps=True, dtype=torch.float32, amp=torch.bfloat16),
            dict(mode="LSTM", reset_after=True, gm=1, steps=False, dtype=torch.float64, amp=None)]
    return out


def run_sampler() -> None:
    """The masks' sampler kernel, float32 and float64 (every key and value is a kernel argument)."""
    from rnndrop._kernels import triton_autograd

    K = triton_autograd.kernels()
    for dtype in (torch.float32, torch.float64):
        out = torch.empty(2, 3, 5, dtype=dtype)
        vals = torch.tensor([0.0, 2.0], dtype=dtype)
        K.keyed_draws[(1,)](out, vals, 0xDEAD, 0xBEEF, 1, 2, 1 << 23, 2, 3, 5, BLOCK=1024)


def run_config(c: dict[str, Any]) -> None:
    from rnndrop._kernels.triton_autograd import triton_run_direction
    from rnndrop.masks import DirectionMasks
    from rnndrop.reference import CellConfig, DirectionParams

    t, b, i, h = 3, 4, 5, 16
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[c["mode"]]
    dt = c["dtype"]
    x = torch.zeros(t, b, i, dtype=dt, requires_grad=True)
    params = DirectionParams(*(torch.zeros(s, dtype=dt, requires_grad=True)
                               for s in [(gates * h, i), (gates * h, h), (gates * h,), (gates * h,)]))
    gm = gates if c["gm"] == "G" else c["gm"]
    masks = DirectionMasks(recurrent=torch.ones(gm, b, h, dtype=dt) if gm else None)
    state = tuple(torch.zeros(b, h, dtype=dt, requires_grad=True) for _ in range(2 if c["mode"] == "LSTM" else 1))
    keep = torch.ones(t, b, dtype=torch.bool) if c["steps"] else None
    cfg = CellConfig(c["mode"], reset_after=c["reset_after"])
    for train in (True, False):
        amp = torch.autocast("cpu", dtype=c["amp"] or torch.bfloat16, enabled=c["amp"] is not None)
        with amp, torch.set_grad_enabled(train):
            out, final = triton_run_direction(cfg, x, state, params, masks, keep, True, False)
        if train:
            (out.sum() + sum(f.sum() for f in final)).backward()


def main(argv: list[str]) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    import triton
    from triton.runtime import driver

    from rnndrop._kernels import triton_autograd

    archs = [int(a) for a in argv] or [90]
    total = time.perf_counter()
    count = 0
    for arch in archs:
        driver.set_active(_FakeDriver(arch))
        module = triton_autograd.kernels()
        if module is None:
            print(f"Triton kernels unavailable: {triton_autograd.unavailable_reason('cuda')}")
            return 2
        assert not module.INTERPRETED, "run without TRITON_INTERPRET"
        seen: set = set()
        names = ("fwd_cell", "fwd_gru_gates", "bwd_cell", "bwd_gru_r", "fwd_seq", "bwd_seq", "keyed_draws")
        real = {n: getattr(module, n) for n in names}
        for name, kernel in real.items():
            setattr(module, name, _CompileOnly(kernel, seen, arch))
        try:
            for c in configs():
                run_config(c)
            with triton_autograd.use_loop("persistent"):
                for c in seq_configs():
                    run_config(c)
            run_sampler()
        finally:
            for name, kernel in real.items():
                setattr(module, name, kernel)
        count += len(seen)
    print(f"compiled {count} kernel specialisations for sm_{','.join(map(str, archs))} with triton "
          f"{triton.__version__} in {time.perf_counter() - total:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
