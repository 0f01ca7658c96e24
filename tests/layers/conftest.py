"""Layer-test configuration: report the largest differences observed against torch.nn."""

from rnn_pairs import OBSERVED


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # pytest hook signature
    if not OBSERVED:
        return
    terminalreporter.section("rnndrop vs torch.nn and oracles: max abs error observed (float64 unless noted)")
    cases = sorted({key.rsplit(" ", 1)[0] for key in OBSERVED})
    terminalreporter.write_line(f"{'case':<40s} {'forward':>10s} {'gradients':>10s}")
    for case in cases:
        fwd, grad = OBSERVED.get(f"{case} forward"), OBSERVED.get(f"{case} grad")
        cells = [f"{v:10.2e}" if v is not None else f"{'-':>10s}" for v in (fwd, grad)]
        terminalreporter.write_line(f"{case:<40s} {cells[0]} {cells[1]}")
