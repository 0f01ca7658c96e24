"""The kernel cache and first-use build: locks between processes, atomic publication, cleaning that
never touches a build in use, the first-use notice, a failed build not retried, no compiler.

The compiler itself is replaced by a stub here (a real first-use compile, with two racing processes,
runs in ``tests/packaging/test_install.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rnndrop._kernels import build, cache, loader

TAG_A, TAG_B = "0123456789abcdef", "fedcba9876543210"


def _hold_lock(path: Path, shared: bool = False) -> subprocess.Popen:
    """Another process holding ``path``'s lock until its stdin closes."""
    # cache.py needs only the standard library: loaded alone, without importing torch (seconds).
    code = textwrap.dedent(f"""
        import importlib.util, sys
        from pathlib import Path
        spec = importlib.util.spec_from_file_location("kernel_cache", {cache.__file__!r})
        cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(cache)
        with cache.locked(Path({str(path)!r}), shared={shared}):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    proc.wait(timeout=60)


def test_exclusive_lock_excludes_other_processes(tmp_path) -> None:
    lock = tmp_path / "t.lock"
    holder = _hold_lock(lock)
    try:
        waited = []
        with pytest.raises(cache.LockBusy), cache.locked(lock, blocking=False, on_wait=lambda: waited.append(1)):
            pass
        assert waited == [1]
        with pytest.raises(cache.LockBusy), cache.locked(lock, shared=True, blocking=False):
            pass  # a loader never reads a library while it is being built
    finally:
        _release(holder)
    with cache.locked(lock, blocking=False):  # released when its holder ends
        pass


def test_shared_locks_coexist_but_exclude_a_builder(tmp_path) -> None:
    lock = tmp_path / "t.lock"
    reader = _hold_lock(lock, shared=True)
    try:
        with cache.locked(lock, shared=True, blocking=False):
            pass
        with pytest.raises(cache.LockBusy), cache.locked(lock, blocking=False):
            pass
    finally:
        _release(reader)


def test_lock_waits_for_the_holder(tmp_path) -> None:
    lock = tmp_path / "t.lock"
    holder = _hold_lock(lock)
    threading.Timer(0.5, _release, args=(holder,)).start()
    start = time.perf_counter()
    with cache.locked(lock):
        assert time.perf_counter() - start > 0.3


def test_lock_without_fcntl_uses_an_exclusive_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(cache, "fcntl", None)
    lock = tmp_path / "t.lock"
    with cache.locked(lock):
        assert lock.is_file()
        with pytest.raises(cache.LockBusy), cache.locked(lock, blocking=False):
            pass
    assert not lock.exists()
    lock.write_text("12345")  # left behind by a process that died long ago
    old = time.time() - cache.STALE_LOCK_SECONDS - 10
    os.utime(lock, (old, old))
    with cache.locked(lock, blocking=False):
        pass


def test_a_read_only_cache_loads_without_locking(tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    tmp_path.chmod(0o555)
    try:
        with cache.locked(tmp_path / "t.lock", shared=True):
            pass
        with pytest.raises(OSError), cache.locked(tmp_path / "t.lock"):
            pass
    finally:
        tmp_path.chmod(0o755)


def _fake_build(root: Path, tag: str) -> Path:
    (root / tag).mkdir(parents=True)
    lib = root / tag / f"rnndrop_cpu_{tag}.so"
    lib.write_bytes(b"library")
    return lib


def test_clean_removes_unused_builds_and_keeps_the_current_one_and_those_in_use(tmp_path) -> None:
    current = _fake_build(tmp_path, "1111111111111111")
    _fake_build(tmp_path, TAG_A)
    (tmp_path / f"{TAG_A}.failed").write_text("log")
    _fake_build(tmp_path, TAG_B)
    abandoned = tmp_path / f".staging-{TAG_A}-999-x"
    abandoned.mkdir()
    (tmp_path / "notes.txt").write_text("not ours")
    loading = _hold_lock(cache.lock_path(tmp_path, TAG_B), shared=True)  # another process loads B right now
    try:
        removed, in_use = cache.clean(tmp_path, keep="1111111111111111")
    finally:
        _release(loading)
    assert in_use == [TAG_B]
    assert sorted(removed) == sorted([TAG_A, f"{TAG_A}.failed", abandoned.name])
    assert current.is_file() and (tmp_path / TAG_B).is_dir() and (tmp_path / "notes.txt").is_file()
    assert not (tmp_path / TAG_A).exists()


def test_publish_is_one_rename_and_never_overwrites_a_finished_build(tmp_path) -> None:
    first = tmp_path / "s1"
    first.mkdir()
    (first / "lib.so").write_text("first")
    cache.publish(first, tmp_path / "final")
    second = tmp_path / "s2"
    second.mkdir()
    (second / "lib.so").write_text("second")
    cache.publish(second, tmp_path / "final")  # lost a race: the first build stays, ours is dropped
    assert (tmp_path / "final" / "lib.so").read_text() == "first" and not second.exists()
    third = tmp_path / "s3"
    third.mkdir()
    (third / "lib.so").write_text("third")
    cache.publish(third, tmp_path / "final", replace=True)  # --force
    assert (tmp_path / "final" / "lib.so").read_text() == "third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


# ---------------------------------------------------------------------------------------------- first use
@pytest.fixture
def empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNDROP_KERNEL_DIR", str(tmp_path))
    monkeypatch.delenv("RNNDROP_BUILD_ON_FIRST_USE", raising=False)
    monkeypatch.delenv("RNNDROP_DISABLE_KERNELS", raising=False)
    monkeypatch.setattr(loader, "_cache", None)  # restored afterwards: the session's loaded extension
    return tmp_path


def _stub_compiler(monkeypatch, calls: list, fail: bool = False) -> None:
    def fake_compile(directory: Path, name: str, verbose: bool) -> None:
        calls.append(directory)
        directory.mkdir()
        (directory / "build.ninja").write_text("objects and ninja files are not published")
        if fail:
            err = build.BuildError("compiling the CPU extension failed (exit status 1):\nrnn.cpp: error")
            err.log = "full compiler output"
            raise err
        (directory / f"{name}.so").write_bytes(b"stub library")

    monkeypatch.setattr(build, "_compile", fake_compile)


def test_first_use_builds_into_the_cache_with_a_notice(monkeypatch, empty_cache, capsys) -> None:
    calls: list = []
    _stub_compiler(monkeypatch, calls)
    other = _fake_build(empty_cache, TAG_A)  # another version's build in the shared cache
    path = loader.library_path()
    assert build.build_on_first_use(path) is None
    assert path.read_bytes() == b"stub library" and len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # only the library is kept
    assert other.is_file()  # a build never deletes another version's build
    assert not [p for p in empty_cache.iterdir() if p.name.startswith(".staging")]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rnndrop: compiling the fused CPU kernel" in err and "done in" in err
    assert build.TYPICAL_BUILD in err and str(path.parent) in err
    assert build.build_on_first_use(path) is None and len(calls) == 1  # up to date: nothing to do


def test_a_failed_build_is_reported_and_not_retried_on_first_use(monkeypatch, empty_cache, capsys) -> None:
    calls: list = []
    _stub_compiler(monkeypatch, calls, fail=True)
    path = loader.library_path()
    reason = build.build_on_first_use(path)
    assert "rnn.cpp: error" in reason and loader.BUILD_COMMAND in reason
    assert cache.failure_path(empty_cache, path.parent.name).read_text().endswith("full compiler output")
    assert "failed after" in capsys.readouterr().err
    again = build.build_on_first_use(path)
    assert len(calls) == 1 and "failed before" in again and loader.BUILD_COMMAND in again
    monkeypatch.setattr(build, "_compile", lambda d, n, v: (d.mkdir(), (d / f"{n}.so").write_bytes(b"ok")))
    assert build.main([]) == 1  # the explicit command retries (the stub library then fails to load) ...
    assert path.is_file() and not cache.failure_path(empty_cache, path.parent.name).exists()  # ... and clears it


def test_no_compiler_gives_the_exact_command_and_builds_nothing(monkeypatch, empty_cache, tmp_path_factory) -> None:
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty_bin")))
    monkeypatch.delenv("CXX", raising=False)
    reason = build.build_on_first_use(loader.library_path())
    assert "no C++ compiler" in reason and f"{sys.executable} -m rnndrop build-kernels" in reason
    assert list(empty_cache.iterdir()) == []


def test_first_use_without_write_access_names_the_variable(monkeypatch, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("RNNDROP_KERNEL_DIR", str(blocker / "kernels"))
    monkeypatch.setattr(build, "_compile", lambda *a: pytest.fail("must not compile"))
    reason = build.build_on_first_use(loader.library_path())
    assert "not writable" in reason and "RNNDROP_KERNEL_DIR" in reason


def test_build_on_first_use_can_be_switched_off(monkeypatch, empty_cache) -> None:
    monkeypatch.setenv("RNNDROP_BUILD_ON_FIRST_USE", "0")
    monkeypatch.setattr(build, "build_on_first_use", lambda path: pytest.fail("must not build"))
    monkeypatch.setattr(loader, "_cache", None)
    assert loader.load() is None and "RNNDROP_BUILD_ON_FIRST_USE=0" in loader.unavailable_reason()


def test_default_cache_is_per_user_and_never_site_packages(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("RNNDROP_KERNEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert loader.kernel_root() == tmp_path / "xdg" / "rnndrop" / "kernels"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert loader.kernel_root() == tmp_path / "home" / ".cache" / "rnndrop" / "kernels"
    package = Path(loader.__file__).resolve().parents[1]
    assert package not in loader.library_path().resolve().parents
