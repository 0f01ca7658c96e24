"""Many workers on one study: two processes on one SQLite file; several on a real PostgreSQL server (started here
in a temporary folder), one of them killed mid-trial. Every unit of the plan is finished exactly once, the
killed worker's trial is retried, and Optuna's own tools read the study as it is."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from rnndrop.study.engine import WORKER_ATTR, _unit_of  # noqa: E402

RNNDROP = [str(Path(sys.executable).with_name("rnndrop"))] if Path(sys.executable).with_name("rnndrop").exists() \
    else [sys.executable, "-m", "rnndrop"]
PLAN = ["--strategies", "none,recurrent,weight_dropout", "--search-rates", "0.2,0.4", "--search-seeds", "1",
        "--seeds", "3"]
UNITS = 2 * 2 * 1 + 3 * 3  # search: 2 strategies x 2 rates x 1 seed; final: 3 strategies x 3 seeds
TINY = ["compare", *PLAN, "--hidden", "6", "--mc-samples", "2", "--train-limit", "54", "--test-limit", "36",
        "--no-plots", "--jobs", "1", "--heartbeat", "1"]


def _worker(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:
        return subprocess.Popen([*RNNDROP, *args], stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _check_exactly_once(study) -> list:
    trials = study.get_trials()
    finished = Counter(_unit_of(t).key for t in trials if t.state.name in ("COMPLETE", "PRUNED"))
    assert len(finished) == UNITS, sorted(finished)
    assert set(finished.values()) == {1}, [k for k, n in finished.items() if n > 1]  # none ran twice
    assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]
    return trials


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    out = tmp_path / "shared"
    procs = [_worker([*TINY, "--epochs", "3", "--heartbeat", "5", "--out", str(out)], tmp_path / f"w{k}.log")
             for k in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, [(tmp_path / f"w{k}.log").read_text()[:3000] for k in range(2)]
    study = optuna.load_study(study_name="rnndrop-compare", storage=f"sqlite:///{out / 'study.db'}")
    trials = _check_exactly_once(study)
    failed = [t.user_attrs.get("failure", "") for t in trials if t.state.name == "FAIL"]
    assert all(f.startswith(("stale", "duplicate")) for f in failed), failed  # retried, never lost or doubled
    workers = {t.system_attrs[WORKER_ATTR] for t in trials}
    assert len(workers) == 2, workers  # both processes ran trials

    # Optuna's own tools read the study as it is (plotly figures; optuna-dashboard reads the same storage)
    pytest.importorskip("plotly")
    from optuna import visualization as vis

    for figure in (vis.plot_optimization_history(study), vis.plot_slice(study, params=["rate"]),
                   vis.plot_intermediate_values(study), vis.plot_parallel_coordinate(study)):
        assert figure.data, figure
    slice_points = vis.plot_slice(study, params=["rate"]).data[0]
    assert sorted(set(slice_points.x)) == [0.0, 0.2, 0.4]


# ---------------------------------------------------------------------------------------------- PostgreSQL
def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A PostgreSQL server of its own in a temporary folder (initdb + pg_ctl, trust auth on 127.0.0.1).

    PostgreSQL refuses to run as root: then the server runs as the ``postgres`` user that Debian's package
    creates (``runuser``). Skipped, with the reason, only when no server can be run here."""
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server here (initdb / pg_ctl): `make test` installs Debian's postgresql "
                    "(scripts/ensure-postgres.sh) when it runs as root with apt")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg (test extra) is missing")
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="rnndrop-pg-"))
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(folder)
            pytest.skip("running as root without runuser to start the server as 'postgres'")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = [runuser, "-u", "postgres", "--"]
    data, port = folder / "data", _free_port()
    subprocess.run([*prefix, initdb, "-D", str(data), "-A", "trust", "-U", "rnndrop", "--no-sync"], check=True,
                   capture_output=True, timeout=120)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=rnndrop dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE study")
        yield f"postgresql+psycopg://rnndrop@127.0.0.1:{port}/study"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True,
                       timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_workers_on_postgres_one_killed_mid_trial(tmp_path, postgres_url):
    args = [*TINY, "--epochs", "12", "--storage", postgres_url, "--study", "jv"]
    victim = _worker([*args, "--out", str(tmp_path / "victim")], tmp_path / "victim.log")
    study = None
    deadline = time.monotonic() + 300
    killed = None
    while time.monotonic() < deadline and killed is None:  # wait until the victim runs a trial, then kill it
        time.sleep(0.1)
        with contextlib.suppress(Exception):
            study = study or optuna.load_study(study_name="jv", storage=postgres_url)
        if study is None:
            continue
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.system_attrs.get(WORKER_ATTR, "").endswith(f":{victim.pid}"):
                victim.send_signal(signal.SIGKILL)
                killed = t.number
                break
        assert victim.poll() is None or killed is not None, (tmp_path / "victim.log").read_text()[-2000:]
    assert killed is not None, "the victim never ran a trial"
    victim.wait(timeout=60)
    others = [_worker([*args, "--out", str(tmp_path / f"w{k}")], tmp_path / f"w{k}.log") for k in range(3)]
    for k, p in enumerate(others):
        assert p.wait(timeout=900) == 0, (tmp_path / f"w{k}.log").read_text()[-3000:]
    trials = _check_exactly_once(study)
    dead = study.get_trials()[killed]
    assert dead.state.name == "FAIL" and "stale" in dead.user_attrs["failure"]
    failed = [t for t in trials if t.state.name == "FAIL" and t.number != killed]
    # Besides the killed trial, a failure may only be a twin enqueued by a worker that started while the dead
    # trial was being retried: closed unrun as "duplicate of trial N" (so the unit still ran once).
    assert all(t.user_attrs.get("failure", "").startswith("duplicate of trial") and "record" not in t.user_attrs
               for t in failed), [(t.number, t.user_attrs) for t in failed]
    retried = [t for t in trials if _unit_of(t) == _unit_of(dead) and t.state.name in ("COMPLETE", "PRUNED")]
    assert len(retried) == 1 and retried[0].number > killed  # its unit ran again, once
    # Each survivor wrote the same report, and --report renders it from the server at any time.
    report = tmp_path / "report"
    done = subprocess.run([*RNNDROP, "compare", "--report", "--storage", postgres_url, "--study", "jv", "--out",
                           str(report), "--no-plots"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    import json

    result = json.loads((report / "results.json").read_text())
    assert len(result["runs"]) == 9 and not result["missing"]
    assert result["recommendation"] == json.loads((tmp_path / "w0" / "results.json").read_text())["recommendation"]
