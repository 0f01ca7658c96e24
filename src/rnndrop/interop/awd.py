"""AWD-LSTM checkpoints (fastai / ULMFiT, salesforce's awd-lstm-lm) for a model built on rnndrop.

AWD-LSTM wraps each ``torch.nn.LSTM`` in a weight-dropping module that keeps the trained recurrent
weight under another name, so its state dict does not load into plain LSTMs:

* fastai (``WeightDropout``; ULMFiT's pretrained weights): ``rnns.{l}.weight_hh_l0_raw``,
  ``rnns.{l}.module.weight_ih_l0``, ``rnns.{l}.module.bias_ih_l0``, ...;
* salesforce's awd-lstm-lm (``WeightDrop``): ``rnns.{l}.module.weight_hh_l0_raw``,
  ``rnns.{l}.module.weight_ih_l0``, ...;
* rnndrop (``LSTM(..., weight_dropout=p)``): ``rnns.{l}.weight_hh_l0``, ``rnns.{l}.weight_ih_l0``, ...

:func:`awd_lstm_state_dict` renames the keys of such a checkpoint so that it loads into the same model
written with ``rnndrop.LSTM(..., weight_dropout=p)`` layers in a ``ModuleList`` called ``rnns`` (any
prefix before ``rnns`` is kept: ULMFiT's language model saves ``0.rnns.0...``). Other keys (encoder,
decoder) are returned unchanged. Weight dropout itself is not part of a state dict: set
``weight_dropout=`` on the rnndrop layers (fastai and salesforce both default to 0.5 for ``W_hh``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..errors import RnnDropValueError

# rnns.{l}.module.weight_hh_l0_raw (salesforce) / rnns.{l}.weight_hh_l0_raw (fastai) -> rnns.{l}.weight_hh_l0
_RAW = re.compile(r"^(?P<pre>(?:.*\.)?rnns\.\d+\.)(?:module\.)?(?P<name>\w+)_raw$")
# rnns.{l}.module.<parameter> -> rnns.{l}.<parameter>
_WRAPPED = re.compile(r"^(?P<pre>(?:.*\.)?rnns\.\d+\.)module\.(?P<name>\w+)$")


def awd_lstm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An AWD-LSTM checkpoint's keys renamed for ``rnndrop.LSTM`` layers in a ``ModuleList`` named ``rnns``.

    The dropped-weight copy some versions also save (``rnns.{l}.module.weight_hh_l0``: the last call's
    masked weight, not the trained one) is left out in favour of the ``_raw`` parameter. Raises
    :class:`~rnndrop.RnnDropValueError` when no AWD-LSTM key is found (not such a checkpoint, or its
    layers are not called ``rnns``).
    """
    raw = {f"{m['pre']}{m['name']}": key for key in state_dict if (m := _RAW.match(key))}
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state_dict.items():
        if (m := _RAW.match(key)) is not None:
            out[f"{m['pre']}{m['name']}"] = value
            renamed += 1
            continue
        if (m := _WRAPPED.match(key)) is not None:
            target = f"{m['pre']}{m['name']}"
            renamed += 1
            if target in raw:
                continue  # a masked copy of a weight whose trained value is the _raw parameter
            out[target] = value
            continue
        out[key] = value
    if not renamed:
        raise RnnDropValueError(
            "state_dict has no AWD-LSTM recurrent weights (keys like 'rnns.0.weight_hh_l0_raw' (fastai) or "
            "'rnns.0.module.weight_hh_l0_raw' (salesforce)); got keys such as "
            f"{sorted(state_dict)[:4]}"
        )
    return out
