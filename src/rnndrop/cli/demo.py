"""``rnndrop demo``: train a small LSTM with and without recurrent dropout on generated data.

The task is deliberately easy to overfit: few noisy training sequences, many test sequences.
Each sequence is a sum of two sines with random frequencies plus noise; the target is the
dominant frequency's class. Prints the train and test loss of both variants.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from torch import nn

import rnndrop


def make_data(n: int, steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``(n, steps, 2)`` (signal, noise channel), ``y`` ``(n,)`` in {0, 1, 2, 3}."""
    y = torch.randint(0, 4, (n,), generator=generator)
    freq = 0.15 + 0.1 * y.float() + 0.02 * torch.randn(n, generator=generator)
    phase = 2 * math.pi * torch.rand(n, generator=generator)
    t = torch.arange(steps).float()
    signal = torch.sin(freq[:, None] * t[None] + phase[:, None])
    signal = signal + 0.8 * torch.randn(n, steps, generator=generator)
    distractor = torch.randn(n, steps, generator=generator)
    return torch.stack([signal, distractor], -1), y


class Classifier(nn.Module):
    def __init__(self, recurrent_dropout: float, input_dropout: float, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 1)
        self.rnn = rnndrop.LSTM(
            2, 64, batch_first=True, input_dropout=input_dropout, recurrent_dropout=recurrent_dropout,
            generator=gen,
        )
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.head(h[-1])


def train(recurrent_dropout: float, input_dropout: float, epochs: int, seed: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = make_data(96, 40, gen)
    x_test, y_test = make_data(1000, 40, gen)
    torch.manual_seed(seed)
    model = Classifier(recurrent_dropout, input_dropout, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=gen).split(32):
            opt.zero_grad()
            loss_fn(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_loss = loss_fn(model(x_train), y_train).item()
        logits = model(x_test)
        test_loss = loss_fn(logits, y_test).item()
        test_acc = (logits.argmax(-1) == y_test).float().mean().item()
    return {
        "recurrent_dropout": recurrent_dropout,
        "input_dropout": input_dropout,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "seconds": time.perf_counter() - start,
    }


def run(args: argparse.Namespace) -> int:
    results = []
    print(f"Training a 64-unit LSTM for {args.epochs} epochs on 96 generated sequences (test: 1000)...")
    for rec, inp in ((0.0, 0.0), (args.rate, args.rate)):
        results.append(train(rec, inp, args.epochs, args.seed))
    print(f"{'input/recurrent dropout':>24} {'train loss':>11} {'test loss':>10} {'test acc':>9} {'seconds':>8}")
    for r in results:
        label = f"{r['input_dropout']:.2f} / {r['recurrent_dropout']:.2f}"
        print(
            f"{label:>24} {r['train_loss']:>11.4f} {r['test_loss']:>10.4f} "
            f"{r['test_accuracy']:>9.3f} {r['seconds']:>8.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a small LSTM with and without recurrent dropout on generated data")
    p.add_argument("--epochs", type=int, default=80, help="training epochs of each variant (default 80)")
    p.add_argument("--rate", type=float, default=0.25, help="input and recurrent dropout rate (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, initialisation and masks (default 0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to this file")
    p.set_defaults(run=run)
