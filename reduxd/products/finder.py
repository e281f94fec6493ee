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

    Only the file's header is read (its YAML, then the column names), and the answer
    is cached by that header: the daemon asks for every light, and appending a
    light's row leaves the header, and so the ensemble, as it was (parsing the header
    takes about 50 ms, reading the whole table more as the night grows).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astropy.table import Table
    >>> path = Path(tempfile.mkdtemp()) / "lc.ecsv"
    >>> t = Table({"mjd": [1.0]}, meta={"target_id": 3, "comparison_ids": [5, 7]})
    >>> t.write(path, format="ascii.ecsv")
    >>> read_ensemble(path)
    (3, (5, 7))
    >>> with open(path, "a") as fh:
    ...     _ = fh.write("2.0\\n")
    >>> read_ensemble(path), _ensemble.cache_info().hits > 0
    ((3, (5, 7)), True)
    """
    try:
        header = _header_text(ecsv_path)
    except (OSError, UnicodeDecodeError):
        return None, []
    return _ensemble(header)


def _header_text(path):
    """An ECSV file's comment lines and the line of column names after them."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            lines.append(line)
            if not line.startswith("#"):
                break
    return "".join(lines)


@lru_cache(maxsize=16)
def _ensemble(header):
    from astropy.table import Table

    try:
        meta = Table.read(header, format="ascii.ecsv").meta  # a table of no rows
    except (OSError, ValueError):
        return None, []
    return ensemble_ids(meta)


