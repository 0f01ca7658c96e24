"""Progress output of ``rnndrop compare``: bars only on a terminal; a log gets one line per trial."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rnndrop.cli.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _simulate(progress: Progress) -> None:
    for seed in (0, 1):
        on_epoch = progress.start_run(f"final recurrent rate 0.2 seed {seed}", epochs=3)
        for epoch in range(1, 4):
            on_epoch(epoch, {"val_loss": 0.5, "val_accuracy": 0.8})
        progress.finish_run(f"final recurrent rate 0.2 seed {seed}", "test accuracy 0.875", 1.25)
    progress.close()


def test_bars_on_a_terminal_lines_elsewhere_nothing_with_no_progress() -> None:
    pytest.importorskip("tqdm")
    out, err = io.StringIO(), _Terminal()
    progress = Progress(2, 0, enabled=True, out=out, err=err)
    _simulate(progress)
    assert progress.mode == "bars" and "\r" in err.getvalue() and out.getvalue() == ""

    out, err = io.StringIO(), io.StringIO()
    progress = Progress(3, 1, enabled=True, out=out, err=err)  # one run was finished before (resumed)
    _simulate(progress)
    assert progress.mode == "lines" and err.getvalue() == ""
    assert out.getvalue().splitlines() == [
        "trial 2/3 done: final recurrent rate 0.2 seed 0, test accuracy 0.875, 1.2 s",
        "trial 3/3 done: final recurrent rate 0.2 seed 1, test accuracy 0.875, 1.2 s",
    ]

    out, err = io.StringIO(), _Terminal()
    _simulate(Progress(2, 0, enabled=False, out=out, err=err))
    assert out.getvalue() == err.getvalue() == ""


@pytest.mark.slow
def test_redirected_compare_writes_a_log_without_escape_sequences(tmp_path) -> None:
    pytest.importorskip("tqdm")
    script = Path(sys.executable).with_name("rnndrop")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "rnndrop"]
    log = tmp_path / "log"
    with log.open("w") as f:  # `rnndrop compare --quick ... > log 2>&1`
        result = subprocess.run(
            [*command, "compare", "--quick", "--strategies", "none,recurrent", "--train-limit", "54",
             "--test-limit", "36", "--no-plots", "--out", str(tmp_path / "out"), "--rate", "0.3"],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=600, cwd=tmp_path,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\x1b" not in text and "\r" not in text, "progress bars (escape sequences) in a redirected log"
    runs = re.findall(r"^trial (\d)/2 done: final (\w+) rate ([\d.]+) seed 0, test accuracy ([\d.]+), ([\d.]+) s$",
                      text, re.M)
    assert [(n, s, r) for n, s, r, _, _ in runs] == [("1", "none", "0"), ("2", "recurrent", "0.3")], text
    assert all(0 <= float(acc) <= 1 for _, _, _, acc, _ in runs)
    assert "Recommendation: " in text
