"""The training protocol of ``rnndrop compare``, as an :class:`~rnndrop.study.engine.Experiment`.

A trial of :class:`SequenceExperiment` (strategy and rate applied by the engine to the base model):

1. A stratified validation part (``val_fraction`` of each class) is split off the training set with the
   trial's seed; the rest trains. Channels are standardized with statistics of that training part only
   (float64; a channel that cannot be standardized is refused before any training).
2. ``torch.manual_seed(seed)`` before the model is built (by the engine), and a batch order drawn from
   ``numpy.random.default_rng(seed)``: with the same seed every strategy starts from the same weights
   and sees the same batches, so results are paired across strategies and rates.
3. Adam, gradient-norm clipping (``clip_norm``; 0 = none), at most ``epochs`` epochs, the learning rate
   ``lr`` constant or (``schedule="cosine"``) annealed per batch from ``lr`` to 0 over ``epochs``
   epochs; after each epoch the validation NLL is measured in eval mode (and reported to the study,
   which may prune a hopeless search trial); the weights of the epoch with the lowest validation NLL
   are kept; training stops early after ``patience`` epochs without improvement. The trial's
   validation score is that lowest NLL.
4. Final trials only — ``refit``: a fresh model (the same seed and strategy, so the same initial
   weights) is trained on *all* training sequences for the selected number of epochs, with the learning
   rate the selected run had at each point of those epochs; it replaces the selected model (whose
   test metrics are kept under ``refit.selected_test``). A final trial whose strategy, rate and seed
   were a complete search trial takes that trial's selected epoch instead of training the same
   selection phase again (``refit.selection_from_trial``; ``selected_test`` is then not measured).
5. Final trials only — the test set, once: deterministic (eval mode) and Monte-Carlo dropout (mean of
   ``mc_samples`` predictive distributions through :func:`rnndrop.mc_predict`), each with accuracy,
   NLL and ECE (language model: also bits per character and perplexity).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import rnndrop

from ..inference import is_dropout_module
from .data import SequenceData, Task, channel_stats, standardize, stratified_split
from .engine import TrialContext
from .metrics import accuracy, ece, nll
from .models import CharLanguageModel, SequenceClassifier

EMBED = 32  # character embedding width of the language-model mode
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything besides the strategy, rate and seed that decides a trial's result."""

    cell: str = "lstm"
    hidden_size: int = 64
    epochs: int = 60
    patience: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    clip_norm: float = 0.0
    val_fraction: float = 0.2
    mc_samples: int = 20
    standardize: bool = True
    ece_bins: int = 15
    init: str = "keras"  # or "torch"
    schedule: str = "cosine"  # or "constant"
    refit: bool = True

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _tensors(data: SequenceData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.x), torch.from_numpy(data.lengths), torch.from_numpy(data.y)


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def predict_proba(model: nn.Module, data: SequenceData, batch_size: int = 512) -> np.ndarray:
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
            out.append(F.softmax(logits.double(), dim=-1).reshape(-1, logits.shape[-1]))
    return torch.cat(out).numpy()


def has_dropout(model: nn.Module) -> bool:
    """True when a module of ``model`` draws dropout noise in training mode."""
    return any(is_dropout_module(m) for m in model.modules())


def mc_proba(model: nn.Module, data: SequenceData, samples: int, seed: int = 0, batch_size: int = 512) -> np.ndarray:
    """Monte-Carlo dropout: the mean of ``samples`` predictive distributions ``(N, K)`` (rnndrop.mc_predict:
    only the dropout parts in training mode). Without dropout this is the deterministic prediction."""
    if not has_dropout(model) or samples <= 1:
        return predict_proba(model, data, batch_size)
    x, lengths, _ = _tensors(data)
    out = []
    for s in _batches(len(data), batch_size):
        t = int(lengths[s].max())
        # (x, lengths) go in as a tuple: mc_predict repeats both along the batch when it vectorizes.
        result = rnndrop.mc_predict(model, (x[s, :t], lengths[s]), samples=samples, seed=seed)
        out.append(result.mean.double().reshape(-1, result.mean.shape[-1]))
    return torch.cat(out).numpy()


def learning_rate(cfg: TrainConfig, progress: float) -> float:
    """The learning rate ``progress`` epochs into training (fractional: per batch)."""
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "cosine":
        return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min(progress, cfg.epochs) / cfg.epochs))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")


