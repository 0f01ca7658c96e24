"""Which implementation runs a call: eligibility predicates (with reasons) and the selection.

A kernel is registered as ``(name, predicate, stack_fn)``: the predicate returns ``None``
when the kernel can run a call exactly like the reference, else a short reason, so that
``backend="fused"`` / ``"torch"`` can raise with it and ``backend="auto"`` can fall back knowingly.
``stack_fn`` has the contract of :func:`rnndrop.reference.run_stack`; kernels that implement one
direction plug their direction function into ``run_stack``.

Order of preference (``backend="auto"`` takes the first that accepts the call):

1. ``torch``: torch's own kernels (oneDNN / cuDNN) for calls whose maths is torch.nn's once the
   active dropout is folded in (:mod:`.torch_native`);
2. ``fused``: rnndrop's C++ CPU kernel (:mod:`.autograd`, ``csrc/cpu``);
3. ``triton``: rnndrop's Triton kernels for CUDA tensors (:mod:`.triton_autograd`);
4. the reference loop (:func:`rnndrop.reference.run_stack`).

An entry may also *yield* a call it can run (``Kernel.yields``: a reason, or ``None``): ``auto``
then takes the next entry that accepts the call, and comes back to the yielding one only if none
does. That is a speed rule, never an exactness one: every entry computes the reference's function.
The one rule today: on the CPU, torch's kernel yields to the fused kernel except for LSTM calls
without a backward (see :func:`torch_yields` for the measured figures).

Options the kernels do not know fall back by construction: any field of
:class:`~rnndrop.reference.CellConfig`, :class:`~rnndrop.masks.DirectionMasks` or
:class:`~rnndrop.reference.DirectionParams` beyond the ones listed here (each kernel lists the
mask kinds it implements) makes a call ineligible unless it holds its default value.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .._runtime import cpu_autocast_dtype, is_compiling, under_functorch
from ..errors import KernelFallbackWarning, KernelUnavailableError
from ..masks import DropoutMasks
from ..reference import CellConfig, DirectionParams, run_stack
from . import autotune, loader, ops, triton_autograd
from .autograd import CPU_ACTIVATIONS, TRITON_ACTIVATIONS, fused_run_direction
from .torch_native import torch_ineligible, torch_run_stack
from .triton_autograd import triton_run_direction

# "fused" asks for one of rnndrop's compiled kernels, whichever serves the device (CPU extension,
# Triton on CUDA); "torch" for torch's own kernel (oneDNN / cuDNN).
BACKENDS: tuple[str, ...] = ("auto", "torch", "fused", "reference")
# Which registry entries each explicit backend may use.
_BACKEND_KERNELS = {"torch": ("torch",), "fused": ("fused", "triton")}

# run_stack's signature: (cfg, x, init_states, params, masks, step_mask, zero_masked_output) -> (output, finals)
StackFn = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]

_KNOWN_CELL_FIELDS = {"mode", "activation", "recurrent_activation", "reset_after"}
# weight_hh (DropConnect) is folded into w_hh by run_stack before any direction function runs.
_TRITON_MASK_FIELDS = frozenset({"input", "recurrent", "weight_hh"})
_CPU_MASK_FIELDS = _TRITON_MASK_FIELDS | {"candidate", "zoneout_h", "zoneout_c"}
_KNOWN_PARAM_FIELDS = {"w_ih", "w_hh", "b_ih", "b_hh", "w_hr"}

# Parameter dtypes the fused CPU kernel runs by computing in float32: every state, product and
# element-wise step is float32 (more accurate than the reference loop's own bf16 / fp16 arithmetic,
# which rounds after every operation); inputs, parameters and masks are widened exactly, outputs and
# final states rounded back once; gradients reach the low-precision parameters through the casts.
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Call:
    """What a predicate may look at: one stacked-layer call (time-major ``x`` ``(T, B, I)``)."""

    cfg: CellConfig
    x: torch.Tensor
    init_states: Sequence[torch.Tensor]
    params: Sequence[Sequence[DirectionParams]]
    masks: DropoutMasks | None
    step_mask: torch.Tensor | None
    zero_masked_output: bool = False


def _never_yields(call: Call) -> str | None:
    return None


@dataclass(frozen=True)
class Kernel:
    """A registry entry: ``ineligible(call)`` says why it cannot run a call exactly (``None``: it can);
    ``yields(call)`` why ``auto`` should prefer a later entry that accepts it (``None``: no reason)."""

    name: str
    ineligible: Callable[[Call], str | None]
    stack_fn: StackFn
    yields: Callable[[Call], str | None] = _never_yields  # asked first: must accept any call, cheaply


_CELL_DEFAULTS = tuple((f.name, f.default) for f in dataclasses.fields(CellConfig) if f.name not in _KNOWN_CELL_FIELDS)
_EXTRA_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(DirectionParams) if f.name not in _KNOWN_PARAM_FIELDS)


def _unknown_options(call: Call, known_masks: frozenset[str], kernel: str) -> str | None:
    for name, default in _CELL_DEFAULTS:
        if getattr(call.cfg, name) != default:
            return f"option {name}={getattr(call.cfg, name)!r} is not implemented by the {kernel}"
    if _EXTRA_PARAM_FIELDS:
        for layer in call.params:
            for p in layer:
                for name in _EXTRA_PARAM_FIELDS:
                    if getattr(p, name) is not None:
                        return f"parameter {name} is not implemented by the {kernel}"
    if call.masks is not None:
        for layer in call.masks.layers:
            for m in layer:
                for name in m.active():
                    if name not in known_masks:
                        return f"{name} masks are not implemented by the {kernel}"
    return None


def _kernel_ineligible(
    call: Call, kernel: str, dtypes: tuple[torch.dtype, ...], known_masks: frozenset[str],
    activations: frozenset[str],
) -> str | None:
    """The checks every compiled kernel shares: cells, activations, options, dtypes, one device."""
    cfg, x = call.cfg, call.x
    if cfg.mode not in ("LSTM", "GRU", "RNN"):
        return f"mode {cfg.mode!r} has no {kernel}"
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"dtype {x.dtype} is not supported by the {kernel} ({names} are)"
    if cfg.activation not in activations:
        return f"activation {cfg.activation!r} is not implemented by the {kernel} ({sorted(activations)} are)"
    if cfg.mode != "RNN" and cfg.recurrent_activation not in activations:
        return (f"recurrent_activation {cfg.recurrent_activation!r} is not implemented by the {kernel} "
                f"({sorted(activations)} are)")
    reason = _unknown_options(call, known_masks, kernel)
    if reason is not None:
        return reason
    tensors: list[torch.Tensor] = [*call.init_states]
    for layer in call.params:
        for p in layer:
            if p.w_hr is not None:
                return "proj_size > 0 (projected LSTM) runs on the reference path"
            tensors += [t for t in (p.w_ih, p.w_hh, p.b_ih, p.b_hh) if t is not None]
    if call.masks is not None:
        for layer in call.masks.layers:
            for m in layer:
                for t in (m.input, m.recurrent, m.candidate, m.zoneout_h, m.zoneout_c):
                    if t is None:
                        continue
                    if t.requires_grad:
                        return "dropout masks that require grad run on the reference path"
                    tensors.append(t)
        tensors += [t for t in call.masks.between if t is not None]
    if under_functorch(*tensors, x):
        return (f"torch.func transforms (grad, vjp, jacrev, vmap) run the reference loop: the {kernel} reads "
                "raw tensor memory, which functorch's wrapped tensors do not have")
    for t in tensors:
        if t.device != x.device:
            return f"a parameter, state or mask is on {t.device}, the input on {x.device}"
        if t.dtype != x.dtype:
            return f"a parameter, state or mask has dtype {t.dtype}, the input {x.dtype}"
    if call.step_mask is not None and call.step_mask.device != x.device:
        return f"step_mask is on {call.step_mask.device}, the input on {x.device}"
    return None


def cpu_ineligible(call: Call) -> str | None:
    """``None`` if the compiled CPU kernel reproduces the reference for this call, else why not."""
    # The device first: a CUDA call must not load (or compile, on first use) the CPU extension.
    if call.x.device.type != "cpu":
        return f"input is on {call.x.device}, the fused kernel is CPU only"
    reason = loader.unavailable_reason()
    if reason is not None:
        return reason
    lowp = cpu_autocast_dtype()
    if lowp is not None:
        if lowp != torch.bfloat16:
            return f"CPU autocast to {lowp} runs on the reference path (the fused kernel does bf16)"
        if call.x.dtype != torch.float32:
            return f"CPU autocast with {call.x.dtype} parameters runs on the reference path (float32 is fused)"
        if not ops.cpu_has_bf16():
            return "CPU autocast to bfloat16 needs AVX512_BF16 on this CPU (it has none); reference path"
    if any((p.b_ih is None) != (p.b_hh is None) for layer in call.params for p in layer):
        return "only one of b_ih / b_hh is given (the fused kernel takes both or neither)"
    # bf16 / fp16 parameters (model.to(torch.bfloat16)) are computed in float32 (fused_run_stack).
    dtypes = (torch.float32, torch.float64) if lowp is not None else (torch.float32, torch.float64, *LOW_PRECISION)
    return _kernel_ineligible(call, "fused kernel", dtypes, _CPU_MASK_FIELDS, CPU_ACTIVATIONS)


def triton_ineligible(call: Call) -> str | None:
    """``None`` if the Triton kernels reproduce the reference for this call, else why not.

    CUDA tensors (float32 or float64 parameters; bf16/fp16 come from autocast, which this path
    supports). CPU tensors only inside :func:`rnndrop._kernels.triton_autograd.cpu_interpreter`
    under ``TRITON_INTERPRET=1`` (the tests); the default path on CPU stays the C++ extension.
    """
    device = call.x.device.type
    if device == "cpu" and not triton_autograd.cpu_interpreter_enabled():
        return "input is on cpu, the Triton kernel runs CUDA tensors"
    if device not in ("cpu", "cuda"):
        return f"input is on {call.x.device}, the Triton kernel runs CUDA tensors"
    reason = triton_autograd.unavailable_reason(device)
    if reason is not None:
        return reason
    if call.x.shape[1] == 0:
        return "empty batch (nothing to launch)"
    return _kernel_ineligible(call, "Triton kernel", (torch.float32, torch.float64), _TRITON_MASK_FIELDS,
                              TRITON_ACTIVATIONS)


def _backward_follows(call: Call) -> bool:
    if not torch.is_grad_enabled():
        return False
    tensors = [call.x, *call.init_states, *(t for layer in call.params for p in layer
                                            for t in (p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.w_hr) if t is not None)]
    return any(t.requires_grad for t in tensors)


def torch_yields(call: Call) -> str | None:
    """Why ``auto`` prefers the fused CPU kernel to torch's for a call both run exactly (``None``: it does not).

    Measured side by side (``benchmarks/bench_choice.py``, fused ÷ torch on the same layers, no
    dropout, small / main / large configs; AMD EPYC Zen 4, 2026-12-03; docs/benchmarks.md has the
    table): torch's CPU GRU and RNN are ATen loops of one matmul and several element-wise ops per step
    (float32, 2 threads: fused 0.33-0.47x for training, 0.35-0.48x for inference); float64 is such a
    loop for every cell (fused 0.60-0.94x, except inference at hidden 512, 1.04-1.12x at 2 threads:
    MKL's dgemm dominates both, and torch's kernel keeps that call); with padding (``lengths=``,
    packed input) torch's LSTM is such a loop too (fused 0.26-0.49x training, 0.43-0.86x inference);
    dense float32 LSTM training runs on oneDNN and takes longer than the fused step with several
    threads (fused 0.75-0.83x at the main / large configs with 2 threads, 1.04 at the small one), and
    with one thread for larger products only (see ``_SINGLE_THREAD_LSTM_WORK``). Dense LSTM inference
    in float32 is oneDNN's at least as fast (fused 0.96-1.12x), and under bf16 autocast faster
    (benchmarks/bench_cpu.py: fused 0.91-1.16x torch.nn bf16): it stays on torch's.
    CUDA calls are never yielded: cuDNN keeps every call it can take until a GPU run has measured rnndrop's
    Triton loops against it (docs/benchmarks.md, CUDA section).
    """
    if call.x.device.type != "cpu" or is_compiling():  # under compile torch's entry refuses the call anyway
        return None
    backward = _backward_follows(call)
    if call.x.dtype == torch.float64:
        hidden = call.params[0][0].w_hh.shape[1] if call.params else 0
        if not backward and hidden >= 512:
            return None  # MKL's dgemm dominates both: torch's loop measured 0.89-0.97x the fused kernel's time
        return "torch's float64 CPU kernels are unfused per-step loops (the fused kernel takes 0.6-0.9x their time)"
    if call.cfg.mode != "LSTM":
        return f"torch's CPU {call.cfg.mode} is an unfused per-step loop (the fused kernel takes 0.3-0.6x its time)"
    if call.step_mask is not None and not bool(call.step_mask.all()):
        return "torch's packed LSTM (lengths, padding) is an unfused loop (the fused kernel takes 0.3-0.4x its time)"
    if backward:
        if torch.get_num_threads() > 1:
            return "a backward follows: the fused LSTM training step takes 0.75-0.95x oneDNN's (2 threads)"
        batch, hidden = call.x.shape[1], call.params[0][0].w_hh.shape[1]
        if batch * hidden * hidden >= _SINGLE_THREAD_LSTM_WORK:
            return "a backward follows: the fused LSTM training step takes 0.88-1.03x oneDNN's (1 thread)"
    return None


# Single-threaded dense LSTM training: below this batch * hidden^2 (per-step product work) oneDNN's step was
# as fast or faster (fused 1.04-1.05x at batch 32 / hidden 128, 0.5M; 1.00-1.13x in a scan at batch 32,
# hidden 32-256, <= 2.1M), above it about even or slower (fused 0.89-1.03x at batch 64 / hidden 256,
# 0.88-0.91x at batch 16 / hidden 512: 4.2M). benchmarks/bench_choice.py --threads 1, two runs.
_SINGLE_THREAD_LSTM_WORK = 3 << 20


class _Fallback(threading.local):
    def __init__(self) -> None:
        self.reason: str | None = None


_fallback = _Fallback()


def take_fallback() -> str | None:
    """Why the last stack call on this thread ran on the reference path after its kernel failed (then
    cleared), or ``None``: the layer reports it as its ``last_backend_reason``."""
    reason, _fallback.reason = _fallback.reason, None
    return reason


@torch.compiler.disable
def triton_run_stack(
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
    zero_masked_output: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:func:`rnndrop.reference.run_stack` over the Triton kernels' direction function.

    Outside ``torch.compile``'s graph (Triton launches are not traceable ops: Dynamo runs this call eagerly
    between two graphs). A failed first launch on the GPU (no C compiler for Triton's launcher, no libcuda,
    a ptxas error) takes the kernels out of service for the process and runs this call on the reference
    path, with a warning and the reason, instead of raising inside the layer's forward.
    """
    try:
        return run_stack(cfg, x, init_states, params, masks, step_mask, zero_masked_output,
                         direction_fn=triton_run_direction)
    except triton_autograd.LaunchError as exc:
        reason = str(exc)
        triton_autograd.mark_failed(reason)
        _fallback.reason = reason
        warnings.warn(f"rnndrop: {reason}. This call and the next ones run on the reference path.",
                      KernelFallbackWarning, stacklevel=_user_stacklevel())
        return run_stack(cfg, x, init_states, params, masks, step_mask, zero_masked_output)


