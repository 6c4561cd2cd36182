"""The test-time page's stream figure: its legend covers none of the curve (errors near 100% run along the top)."""

from __future__ import annotations

import numpy as np

from da.summary import pyplot
from da.tta.report import _stream_curve


def test_the_legend_covers_no_point_of_a_high_error_stream():
    rows = [
        {"batch": i, "error": 0.97, "online_error": 0.96, "domain": "fog" if i < 10 else "frost"} for i in range(20)
    ]
    plt = pyplot()
    fig = _stream_curve(plt, rows, "tent")
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_legend().get_window_extent()
    curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]  # not the domain marks
    points = np.concatenate([ax.transData.transform(line.get_xydata()) for line in curves])
    inside = [(x, y) for x, y in points if box.x0 <= x <= box.x1 and box.y0 <= y <= box.y1]
    plt.close(fig)
    assert not inside, inside
