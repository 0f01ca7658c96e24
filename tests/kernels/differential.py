"""Differential testing of every compiled kernel against the reference (not a test module).

A :class:`Config` describes one call of a layer: the cell, sizes, the layer's constructor options
(every dropout option, activations, bias, layout...) and how it is called (step mask, packed,
non-contiguous tensors, grad mode, thread count, injected or sampled masks, a second call after an
in-place weight update). :func:`run` runs it on the reference and on one kernel of
``rnndrop._kernels.registry.KERNELS`` with identical weights, inputs and masks and returns every
output and gradient of both; :func:`mismatches` compares them with tolerances scaled to each
tensor.

Built to grow with the library:

* **kernels**: whatever ``registry.KERNELS`` holds is tested; a kernel is run alone (the registry
  restricted to it) with ``backend="auto"``, so its own predicate decides whether it takes a call
  (``layer.last_backend`` says whether it did). :data:`HARNESSES` only says how to make a kernel
  run on this machine (Triton: its CPU interpreter, tiny shapes); a new entry needs nothing here.
* **options**: :data:`OPTIONS` lists the constructor options with their values (the first is the
  default) and the cells they apply to; a new option joins by one line there, and the fuzz and the
  sweeps draw it from then on (a kernel that does not implement it declines, visibly).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnndrop
from rnndrop._kernels import registry, triton_autograd

CELLS = ("LSTM", "GRU", "RNN")
CLASSES = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}
STEP_KINDS = ("none", "random", "left", "lengths", "packed", "empty_rows")
GRAD_MODES = ("backward", "no_grad", "inference_mode")
MASK_SOURCES = ("injected", "generator", "eval")


@dataclass(frozen=True)
class Option:
    """A constructor option: its values (``values[0]`` is the default, i.e. off) and the cells it applies to."""

    name: str
    values: tuple[Any, ...]
    cells: tuple[str, ...] = CELLS
    min_layers: int = 1  # between-layer options mean nothing (and warn) on one layer


# The activations the compiled kernels implement today are drawn most; the others make a kernel
# decline (or, once implemented, get compared) — see configs in test_differential_fuzz.
OPTIONS: tuple[Option, ...] = (
    Option("bias", (True, False)),
    Option("batch_first", (False, True)),
    Option("input_dropout", (0.0, 0.4)),
    Option("recurrent_dropout", (0.0, 0.4)),
    Option("gate_masks", ("shared", "per_gate")),
    Option("weight_dropout", (0.0, 0.3)),
    Option("candidate_dropout", (0.0, 0.3), ("LSTM", "GRU")),
    Option("zoneout_hidden", (0.0, 0.3)),
    Option("zoneout_cell", (0.0, 0.3), ("LSTM",)),
    Option("mask_scope", ("sample", "batch")),
    Option("dropout", (0.0, 0.3), min_layers=2),
    Option("locked_dropout", (False, True), min_layers=2),
    Option("zero_output_for_mask", (False, True)),
    Option("reset_after", (True, False), ("GRU",)),
    Option("activation", ("tanh", "relu", "sigmoid", "linear", "hard_sigmoid", "gelu")),
    Option("recurrent_activation", ("sigmoid", "tanh", "linear", "hard_sigmoid"), ("LSTM", "GRU")),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class Config:
    """One layer call to compare. ``options`` are constructor keyword arguments (see :data:`OPTIONS`)."""

    mode: str = "LSTM"
    input_size: int = 4
    hidden: int = 6
    num_layers: int = 1
    bidirectional: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    dtype: torch.dtype = torch.float64
    batch: int = 3
    time: int = 5
    steps: str = "none"  # one of STEP_KINDS
    with_h0: bool = True
    noncontiguous: bool = False  # input, initial states and step mask are strided views
    threads: int | None = None  # torch.set_num_threads during the call (None: as it is)
    grad: str = "backward"  # one of GRAD_MODES
    masks: str = "injected"  # injected: dropout_masks= from sample_masks; generator: sampled; eval
    second_call: bool = False  # call again after an in-place update of every parameter
    autocast: torch.dtype | None = None  # run the forward under torch.autocast("cpu", dtype)
    seed: int = 0

    def option(self, name: str) -> Any:
        return dict(self.options).get(name, OPTION_BY_NAME[name].values[0])

    def with_options(self, **options: Any) -> Config:
        merged = dict(self.options)
        merged.update(options)
        return replace(self, options=tuple(sorted(merged.items())))

    def layer_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for name, value in self.options:
            option = OPTION_BY_NAME[name]
            if self.mode not in option.cells or self.num_layers < option.min_layers:
                continue
            kwargs["nonlinearity" if (name == "activation" and self.mode == "RNN") else name] = value
        return kwargs

    def short(self) -> str:
        """A compact description for failure messages (non-default fields only)."""
        default = Config()
        parts = [f"{f}={getattr(self, f)!r}" for f in self.__dataclass_fields__
                 if f != "options" and getattr(self, f) != getattr(default, f)]
        parts += [f"{k}={v!r}" for k, v in self.layer_kwargs().items()]
        return f"Config({self.mode}, " + ", ".join(parts) + ")"


# ----------------------------------------------------------------------------------- kernels here
@dataclass(frozen=True)
class Harness:
    """How a registry kernel runs on this (CPU-only) machine."""

    # Around every call of the kernel (e.g. opting CPU tensors into Triton's interpreter).
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    # False: an interpreter, orders of magnitude slower; only tiny configurations (`fits`) run there.
    native: bool = True
    fits: Callable[[Config], bool] = lambda cfg: True
    # Why this kernel cannot run in this process at all (None: it can).
    unavailable: Callable[[], str | None] = lambda: None


def _triton_unavailable() -> str | None:
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "on"):
        return "a GPU is present: Triton's CPU interpreter needs TRITON_INTERPRET=1 for the whole run"
    return triton_autograd.unavailable_reason("cpu")  # loads the kernels (interpreted if TRITON_INTERPRET=1)


def _triton_fits(cfg: Config) -> bool:
    # The interpreter runs each program in numpy: a handful of rows, units and steps.
    return cfg.batch * cfg.hidden <= 24 and cfg.time <= 4 and cfg.num_layers * (1 + cfg.bidirectional) <= 2


HARNESSES: dict[str, Harness] = {
    "triton": Harness(context=triton_autograd.cpu_interpreter, native=False, fits=_triton_fits,
                      unavailable=_triton_unavailable),
}


def harness(kernel: registry.Kernel) -> Harness:
    return HARNESSES.get(kernel.name, Harness())


def kernels() -> tuple[registry.Kernel, ...]:
    """Every registered kernel (read at call time: tests may restrict the registry)."""
    return tuple(registry.KERNELS)


@contextlib.contextmanager
def only(kernel: registry.Kernel) -> Iterator[None]:
    """The registry holds ``kernel`` alone, inside its harness."""
    saved = registry.KERNELS
    registry.KERNELS = (kernel,)
    try:
        with harness(kernel).context():
            yield
    finally:
        registry.KERNELS = saved


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (the kernels split the batch between these threads)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------- running
Pairs = list[tuple[str, torch.Tensor, torch.Tensor]]


@dataclass
class Outcome:
    backend: str | None  # what the kernel's layer ran (its kernel's name, or "reference" when declined)
    reason: str | None  # why it declined
    tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)


def _strided(t: torch.Tensor, noncontiguous: bool) -> torch.Tensor:
    """``t`` itself, or an equal non-contiguous view (every other element of a wider tensor)."""
    if not noncontiguous:
        return t
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@dataclass
class Inputs:
    x: torch.Tensor
    states: list[torch.Tensor]
    call_kwargs: dict[str, Any]
    packed_lengths: torch.Tensor | None
    masks: rnndrop.DropoutMasks | None


def make_layer(cfg: Config, backend: str) -> rnndrop.RecurrentBase:
    torch.manual_seed(cfg.seed)  # the weights (both layers are built alike, so they are equal)
    layer = CLASSES[cfg.mode](cfg.input_size, cfg.hidden, num_layers=cfg.num_layers,
                              bidirectional=cfg.bidirectional, dtype=cfg.dtype, backend=backend,
                              **cfg.layer_kwargs())
    if cfg.masks == "eval":
        layer.eval()
    return layer


def make_inputs(cfg: Config, layer: rnndrop.RecurrentBase) -> Inputs:
    g = torch.Generator().manual_seed(cfg.seed)
    b, t = cfg.batch, cfg.time
    batch_first = layer.batch_first
    x = torch.randn(*((b, t) if batch_first else (t, b)), cfg.input_size, dtype=cfg.dtype, generator=g)
    rows = cfg.num_layers * (2 if cfg.bidirectional else 1)
    h_out = layer.proj_size or cfg.hidden
    sizes = [h_out, cfg.hidden] if cfg.mode == "LSTM" else [h_out]
    states = [torch.randn(rows, b, s, dtype=cfg.dtype, generator=g) * 0.5 for s in sizes]
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    kwargs: dict[str, Any] = {}
    packed = None
    if cfg.steps == "random":
        kwargs["step_mask"] = torch.rand(b, t, generator=g) < 0.6
    elif cfg.steps == "left":
        kwargs["step_mask"] = torch.arange(t).unsqueeze(0) >= (t - lengths).unsqueeze(1)
    elif cfg.steps == "empty_rows":
        m = torch.rand(b, t, generator=g) < 0.5
        m[0] = False
        kwargs["step_mask"] = m
    elif cfg.steps == "lengths":
        kwargs["lengths"] = lengths
    elif cfg.steps == "packed":
        packed = lengths.clamp(min=1)
        packed[-1] = t  # the padded length is `time`, the masks are drawn for it
    if "step_mask" in kwargs:
        kwargs["step_mask"] = _strided(kwargs["step_mask"], cfg.noncontiguous)
    masks = None
    if cfg.masks == "injected":
        masks = layer.sample_masks(b, t, generator=torch.Generator().manual_seed(cfg.seed + 7))
    x = _strided(x, cfg.noncontiguous)
    states = [_strided(s, cfg.noncontiguous) for s in states]
    return Inputs(x, states, kwargs, packed, masks)


def _grad_context(cfg: Config) -> contextlib.AbstractContextManager[Any]:
    if cfg.grad == "no_grad":
        return torch.no_grad()
    if cfg.grad == "inference_mode":
        return torch.inference_mode()
    return contextlib.nullcontext()


def _call(cfg: Config, layer: rnndrop.RecurrentBase, inputs: Inputs, label: str) -> list[tuple[str, torch.Tensor]]:
    training = cfg.grad == "backward"
    x = inputs.x.clone() if not cfg.noncontiguous else _strided(inputs.x.clone(), True)
    x.requires_grad_(training)
    hs = [(s.clone() if not cfg.noncontiguous else _strided(s.clone(), True)).requires_grad_(training)
          for s in inputs.states]
    hx = None if not cfg.with_h0 else (tuple(hs) if cfg.mode == "LSTM" else hs[0])
    inp: Any = x
    if inputs.packed_lengths is not None:
        inp = pack_padded_sequence(x, inputs.packed_lengths, batch_first=layer.batch_first, enforce_sorted=False)
    kwargs = dict(inputs.call_kwargs)
    if inputs.masks is not None:
        kwargs["dropout_masks"] = inputs.masks
    if cfg.masks == "generator":
        kwargs["generator"] = torch.Generator().manual_seed(cfg.seed + 7)
    autocast = (torch.autocast("cpu", dtype=cfg.autocast) if cfg.autocast is not None
                else contextlib.nullcontext())
    with _grad_context(cfg), autocast, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, hn = layer(inp, hx, **kwargs)
    out_t = out.data if inputs.packed_lengths is not None else out
    finals = list(hn) if cfg.mode == "LSTM" else [hn]
    tensors = [(f"{label}output", out_t.detach())] + [(f"{label}final{i}", f.detach()) for i, f in enumerate(finals)]
    if not training:
        return tensors
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    # Cotangents drawn in the configuration's dtype (the same numbers for a float64 run of a float32 case).
    loss = (out_t * torch.randn(out_t.shape, generator=gen, dtype=cfg.dtype).to(out_t.dtype)).sum()
    for f in finals:
        loss = loss + (f * torch.randn(f.shape, generator=gen, dtype=cfg.dtype).to(f.dtype)).sum()
    layer.zero_grad(set_to_none=True)
    loss.backward()
    tensors.append((f"{label}grad input", x.grad))
    if cfg.with_h0:
        tensors += [(f"{label}grad state{i}", h.grad) for i, h in enumerate(hs)]
    tensors += [(f"{label}grad {n}", p.grad) for n, p in layer.named_parameters()]
    return tensors


def _update_parameters(layer: rnndrop.RecurrentBase) -> None:
    # In place, as an optimizer step does: a kernel caching anything derived from the weights
    # (packed W_hh) must notice.
    with torch.no_grad():
        for p in layer.parameters():
            p.mul_(0.9).add_(0.01)


def _masks_double(masks: rnndrop.DropoutMasks) -> rnndrop.DropoutMasks:
    def up(m: rnndrop.DirectionMasks) -> rnndrop.DirectionMasks:
        return replace(m, **{n: getattr(m, n).double() for n in m.active()})

    return rnndrop.DropoutMasks(tuple(tuple(up(m) for m in dirs) for dirs in masks.layers),
                                tuple(None if t is None else t.double() for t in masks.between))


def _upcast(cfg: Config, layer: rnndrop.RecurrentBase, inputs: Inputs) -> Inputs:
    """The same weights, inputs and masks in float64 (for the exact answer to a float32 call)."""
    masks = inputs.masks
    if cfg.masks == "generator":  # drawn in float32 as the layer would draw them, then injected
        masks = layer.sample_masks(cfg.batch, cfg.time, generator=torch.Generator().manual_seed(cfg.seed + 7))
    layer.double()
    return Inputs(inputs.x.double(), [s.double() for s in inputs.states], inputs.call_kwargs,
                  inputs.packed_lengths, None if masks is None else _masks_double(masks))


def run_layer(cfg: Config, backend: str, context: contextlib.AbstractContextManager[Any],
              upcast: bool = False) -> Outcome:
    """Run ``cfg``; with ``upcast`` the float32 weights, inputs and masks are run in float64."""
    layer = make_layer(cfg, backend)
    inputs = make_inputs(cfg, layer)
    if upcast:
        inputs = _upcast(cfg, layer, inputs)
        cfg = replace(cfg, masks="injected" if cfg.masks == "generator" else cfg.masks)
    with context, threads(cfg.threads):
        tensors = _call(cfg, layer, inputs, "")
        ran, reason = layer.last_backend, layer.last_backend_reason
        if cfg.second_call:
            _update_parameters(layer)
            tensors += _call(cfg, layer, inputs, "after update: ")
    return Outcome(ran, reason, tensors)


def reference(cfg: Config) -> Outcome:
    return run_layer(cfg, "reference", contextlib.nullcontext())


def exact(cfg: Config) -> Outcome:
    """The reference on ``cfg``'s float32 weights, inputs and masks, computed in float64."""
    return run_layer(cfg, "reference", contextlib.nullcontext(), upcast=True)


