"""Monte-Carlo dropout (Gal & Ghahramani 2016): predictive uncertainty from stochastic passes.

Dropout kept on at test time turns a network into a sample from an approximate posterior over
its weights; ``N`` stochastic passes give the predictive mean, its spread, and — for
classifiers — the predictive entropy and the mutual information between the prediction and
the weights (BALD, Houlsby et al. 2011), which isolates the model's own (epistemic) uncertainty.

* :func:`mc_dropout` — context manager: the model in eval mode except its dropout modules
  (:func:`is_dropout_module`), every module's flag restored on exit, exceptions included.
* :func:`mc_predict` — ``N`` passes, vectorised by repeating the batch when every active
  dropout module draws independent masks per row (:func:`masks_per_sample`), within a bound
  on the rows of one forward call; returns an :class:`MCPrediction`.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .dropout import EmbeddingDropout, _MaskDropout
from .errors import RnnDropTypeError, RnnDropValueError
from .layers import RecurrentBase

Task = Literal["classification", "regression"]
TASK_CHOICES: tuple[str, ...] = ("classification", "regression")

#: torch.nn modules whose only train/eval difference is dropout, each drawing per-row masks.
TORCH_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)

#: Default bound on the rows of one forward call of :func:`mc_predict`.
DEFAULT_MAX_BATCH = 4096

ModulePredicate = Callable[[nn.Module], bool]


def is_dropout_module(module: nn.Module) -> bool:
    """True for modules whose training mode means "draw dropout noise", and nothing else.

    These are the ``torch.nn`` dropout modules (:data:`TORCH_DROPOUT_TYPES`), ``torch.nn``
    LSTM/GRU/RNN with between-layer ``dropout > 0``, rnndrop's recurrent layers with any
    stochastic option (dropout of any kind, zoneout) and rnndrop's dropout modules. BatchNorm,
    LayerNorm and any other module are not.
    """
    if isinstance(module, (*TORCH_DROPOUT_TYPES, _MaskDropout, EmbeddingDropout)):
        return True
    if isinstance(module, RecurrentBase):
        return not module.mask_spec.is_empty()
    if isinstance(module, nn.RNNBase):
        return module.dropout > 0 and module.num_layers > 1
    return False


def masks_per_sample(module: nn.Module) -> bool:
    """True when ``module`` draws independent noise for every row of the batch.

    Only then is a batch repeated ``k`` times equivalent to ``k`` separate passes. A module may
    declare it with a ``masks_per_sample`` attribute (rnndrop's dropout modules and recurrent
    layers do: the latter share noise across the batch with ``weight_dropout > 0`` or
    ``mask_scope="batch"``). Unknown modules count as sharing (the safe answer).
    """
    declared = getattr(module, "masks_per_sample", None)
    if isinstance(declared, bool):
        return declared
    return isinstance(module, (*TORCH_DROPOUT_TYPES, nn.RNNBase))


def _select(model: nn.Module, include: ModulePredicate | None) -> list[nn.Module]:
    return [m for m in model.modules() if is_dropout_module(m) or (include is not None and include(m))]


@contextmanager
def mc_dropout(model: nn.Module, *, include: ModulePredicate | None = None) -> Iterator[list[nn.Module]]:
    """Put ``model`` in Monte-Carlo dropout mode for the ``with`` block.

    Every module is set to eval mode, then the dropout modules (:func:`is_dropout_module`, plus
    those for which ``include(module)`` is True) to training mode — only their own flag, not
    their children's. On exit every module gets back its own previous flag, also when the block
    raises. Nothing else is touched: gradients stay enabled (wrap in ``torch.no_grad()`` if
    unwanted), and BatchNorm keeps using and not updating its running statistics.

    Yields:
        The modules switched to training mode.

    Example::

        with torch.no_grad(), rnndrop.mc_dropout(model):
            probs = torch.stack([model(x).softmax(-1) for _ in range(20)])
    """
    if not isinstance(model, nn.Module):
        raise RnnDropTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if include is not None and not callable(include):
        raise RnnDropTypeError(f"include must be a callable Module -> bool or None, got {type(include).__name__}")
    flags = [(m, m.training) for m in model.modules()]
    try:
        active = _select(model, include)
        for m, _ in flags:
            m.training = False
        for m in active:
            # Set the flag directly: m.train(True) would also switch m's children (e.g. the
            # embedding inside EmbeddingDropout, or whatever an `include`d container holds).
            m.training = True
        yield active
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass(frozen=True)
class MCPrediction:
    """The result of :func:`mc_predict`. Shapes are those of one pass's output ``(*out)``.

    Attributes:
        mean: predictive mean ``(*out)``: of the probabilities for classification.
        std: standard deviation over the passes ``(*out)`` (population form, ``0`` for one pass).
        entropy: classification only, ``(*out)`` without the class axis: entropy of the mean
            probabilities ``H[E_s p_s]`` in nats (total uncertainty).
        expected_entropy: classification only: ``E_s H[p_s]`` (aleatoric part).
        mutual_information: classification only: ``entropy - expected_entropy`` (BALD; the
            epistemic part), clamped at 0 against rounding.
        outputs: ``(samples, *out)`` every pass's output (probabilities for classification) if
            ``return_outputs=True``, else ``None``.
        samples: number of stochastic passes.
        vectorized: whether passes were batched together by repeating the input.
        forward_calls: how many times the model was called.
    """

    mean: torch.Tensor
    std: torch.Tensor
    entropy: torch.Tensor | None
    expected_entropy: torch.Tensor | None
    mutual_information: torch.Tensor | None
    outputs: torch.Tensor | None
    samples: int
    vectorized: bool
    forward_calls: int

    @property
    def variance(self) -> torch.Tensor:
        return self.std.square()


def _check_int(value: object, argument: str, minimum: int) -> int:
    if isinstance(value, bool):
        raise RnnDropTypeError(f"{argument} must be an int >= {minimum}, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise RnnDropTypeError(f"{argument} must be an int >= {minimum}, got {type(value).__name__}") from None
    if v < minimum:
        raise RnnDropValueError(f"{argument} must be an int >= {minimum}, got {v}")
    return v


def _pass_seed(seed: int, first_sample: int, first_row: int) -> int:
    # One independent stream per (sample, row chunk) start, decorrelated by SeedSequence's hashing.
    return int(np.random.SeedSequence([seed, first_sample, first_row]).generate_state(1, np.uint64)[0])


class _Welford:
    """Running mean / sum of squared deviations over sample chunks (Chan et al.'s parallel form)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, chunk: torch.Tensor) -> None:
        k = chunk.shape[0]
        c_mean = chunk.mean(0)
        c_m2 = (chunk - c_mean).square().sum(0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = k, c_mean, c_m2
            return
        n = self.n + k
        delta = c_mean - self.mean
        self.mean = self.mean + delta * (k / n)
        self.m2 = self.m2 + c_m2 + delta.square() * (self.n * k / n)
        self.n = n


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim)


def mc_predict(
    model: nn.Module,
    x: torch.Tensor | tuple[torch.Tensor, ...],
    samples: int = 20,
    *,
    task: Task = "classification",
    probabilities: bool = False,
    class_dim: int = -1,
    batch_dim: int = 0,
    max_batch: int | None = DEFAULT_MAX_BATCH,
    vectorize: bool | None = None,
    seed: int | None = None,
    output_fn: Callable[[Any], torch.Tensor] | None = None,
    include: ModulePredicate | None = None,
    return_outputs: bool = False,
) -> MCPrediction:
    """Monte-Carlo dropout prediction: ``samples`` stochastic passes under :func:`mc_dropout`.

    Args:
        model: the network; only its dropout modules are switched on (see :func:`mc_dropout`),
            every module's mode is restored afterwards, also on exceptions. Runs under
            ``torch.no_grad()``.
        x: the input, or a tuple of inputs passed positionally, each with the batch along
            ``batch_dim``.
        samples: number of stochastic passes ``N >= 1``.
        task: ``"classification"``: outputs are logits (softmax over ``class_dim``) or, with
            ``probabilities=True``, probabilities; mean and std are of the probabilities and
            entropy / mutual information are returned. ``"regression"``: mean and std of the
            raw outputs.
        probabilities: the model already returns probabilities (classification only).
        class_dim: the class axis of one pass's output. Default ``-1``.
        batch_dim: the batch axis of the inputs and of the output (1 for time-major recurrent
            layers). Default 0.
        max_batch: most rows in one forward call. Vectorised passes put
            ``k = max_batch // B`` copies of the batch of ``B`` rows into one call; if
            ``B > max_batch`` the batch itself is split into chunks of ``max_batch`` rows.
            ``None``: no bound (all passes in one call). Default :data:`DEFAULT_MAX_BATCH`.
        vectorize: ``None`` (default): vectorise iff every switched module draws per-row masks
            (:func:`masks_per_sample`); with a module sharing its mask across the batch
            (``EmbeddingDropout``, ``weight_dropout``, ``mask_scope="batch"``) repeated copies
            would share one mask, so passes run one by one. ``True`` forces it (error if
            invalid), ``False`` runs one pass per call. Vectorising also assumes that rows of
            the batch do not interact in eval mode, true of ordinary layers.
        seed: makes the result reproducible: the draws come from torch's global RNG, forked (the
            caller's RNG state is left as it was) and reseeded at each forward call from
            ``(seed, index of the call's first pass, first row)``. Modules' own ``generator``
            attributes are set aside for the call so that the seed governs every draw. Passes
            depend only on the seed and on the chunk layout: with one pass per call
            (``vectorize=False``, or ``max_batch < 2 B``) pass ``i`` is the same whatever
            ``samples`` and ``max_batch`` are (if ``max_batch >= B``); with several passes per
            call, changing ``max_batch`` regroups the passes and changes the draws (same
            distribution, different numbers). ``None``: use the global RNG as it is.
        output_fn: turns the model's return value into the output tensor, e.g.
            ``lambda out: out[0]`` for a recurrent layer returning ``(output, h_n)``.
        include: extra modules to switch on (e.g. custom modules calling ``F.dropout``); they
            count as sharing masks across the batch unless they declare ``masks_per_sample``.
        return_outputs: also return every pass's output, ``(samples, *out)``.
    Returns:
        An :class:`MCPrediction`; statistics are in the output's dtype promoted to at least
        float32.
    """
    if not isinstance(model, nn.Module):
        raise RnnDropTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    samples = _check_int(samples, "samples", 1)
    task = _check_task(task)
    if probabilities and task != "classification":
        raise RnnDropValueError("probabilities=True only applies to task='classification'")
    if max_batch is not None:
        max_batch = _check_int(max_batch, "max_batch", 1)
    if vectorize is not None and not isinstance(vectorize, bool):
        raise RnnDropTypeError(f"vectorize must be True, False or None, got {type(vectorize).__name__}")
    if seed is not None:
        seed = _check_int(seed, "seed", 0)
    if output_fn is not None and not callable(output_fn):
        raise RnnDropTypeError(f"output_fn must be callable or None, got {type(output_fn).__name__}")
    inputs, batch_dim, batch = _check_inputs(x, batch_dim)

    with mc_dropout(model, include=include) as active:
        if not active:
            warnings.warn(
                "mc_predict: the model has no dropout module to switch on (no torch.nn / rnndrop dropout module, no "
                "recurrent layer with dropout), so every pass is the same and std is 0. Dropout written as "
                "F.dropout(x, p, self.training) is switched off with the model: pass include=lambda m: "
                "isinstance(m, ThatModule) to keep that module in training mode",
                UserWarning, stacklevel=2,
            )
        sharing = [m for m in active if not masks_per_sample(m)]
        if vectorize and sharing:
            names = ", ".join(sorted({type(m).__name__ for m in sharing}))
            raise RnnDropValueError(
                f"vectorize=True but these modules share one mask across the batch ({names}): repeated copies of "
                "the batch would get the same noise; use vectorize=None or False"
            )
        vectorized = not sharing if vectorize is None else vectorize
        rows = batch if max_batch is None else max(1, min(batch, max_batch))
        per_call = 1
        if vectorized:
            per_call = samples if max_batch is None else max(1, min(samples, max_batch // max(batch, 1)))
        vectorized = vectorized and per_call > 1

        generators: list[tuple[nn.Module, torch.Generator]] = []
        if seed is not None:
            own = [(m, getattr(m, "generator", None)) for m in active]
            generators = [(m, g) for m, g in own if isinstance(g, torch.Generator)]
        rng = torch.random.fork_rng(devices=_cuda_devices()) if seed is not None else nullcontext()
        try:
            for m, _ in generators:
                m.generator = None
            with rng, torch.no_grad():
                result, identical = _run(
                    model, inputs, batch_dim, batch, samples, per_call, rows, seed, output_fn,
                    task, probabilities, class_dim, return_outputs, vectorized,
                )
        finally:
            for m, g in generators:
                m.generator = g
    if active and samples > 1 and identical:
        names = ", ".join(sorted({type(m).__name__ for m in active}))
        warnings.warn(
            f"mc_predict: all {samples} passes returned identical outputs (std 0) although these modules were "
            f"switched on: {names}. Their dropout may not reach the output (rate 0, masks passed explicitly, a "
            "dropout that reads another flag than its module's training mode): check the model",
            UserWarning, stacklevel=2,
        )
    return result


def _run(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    batch_dim: int,
    batch: int,
    samples: int,
    per_call: int,
    rows: int,
    seed: int | None,
    output_fn: Callable[[Any], torch.Tensor] | None,
    task: str,
    probabilities: bool,
    class_dim: int,
    return_outputs: bool,
    vectorized: bool,
) -> tuple[MCPrediction, bool]:
    """The passes' statistics, and whether every pass returned exactly the first pass's output."""
    stats = _Welford()
    first: torch.Tensor | None = None
    identical = True
    entropy_sum: torch.Tensor | None = None
    kept: list[torch.Tensor] = []
    calls = 0
    cdim: int | None = None
    for s0 in range(0, samples, per_call):
        k = min(per_call, samples - s0)
        parts = []
        for r0 in range(0, batch, rows) if batch else [0]:
            n = min(rows, batch - r0)
            if seed is not None:
                torch.manual_seed(_pass_seed(seed, s0, r0))
            chunk = tuple(t.narrow(batch_dim, r0, n) for t in inputs)
            if k > 1:
                chunk = tuple(torch.cat([t] * k, dim=batch_dim) for t in chunk)
            out = _call(model, chunk, output_fn)
            calls += 1
            if out.dim() <= batch_dim or out.shape[batch_dim] != k * n:
                raise RnnDropValueError(
                    f"the model's output {tuple(out.shape)} must have {k * n} rows along batch_dim={batch_dim} "
                    f"(the rows of its input); set batch_dim, or output_fn to pick the batched output"
                )
            # (..., k * n, ...) -> (k, ..., n, ...): the copies are contiguous blocks of n rows.
            parts.append(out.unflatten(batch_dim, (k, n)).movedim(batch_dim, 0))
        values = torch.cat(parts, dim=batch_dim + 1) if len(parts) > 1 else parts[0]
        values = values.to(torch.promote_types(values.dtype, torch.float32))
        if task == "classification":
            if cdim is None:
                cdim = _class_dim(class_dim, values.dim() - 1) + 1
            if probabilities:
                if bool((values < 0).any()) or bool((values > 1).any()):
                    raise RnnDropValueError("probabilities=True but the model's outputs are not in [0, 1]")
            else:
                values = values.softmax(cdim)
            ent = _entropy(values, cdim).sum(0)
            entropy_sum = ent if entropy_sum is None else entropy_sum + ent
        stats.add(values)
        if first is None:
            first = values[0]
        identical = identical and bool((values == first).all())
        if return_outputs:
            kept.append(values)
    assert stats.mean is not None and stats.m2 is not None
    mean = stats.mean
    std = (stats.m2 / samples).sqrt()
    entropy = expected = mi = None
    if task == "classification":
        assert cdim is not None and entropy_sum is not None
        entropy = _entropy(mean, cdim - 1)
        expected = entropy_sum / samples
        mi = (entropy - expected).clamp_min(0.0)
    prediction = MCPrediction(
        mean=mean,
        std=std,
        entropy=entropy,
        expected_entropy=expected,
        mutual_information=mi,
        outputs=torch.cat(kept, 0) if return_outputs else None,
        samples=samples,
        vectorized=vectorized,
        forward_calls=calls,
    )
    return prediction, identical


def _call(model: nn.Module, inputs: tuple[torch.Tensor, ...], output_fn: Callable[[Any], torch.Tensor] | None):
    result = model(*inputs)
    out = output_fn(result) if output_fn is not None else result
    if not isinstance(out, torch.Tensor):
        hint = "; pass output_fn, e.g. output_fn=lambda out: out[0]" if output_fn is None else ""
        raise RnnDropTypeError(f"the model's output must be a Tensor, got {type(out).__name__}{hint}")
    if not out.is_floating_point():
        raise RnnDropTypeError(f"the model's output must be a floating point tensor, got dtype {out.dtype}")
    return out


def _check_task(task: object) -> Task:
    if task not in TASK_CHOICES:
        raise RnnDropValueError(f"task must be one of {TASK_CHOICES}, got {task!r}")
    return task  # type: ignore[return-value]


def _class_dim(class_dim: int, ndim: int) -> int:
    if isinstance(class_dim, bool) or not isinstance(class_dim, int):
        raise RnnDropTypeError(f"class_dim must be an int, got {type(class_dim).__name__}")
    if not -ndim <= class_dim < ndim:
        raise RnnDropValueError(f"class_dim must be in [{-ndim}, {ndim - 1}] for a {ndim}-D output, got {class_dim}")
    return class_dim % ndim


def _check_inputs(x: object, batch_dim: object) -> tuple[tuple[torch.Tensor, ...], int, int]:
    inputs = x if isinstance(x, tuple) else (x,)
    if not inputs:
        raise RnnDropValueError("x must be a Tensor or a non-empty tuple of Tensors")
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            where = "x" if not isinstance(x, tuple) else f"x[{i}]"
            raise RnnDropTypeError(f"{where} must be a Tensor, got {type(t).__name__}")
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, int):
        raise RnnDropTypeError(f"batch_dim must be an int, got {type(batch_dim).__name__}")
    ndim = inputs[0].dim()
    if not -ndim <= batch_dim < ndim:
        raise RnnDropValueError(f"batch_dim must be in [{-ndim}, {ndim - 1}] for a {ndim}-D input, got {batch_dim}")
    batch_dim %= ndim
    batch = inputs[0].shape[batch_dim]
    for i, t in enumerate(inputs[1:], 1):
        if t.dim() <= batch_dim or t.shape[batch_dim] != batch:
            raise RnnDropValueError(
                f"x[{i}] must have {batch} rows along batch_dim={batch_dim} like x[0], got shape {tuple(t.shape)}"
            )
    return inputs, batch_dim, batch


def _cuda_devices() -> list[int]:
    # torch.manual_seed reseeds every CUDA device, so fork them all to leave the caller's state intact.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []
