"""Real models (issue 22): rnndrop with its dropout against torch.nn without dropout and the usual hand-written code.

One command, four models, each measurement's variants side by side in one process, interleaved round
after round, medians::

    .venv/bin/python benchmarks/bench_models.py            # everything, both AWD sizes (minutes)
    .venv/bin/python benchmarks/bench_models.py --quick    # AWD 200/512 only, 3 rounds
    .venv/bin/python benchmarks/bench_models.py --model tagger --model char_lm   # some models only
    .venv/bin/python benchmarks/bench_models.py --threads 1
    .venv/bin/python benchmarks/bench_models.py --tiny     # tiny sizes (the smoke test; figures meaningless)

1. **AWD-LSTM language model** (the stack of fastai's ``AWD_LSTM``, ``awd_lstm_lm_config`` rates): three
   LSTM layers emb → hid → hid → emb, batch first, batch 32, BPTT 70, the hidden state carried from call to
   call (detached), DropConnect 0.2 on ``W_hh``, locked dropout 0.15 between layers; sizes 200/512 and
   400/1152. Variants: ``torch.nn`` (``nn.LSTM`` layers, no dropout: the bar), ``fastai-style WeightDropout``
   (``nn.LSTM`` in a weight-dropping wrapper written here, :class:`WeightDroppedLSTM`, and a hand-written
   locked dropout between layers), ``rnndrop auto`` / ``rnndrop torch`` / ``rnndrop fused``
   (``rnndrop.LSTM(weight_dropout=0.2)``, the between-layer mask as the next layer's ``input_dropout``, with
   ``backend="auto"`` / ``"torch"`` / ``"fused"``: is ``auto``'s choice the faster kernel?),
   ``rnndrop auto, DropConnect only`` (no locked dropout: DropConnect's own cost against the next row) and
   ``rnndrop no dropout``. Timed: the stack alone, one training step (forward, ``sum`` loss, backward; the
   input requires grad as the embedding's output does), every variant; and the whole model's training step
   (embedding with embedding dropout 0.02, locked dropout 0.25 on the embeddings, the stack, locked dropout
   0.1 on its output, tied decoder, cross-entropy over a 10 000-word vocabulary, backward; no optimizer
   step) for the bar, the fastai-style model (every dropout hand-written) and rnndrop ``auto``
   (``rnndrop.EmbeddingDropout``, ``input_dropout``, ``rnndrop.LockedDropout``).
2. **Bidirectional two-layer tagger** (batch first): batch 32, lengths drawn in [5, 50] (one of length 50),
   right padding, input 100, hidden 128 per direction, a linear head over 17 tags, cross-entropy over the
   real tokens. Training step: ``torch.nn`` bidirectional LSTM on a ``PackedSequence`` without dropout (bar);
   ``rnndrop`` with ``input_dropout=recurrent_dropout=0.25`` and ``lengths=``; a hand-written
   ``nn.LSTMCell`` loop per layer and direction with time-locked masks on x and h
   (:class:`BidirectionalCellLoop`: states held past a sequence's end, each sequence reversed within its
   length for the backward direction). Inference (eval, no dropout anywhere): the same, plus rnndrop with
   ``backend="torch"`` and ``"fused"``.
3. **GRU forecaster** (batch first): T 48, 8 features, two GRU layers of 64, a linear head on the last
   step to a 12-step horizon; batch 1 and 8. Latency of one inference call (eval): ``torch.nn.GRU`` (bar),
   rnndrop (``recurrent_dropout=0.2``, in eval: off) ``auto`` / ``torch`` / ``fused``. Monte-Carlo dropout
   prediction (mean and std) with 20 and 50 samples: bar ``torch.nn`` without dropout on the batch
   repeated N times (the same rows, no randomness); ``rnndrop.mc_predict`` (recurrent dropout 0.2,
   its default vectorised passes); the hand-written alternative, ``nn.GRU(dropout=0.2)`` with an
   ``nn.Dropout(0.2)`` before the head in training mode, as N separate passes and as one pass on the batch
   repeated N times (not recurrent dropout: torch.nn has none).
4. **Stateful char-LM** (time-major, as PyTorch's word-language-model example): T 200, batch 16, 100
   characters, embedding 64, two LSTM layers of 512, the state carried between calls (detached), a linear
   head, cross-entropy; training step. ``torch.nn.LSTM`` without dropout (bar), rnndrop with
   ``recurrent_dropout=0.25``, and a hand-written ``nn.LSTMCell`` loop with time-locked masks on h.

Every rnndrop layer's ``last_backend`` and ``last_backend_reason`` go into the JSON; a variant with a forced
``backend`` is checked to run it after its first call and after the timed rounds, and an ``auto`` variant
to run a kernel (``torch`` or ``fused``), never the reference loop — a silent fallback cannot fake a figure.
Fast calls are timed in batches (``calls_per_sample`` calls per timed sample, so that a sample lasts
≥ 20 ms); the figure is per call. Ratios are to each measurement's bar: median ÷ median (printed) and the
median of the per-round ratios (``paired_ratio``). Results: a table on stdout and
``benchmarks/results/bench_models.json`` (``--json``), with the machine and the sizes.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnndrop
from rnndrop.layers import RecurrentBase

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script beside its helper modules
from bench_common import write_results
from bench_cpu import machine

# AWD-LSTM's rates, from fastai's awd_lstm_lm_config (weight_p, hidden_p, input_p, embed_p, output_p).
AWD_WEIGHT_P = 0.2
AWD_HIDDEN_P = 0.15
AWD_INPUT_P = 0.25
AWD_EMBED_P = 0.02
AWD_OUTPUT_P = 0.1
TAGGER_P = 0.25
FORECASTER_P = 0.2
CHAR_LM_P = 0.25

# Model sizes: the real ones, and tiny ones for the smoke test (--tiny).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "awd": {"sizes": [[200, 512], [400, 1152]], "batch": 32, "bptt": 70, "vocab": 10_000},
        "tagger": {"batch": 32, "max_len": 50, "min_len": 5, "input": 100, "hidden": 128, "layers": 2, "tags": 17},
        "forecaster": {"batches": [1, 8], "steps": 48, "features": 8, "hidden": 64, "layers": 2, "horizon": 12,
                       "mc_samples": [20, 50]},
        "char_lm": {"batch": 16, "steps": 200, "vocab": 100, "embedding": 64, "hidden": 512, "layers": 2},
    },
    "tiny": {
        "awd": {"sizes": [[6, 8]], "batch": 2, "bptt": 5, "vocab": 20},
        "tagger": {"batch": 3, "max_len": 6, "min_len": 2, "input": 5, "hidden": 4, "layers": 2, "tags": 3},
        "forecaster": {"batches": [1, 2], "steps": 5, "features": 3, "hidden": 16, "layers": 2, "horizon": 2,
                       "mc_samples": [2, 3]},
        "char_lm": {"batch": 2, "steps": 6, "vocab": 10, "embedding": 4, "hidden": 8, "layers": 2},
    },
}

BAR = "torch.nn"  # every measurement's first variant, the bar its ratios are taken to
AWD_STACK_VARIANTS = (BAR, "fastai-style WeightDropout", "rnndrop auto", "rnndrop torch", "rnndrop fused",
                      "rnndrop auto, DropConnect only", "rnndrop no dropout")
AWD_MODEL_VARIANTS = (BAR, "fastai-style WeightDropout", "rnndrop auto")
TAGGER_TRAIN_VARIANTS = (BAR, "rnndrop auto", "LSTMCell loop")
TAGGER_INFER_VARIANTS = (BAR, "rnndrop auto", "rnndrop torch", "rnndrop fused", "LSTMCell loop")
LATENCY_VARIANTS = (BAR, "rnndrop auto", "rnndrop torch", "rnndrop fused")
MC_VARIANTS = (BAR, "rnndrop mc_predict", "nn.Dropout, N passes", "nn.Dropout, batch repeated")
CHAR_LM_VARIANTS = (BAR, "rnndrop auto", "LSTMCell loop")


# ---------------------------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Rounds:
    """How each measurement is timed: untimed rounds, timed rounds, and how long a timed sample lasts at least."""

    repeats: int
    warmup: int
    min_sample_s: float = 0.02  # a fast call is repeated within a sample until it lasts about this long


@dataclass
class Variant:
    """One row: a call to time, the rnndrop layers whose backend it records, and the backend it insists on."""

    name: str
    call: Callable[[], object]
    rnndrop_layers: list[nn.Module] = field(default_factory=list)
    backend: str | None = None  # "auto", "torch" or "fused" for rnndrop variants; None for the others


def backends_of(v: Variant) -> list[dict[str, str | None]]:
    return [{"last_backend": layer.last_backend, "last_backend_reason": layer.last_backend_reason}
            for layer in v.rnndrop_layers]


def check_backend(v: Variant) -> None:
    """A forced backend ran; ``auto`` ran a kernel, not the reference loop (a fallback would fake the figure)."""
    wanted = ("torch", "fused") if v.backend == "auto" else (v.backend,)
    for i, layer in enumerate(v.rnndrop_layers):
        if layer.last_backend not in wanted:
            raise RuntimeError(f"{v.name}: layer {i} ran {layer.last_backend}, not {' or '.join(map(str, wanted))}: "
                               f"{layer.last_backend_reason}")


def time_variants(variants: list[Variant], rounds: Rounds) -> dict[str, dict[str, Any]]:
    """Per variant: median ms per call over ``rounds.repeats`` interleaved rounds, ratios to the first (the bar).

    The first untimed round (always run, also with ``warmup=0``) checks the backends before anything is
    timed; the bar's last untimed call sets how many calls make one timed sample.
    """
    bar_s = 0.0
    for round_index in range(max(1, rounds.warmup)):
        for v in variants:
            start = time.perf_counter()
            v.call()
            if v is variants[0]:
                bar_s = time.perf_counter() - start
            if round_index == 0:
                check_backend(v)
    calls = max(1, min(1000, math.ceil(rounds.min_sample_s / max(bar_s, 1e-9))))
    runs: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(rounds.repeats):
        for v in variants:
            start = time.perf_counter()
            for _ in range(calls):
                v.call()
            runs[v.name].append((time.perf_counter() - start) / calls * 1e3)
    bar_runs = runs[variants[0].name]
    bar_ms = statistics.median(bar_runs)
    results = {}
    for v in variants:
        check_backend(v)  # still the same kind of kernel after the timed rounds
        ms = statistics.median(runs[v.name])
        entry: dict[str, Any] = {
            "ms": ms, "ratio": ms / bar_ms,
            "paired_ratio": statistics.median(a / b for a, b in zip(runs[v.name], bar_runs)),
            "runs_ms": runs[v.name], "calls_per_sample": calls,
        }
        if v.backend is not None:
            entry["backend_requested"] = v.backend
            entry["backends"] = backends_of(v)
        results[v.name] = entry
    if {"rnndrop auto", "rnndrop torch", "rnndrop fused"} <= results.keys():  # did auto take the faster kernel?
        auto = results["rnndrop auto"]
        auto["faster_forced_backend"] = min(("torch", "fused"), key=lambda b: results[f"rnndrop {b}"]["ms"])
        auto["ratio_to_faster_forced"] = auto["ms"] / results[f"rnndrop {auto['faster_forced_backend']}"]["ms"]
    return results


def print_measurement(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(f"  {'variant':<31} {'ms':>10} {'÷ bar':>6}  backend (per rnndrop layer)")
    reasons: dict[str, None] = {}
    for name, e in rows.items():
        ran = ",".join(str(b["last_backend"]) for b in e.get("backends", []))
        print(f"  {name:<31} {e['ms']:10.3f} {e['ratio']:6.2f}  {ran}", flush=True)
        for i, b in enumerate(e.get("backends", [])):
            if b["last_backend_reason"] and e["backend_requested"] == "auto":
                reasons.setdefault(f"{name}, layer {i}: {b['last_backend_reason']}")
    for reason in reasons:
        print(f"    why: {reason[:160]}")
    auto = rows.get("rnndrop auto", {})
    if "ratio_to_faster_forced" in auto:
        print(f"    auto ÷ the faster forced kernel ({auto['faster_forced_backend']}): "
              f"{auto['ratio_to_faster_forced']:.2f}")


def zero_grads(module: nn.Module) -> None:
    for p in module.parameters():
        p.grad = None


def rnndrop_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, RecurrentBase)]


def seeded(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)  # every variant starts from the same draws
    return build()


# ------------------------------------------------------------------------------ hand-written dropout


class WeightDroppedLSTM(nn.Module):
    """DropConnect on ``W_hh`` the way fastai's ``WeightDropout`` does it, written for this benchmark.

    The trained weight is a parameter of the wrapper (``weight_hh_l0_raw``); the LSTM's own
    ``weight_hh_l0`` is no parameter but a plain tensor, replaced before every call by the raw weight
    with a fresh dropout mask (``nn.RNNBase.__setattr__`` keeps its flat weight list in step).
    """

    def __init__(self, lstm: nn.LSTM, p: float) -> None:
        super().__init__()
        self.p = p
        weight = lstm.weight_hh_l0.detach()
        del lstm._parameters["weight_hh_l0"]
        lstm.weight_hh_l0 = weight.clone()
        self.module = lstm
        self.weight_hh_l0_raw = nn.Parameter(weight.clone())

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        raw = self.weight_hh_l0_raw
        # view_as: a plain tensor also in eval mode (assigning a Parameter would register it on the LSTM)
        self.module.weight_hh_l0 = F.dropout(raw, self.p, training=True) if self.training else raw.view_as(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # weights not in one contiguous chunk (CUDA's warning)
            return self.module(x, hx)


class SequenceLockedDropout(nn.Module):
    """Hand-written locked dropout of a batch-first sequence: one ``(B, 1, F)`` mask per call."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep).div_(keep)


