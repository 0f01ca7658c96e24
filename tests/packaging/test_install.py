"""``pip install rnndrop`` as a user gets it: the built wheel (and the sdist) in a fresh virtual
environment, used from outside the repository by an unprivileged user whose site-packages is
read-only. The first training call compiles the fused kernel into the user's cache (two processes
racing on the empty cache compile it once) and runs on it; without a compiler, one warning at the
user's line.

Cost: the venvs reuse this interpreter's torch and numpy through a ``.pth`` line (installing torch
again would take minutes); rnndrop goes in with ``pip install --no-deps``. One real compile (about a
minute on 2 cores) is the bulk of it.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dist_support import ROOT, clean_env, site_packages

from rnndrop._kernels import loader

TRAIN = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("always")
    import torch
    import rnndrop
    from rnndrop._kernels import loader

    layer = rnndrop.LSTM(8, 16, batch_first=True, input_dropout=0.2, recurrent_dropout=0.2)
    out, _ = layer(torch.randn(4, 5, 8))
    out.sum().backward()
    print(json.dumps({"backend": layer.last_backend, "reason": layer.last_backend_reason,
                      "package": rnndrop.__file__, "library": str(loader.library_path())}))
""")


@dataclass(frozen=True)
class User:
    """How to run a command as an unprivileged user: a command prefix and ``subprocess`` arguments."""

    prefix: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)
    uid: int | None = None  # the home folder's owner when it is another user


