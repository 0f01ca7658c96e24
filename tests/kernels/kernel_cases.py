"""Helpers for the kernel tests (not a test module): twin layers and a comparison of everything.

``run_twins`` builds one layer per backend with identical weights, feeds both the same input,
initial state and *the same injected masks*, back-propagates the same random cotangents and
returns every output and gradient of both, so a test can compare them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnndrop

CLASSES = {"LSTM": rnndrop.LSTM, "GRU": rnndrop.GRU, "RNN": rnndrop.RNN}
# The bounds: float64 1e-10, float32 1e-5, relative to the scale of the compared tensor
# (max |reference|, at least 1) because gradients summed over many steps grow with T and B.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class Case:
    mode: str = "LSTM"
    batch: int = 3
    time: int = 5
    input_size: int = 4
    hidden: int = 6
    num_layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    batch_first: bool = False
    gate_masks: str = "shared"
    input_p: float = 0.3
    recurrent_p: float = 0.3
    between_p: float = 0.0
    reset_after: bool = True
    activation: str = "tanh"
    steps: str = "none"  # none | random | left | lengths | lengths_nonzero | packed | empty_rows
    zero_output_for_mask: bool = False
    with_h0: bool = True
    dtype: torch.dtype = torch.float64
    seed: int = 0
    device: str = "cpu"  # everything is drawn on the CPU (same numbers everywhere), then moved here
    mask_scope: str = "sample"
    weight_p: float = 0.0
    proj_size: int = 0  # LSTM only
    training: bool = True  # False: eval mode, no masks injected (every dropout off but zoneout's expectation)
    candidate_p: float = 0.0  # LSTM / GRU
    zoneout_h: float = 0.0
    zoneout_c: float = 0.0  # LSTM


def _layer(case: Case, backend: str) -> rnndrop.RecurrentBase:
    kwargs: dict[str, Any] = {
        "num_layers": case.num_layers, "bias": case.bias, "batch_first": case.batch_first,
        "bidirectional": case.bidirectional, "dropout": case.between_p, "dtype": case.dtype,
        "input_dropout": case.input_p, "recurrent_dropout": case.recurrent_p, "gate_masks": case.gate_masks,
        "zero_output_for_mask": case.zero_output_for_mask, "backend": backend,
        "mask_scope": case.mask_scope, "weight_dropout": case.weight_p,
    }
    if case.proj_size:
        kwargs["proj_size"] = case.proj_size
    if case.candidate_p:
        kwargs["candidate_dropout"] = case.candidate_p
    if case.zoneout_h:
        kwargs["zoneout_hidden"] = case.zoneout_h
    if case.zoneout_c:
        kwargs["zoneout_cell"] = case.zoneout_c
    if case.mode == "RNN":
        kwargs["nonlinearity"] = case.activation
    else:
        kwargs["activation"] = case.activation
    if case.mode == "GRU":
        kwargs["reset_after"] = case.reset_after
    return CLASSES[case.mode](case.input_size, case.hidden, **kwargs)


def _step_mask(case: Case, g: torch.Generator) -> tuple[dict[str, Any], torch.Tensor | None]:
    b, t = case.batch, case.time
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    if case.steps == "random":
        return {"step_mask": torch.rand(b, t, generator=g) < 0.6}, None
    if case.steps == "left":
        return {"step_mask": torch.arange(t).unsqueeze(0) >= (t - lengths).unsqueeze(1)}, None
    if case.steps == "empty_rows":
        m = torch.rand(b, t, generator=g) < 0.5
        m[0] = False
        return {"step_mask": m}, None
    if case.steps == "lengths":
        return {"lengths": lengths}, None
    if case.steps == "lengths_nonzero":  # right padding, every sequence at least one step
        return {"lengths": lengths.clamp(min=1)}, None
    if case.steps == "packed":
        lengths = lengths.clamp(min=1)
        lengths[-1] = t  # the padded length must be `time`, the masks were drawn for it
        return {}, lengths
    return {}, None


def masks_to(masks: rnndrop.DropoutMasks, device: str) -> rnndrop.DropoutMasks:
    """The same masks on ``device``."""
    def move(m: rnndrop.DirectionMasks) -> rnndrop.DirectionMasks:
        return replace(m, **{n: getattr(m, n).to(device) for n in m.active()})

    layers = tuple(tuple(move(m) for m in layer) for layer in masks.layers)
    return rnndrop.DropoutMasks(layers, tuple(None if t is None else t.to(device) for t in masks.between))


def run_twins(case: Case, backend: str = "fused") -> dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]]:
    """Run ``backend`` and reference on the same everything; return ``{"pairs": [(name, fast, ref), ...],
    "backends": ...}``."""
    torch.manual_seed(case.seed)
    g = torch.Generator().manual_seed(case.seed)
    fused, ref = _layer(case, backend), _layer(case, "reference")
    ref.load_state_dict(fused.state_dict())
    masks = masks_to(fused.sample_masks(case.batch, case.time, generator=g), case.device)
    if not case.training:
        fused.eval()
        ref.eval()
        masks = None
    fused.to(case.device)
    ref.to(case.device)
    b, t = case.batch, case.time
    shape = (b, t, case.input_size) if case.batch_first else (t, b, case.input_size)
    x = torch.randn(*shape, dtype=case.dtype, generator=g)
    rows = case.num_layers * (2 if case.bidirectional else 1)
    sizes = [case.proj_size or case.hidden] + ([case.hidden] if case.mode == "LSTM" else [])
    states = [torch.randn(rows, b, size, dtype=case.dtype, generator=g) * 0.5 for size in sizes]
    kwargs, packed_lengths = _step_mask(case, g)
    kwargs = {k: v.to(case.device) for k, v in kwargs.items()}
    results = []
    for layer in (fused, ref):
        xi = x.to(case.device).clone().requires_grad_()
        hs = [s.to(case.device).clone().requires_grad_() for s in states]
        hx = None if not case.with_h0 else (tuple(hs) if case.mode == "LSTM" else hs[0])
        inp: Any = xi
        if packed_lengths is not None:
            inp = pack_padded_sequence(xi, packed_lengths, batch_first=case.batch_first, enforce_sorted=False)
        out, hn = layer(inp, hx, dropout_masks=masks, **kwargs)
        out_t = out.data if packed_lengths is not None else out
        finals = list(hn) if case.mode == "LSTM" else [hn]
        gen = torch.Generator().manual_seed(case.seed + 1)
        loss = (out_t * torch.randn(out_t.shape, dtype=case.dtype, generator=gen).to(case.device)).sum()
        for f in finals:
            loss = loss + (f * torch.randn(f.shape, dtype=case.dtype, generator=gen).to(case.device)).sum()
        loss.backward()
        tensors = [("output", out_t.detach())] + [(f"final{i}", f.detach()) for i, f in enumerate(finals)]
        tensors.append(("grad input", xi.grad))
        if case.with_h0:
            tensors += [(f"grad state{i}", h.grad) for i, h in enumerate(hs)]
        tensors += [(f"grad {n}", p.grad) for n, p in layer.named_parameters()]
        results.append((layer.last_backend, tensors))
    (b_fused, t_fused), (b_ref, t_ref) = results
    return {
        "backends": [b_fused, b_ref],
        "pairs": [(n, a, r) for (n, a), (_, r) in zip(t_fused, t_ref)],
    }


def max_scaled_error(pairs: list[tuple[str, torch.Tensor, torch.Tensor]]) -> tuple[float, str]:
    """Largest ``max|fused - ref| / max(1, max|ref|)`` over the pairs, and which pair it was."""
    worst, where = 0.0, ""
    for name, a, r in pairs:
        assert a is not None and r is not None, f"{name}: missing gradient"
        assert a.shape == r.shape, f"{name}: shape {tuple(a.shape)} vs {tuple(r.shape)}"
        if r.numel() == 0:
            continue
        err = (a - r).abs().max().item() / max(1.0, r.abs().max().item())
        if not err <= worst:  # also catches NaN
            worst, where = err, name
    return worst, where