class WordDroppedEmbedding(nn.Module):
    """Hand-written embedding dropout: whole rows (word types) of the embedding matrix dropped per call."""

    def __init__(self, embedding: nn.Embedding, p: float) -> None:
        super().__init__()
        self.embedding = embedding
        self.p = p

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.embedding.weight
        if self.training and self.p:
            keep = 1.0 - self.p
            weight = weight * weight.new_empty(weight.shape[0], 1).bernoulli_(keep).div_(keep)
        return F.embedding(tokens, weight)


def time_locked_masks(batch: int, features: int, p: float, like: torch.Tensor, training: bool) -> torch.Tensor | None:
    if not training or p == 0:
        return None
    keep = 1.0 - p
    return like.new_empty(batch, features).bernoulli_(keep).div_(keep)


class BidirectionalCellLoop(nn.Module):
    """Hand-written bidirectional stacked LSTM with Gal's dropout on right-padded input ``(B, T, F)`` + lengths.

    One ``nn.LSTMCell`` per layer and direction, time-locked masks on the cell's input and on ``h``
    (drawn per layer and direction); past a sequence's length the state is held and the output is 0;
    the backward direction runs each sequence reversed within its length.
    """

    def __init__(self, input_size: int, hidden: int, layers: int, p: float) -> None:
        super().__init__()
        self.hidden, self.p = hidden, p
        self.cells = nn.ModuleList(nn.LSTMCell(input_size if layer == 0 else 2 * hidden, hidden)
                                   for layer in range(layers) for _direction in range(2))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1])
        real = steps[None, :] < lengths[:, None]  # (B, T)
        reverse = torch.where(real, lengths[:, None] - 1 - steps[None, :], steps[None, :])  # own-length flip
        for layer in range(len(self.cells) // 2):
            flip = reverse[:, :, None].expand_as(x)
            forward_out = self._run(self.cells[2 * layer], x, real)
            backward_out = self._run(self.cells[2 * layer + 1], x.gather(1, flip), real)
            x = torch.cat([forward_out, backward_out.gather(1, reverse[:, :, None].expand_as(backward_out))], 2)
        return x

    def _run(self, cell: nn.LSTMCell, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        input_mask = time_locked_masks(batch, x.shape[2], self.p, x, self.training)
        hidden_mask = time_locked_masks(batch, self.hidden, self.p, x, self.training)
        if input_mask is not None:
            x = x * input_mask[:, None, :]
        h = c = x.new_zeros(batch, self.hidden)
        outs = []
        for t in range(x.shape[1]):
            h_new, c_new = cell(x[:, t], (h if hidden_mask is None else h * hidden_mask, c))
            live = real[:, t, None]
            h, c = torch.where(live, h_new, h), torch.where(live, c_new, c)
            outs.append(h_new * live)
        return torch.stack(outs, 1)


class StackedCellLoop(nn.Module):
    """Hand-written stacked LSTM, time-major, with a time-locked recurrent mask on ``h`` per layer."""

    def __init__(self, input_size: int, hidden: int, layers: int, p: float) -> None:
        super().__init__()
        self.hidden, self.p = hidden, p
        self.cells = nn.ModuleList(nn.LSTMCell(input_size if layer == 0 else hidden, hidden) for layer in range(layers))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        hs, cs = [], []
        for layer, cell in enumerate(self.cells):
            mask = time_locked_masks(x.shape[1], self.hidden, self.p, x, self.training)
            h, c = state[0][layer], state[1][layer]
            outs = []
            for t in range(x.shape[0]):
                h, c = cell(x[t], (h if mask is None else h * mask, c))
                outs.append(h)
            x = torch.stack(outs)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


# ------------------------------------------------------------------------------------------ AWD-LSTM


class CarriedStateStack(nn.Module):
    """LSTM layers applied in turn (batch first), a module between layers, the state carried between calls."""

    def __init__(self, layers: list[nn.Module], between: list[nn.Module], states: list[tuple[torch.Tensor, ...]]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.between = nn.ModuleList(between)
        self.states = states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        carried = []
        for i, layer in enumerate(self.layers):
            if i:
                x = self.between[i - 1](x)
            x, state = layer(x, self.states[i])
            carried.append(tuple(s.detach() for s in state))
        self.states = carried
        return x


def awd_stack(variant: str, emb: int, hidden: int, batch: int, first_input_p: float = 0.0) -> CarriedStateStack:
    """The three-layer stack of ``variant``; ``first_input_p``: rnndrop's locked dropout on the first input."""
    sizes = [emb, hidden, hidden, emb]
    states = [(torch.zeros(1, batch, sizes[i + 1]), torch.zeros(1, batch, sizes[i + 1])) for i in range(3)]
    layers: list[nn.Module]
    between: list[nn.Module] = [nn.Identity(), nn.Identity()]
    if variant == BAR:
        layers = [nn.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(3)]
    elif variant == "fastai-style WeightDropout":
        layers = [WeightDroppedLSTM(nn.LSTM(sizes[i], sizes[i + 1], batch_first=True), AWD_WEIGHT_P) for i in range(3)]
        between = [SequenceLockedDropout(AWD_HIDDEN_P), SequenceLockedDropout(AWD_HIDDEN_P)]
    elif variant == "rnndrop no dropout":
        layers = [rnndrop.LSTM(sizes[i], sizes[i + 1], batch_first=True) for i in range(3)]
    elif variant == "rnndrop auto, DropConnect only":  # what DropConnect alone costs (issue 22's target: ≤ 3 %)
        layers = [rnndrop.LSTM(sizes[i], sizes[i + 1], batch_first=True, weight_dropout=AWD_WEIGHT_P)
                  for i in range(3)]
    else:
        layers = [rnndrop.LSTM(sizes[i], sizes[i + 1], batch_first=True, weight_dropout=AWD_WEIGHT_P,
                               input_dropout=AWD_HIDDEN_P if i else first_input_p, backend=rnndrop_backend(variant))
                  for i in range(3)]
    return CarriedStateStack(layers, between, states)


def rnndrop_backend(variant: str) -> str | None:
    """The ``backend=`` of an rnndrop variant (``"rnndrop torch"`` → ``"torch"``; otherwise ``"auto"``), else None."""
    if not variant.startswith("rnndrop "):
        return None
    word = variant.split()[1]
    return word if word in ("torch", "fused") else "auto"


class AwdLanguageModel(nn.Module):
    """Embedding (dropout), locked dropout, the stack, locked dropout, tied decoder; batch-first tokens."""

    def __init__(self, variant: str, vocab: int, emb: int, hidden: int, batch: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, emb)
        self.embed: nn.Module
        if variant == BAR:
            self.embed, self.input_dp, self.output_dp = self.encoder, nn.Identity(), nn.Identity()
            self.stack = awd_stack(variant, emb, hidden, batch)
        elif variant == "fastai-style WeightDropout":
            self.embed = WordDroppedEmbedding(self.encoder, AWD_EMBED_P)
            self.input_dp, self.output_dp = SequenceLockedDropout(AWD_INPUT_P), SequenceLockedDropout(AWD_OUTPUT_P)
            self.stack = awd_stack(variant, emb, hidden, batch)
        else:  # rnndrop: the input's locked dropout is the first layer's input_dropout
            self.embed = rnndrop.EmbeddingDropout(self.encoder, AWD_EMBED_P)
            self.input_dp, self.output_dp = nn.Identity(), rnndrop.LockedDropout(AWD_OUTPUT_P, batch_first=True)
            self.stack = awd_stack(variant, emb, hidden, batch, first_input_p=AWD_INPUT_P)
        self.decoder = nn.Linear(emb, vocab)
        self.decoder.weight = self.encoder.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.output_dp(self.stack(self.input_dp(self.embed(tokens)))))


def bench_awd(sizes: dict[str, Any], rounds: Rounds) -> dict[str, Any]:
    batch, bptt, vocab = sizes["batch"], sizes["bptt"], sizes["vocab"]
    out: dict[str, Any] = {}
    for emb, hidden in sizes["sizes"]:
        torch.manual_seed(1)
        x = torch.randn(batch, bptt, emb, requires_grad=True)
        variants = []
        for name in AWD_STACK_VARIANTS:
            stack = seeded(partial(awd_stack, name, emb, hidden, batch)).train()
            variants.append(Variant(name, partial(stack_step, stack, x), rnndrop_layers(stack), rnndrop_backend(name)))
        key = f"{emb}/{hidden} stack training step"
        out[key] = time_variants(variants, rounds)
        print_measurement(f"AWD-LSTM {emb}/{hidden}, batch {batch}, BPTT {bptt}: LSTM stack, training step", out[key])

        torch.manual_seed(2)
        tokens = torch.randint(vocab, (batch, bptt + 1))
        variants = []
        for name in AWD_MODEL_VARIANTS:
            model = seeded(partial(AwdLanguageModel, name, vocab, emb, hidden, batch)).train()
            variants.append(Variant(name, partial(language_model_step, model, tokens, time_major=False),
                                    rnndrop_layers(model), rnndrop_backend(name)))
        key = f"{emb}/{hidden} model training step"
        out[key] = time_variants(variants, rounds)
        print_measurement(f"AWD-LSTM {emb}/{hidden}: whole model (vocab {vocab}), training step", out[key])
    return out


def stack_step(stack: nn.Module, x: torch.Tensor) -> None:
    zero_grads(stack)
    x.grad = None
    stack(x).sum().backward()


def language_model_step(model: nn.Module, tokens: torch.Tensor, time_major: bool) -> None:
    """Next-token cross-entropy: inputs all but the last token, targets all but the first."""
    zero_grads(model)
    inputs, targets = (tokens[:-1], tokens[1:]) if time_major else (tokens[:, :-1], tokens[:, 1:])
    logits = model(inputs)
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).backward()


# -------------------------------------------------------------------------------------------- tagger


class Tagger(nn.Module):
    """A bidirectional two-layer LSTM encoder of right-padded sequences and a per-token linear head."""

    def __init__(self, variant: str, sizes: dict[str, Any]) -> None:
        super().__init__()
        self.variant = variant
        i, h, layers = sizes["input"], sizes["hidden"], sizes["layers"]
        if variant == BAR:
            self.encoder = nn.LSTM(i, h, layers, batch_first=True, bidirectional=True)
        elif variant == "LSTMCell loop":
            self.encoder = BidirectionalCellLoop(i, h, layers, TAGGER_P)
        else:
            self.encoder = rnndrop.LSTM(i, h, layers, batch_first=True, bidirectional=True, input_dropout=TAGGER_P,
                                        recurrent_dropout=TAGGER_P, backend=rnndrop_backend(variant))
        self.head = nn.Linear(2 * h, sizes["tags"])

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.variant == BAR:
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = pad_packed_sequence(self.encoder(packed)[0], batch_first=True, total_length=x.shape[1])
        elif self.variant == "LSTMCell loop":
            out = self.encoder(x, lengths)
        else:
            out = self.encoder(x, lengths=lengths)[0]
        return self.head(out)


def bench_tagger(sizes: dict[str, Any], rounds: Rounds) -> dict[str, Any]:
    batch, max_len = sizes["batch"], sizes["max_len"]
    torch.manual_seed(3)
    lengths = torch.randint(sizes["min_len"], max_len + 1, (batch,))
    lengths[0] = max_len
    x = torch.randn(batch, max_len, sizes["input"])
    tags = torch.randint(sizes["tags"], (batch, max_len))
    tags[torch.arange(max_len)[None, :] >= lengths[:, None]] = -100  # padding: ignored by the loss

    def training_step(model: Tagger) -> None:
        zero_grads(model)
        logits = model(x, lengths)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tags.reshape(-1)).backward()

    def inference_call(model: Tagger) -> None:
        with torch.no_grad():
            model(x, lengths)

    out: dict[str, Any] = {}
    for kind, names, step, training in (("training step", TAGGER_TRAIN_VARIANTS, training_step, True),
                                        ("inference", TAGGER_INFER_VARIANTS, inference_call, False)):
        variants = []
        for name in names:
            model = seeded(partial(Tagger, name, sizes)).train(training)
            variants.append(Variant(name, partial(step, model), rnndrop_layers(model),
                                    rnndrop_backend(name)))
        out[kind] = time_variants(variants, rounds)
        print_measurement(f"Bidirectional {sizes['layers']}-layer tagger, batch {batch}, lengths "
                          f"{sizes['min_len']}–{max_len}, dropout {TAGGER_P if training else 0}: {kind}", out[kind])
    return out


