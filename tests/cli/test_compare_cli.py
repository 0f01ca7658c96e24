"""``rnndrop compare`` end to end on a tiny budget: outputs, resume, interruption, user data, errors."""

import csv
import json
import os

import numpy as np
import pytest

import rnndrop.cli.runner as runner
from rnndrop.cli import main
from rnndrop.cli.report import atomic_write

STRATEGIES = "none,noise_shape,recurrent,keras_both"
TINY = [
    "compare", "--quick", "--seeds", "2", "--epochs", "2", "--hidden", "6", "--mc-samples", "2",
    "--train-limit", "54", "--test-limit", "36", "--no-progress", "--strategies", STRATEGIES,
]


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_end_to_end_files_table_json_and_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = STRATEGIES.split(",")
    for name in names:
        assert f"\n{name} " in printed
    assert "test acc" in printed and "MC acc" in printed and "ECE" in printed
    assert "Recommendation: " in printed
    assert "JapaneseVowels: 54 train / 36 test" in printed

    files = _listing(out)
    for f in ("config.json", "results.json", "results.csv", "validation_curves.png", "accuracy.png", "masks.png"):
        assert f in files
    runs = [f for f in files if f.startswith("runs/") and f.endswith(".json")]
    assert len(runs) == len(names) * 2
    assert not [f for f in files if f.endswith(".tmp")]
    for png in ("validation_curves.png", "accuracy.png", "masks.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in result["summary"]] == names
    assert result["protocol"]["seeds"] == [0, 1] and result["protocol"]["epochs"] == 2
    assert {c["strategy"] for c in result["comparisons_vs_none"]["results"]} == set(names[1:])
    assert result["comparisons_vs_none"]["metric"] == "accuracy"
    assert isinstance(result["recommendation"], str) and result["recommendation"]
    assert len(result["runs"]) == 8
    for r in result["runs"]:
        assert r["sizes"]["train"] + r["sizes"]["val"] == 54 and r["sizes"]["test"] == 36
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 2
        assert len(r["history"]["val_loss"]) == r["epochs_run"]
        for key in ("test", "test_mc"):
            assert set(r[key]) == {"accuracy", "nll", "ece"}
            assert 0 <= r[key]["accuracy"] <= 1 and 0 <= r[key]["ece"] <= 1 and r[key]["nll"] > 0
    none = [r for r in result["runs"] if r["strategy"] == "none"]
    assert all(r["test"] == r["test_mc"] for r in none)  # no dropout: MC equals deterministic
    for row in result["summary"]:
        accs = [r["test"]["accuracy"] for r in result["runs"] if r["strategy"] == row["strategy"]]
        assert row["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert row["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == names
    assert float(rows[0]["accuracy_mean"]) == pytest.approx(result["summary"][0]["accuracy_mean"], rel=1e-5)

    # Re-running the same command trains nothing and reports the same table.
    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(runner, "train_run", fail)
    assert main([*TINY, "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "8 of 8 runs already finished" in again
    assert again.split("Recommendation")[0].split("\n\n")[-1] == printed.split("Recommendation")[0].split("\n\n")[-1]


def test_interrupt_leaves_whole_files_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    original = runner.train_run
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "train_run", interrupted)
    args = [*TINY, "--seeds", "1", "--strategies", "none,recurrent", "--out", str(out)]
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    files = _listing(out)
    assert [f for f in files if f.startswith("runs/") and f.endswith(".json")] == ["runs/none-p0-seed0.json"]
    assert not [f for f in files if f.endswith(".tmp")] and "results.json" not in files
    json.loads((out / "runs" / "none-p0-seed0.json").read_text())

    monkeypatch.setattr(runner, "train_run", original)
    assert main(args) == 0
    assert "1 of 2 runs already finished" in capsys.readouterr().out
    assert "results.json" in _listing(out)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(target) as f:
        f.write("half")
        raise RuntimeError
    assert target.read_text() == "old" and _listing(tmp_path) == ["f.json"]
    with atomic_write(target) as f:
        f.write("new")
    assert target.read_text() == "new"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_other_configuration_in_out_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "res"
    assert main([*TINY, "--seeds", "1", "--strategies", "none", "--no-plots", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main([*TINY, "--seeds", "1", "--strategies", "none", "--epochs", "3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "epochs: 2 -> 3" in err


def test_default_folder_resumes_unfinished_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = runner.train_run
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_run", stop)
    args = [*TINY, "--seeds", "1", "--strategies", "none", "--no-plots"]
    assert main(args) == 130
    (first,) = tmp_path.glob("rnndrop-results-*")
    monkeypatch.setattr(runner, "train_run", original)
    assert main(args) == 0
    assert "(resuming)" in capsys.readouterr().out
    assert list(tmp_path.glob("rnndrop-results-*")) == [first]
    assert (first / "results.json").exists()


def test_user_npz_and_unavailable_strategies(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.arange(40) % 2
    x = rng.normal(size=(40, 6, 2)).astype(np.float32) + y[:, None, None]
    np.savez(tmp_path / "mine.npz", X=x, y=y, lengths=rng.integers(3, 7, size=40))
    out = tmp_path / "res"
    code = main(["compare", "--quick", "--epochs", "1", "--hidden", "4", "--mc-samples", "2", "--no-progress",
                 "--no-plots", "--cell", "rnn", "--strategies", "none,semeniuta,keras_both_shared,recurrent",
                 "--data", str(tmp_path / "mine.npz"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mine.npz: 28 train / 12 test sequences (test split off the given data)" in printed
    assert "semeniuta" in printed and "unavailable: not defined for the RNN cell" in printed
    result = json.loads((out / "results.json").read_text())
    unavailable = {s["name"] for s in result["strategies"] if not s["available"]}
    assert unavailable == {"semeniuta", "keras_both_shared"}
    with open(out / "results.csv", newline="") as f:
        assert {r["strategy"]: r["unavailable"] for r in csv.DictReader(f)}["semeniuta"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--strategies", "none,bogus"], "unknown ['bogus']"),
        (["--rate", "1.5"], "--rate must be in (0, 1)"),
        (["--rates", "zoneout"], "expected NAME=P"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--dataset", "fashion-mnist"], "needs --data-dir"),
        (["--data-dir", "/nowhere"], "--data-dir is for --dataset fashion-mnist"),
        (["--data", "x.npz", "--text", "y.txt"], "exclude each other"),
    ],
)
def test_usage_errors(tmp_path, capsys, extra, message):
    assert main([*TINY, "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err


def test_bad_data_file_reports_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,time,f,label\na,0,1,x\nb,0,1,x\n")
    assert main(["compare", "--quick", "--data", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "single class" in capsys.readouterr().err


def test_list_strategies(capsys):
    assert main(["compare", "--list-strategies"]) == 0
    printed = capsys.readouterr().out
    for name in ("none", "input_dropout_per_step", "noise_shape", "spatial", "output_dropout", "keras_input",
                 "recurrent", "keras_both", "keras_both_shared", "weight_dropout", "zoneout", "semeniuta"):
        assert f"\n{name}" in "\n" + printed


def test_language_model_mode(tmp_path, capsys):
    rng = np.random.default_rng(0)
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat. "]
    (tmp_path / "t.txt").write_text("".join(rng.choice(words, size=700)))
    out = tmp_path / "res"
    code = main(["compare", "--quick", "--text", str(tmp_path / "t.txt"), "--seq-len", "16", "--epochs", "1",
                 "--hidden", "8", "--seeds", "2", "--mc-samples", "2", "--strategies", "none,output_dropout,recurrent",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "character language model" in printed and "bits/char" in printed and "perplexity" in printed
    assert "test bits/char" in printed.split("Recommendation:")[1]
    result = json.loads((out / "results.json").read_text())
    for r in result["runs"]:
        for key in ("test", "test_mc"):
            m = r[key]
            assert m["bits_per_char"] == pytest.approx(m["nll"] / np.log(2))
            assert m["perplexity"] == pytest.approx(np.exp(m["nll"]))
    assert (out / "masks.png").exists()
