"""Export: torch.export and ONNX (run by ONNX Runtime) of eval-mode models; a clear error in training mode.

In eval mode every dropout is off (zoneout uses its expectation, a constant), so an exported
graph is deterministic and must reproduce the eager module. The Python time loop is unrolled
while tracing: the graph is specialised to the sequence length it was exported with, while the
batch dimension can stay dynamic (tested).
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

import rnndrop

BATCH, STEPS, FEATURES = 3, 4, 5
# ONNX Runtime's kernels reassociate float32 sums differently from torch's: allow a few hundred
# float32 roundings on values of order one.
ORT_TOL = 256 * torch.finfo(torch.float32).eps

# Once a layer has a `backend` argument, export must go through the pure-torch loop in every
# backend: a compiled kernel must be traceable (a registered custom op) or stand aside.
BACKEND_KW = (
    {"backend": "reference"} if "backend" in inspect.signature(rnndrop.LSTM.__init__).parameters else {}
)


class Chain(nn.Module):
    """LSTM -> GRU -> RNN with every in-layer dropout option set (all off in eval)."""

    def __init__(self, **kw) -> None:
        super().__init__()
        self.lstm = rnndrop.LSTM(
            FEATURES, 6, num_layers=2, batch_first=True, bidirectional=True, dropout=0.2, input_dropout=0.2,
            recurrent_dropout=0.2, weight_dropout=0.3, zoneout_hidden=0.1, zoneout_cell=0.1, gate_masks="per_gate",
            **kw,
        )
        self.gru = rnndrop.GRU(12, 5, batch_first=True, reset_after=False, candidate_dropout=0.2, **kw)
        self.rnn = rnndrop.RNN(5, 4, batch_first=True, nonlinearity="relu", zoneout_hidden=0.2, **kw)

    def forward(self, x: torch.Tensor, step_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.lstm(x, step_mask=step_mask)
        out, _ = self.gru(out)
        return self.rnn(out)


@pytest.fixture(scope="module")
def chain() -> Chain:
    torch.manual_seed(0)
    return Chain(**BACKEND_KW).eval()


def _inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, STEPS, FEATURES, generator=g), torch.rand(batch, STEPS, generator=g) > 0.3


def _dynamic_batch() -> dict[str, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch", min=1)
    return {"x": {0: batch}, "step_mask": {0: batch}}


def test_torch_export_eval_model_equals_eager_with_dynamic_batch(chain: Chain) -> None:
    program = torch.export.export(chain, _inputs(BATCH, 0), dynamic_shapes=_dynamic_batch())
    for batch in (BATCH, 7):  # another batch size than the one traced
        x, mask = _inputs(batch, batch)
        for got, want in zip(program.module()(x, mask), chain(x, mask)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)  # same aten ops, same kernels


def test_onnx_export_runs_in_onnxruntime_like_pytorch(chain: Chain, tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # the torch.export-based exporter (torch >= 2.9 default) needs it
    path = tmp_path / "chain.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter-internal deprecation chatter, not ours
        program = torch.onnx.export(
            chain, _inputs(BATCH, 0), input_names=["x", "step_mask"], output_names=["output", "h_n"],
            dynamic_shapes=_dynamic_batch(), dynamo=True, verbose=False,
        )
    program.save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (BATCH, 7):
        x, mask = _inputs(batch, 10 + batch)
        got = session.run(None, {"x": x.numpy(), "step_mask": mask.numpy()})
        with torch.no_grad():
            want = chain(x, mask)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, rtol=ORT_TOL, atol=ORT_TOL)


def _training_layer() -> nn.Module:
    torch.manual_seed(0)
    return rnndrop.LSTM(FEATURES, 6, batch_first=True, weight_dropout=0.3, **BACKEND_KW).train()


def _causes(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


@pytest.mark.parametrize("exporter", ["torch.export", "torch.jit.trace"])
def test_export_in_training_mode_with_dropout_raises_a_clear_error(exporter: str) -> None:
    layer, x = _training_layer(), torch.randn(BATCH, STEPS, FEATURES)
    message = rf"training mode with dropout active during {exporter}.*eval\(\)"
    with pytest.raises(rnndrop.RnnDropValueError, match=message):
        if exporter == "torch.export":
            torch.export.export(layer, (x,))
        else:
            torch.jit.trace(layer, (x,))


def test_onnx_export_in_training_mode_raises_our_error_as_the_cause() -> None:
    pytest.importorskip("onnxscript")
    layer, x = _training_layer(), torch.randn(BATCH, STEPS, FEATURES)
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (x,), dynamo=True, verbose=False)
    # The ONNX exporter wraps what the model raised; ours is in the chain with its message.
    ours = [e for e in _causes(info.value) if isinstance(e, rnndrop.RnnDropValueError)]
    assert ours and "torch.onnx.export" in str(ours[0]) and "model.eval()" in str(ours[0])


def test_training_mode_without_active_dropout_still_exports() -> None:
    """The check is about random masks, not about the mode: nothing to sample, nothing to refuse."""
    torch.manual_seed(0)
    layer = rnndrop.GRU(FEATURES, 6, batch_first=True, **BACKEND_KW).train()
    x = torch.randn(BATCH, STEPS, FEATURES)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x)[0], layer(x)[0], rtol=0, atol=0)


@pytest.mark.skipif(not BACKEND_KW, reason="no backend= argument: only the reference path exists")
def test_default_backend_exports() -> None:
    torch.manual_seed(0)
    layer = rnndrop.LSTM(FEATURES, 6, batch_first=True, input_dropout=0.2).eval()
    x = torch.randn(BATCH, STEPS, FEATURES)
    # The compiled kernel cannot be traced (fake tensors); export takes the equivalent reference loop,
    # while eager calls keep a kernel (in eval mode torch's own).
    program = torch.export.export(layer, (x,))
    with torch.no_grad():  # LSTM inference: auto takes torch's kernel
        eager = layer(x)[0]
    assert layer.last_backend == "torch"
    torch.testing.assert_close(program.module()(x)[0], eager)


def test_fused_backend_refuses_export_with_the_reason() -> None:
    layer = rnndrop.LSTM(FEATURES, 6, batch_first=True, backend="fused").eval()
    with pytest.raises(rnndrop.KernelUnavailableError, match="backend='fused' cannot be exported"):
        torch.export.export(layer, (torch.randn(BATCH, STEPS, FEATURES),))
