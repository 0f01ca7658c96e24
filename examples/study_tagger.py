"""Which dropout, at which rate, for *your* model: a dropout study on a tagger that is not rnndrop's.

The model is a plain ``torch.nn`` bidirectional two-layer GRU sequence tagger (embedding → GRU → linear
tag per token), trained by its own loop on a generated tagging task: the tag of each token depends on
its left and right neighbours, and the training set is small enough to overfit. The study needs three
functions and nothing changes in the model's code: ``rnndrop.study.run_study`` converts the GRU to
rnndrop's, applies each strategy at each rate (``apply_strategy``), and runs the search on validation
data, the final comparison over seeds, the statistics, the Optuna study (``study.db`` in ``--out``) and
the report (``results.json``, ``results.csv``, ``dose_response.png``, ``accuracy.png``, ``masks.png``)::

    pip install "rnndrop[study]" matplotlib
    python examples/study_tagger.py --out tagger-study                  # a few minutes on 2 cores
    python examples/study_tagger.py --out tagger-study --workers 2      # two processes on the same study
    python examples/study_tagger.py --storage postgresql+psycopg://me@db/studies --study tagger  # many machines

Running it again continues the study; ``examples/study_lightning.py`` is the same study with the training
loop in PyTorch Lightning.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnndrop.study import TrialContext, WorkerSettings, run_study

VOCAB, TAGS, MAX_LEN = 24, 3, 20


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` sentences: tokens ``(T, n)`` (time-major, 0 = padding), tags ``(T, n)`` (-100 on padding), lengths.

    The tag of token ``t`` is ``(x[t-1] + 2 * x[t+1]) mod 3`` (neighbours outside the sentence count as 0), so
    a tagger must read both directions.
    """
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(6, MAX_LEN + 1, (n,), generator=g)
    tokens = torch.randint(1, VOCAB, (MAX_LEN, n), generator=g)
    real = torch.arange(MAX_LEN)[:, None] < lengths[None, :]
    tokens = tokens * real
    left = torch.cat([torch.zeros(1, n, dtype=torch.long), tokens[:-1]])
    right = torch.cat([tokens[1:], torch.zeros(1, n, dtype=torch.long)])
    tags = (left + 2 * right) % TAGS
    noise = torch.rand(MAX_LEN, n, generator=g) < 0.05  # a few wrong labels
    tags = torch.where(noise, torch.randint(0, TAGS, (MAX_LEN, n), generator=g), tags)
    return tokens, torch.where(real, tags, torch.full_like(tags, -100)), lengths


TRAIN, VAL, TEST = make_data(300, 1), make_data(200, 2), make_data(1000, 3)


class Tagger(nn.Module):
    """Embedding → bidirectional two-layer ``torch.nn.GRU`` (packed sequences) → a tag per token."""

    def __init__(self, embed: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, num_layers=2, bidirectional=True)
        self.out = nn.Linear(2 * hidden, TAGS)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``(T, B)``, ``lengths`` ``(B,)`` → tag logits ``(T, B, TAGS)``."""
        packed = pack_padded_sequence(self.embed(tokens), lengths, enforce_sorted=False)
        out, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(out, total_length=tokens.shape[0])
        return self.out(padded)


Split = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def loss_and_accuracy(model: nn.Module, data: Split) -> tuple[float, float]:
    """Mean cross-entropy per real token and token accuracy, in eval mode."""
    tokens, tags, lengths = data
    model.eval()
    with torch.no_grad():
        logits = model(tokens, lengths)
    loss = nn.functional.cross_entropy(logits.reshape(-1, TAGS), tags.reshape(-1), ignore_index=-100).item()
    real = tags != -100
    return loss, (logits.argmax(-1)[real] == tags[real]).float().mean().item()


# ---------------------------------------------------------------------------------------------- the three functions
def build_model(seed: int) -> nn.Module:
    """A fresh tagger without dropout (the study seeds torch first and applies each strategy)."""
    return Tagger()


def fit(model: nn.Module, trial: TrialContext, epochs: int = 30) -> float:
    """Train with Adam; after every epoch report the validation loss; keep the best epoch's weights."""
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    tokens, tags, lengths = TRAIN
    order = torch.Generator().manual_seed(trial.seed)
    best, best_state = float("inf"), None
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(tokens.shape[1], generator=order).split(32):
            loss = nn.functional.cross_entropy(model(tokens[:, idx], lengths[idx]).reshape(-1, TAGS),
                                               tags[:, idx].reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
        val_loss, _ = loss_and_accuracy(model, VAL)
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
        trial.report(epoch, best)  # the study may prune a hopeless search trial here
    if best_state is not None:
        model.load_state_dict(best_state)
    return best


def test(model: nn.Module, trial: TrialContext) -> dict[str, float]:
    loss, accuracy = loss_and_accuracy(model, TEST)
    return {"accuracy": accuracy, "nll": loss}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tagger-study", help="results folder (holds the study, study.db)")
    parser.add_argument("--storage", help="an Optuna storage URL or journal file, for workers on many machines")
    parser.add_argument("--study", default="tagger", help="the study's name")
    parser.add_argument("--strategies", default="none,input_dropout_per_step,recurrent,keras_both,weight_dropout,"
                        "zoneout,output_dropout")
    parser.add_argument("--rates", default="0.1,0.2,0.3,0.5", help="the search grid")
    parser.add_argument("--search-seeds", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = run_study(  # module-level functions (and partial) pickle into worker processes
        build_model=build_model, fit=functools.partial(fit, epochs=args.epochs), test=test,
        strategies=args.strategies.split(","),
        rates=[float(r) for r in args.rates.split(",")], search_seeds=args.search_seeds, seeds=args.seeds,
        direction="minimize", metric="accuracy", out=args.out, storage=args.storage, study_name=args.study,
        config={"example": "study_tagger", "epochs": args.epochs}, workers=args.workers, plots=not args.no_plots,
        settings=WorkerSettings(total_steps=args.epochs),
    )
    print(results.table())
    print("Recommendation:", results.recommendation)
    summary = {"tuned_rates": results.tuned_rates, "recommendation": results.recommendation,
               "accuracy": {r["strategy"]: r["accuracy_mean"] for r in results.rows}, "missing": results.missing}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