def fused_run_stack(
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
    zero_masked_output: bool = False,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:func:`rnndrop.reference.run_stack` on the fused CPU kernel; low-precision parameters in float32."""
    if x.dtype not in LOW_PRECISION:  # DropConnect is applied by the kernel itself (fused_run_direction)
        return run_stack(cfg, x, init_states, params, masks, step_mask, zero_masked_output,
                         direction_fn=fused_run_direction, fold_weight_mask=False)
    dtype, wide = x.dtype, torch.float32

    def widen(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(wide)

    wide_params = [[DirectionParams(*(widen(getattr(p, f.name)) for f in dataclasses.fields(p))) for p in layer]
                   for layer in params]
    out, finals = run_stack(cfg, x.to(wide), [s.to(wide) for s in init_states], wide_params,
                            None if masks is None else masks.to(wide), step_mask, zero_masked_output,
                            direction_fn=fused_run_direction)
    return out.to(dtype), tuple(f.to(dtype) for f in finals)


KERNELS: tuple[Kernel, ...] = (
    Kernel("torch", torch_ineligible, torch_run_stack, torch_yields),
    Kernel("fused", cpu_ineligible, fused_run_stack),
    Kernel("triton", triton_ineligible, triton_run_stack),
)

_warned_unavailable = False  # the CPU extension is missing (CPU tensors)
_warned_triton = False  # triton is missing or too old (CUDA tensors)

# What the fallback costs, measured: docs/benchmarks.md, quiet-machine table (2026-11-28), main config
# (batch 64, 100 steps, 64 inputs, 256 units), LSTM training step with input and recurrent dropout 0.25.
FALLBACK_COST = ("the reference path is about 4x slower per training step than the fused kernel "
                 "(349 ms against 87 ms for the main benchmark LSTM with dropout, docs/benchmarks.md)")
SILENCE_HINT = ("To use the reference path on purpose, without this warning, set RNNDROP_DISABLE_KERNELS=1; "
                "or filter it: warnings.filterwarnings('ignore', category=rnndrop.KernelFallbackWarning)")
_INTERNAL = tuple({str(d) + os.sep for p in (Path(__file__).parents[1], Path(torch.__file__).parent)
                   for d in (p, p.resolve())})  # rnndrop's and torch's folders, as imported and resolved


def _user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning name the caller's line (the user's ``layer(x)``).

    Counted from the function calling ``warnings.warn``: every frame in rnndrop or torch
    (``Module.__call__``, hooks, ``torch.compile``'s wrappers) is skipped, however many there are.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    return level


def _warn_missing_cpu_kernel(x: torch.Tensor, runs: str, cost: str) -> None:
    """Once per process, at the user's line: the CPU extension is missing (not disabled on purpose)."""
    global _warned_unavailable
    if (x.device.type == "cpu" and not _warned_unavailable and not loader.disabled()
            and loader.unavailable_reason() is not None):
        _warned_unavailable = True
        warnings.warn(
            f"rnndrop: the fused CPU kernel is unavailable, so this runs {runs}: "
            f"{loader.unavailable_reason()}. Cost: {cost}. {SILENCE_HINT}.",
            KernelFallbackWarning,
            stacklevel=_user_stacklevel(),
        )


def select_stack_fn(
    backend: str,
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
    zero_masked_output: bool = False,
) -> tuple[StackFn, str, str | None]:
    """Pick the implementation of a whole stacked-layer call.

    Returns ``(stack_fn, backend_name, reason)`` where ``reason`` says why no kernel was used
    (``None`` when one was, or when ``backend="reference"`` asked for the reference).
    ``backend="fused"`` / ``"torch"`` raise :class:`KernelUnavailableError` with the reasons of
    their kernels instead of falling back; ``"auto"`` falls back, warning once per process when the
    extension itself is missing.
    """
    global _warned_triton
    if backend == "reference":
        return run_stack, "reference", "backend='reference' asks for the reference loop"
    call = Call(cfg, x, init_states, params, masks, step_mask, zero_masked_output)
    allowed = _BACKEND_KERNELS.get(backend)
    if allowed is None and autotune.enabled() and not is_compiling():
        # A kind of call measured before: only the kernel it took is asked whether it can run this call.
        # Asking every predicate and choosing again cost ~40 us more per call (AMD Zen 3): 10 % of a
        # batch-1 two-layer GRU call of 48 steps.
        decision = autotune.known(call, _backward_follows(call))
        if decision is not None:
            kernel = next((k for k in KERNELS if k.name == decision.kernel), None)
            if kernel is not None and kernel.ineligible(call) is None:
                return kernel.stack_fn, kernel.name, decision.reason_text
    reasons = []
    eligible: list[Kernel] = []
    for kernel in KERNELS:
        if allowed is not None and kernel.name not in allowed:
            continue
        reason = kernel.ineligible(call)
        if reason is None:
            eligible.append(kernel)
        else:
            reasons.append(f"{kernel.name}: {reason}")
    if eligible and allowed is not None:
        return eligible[0].stack_fn, eligible[0].name, f"backend={backend!r} asks for this kernel"
    if len(eligible) == 1:
        kernel = eligible[0]
        slower = kernel.yields(call)  # torch's kernel where the fused one would have been faster: what it costs
        if slower is not None:
            _warn_missing_cpu_kernel(x, "torch's own kernel", slower)
        others = "; ".join(r for r in reasons if ": input is on " not in r)
        return kernel.stack_fn, kernel.name, f"the only kernel that runs this call exactly ({others})"
    if len(eligible) > 1:
        return _choose(call, eligible)
    # A kernel for another device says nothing about this call (e.g. Triton's "input is on cpu"): left out
    # unless it is the only reason there is.
    relevant = [r for r in reasons if ": input is on " not in r] or reasons
    why = "; ".join(relevant)
    if allowed is not None:
        raise KernelUnavailableError(f"backend={backend!r} cannot run this call: {why}")
    # One warning per process when the implementation for the input's device is missing altogether, and
    # one per process and reason when a present kernel does not support the call (the reason is also in
    # last_backend_reason). Not while torch.compile traces: Dynamo cannot trace warnings.warn (fullgraph
    # would fail); the next eager call warns instead.
    if is_compiling():
        return run_stack, "reference", why
    if x.device.type == "cpu" and not loader.disabled() and loader.unavailable_reason() is not None:
        _warn_missing_cpu_kernel(x, "the reference path", FALLBACK_COST)
    elif x.device.type == "cuda" and triton_autograd.unavailable_reason("cuda") is not None:
        if not _warned_triton:
            _warned_triton = True
            warnings.warn(f"rnndrop: using the slower reference path on CUDA because "
                          f"{triton_autograd.unavailable_reason('cuda')}",
                          KernelFallbackWarning, stacklevel=_user_stacklevel())
    elif not loader.disabled():
        _warn_unsupported(cfg, why)
    return run_stack, "reference", why


def _choose(call: Call, eligible: list[Kernel]) -> tuple[StackFn, str, str]:
    """The faster of several exact kernels: measured per kind of call (autotune), else the static rule."""
    backward = _backward_follows(call)
    if autotune.enabled() and not is_compiling():
        decision = autotune.choose(call, [(k.name, k.stack_fn) for k in eligible], backward)
        kernel = next(k for k in eligible if k.name == decision.kernel)
        return kernel.stack_fn, kernel.name, decision.reason_text
    # The static rule, measured on the bench configs: an entry may yield to a later one (Kernel.yields).
    for i, kernel in enumerate(eligible):
        why = kernel.yields(call) if i < len(eligible) - 1 else None
        if why is None:
            rule = "; ".join(f"{k.name} yields: {k.yields(call)}" for k in eligible[:i])
            return kernel.stack_fn, kernel.name, f"static rule (RNNDROP_AUTOTUNE=0){': ' + rule if rule else ''}"
    raise AssertionError("unreachable: the last eligible kernel never yields")


# Reasons a present kernel refuses a call, and what a user can change to get a compiled kernel again.
_ADVICE = (
    ("proj_size", "torch's kernel runs proj_size with batch-wide masks (mask_scope='batch') or without "
                  "per-sample masks"),
    ("activation", f"the fused kernel implements {', '.join(sorted(CPU_ACTIVATIONS))}"),
    ("autocast", "without autocast the fused float32 kernel runs the call"),
    ("torch.func", "only the reference loop runs under torch.func transforms"),
)
_warned_reasons: set[str] = set()


def _warn_unsupported(cfg: CellConfig, why: str) -> None:
    """Once per process and reason, at the user's line: this call runs the reference loop, and what it costs."""
    if why in _warned_reasons:
        return
    _warned_reasons.add(why)
    advice = next((a for key, a in _ADVICE if key in why), "")
    warnings.warn(
        f"rnndrop: this {cfg.mode} call runs the pure-PyTorch reference loop ({why}). Cost: {FALLBACK_COST}."
        + (f" To change it: {advice}." if advice else "") + f" {SILENCE_HINT}.",
        KernelFallbackWarning,
        stacklevel=_user_stacklevel(),
    )
