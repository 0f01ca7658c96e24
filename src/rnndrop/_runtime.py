"""What the current call runs under: torch.compile tracing, CPU autocast, torch.func transforms.

Small queries of torch's global state that several modules ask (the kernel registry, the kernels'
wrappers, the reference loop); one copy here, importing only torch.
"""

from __future__ import annotations

import torch


def is_compiling() -> bool:
    """Whether Dynamo / torch.export is tracing this call (torch >= 2.3; False before)."""
    check = getattr(torch.compiler, "is_compiling", None)
    return bool(check()) if check is not None else False


def cpu_autocast_dtype() -> torch.dtype | None:
    """The low-precision dtype of an active CPU autocast region, else ``None``."""
    try:
        enabled = torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    get = getattr(torch, "get_autocast_dtype", None)
    return get("cpu") if get is not None else torch.get_autocast_cpu_dtype()


def under_functorch(*tensors: torch.Tensor | None) -> bool:
    """Whether any tensor is wrapped by a torch.func transform (``grad``, ``vjp``, ``jacrev``, ``vmap``).

    Such tensors have no storage of their own: a kernel that reads raw data pointers cannot take them.
    """
    if is_compiling():  # Dynamo cannot trace these checks; a compiled graph holds plain tensors
        return False
    # autograd.grad(..., is_grads_batched=True) still vmaps with the legacy batched tensors.
    checks = [getattr(torch._C._functorch, name, None)
              for name in ("is_functorch_wrapped_tensor", "is_legacy_batchedtensor")]
    return any(check(t) for check in checks if check is not None for t in tensors if t is not None)
