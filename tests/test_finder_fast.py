"""The stack's finder chart drawn the quick way has the bytes of the plain way (issue 12, the
long crowded night): labels of digits drawn without a ``Text.draw`` each, circles without a
``Circle`` patch each."""

import io
import itertools
import math

import numpy as np
import pytest
from astropy.table import Table
from astropy.visualization import ZScaleInterval

from reduxd.products import finder
from reduxd.products.labels import place_labels


def plain_finder_png(image, table, *, radius, target_id=None, comparison_ids=(), title=""):
    """``finder.finder_png`` as it was drawn before (main at fd0d2e1): one ``Circle`` patch
    per star, one ``ax.text`` per label. The reference of the bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    colours = finder.COLOURS
    image = np.asarray(image, dtype=np.float32)
    ny, nx = image.shape
    width_in, top_in = 10.0, 0.9
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
    scale = nx / (width_in * fig.dpi)
    font_px = finder.FONT_PX
    labels = place_labels(
        stars, radius=radius, char_width=0.62 * font_px * scale, height=font_px * scale
    )
    circles = PatchCollection(
        [Circle((x, y), radius) for _sid, x, y, _text in stars],
        facecolors="none",
        edgecolors=[colours[role[sid]] for sid, *_ in stars],
        linewidths=[1.6 if role[sid] != "star" else 0.8 for sid, *_ in stars],
    )
    ax.add_collection(circles)
    for sid, _x, _y, text in stars:
        if sid in labels:
            x, y = labels[sid][:2]
            ax.text(x, y, text, color=colours[role[sid]], fontsize=8, ha="left", va="bottom")
    handles = [
        Line2D([], [], marker="o", ls="", mfc="none", color=colours["target"],
               label=f"target (star {target_id})" if target_id is not None else "no target set"),
        Line2D([], [], marker="o", ls="", mfc="none", color=colours["comparison"],
               label=f"comparison stars ({len(comps)})"),
        Line2D([], [], marker="o", ls="", mfc="none", color=colours["star"],
               label="other measured stars"),
    ]  # fmt: skip
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3,
              fontsize=9, frameon=False)  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10, y=0.99, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, pil_kwargs={"compress_level": 1})
    return buf.getvalue()


def crowded_field(n, shape, *, seed, first_id=1):
    """A noisy frame with ``n`` stars (IDs from ``first_id``), some off the edges and two
    not measured (NaN position)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    data = rng.normal(480.0, 12.0, shape).astype(np.float32)
    x, y = rng.uniform(-4, nx + 4, n), rng.uniform(-4, ny + 4, n)
    x[5], y[9] = np.nan, np.nan
    yy, xx = np.mgrid[:ny, :nx]
    for xi, yi in zip(x[:60], y[:60], strict=True):
        if np.isfinite(xi) and np.isfinite(yi):
            data += (5000.0 * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / 8.0)).astype(np.float32)
    table = Table({"star_id": np.arange(first_id, first_id + n), "x": x, "y": y,
                   "mag_inst": rng.uniform(-13, -6, n)})  # fmt: skip
    return data, table


@pytest.mark.parametrize(
    ("n", "shape", "radius", "first_id", "target_id"),
    [(800, (500, 650), 6.701, 1, None), (700, (300, 1700), 4.5, 995, 1001)],
)
def test_crowded_chart_has_the_bytes_of_the_plain_drawing(n, shape, radius, first_id, target_id):
    """~800 stars on the long night's 650x500 stack (no target, as its light curve had),
    and a wide frame whose IDs run from three to four digits, with a target."""
    data, table = crowded_field(n, shape, seed=n, first_id=first_id)
    comps = [first_id + 2, first_id + 30, first_id + 31]
    kw = dict(radius=radius, target_id=target_id, comparison_ids=comps, title="pg2213 V: stack")
    assert finder.finder_png(data, table, **kw) == plain_finder_png(data, table, **kw)


def test_real_frame_chart_has_the_bytes_of_the_plain_drawing(arcsat_dir):
    """A real ARCSAT light (XO-1 field) and the stars reduxd measures on it."""
    from astropy.io import fits

    from reduxd.steps.photometry import PhotParams, photometer

    path = arcsat_dir / "XO1-b_z_20250602_054233.fits"
    if not path.exists():
        pytest.skip(f"real light not found at {path}")
    data = fits.getdata(path).astype(np.float32)
    table = photometer(data, exptime=10.0, params=PhotParams(radius=6)).table
    assert len(table) > 20
    ids = [int(s) for s in table["star_id"]]
    kw = dict(radius=6.0, target_id=ids[3], comparison_ids=ids[5:9], title="XO1-b z")
    assert finder.finder_png(data, table, **kw) == plain_finder_png(data, table, **kw)


