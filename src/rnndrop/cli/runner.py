"""One training run of ``rnndrop compare``: a strategy, a seed, the protocol.

Protocol of a run (the same for every strategy):

1. A stratified validation part (``val_fraction`` of each class) is split off the training set with the
   run's seed; the rest trains. Channels are standardized with statistics of that training part only.
2. ``torch.manual_seed(seed)`` before the model is built, and a batch order drawn from
   ``numpy.random.default_rng(seed)``: with the same seed every strategy starts from the same weights
   and sees the same batches, so results are paired across strategies.
   ``init="keras"`` gives the model Keras 3's default initialisers (:func:`rnndrop.init.keras_` for the
   recurrent layer, glorot-uniform / zero bias for the head, ``U(±0.05)`` for an embedding).
3. Adam, gradient-norm clipping (``clip_norm``; 0 = none), at most ``epochs`` epochs, the learning rate
   ``lr`` constant or (``schedule="cosine"``) annealed per batch from ``lr`` to 0 over ``epochs``
   epochs; after each epoch the validation loss is measured in eval mode; the weights of the epoch with
   the lowest validation loss are kept (model selection); training stops early after ``patience``
   epochs without improvement.
4. ``refit``: a fresh model (the same seed, so the same initial weights) is trained on *all* training
   sequences (training and validation parts, standardized with their joint statistics) for the selected
   number of epochs, with the learning rate the selected run had at each point of those epochs; it
   replaces the selected model. The selected model's deterministic test metrics are kept under
   ``refit.selected_test``.
5. The test set is used once per model, with the final weights: deterministic (eval mode) and Monte-Carlo
   dropout (mean of ``mc_samples`` predictive distributions with only the dropout parts in training
   mode), each with accuracy, NLL and ECE.

Language-model mode (a :class:`~rnndrop.cli.data.Task` of kind ``"language_model"``): the task brings
its own contiguous validation part (no split, no standardization), every position of every chunk is a
prediction, and bits per character (NLL / ln 2) and perplexity (exp NLL) are added to the metrics.
"""

from __future__ import annotations

import copy
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import rnndrop

from .data import SequenceData, Task, channel_stats, standardize, stratified_split
from .metrics import accuracy, ece, nll
from .strategies import CharLanguageModel, LocalChannelDropout, SequenceClassifier, Strategy, build_model

Model = SequenceClassifier | CharLanguageModel


@dataclass(frozen=True)
class TrainConfig:
    """Everything besides the strategy and seed that decides a run's result."""

    cell: str = "lstm"
    hidden_size: int = 64
    epochs: int = 60
    patience: int = 20
    batch_size: int = 32
    lr: float = 5e-3
    clip_norm: float = 1.0
    val_fraction: float = 0.2
    mc_samples: int = 30
    standardize: bool = True
    ece_bins: int = 15
    init: str = "torch"  # or "keras": Keras 3's default initialisers for every layer of the model
    schedule: str = "constant"  # or "cosine": lr annealed to 0 over `epochs`
    refit: bool = False  # retrain on all training sequences for the selected number of epochs

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _tensors(data: SequenceData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.x), torch.from_numpy(data.lengths), torch.from_numpy(data.y)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def predict_proba(model: Model, data: SequenceData, batch_size: int = 512) -> np.ndarray:
    """Class probabilities ``(N, K)`` in the model's current mode, batched (no gradients).

    For a language model the rows are every position of every chunk, ``(N * T, V)``, in the order of
    ``data.y.reshape(-1)``.
    """
    x, lengths, _ = _tensors(data)
    out = []
    with torch.no_grad():
        for s in _batches(len(data), batch_size):
            t = int(lengths[s].max())
            logits = model(x[s, :t], lengths[s])
            out.append(F.softmax(logits, dim=-1).reshape(-1, logits.shape[-1]))
    return torch.cat(out).double().numpy()


def mc_implementation() -> str:
    """``"rnndrop.mc_predict"`` when the installed rnndrop has it (and it fits), else ``"local"``."""
    fn = getattr(rnndrop, "mc_predict", None)
    if fn is None:
        return "local"
    params = inspect.signature(fn).parameters
    return "rnndrop.mc_predict" if "samples" in params else "local"