def on_kernel(cfg: Config, kernel: registry.Kernel) -> Outcome:
    """``cfg`` with the registry restricted to ``kernel`` (``backend="auto"``: it may decline)."""
    return run_layer(cfg, "auto", only(kernel))


# ----------------------------------------------------------------------------------- comparing
# Relative to each tensor's scale, max(1, max |reference|): gradients summed over many steps and
# rows grow with T and B, and a relative error per element would be dominated by cancellation.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}
AUTOCAST_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
# float32: the kernel is compared with the exact answer (the reference in float64 on the same float32
# numbers) and may be this many times less accurate than the float32 reference itself. Ill-conditioned
# cases (linear or relu activations whose states grow step after step) then get the slack their own
# rounding needs, and well-conditioned ones keep the tight floor above.
FLOAT32_ACCURACY_FACTOR = 8.0


def tolerance(cfg: Config) -> float:
    """The floor of the allowed scaled error (float32: see FLOAT32_ACCURACY_FACTOR)."""
    if cfg.autocast is not None:
        return AUTOCAST_TOLERANCE[cfg.autocast]
    base = TOLERANCE[cfg.dtype]
    if cfg.dtype == torch.float32:
        # float32 rounding grows with the length of the sums (hidden units, steps, rows).
        base *= max(1.0, (max(cfg.hidden, cfg.input_size) * cfg.time) ** 0.5 / 8)
    return base


