"""DistributedDataParallel: two CPU processes (gloo) train an LSTM with input, recurrent and weight dropout.

Checked: parameters stay identical across ranks; masks differ across ranks when the mask RNG
is seeded per rank (global RNG or a per-layer generator) and coincide when it is not (the
pitfall docs/ecosystem.md warns about); a seeded run is bitwise reproducible; the default
``find_unused_parameters=False`` suffices (DDP raises on the next step if a parameter got no
gradient); no warnings.

Every rank trains on the *same* batch: with equal parameters, a difference between the ranks'
losses can only come from different dropout masks.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import rnndrop

WORLD = 2
STEPS = 3
DROPOUT = {"input_dropout": 0.3, "recurrent_dropout": 0.3, "weight_dropout": 0.4}

# name -> (seed, how the masks are seeded)
RUNS = {
    "per_rank_global": (0, "global+rank"),
    "per_rank_global_again": (0, "global+rank"),
    "same_global": (0, "global"),
    "per_rank_generator": (0, "generator+rank"),
}


class Classifier(nn.Module):
    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rnn = rnndrop.LSTM(4, 8, batch_first=True, generator=generator, **DROPOUT)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def _train(rank: int, seed: int, seeding: str) -> dict[str, object]:
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    generator = torch.Generator().manual_seed(seed + rank) if seeding == "generator+rank" else None
    model = Classifier(generator)
    ddp = DistributedDataParallel(model)  # find_unused_parameters=False: the default
    # Masks come from torch's global RNG unless the layer has a generator: seed it per rank.
    torch.manual_seed(seed + rank if seeding == "global+rank" else seed)
    data = torch.Generator().manual_seed(123)
    x, y = torch.randn(6, 5, 4, generator=data), torch.randint(0, 3, (6,), generator=data)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return {"params": [p.detach().clone() for p in model.parameters()], "losses": torch.stack(losses)}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = {name: _train(rank, seed, seeding) for name, (seed, seeding) in RUNS.items()}
        results["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available in this build")
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_parameters_identical_across_ranks(ranks: list[dict], run: str) -> None:
    for p0, p1 in zip(ranks[0][run]["params"], ranks[1][run]["params"]):
        torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    torch.manual_seed(RUNS[run][0])
    initial = list(Classifier().parameters())
    assert all(not torch.equal(p, q) for p, q in zip(ranks[0][run]["params"], initial))  # training happened


@pytest.mark.parametrize("run", ["per_rank_global", "per_rank_generator"])
def test_masks_differ_across_ranks_when_seeded_per_rank(ranks: list[dict], run: str) -> None:
    losses = [r[run]["losses"] for r in ranks]
    # Same parameters and the same batch at step 0: only the masks can make the losses differ.
    assert not torch.equal(losses[0][0], losses[1][0])


def test_same_seed_on_every_rank_gives_every_rank_the_same_masks(ranks: list[dict]) -> None:
    torch.testing.assert_close(ranks[0]["same_global"]["losses"], ranks[1]["same_global"]["losses"], rtol=0, atol=0)


def test_seeded_run_is_reproducible(ranks: list[dict]) -> None:
    for r in ranks:
        a, b = r["per_rank_global"], r["per_rank_global_again"]
        torch.testing.assert_close(a["losses"], b["losses"], rtol=0, atol=0)
        for p, q in zip(a["params"], b["params"]):
            torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_no_warnings_and_no_unused_parameters(ranks: list[dict]) -> None:
    # Reaching STEPS optimizer steps with find_unused_parameters=False is the check: DDP raises
    # at the next forward when a parameter (e.g. a dropped weight) received no gradient.
    assert all(len(r[run]["losses"]) == STEPS for r in ranks for run in RUNS)
    assert [r["warnings"] for r in ranks] == [[], []]
