"""The stack's finder chart draws its labels with one artist: the PNG of one Text per label."""

import numpy as np
from astropy.table import Table

from reduxd.products import finder


def one_text_per_label(ax, placed, **props):
    """The labels as finder.py drew them before: ``ax.text`` for each."""
    for x, y, text, colour in placed:
        ax.text(x, y, text, color=colour, **props)


def crowded(n=400, shape=(500, 650), seed=2):
    """A noisy frame and ``n`` stars, some at the edges (their circles widen the view)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    data = rng.normal(1000.0, 30.0, shape).astype(np.float32)
    x, y = rng.uniform(-3, nx + 3, n), rng.uniform(-3, ny + 3, n)
    yy, xx = np.mgrid[:ny, :nx]
    for xi, yi in zip(x[:40], y[:40], strict=True):
        data += (3000.0 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / 4.0)).astype(np.float32)
    table = Table({"star_id": np.arange(1, n + 1), "x": x, "y": y,
                   "mag_inst": rng.uniform(-12, -5, n)})  # fmt: skip
    return data, table


def test_finder_labels_have_the_pixels_of_one_text_per_label(monkeypatch):
    data, table = crowded()
    kw = dict(radius=6.0, target_id=7, comparison_ids=[3, 11, 19], title="a crowded stack")
    one_artist = finder.finder_png(data, table, **kw)
    monkeypatch.setattr(finder, "_add_labels", one_text_per_label)
    texts = finder.finder_png(data, table, **kw)
    assert one_artist == texts  # every byte of the PNG


def test_finder_labels_are_one_artist():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    placed = [(float(i), 2.0 * i, str(i), "gold") for i in range(50)]
    finder._add_labels(ax, placed, fontsize=8, ha="left", va="bottom")
    assert len(ax.texts) == 1 and ax.texts[0].placed == placed
    finder._add_labels(ax, [], fontsize=8)
    assert len(ax.texts) == 1
