"""``study_tagger.py``'s dropout study with the training loop in PyTorch Lightning.

The LightningModule holds the same ``torch.nn`` tagger; ``rnndrop.study`` applies each strategy to the
LightningModule itself (it is an ``nn.Module``: its GRU is converted, the dropouts attached), and a small
callback reports the validation loss of every epoch to the study so hopeless search trials are pruned::

    pip install "rnndrop[study,lightning]" matplotlib
    python examples/study_lightning.py --out lightning-study
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rnndrop.study import TrialContext, WorkerSettings, run_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_tagger import TAGS, TEST, TRAIN, VAL, Tagger, loss_and_accuracy


def _loader(data: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shuffle: bool, seed: int = 0) -> DataLoader:
    tokens, tags, lengths = data  # time-major tensors: batch them along dimension 1
    dataset = TensorDataset(tokens.T, tags.T, lengths)
    return DataLoader(dataset, batch_size=32, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


class LitTagger(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.tagger = Tagger()

    def _loss(self, batch: Sequence[torch.Tensor]) -> torch.Tensor:
        tokens, tags, lengths = batch
        logits = self.tagger(tokens.T, lengths)
        return nn.functional.cross_entropy(logits.reshape(-1, TAGS), tags.T.reshape(-1), ignore_index=-100)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        tags = batch[1]
        self.log("val_loss", self._loss(batch), batch_size=int((tags != -100).sum()), reduce_fx="mean")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01)


class ReportToStudy(L.Callback):
    """Report each epoch's validation loss to the study (which may prune the trial) and keep the best weights."""

    def __init__(self, trial: TrialContext) -> None:
        self.trial, self.best, self.best_state = trial, float("inf"), None

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = float(trainer.callback_metrics["val_loss"])
        if loss < self.best:
            self.best, self.best_state = loss, {k: v.clone() for k, v in module.state_dict().items()}
        self.trial.report(trainer.current_epoch + 1, self.best)


def build_model(seed: int) -> L.LightningModule:
    return LitTagger()


def fit(model: L.LightningModule, trial: TrialContext, epochs: int = 30) -> float:
    report = ReportToStudy(trial)
    trainer = L.Trainer(max_epochs=epochs, callbacks=[report], accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0)
    trainer.fit(model, _loader(TRAIN, shuffle=True, seed=trial.seed), _loader(VAL, shuffle=False))
    if report.best_state is not None:
        model.load_state_dict(report.best_state)
    return report.best


def test(model: L.LightningModule, trial: TrialContext) -> dict[str, float]:
    loss, accuracy = loss_and_accuracy(model.tagger, TEST)
    return {"accuracy": accuracy, "nll": loss}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="lightning-study")
    parser.add_argument("--strategies", default="none,recurrent,keras_both,zoneout")
    parser.add_argument("--rates", default="0.1,0.2,0.3,0.5")
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    results = run_study(
        build_model=build_model, fit=functools.partial(fit, epochs=args.epochs), test=test,
        strategies=args.strategies.split(","), rates=[float(r) for r in args.rates.split(",")],
        search_seeds=args.search_seeds, seeds=args.seeds, out=args.out, plots=not args.no_plots,
        config={"example": "study_lightning", "epochs": args.epochs}, settings=WorkerSettings(total_steps=args.epochs),
    )
    print(results.table())
    print("Recommendation:", results.recommendation)
    summary = {"tuned_rates": results.tuned_rates, "recommendation": results.recommendation,
               "accuracy": {r["strategy"]: r["accuracy_mean"] for r in results.rows}, "missing": results.missing}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
