"""Layer-test configuration: report the largest differences observed against torch.nn and the oracles."""

from rnn_pairs import OBSERVED


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pytest hook signature
    if not OBSERVED:
        return
    terminalreporter.section("rnndrop: max abs error observed, forward / gradients (float64 unless noted)")
    cases = sorted({case for case, _, _ in OBSERVED})
    kinds = sorted({kind for _, kind, _ in OBSERVED})
    width = max(len(c) for c in cases)
    terminalreporter.write_line(" " * width + "".join(f"{k:>14s}" for k in kinds))
    for case in cases:
        cells = []
        for kind in kinds:
            fwd, grad = OBSERVED.get((case, kind, "forward")), OBSERVED.get((case, kind, "grad"))
            text = "/".join("-" if v is None else f"{v:.0e}" for v in (fwd, grad))
            cells.append(f"{text:>14s}")
        terminalreporter.write_line(f"{case:<{width}s}" + "".join(cells))
