"""The per-user kernel cache: where builds live, one lock per build, atomic publication, safe cleaning.

Layout of the cache folder (:func:`rnndrop._kernels.loader.kernel_root`)::

    <tag>/rnndrop_cpu_<tag>.so        a finished build (only the library: objects stay in staging)
    <tag>.lock                        locked exclusively by the process building <tag>,
                                      shared by a process while it loads <tag>'s library
    <tag>.failed                      the compiler's output of a failed build (first use does not retry)
    .staging-<tag>-<pid>-<random>/    a build in progress, renamed to <tag>/ once complete

Several versions of rnndrop or torch (several virtual environments, several checkouts) share one
cache: each has its own tag, and nothing here deletes another tag's build on its own. Only
:func:`clean` does, when asked, and only builds that no process is building or loading.

Locks are ``fcntl.flock`` locks, which the kernel releases when their process dies (a killed build
never blocks the next one). Where ``fcntl`` is missing (Windows) an exclusive lock is a file created
with ``O_EXCL``, and a lock file older than :data:`STALE_LOCK_SECONDS` counts as abandoned.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

STALE_LOCK_SECONDS = 3600.0
_TAG = re.compile(r"^[0-9a-f]{16}$")
_TEMPORARY = re.compile(r"^\.(?:staging|old)-([0-9a-f]{16})-")  # a build in progress, a build being replaced


def lock_path(root: Path, tag: str) -> Path:
    return root / f"{tag}.lock"


def failure_path(root: Path, tag: str) -> Path:
    return root / f"{tag}.failed"


class LockBusy(Exception):
    """A non-blocking lock request found the lock held by another process."""


@contextlib.contextmanager
def locked(path: Path, *, shared: bool = False, blocking: bool = True,
           on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` (created if missing) for the ``with`` block.

    ``shared=True`` takes a shared lock (several loaders at once, never together with a build). If
    the lock is busy: ``on_wait()`` is called once, then this waits (``blocking=True``) or raises
    :class:`LockBusy`. A cache folder without write access (a read-only, prebuilt cache) is used
    without locking for shared locks; an exclusive lock then raises the ``OSError``.
    """
    if fcntl is None:
        with _exclusive_file_lock(path, shared=shared, blocking=blocking, on_wait=on_wait):
            yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if not shared:
            raise
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # read-only cache without a lock file: nothing can build there either
            yield
            return
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            if not blocking:
                raise LockBusy(str(path)) from None
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def _exclusive_file_lock(path: Path, *, shared: bool, blocking: bool,
                         on_wait: Callable[[], None] | None) -> Iterator[None]:
    # Without fcntl: an O_EXCL file marks a build in progress. Loaders do not lock (publication is an
    # atomic rename, so a loader sees a whole build or none).
    if shared:
        yield
        return
    waited = False
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime > STALE_LOCK_SECONDS:
                    path.unlink()  # its owner died without removing it
                    continue
            except FileNotFoundError:
                continue
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if not blocking:
                raise LockBusy(str(path)) from None
            time.sleep(0.5)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def staging_dir(root: Path, tag: str) -> Path:
    """A new, empty folder in ``root`` for building ``tag`` (same file system, so publishing is a rename)."""
    return Path(tempfile.mkdtemp(prefix=f".staging-{tag}-{os.getpid()}-", dir=root))


def publish(built: Path, final: Path, *, replace: bool = False) -> None:
    """Move the complete folder ``built`` to ``final`` in one rename (loaders see all of it or nothing).

    If ``final`` already holds a build (another process published first, which the lock normally
    prevents), ours is discarded unless ``replace``; with ``replace`` the old folder is renamed aside
    first and deleted after (a process that already loaded its library keeps running).
    """
    old = None
    if final.exists() and replace:
        old = final.with_name(f".old-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(final, old)
    try:
        os.rename(built, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(built, ignore_errors=True)  # someone else's identical build is already there
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean(root: Path, keep: str) -> tuple[list[str], list[str]]:
    """Delete builds other than tag ``keep``, and abandoned staging folders, that no process is using.

    A tag whose lock is held (a process is building or loading it) is skipped. Returns
    ``(removed, in_use)``: the entries deleted and the tags skipped. A process that loaded a library
    before it was deleted keeps running (the file stays mapped until it exits); one that needs it
    later builds it again.
    """
    removed: list[str] = []
    in_use: list[str] = []
    if not root.is_dir():
        return removed, in_use
    tags = set()
    for entry in root.iterdir():
        m = _TEMPORARY.match(entry.name)
        tag = m.group(1) if m else entry.name.split(".")[0]
        if _TAG.match(tag):
            tags.add(tag)
    for tag in sorted(tags):
        try:
            with locked(lock_path(root, tag), blocking=False):
                for entry in sorted(root.iterdir()):
                    if not _removable(entry.name, tag, keep):
                        continue
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
                    removed.append(entry.name)
                if tag != keep:
                    # The lock file goes last, while we hold it: a process opening it after this creates
                    # a new one; a build that raced us still publishes atomically (see publish()).
                    lock_path(root, tag).unlink(missing_ok=True)
        except LockBusy:
            in_use.append(tag)
    return removed, in_use


def _removable(name: str, tag: str, keep: str) -> bool:
    """Whether cache entry ``name`` goes when cleaning ``tag`` (its lock held by the cleaner)."""
    m = _TEMPORARY.match(name)
    if m:
        return m.group(1) == tag  # abandoned staging or replaced folder: its builder would hold the lock
    if tag == keep or name == f"{tag}.lock":
        return False
    return name == tag or name.startswith(f"{tag}.")
