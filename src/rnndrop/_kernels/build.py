"""Compile the CPU extension ahead of time: ``python -m rnndrop._kernels.build``.

Uses ``torch.utils.cpp_extension`` (ninja + the system C++ compiler) against the installed
torch, without pip's build isolation (which could fetch a different torch). The result goes
where :mod:`rnndrop._kernels.loader` looks for it. Exit status 0 on success; with
``--allow-failure`` a failed build only prints a warning (the layers then run the reference
path), which is what ``make install`` uses so that a machine without a compiler still works.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from . import loader


def _ninja_on_path() -> None:
    # torch calls `ninja` from PATH; the venv's bin (pip's ninja) is not on it unless activated.
    dirs = [str(Path(sys.executable).parent)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.append(str(ninja.BIN_DIR))
    except Exception:
        pass
    os.environ["PATH"] = os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def build(verbose: bool = False, force: bool = False) -> Path:
    """Compile (if needed) and return the library path; raises on failure."""
    from torch.utils import cpp_extension

    path = loader.library_path()
    if path.is_file() and not force:
        return path
    build_dir = path.parent
    if force and build_dir.exists():
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    _ninja_on_path()
    cpp_extension.load(
        name=loader.module_name(path.parent.name),
        sources=[str(s) for s in loader.SOURCES],
        extra_cflags=loader.compile_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build_dir),
        verbose=verbose,
        with_cuda=False,
    )
    if not path.is_file():
        raise RuntimeError(f"the build finished but {path} is missing")
    _remove_stale_builds(path.parent)
    return path


def _remove_stale_builds(current: Path) -> None:
    # Builds for other tags (older sources, another torch) can never load again from here.
    for d in current.parent.iterdir():
        if d != current and d.is_dir() and len(d.name) == 16 and all(c in "0123456789abcdef" for c in d.name):
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnndrop._kernels.build", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if an up-to-date build exists")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    parser.add_argument("--allow-failure", action="store_true",
                        help="exit 0 with a warning if the build fails (the reference path is used)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        path = build(verbose=args.verbose, force=args.force)
    except Exception as exc:
        msg = f"rnndrop: building the CPU extension failed: {type(exc).__name__}: {exc}"
        print(msg, file=sys.stderr)
        if args.allow_failure:
            print("rnndrop: continuing without it; layers will use the (slower) reference path", file=sys.stderr)
            return 0
        return 1
    loader.reset()
    if loader.load() is None:
        print(f"rnndrop: built {path} but it does not load: {loader.unavailable_reason()}", file=sys.stderr)
        return 0 if args.allow_failure else 1
    print(f"rnndrop: CPU extension ready at {path} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
