"""A light's products made the fast way are the plain way's: finder-chart pixels, FITS
card comments (issue 12, the long crowded night)."""

import itertools

import numpy as np
import pytest
from astropy.io import fits

from reduxd import fitsio
from reduxd.products import quicklook


@pytest.mark.parametrize("zoom", [1, 2, 3, 5])
def test_enlarged_is_repeat(zoom):
    grey = np.random.default_rng(zoom).integers(0, 255, (7, 11), dtype=np.uint8)
    assert np.array_equal(quicklook._enlarged(grey, zoom), grey.repeat(zoom, 0).repeat(zoom, 1))


@pytest.mark.parametrize("zoom", [1, 2, 3])
def test_enlarged_into_a_canvas_below_its_title(zoom):
    """The chart's frame is enlarged straight into the canvas, upside down."""
    grey = np.random.default_rng(zoom).integers(0, 255, (7, 11), dtype=np.uint8)
    canvas = np.full((5 + 7 * zoom, 11 * zoom), 9, np.uint8)
    quicklook._enlarged(grey[::-1], zoom, out=canvas[5:])
    assert (canvas[:5] == 9).all()
    assert np.array_equal(canvas[5:], grey[::-1].repeat(zoom, 0).repeat(zoom, 1))


@pytest.mark.parametrize("shape", [(50, 65), (500, 650), (120, 850), (900, 1700)])
def test_display_grey_masked_as_the_enlarged_frame_then_masked(shape):
    """Masking the grey levels before enlarging them (or binning) gives the chart's pixels:
    the frame shown (repeated or block-averaged), then its masked pixels in MASKED."""
    rng = np.random.default_rng(1)
    data = rng.normal(500, 20, shape).astype(np.float32)
    mask = (rng.random(shape) < 0.01).astype(np.uint8)
    data[mask == 1] = np.nan  # masked pixels are often not finite too
    image, scale = quicklook._display(data)
    factor = max(1, int(np.ceil(max(shape) / quicklook.MAX_SIDE)))
    zoom = int(scale) if scale >= 1 else 1
    expected = quicklook._grey_levels(data if factor == 1 else image, zoom=zoom)
    expected = expected.repeat(zoom, 0).repeat(zoom, 1)
    expected[quicklook._display_mask(mask, scale)] = quicklook.MASKED
    grey, got_zoom, got_scale = quicklook._display_grey(data, mask)
    grey = quicklook._enlarged(grey, got_zoom)
    assert got_scale == scale
    assert np.array_equal(grey, expected)
    plain, plain_zoom, _ = quicklook._display_grey(data)
    plain = quicklook._enlarged(plain, plain_zoom)
    shown = ~quicklook._display_mask(mask, scale)
    assert np.array_equal(plain[shown], grey[shown])


def card_comment(key, value, comment):
    """The comment as it fits beside the value (the definition: build the card)."""
    if not comment:
        return comment
    used = len(fits.Card(key, value).image.rstrip())
    return comment if used > 80 else comment[: max(80 - used - 3, 0)]


def test_fitting_comment_without_building_a_card_is_the_cards():
    values = [True, 0, -1, 10**18, -(10**19) + 1, 1.0, -1.2345678901234567e-300, np.float32(3.3),
              np.int64(-5), None, "", "x" * 8, "x" * 18, "x" * 19, "abc def  ", "x" * 60,
              "it's"]  # fmt: skip
    keys = ["A", "RDXDMODE", "LONGERKEYWORD"]
    comments = ["", "c", "x" * 47, "x" * 48, "raw frame, relative to its data folder", "y" * 70]
    for key, value, comment in itertools.product(keys, values, comments):
        assert fitsio._fitting(key, value, comment) == card_comment(key, value, comment)


def region_lines_one_by_one(table, radius):
    """The region lines, each value taken from the table one at a time (the definition)."""
    lines = []
    for sid, x, y, flags in zip(*(table[c] for c in ("star_id", "x", "y", "flags")), strict=True):
        if not (np.isfinite(float(x)) and np.isfinite(float(y))):
            continue
        color = " color=orange" if int(flags) else ""
        lines.append(f"circle({float(x) + 1:.3f},{float(y) + 1:.3f},{float(radius):.2f}) "
                     f"#{color} text={{{int(sid)}}}\n")  # fmt: skip
    return lines


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_region_text_of_a_table_is_its_values_one_by_one(dtype):
    from astropy.table import Table

    from reduxd.products.regions import region_text

    rng = np.random.default_rng(3)
    n = 200
    table = Table({"star_id": np.arange(1, n + 1), "x": rng.uniform(-0.5, 650, n).astype(dtype),
                   "y": rng.uniform(-0.5, 500, n).astype(dtype),
                   "flags": rng.integers(0, 3, n).astype(np.int32)})  # fmt: skip
    table["x"][5], table["y"][9] = np.nan, np.inf
    text = region_text(table, radius=np.float32(6.7011), title="t")
    assert text.splitlines(keepends=True)[4:] == region_lines_one_by_one(table, np.float32(6.7011))


def _stretched_by_numpy(image, lo, scale):
    """quicklook's grey levels as numpy makes them (857cd46's _grey_levels tail)."""
    scaled = (image - np.float32(lo)) * np.float32(scale)
    np.clip(scaled, 0, quicklook.LUT_SIZE - 1, out=scaled)
    scaled[np.isnan(scaled)] = 0.0
    return quicklook._ASINH_LUT[scaled.astype(np.uint16)]


@pytest.mark.parametrize("seed", range(5))
def test_stretched_is_numpys(seed):
    """The compiled stretch gives numpy's grey levels: float32 steps, clipping, NaN,
    infinities, values that round at the table's edges."""
    rng = np.random.default_rng(seed)
    image = rng.normal(500, 200, (61, 83)).astype(np.float32)
    image[rng.random(image.shape) < 0.02] = np.nan
    image[0, :4] = [np.inf, -np.inf, 1e38, -1e38]
    lo = np.float32(rng.uniform(100, 500))
    hi = lo + np.float32(rng.choice([1e-9, 0.5, 300.0, 1e6]))
    scale = np.float32((quicklook.LUT_SIZE - 1) / max(hi - lo, 1e-12))
    image[1, :3] = [lo, lo + (quicklook.LUT_SIZE - 1) / scale, np.nextafter(lo, np.float32(0))]
    got = quicklook.stretched(image, lo, scale)
    assert got.dtype == np.uint8
    assert np.array_equal(got, _stretched_by_numpy(image, lo, scale))
    view = image[:, ::2]  # not contiguous: numpy's way
    want = _stretched_by_numpy(view, lo, scale)
    assert np.array_equal(quicklook.stretched(view, lo, scale), want)
