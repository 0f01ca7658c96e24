"""Train an rnndrop LSTM classifier with a plain PyTorch loop — on one process or many (torchrun).

The task is synthetic, so the script runs anywhere without downloads: each sequence is a noisy
sine wave of one of three frequencies, and the model names the frequency. The model uses
Keras-style input and recurrent dropout plus DropConnect on the recurrent weights.

One process::

    python examples/train_plain.py --steps 200

Several processes on this machine, or several machines (DistributedDataParallel; ``gloo`` on
CPU, ``nccl`` on GPUs)::

    torchrun --nproc-per-node 2 examples/train_plain.py --steps 200
    # machine 0 of 2:  torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
    #                      --rdzv-backend c10d --rdzv-endpoint HOST0:29500 examples/train_plain.py
    # machine 1 of 2:  the same with --node-rank 1

Options: ``--compile`` (torch.compile), ``--bf16`` (autocast), ``--save PATH`` (state_dict
checkpoint), ``--json`` (print the final metrics as one JSON line; the tests read it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import rnndrop

FREQUENCIES = (1.0, 2.0, 3.0)  # cycles per sequence: the three classes


def make_data(n: int, steps: int, seed: int) -> TensorDataset:
    """``n`` sequences ``(n, steps, 2)`` (signal, pure noise channel) and their class labels ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(FREQUENCIES), (n,), generator=g)
    t = torch.linspace(0, 1, steps)
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    freq = torch.tensor(FREQUENCIES)[labels].unsqueeze(1)
    signal = torch.sin(2 * math.pi * freq * t + phase) + 0.3 * torch.randn(n, steps, generator=g)
    noise = torch.randn(n, steps, generator=g)
    return TensorDataset(torch.stack([signal, noise], dim=-1), labels)


class Classifier(nn.Module):
    """rnndrop LSTM (batch first) + linear head on the last output."""

    def __init__(self, hidden: int = 32, dropout: float = 0.2, weight_dropout: float = 0.3) -> None:
        super().__init__()
        self.rnn = rnndrop.LSTM(
            2, hidden, batch_first=True,
            input_dropout=dropout, recurrent_dropout=dropout, weight_dropout=weight_dropout,
        )
        self.head = nn.Linear(hidden, len(FREQUENCIES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (the training budget)")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seq-len", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (matmuls in bf16, states in float32)")
    p.add_argument("--save", default=None, help="write a state_dict checkpoint here (rank 0)")
    p.add_argument("--json", action="store_true", help="print the final metrics as one JSON line")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # set by torchrun
    device = torch.device("cpu")
    rank = 0
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank = dist.get_rank()

    # The same initial weights on every rank (DDP also broadcasts rank 0's at construction) ...
    torch.manual_seed(args.seed)
    model: nn.Module = Classifier(args.hidden).to(device)
    if distributed:
        model = DistributedDataParallel(model)  # no find_unused_parameters needed
    # ... but different dropout masks: rnndrop draws masks from torch's global RNG (or from a
    # generator passed to the layer), so seed it per rank, or every rank drops the same units.
    torch.manual_seed(args.seed + 1 + rank)
    net = torch.compile(model) if args.compile else model

    train = make_data(2048, args.seq_len, seed=args.seed + 10_000)
    val = make_data(512, args.seq_len, seed=args.seed + 20_000)
    sampler = DistributedSampler(train, seed=args.seed) if distributed else None
    loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, shuffle=sampler is None,
                        generator=torch.Generator().manual_seed(args.seed), drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)

    losses: list[float] = []
    epoch = 0
    while len(losses) < args.steps:
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                logits = net(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if len(losses) == args.steps:
                break
        epoch += 1

    model.eval()  # every dropout off: deterministic predictions
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
        x, y = val.tensors
        val_logits = net(x.to(device)).float()
    val_loss = nn.functional.cross_entropy(val_logits, y.to(device)).item()
    accuracy = (val_logits.argmax(-1).cpu() == y).float().mean().item()
    window = max(1, min(10, len(losses) // 2))
    metrics = {
        "first_loss": sum(losses[:window]) / window,
        "last_loss": sum(losses[-window:]) / window,
        "val_loss": val_loss,
        "val_accuracy": accuracy,
        "steps": float(len(losses)),
        "rank": float(rank),
        "world_size": float(dist.get_world_size() if distributed else 1),
    }
    if args.save and rank == 0:
        raw = model.module if distributed else model
        torch.save(raw.state_dict(), args.save)  # load with torch.load(path, map_location=...)
    if args.json:
        print(json.dumps(metrics), flush=True)
    elif rank == 0:
        print(f"loss {metrics['first_loss']:.3f} -> {metrics['last_loss']:.3f}; "
              f"validation loss {val_loss:.3f}, accuracy {accuracy:.3f}")
    if distributed:
        dist.destroy_process_group()
    return metrics


if __name__ == "__main__":
    main()
