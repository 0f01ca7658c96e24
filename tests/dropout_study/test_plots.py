"""The figures of a study: what a person looks at must not hide data."""

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from rnndrop.study import plots


def _rows(values):
    rows = []
    for k, (name, mean) in enumerate(values.items()):
        rows.append({"strategy": name, "rate": 0.0 if name == "none" else 0.2, "accuracy_mean": mean,
                     "accuracy_std": 0.004, "mc_accuracy_mean": mean - 0.002 * k, "mc_accuracy_std": 0.004})
    return rows


@pytest.mark.parametrize("low_last", [True, False])
def test_accuracy_legend_hides_no_marker(tmp_path, low_last):
    # issue 19, part 4: the legend of accuracy.png sat over a strategy's marker (lower left, where the lowest
    # accuracy of the last strategy is drawn)
    values = {"none": 0.973, "a": 0.975, "b": 0.979, "c": 0.982, "d": 0.96 if low_last else 0.99}
    fig = plots.accuracy_bars(_rows(values), tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the figure was closed after saving: draw it again to measure it
    canvas.draw()
    renderer = canvas.get_renderer()
    (ax,) = fig.axes
    box = ax.get_legend().get_window_extent(renderer)
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]  # the strategies' means
    assert sum(len(line.get_xydata()) for line in markers) == 2 * len(values)
    points = np.concatenate([line.get_transform().transform(line.get_xydata()) for line in markers])
    inside = [(x, y) for x, y in points if box.x0 - 3 <= x <= box.x1 + 3 and box.y0 - 3 <= y <= box.y1 + 3]
    assert not inside, f"markers under the legend at {inside}"
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[0] == "none (0)" and labels[1] == "a (0.2)"  # each strategy with its rate
