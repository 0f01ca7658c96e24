"""Run PyTorch's own recurrent-layer tests against torch.nn and with rnndrop's classes swapped in.

The judge of "drop-in replacement" is PyTorch's test code, which is not copied into this repository: the
tests are read from a PyTorch source checkout of the tag matching the installed torch, e.g.::

    git clone --depth 1 --branch v2.13.0 https://github.com/pytorch/pytorch /tmp/pytorch
    .venv/bin/python scripts/torch_suite/run.py --pytorch /tmp/pytorch

(``--pytorch`` takes the checkout or its ``test/`` folder; only ``test/test_modules.py`` and
``test/test_nn.py`` are read.) What runs, CPU only (``CUDA_VISIBLE_DEVICES=""``, device type ``cpu``):

* ``test_modules.py``: the ModuleInfo tests, with ``module_db`` restricted to ``nn.LSTM`` / ``GRU`` / ``RNN``
  (newer methods such as ``test_save_load``, ``test_to``, ``test_to_empty`` are counted apart, as "newer");
* ``test_nn.py``: its recurrent-layer tests (the list in ``torch_suite_plugin.py``; names it lacks are reported).

Each is run once per thread count (``--threads``, default 1 and 2) and mode (``--modes``): ``baseline``
(torch.nn) and ``swap`` (rnndrop's classes put in ``module_db`` and in ``torch.nn`` by
``torch_suite_plugin.py``, a pytest plugin; PyTorch's own ``test/conftest.py`` is not loaded). The runs are
serial. Per run, a JUnit XML file and a log go to ``--out`` (default: a new temporary folder); a table is
printed (passed / ran, failures, skips; the names of failing tests) and the same as JSON to ``--json``
(default ``<out>/summary.json``). Exit status: 0 when no run failed, 1 when one did, 2 on bad arguments.

``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` is set for the runs (torch's documented switch): older
``test_modules.py`` files pickle whole modules with ``torch.load(f)``, which torch >= 2.6 refuses by default
for torch.nn and rnndrop alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = "torch_suite_plugin"
TEST_FILES = ("test_modules.py", "test_nn.py")
NEWER_METHODS = ("test_save_load", "test_to", "test_to_empty")
_METHOD = re.compile(r"^(test_\w+?)_nn_(?:LSTM|GRU|RNN)_")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/torch_suite/run.py",
        description="Run PyTorch's recurrent-layer tests with torch.nn and with rnndrop swapped in (CPU).",
        epilog="Get the tests with: git clone --depth 1 --branch v<torch version> https://github.com/pytorch/pytorch",
    )
    parser.add_argument(
        "--pytorch",
        metavar="PATH",
        default=os.environ.get("PYTORCH_SRC"),
        help="PyTorch source checkout matching the installed torch (or its test/ folder); default $PYTORCH_SRC",
    )
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default: 1 2)")
    parser.add_argument(
        "--modes", nargs="+", choices=("baseline", "swap"), default=["baseline", "swap"], help="default: both"
    )
    parser.add_argument("--out", metavar="DIR", help="folder for the logs and JUnit XML (default: a new temp folder)")
    parser.add_argument("--json", metavar="FILE", help="summary as JSON (default: <out>/summary.json)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with torch, rnndrop and pytest")
    parser.add_argument(
        "--no-build-kernels", action="store_true", help="skip `python -m rnndrop build-kernels` before the runs"
    )
    args = parser.parse_args(argv)
    if not args.pytorch:
        parser.error("--pytorch PATH is required (a PyTorch source checkout; or set PYTORCH_SRC)")
    try:
        args.test_dir = find_test_dir(args.pytorch)
    except ValueError as exc:
        parser.error(str(exc))
    if any(t < 1 for t in args.threads):
        parser.error("--threads: each count must be at least 1")
    return args


def find_test_dir(path: str) -> Path:
    """The folder holding test_modules.py and test_nn.py: ``path/test`` or ``path`` itself."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"--pytorch {path}: no such folder (expected a PyTorch source checkout)")
    for cand in (root / "test", root):
        if all((cand / name).is_file() for name in TEST_FILES):
            return cand.resolve()
    missing = [name for name in TEST_FILES if not (root / "test" / name).is_file()]
    wanted = " or test/".join(missing)
    raise ValueError(f"--pytorch {path}: no test/{wanted} there (expected a PyTorch source checkout)")


def version_note(test_dir: Path, python: str) -> str:
    """'torch X; checkout Y' and a warning when their major.minor differ (version.txt of the checkout)."""
    torch_version = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__, torch.version.git_version)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    vfile = test_dir.parent / "version.txt"
    checkout = vfile.read_text().strip() if vfile.is_file() else "unknown (no version.txt)"
    note = f"torch {torch_version}; checkout {test_dir.parent} version {checkout}"
    if vfile.is_file() and checkout.split(".")[:2] != torch_version.split(".")[:2]:
        note += "  WARNING: the checkout does not match the installed torch"
    return note