def _unprivileged(python: Path) -> User:
    """As root: the ``nobody`` user if it can run ``python``; else root without capabilities.

    Without ``CAP_DAC_OVERRIDE`` (``setpriv --bounding-set=-all``) root obeys file permissions like any
    user, so a read-only site-packages is read-only for it. (``nobody`` cannot run an interpreter that
    lives under a private home such as ``/root/.pyenv``.) Not root: the current user already is one.
    """
    if os.geteuid() != 0:
        return User()
    try:
        nobody = pwd.getpwnam("nobody")
        as_nobody = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd="/", timeout=120,
                               **as_nobody)
        if probe.returncode == 0:
            return User(kwargs=as_nobody, uid=nobody.pw_uid)
    except (KeyError, OSError):
        pass
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, 'nobody' cannot run this interpreter and setpriv (util-linux) is missing")
    return User(prefix=(setpriv, "--bounding-set=-all", "--"))


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are private to us, and the other user must reach the venvs.
    path = Path(tempfile.mkdtemp(prefix="rnndrop-install-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _venv(where: Path) -> Path:
    """A fresh venv (no pip) that sees this interpreter's torch and numpy; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # A .pth line appends the outer site-packages *after* the venv's own: the rnndrop under test (in the
    # venv) wins, and the outer editable rnndrop is not importable (its finder is a .pth of its own,
    # which Python processes only in real site folders).
    Path(purelib, "outer_torch.pth").write_text(str(site_packages()) + "\n")
    return python


def _pip_install(python: Path, target: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", "-q", str(target)],
        capture_output=True, text=True, env=clean_env(), timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _installed_read_only(where: Path, dist: Path) -> tuple[Path, Path]:
    """``dist`` installed into a fresh venv at ``where``, which is then made read-only; ``(python, venv)``."""
    python = _venv(where)
    _pip_install(python, dist)
    venv = python.parent.parent
    _read_only(venv)
    return python, venv


def _read_only(tree: Path) -> None:
    for path in [tree, *tree.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _snapshot(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*")}


def _home(workdir: Path, user: User) -> Path:
    home = workdir / "home"
    if not home.exists():
        home.mkdir()
        if user.uid is not None:
            os.chown(home, user.uid, -1)
    return home


def _start(python: Path, home: Path, user: User) -> subprocess.Popen:
    env = clean_env(HOME=str(home))
    env.pop("XDG_CACHE_HOME", None)
    return subprocess.Popen([*user.prefix, str(python), "-c", TRAIN], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **user.kwargs)


def _finish(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


@pytest.mark.slow
def test_wheel_first_call_compiles_once_for_racing_processes_and_runs_fused(dists, workdir) -> None:
    python, venv = _installed_read_only(workdir / "venv-wheel", dists.wheel)
    before = _snapshot(venv)
    user = _unprivileged(python)
    home = _home(workdir, user)
    probe = subprocess.run([*user.prefix, str(python), "-c", f"open({str(venv / 'probe')!r}, 'w')"],
                           capture_output=True, text=True, cwd=home, **user.kwargs)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr  # site-packages is read-only for them

    # Two processes on an empty cache at once (two DDP ranks, two jobs): one compiles, one waits.
    procs = [_start(python, home, user) for _ in range(2)]
    results = [_finish(p) for p in procs]

    for info, err in results:
        assert info["backend"] == "fused", (info["reason"], err[-2000:])
        assert Path(info["package"]).is_relative_to(venv), info["package"]  # the installed wheel, not the checkout
        assert not Path(info["package"]).is_relative_to(ROOT)
        assert Path(info["library"]).is_relative_to(home / ".cache" / "rnndrop" / "kernels")
        assert "Warning" not in err, err
    errs = [err for _, err in results]
    assert sum(e.count("rnndrop: compiling the fused CPU kernel") for e in errs) == 1, errs
    assert sum("waiting for another process" in e for e in errs) == 1, errs
    assert _snapshot(venv) == before  # nothing written into site-packages
    cache = home / ".cache" / "rnndrop" / "kernels"
    (tag_dir,) = [p for p in cache.iterdir() if p.is_dir()]
    assert sorted(p.name for p in cache.iterdir()) == sorted([tag_dir.name, f"{tag_dir.name}.lock"])  # no leftovers
    assert [p.name for p in tag_dir.iterdir()] == [Path(results[0][0]["library"]).name]


@pytest.mark.slow
def test_sdist_installs_and_reuses_the_users_build(dists, workdir) -> None:
    # Runs after the wheel test (same module, same home): the sdist ships the same sources, so the
    # same build tag, and the user's cache already holds it — no second compile.
    python, venv = _installed_read_only(workdir / "venv-sdist", dists.sdist)
    user = _unprivileged(python)
    home = _home(workdir, user)
    tag = loader.build_tag()  # this checkout's: the same sources, torch, Python and CPU
    prebuilt = (home / ".cache" / "rnndrop" / "kernels" / tag).is_dir()
    info, err = _finish(_start(python, home, user))
    assert info["backend"] == "fused", (info["reason"], err[-2000:])
    assert Path(info["package"]).is_relative_to(venv)
    assert Path(info["library"]).parent.name == tag
    if prebuilt:  # (run alone, this test compiles first)
        assert "compiling" not in err, err
    assert "Warning" not in err, err


def test_without_a_compiler_one_warning_at_the_users_line(tmp_path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import torch
        import rnndrop

        layer = rnndrop.GRU(3, 4, recurrent_dropout=0.2)
        x = torch.randn(5, 2, 3)
        for _ in range(3):
            out, h = layer(x)
        print(layer.last_backend)
    """))
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = clean_env(PATH=str(empty_bin), RNNDROP_KERNEL_DIR=str(tmp_path / "cache"))
    env.pop("CXX", None)
    result = subprocess.run([sys.executable, "-W", "always", str(script)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    warnings = [line for line in result.stderr.splitlines() if "rnndrop" in line and "Warning:" in line]
    assert len(warnings) == 1, result.stderr  # once per process, not once per call
    assert warnings[0].startswith(f"{script}:7: KernelFallbackWarning:"), warnings[0]  # the `layer(x)` line
    for part in ("no C++ compiler", f"{sys.executable} -m rnndrop build-kernels", "349 ms against 87 ms",
                 "RNNDROP_DISABLE_KERNELS=1"):
        assert part in warnings[0], part
    assert "compiling" not in result.stderr and not (tmp_path / "cache").exists()
