"""Find, build on first use, and load the compiled CPU extension, lazily; never raises.

The extension lives in a per-user cache folder, never in site-packages: ``$RNNDROP_KERNEL_DIR``
if set, else ``$XDG_CACHE_HOME/rnndrop/kernels`` (default ``~/.cache/rnndrop/kernels``; macOS
``~/Library/Caches/rnndrop/kernels``, Windows ``%LOCALAPPDATA%\\rnndrop\\kernels``). A build sits in
a folder named by its *build tag*: a hash of the C++ sources, the compile flags, the torch and
Python versions and the CPU capability. A stale build (sources edited, torch upgraded, another
CPU) therefore has another tag and is simply not found, and several versions share one cache.

The first call that needs a missing build compiles it (:func:`rnndrop._kernels.build.build_on_first_use`:
one process under a lock, the others wait and load; a one-line notice while it compiles). Ahead of
time: ``rnndrop build-kernels`` (or ``python -m rnndrop._kernels.build``).
``RNNDROP_BUILD_ON_FIRST_USE=0`` loads prebuilt kernels only; ``RNNDROP_DISABLE_KERNELS=1`` makes
the extension unavailable on purpose (the reference path, without a warning).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shlex
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

_HERE = Path(__file__).resolve().parent
CSRC = _HERE / "csrc"
SOURCES: tuple[Path, ...] = (CSRC / "cpu" / "rnn.cpp",)
# The exact command for this interpreter (a bare `python` is often another one, without rnndrop).
BUILD_COMMAND = f"{shlex.quote(sys.executable)} -m rnndrop build-kernels"


def cpu_capability() -> str:
    """torch's SIMD level on this CPU (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``, ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch
        return "DEFAULT"


def compile_flags(capability: str | None = None) -> list[str]:
    """C++ flags: -O3, OpenMP for at::parallel_for, and ATen's vector ISA for ``capability``.

    ``CPU_CAPABILITY`` selects the ``at::vec`` implementation (and its inline namespace, so our
    copy never collides with torch's own kernels); the -m flags let the compiler emit it.
    """
    cap = capability or cpu_capability()
    flags = ["-O3", "-fopenmp", "-fno-math-errno", "-DNDEBUG"]
    if cap == "AVX512":
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                  "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif cap == "AVX2":
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    else:
        flags += ["-DCPU_CAPABILITY=DEFAULT", "-DCPU_CAPABILITY_DEFAULT"]
    return flags


def build_tag() -> str:
    """Hash of everything the binary depends on (see the module docstring)."""
    h = hashlib.sha256()
    for src in SOURCES:
        h.update(src.name.encode())
        h.update(src.read_bytes())
    for part in (torch.__version__, f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine(),
                 cpu_capability(), " ".join(compile_flags())):
        h.update(part.encode())
    return h.hexdigest()[:16]


def kernel_root() -> Path:
    """The cache folder: ``$RNNDROP_KERNEL_DIR``, else the per-user cache (module docstring)."""
    env = os.environ.get("RNNDROP_KERNEL_DIR")
    return Path(env).expanduser() if env else default_kernel_root()


def default_kernel_root() -> Path:
    """The platform's per-user cache folder for rnndrop's kernels (raises ``RuntimeError`` without a home)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # the XDG spec ignores relative paths
    return base / "rnndrop" / "kernels"


def disabled() -> bool:
    """``RNNDROP_DISABLE_KERNELS`` is set: the reference path on purpose."""
    return _env_flag("RNNDROP_DISABLE_KERNELS", False)


def build_on_first_use() -> bool:
    """Whether a missing build is compiled by the first call (``RNNDROP_BUILD_ON_FIRST_USE``, default yes)."""
    return _env_flag("RNNDROP_BUILD_ON_FIRST_USE", True)


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    return value not in ("0", "false", "no", "off")


def module_name(tag: str) -> str:
    # The tag is part of the module name so two builds can never be confused in one process.
    return f"rnndrop_cpu_{tag}"


def library_path() -> Path:
    tag = build_tag()
    return kernel_root() / tag / f"{module_name(tag)}.so"


_cache: tuple[ModuleType | None, str | None] | None = None
_cache_lock = threading.Lock()  # two threads' first calls: one loads (or builds), the other waits


def load() -> ModuleType | None:
    """The extension module, or ``None`` (then :func:`unavailable_reason` says why). Cached."""
    return _load()[0]


# Under torch.compile, Dynamo runs this eagerly and keeps the answer as a constant instead of tracing
# the loading (hashing the sources, importing the .so), which it cannot.
@torch.compiler.assume_constant_result
def unavailable_reason() -> str | None:
    """Why the extension cannot be used, or ``None`` when it is loaded."""
    return _load()[1]


def reset() -> None:
    """Forget the cached result (after a build in the same process, or in tests)."""
    global _cache
    _cache = None


def _load() -> tuple[ModuleType | None, str | None]:
    global _cache
    if _cache is None:
        with _cache_lock:
            if _cache is None:
                _cache = _try_load()
    return _cache


def _try_load() -> tuple[ModuleType | None, str | None]:
    if disabled():
        return None, "disabled by RNNDROP_DISABLE_KERNELS"
    try:
        path = library_path()
    except OSError as exc:  # sources missing from the installation
        return None, f"kernel sources unreadable ({exc})"
    except RuntimeError as exc:  # Path.home() without a home folder
        return None, f"no kernel cache folder ({exc}); set RNNDROP_KERNEL_DIR to a writable folder"
    if not path.is_file():
        if not build_on_first_use():
            return None, (
                f"the compiled CPU extension is not built for this installation (looked for {path}; "
                f"RNNDROP_BUILD_ON_FIRST_USE=0 keeps the first call from compiling it); build it with "
                f"`{BUILD_COMMAND}`"
            )
        from . import build  # only now: it imports torch.utils.cpp_extension

        reason = build.build_on_first_use(path)
        if reason is not None:
            return None, reason
    try:
        module = _load_library(path)
    except Exception as exc:  # ImportError, OSError (bad ELF, missing symbol), anything else
        return None, f"the compiled CPU extension at {path} failed to load: {type(exc).__name__}: {exc}"
    # Only now (the extension is there): make it torch.ops.rnndrop.fused_* so torch.compile can trace it.
    from . import ops

    _register_sampler(module)
    try:
        ops.register()
    except Exception as exc:  # the ops are an addition: without them the kernel still runs eagerly
        warnings.warn(f"rnndrop: could not register the CPU kernel as custom ops ({exc}); torch.compile will "
                      "graph-break around it", RuntimeWarning, stacklevel=2)
    return module, None


def _register_sampler(module: ModuleType) -> None:
    """The masks' counter-based draws from the extension (the same numbers as counter_rng's torch code)."""
    if not hasattr(module, "keyed_draws"):
        return
    from .. import counter_rng

    draw = module.keyed_draws
    served = (torch.float32, torch.float64)  # counter_rng's torch code draws the other dtypes

    def sampler(k0: int, k1: int, threshold: int, shape: tuple[int, int, int], below: float, above: float,
                dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        return draw(k0, k1, threshold, *shape, below, above, dtype) if dtype in served else None

    counter_rng.register_fast_sampler(sampler, "cpu")


def _load_library(path: Path) -> ModuleType:
    from . import cache

    # A shared lock: `rnndrop build-kernels --clean` never deletes a library while it is being loaded.
    with cache.locked(cache.lock_path(path.parent.parent, path.parent.name), shared=True):
        name = path.stem
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
        spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
        if spec is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    return module
