"""The CPU extension as custom ops (``torch.ops.rnndrop.fused_forward`` / ``fused_backward``).

``torch.library.opcheck`` checks the schema, the fake (meta) implementations against the real
outputs' shapes, strides and dtypes, and that Dynamo/AOTAutograd can trace the ops. Registration
is lazy: ``import rnndrop`` registers nothing; loading the extension does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from rnndrop._kernels import ops
from rnndrop._kernels.autograd import MODES

T, B, H = 3, 2, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _weight_mask(weight: bool) -> tuple[int, int, int, float]:
    """DropConnect's kernel arguments (k0, k1, threshold, scale); threshold -1: none."""
    return (12345, 67890, round(0.3 * (1 << 24)), 1 / 0.7) if weight else (0, 0, -1, 0.0)


def _op_args(mode: str, reset_after: bool, bias: bool, masked: bool, steps: bool, save: bool,
             zone: bool = False, cand: bool = False, lowp: bool = False, weight: bool = False):
    g = torch.Generator().manual_seed(0)
    gates = GATES[mode]
    dtype = torch.float32 if lowp else torch.float64

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    c0 = rand(B, H) if mode == "LSTM" else None
    b_hh, b_ih = (rand(gates * H), rand(gates * H)) if bias else (None, None)
    rmask = (torch.rand(gates, B, H, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7 if masked else None
    step_mask = torch.rand(T, B, generator=g) > 0.3 if steps else None
    cmask = (torch.rand(B, H, generator=g, dtype=dtype) > 0.3).to(dtype) / 0.7 if cand else None
    zh = (torch.rand(T, B, H, generator=g, dtype=dtype) > 0.5).to(dtype) if zone else None
    zc = torch.full((1, 1, 1), 0.3, dtype=dtype) if zone and mode == "LSTM" else None
    gi = rand(T, B, gates * H)
    if lowp:
        gi = gi.bfloat16()
    ract = 1 if mode != "RNN" else 3
    return (MODES[mode], 0, ract, reset_after, False, steps, save, gi, rand(B, H), c0,
            rand(gates * H, H), b_hh, b_ih, rmask, step_mask, cmask, zh, zc, *_weight_mask(weight))


CONFIGS = [
    ("LSTM", True, True, True, True, {}),
    ("LSTM", True, False, False, False, {}),
    ("GRU", True, True, True, False, {}),
    ("GRU", False, True, False, True, {}),
    ("RNN", True, False, True, True, {}),
    ("LSTM", True, True, True, True, {"zone": True, "cand": True}),
    ("GRU", True, True, False, False, {"zone": True, "cand": True}),
    ("RNN", True, True, True, False, {"zone": True}),
    ("LSTM", True, True, True, False, {"lowp": True}),
    ("GRU", False, True, True, True, {"weight": True}),
    ("LSTM", True, True, False, False, {"weight": True, "zone": True}),
]


@pytest.mark.parametrize("mode,reset_after,bias,masked,steps,extra", CONFIGS)
def test_opcheck_forward_and_backward(kernel, mode: str, reset_after: bool, bias: bool, masked: bool,
                                      steps: bool, extra: dict) -> None:
    assert ops.registered()
    if extra.get("lowp") and not ops.cpu_has_bf16():
        pytest.skip("this CPU has no AVX512_BF16 (the bf16 path is refused by the registry)")
    for save in (False, True):
        args = _op_args(mode, reset_after, bias, masked, steps, save, **extra)
        torch.library.opcheck(torch.ops.rnndrop.fused_forward.default, args)
    outs = torch.ops.rnndrop.fused_forward(*args)
    zh, zc = args[16], args[17]
    present = ops.present_forward(MODES[mode], reset_after, True, steps, zh is not None, zc is not None)
    _assert_same_as_extension(outs, kernel.forward(*args), present)
    out, h_t, _, s_buf, c_buf, ga, ghn, c_raw = ops.as_optional(outs, present)
    h0, c0, w_hh, rmask, step_mask, cmask = args[8], args[9], args[10], args[13], args[14], args[15]
    g = torch.Generator().manual_seed(1)
    dout = torch.randn(out.shape, generator=g, dtype=out.dtype)
    dh_t = torch.randn(h_t.shape, generator=g, dtype=out.dtype)
    dc_t = torch.randn(h_t.shape, generator=g, dtype=out.dtype) if mode == "LSTM" else None
    lowp = bool(extra.get("lowp"))
    bwd = (*args[:6], lowp, h0, c0, w_hh, bias, rmask, step_mask, cmask, zh, zc, out, s_buf, c_buf, ga, ghn, c_raw,
           dout, dh_t, dc_t, *_weight_mask(bool(extra.get("weight"))))
    torch.library.opcheck(torch.ops.rnndrop.fused_backward.default, bwd)
    grads = torch.ops.rnndrop.fused_backward(*bwd)
    _assert_same_as_extension(grads, kernel.backward(*bwd), ops.present_backward(MODES[mode], bias))


def _assert_same_as_extension(got, want, present) -> None:
    """The op returns the extension's tensors, with an empty placeholder exactly where it returns None."""
    assert [w is not None for w in want] == list(present)
    for g, w in zip(got, want):
        if w is None:
            assert g.shape == (0,)
        else:
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_registration_is_lazy_and_needs_the_extension(kernel) -> None:
    script = textwrap.dedent(
        """
        import os, warnings
        import torch
        import rnndrop
        from rnndrop._kernels import loader, ops

        def defined():
            try:
                torch.ops.rnndrop.fused_forward
            except (AttributeError, RuntimeError):
                return False
            return True

        assert not defined() and not ops.registered(), "registered at import"
        os.environ["RNNDROP_DISABLE_KERNELS"] = "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            layer = rnndrop.LSTM(3, 4, recurrent_dropout=0.2)  # per-sample masks: not torch's kernel
            layer(torch.randn(2, 2, 3))
        assert layer.last_backend == "reference"
        assert not defined() and not ops.registered(), "registered without the extension"
        del os.environ["RNNDROP_DISABLE_KERNELS"]
        loader.reset()
        layer(torch.randn(2, 2, 3))
        assert layer.last_backend == "fused"
        assert defined() and ops.registered()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "RNNDROP_DISABLE_KERNELS"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