def scaled_error(a: torch.Tensor, r: torch.Tensor) -> float:
    """``max |a - r| / max(1, max |r|)`` over the finite elements; inf when the non-finite ones differ."""
    a, r = a.double(), r.double()
    finite = torch.isfinite(r)
    same_nonfinite = (a == r) | (a.isnan() & r.isnan())
    if not torch.equal(torch.isfinite(a), finite) or not bool(same_nonfinite[~finite].all()):
        return float("inf")
    if not finite.any():
        return 0.0
    return (a[finite] - r[finite]).abs().max().item() / max(1.0, r[finite].abs().max().item())


# The largest error / tolerance seen per (kernel, dtype or autocast dtype) in this process, for reports.
WORST: dict[tuple[str, str], float] = {}
# How many float32 tensors were left out because the float32 reference overflowed (see mismatches).
OVERFLOWED: dict[tuple[str, str], int] = {}


def mismatches(got: Outcome, want: Outcome, tol: float, key: tuple[str, str] | None = None,
               truth: Outcome | None = None) -> list[str]:
    """Every tensor pair beyond ``tol`` (or missing, or of another shape), described.

    With ``truth`` (the float64 answer to a float32 case) a tensor is compared with the truth instead
    and may be off by ``max(tol, FLOAT32_ACCURACY_FACTOR * error of the reference)``, where the error of
    the reference is its largest over the call's tensors: how much a float32 computation of this
    configuration loses is a property of the configuration (states growing step after step amplify
    every rounding, whichever tensor it lands in), and one tensor's reference error can be small by the
    luck of its rounding (seen: a GRU with linear gates whose states reach 1e12, reference errors from
    2.8e-7 to 1.3e-5 across its tensors). A tensor whose float32 reference overflowed is left out.
    """
    problems = []
    if len(got.tensors) != len(want.tensors):
        return [f"{len(got.tensors)} tensors vs {len(want.tensors)}"]
    exact_tensors = [t for _, t in truth.tensors] if truth is not None else [None] * len(want.tensors)
    reference_errors = [scaled_error(r, e) for (_, r), e in zip(want.tensors, exact_tensors)
                        if r is not None and e is not None and r.numel()]
    finite_errors = [x for x in reference_errors if x != float("inf")]
    config_error = max(finite_errors, default=0.0)
    for (name, a), (name_r, r), e in zip(got.tensors, want.tensors, exact_tensors):
        assert name == name_r
        if a is None or r is None:
            if (a is None) != (r is None):
                problems.append(f"{name}: {'missing' if a is None else 'unexpected'} gradient")
            continue
        if a.shape != r.shape:
            problems.append(f"{name}: shape {tuple(a.shape)} vs {tuple(r.shape)}")
            continue
        if r.numel() == 0:
            continue
        err, allowed = scaled_error(a, r), tol
        if e is not None:
            reference_error = scaled_error(r, e)
            if reference_error == float("inf"):
                # The float32 reference overflowed where the exact answer is finite (states growing
                # without bound, e.g. 1e48 with linear activations): float32 cannot represent the answer,
                # so there is nothing to compare the kernel with (counted in OVERFLOWED).
                OVERFLOWED[key or ("", "")] = OVERFLOWED.get(key or ("", ""), 0) + 1
                continue
            err, allowed = scaled_error(a, e), max(tol, FLOAT32_ACCURACY_FACTOR * config_error)
        if key is not None:
            WORST[key] = max(WORST.get(key, 0.0), err / allowed)
        if not err <= allowed:
            problems.append(f"{name}: scaled error {err:.3e} > {allowed:.1e}")
    return problems


