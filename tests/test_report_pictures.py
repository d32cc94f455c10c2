"""The evaluation report's example picture, read back (issue 29, item 5): the whole slice with the
zoomed region boxed, and a zoom in which a small lesion is large enough to see, truth green and
prediction red, with a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tumorforge.evaluation.report import plot_example


def test_example_zooms_on_a_small_lesion_and_says_which_colour_is_which(tmp_path):
    shape = (120, 120, 20)                         # (x, y, z) voxels of 1 mm, RAS
    image = np.full(shape, -1000.0, np.float32)
    x, y, z = np.ogrid[:120, :120, :20]
    body = (x - 60) ** 2 + (y - 60) ** 2 < 50 ** 2
    image[np.broadcast_to(body, shape)] = 100.0
    lesion = (x - 80) ** 2 + (y - 70) ** 2 + (z - 10) ** 2 <= 9      # radius 3 mm: a few pixels
    truth = np.where(np.broadcast_to(body, shape), 1, 0).astype(np.uint8)
    truth[lesion] = 2
    pred = truth.copy()
    pred[(x - 81) ** 2 + (y - 70) ** 2 + (z - 10) ** 2 <= 9] = 2      # one voxel off
    png = plot_example("case-1", image, np.eye(4), truth, pred, str(tmp_path / "example.png"))
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lime = (g > 200) & (r < 80) & (b < 80)
    red = (r > 200) & (g < 60) & (b < 60)
    yellow = (r > 200) & (g > 200) & (b < 60)
    h, w = lime.shape
    panels = slice(0, int(h * 0.9))
    left, right = slice(0, w // 2), slice(w // 2, w)
    # the zoom shows the 6 mm lesion many times larger than the whole slice does
    assert lime[panels, right].sum() > 5 * max(1, lime[panels, left].sum())
    assert red[panels, right].sum() > 50
    assert yellow[panels, left].sum() > 50                   # the box (and letters) on the slice
    legend = slice(int(h * 0.9), h)
    assert lime[legend].sum() > 10 and red[legend].sum() > 10


def test_inspect_draws_tumor_counts_as_bars_not_lines(tmp_path, monkeypatch):
    """Tumors per sample are counts: the inspect histogram draws them as bars side by side, one
    colour per kind, not as lines joining the counts (read back from the figure before it is
    closed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from tumorforge.cluster.inspect_dataset import RADIUS_BINS_MM, plot_histograms
    figures = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    bins = len(RADIUS_BINS_MM) - 1
    summary = {"dataset_id": "d" * 24, "provenance_read": {"samples": 10},
               "tumors_per_sample": {"small": {"1": 3, "2": 4}, "mix": {"2": 1, "4": 2}},
               "radius_bins_mm": list(RADIUS_BINS_MM),
               "radius_mm": {"small": {"n": 11, "histogram": [1] * bins}}}
    plot_histograms(summary, str(tmp_path / "h.png"))
    counts_axes = figures[0].axes[0]
    bars = [p for p in counts_axes.patches if isinstance(p, Rectangle)]
    assert sorted(round(b.get_height()) for b in bars) == [1, 2, 3, 4]
    assert not [line for line in counts_axes.lines if len(line.get_xdata()) > 1]
    assert len({b.get_facecolor() for b in bars}) == 2            # one colour per kind
    lefts = sorted(b.get_x() for b in bars)
    assert all(b - a > 0.1 for a, b in zip(lefts, lefts[1:]))     # side by side, not stacked
