"""torch's own recurrent kernels (oneDNN on CPU, cuDNN on CUDA) as one more registry entry.

A call goes here when it computes exactly what ``torch.nn.LSTM/GRU/RNN`` computes once the
dropout that is active has been *folded* into the call:

* no mask at all (eval mode, or no dropout): the whole stack is one ``torch._VF`` call, as in torch.nn;
* a time-locked input mask shared by the gates, one per sequence, multiplies ``x`` before the call;
  the two directions of a bidirectional layer draw different masks, so such a layer runs as two
  one-directional calls (the reverse one on the time-reversed input), unless sequences are padded;
* with ``mask_scope="batch"`` the input and recurrent masks, shared or per gate, scale the columns
  of ``W_ih`` / ``W_hh``: ``(h ⊙ m_g) W_gᵀ = h (W_g diag m_g)ᵀ``; autograd differentiates the fold;
* DropConnect (``weight_dropout``) is folded into ``W_hh`` first, as :func:`rnndrop.reference.run_stack` does;
* between-layer dropout multiplies each layer's output between the per-layer calls;
* right-padded step masks with zero outputs (``lengths=`` / ``PackedSequence``) run torch's packed path.

Everything else — per-sample recurrent masks, step masks with holes or carried outputs, Keras
activations, ``reset_after=False``, zoneout, candidate dropout — is refused with the reason and
runs on rnndrop's own kernels. Under CPU autocast torch's LSTM returns bf16; outputs are cast back
to the input's dtype so that every path returns what :mod:`rnndrop.reference` returns. Half and bf16
parameters run on cuDNN (CUDA tensors; on the CPU float32 and float64).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence

import torch
from torch import _VF
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .._runtime import cpu_autocast_dtype, is_compiling
from ..cells import drop_weight
from ..masks import DirectionMasks, DropoutMasks, materialize
from ..reference import CellConfig, DirectionParams

_FOLDABLE_MASKS = {"input", "recurrent"}


def _cell_reason(cfg: CellConfig) -> str | None:
    if cfg.mode == "LSTM":
        if (cfg.activation, cfg.recurrent_activation) != ("tanh", "sigmoid"):
            return f"LSTM activations ({cfg.activation}, {cfg.recurrent_activation}) are not torch's (tanh, sigmoid)"
    elif cfg.mode == "GRU":
        if (cfg.activation, cfg.recurrent_activation) != ("tanh", "sigmoid"):
            return f"GRU activations ({cfg.activation}, {cfg.recurrent_activation}) are not torch's (tanh, sigmoid)"
        if not cfg.reset_after:
            return "GRU reset_after=False has no torch kernel"
    elif cfg.mode == "RNN":
        if cfg.activation not in ("tanh", "relu"):
            return f"RNN nonlinearity {cfg.activation!r} has no torch kernel (tanh, relu have)"
    else:
        return f"mode {cfg.mode!r} has no torch kernel"
    return None


def _cpu_autocast_reason(cfg: CellConfig, x: torch.Tensor) -> str | None:
    """torch's CPU LSTM under autocast runs oneDNN's low-precision LSTM, which some CPUs lack.

    Without AVX512_BF16 (e.g. AMD Zen 3, most AVX2 machines) torch.nn.LSTM under bf16 autocast raises
    "could not create a primitive descriptor for the LSTM forward propagation primitive" (torch 2.13):
    such calls go to rnndrop's own paths instead. GRU and RNN are ATen loops there and run anywhere.
    """
    if x.device.type != "cpu" or cfg.mode != "LSTM":
        return None
    lowp = cpu_autocast_dtype()
    if lowp is None:
        return None
    supported = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}
    check = getattr(torch.ops.mkldnn, supported.get(lowp, ""), None)
    if check is None or not check():
        return f"oneDNN has no {lowp} LSTM on this CPU (torch's LSTM under CPU autocast would raise)"
    return None


def _split_directions(masks: DirectionMasks | tuple[DirectionMasks, ...]) -> bool:
    """Whether a bidirectional layer with these masks runs as two calls (per-sample input masks)."""
    return len(masks) == 2 and any(m.input is not None and m.input.shape[1] != 1 for m in masks)


def _mask_reason(masks: DropoutMasks | None, bidirectional: bool, padded: bool) -> str | None:
    if masks is None:
        return None
    for layer in masks.layers:
        for m in layer:
            for name in m.active():
                if name == "weight_hh":
                    continue  # folded into w_hh before any implementation runs
                if name not in _FOLDABLE_MASKS:
                    return f"{name} masks do not fold into torch's kernel"
                t = getattr(m, name)
                if t.shape[1] == 1:
                    continue  # one mask for the whole batch: folds into the weights' columns
                if name == "recurrent":
                    return "per-sample recurrent masks do not fold into torch's kernel (mask_scope='batch' would)"
                if t.shape[0] != 1:
                    return "per-gate per-sample input masks do not fold into torch's kernel"
                if bidirectional and padded:
                    return ("per-sample input masks of a bidirectional layer (two one-directional calls) with "
                            "padded sequences have no torch kernel")
    return None


def _steps_reason(step_mask: torch.Tensor | None, zero_masked_output: bool) -> str | None:
    if step_mask is None or bool(step_mask.all()):  # no masked step: the mask changes nothing
        return None
    if not zero_masked_output:
        return "a step mask that repeats the previous output at masked steps (Keras rule) has no torch kernel"
    if step_mask.shape[1] == 0:
        return "empty batch"
    # Right padding: once a row is False it stays False; and every sequence has a real step.
    if bool((step_mask[1:] & ~step_mask[:-1]).any()):
        return "a step mask with holes or left padding has no torch kernel (right padding has)"
    if not bool(step_mask[0].all()):
        return "a sequence of length 0 has no torch kernel (packed sequences need length >= 1)"
    return None


def torch_ineligible(call) -> str | None:  # call: registry.Call (not imported: registry imports this module)
    """``None`` if torch's own kernel computes this call exactly (after folding), else why not."""
    cfg, x = call.cfg, call.x
    if x.device.type not in ("cpu", "cuda"):
        return f"input is on {x.device}"
    if is_compiling():
        # Dynamo graph-breaks on torch's RNN ops (torch._dynamo.config.allow_rnn is off by default);
        # the fused kernel is a custom op that stays in the graph.
        return "under torch.compile torch's RNN kernels break the graph"
    dtypes = (torch.float32, torch.float64) + ((torch.float16, torch.bfloat16) if x.device.type == "cuda" else ())
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        return f"dtype {x.dtype} on {x.device.type} ({names} are taken by torch's kernel there)"
    reason = _cell_reason(cfg) or _cpu_autocast_reason(cfg, x)
    if reason is not None:
        return reason
    for layer in call.params:
        for p in layer:
            if (p.b_ih is None) != (p.b_hh is None):
                return "only one of b_ih / b_hh is given (torch's kernel takes both or neither)"
            for t in (p.w_ih, p.w_hh, p.b_ih, p.b_hh, p.w_hr):
                if t is not None and (t.dtype != x.dtype or t.device != x.device):
                    return "a parameter's dtype or device differs from the input's"
    tensors = list(call.init_states)
    if any(t.dtype != x.dtype or t.device != x.device for t in tensors):
        return "a state's dtype or device differs from the input's"
    if torch._C._functorch.is_batchedtensor(x) or any(
        torch._C._functorch.is_batchedtensor(t) for layer in call.params for p in layer
        for t in (p.w_ih, p.w_hh) if t is not None
    ):
        return "torch's RNN kernels have no vmap batching rule (torch.nn raises under vmap)"
    padded = call.step_mask is not None and not bool(call.step_mask.all())  # a host sync, with a step mask only
    reason = _mask_reason(call.masks, len(call.params[0]) == 2, padded)
    if reason is not None:
        return reason
    return _steps_reason(call.step_mask, call.zero_masked_output)


