"""Train the same rnndrop LSTM classifier as ``train_plain.py`` with PyTorch Lightning.

Needs the optional extra: ``pip install "rnndrop[lightning]"``. Lightning owns the loop, the
devices and the processes; rnndrop layers are ordinary modules to it::

    python examples/train_lightning.py --steps 200
    python examples/train_lightning.py --steps 200 --devices 2 --strategy ddp   # 2 CPU processes

Lightning switches ``model.train()`` / ``model.eval()`` around validation, so dropout is on
exactly during training steps. For different masks on every DDP rank, ``seed_everything``
runs before the processes start; the ``on_fit_start`` hook below re-seeds torch's global RNG
(where rnndrop draws its masks) with the rank added.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

# The sibling example provides the same data and model.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_plain import Classifier, make_data


class LitClassifier(L.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 1e-2, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Classifier(hidden)

    def on_fit_start(self) -> None:
        # One mask stream per process: without this every DDP rank would drop the same units.
        torch.manual_seed(self.hparams.seed + 1 + self.global_rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)  # Lightning has put the model in eval mode: no dropout here
        self.log("val_loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val_accuracy", (logits.argmax(-1) == y).float().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (the training budget)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--strategy", default="auto", help='e.g. "ddp" with --devices 2')
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    train = make_data(2048, args.seq_len, seed=args.seed + 10_000)
    val = make_data(512, args.seq_len, seed=args.seed + 20_000)
    trainer = L.Trainer(
        max_steps=args.steps, accelerator="cpu", devices=args.devices, strategy=args.strategy,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    lit = LitClassifier(args.hidden, args.lr, args.seed)
    train_loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(val, batch_size=len(val))
    trainer.fit(lit, train_loader, val_loader)  # validates after each epoch, if the budget reaches one
    [scores] = trainer.validate(lit, val_loader, verbose=False)
    metrics = {
        "val_loss": float(scores["val_loss"]),
        "val_accuracy": float(scores["val_accuracy"]),
        "steps": float(trainer.global_step),
        "rank": float(trainer.global_rank),
    }
    if args.json:
        print(json.dumps(metrics), flush=True)
    elif trainer.is_global_zero:
        print(f"validation loss {metrics['val_loss']:.3f}, accuracy {metrics['val_accuracy']:.3f}")
    return metrics


if __name__ == "__main__":
    main()