def mc_proba(
    model: Model, data: SequenceData, samples: int, seed: int = 0, batch_size: int = 512
) -> np.ndarray:
    """Monte-Carlo dropout: the mean of ``samples`` predictive distributions ``(N, K)``.

    Only the model's stochastic parts (its dropout modules and a recurrent layer with dropout) run in
    training mode; everything else stays in eval mode. Modes are restored afterwards. Without any
    dropout this equals the deterministic prediction, and one pass is made. Uses
    ``rnndrop.mc_predict`` when the installed rnndrop has it, else a local loop; ``seed`` fixes the draws.
    """
    parts = model.stochastic_parts()
    if not parts or samples <= 1:
        return predict_proba(model, data, batch_size)
    if mc_implementation() == "rnndrop.mc_predict":
        return _mc_rnndrop(model, data, samples, seed, batch_size)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        for part in parts:
            part.train()
        total = predict_proba(model, data, batch_size)
        for _ in range(samples - 1):
            total += predict_proba(model, data, batch_size)
        return total / samples
    finally:
        model.train(was_training)


def _mc_rnndrop(model: Model, data: SequenceData, samples: int, seed: int, batch_size: int) -> np.ndarray:
    x, lengths, _ = _tensors(data)
    out = []
    for s in _batches(len(data), batch_size):
        t = int(lengths[s].max())
        # (x, lengths) go in as a tuple: mc_predict repeats both along the batch when it vectorizes.
        result = rnndrop.mc_predict(
            model, (x[s, :t], lengths[s]), samples=samples, seed=seed,
            include=lambda m: isinstance(m, LocalChannelDropout),
        )
        out.append(result.mean.reshape(-1, result.mean.shape[-1]))
    return torch.cat(out).double().numpy()


SCHEDULES = ("constant", "cosine")


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """The learning rate ``progress`` epochs into training (fractional: per batch)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(progress, cfg.epochs) / cfg.epochs))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def _train_epoch(
    model: Model, opt: torch.optim.Optimizer, data: SequenceData, order: torch.Tensor, cfg: TrainConfig, epoch: int
) -> tuple[float, tuple[str | None, str | None]]:
    """One pass over ``data`` in ``order`` (epoch ``epoch``, 1-based): mean training loss, and the layer's path."""
    model.train()
    x, lengths, y = _tensors(data)
    batches = _batches(len(data), cfg.batch_size)
    total = 0.0
    backend: tuple[str | None, str | None] = (None, None)
    for k, s in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = learning_rate(cfg, epoch - 1 + k / len(batches))
        idx = order[s]
        t = int(lengths[idx].max())
        logits = model(x[idx, :t], lengths[idx])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1))
        opt.zero_grad()
        loss.backward()
        if cfg.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        opt.step()
        total += loss.item() * len(idx)
        if k == 0:  # which implementation the layer ran in training (if it says)
            backend = (getattr(model.rnn, "last_backend", None), getattr(model.rnn, "last_backend_reason", None))
    return total / len(data), backend


def _concat(a: SequenceData, b: SequenceData) -> SequenceData:
    """``a`` then ``b`` as one set, padded to the longer of the two."""
    t = max(a.x.shape[1], b.x.shape[1])

    def padded(arr: np.ndarray) -> np.ndarray:
        width = [(0, 0), (0, t - arr.shape[1])] + [(0, 0)] * (arr.ndim - 2)
        return np.pad(arr, width)

    y = np.concatenate([padded(a.y), padded(b.y)]) if a.y.ndim == 2 else np.concatenate([a.y, b.y])
    return SequenceData(np.concatenate([padded(a.x), padded(b.x)]), np.concatenate([a.lengths, b.lengths]), y)


def _metrics(probs: np.ndarray, y: np.ndarray, bins: int) -> dict[str, float]:
    y = y.reshape(-1)  # a language model's targets are (N, T)
    return {"accuracy": accuracy(probs, y), "nll": nll(probs, y), "ece": ece(probs, y, bins)}