# ----------------------------------------------------------------------------------------- running


def _fold(p: DirectionParams, m: DirectionMasks, gates: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_ih, w_hh)`` with DropConnect and the batch-wide input / recurrent masks folded in."""
    w_ih, w_hh = p.w_ih, p.w_hh
    if m.weight_hh is not None:
        w_hh = drop_weight(w_hh, materialize(m.weight_hh))
    if m.input is not None and m.input.shape[1] == 1:
        w_ih = _scale_columns(w_ih, m.input, gates)
    if m.recurrent is not None:  # batch-wide by eligibility
        w_hh = _scale_columns(w_hh, m.recurrent, gates)
    return w_ih, w_hh


def _scale_columns(w: torch.Tensor, mask: torch.Tensor, gates: int) -> torch.Tensor:
    """``w`` ``(G*H, K)`` times a mask ``(1 | G, 1, K)``: gate block ``g`` scaled by ``mask[g]``."""
    if mask.shape[0] == 1:
        return w * mask[0]
    return (w.view(gates, -1, w.shape[1]) * mask).view_as(w)


def _flat(params: Sequence[DirectionParams], weights: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list:
    flat: list[torch.Tensor] = []
    for p, (w_ih, w_hh) in zip(params, weights):
        flat += [w_ih, w_hh]
        if p.b_ih is not None:
            flat += [p.b_ih, p.b_hh]
        if p.w_hr is not None:
            flat.append(p.w_hr)
    return flat


def _call_vf(
    cfg: CellConfig,
    data: torch.Tensor,
    batch_sizes: torch.Tensor | None,
    hx: tuple[torch.Tensor, ...],
    flat: list,
    has_biases: bool,
    num_layers: int,
    bidirectional: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    # train=True only when a backward will follow (it selects the kernels that keep what backward needs).
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (data, *hx, *flat))
    if cfg.mode == "LSTM":
        fn, h = _VF.lstm, hx
    else:
        fn = _VF.gru if cfg.mode == "GRU" else (_VF.rnn_tanh if cfg.activation == "tanh" else _VF.rnn_relu)
        h = hx[0]
    with _quiet_cudnn_weights(data.device.type == "cuda"):
        if batch_sizes is None:
            result = fn(data, h, flat, has_biases, num_layers, 0.0, train, bidirectional, False)
        else:
            result = fn(data, batch_sizes, h, flat, has_biases, num_layers, 0.0, train, bidirectional)
    return result[0], tuple(result[1:])


@contextlib.contextmanager
def _quiet_cudnn_weights(active: bool) -> Iterator[None]:
    """cuDNN warns on every call whose weights are not one flat buffer (torch.nn's flatten_parameters);
    rnndrop's are separate parameters, and folded ones are new tensors each call: the warning says
    nothing actionable here, so it is filtered for these calls only."""
    if not active:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not part of single contiguous chunk of memory.*")
        yield


def torch_run_stack(
    cfg: CellConfig,
    x: torch.Tensor,
    init_states: Sequence[torch.Tensor],
    params: Sequence[Sequence[DirectionParams]],
    masks: DropoutMasks | None,
    step_mask: torch.Tensor | None,
    zero_masked_output: bool,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """:func:`rnndrop.reference.run_stack` (same contract) on torch's kernels.

    Only for calls :func:`torch_ineligible` accepts. ``x`` ``(T, B, I)``; returns the last layer's
    output ``(T, B, D * H_out)`` and the final states ``(L * D, B, ·)``.
    """
    num_dirs = len(params[0])
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[cfg.mode]
    has_biases = params[0][0].b_ih is not None
    # Right-padded lengths for torch's packed path; None when every step is real.
    packing = None
    if step_mask is not None and not bool(step_mask.all()):
        packing = step_mask.sum(0).cpu()
    dtype = x.dtype

    def run(layer_input: torch.Tensor, hx: tuple[torch.Tensor, ...], flat: list, layers: int, dirs: int = num_dirs):
        if packing is None:
            out, finals = _call_vf(cfg, layer_input, None, hx, flat, has_biases, layers, dirs == 2)
        else:
            packed = pack_padded_sequence(layer_input, packing, enforce_sorted=False)
            hx = tuple(h.index_select(1, packed.sorted_indices) for h in hx)
            data, finals = _call_vf(cfg, packed.data, packed.batch_sizes, hx, flat, has_biases, layers,
                                    num_dirs == 2)
            out_packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
            out, _ = pad_packed_sequence(out_packed, total_length=layer_input.shape[0])
            finals = tuple(h.index_select(1, packed.unsorted_indices) for h in finals)
        # Under CPU autocast torch's LSTM returns bf16: every rnndrop path returns the input's dtype.
        if out.dtype != dtype:
            out, finals = out.to(dtype), tuple(f.to(dtype) for f in finals)
        return out, finals

    no_masks = masks is None or (
        all(not m.active() for layer in masks.layers for m in layer) and all(b is None for b in masks.between)
    )
    if no_masks:  # as torch.nn: the whole stack in one call
        flat = _flat([p for layer in params for p in layer], [(p.w_ih, p.w_hh) for layer in params for p in layer])
        return run(x, tuple(init_states), flat, len(params))

    finals: list[list[torch.Tensor]] = [[] for _ in init_states]
    layer_input = x
    for k, layer_params in enumerate(params):
        dmasks = masks.layers[k]
        weights = [_fold(p, m, gates) for p, m in zip(layer_params, dmasks)]
        if _split_directions(dmasks):  # one call per direction, each with its own input mask (no padding)
            outs = []
            for d, (p, m, w) in enumerate(zip(layer_params, dmasks, weights)):
                xin = layer_input if m.input is None or m.input.shape[1] == 1 else layer_input * m.input[0]
                row = slice(k * num_dirs + d, k * num_dirs + d + 1)
                out_d, state = run(xin.flip(0) if d else xin, tuple(s[row] for s in init_states), _flat([p], [w]),
                                   1, dirs=1)
                outs.append(out_d.flip(0) if d else out_d)
                for acc, s in zip(finals, state):
                    acc.append(s)
            out = torch.cat(outs, dim=2)
        else:
            xin = layer_input
            imask = dmasks[0].input
            if imask is not None and imask.shape[1] != 1:  # per sample, shared by the gates, one direction
                xin = layer_input * imask[0]
            rows = slice(k * num_dirs, (k + 1) * num_dirs)
            out, state = run(xin, tuple(s[rows] for s in init_states), _flat(layer_params, weights), 1)
            for acc, s in zip(finals, state):
                acc.append(s)
        layer_input = out
        if k < len(params) - 1 and masks.between and masks.between[k] is not None:
            layer_input = layer_input * masks.between[k]
    return layer_input, tuple(torch.cat(f, 0) for f in finals)