def check_kernel(cfg: Config, kernel: registry.Kernel, *, must_run: bool = True,
                 references: dict[Config, tuple[Outcome, Outcome | None]] | None = None) -> Outcome:
    """Run ``cfg`` on ``kernel`` and, if it took the call, on the reference, and assert they agree.

    With ``must_run`` the kernel has to take the call (else the comparison would be reference
    against reference). ``references`` caches the reference's outcomes between kernels. Returns the
    kernel's outcome (``backend`` says whether it ran).
    """
    got = on_kernel(cfg, kernel)
    if got.backend != kernel.name:
        assert not must_run, f"{kernel.name} declined {cfg.short()}: {got.reason}"
        return got
    references = {} if references is None else references
    if cfg not in references:
        truth = exact(cfg) if cfg.dtype == torch.float32 and cfg.autocast is None else None
        references[cfg] = (reference(cfg), truth)
    want, truth = references[cfg]
    key = (kernel.name, str(cfg.autocast or cfg.dtype).replace("torch.", ""))
    problems = mismatches(got, want, tolerance(cfg), key, truth)
    assert not problems, f"{kernel.name} differs from the reference for {cfg.short()}:\n  " + "\n  ".join(problems)
    return got


def native_kernels() -> Sequence[registry.Kernel]:
    """The kernels that run at full speed here (the size sweeps run on these)."""
    return [k for k in kernels() if harness(k).native]
