"""pytest plugin for scripts/torch_suite/run.py: select PyTorch's recurrent-layer tests, optionally swap in rnndrop.

Loaded with ``-p torch_suite_plugin`` (run.py puts this folder on ``PYTHONPATH``); it edits nothing on disk.
Settings come from the environment (run.py sets them):

* ``RNNDROP_TORCH_SUITE_MODE``: ``baseline`` (torch.nn) or ``swap`` (rnndrop's LSTM / GRU / RNN).
* ``RNNDROP_TORCH_SUITE_THREADS``: ``torch.set_num_threads`` value, re-asserted before every test.
* ``RNNDROP_TORCH_SUITE_REPORT``: optional path; a JSON note of what was selected and what was missing.

What it does, at import (before pytest collects the test files):

* ``common_modules.module_db`` is cut down, in place, to the ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` entries, so
  ``test_modules.py`` generates only their tests. In swap mode each entry's ``module_cls`` becomes rnndrop's
  class (test ids stay ``..._nn_LSTM_...``), and ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` (and
  ``torch.nn.modules``') are replaced by rnndrop's, which is how ``test_nn.py``'s tests reach them.
* At collection, ``test_nn.py`` is cut down to the recurrent-layer tests named in ``NN_TESTS`` and
  ``NN_DEVICE_TESTS`` (the selection the suite was first run with), ``test_modules.py`` to the tests of the
  three classes; everything else is deselected.
"""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import torch.nn as nn
from torch.testing._internal import common_modules

MODE = os.environ.get("RNNDROP_TORCH_SUITE_MODE", "swap")
THREADS = int(os.environ.get("RNNDROP_TORCH_SUITE_THREADS", "1"))
REPORT = os.environ.get("RNNDROP_TORCH_SUITE_REPORT")
if MODE not in ("baseline", "swap"):
    raise RuntimeError(f"RNNDROP_TORCH_SUITE_MODE must be 'baseline' or 'swap', not {MODE!r}")

# Recurrent-layer tests of test_nn.py. TestNN's are matched by exact name; TestNNDeviceType's by their
# base name (instantiated on CPU as <name>_cpu or <name>_cpu_<dtype>). CUDA-only ones are not listed.
NN_TESTS = (
    "test_LSTM_cell",
    "test_LSTM_cell_forward_hidden_size",
    "test_LSTM_cell_forward_input_size",
    "test_RNN_cell",
    "test_RNN_cell_forward_zero_hidden_size",
    "test_RNN_cell_no_broadcasting",
    "test_RNN_input_size_zero",
    "test_RNN_nonlinearity",
    "test_RNN_nonlinearity_passed_as_arg",
    "test_cudnn_forward_exception",
    "test_projections_errors_on_gru_and_rnn",
    "test_projections_lstm_args_check",
    "test_projections_lstm_initial_hidden_state",
    "test_rnn_args_check",
    "test_rnn_initial_hidden_state",
    "test_rnn_weight_norm",
)
NN_DEVICE_TESTS = (
    "test_GRU_grad_and_gradgrad",
    "test_LSTM_differentiable_backward_using_oneDNN",
    "test_LSTM_grad_and_gradgrad",
    "test_rnn_retain_variables",
    "test_save_lstm_compatibility",
    "test_variable_sequence",
)
NAMES = ("LSTM", "GRU", "RNN")
_MODULE_TEST = re.compile(r"_nn_(LSTM|GRU|RNN)_")

torch.set_num_threads(THREADS)

_TORCH_CLS = {name: getattr(nn, name) for name in NAMES}
_infos = [mi for mi in common_modules.module_db if mi.module_cls in tuple(_TORCH_CLS.values())]
if len(_infos) != len(NAMES):
    raise RuntimeError(f"expected one module_db entry each for nn.{', nn.'.join(NAMES)}; found {_infos}")

if MODE == "swap":
    import rnndrop

    _SWAP = {name: getattr(rnndrop, name) for name in NAMES}
    for mi in _infos:
        common_name = common_modules.get_module_common_name(mi.module_cls)  # "nn.LSTM"
        mi.module_cls = _SWAP[mi.module_cls.__name__]
        common_modules.MODULE_CLASS_NAMES[mi.module_cls] = common_name  # keep the baseline's test ids
    import torch.nn.modules as _nn_modules

    for name, cls in _SWAP.items():
        setattr(nn, name, cls)
        setattr(_nn_modules, name, cls)
common_modules.module_db[:] = _infos


def _nn_base(cls_name: str, name: str) -> str | None:
    """The NN_TESTS / NN_DEVICE_TESTS entry a test_nn.py test is, or None."""
    if cls_name == "TestNN":
        return name if name in NN_TESTS else None
    if cls_name.startswith("TestNNDeviceType"):
        for base in NN_DEVICE_TESTS:
            if name == base + "_cpu" or name.startswith(base + "_cpu_"):
                return base
    return None


def pytest_collection_modifyitems(session, config, items):
    keep, drop, found = [], [], set()
    for item in items:
        file_name = os.path.basename(str(item.path))
        cls_name = item.cls.__name__ if getattr(item, "cls", None) is not None else ""
        name = item.name
        if file_name == "test_nn.py":
            base = _nn_base(cls_name, name)
            selected = base is not None
            if selected:
                found.add(base)
        elif file_name == "test_modules.py":
            selected = bool(_MODULE_TEST.search(name))
        else:
            selected = True
        (keep if selected else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if REPORT:
        with open(REPORT, "w") as f:
            json.dump(
                {
                    "mode": MODE,
                    "threads": THREADS,
                    "torch": torch.__version__,
                    "module_db": [f"{mi.module_cls.__module__}.{mi.module_cls.__qualname__}" for mi in _infos],
                    "selected": len(keep),
                    "nn_missing": sorted(set(NN_TESTS + NN_DEVICE_TESTS) - found),
                },
                f,
                indent=1,
            )


@pytest.fixture(autouse=True)
def _torch_suite_threads():
    # Re-assert the thread count before every test (a test or a helper could change it).
    torch.set_num_threads(THREADS)
    yield


def pytest_report_header(config):
    classes = [f"{mi.module_cls.__module__}.{mi.module_cls.__qualname__}" for mi in _infos]
    return f"rnndrop torch_suite: mode={MODE} threads={torch.get_num_threads()} module_db={classes}"