def finder_png(image, table, *, radius, target_id=None, comparison_ids=(), title=""):
    """The finder chart as PNG bytes (``table``: star_id, x, y, mag_inst; 0-based x, y)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PathCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

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
    circles = PathCollection(
        circle_paths([(x, y) for _sid, x, y, _text in stars], radius),
        facecolors="none",
        edgecolors=[COLOURS[role[sid]] for sid, *_ in stars],
        linewidths=[1.6 if role[sid] != "star" else 0.8 for sid, *_ in stars],
    )  # one artist for every circle (a Circle patch's path each): far faster than patches
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


def circle_paths(centres, radius):
    """The paths of ``Circle(c, radius)`` for each centre ``c``: matplotlib's unit
    circle scaled by ``radius`` and moved to the centre, as a ``Circle`` patch's
    transform moves it (the same vertices), without making the patches.

    Examples
    --------
    >>> from matplotlib.patches import Circle
    >>> path, = circle_paths([(3.5, -2.0)], 6.0)
    >>> circle = Circle((3.5, -2.0), 6.0)
    >>> bool((path.vertices == circle.get_transform().transform(circle.get_path().vertices)).all())
    True
    """
    from matplotlib.path import Path

    unit = Path.unit_circle()
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 1, 2)
    vertices = unit.vertices * radius + centres
    return [Path(v, unit.codes) for v in vertices]


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
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.text import Text

    class Labels(Text):
        """Labels drawn in order by one ``Text``, moved, renamed and recoloured for each:
        the pixels of one ``Text`` per label (the same drawing code, in the same order:
        the labels' zorder is a ``Text``'s), without hundreds of artists to make and sort.

        On Agg, with the text left-aligned and not rotated, a label of digits (a star
        ID) is drawn by :class:`_QuickLabels` (the same pixels, without a
        ``Text.draw`` each); any other label by ``Text.draw``.
        """

        def __init__(self, placed, **props):
            super().__init__(**props)
            self.placed = placed

        def draw(self, renderer):
            if not self.get_visible():
                return
            quick = self._quick(renderer)
            for i, (x, y, text, colour) in enumerate(self.placed):
                if quick is not None and text.isascii() and text.isdigit():
                    quick.draw(i, text, colour)
                else:
                    self.set_position((x, y))
                    self.set_text(text)
                    self.set_color(colour)
                    super().draw(renderer)
            if quick is not None:
                quick.close()

        def _quick(self, renderer):
            """A :class:`_QuickLabels` of this artist, or None when something but the
            text and colour would change how ``Text.draw`` draws a label of digits."""
            plain = (
                isinstance(renderer, RendererAgg)
                and renderer.flipy()
                and self.get_rotation() == 0
                and self.get_horizontalalignment() == "left"
                and self._multialignment in (None, "left")
                and not (self.get_usetex() or self.get_wrap() or self.get_path_effects())
                and self._bbox_patch is None
                and not self.get_rasterized()
                and self.get_agg_filter() is None
            )
            return _QuickLabels(self, renderer) if plain and self.placed else None

    return Labels


class _QuickLabels:
    """Draws a ``Labels``' labels of digits as ``Text.draw`` would, each with what
    ``Text.draw`` computes again for every label computed once per chart: the place
    of the line in its box (``Text._get_layout``: for a single left-aligned, unrotated
    line, a function of the line's height and descent only), the graphics context
    (only the colour changes), the display positions (one transform of all); then the
    renderer's own text drawing (one ``open_group``, ``draw_text``, ``close_group`` a
    label).
    """

    def __init__(self, labels, renderer):
        self.labels, self.renderer = labels, renderer
        labels._renderer = renderer
        xy = np.array([(float(x), float(y)) for x, y, _t, _c in labels.placed])
        self.positions = labels.get_transform().transform(xy)
        self.canvash = renderer.get_canvas_width_height()[1]
        self.prop = labels.get_fontproperties()
        self.chars = {}  # char -> (ascent, descent) as measured alone
        self.offsets = {}  # (ascent, descent) of a line -> its place in the box
        gc = self.gc = renderer.new_gc()
        gc.set_alpha(labels.get_alpha())
        gc.set_url(labels.get_url())
        gc.set_antialiased(labels._antialiased)  # as Text.draw sets them
        gc.set_snap(labels.get_snap())
        labels._set_gc_clip(gc)

    def draw(self, i, text, colour):
        """Draw label ``i`` of the artist's ``placed``, ``text`` in ``colour``."""
        from matplotlib.colors import to_rgba

        posx, posy = self.positions[i]
        if not (math.isfinite(posx) and math.isfinite(posy)):
            return  # Text.draw draws nothing there
        renderer = self.renderer
        renderer.open_group("text", self.labels.get_gid())
        self.gc.set_foreground(to_rgba(colour), isRGBA=True)
        x, y = self._offset(text)
        x = x + posx
        y = y + posy
        y = self.canvash - y
        renderer.draw_text(self.gc, x, y, text, self.prop, 0.0, ismath=False,
                           mtext=self.labels)  # fmt: skip
        renderer.close_group("text")

    def _offset(self, text):
        """The line's place in its box, as ``Text._get_layout`` finds it: found once
        per (ascent, descent) of a line, those of the union of its characters' boxes
        (each character's box measured alone)."""
        ascent = descent = -math.inf
        for char in text:
            a, d = self.chars[char] if char in self.chars else self._measure(char)
            ascent, descent = max(ascent, a), max(descent, d)
        key = (ascent, descent)
        if key not in self.offsets:
            self.labels.set_text(text)
            _bbox, info, _box = self.labels._get_layout(self.renderer)
            self.offsets[key] = info[0][2]
        return self.offsets[key]

    def _measure(self, char):
        from matplotlib.text import _get_text_metrics_with_cache

        _w, h, d = _get_text_metrics_with_cache(self.renderer, char, self.prop, ismath=False,
                                                dpi=self.labels.figure.dpi)  # fmt: skip
        self.chars[char] = (h - d, d)
        return self.chars[char]

    def close(self):
        self.gc.restore()


def write_finder(path, image, table, *, radius, target_id=None, comparison_ids=(), title="",
                 durable=True):  # fmt: skip
    """Write :func:`finder_png` to ``path`` atomically; return the path."""
    png = finder_png(image, table, radius=radius, target_id=target_id,
                     comparison_ids=comparison_ids, title=title)  # fmt: skip
    return atomic_write(path, lambda fh: fh.write(png), durable=durable)