def _train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: SequenceData, order: torch.Tensor,
                 cfg: TrainConfig, epoch: int) -> tuple[float, tuple[str | None, str | None]]:
    """One pass over ``data`` in ``order`` (epoch ``epoch``, 1-based): mean training loss, and the layer's path."""
    model.train()
    x, lengths, y = _tensors(data)
    batches = _batches(len(data), cfg.batch_size)
    total = 0.0
    backend: tuple[str | None, str | None] = (None, None)
    rnn = getattr(model, "rnn", None)
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
            backend = (getattr(rnn, "last_backend", None), getattr(rnn, "last_backend_reason", None))
    return total / len(data), backend


def _concat(a: SequenceData, b: SequenceData) -> SequenceData:
    """``a`` then ``b`` as one set, padded to the longer of the two."""
    t = max(a.x.shape[1], b.x.shape[1])

    def padded(arr: np.ndarray) -> np.ndarray:
        width = [(0, 0), (0, t - arr.shape[1])] + [(0, 0)] * (arr.ndim - 2)
        return np.pad(arr, width)

    y = np.concatenate([padded(a.y), padded(b.y)]) if a.y.ndim == 2 else np.concatenate([a.y, b.y])
    return SequenceData(np.concatenate([padded(a.x), padded(b.x)]), np.concatenate([a.lengths, b.lengths]), y)


def metrics(probs: np.ndarray, y: np.ndarray, bins: int, language_model: bool = False) -> dict[str, float]:
    """Accuracy, NLL (nats) and ECE of ``probs`` against ``y`` (a language model: also bits/char, perplexity)."""
    y = y.reshape(-1)  # a language model's targets are (N, T)
    out = {"accuracy": accuracy(probs, y), "nll": nll(probs, y), "ece": ece(probs, y, bins)}
    if language_model:
        out["bits_per_char"] = out["nll"] / math.log(2)
        out["perplexity"] = math.exp(min(out["nll"], 700.0))
    return out


