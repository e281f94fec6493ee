"""Quicklook PNGs: finder chart and radial-profile plot, written atomically."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table
from matplotlib.image import imread

from reduxd.products import quicklook
from reduxd.products.quicklook import write_profile_plot, write_quicklook
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import add_ccd_noise, render_stars

PNG = b"\x89PNG\r\n\x1a\n"


def frame():
    rng = np.random.default_rng(41)
    x, y = rng.uniform(20, 280, (2, 12))
    img = render_stars((200, 300), x, y, 10 ** rng.uniform(4, 5.5, 12), 3.0) + 100.0
    return add_ccd_noise(img, read_noise_e=5.0, rng=rng).astype(np.float32)


def test_finder_chart_is_a_png_with_circles(tmp_path):
    data = frame()
    result = photometer(
        data, exptime=10.0, params=PhotParams(radius=6, sky_method="radial", keep_profiles=True)
    )
    before = data.copy()
    mask = np.zeros(data.shape, np.uint8)
    mask[10:12, 10:40] = 2
    out = write_quicklook(tmp_path / "ql" / "frame.png", data, result.table, title="t", mask=mask)
    assert out.read_bytes()[:8] == PNG
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] >= 800  # small frames shown enlarged
    # circles are drawn in green (clean) or orange (flagged): some strongly coloured pixels
    rgb = image[..., :3]
    assert np.count_nonzero((rgb[..., 1] > 0.6) & (rgb[..., 2] < 0.3)) > 100
    assert np.array_equal(data, before)
    assert [p.name for p in out.parent.iterdir()] == ["frame.png"]  # no temp file left


def test_quicklook_replaces_an_existing_file(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(b"old")
    table = Table({"star_id": [], "x": [], "y": [], "mag_inst": [], "flags": []})
    write_quicklook(path, frame(), table)
    assert path.read_bytes()[:8] == PNG
    assert (path.stat().st_mode & 0o777) == 0o644


def test_profile_plot_of_a_measured_star(tmp_path):
    result = photometer(
        frame(), exptime=10.0, params=PhotParams(radius=6, sky_method="radial", keep_profiles=True)
    )
    assert result.profiles and "star_id" in result.profiles[0]
    out = write_profile_plot(tmp_path / "p.png", result.profiles[0], radius=6)
    assert out.read_bytes()[:8] == PNG


def test_grey_levels_are_a_monotonic_zscale_asinh_stretch():
    from astropy.visualization import AsinhStretch

    from reduxd.products.quicklook import _ASINH_LUT, GREYS, LUT_SIZE, _grey_levels

    rng = np.random.default_rng(3)
    img = rng.normal(1000.0, 30.0, (300, 400)).astype(np.float32)
    img[50:55, 60:65] = 40000.0  # a saturated star: white
    img[0, 0] = np.nan  # shown black, not an error
    grey = _grey_levels(img)
    assert grey.dtype == np.uint8 and grey.shape == img.shape
    assert grey[0, 0] == 0 and grey[52, 62] == GREYS - 1
    order = np.argsort(img[1:].ravel())
    assert np.all(np.diff(grey[1:].ravel()[order].astype(int)) >= 0)  # monotonic
    assert 0 < np.median(grey) < GREYS - 1  # sky inside the zscale range
    # the lookup table is astropy's AsinhStretch (a=0.1) to within one grey level
    x = np.linspace(0.0, 1.0, LUT_SIZE)
    expected = AsinhStretch(a=0.1)(x) * (GREYS - 1)
    assert np.abs(_ASINH_LUT - expected).max() <= 0.5 + 1e-9


def test_stack_finder_chart_marks_the_ensemble_and_labels_star_ids(tmp_path):
    """A stack's finder chart is drawn as a light's: the target magenta, the comparisons
    blue, pixels no light covered red; each star labelled with its ID alone."""
    from PIL import Image

    from reduxd.products.finder import write_finder

    data = frame()
    uncovered = np.zeros(data.shape, bool)
    uncovered[:, :10] = True
    table = Table({"star_id": [1, 2, 3], "x": [50.0, 150.0, 250.0], "y": [100.0] * 3,
                   "mag_inst": [-8.0, -9.0, -7.0], "flags": [0, 0, 0]})  # fmt: skip
    out = write_finder(tmp_path / "f.png", data, table, radius=6.0, target_id=1,
                       comparison_ids=[2], title="t", mask=uncovered)  # fmt: skip
    image = np.asarray(Image.open(out))[quicklook.TITLE_HEIGHT :]  # below the colour key
    assert (image == quicklook.TARGET).sum() > 50  # star 1's circle and label
    assert (image == quicklook.COMPARISON).sum() > 50  # star 2's
    assert (image == quicklook.MASKED).sum() >= 10 * image.shape[0]  # the uncovered columns
    *_, labels = quicklook._chart_stars(table, 1.0, 200, {2: "comparison"}, magnitudes=False)
    assert labels == ["2", "1", "3"]  # the comparison first, then the brightest: IDs alone
    *_, labels = quicklook._chart_stars(table, 1.0, 200, {2: "comparison"})
    assert labels == ["2 -9.00", "1 -8.00", "3 -7.00"]  # a light's chart: with magnitudes
    table["x"][0], table["y"][2] = np.nan, np.inf  # no place on the chart: left out
    write_finder(tmp_path / "g.png", data, table, radius=6.0, target_id=1, comparison_ids=[2])
    assert quicklook._chart_stars(table, 1.0, 200, {}, magnitudes=False)[3] == ["2"]


def test_rings_are_the_pixels_of_pillow_ellipses_drawn_one_by_one():
    """Circles of a chart, stamped, are Pillow's ``ImageDraw.ellipse`` outlines drawn in
    order: radii of whole and fractional pixels, centres off the canvas and on negative
    coordinates (Pillow cuts them toward zero), overlapping circles of several colours."""
    from PIL import Image, ImageDraw

    from reduxd.products.quicklook import draw_rings

    rng = np.random.default_rng(7)
    for radius in (0.3, 2.0, 6.5, 22.446, 41.0, 700.0):  # 700: over the canvas, Pillow's way
        x, y = rng.uniform(-60, 260, 400), rng.uniform(-60, 180, 400)
        colours = rng.integers(1, 255, 400)
        picture = Image.new("L", (200, 120), 0)
        draw = ImageDraw.Draw(picture)
        for xi, yi, c in zip(x, y, colours, strict=True):
            draw.ellipse((xi - radius, yi - radius, xi + radius, yi + radius), outline=int(c))
        canvas = np.zeros((120, 200), np.uint8)
        draw_rings(canvas, x, y, radius, colours)
        np.testing.assert_array_equal(canvas, np.asarray(picture))
    with pytest.raises(ValueError):  # as Pillow: x1 before x0
        draw_rings(np.zeros((9, 9), np.uint8), [4.0], [4.0], -1.0, [7])


def test_labels_drawn_at_once_are_the_pixels_of_one_text_at_a_time():
    """Labels in every colour, on half pixels (rounded half to even), partly off the
    canvas, overlapping; a text that is not printable ASCII takes the one-by-one way."""
    from reduxd.products.quicklook import Glyphs, _font

    rng = np.random.default_rng(3)
    texts = [
        (float(x), float(y), f"{i} -{rng.uniform(5, 15):.2f}"[: 1 + i % 9], int(v))
        for i, (x, y, v) in enumerate(
            zip(
                np.round(rng.uniform(-30, 230, 300) * 2) / 2,
                np.round(rng.uniform(-20, 130, 300) * 2) / 2,
                rng.integers(1, 255, 300),
                strict=True,
            )
        )
    ]
    for items in (texts, [*texts[:5], (3.0, 4.0, "é 1", 7)]):
        one, many = np.zeros((120, 200), np.uint8), np.zeros((120, 200), np.uint8)
        glyphs = Glyphs(_font())
        for x, y, text, value in items:
            glyphs.draw(one, x, y, text, value)
        Glyphs(_font()).draw_many(many, items)
        np.testing.assert_array_equal(many, one)
        assert many.any()


def test_block_means_are_numpys_float32_sums_bit_for_bit():
    """The compiled block means of a big frame's display are ``_bin``'s (numpy's float32
    sums of strided views, in the same order) times 1/factor**2, bit for bit; frames
    whose size is not a multiple of the factor; NaN and infinite pixels are reported."""
    from reduxd.products.quicklook import _bin, _block_mean

    rng = np.random.default_rng(11)
    for factor, shape in ((2, (1104, 1608)), (3, (301, 455)), (2, (7, 5))):
        data = (rng.normal(1000.0, 300.0, shape) * rng.uniform(0.5, 3e4, shape)).astype(np.float32)
        for bad in (None, np.nan, np.inf):
            image = data.copy()
            if bad is not None:
                image[shape[0] // 2, shape[1] // 3] = bad
            got, finite = _block_mean(image, factor)
            want = _bin(image, factor, np.add) * np.float32(1.0 / factor**2)
            assert got.dtype == np.float32 and got.shape == want.shape
            assert got.tobytes() == want.tobytes()
            assert finite == bool(np.isfinite(want).all()) == (bad is None)


@pytest.mark.parametrize("shape, zoom", [((500, 650), 2), ((1104, 1608), 1), ((37, 53), 1)])
@pytest.mark.parametrize("nan", [False, True])
def test_zscale_samples_the_same_values_as_astropy_from_the_whole_grid(shape, zoom, nan):
    from astropy.visualization import ZScaleInterval

    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 5.0, shape).astype(np.float32)
    image[rng.integers(0, shape[0], 40), rng.integers(0, shape[1], 40)] = 3e4  # stars
    if nan:
        image[3:9, :] = np.nan
    rows, cols = (np.arange(0, n * zoom, max(1, n * zoom // 256)) // zoom for n in shape)
    grid = image[np.ix_(rows, cols)]
    grid = grid[np.isfinite(grid)]
    sample = quicklook._zscale_sample(image, rows, cols)
    assert ZScaleInterval().get_limits(sample) == ZScaleInterval().get_limits(grid)


def _zscale_inputs():
    rng = np.random.default_rng(11)
    sky = rng.normal(100.0, 5.0, 5000).astype(np.float32)
    stars = sky.copy()
    stars[rng.integers(0, sky.size, 300)] = rng.uniform(1e3, 6e4, 300).astype(np.float32)
    holes = stars.astype(np.float64)
    holes[::7] = np.nan
    holes[::11] = np.inf
    return {
        "sky": sky,
        "sky with stars": stars,
        "NaN and inf": holes,
        "quantised": rng.integers(98, 103, 2000).astype(np.uint16),
        "constant": np.full(400, 7.0),
        "few": np.array([3.0, 1.0, 2.0, 50.0]),
        "one": np.array([5.0]),
        "a ramp": np.arange(1e4) ** 1.5,
        "half saturated": np.r_[rng.normal(500.0, 20.0, 600), np.full(600, 65535.0)],
    }


@pytest.mark.parametrize("name", list(_zscale_inputs()))
def test_zscale_limits_are_astropys(name):
    from astropy.visualization import ZScaleInterval

    values = _zscale_inputs()[name]
    kept = values.copy()
    assert quicklook.zscale_limits(values) == ZScaleInterval().get_limits(values)
    assert np.array_equal(values, kept, equal_nan=True)  # the input is not sorted in place


def test_a_light_chart_does_not_import_matplotlib(tmp_path):
    code = (
        "import sys, numpy as np; from astropy.table import Table;"
        "from reduxd.products.quicklook import write_quicklook;"
        "t = Table({'star_id': [1], 'x': [20.0], 'y': [30.0], 'mag_inst': [-7.5], 'flags': [0]});"
        "write_quicklook(sys.argv[1], np.random.rand(64, 64), t);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "q.png")],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"
