"""The vectorised annulus sky equals the per-star clipped_stats reference."""

import numpy as np
import pytest

from reduxd.steps import sky


def _reference(data, x, y, r_in, r_out, mask):
    out = np.full((3, x.size), np.nan)
    ny, nx = data.shape
    half = int(np.ceil(r_out))
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        xc, yc = round(float(xi)), round(float(yi))
        sl = (  # clamped: a stamp wholly off the frame is empty
            slice(max(yc - half, 0), max(min(yc + half + 1, ny), 0)),
            slice(max(xc - half, 0), max(min(xc + half + 1, nx), 0)),
        )
        yy, xx = np.ogrid[sl[0], sl[1]]
        r = np.hypot(xx - xi, yy - yi)
        ring = (r >= r_in) & (r < r_out) & (mask[sl] == 0)
        out[:, i] = sky.clipped_stats(data[sl][ring])
    return out


def test_annulus_sky_matches_per_star_clipped_stats():
    rng = np.random.default_rng(7)
    data = rng.normal(100, 5, (150, 200)).astype(np.float32)
    data[rng.integers(0, 150, 200), rng.integers(0, 200, 200)] += 500  # outliers to clip
    data[10:14, 20:30] = np.nan
    mask = np.zeros(data.shape, np.uint8)
    mask[rng.integers(0, 150, 300), rng.integers(0, 200, 300)] = 1
    x = np.r_[rng.uniform(-5, 205, 40), 0.5, 199.5]
    y = np.r_[rng.uniform(-5, 155, 40), 149.5, 0.5]
    # narrow annuli (width < 2 sqrt(0.5)): offsets that can miss either radius
    for r_in, r_out in ((8, 14), (7.5, 12.2), (0, 4), (5.0, 6.2), (10.3, 11.0)):
        est = sky.annulus_sky(data, x, y, r_in=r_in, r_out=r_out, mask=mask)
        med, std, n = _reference(data, x, y, r_in, r_out, mask)
        np.testing.assert_array_equal(est.value, med)
        np.testing.assert_array_equal(est.npix, n)
        np.testing.assert_allclose(est.std, std, rtol=1e-12)