def run_one(args: argparse.Namespace, out: Path, mode: str, threads: int) -> dict:
    tag = f"{mode}_t{threads}"
    xml, log, report = out / f"{tag}.xml", out / f"{tag}.log", out / f"{tag}.selection.json"
    ini = out / "pytest.ini"
    ini.write_text("[pytest]\n")  # isolate from any pytest config of the checkout or of this repository
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH")) if p),
        CUDA_VISIBLE_DEVICES="",
        PYTORCH_TESTING_DEVICE_ONLY_FOR="cpu",
        TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        RNNDROP_TORCH_SUITE_MODE=mode,
        RNNDROP_TORCH_SUITE_THREADS=str(threads),
        RNNDROP_TORCH_SUITE_REPORT=str(report),
    )
    cmd = [
        args.python, "-m", "pytest", *TEST_FILES,
        "-p", PLUGIN, "--noconftest", "-c", str(ini), "--rootdir", str(args.test_dir),
        "-p", "no:cacheprovider", "-q", "-rfE", "--tb=short",
        "-o", "junit_family=xunit1", f"--junitxml={xml}",
    ]  # fmt: skip
    print(f"=== {tag} ===", flush=True)
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=args.test_dir, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    lines = log.read_text().strip().splitlines()
    print(f"rc={rc}; {lines[-1] if lines else '(no output)'}", flush=True)
    result = summarize_xml(xml) if xml.is_file() else {"error": f"no JUnit XML; see {log}"}
    result.update(tag=tag, mode=mode, threads=threads, rc=rc, log=str(log), xml=str(xml))
    if report.is_file():
        result["selection"] = json.loads(report.read_text())
    return result


def group_of(classname: str, name: str) -> str:
    if classname.split(".")[0] == "test_nn":
        return "test_nn"
    m = _METHOD.match(name)
    return "newer" if m and m.group(1) in NEWER_METHODS else "test_modules"


def summarize_xml(path: Path) -> dict:
    groups = {g: {"passed": 0, "failed": 0, "errors": 0, "skipped": 0} for g in ("test_modules", "test_nn", "newer")}
    failing = []
    for tc in ET.parse(path).getroot().iter("testcase"):
        cls, name = tc.get("classname", ""), tc.get("name", "")
        status = "passed"
        for tag, key in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            if tc.find(tag) is not None:
                status = key
                break
        groups[group_of(cls, name)][status] += 1
        if status in ("failed", "errors"):
            failing.append(f"{cls}::{name}")
    return {"groups": groups, "failing": sorted(failing)}


def _ran(g: dict) -> int:
    return g["passed"] + g["failed"] + g["errors"]


def table(results: list[dict]) -> str:
    rows = [
        "run            main passed/ran  (test_modules + test_nn)  newer passed/ran  failed  errors  skipped",
    ]
    for r in results:
        if "groups" not in r:
            rows.append(f"{r['tag']:<14} {r['error']}")
            continue
        g = r["groups"]
        main = {k: g["test_modules"][k] + g["test_nn"][k] for k in g["test_nn"]}
        tot = {k: main[k] + g["newer"][k] for k in main}
        rows.append(
            f"{r['tag']:<14} {main['passed']:>5} / {_ran(main):<5}    "
            f"({g['test_modules']['passed']}/{_ran(g['test_modules'])} + {g['test_nn']['passed']}/{_ran(g['test_nn'])})"
            f"{'':<12} {g['newer']['passed']:>5} / {_ran(g['newer']):<5}    "
            f"{tot['failed']:>6}  {tot['errors']:>6}  {tot['skipped']:>7}"
        )
    for r in results:
        sel = r.get("selection", {})
        if sel.get("nn_missing"):
            rows.append(f"{r['tag']}: test_nn.py lacks {len(sel['nn_missing'])} listed test(s): {sel['nn_missing']}")
        if r.get("failing"):
            rows.append(f"{r['tag']}: failing ({len(r['failing'])}):")
            rows.extend(f"    {name}" for name in r["failing"])
    base = {r["threads"]: set(r.get("failing", [])) for r in results if r["mode"] == "baseline"}
    for r in results:
        if r["mode"] == "swap" and r["threads"] in base:
            only = sorted(set(r.get("failing", [])) - base[r["threads"]])
            rows.append(f"{r['tag']}: failing with rnndrop but not with torch.nn: {len(only)}")
            rows.extend(f"    {name}" for name in only)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rnndrop-torch-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    note = version_note(args.test_dir, args.python)
    print(f"tests from {args.test_dir}\n{note}\nresults in {out}", flush=True)
    if not args.no_build_kernels:
        build = subprocess.run([args.python, "-m", "rnndrop", "build-kernels"], capture_output=True, text=True)
        (out / "build-kernels.log").write_text(build.stdout + build.stderr)
        print(f"rnndrop build-kernels: rc={build.returncode} (log in {out / 'build-kernels.log'})", flush=True)
    results = [run_one(args, out, mode, t) for mode in args.modes for t in args.threads]
    print()
    print(table(results))
    summary = {"tests": str(args.test_dir), "versions": note, "runs": results}
    json_path = Path(args.json) if args.json else out / "summary.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nJSON: {json_path}")
    bad = any(r.get("rc") != 0 or "groups" not in r for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
