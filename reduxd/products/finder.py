"""Finder charts of stacks, named like the old script's ``finder_<save>_....png``.

The stacked light in grey, each measured star circled with its aperture, the
target in red and the comparison ensemble in blue (as chosen for the light curve
of the same object and filter), a legend, and labels placed so that none
overlaps another label or a star's circle (a label that fits nowhere is left
out; the target's and comparisons' always are placed first).
"""

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.visualization import ZScaleInterval

from reduxd.files import atomic_write
from reduxd.products.labels import place_labels
from reduxd.products.lightcurve import ensemble_ids
from reduxd.products.naming import gain_label, titled, value_word

COLOURS = {"target": "magenta", "comparison": "deepskyblue", "star": "gold"}
FONT_PX = 11  # label text height in screen pixels (fontsize 8 at dpi 100)


def finder_path(outdir, *, save, obj, filt, gain, exptime):
    """``<outdir>/finder_<save>_<object>_<filter>_g<gain>_<exp>s.png`` (see ``titled``)."""
    exp = f"{value_word(exptime)}s"
    return outdir / (titled("finder", filt, gain_label(gain), exp, save=save, obj=obj) + ".png")


def read_ensemble(ecsv_path):
    """``(target_id, comparison_ids)`` from a light curve's ECSV meta; ``(None, [])`` if none.

    Cached per file version (path, mtime, size): the daemon asks for every light.
    """
    try:
        st = Path(ecsv_path).stat()
    except OSError:
        return None, []
    return _ensemble(str(ecsv_path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=16)
def _ensemble(path, _mtime_ns, _size):
    from astropy.table import Table

    try:
        meta = Table.read(path, format="ascii.ecsv").meta
    except (OSError, ValueError):
        return None, []
    return ensemble_ids(meta)


def finder_png(image, table, *, radius, target_id=None, comparison_ids=(), title=""):
    """The finder chart as PNG bytes (``table``: star_id, x, y, mag_inst; 0-based x, y)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape
    width_in, top_in = 10.0, 0.9  # the legend and title go above the image
    height_in = width_in * ny / nx
    fig = Figure(figsize=(width_in, height_in + top_in), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, height_in / (height_in + top_in)))
    good = image[np.isfinite(image)]
    lo, hi = ZScaleInterval().get_limits(good) if good.size else (0.0, 1.0)
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="antialiased")
    ax.set_axis_off()
    comps = {int(c) for c in comparison_ids}
    role = {}
    for sid in (int(s) for s in table["star_id"]):
        role[sid] = "target" if sid == target_id else "comparison" if sid in comps else "star"
    stars = sorted(
        zip(table["star_id"], table["x"], table["y"], table["mag_inst"], strict=True),
        key=lambda s: ({"target": 0, "comparison": 1, "star": 2}[role[int(s[0])]], s[3]),
    )
    stars = [(int(s), float(x), float(y), str(int(s))) for s, x, y, _m in stars
             if math.isfinite(float(x)) and math.isfinite(float(y))]  # fmt: skip
    scale = nx / (width_in * fig.dpi)  # image pixels per screen pixel
    labels = place_labels(
        stars, radius=radius, char_width=0.62 * FONT_PX * scale, height=FONT_PX * scale
    )
    circles = PatchCollection(
        [Circle((x, y), radius) for _sid, x, y, _text in stars],
        facecolors="none",
        edgecolors=[COLOURS[role[sid]] for sid, *_ in stars],
        linewidths=[1.6 if role[sid] != "star" else 0.8 for sid, *_ in stars],
    )  # one artist for every circle: drawn in the same order, far faster than patches
    ax.add_collection(circles)
    placed = [(*labels[sid][:2], text, COLOURS[role[sid]])
              for sid, _x, _y, text in stars if sid in labels]  # fmt: skip
    _add_labels(ax, placed, fontsize=8, ha="left", va="bottom")
    handles = [
        Line2D([], [], marker="o", ls="", mfc="none", color=COLOURS["target"],
               label=f"target (star {target_id})" if target_id is not None else "no target set"),
        Line2D([], [], marker="o", ls="", mfc="none", color=COLOURS["comparison"],
               label=f"comparison stars ({len(comps)})"),
        Line2D([], [], marker="o", ls="", mfc="none", color=COLOURS["star"],
               label="other measured stars"),
    ]  # fmt: skip
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
              fontsize=9, frameon=False)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10, y=0.99, va="top")
    buf = io.BytesIO()
    # zlib level 1: the same pixels as matplotlib's default (6), written 5x faster (0.06
    # against 0.30 s for a 1000x776 stack chart) and no larger (a noisy sky barely packs)
    fig.savefig(buf, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def _add_labels(ax, placed, **props):
    """``ax.text(x, y, text, color=colour, **props)`` for each ``(x, y, text, colour)``
    of ``placed``, drawn by one artist (:func:`_labels_artist`): the same pixels."""
    if placed:
        labels = _labels_artist()(placed, transform=ax.transData, clip_on=False, **props)
        labels.set_clip_path(ax.patch)  # as ax.text sets it
        ax.add_artist(labels)


@lru_cache(maxsize=1)
def _labels_artist():
    """The class of :func:`_add_labels`' artist (matplotlib is imported on first use)."""
    from matplotlib.text import Text

    class Labels(Text):
        """Labels drawn in order by one ``Text``, moved, renamed and recoloured for each:
        the pixels of one ``Text`` per label (the same drawing code, in the same order:
        the labels' zorder is a ``Text``'s), without hundreds of artists to make and sort."""

        def __init__(self, placed, **props):
            super().__init__(**props)
            self.placed = placed

        def draw(self, renderer):
            for x, y, text, colour in self.placed:
                self.set_position((x, y))
                self.set_text(text)
                self.set_color(colour)
                super().draw(renderer)

    return Labels


def write_finder(path, image, table, *, radius, target_id=None, comparison_ids=(), title="",
                 durable=True):  # fmt: skip
    """Write :func:`finder_png` to ``path`` atomically; return the path."""
    png = finder_png(image, table, radius=radius, target_id=target_id,
                     comparison_ids=comparison_ids, title=title)  # fmt: skip
    return atomic_write(path, lambda fh: fh.write(png), durable=durable)
