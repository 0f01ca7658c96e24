"""Compile the CPU extension: on first use, or ahead of time with ``rnndrop build-kernels``.

``rnndrop build-kernels`` (also ``python -m rnndrop._kernels.build``) builds for this interpreter,
torch and CPU into the kernel cache (:mod:`.loader`), for images and clusters where the first call
should not compile. The first call that needs a missing build does the same by itself
(:func:`build_on_first_use`).

A build runs ``torch.utils.cpp_extension`` (ninja + the system C++ compiler, against the installed
torch, without pip's build isolation, which could fetch another torch) in a child process, in a
staging folder of the cache, and publishes the library with one rename (:mod:`.cache`). One
process builds a tag at a time, under the tag's lock; processes that arrive meanwhile (DDP ranks,
parallel jobs) wait for it and load its result.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import cache, loader

# Measured with `time rnndrop build-kernels` on the project's 2-core machine (docs/ecosystem.md);
# shown in the first-use notice so that a silent minute is not mistaken for a hang.
TYPICAL_BUILD = "about 1-2 minutes"

_COMPILE = """
import json, sys
from torch.utils import cpp_extension
a = json.loads(sys.argv[1])
cpp_extension.load(name=a["name"], sources=a["sources"], extra_cflags=a["cflags"], extra_ldflags=a["ldflags"],
                   build_directory=a["directory"], verbose=a["verbose"], with_cuda=False)