# ------------------------------------------------------------------------------------------ forecaster


class Forecaster(nn.Module):
    """A two-layer GRU over ``(B, T, features)`` and a linear head on the last step's output."""

    def __init__(self, rnn: nn.Module, hidden: int, horizon: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.rnn = rnn
        self.dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.rnn(x)[0][:, -1]))


def infer(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        model(x)


def repeated_passes(model: nn.Module, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Std and mean of ``samples`` passes as one call on the batch repeated (each copy its own dropout draws)."""
    with torch.no_grad():
        out = model(x.repeat(samples, 1, 1)).unflatten(0, (samples, x.shape[0]))
    return torch.std_mean(out, 0, correction=0)


def separate_passes(model: nn.Module, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Std and mean of ``samples`` passes, one call each."""
    with torch.no_grad():
        out = torch.stack([model(x) for _ in range(samples)])
    return torch.std_mean(out, 0, correction=0)


def bench_forecaster(sizes: dict[str, Any], rounds: Rounds) -> dict[str, Any]:
    f, h, layers, horizon = sizes["features"], sizes["hidden"], sizes["layers"], sizes["horizon"]

    def torch_gru(dropout: float = 0.0) -> Forecaster:
        return Forecaster(nn.GRU(f, h, layers, batch_first=True, dropout=dropout), h, horizon, dropout)

    def rnndrop_gru(backend: str = "auto") -> Forecaster:
        return Forecaster(rnndrop.GRU(f, h, layers, batch_first=True, recurrent_dropout=FORECASTER_P,
                                      backend=backend), h, horizon)

    out: dict[str, Any] = {}
    for batch in sizes["batches"]:
        torch.manual_seed(4)
        x = torch.randn(batch, sizes["steps"], f)
        variants = []
        for name in LATENCY_VARIANTS:
            model = seeded(torch_gru if name == BAR else partial(rnndrop_gru, rnndrop_backend(name))).eval()
            variants.append(Variant(name, partial(infer, model, x), rnndrop_layers(model), rnndrop_backend(name)))
        key = f"batch {batch} inference latency"
        out[key] = time_variants(variants, rounds)
        print_measurement(f"GRU forecaster, batch {batch}, T {sizes['steps']}: one inference call (eval)", out[key])

        bar, ours = seeded(torch_gru).eval(), seeded(rnndrop_gru).eval()
        theirs = seeded(partial(torch_gru, FORECASTER_P)).train()  # nn.Dropout and between-layer dropout on
        for samples in sizes["mc_samples"]:
            variants = [
                Variant(BAR, partial(repeated_passes, bar, x, samples)),
                Variant("rnndrop mc_predict", partial(rnndrop.mc_predict, ours, x, samples, task="regression"),
                        rnndrop_layers(ours), "auto"),
                Variant("nn.Dropout, N passes", partial(separate_passes, theirs, x, samples)),
                Variant("nn.Dropout, batch repeated", partial(repeated_passes, theirs, x, samples)),
            ]
            key = f"batch {batch} MC dropout {samples} samples"
            out[key] = time_variants(variants, rounds)
            print_measurement(f"GRU forecaster, batch {batch}: MC-dropout mean and std, {samples} samples "
                              "(bar: torch.nn without dropout on the batch repeated)", out[key])
    return out


# ------------------------------------------------------------------------------------------- char-LM


class CharLanguageModel(nn.Module):
    """Embedding, a stacked LSTM (time-major) whose state is carried between calls, linear head."""

    def __init__(self, variant: str, sizes: dict[str, Any]) -> None:
        super().__init__()
        v, e, h, layers, batch = sizes["vocab"], sizes["embedding"], sizes["hidden"], sizes["layers"], sizes["batch"]
        self.embedding = nn.Embedding(v, e)
        if variant == BAR:
            self.rnn: nn.Module = nn.LSTM(e, h, layers)
        elif variant == "LSTMCell loop":
            self.rnn = StackedCellLoop(e, h, layers, CHAR_LM_P)
        else:
            self.rnn = rnndrop.LSTM(e, h, layers, recurrent_dropout=CHAR_LM_P, backend=rnndrop_backend(variant))
        self.head = nn.Linear(h, v)
        self.state = (torch.zeros(layers, batch, h), torch.zeros(layers, batch, h))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, state = self.rnn(self.embedding(tokens), self.state)
        self.state = tuple(s.detach() for s in state)
        return self.head(out)


def bench_char_lm(sizes: dict[str, Any], rounds: Rounds) -> dict[str, Any]:
    torch.manual_seed(5)
    tokens = torch.randint(sizes["vocab"], (sizes["steps"] + 1, sizes["batch"]))
    variants = []
    for name in CHAR_LM_VARIANTS:
        model = seeded(partial(CharLanguageModel, name, sizes)).train()
        variants.append(Variant(name, partial(language_model_step, model, tokens, time_major=True),
                                rnndrop_layers(model), rnndrop_backend(name)))
    out = {"training step": time_variants(variants, rounds)}
    print_measurement(f"Stateful char-LM, batch {sizes['batch']}, T {sizes['steps']}, {sizes['layers']} × "
                      f"LSTM {sizes['hidden']}, recurrent dropout {CHAR_LM_P}: training step", out["training step"])
    return out


# ---------------------------------------------------------------------------------------------- main

MODELS = {"awd_lstm": ("awd", bench_awd), "tagger": ("tagger", bench_tagger),
          "gru_forecaster": ("forecaster", bench_forecaster), "char_lm": ("char_lm", bench_char_lm)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="AWD 200/512 only, 3 rounds")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for the smoke test (figures meaningless)")
    parser.add_argument("--model", action="append", choices=sorted(MODELS), help="models to run (repeatable)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 7, quick 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed rounds first, the first checking the backends (default 2, quick 1; at least 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, the cores)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "bench_models.json",
                        help="where to write the results")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        run(args)
    finally:
        torch.set_num_threads(threads_before)  # a caller's process (the smoke test's) keeps its setting
    return 0


def run(args: argparse.Namespace) -> None:
    sizes = copy.deepcopy(SIZES["tiny" if args.tiny else "full"])
    if args.quick:
        sizes["awd"]["sizes"] = sizes["awd"]["sizes"][:1]
    repeats = args.repeats or (3 if args.quick or args.tiny else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick or args.tiny else 2)
    models = args.model or list(MODELS)
    rounds = Rounds(repeats, warmup, min_sample_s=0.0 if args.tiny else 0.02)
    info = machine()
    print(f"rnndrop real-model benchmark; {info}")
    results: dict[str, Any] = {}
    start = time.perf_counter()
    for model in models:
        size_key, bench = MODELS[model]
        model_start = time.perf_counter()
        results[model] = bench(sizes[size_key], rounds)
        print(f"  {model}: {time.perf_counter() - model_start:.1f} s", file=sys.stderr, flush=True)
    write_results(args.json, machine=info, configs={MODELS[m][0]: sizes[MODELS[m][0]] for m in models},
                  repeats=repeats, warmup=warmup, results=results,
                  dropout={"awd_weight": AWD_WEIGHT_P, "awd_between_layers": AWD_HIDDEN_P, "awd_input": AWD_INPUT_P,
                           "awd_embedding": AWD_EMBED_P, "awd_output": AWD_OUTPUT_P, "tagger": TAGGER_P,
                           "forecaster": FORECASTER_P, "char_lm": CHAR_LM_P},
                  tiny=args.tiny, quick=args.quick, wall_s=time.perf_counter() - start,
                  load_average_at_end=os.getloadavg() if hasattr(os, "getloadavg") else None)


if __name__ == "__main__":
    raise SystemExit(main())
