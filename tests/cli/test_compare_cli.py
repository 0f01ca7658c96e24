"""``rnndrop compare`` end to end on a tiny budget: search, final table, files, the Optuna study, resume,
interruption, user data, and the errors a new user meets (issue 19, part 4)."""

import csv
import json
import os

import numpy as np
import optuna
import pytest

from rnndrop.cli import main
from rnndrop.study.protocol import SequenceExperiment
from rnndrop.study.report import atomic_write

STRATEGIES = "none,noise_shape,recurrent,keras_both"
TINY = [
    "compare", "--seeds", "2", "--search-seeds", "1", "--search-rates", "0.2,0.4", "--epochs", "2", "--hidden", "6",
    "--mc-samples", "2", "--train-limit", "54", "--test-limit", "36", "--no-progress", "--jobs", "1",
    "--strategies", STRATEGIES,
]


def _listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def _study(out):
    return optuna.load_study(study_name="rnndrop-compare", storage=f"sqlite:///{out / 'study.db'}")


def test_end_to_end_search_final_files_study_and_resume(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    assert main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    names = STRATEGIES.split(",")
    for name in names:
        assert f"\n{name} " in printed
    assert "Rate search (validation NLL" in printed and "test acc" in printed and "MC acc" in printed
    assert "Recommendation: " in printed and "JapaneseVowels: 54 train / 36 test" in printed

    files = _listing(out)
    for f in ("config.json", "study.db", "results.json", "results.csv", "search.csv", "masks.json",
              "dose_response.png", "validation_curves.png", "accuracy.png", "masks.png"):
        assert f in files
    assert not [f for f in files if f.endswith(".tmp")]
    for png in ("dose_response.png", "validation_curves.png", "accuracy.png", "masks.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in result["summary"]] == names
    tuned = result["tuned_rates"]
    assert tuned["none"] == 0.0 and all(tuned[n] in (0.2, 0.4) for n in names[1:])
    for name in names[1:]:  # the tuned rate is the grid rate with the lowest mean validation NLL
        grid = result["search"][name]["grid"]
        assert [g["rate"] for g in grid] == [0.2, 0.4] and all(g["seeds"] == [0] for g in grid)
        assert tuned[name] == min(grid, key=lambda g: (g["mean"], g["rate"]))["rate"]
    assert {c["strategy"] for c in result["comparisons_vs_none"]["results"]} == set(names[1:])
    assert " at rate " in result["recommendation"] or "No " in result["recommendation"]
    assert len(result["runs"]) == 8 and not result["missing"]
    for r in result["runs"]:
        assert r["rate"] == tuned[r["strategy"]]
        assert r["sizes"]["train"] + r["sizes"]["val"] == 54 and r["sizes"]["test"] == 36
        assert 1 <= r["best_epoch"] <= r["epochs_run"] <= 2 and len(r["history"]["val_loss"]) == r["epochs_run"]
        for key in ("test", "test_mc"):
            assert set(r[key]) == {"accuracy", "nll", "ece"}
            assert 0 <= r[key]["accuracy"] <= 1 and 0 <= r[key]["ece"] <= 1 and r[key]["nll"] > 0
    none = [r for r in result["runs"] if r["strategy"] == "none"]
    assert all(r["test"] == r["test_mc"] for r in none)  # no dropout: MC equals deterministic
    for row in result["summary"]:
        accs = [r["test"]["accuracy"] for r in result["runs"] if r["strategy"] == row["strategy"]]
        assert row["accuracy_mean"] == pytest.approx(np.mean(accs))
        assert row["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    masks = json.loads((out / "masks.json").read_text())
    assert masks["recurrent"]["rate"] == tuned["recurrent"] and masks["none"]["panels"] == []

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == names
    assert float(rows[0]["accuracy_mean"]) == pytest.approx(result["summary"][0]["accuracy_mean"], rel=1e-5)

    # Every trial is an ordinary Optuna trial: strategy / rate / seed parameters, the validation NLL as value.
    study = _study(out)
    trials = study.get_trials()
    assert len(trials) == 3 * 2 + 4 * 2 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert {t.user_attrs["phase"] for t in trials} == {"search", "final"}
    assert all(set(t.params) == {"strategy", "rate", "seed"} for t in trials)

    # Running the same command again trains nothing and reports the same table.
    def fail(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(SequenceExperiment, "fit", fail)
    assert main([*TINY, "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert "14 of 14 trials already finished" in again
    assert again.split("Recommendation")[0].split("\n\n")[-1] == printed.split("Recommendation")[0].split("\n\n")[-1]
    # and --report renders the same from the study alone
    assert main(["compare", "--report", "--out", str(out), "--no-plots"]) == 0
    report = capsys.readouterr().out
    assert report.split("Recommendation")[0].split("\n\n")[-1] == printed.split("Recommendation")[0].split("\n\n")[-1]


def test_interrupt_prints_one_line_and_the_next_run_continues(tmp_path, capsys, monkeypatch):
    out = tmp_path / "res"
    original = SequenceExperiment.fit
    calls = []

    def interrupted(self, model, trial):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, model, trial)

    monkeypatch.setattr(SequenceExperiment, "fit", interrupted)
    args = [*TINY, "--seeds", "1", "--strategies", "none,recurrent", "--rate", "0.25", "--out", str(out)]
    assert main(args) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["rnndrop compare: interrupted; finished trials are saved in the study: run "
                                        "the same command again to continue."]
    states = sorted(t.state.name for t in _study(out).get_trials())
    assert states == ["COMPLETE", "FAIL"]  # the interrupted trial is marked failed, nothing half-written
    assert not [f for f in _listing(out) if f.endswith(".tmp")] and "results.json" not in _listing(out)

    monkeypatch.setattr(SequenceExperiment, "fit", original)
    assert main(args) == 0
    assert "1 of 2 trials already finished" in capsys.readouterr().out
    assert "results.json" in _listing(out)
    done = [t for t in _study(out).get_trials() if t.state.name == "COMPLETE"]
    assert sorted(t.params["strategy"] for t in done) == ["none", "recurrent"]  # each unit ran once


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


def test_other_configuration_in_the_study_is_refused(tmp_path, capsys):
    out = tmp_path / "res"
    one = [*TINY, "--seeds", "1", "--strategies", "none", "--no-plots", "--out", str(out)]
    assert main(one) == 0
    capsys.readouterr()
    assert main([*one, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "epochs: 2 -> 3" in err
    assert main([*one, "--search-rates", "0.1,0.2"]) == 2
    assert "searched with other rates" in capsys.readouterr().err
    assert main([*one, "--seeds", "2"]) == 0  # more seeds: the same study goes on
    assert "1 of 2 trials already finished" in capsys.readouterr().out


def test_default_folder_resumes_unfinished_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = SequenceExperiment.fit

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(SequenceExperiment, "fit", stop)
    args = [*TINY, "--seeds", "1", "--strategies", "none", "--no-plots"]
    assert main(args) == 130
    (first,) = tmp_path.glob("rnndrop-results-*")
    monkeypatch.setattr(SequenceExperiment, "fit", original)
    assert main(args) == 0
    assert "(continuing)" in capsys.readouterr().out
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
        (["--search-rates", "0.1,x"], "--search-rates: expected rates like"),
        (["--search-rates", "0.1,1"], "--search-rates must be in (0, 1)"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--search-seeds", "0"], "--search-seeds must be >= 1"),
        (["--dataset", "fashion-mnist"], "needs --data-dir"),
        (["--data-dir", "/nowhere"], "--data-dir is for --dataset fashion-mnist"),
        (["--data", "x.npz", "--text", "y.txt"], "exclude each other"),
        # issue 19, part 4: an empty --strategies ran every strategy; absurd epoch counts were accepted
        (["--strategies", ""], "--strategies is empty"),
        (["--strategies", " , "], "--strategies is empty"),
        (["--epochs", "1000000000"], "--epochs must be <= 10,000, got 1,000,000,000"),
    ],
)
def test_usage_errors(tmp_path, capsys, extra, message):
    assert main([*TINY, "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("rnndrop compare: error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("out", ["/proc/rnndrop-results", "/proc/self/rnndrop/results"])
def test_unwritable_out_is_one_error_line(tmp_path, capsys, out):
    # issue 19, part 4: an --out that cannot be written gave a PermissionError / FileNotFoundError traceback
    assert main([*TINY, "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnndrop compare: error: --out {out}: cannot write there") and len(err.splitlines()) == 1


def test_read_only_out_is_one_error_line(tmp_path, capsys, monkeypatch):
    # A read-only folder (as root, chmod does not stop writes: the write itself is made to fail)
    out = tmp_path / "ro"
    out.mkdir()
    real_write = type(out).write_bytes

    def refuse(self, data):
        if self.parent == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_write(self, data)

    monkeypatch.setattr(type(out), "write_bytes", refuse)
    assert main([*TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"rnndrop compare: error: --out {out}: cannot write there (Permission denied); choose a folder " \
                  "you can write to\n"


@pytest.mark.parametrize(("args", "minimum"), [(["--train-limit", "2"], 18), (["--data", "six.npz"], 6)])
def test_too_small_data_says_the_minimum(tmp_path, capsys, monkeypatch, args, minimum):
    # issue 19, part 4: a tiny data set ended in "torch.cat(): expected a non-empty list"
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "six.npz", X=rng.normal(size=(6, 5, 2)).astype(np.float32), y=np.arange(6) % 3)
    base = [a for a in TINY if a not in ("--train-limit", "54", "--test-limit", "36")]
    assert main([*base, *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "too few to split off a validation part" in err and f"the minimum is 2 per class, {minimum}" in err
    assert len(err.strip().splitlines()) == 1


def test_large_finite_features_are_standardized_in_float64(tmp_path, capsys):
    # issue 19, part 4: channels of 1e20 / 3e37 overflowed the float32 variance (accuracy 0.796 -> 0.407, then NaN
    # metrics and a recommendation printed anyway). In float64 they standardize like any other channel.
    rng = np.random.default_rng(0)
    n, t = 60, 6
    y = np.arange(n) % 2
    x = rng.normal(size=(n, t, 3)) + y[:, None, None]
    x[..., 1] *= 1e20
    x[..., 2] *= 3e37
    np.savez(tmp_path / "big.npz", X=x.astype(np.float32), y=y)
    out = tmp_path / "res"
    assert main(["compare", "--quick", "--epochs", "3", "--hidden", "6", "--mc-samples", "2", "--no-progress",
                 "--no-plots", "--seeds", "2", "--strategies", "none,recurrent", "--data", str(tmp_path / "big.npz"),
                 "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    for r in result["runs"]:
        assert all(v is not None and np.isfinite(v) for v in r["test"].values()), r["test"]
        assert all(v is not None for v in r["history"]["val_loss"])
    assert not result["recommendation"].startswith("No recommendation")


def test_channel_that_cannot_be_standardized_is_refused(tmp_path, capsys):
    from rnndrop.study.data import DataError, SequenceData, channel_stats

    x = np.ones((4, 3, 2))
    x[:, :, 1] = np.nan  # what a loader never lets through, and the statistics refuse anyway
    with pytest.raises(DataError, match=r"channel\(s\) \[1\] cannot be standardized"):
        channel_stats(SequenceData(x, np.full(4, 3), np.arange(4) % 2), where="toy")


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
    advice = printed.split("Recommendation:")[1]
    assert "test bits/char" in advice and "by -" not in advice
    result = json.loads((out / "results.json").read_text())
    for r in result["runs"]:
        for key in ("test", "test_mc"):
            m = r[key]
            assert m["bits_per_char"] == pytest.approx(m["nll"] / np.log(2))
            assert m["perplexity"] == pytest.approx(np.exp(m["nll"]))
    assert (out / "masks.png").exists()


def test_masks_drawn_are_the_masks_the_runs_use(tmp_path):
    # issue 19, part 4: noise_shape, spatial and keras_input runs are identical, but masks.png drew three different
    # masks (each strategy's picture from another seed). masks.json holds what masks.png draws.
    out = tmp_path / "res"
    assert main([*TINY, "--seeds", "1", "--epochs", "1", "--rate", "0.3", "--strategies",
                 "noise_shape,spatial,keras_input", "--out", str(out)]) == 0
    masks = json.loads((out / "masks.json").read_text())
    pictures = [np.array(masks[name]["panels"][0]["values"]) for name in ("noise_shape", "spatial", "keras_input")]
    assert (pictures[0] == 0).any() and all(masks[n]["rate"] == 0.3 for n in masks)
    np.testing.assert_array_equal(pictures[1], pictures[0])  # one stream: one mask ...
    runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["noise_shape"]["test"] == runs["spatial"]["test"]  # ... and one run
    assert pictures[2].shape == pictures[0].shape  # keras_input: the law's shape, the layer's own draws