"""


class BuildError(RuntimeError):
    """The extension could not be compiled; the message says why and what to do."""


def compiler() -> str | None:
    """The C++ compiler torch would use (``$CXX``, else ``c++``), or ``None`` when it is not found."""
    name = os.environ.get("CXX") or "c++"
    return shutil.which(name)


def _tool_path() -> str:
    # torch calls `ninja` from PATH; pip's ninja sits in the interpreter's bin (not on PATH unless the
    # venv is activated) or in the ninja package.
    dirs = [str(Path(sys.executable).parent)]
    try:
        import ninja  # type: ignore[import-not-found]

        dirs.append(str(ninja.BIN_DIR))
    except Exception:
        pass
    return os.pathsep.join([*dirs, os.environ.get("PATH", "")])


def missing_tools() -> str | None:
    """Why a build cannot start here (no compiler, no ninja), or ``None``."""
    if compiler() is None:
        name = os.environ.get("CXX") or "c++"
        return (f"no C++ compiler was found (`{name}` is not on PATH; set CXX to use another one). "
                f"Install one (e.g. `apt install g++`), then run `{loader.BUILD_COMMAND}`")
    if shutil.which("ninja", path=_tool_path()) is None:
        return (f"ninja is not installed (torch compiles extensions with it): "
                f"`{shlex.quote(sys.executable)} -m pip install ninja`, then `{loader.BUILD_COMMAND}`")
    return None


def build(verbose: bool = False, force: bool = False, on_start=None, on_wait=None) -> Path:
    """Compile the extension for this installation if needed and return the library's path.

    Raises :class:`BuildError` (or ``OSError`` when the cache folder is not writable). ``on_wait()``
    is called when another process holds the build lock, ``on_start(directory)`` when this process
    starts compiling.
    """
    path = loader.library_path()
    final = path.parent
    root, tag = final.parent, final.name
    if path.is_file() and not force:
        return path
    reason = missing_tools()
    if reason is not None:
        raise BuildError(reason)
    root.mkdir(parents=True, exist_ok=True)
    with cache.locked(cache.lock_path(root, tag), on_wait=on_wait):
        if path.is_file() and not force:
            return path  # built by the process we waited for (or before)
        if on_start is not None:
            on_start(final)
        staging = cache.staging_dir(root, tag)
        try:
            _compile(staging / "build", path.stem, verbose)
            out = staging / "out"
            out.mkdir()
            # Only the library is kept; objects and ninja files (most of the folder) are dropped.
            os.replace(staging / "build" / path.name, out / path.name)
            cache.publish(out, final, replace=force)
        except BuildError as exc:
            cache.failure_path(root, tag).write_text(str(exc) + "\n\n" + getattr(exc, "log", ""))
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cache.failure_path(root, tag).unlink(missing_ok=True)
    if not path.is_file():
        raise BuildError(f"the build finished but {path} is missing")
    return path


def _compile(directory: Path, name: str, verbose: bool) -> None:
    """Run the compiler in a child process (the caller's PATH, modules and output stay untouched)."""
    import torch

    directory.mkdir()
    args = {"name": name, "sources": [str(s) for s in loader.SOURCES], "cflags": loader.compile_flags(),
            "ldflags": ["-fopenmp"], "directory": str(directory), "verbose": verbose}
    env = dict(os.environ, PATH=_tool_path())
    # The child must import the torch this process runs (sys.path may differ from the default one).
    torch_parent = str(Path(torch.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (torch_parent, os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", _COMPILE, json.dumps(args)], env=env,
                            stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, text=True, check=False)
    log = result.stdout or ""
    if result.returncode != 0 or not (directory / f"{name}.so").is_file():
        last = "\n".join(log.strip().splitlines()[-15:])
        err = BuildError(f"compiling the CPU extension failed (exit status {result.returncode}):\n{last}")
        err.log = log  # type: ignore[attr-defined]
        raise err


def build_on_first_use(path: Path) -> str | None:
    """Build ``path`` for a first call that needs it; ``None`` on success, else the reason it is missing.

    Does not retry a build that failed before (a ``.failed`` file beside it; ``rnndrop build-kernels``
    retries). Prints one line to stderr while this process compiles, or while it waits for another.
    """
    root, tag = path.parent.parent, path.parent.name
    reason = missing_tools()
    if reason is not None:
        return reason
    failed = cache.failure_path(root, tag)
    if failed.is_file():
        return (f"compiling the CPU extension failed before (the compiler's output: {failed}); after fixing "
                f"the cause, run `{loader.BUILD_COMMAND}` to retry")
    start = time.perf_counter()
    notice = _Notice()
    try:
        build(on_start=notice.compiling, on_wait=notice.waiting)
    except BuildError as exc:
        notice.finish(f"failed after {time.perf_counter() - start:.0f} s")
        return f"{exc} (full output: {failed}; retry with `{loader.BUILD_COMMAND}`)"
    except OSError as exc:  # the cache folder is not writable
        notice.finish("failed")
        return (f"the kernel cache folder {root} is not writable ({exc}); set RNNDROP_KERNEL_DIR to a writable "
                f"folder, or build ahead of time with `{loader.BUILD_COMMAND}` as a user who can write there")
    except BaseException:
        notice.finish("interrupted")
        raise
    notice.finish(f"done in {time.perf_counter() - start:.0f} s")
    return None


class _Notice:
    """The one line a first call prints to stderr while it compiles (or waits for another process)."""

    def __init__(self) -> None:
        self.open = False

    def _write(self, text: str) -> None:
        stream = sys.stderr
        if stream is None:  # pythonw, some daemons
            return
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            pass

    def compiling(self, directory: Path) -> None:
        self.finish("it stopped; building here")  # we waited for a process that died mid-build
        self._write(f"rnndrop: compiling the fused CPU kernel for this torch and CPU into {directory} "
                    f"(once per version, {TYPICAL_BUILD}) ...")
        self.open = True

    def waiting(self) -> None:
        self._write("rnndrop: waiting for another process that is compiling the fused CPU kernel ...")
        self.open = True

    def finish(self, outcome: str) -> None:
        if self.open:
            self._write(f" {outcome}\n")
            self.open = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if an up-to-date build exists (processes using the old one keep it)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands and output")
    parser.add_argument("--allow-failure", action="store_true",
                        help="exit 0 with a warning if the build fails (the layers then use the reference path)")
    parser.add_argument("--clean", action="store_true",
                        help="first delete the cache's builds for other versions that no process is using, "
                             "and abandoned staging folders")
    parser.add_argument("--print-path", action="store_true",
                        help="print where this installation's library is (or would be) and exit")


def run(args: argparse.Namespace) -> int:
    path = loader.library_path()
    if args.print_path:
        print(path)
        return 0
    if args.clean:
        removed, in_use = cache.clean(path.parent.parent, keep=path.parent.name)
        print(f"rnndrop: cleaned {path.parent.parent}: {len(removed)} entries removed"
              + (f"; in use, kept: {', '.join(in_use)}" if in_use else ""))
    start = time.perf_counter()
    if path.is_file() and not args.force:
        print(f"rnndrop: the fused CPU kernel is up to date at {path}", flush=True)
    else:
        print(f"rnndrop: building the fused CPU kernel into {path.parent} ...", flush=True)
    try:
        build(verbose=args.verbose, force=args.force,
              on_wait=lambda: print("rnndrop: waiting for another process that is building it ...", flush=True))
    except (BuildError, OSError) as exc:
        print(f"rnndrop: building the CPU extension failed: {type(exc).__name__}: {exc}", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rnndrop._kernels.build", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