def labels_png(placed, add, **props):
    """The PNG of a small figure with ``placed`` labels added by ``add(ax, placed, **props)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 3.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 80)
    add(ax, placed, **props)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def one_text_per_label(ax, placed, **props):
    for x, y, text, colour in placed:
        ax.text(x, y, text, color=colour, **props)


@pytest.mark.parametrize(
    "props",
    [dict(fontsize=8, ha="left", va="bottom"), dict(fontsize=13.3, ha="left", va="top"),
     dict(fontsize=8, ha="center", va="bottom"), dict(fontsize=9, ha="left", va="center",
                                                      rotation=30)],
)  # fmt: skip
def test_labels_of_any_text_have_the_pixels_of_one_text_per_label(props):
    """Digits (the quick way) mixed with labels only ``Text.draw`` draws (math, two lines,
    letters, an empty label, non-ASCII digits), and alignments the quick way leaves to it."""
    rng = np.random.default_rng(5)
    texts = ["7", "12", "$x^2$", "a\nb", "3", "12a", "", "٣٤", "1000", "88", "409", "0"]
    colours = ["gold", "magenta", "deepskyblue", (0.2, 0.9, 0.1, 0.6)]
    placed = [(float(rng.uniform(-5, 100)), float(rng.uniform(-5, 85)), text, colours[i % 4])
              for i, text in enumerate(texts * 3)]  # fmt: skip
    placed.append((math.nan, 10.0, "55", "gold"))  # not drawn, as ax.text draws nothing there
    assert labels_png(placed, finder._add_labels, **props) == labels_png(
        placed, one_text_per_label, **props
    )


def test_digit_labels_are_not_drawn_one_text_draw_each(monkeypatch):
    """The quick way is taken: hundreds of labels, a handful of ``Text.draw`` calls (the
    title, the legend's texts, the layout of each height of line)."""
    from matplotlib.text import Text

    calls = []
    draw = Text.draw

    def counted(self, renderer):
        calls.append(self.get_text())
        return draw(self, renderer)

    monkeypatch.setattr(Text, "draw", counted)
    data, table = crowded_field(800, (500, 650), seed=3)
    finder.finder_png(data, table, radius=6.7, target_id=4, comparison_ids=[8, 9], title="t")
    assert len(calls) < 10, calls


@pytest.mark.parametrize(("fontsize", "dpi"), [(8, 100), (11.3, 100), (30, 72)])
def test_a_line_of_digits_is_placed_as_text_places_it(fontsize, dpi):
    """The quick way places each line of digits where ``Text._get_layout`` does: by the
    union of its characters' boxes (every string of 1-2 digits, 400 of 3-6 digits)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=dpi)
    renderer = FigureCanvasAgg(fig).get_renderer()
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    labels = finder._labels_artist()([(1.0, 1.0, "1", "gold")], transform=ax.transData,
                                     fontsize=fontsize, ha="left", va="bottom")  # fmt: skip
    ax.add_artist(labels)
    quick = labels._quick(renderer)
    rng = np.random.default_rng(int(fontsize * dpi))
    short = ["".join(p) for n in (1, 2) for p in itertools.product("0123456789", repeat=n)]
    long = [str(v) for v in rng.integers(100, 1_000_000, 400)]
    plain = finder._labels_artist()([], transform=ax.transData, fontsize=fontsize, ha="left",
                                    va="bottom")  # fmt: skip
    plain.set_figure(fig)
    for text in short + long:
        plain.set_text(text)
        assert quick._offset(text) == plain._get_layout(renderer)[1][0][2], text


@pytest.mark.parametrize("radius", [6.701, 0.25, 13.0, 57.125])
def test_circle_paths_are_the_circle_patches_paths(radius):
    from matplotlib.patches import Circle

    rng = np.random.default_rng(int(radius * 8))
    centres = [(0.0, 0.0), (-0.0, 3.0), (649.5, 499.5), *rng.uniform(-10, 1700, (200, 2))]
    for path, (x, y) in zip(finder.circle_paths(centres, radius), centres, strict=True):
        circle = Circle((x, y), radius)
        expected = circle.get_transform().transform_path(circle.get_path())
        assert np.array_equal(path.vertices, expected.vertices)
        assert np.array_equal(path.codes, expected.codes)
        assert path.should_simplify == expected.should_simplify
        assert path.simplify_threshold == expected.simplify_threshold
    assert finder.circle_paths([], radius) == []
