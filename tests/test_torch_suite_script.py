"""scripts/torch_suite/run.py without PyTorch's test files: its arguments, its errors, its JUnit summary."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "torch_suite" / "run.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("torch_suite_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(run, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        run.parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_missing_checkout_argument_is_named(run, capsys, monkeypatch):
    monkeypatch.delenv("PYTORCH_SRC", raising=False)
    assert "--pytorch PATH is required" in _error(run, capsys, [])


def test_nonexistent_checkout(run, capsys, tmp_path):
    err = _error(run, capsys, ["--pytorch", str(tmp_path / "nowhere")])
    assert "--pytorch" in err and "no such folder" in err


def test_checkout_without_test_files(run, capsys, tmp_path):
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_nn.py").write_text("")
    err = _error(run, capsys, ["--pytorch", str(tmp_path)])
    assert "--pytorch" in err and "test/test_modules.py" in err and "test/test_nn.py" not in err


def test_checkout_or_its_test_folder(run, tmp_path, monkeypatch):
    monkeypatch.delenv("PYTORCH_SRC", raising=False)
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    for name in run.TEST_FILES:
        (test_dir / name).write_text("")
    for path in (tmp_path, test_dir):
        args = run.parse_args(["--pytorch", str(path)])
        assert args.test_dir == test_dir.resolve()
        assert args.threads == [1, 2] and args.modes == ["baseline", "swap"]
    monkeypatch.setenv("PYTORCH_SRC", str(tmp_path))
    assert run.parse_args(["--threads", "2", "--modes", "swap"]).test_dir == test_dir.resolve()


def test_junit_summary_groups(run, tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        "<testsuites><testsuite>"
        '<testcase classname="test_modules.TestModuleCPU" name="test_forward_nn_LSTM_cpu_float32"/>'
        '<testcase classname="test_modules.TestModuleCPU" name="test_grad_nn_GRU_cpu_float64"><failure/></testcase>'
        '<testcase classname="test_modules.TestModuleCPU" name="test_to_nn_RNN_swap_True_cpu_float32"/>'
        '<testcase classname="test_modules.TestModuleCPU" name="test_to_empty_nn_RNN_cpu_float32"/>'
        '<testcase classname="test_modules.TestModuleCPU" name="test_cpu_gpu_parity_nn_RNN_cpu_float32">'
        "<skipped/></testcase>"
        '<testcase classname="test_nn.TestNN" name="test_rnn_args_check"><error/></testcase>'
        "</testsuite></testsuites>"
    )
    s = run.summarize_xml(xml)
    assert s["groups"]["test_modules"] == {"passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert s["groups"]["newer"] == {"passed": 2, "failed": 0, "errors": 0, "skipped": 0}
    assert s["groups"]["test_nn"] == {"passed": 0, "failed": 0, "errors": 1, "skipped": 0}
    assert s["failing"] == [
        "test_modules.TestModuleCPU::test_grad_nn_GRU_cpu_float64",
        "test_nn.TestNN::test_rnn_args_check",
    ]
    text = run.table([dict(s, tag="swap_t2", mode="swap", threads=2)])
    assert "swap_t2" in text and "1 / 3" in text and "2 / 2" in text