def train_run(
    task: Task,
    strategy: Strategy,
    rate: float,
    seed: int,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, object]:
    """Train and evaluate ``strategy`` at ``rate`` with ``seed`` (protocol: module docstring).

    Returns a JSON-ready record: metrics (deterministic and MC), per-epoch history, timing.
    ``on_epoch(epoch, stats)`` is called after each epoch (progress display).
    """
    lm = task.kind == "language_model"
    if task.val is not None:
        train, val, test = task.train, task.val, task.test
    else:
        kept, held = stratified_split(task.train.y, cfg.val_fraction, seed)
        train, val, test = task.train.subset(kept), task.train.subset(held), task.test
    raw_train, raw_val, raw_test = train, val, test
    if cfg.standardize and not lm:
        mean, std = channel_stats(train)
        train, val, test = (standardize(d, mean, std) for d in (train, val, test))

    def fresh_model() -> tuple[Model, str]:
        torch.manual_seed(seed)  # the same initial weights for every strategy, and for the refit
        return build_model(strategy, rate, cfg.cell, task.channels, cfg.hidden_size, task.num_classes,
                           language_model=lm, init=cfg.init)

    model, implementation = fresh_model()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)

    history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    backend: tuple[str | None, str | None] | None = None
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    epochs_run = 0
    for epoch in range(1, cfg.epochs + 1):
        order = torch.from_numpy(rng.permutation(len(train)))
        train_loss, path = _train_epoch(model, opt, train, order, cfg, epoch)
        backend = backend or path
        model.eval()
        probs = predict_proba(model, val)
        val_loss = nll(probs, val.y.reshape(-1))
        stats = {"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": accuracy(probs, val.y.reshape(-1))}
        for k, v in stats.items():
            history[k].append(v)
        epochs_run = epoch
        if val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
        if on_epoch is not None:
            on_epoch(epoch, stats)
        if epoch - best_epoch >= cfg.patience:
            break
    train_seconds = time.perf_counter() - start

    refit: dict[str, object] | None = None
    if cfg.refit and best_epoch > 0:
        model.load_state_dict(best_state)
        model.eval()
        selected_test = _metrics(predict_proba(model, test), test.y, cfg.ece_bins)
        start = time.perf_counter()
        full, test = _concat(raw_train, raw_val), raw_test
        if cfg.standardize and not lm:
            mean, std = channel_stats(full)
            full, test = standardize(full, mean, std), standardize(test, mean, std)
        model, _ = fresh_model()
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        refit_rng = np.random.default_rng([seed, 1])  # a batch-order stream of its own
        losses = []
        for epoch in range(1, best_epoch + 1):
            losses.append(_train_epoch(model, opt, full, torch.from_numpy(refit_rng.permutation(len(full))), cfg,
                                       epoch)[0])
        best_state = copy.deepcopy(model.state_dict())
        refit = {"epochs": best_epoch, "train_size": len(full), "train_loss": losses, "selected_test": selected_test,
                 "seconds": time.perf_counter() - start}
        train_seconds += refit["seconds"]  # type: ignore[operator]

    model.load_state_dict(best_state)
    model.eval()
    start = time.perf_counter()
    det = _metrics(predict_proba(model, test), test.y, cfg.ece_bins)
    # MC draws: reproducible, and a stream apart from training's
    mc = _metrics(mc_proba(model, test, cfg.mc_samples, seed=seed + 1_000_003), test.y, cfg.ece_bins)
    eval_seconds = time.perf_counter() - start
    if lm:
        for m in (det, mc, *([refit["selected_test"]] if refit else [])):
            m["bits_per_char"] = m["nll"] / math.log(2)  # type: ignore[index]
            m["perplexity"] = math.exp(m["nll"])  # type: ignore[index]
    return {
        "strategy": strategy.name,
        "seed": seed,
        "rate": rate if strategy.name != "none" else 0.0,
        "implementation": implementation,
        "mc_implementation": mc_implementation() if model.stochastic_parts() else "none (no dropout)",
        "test": det,
        "test_mc": mc,
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
        "best_val_loss": best_loss,
        # best_epoch 0: the validation loss was never finite (diverged); the initial weights were kept
        "best_val_accuracy": history["val_accuracy"][best_epoch - 1] if best_epoch else None,
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "backend": backend[0] if backend else None,
        "backend_reason": backend[1] if backend else None,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "history": history,
        "refit": refit,
    }