@dataclass
class SequenceExperiment:
    """``rnndrop compare``'s experiment: the base model of ``task`` trained by the protocol of this module.

    Attributes:
        task: the data (:class:`~rnndrop.study.data.Task`).
        cfg: the protocol's settings.
        on_epoch: called as ``on_epoch(epoch, stats)`` after each epoch (progress display; not pickled
            into worker processes).
    """

    task: Task
    cfg: TrainConfig
    on_epoch: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"task": self.task, "cfg": self.cfg, "on_epoch": None}

    @property
    def language_model(self) -> bool:
        return self.task.kind == "language_model"

    def build(self, seed: int) -> nn.Module:
        """The base model without dropout (the engine seeded torch with ``seed``)."""
        if self.language_model:
            return CharLanguageModel(self.cfg.cell, self.task.num_classes, self.cfg.hidden_size, EMBED, self.cfg.init)
        return SequenceClassifier(self.cfg.cell, self.task.channels, self.cfg.hidden_size, self.task.num_classes,
                                  self.cfg.init)

    def _parts(self, seed: int) -> tuple[SequenceData, SequenceData, SequenceData, SequenceData]:
        """(train, validation, raw train, raw validation) of this seed, standardized as the protocol says."""
        task, cfg = self.task, self.cfg
        if task.val is not None:
            train, val = task.train, task.val
        else:
            kept, held = stratified_split(task.train.y, cfg.val_fraction, seed)
            train, val = task.train.subset(kept), task.train.subset(held)
        raw_train, raw_val = train, val
        if cfg.standardize and not self.language_model:
            mean, std = channel_stats(train, where="the training part")
            train, val = standardize(train, mean, std), standardize(val, mean, std)
        return train, val, raw_train, raw_val

    def _select(self, model: nn.Module, trial: TrialContext, train: SequenceData, val: SequenceData
                ) -> tuple[dict[str, list[float]], float, int, int, tuple[str | None, str | None] | None, float]:
        """Train with per-epoch validation; ``model`` ends with the selected epoch's weights.

        Returns (history, lowest validation NLL, its epoch, epochs run, the layer's path, seconds)."""
        cfg, seed = self.cfg, trial.seed
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        rng = np.random.default_rng(seed)
        history: dict[str, list[float]] = {"train_loss": [], "val_loss": [], "val_accuracy": []}
        backend: tuple[str | None, str | None] | None = None
        best_loss, best_epoch, best_state = math.inf, 0, copy.deepcopy(model.state_dict())
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
            if self.on_epoch is not None:
                self.on_epoch(epoch, stats)
            trial.record(history=history, best_epoch=best_epoch, epochs_run=epochs_run)  # kept if pruned
            trial.report(epoch, best_loss)
            if epoch - best_epoch >= cfg.patience:
                break
        model.load_state_dict(best_state)
        return history, best_loss, best_epoch, epochs_run, backend, time.perf_counter() - start

    def fit(self, model: nn.Module, trial: TrialContext) -> float:
        cfg, seed = self.cfg, trial.seed
        train, val, raw_train, raw_val = self._parts(seed)
        reuse = trial.search_record if (trial.final and cfg.refit) else None
        if reuse is not None and reuse.get("best_epoch") and reuse.get("history"):
            # The search trial of this strategy, rate and seed trained exactly this selection phase (same split,
            # initial weights, batches and masks): take its selected epoch and go on to the refit.
            history, best_epoch, epochs_run = reuse["history"], int(reuse["best_epoch"]), int(reuse["epochs_run"])
            best_loss, backend = float(reuse["value"]), (reuse.get("backend"), reuse.get("backend_reason"))
            train_seconds = 0.0
        else:
            reuse = None
            history, best_loss, best_epoch, epochs_run, backend, train_seconds = self._select(model, trial, train, val)
        record: dict[str, Any] = {
            "best_val_loss": best_loss, "best_epoch": best_epoch, "epochs_run": epochs_run,
            # best_epoch 0: the validation loss was never finite (diverged); the initial weights were kept
            "best_val_accuracy": history["val_accuracy"][best_epoch - 1] if best_epoch else None,
            "history": history, "backend": backend[0] if backend else None,
            "backend_reason": backend[1] if backend else None,
            "sizes": {"train": len(train), "val": len(val), "test": len(self.task.test)},
        }
        test = self.task.test
        if cfg.standardize and not self.language_model:
            mean, std = channel_stats(raw_train, where="the training part")
            test = standardize(test, mean, std)
        if trial.final and cfg.refit and best_epoch > 0:
            model.eval()
            selected_test = None if reuse is not None else metrics(predict_proba(model, test), test.y, cfg.ece_bins,
                                                                    self.language_model)
            start = time.perf_counter()
            full, test = _concat(raw_train, raw_val), self.task.test
            if cfg.standardize and not self.language_model:
                mean, std = channel_stats(full, where="the training data")
                full, test = standardize(full, mean, std), standardize(test, mean, std)
            refit_model = trial.fresh_model()
            opt = torch.optim.Adam(refit_model.parameters(), lr=cfg.lr)
            refit_rng = np.random.default_rng([seed, 1])  # a batch-order stream of its own
            losses = [_train_epoch(refit_model, opt, full, torch.from_numpy(refit_rng.permutation(len(full))), cfg,
                                   epoch)[0] for epoch in range(1, best_epoch + 1)]
            model.load_state_dict(refit_model.state_dict())
            seconds = time.perf_counter() - start
            record["refit"] = {"epochs": best_epoch, "train_size": len(full), "train_loss": losses,
                               "selected_test": selected_test, "seconds": seconds,
                               "selection_from_trial": None if reuse is None else reuse.get("number")}
            train_seconds += seconds
        record["train_seconds"] = train_seconds
        trial.state["test"] = test
        trial.record(**record)
        return best_loss

    def test(self, model: nn.Module, trial: TrialContext) -> dict[str, float]:
        cfg = self.cfg
        test = trial.state["test"]
        model.eval()
        start = time.perf_counter()
        det = metrics(predict_proba(model, test), test.y, cfg.ece_bins, self.language_model)
        # MC draws: reproducible, and a stream apart from training's
        mc = metrics(mc_proba(model, test, cfg.mc_samples, seed=trial.seed + 1_000_003), test.y, cfg.ece_bins,
                     self.language_model)
        trial.record(test_mc=mc, eval_seconds=time.perf_counter() - start,
                     mc_implementation="rnndrop.mc_predict" if has_dropout(model) else "none (no dropout)")
        return det