def _check(data, x, y, r_in, r_out, mask=None):
    """annulus_sky against the per-star reference: n and median exact, std to 1e-10."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    usable = np.zeros(data.shape, np.uint8) if mask is None else mask
    est = sky.annulus_sky(data, x, y, r_in=r_in, r_out=r_out, mask=mask)
    med, std, n = _reference(np.asarray(data, np.float64), x, y, r_in, r_out, usable)
    np.testing.assert_array_equal(est.npix, n)
    np.testing.assert_array_equal(est.value, med)
    np.testing.assert_allclose(est.std, std, rtol=1e-10, atol=0)
    np.testing.assert_array_equal(est.err, est.std / np.sqrt(np.maximum(n, 1)))
    return est


def _edge_positions(ny, nx):
    """Stars on, across and off every edge and corner, at whole and half pixels."""
    xs = [-30.0, -12.0, -0.5, 0.0, 0.5, 3.7, nx / 2 + 0.25, nx - 4.2, nx - 1.0, nx - 0.5, nx + 9.0]
    ys = [-30.0, -12.0, -0.5, 0.0, 0.5, 2.5, ny / 2 - 0.5, ny - 3.5, ny - 1.0, ny - 0.5, ny + 9.0]
    xx, yy = np.meshgrid(xs, ys)
    return xx.ravel(), yy.ravel()


def test_annulus_sky_at_and_beyond_every_edge_with_nans_and_masks():
    rng = np.random.default_rng(11)
    data = rng.normal(300, 12, (70, 90)).astype(np.float32)
    data[rng.integers(0, 70, 60), rng.integers(0, 90, 60)] += rng.uniform(100, 5e4, 60)
    data[rng.integers(0, 70, 80), rng.integers(0, 90, 80)] = np.nan
    data[rng.integers(0, 70, 20), rng.integers(0, 90, 20)] = np.inf
    data[0, :] = -np.inf  # a whole non-finite edge row
    mask = np.zeros(data.shape, np.uint8)
    mask[rng.integers(0, 70, 200), rng.integers(0, 90, 200)] = 4
    x, y = _edge_positions(*data.shape)
    for r_in, r_out in ((0.0, 3.0), (5.0, 6.2), (10.3, 11.0), (6.0, 16.0), (12.5, 26.5)):
        est = _check(data, x, y, r_in, r_out, mask)
        assert (est.npix == 0).any() and (est.npix > 0).any()  # off the frame, and on it


def test_annulus_sky_with_no_one_or_two_pixels_left():
    data = np.arange(41 * 41, dtype=np.float32).reshape(41, 41)
    mask = np.ones(data.shape, np.uint8)  # everything masked: NaN, n = 0
    est = _check(data, [20.0], [20.0], 5.0, 8.0, mask)
    assert est.npix[0] == 0 and np.isnan(est.value[0]) and np.isnan(est.std[0])
    mask[20, 26] = 0  # one pixel left: its value, std 0
    est = _check(data, [20.0], [20.0], 5.0, 8.0, mask)
    assert (est.npix[0], est.value[0], est.std[0]) == (1, data[20, 26], 0.0)
    mask[14, 20] = 0  # two: their mean, half their difference
    est = _check(data, [20.0], [20.0], 5.0, 8.0, mask)
    assert (est.npix[0], est.value[0]) == (2, (data[20, 26] + data[14, 20]) / 2)
    assert est.std[0] == abs(data[20, 26] - data[14, 20]) / 2
    data[:] = np.nan  # all non-finite
    assert _check(data, [20.0], [20.0], 5.0, 8.0).npix[0] == 0


def test_annulus_sky_with_ties_and_constant_skies():
    rng = np.random.default_rng(3)
    x, y = rng.uniform(-3, 83, 60), rng.uniform(-3, 63, 60)
    # few distinct values: many ties, also at the clipping limits and the medians
    ties = rng.integers(95, 106, (60, 80)).astype(np.float32)
    ties[rng.integers(0, 60, 40), rng.integers(0, 80, 40)] = 1e4
    _check(ties, x, y, 4.0, 12.0)
    _check(ties, x, y, 0.0, 2.5)
    steps = np.repeat(np.float32([10.0, 11.0]), 2400).reshape(60, 80)  # two levels, even split
    _check(steps, x, y, 6.0, 14.0)
    flat = np.full((60, 80), 1234.5678, np.float32)  # constant: std exactly 0
    flat[rng.integers(0, 60, 50), rng.integers(0, 80, 50)] = 9e4  # hot pixels: clipped
    est = _check(flat, x, y, 5.0, 15.0)
    assert (est.std[est.npix > 0] == 0.0).all() and (est.value[est.npix > 0] == flat[0, 0]).all()


def test_annulus_sky_reads_float64_big_endian_and_integer_images():
    rng = np.random.default_rng(5)
    base = rng.normal(2000, 30, (64, 64))
    base[rng.integers(0, 64, 30), rng.integers(0, 64, 30)] += 3e4
    x, y = rng.uniform(-5, 69, 40), rng.uniform(-5, 69, 40)
    native = _check(base.astype(np.float32), x, y, 7.0, 15.0)
    for dtype in (">f4", np.float16):  # the same float32 values
        same = _check(base.astype(np.float32).astype(dtype), x, y, 7.0, 15.0)
        if dtype == ">f4":
            np.testing.assert_array_equal(same.std, native.std)
    for dtype in (np.float64, ">f8", np.int32, ">u2"):
        _check((base + 1e6 if dtype == np.float64 else base).astype(dtype), x, y, 7.0, 15.0)
    mask = (rng.random((64, 64)) < 0.1).astype(">i4")  # a wide, big-endian mask
    _check(base, x, y, 7.0, 15.0, mask)


def test_annulus_sky_checks_its_arguments():
    data = np.zeros((20, 20), np.float32)
    for r_in, r_out in ((5.0, 5.0), (-1.0, 4.0), (6.0, 4.0), (1.0, np.inf), (np.nan, 3.0)):
        with pytest.raises(ValueError, match="r_in < r_out"):
            sky.annulus_sky(data, [5.0], [5.0], r_in=r_in, r_out=r_out)
    with pytest.raises(ValueError, match="mask shape"):
        sky.annulus_sky(data, [5.0], [5.0], r_in=1, r_out=3, mask=np.zeros((20, 21), np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        sky.annulus_sky(data[0], [5.0], [5.0], r_in=1, r_out=3)
    with pytest.raises(ValueError, match="1-D of one size"):
        sky.annulus_sky(data, [5.0, 6.0], [5.0], r_in=1, r_out=3)
    empty = sky.annulus_sky(data, [], [], r_in=1, r_out=3)
    assert empty.value.shape == (0,) and empty.method == "annulus"


def test_annulus_sky_std_keeps_its_precision_when_bright_stars_are_clipped():
    # the squares' sums fall ~1e5-fold as the clipping takes the stars' pixels off:
    # summed again on the way, the std stays within ~1e-13 of numpy's
    from reduxd.synth import render_stars

    rng = np.random.default_rng(2)
    sx, sy = rng.uniform(0, 160, 60), rng.uniform(0, 120, 60)
    img = render_stars((120, 160), sx, sy, rng.uniform(1e5, 3e6, 60), 3.0)
    img = (img + rng.normal(500, 20, img.shape)).astype(np.float32)
    x, y = rng.uniform(10, 150, 80), rng.uniform(10, 110, 80)
    est = sky.annulus_sky(img, x, y, r_in=10.0, r_out=22.0)
    med, std, n = _reference(img, x, y, 10.0, 22.0, np.zeros(img.shape, np.uint8))
    np.testing.assert_array_equal(est.npix, n)
    np.testing.assert_array_equal(est.value, med)
    np.testing.assert_allclose(est.std, std, rtol=1e-12, atol=0)


def test_annulus_sky_on_a_quantised_sky():
    # whole-number sky with a noise of half a unit: equal quartiles, buckets of one value
    rng = np.random.default_rng(8)
    img = np.round(rng.normal(100, 0.5, (80, 100))).astype(np.float32)
    img[rng.integers(0, 80, 40), rng.integers(0, 100, 40)] = 140.0
    x, y = rng.uniform(-4, 104, 50), rng.uniform(-4, 84, 50)
    est = _check(img, x, y, 6.0, 18.0)
    assert set(est.value[est.npix > 0]) == {100.0}
