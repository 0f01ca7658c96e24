"""Mutation testing of the C++ CPU kernel: does the test suite notice a plausible kernel bug?

Each mutant below is one textual edit of ``src/rnndrop/_kernels/csrc/cpu/rnn.cpp`` that a person
could plausibly make (a wrong row offset, a dropped mask, a forgotten panel). For each, this script

1. copies the package (``src/rnndrop``, without builds) into ``<workdir>/<mutant>/src`` and applies
   the edit there (the working tree is never touched);
2. compiles that copy into its own ``RNNDROP_KERNEL_DIR`` (``python -m rnndrop._kernels.build``);
3. runs the kernel tests against it (``PYTHONPATH`` puts the copy first; ``OMP_NUM_THREADS=1``, the
   condition under which thread-split bugs used to pass; ``RNNDROP_REQUIRE_KERNELS=1``, so a mutant
   that fails to load fails the run instead of skipping it) and reports **killed** (some test failed)
   or **survived**.

An unmutated copy runs first (it must pass, else every "kill" is meaningless). A mutant whose
original text no longer occurs once in rnn.cpp (the kernel was edited since) is reported as
``stale`` rather than silently skipped: update its text here.

Not part of the default test run (each mutant is a ~90 s compile). Usage::

    nice -n 19 .venv/bin/python scripts/kernel_mutants.py            # all mutants, table + JSON
    .venv/bin/python scripts/kernel_mutants.py --list
    .venv/bin/python scripts/kernel_mutants.py --only final_state_row_offset
    nice -n 19 .venv/bin/python scripts/kernel_mutants.py --build-only   # compile ahead, test later

Builds are kept in ``--workdir`` (default ``.mutants/kernel``, git-ignored) and reused when the
mutated source is unchanged, so a second run only re-runs the tests. Results: docs/testing.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rnndrop"
KERNEL_SOURCE = Path("_kernels") / "csrc" / "cpu" / "rnn.cpp"
DEFAULT_TESTS = (
    "tests/kernels/test_kernel_exactness.py",
    "tests/kernels/test_kernel_bug_classes.py",
    "tests/kernels/test_differential_fuzz.py",
    "tests/kernels/test_kernel_gradcheck.py",
    "tests/kernels/test_input_projection.py",
    "tests/kernels/test_weight_writes.py",
    "tests/kernels/test_weight_dropout_in_kernel.py",
)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the bug it plants, in words
    original: str  # occurs `occurrences` times in rnn.cpp
    mutated: str
    equivalent: bool = False  # known to compute the same result (a survivor is then expected)
    occurrences: int = 1  # how often `original` occurs in rnn.cpp (the mutant edits one of them) ...
    occurrence: int = 0  # ... this one (0-based)
    isa: str | None = None  # "AVX512" / "AVX2": the code is compiled only for that CPU capability


MUTANTS: tuple[Mutant, ...] = (
    Mutant("nograd_ignores_lstm_recurrent_mask",
           "the no-grad forward (inference, MC dropout) of the LSTM skips the recurrent mask",
           "  if (P.Gm == 0) {\n    mm_into(gh, hp, nb, H, P.op(true, g0, ng));",
           "  if (P.Gm == 0 || (!P.save && P.mode == kLSTM)) {\n    mm_into(gh, hp, nb, H, P.op(true, g0, ng));"),
    Mutant("first_panel_only",
           "the AVX-512 micro-kernel computes only the first 64-column panel of each per-step product",
           "  for (int64_t p = 0; p < panels; ++p) {\n    const float* bp",
           "  for (int64_t p = 0; p < std::min<int64_t>(panels, 1); ++p) {\n    const float* bp"),
    Mutant("partial_vector_drops_a_column",
           "the masked store of a panel's last, partial vector writes one column too few (float32 micro-kernel)",
           "static_cast<__mmask16>((1u << left) - 1u)",
           "static_cast<__mmask16>((1u << (left - 1)) - 1u)", occurrences=2, occurrence=0, isa="AVX512"),
    Mutant("partial_vector_drops_a_column_bf16",
           "the same in the bf16 (autocast) micro-kernel",
           "static_cast<__mmask16>((1u << left) - 1u)",
           "static_cast<__mmask16>((1u << (left - 1)) - 1u)", occurrences=2, occurrence=1, isa="AVX512"),
    Mutant("partial_panel_drops_a_column_avx2",
           "the AVX2 micro-kernel's masked store of a partial panel writes one column too few",
           "_mm256_set1_epi32(static_cast<int>(ncols)), lane)",
           "_mm256_set1_epi32(static_cast<int>(ncols - 1)), lane)", isa="AVX2"),
    Mutant("packing_memoized_by_address",
           "the packed W_hh / W_ih is kept across calls, keyed on the weight's address and layout (a cache "
           "like the one removed in 2026-12: writes through .data keep the address and serve the old packing)",
           "    op.packed = pack_panels(mat, trans, row0, wm);\n",
           "    static std::map<std::vector<int64_t>, Tensor> memo;\n"
           "    std::vector<int64_t> key{reinterpret_cast<int64_t>(mat.data_ptr()), mat.size(0), mat.size(1),\n"
           "                             mat.stride(0), mat.stride(1), trans, row0, wm.on};\n"
           "    auto hit = wm.on ? memo.end() : memo.find(key);\n"
           "    op.packed = hit != memo.end() ? hit->second : (memo[key] = pack_panels(mat, trans, row0, wm));\n"),
    Mutant("dropconnect_weight_grad_unmasked",
           "with DropConnect drawn in the kernel, dW of the raw W_hh is not multiplied by the mask",
           "  if (wm.on) mask_weight_grad(dW, wm);",
           "  // mutant: dW left unmasked"),
    Mutant("dropconnect_backward_packs_raw_weight",
           "the backward's products use the raw W_hh instead of the dropped one",
           "    P.wm = wm;\n    P.prepare(false);",
           "    P.prepare(false);"),
    Mutant("five_row_tile_as_four",
           "a 5-row remainder tile of the micro-kernel computes only 4 rows",
           "case 5: micro_tile<5>(K, ar, lda, bp, cr, ldc, ncols); break;",
           "case 5: micro_tile<4>(K, ar, lda, bp, cr, ldc, ncols); break;"),
    Mutant("final_state_row_offset",
           "each thread writes its final states at row 0 instead of its first row b0",
           "std::memcpy(hT + (b0 + b) * H, P.state(P.Tn - 1, b0 + b), H * sizeof(T));",
           "std::memcpy(hT + b * H, P.state(P.Tn - 1, b0 + b), H * sizeof(T));"),
    Mutant("dh0_row_offset",
           "each thread writes its initial-state gradient at row 0 instead of its first row b0",
           "std::memcpy(D.dh0 + b0 * H, dh, nb * H * sizeof(T));",
           "std::memcpy(D.dh0, dh, nb * H * sizeof(T));"),
    Mutant("lstm_cell_not_carried",
           "at a masked step the LSTM cell state is not carried over",
           "if (P.steps && !P.keep(t, bg)) std::memcpy(cn, cp, H * sizeof(T));  // carry c over",
           "// carry c over (mutant: dropped)"),
    Mutant("leading_masked_output_not_zero",
           "a masked step before the first real step outputs h0 instead of zeros",
           "if (P.zero_fill || !seen) {",
           "if (P.zero_fill) {"),
    Mutant("gru_reset_after_drops_b_hn",
           "the GRU (reset_after) leaves b_hn out of r * (W_hn h + b_hn)",
           "for (int64_t j = 0; j < H; ++j) ghn[j] = ghb[j] + bn[j];",
           "for (int64_t j = 0; j < H; ++j) ghn[j] = ghb[j] + 0 * bn[j];"),
    Mutant("backward_per_gate_mask_dropped",
           "the backward through h_{t-1} ignores per-gate recurrent masks",
           "for (int64_t j = 0; j < H; ++j) dst[j] = acc ? acc[j] + d[j] * m[j] : d[j] * m[j];",
           "for (int64_t j = 0; j < H; ++j) dst[j] = acc ? acc[j] + d[j] : d[j];"),
    Mutant("sigmoid_derivative",
           "the sigmoid derivative is y instead of y (1 - y)",
           "for (int64_t j = 0; j < n; ++j) g[j] = g[j] * (T(1) - y[j]) * y[j];",
           "for (int64_t j = 0; j < n; ++j) g[j] = g[j] * y[j];"),
    Mutant("repeated_output_gradient_lost",
           "the gradient of outputs that repeat the previous output at masked steps is dropped",
           "flows[s * nb + b] = k || (!P.zero_fill && seen);",
           "flows[s * nb + b] = k;"),
    Mutant("weight_grad_shared_mask_dropped",
           "dW_hh uses the unmasked previous states with a shared recurrent mask",
           "if (Gm == 1) prev.mul_(rmask->select(0, 0).unsqueeze(0));",
           "if (Gm == 1) prev.mul_(1);"),
    Mutant("gru_b_hh_grad_as_b_ih",
           "the GRU (reset_after) b_hh gradient is taken from the input-side sums",
           "db_hh = dGH.is_same(dGI) ? db_ih.clone() : src.sum(0);",
           "db_hh = db_ih.clone();"),
    Mutant("nograd_cell_buffer_not_rolled",
           "the no-grad LSTM keeps c in one slot instead of two rolling ones: c_t overwrites c_{t-1} in place "
           "(harmless for the update itself), so a masked step 'carries over' the new c",
           "cbuf + ((s & 1) * nb + b) * H",
           "cbuf + b * H"),
    Mutant("projection_block_at_column_0",
           "the float32 input projection writes every per-gate mask block at column 0 of gi",
           "float* c = out.data_ptr<float>() + row0;",
           "float* c = out.data_ptr<float>();"),
    Mutant("projection_chunk_drops_a_row",
           "the float32 input projection computes one row fewer than its 48-row thread chunk holds",
           "rows = std::min(kChunk, M - r0);",
           "rows = std::min(kChunk - 1, M - r0);"),
)


def copy_package(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(PACKAGE, dest, ignore=shutil.ignore_patterns("_build", "__pycache__", "*.so"))


def mutant_env(src: Path, kernel_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["RNNDROP_KERNEL_DIR"] = str(kernel_dir)
    env["RNNDROP_REQUIRE_KERNELS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RNNDROP_DISABLE_KERNELS", None)
    return env


def prepare(mutant: Mutant | None, workdir: Path) -> tuple[Path, Path] | str:
    """The package copy (mutated) and its kernel dir, or the reason it cannot be made."""
    name = "baseline" if mutant is None else mutant.name
    src = workdir / name / "src"
    pkg = src / "rnndrop"
    source = (PACKAGE / KERNEL_SOURCE).read_text()
    if mutant is not None:
        count = source.count(mutant.original)
        if count != mutant.occurrences:
            return (f"stale: the original text occurs {count} times in rnn.cpp, not {mutant.occurrences} "
                    "(update the mutant)")
        parts = source.split(mutant.original)
        k = mutant.occurrence + 1
        source = mutant.original.join(parts[:k]) + mutant.mutated + mutant.original.join(parts[k:])
    # Reuse a previous copy whose kernel source is the same (its build is then reused too).
    if not (pkg / KERNEL_SOURCE).is_file() or (pkg / KERNEL_SOURCE).read_text() != source:
        copy_package(pkg)
        (pkg / KERNEL_SOURCE).write_text(source)
    else:  # refresh the Python files, keep the C++ (same build tag)
        for py in PACKAGE.rglob("*.py"):
            target = pkg / py.relative_to(PACKAGE)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(py, target)
    kernel_dir = workdir / name / "build"
    own_build = PACKAGE / "_kernels" / "_build"
    if mutant is None and own_build.is_dir() and not kernel_dir.exists():
        shutil.copytree(own_build, kernel_dir)  # same sources, same tag: the working tree's build serves
    return src, kernel_dir


@functools.lru_cache(maxsize=1)
def _cpu_capability() -> str:
    """The CPU capability the kernel is compiled for here (rnndrop._kernels.loader.cpu_capability)."""
    rc, out = run([sys.executable, "-c", "from rnndrop._kernels import loader; print(loader.cpu_capability())"],
                  dict(os.environ), 120)
    return out.strip().splitlines()[-1] if rc == 0 and out.strip() else "unknown"


def run(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    return proc.returncode, proc.stdout + proc.stderr


def evaluate(mutant: Mutant | None, workdir: Path, tests: list[str], timeout: float,
             build_only: bool = False) -> dict[str, object]:
    name = "baseline" if mutant is None else mutant.name
    result: dict[str, object] = {"mutant": name, "what": "no mutation" if mutant is None else mutant.what,
                                 "equivalent": bool(mutant and mutant.equivalent)}
    if mutant is not None and mutant.isa is not None and mutant.isa != _cpu_capability():
        result.update(status="not compiled", detail=f"{mutant.isa} code; this CPU's build is {_cpu_capability()}")
        return result
    prepared = prepare(mutant, workdir)
    if isinstance(prepared, str):
        result.update(status="stale", detail=prepared)
        return result
    src, kernel_dir = prepared
    env = mutant_env(src, kernel_dir)
    start = time.perf_counter()
    rc, log = run([sys.executable, "-m", "rnndrop._kernels.build"], env, timeout)
    result["build_s"] = round(time.perf_counter() - start, 1)
    if rc != 0:
        result.update(status="build failed", detail=log[-2000:])
        return result
    if build_only:
        result["status"] = "built"
        return result
    # The tests must import the copy, not the working tree (else the mutant was never tested).
    rc, where = run([sys.executable, "-c", "import rnndrop; print(rnndrop.__file__)"], env, 120)
    if rc != 0 or not where.strip().startswith(str(src)):
        result.update(status="error", detail=f"the tests would not import the mutated copy: {where[-500:]}")
        return result
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    rc, log = run(cmd, env, timeout)
    result["test_s"] = round(time.perf_counter() - start, 1)
    lines = [ln for ln in log.splitlines() if ln.strip()]
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR"))]
    result["summary"] = lines[-1] if lines else ""
    result["first_failure"] = failed[0] if failed else None
    if rc == 0:
        result["status"] = "survived"
    elif rc == 1:
        result["status"] = "killed"
    else:  # collection error, interrupted, timeout: not a clean kill
        result.update(status="error", detail=log[-2000:])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".mutants" / "kernel")
    parser.add_argument("--tests", nargs="+", default=list(DEFAULT_TESTS), help="pytest arguments")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per build or test run")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default: workdir)")
    parser.add_argument("--build-only", action="store_true", help="compile the mutants, run no test")
    parser.add_argument("--clean", action="store_true", help="remove the work directory afterwards")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated copy first")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:38s} {m.what}{'  [equivalent]' if m.equivalent else ''}")
        return 0
    unknown = set(args.only or ()) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s): {sorted(unknown)}; see --list")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for mutant in ([] if args.skip_baseline else [None]) + chosen:
        res = evaluate(mutant, args.workdir, args.tests, args.timeout, args.build_only)
        results.append(res)
        print(f"{res['mutant']:38s} {res['status']:12s} {res.get('first_failure') or res.get('summary') or ''}",
              flush=True)
        if mutant is None and res["status"] not in ("survived", "built"):
            print("the unmutated copy does not pass the tests; stopping", file=sys.stderr)
            print(res.get("detail", ""), file=sys.stderr)
            return 2
    if args.build_only:
        return 0
    scored = [r for r in results if r["mutant"] != "baseline" and r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in scored)
    non_equivalent = [r for r in scored if not r["equivalent"]]
    killed_ne = sum(r["status"] == "killed" for r in non_equivalent)
    summary = {"mutants": len(chosen), "scored": len(scored), "killed": killed,
               "kill_rate": round(killed / len(scored), 3) if scored else None,
               "killed_non_equivalent": killed_ne, "non_equivalent": len(non_equivalent),
               "kill_rate_non_equivalent": round(killed_ne / len(non_equivalent), 3) if non_equivalent else None,
               "tests": args.tests}
    print(f"killed {killed} of {len(scored)} scored mutants; {killed_ne} of {len(non_equivalent)} "
          "non-equivalent ones")
    out = args.json or args.workdir / "results.json"
    out.write_text(json.dumps({"summary": summary, "results": results}, indent=2) + "\n")
    print(f"results: {out}")
    if args.clean:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
