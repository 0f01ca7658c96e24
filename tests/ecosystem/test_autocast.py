"""Mixed precision: rnndrop under ``torch.autocast("cpu", dtype=torch.bfloat16)``.

Autocast runs the matmuls in bfloat16; rnndrop keeps everything it carries across timesteps
(``h``, ``c``, the dropout masks) in the parameters' dtype, float32. The tolerance is stated
in units of bfloat16's unit roundoff ``u = 2**-8`` (8 significant bits) and derived in
docs/ecosystem.md: each matmul rounds its operands to bfloat16 (relative error ``u`` each, the
products then accumulate in float32), activations are bounded (``|tanh|, |σ| <= 1``) and the
recurrence at torch's initialisation is contractive, so the error does not grow with the
sequence length. Outputs must agree with float32 to ``4 u`` times their scale and gradients to
``8 u`` times the largest gradient of each parameter.
"""

from __future__ import annotations

import pytest
import torch

import rnndrop
from rnndrop._kernels import ops

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
OUTPUT_TOL = 4 * U_BF16
GRAD_TOL = 8 * U_BF16
BATCH, STEPS, FEATURES, HIDDEN = 4, 12, 6, 16

DROPOUT = {"input_dropout": 0.25, "recurrent_dropout": 0.25, "weight_dropout": 0.25}

CASES = {
    # Plain configurations: what a fast kernel path would take.
    "lstm": (rnndrop.LSTM, DROPOUT),
    "gru": (rnndrop.GRU, DROPOUT),
    "lstm_all_dropout": (rnndrop.LSTM, {**DROPOUT, "gate_masks": "per_gate", "zoneout_cell": 0.2}),
    # A projected LSTM and layers without bias return a bare bf16 matmul as a state: the cases
    # where the state would silently drop to bf16 if the loop did not keep it in float32.
    "lstm_proj": (rnndrop.LSTM, {**DROPOUT, "proj_size": 8, "zoneout_hidden": 0.1}),
    "gru_no_bias_reset_before": (rnndrop.GRU, {**DROPOUT, "bias": False, "reset_after": False,
                                               "candidate_dropout": 0.2}),
    "rnn_no_bias_zoneout": (rnndrop.RNN, {**DROPOUT, "bias": False, "zoneout_hidden": 0.2}),
}


def _states(h):
    return h if isinstance(h, tuple) else (h,)


def _run(layer, x, masks, step_mask, autocast: bool):
    layer.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out, h = layer(x, dropout_masks=masks, step_mask=step_mask)
    # The loss is computed outside autocast, as a user's float32 loss would be.
    (out.square().mean() + sum(s.square().mean() for s in _states(h))).backward()
    return out, _states(h), [p.grad.clone() for p in layer.parameters()]


# What backend="auto" must run under bf16 autocast on a CPU with AVX512_BF16 (the others need the
# projection, which only the reference implements).
FUSED_UNDER_AUTOCAST = {"lstm", "gru", "lstm_all_dropout", "gru_no_bias_reset_before", "rnn_no_bias_zoneout"}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bf16_autocast_matches_float32_within_tolerance(case: str, training: bool, backend: str) -> None:
    cls, kwargs = CASES[case]
    torch.manual_seed(0)
    layer = cls(FEATURES, HIDDEN, num_layers=2, batch_first=True, backend=backend, **kwargs).train(training)
    x = torch.randn(BATCH, STEPS, FEATURES)
    step_mask = torch.rand(BATCH, STEPS) > 0.2
    # The same masks on both sides: the comparison is about arithmetic, not about randomness.
    masks = layer.sample_masks(BATCH, STEPS) if training else None

    out32, states32, grads32 = _run(layer, x, masks, step_mask, autocast=False)
    out16, states16, grads16 = _run(layer, x, masks, step_mask, autocast=True)
    if backend == "auto" and case in FUSED_UNDER_AUTOCAST and ops.cpu_has_bf16():
        assert layer.last_backend == "fused", layer.last_backend_reason

    # Carried tensors stay float32: outputs and final states come back in the parameters' dtype.
    assert out16.dtype == torch.float32
    assert all(s.dtype == torch.float32 for s in states16)
    errors = [(out16 - out32).abs().max()] + [(a - b).abs().max() for a, b in zip(states16, states32)]
    scale = max(1.0, out32.abs().max().item(), *(s.abs().max().item() for s in states32))
    # Autocast really ran in bf16 (else this test would compare float32 with itself) ...
    assert max(e.item() for e in errors) > 0
    # ... and stayed within the documented tolerance.
    assert max(e.item() for e in errors) <= OUTPUT_TOL * scale
    for (name, _), g16, g32 in zip(layer.named_parameters(), grads16, grads32):
        assert g16.dtype == torch.float32
        rel = ((g16 - g32).abs().max() / g32.abs().max().clamp_min(torch.finfo(torch.float32).tiny)).item()
        assert rel <= GRAD_TOL, f"{name}: gradient differs by {rel / U_BF16:.2f} u"


def test_masks_sampled_under_autocast_are_float32() -> None:
    """Masks are drawn in the input's dtype; autocast does not cast inputs, so they stay float32."""
    torch.manual_seed(0)
    layer = rnndrop.LSTM(FEATURES, HIDDEN, batch_first=True, **DROPOUT)
    x = torch.randn(BATCH, STEPS, FEATURES)
    seen: list[torch.dtype] = []
    spec_sample = rnndrop.MaskSpec.sample

    def recording_sample(self, *args, **kwargs):
        masks = spec_sample(self, *args, **kwargs)
        seen.extend(t.dtype for d in masks.layers[0] for t in (d.input, d.recurrent, d.weight_hh))
        return masks

    with pytest.MonkeyPatch.context() as mp, torch.autocast("cpu", dtype=torch.bfloat16):
        mp.setattr(rnndrop.MaskSpec, "sample", recording_sample)
        layer(x)
    assert seen and all(dt == torch.float32 for dt in seen)
