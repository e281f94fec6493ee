"""Crowded fields: the vectorised pieces give what the plain per-star versions give."""

import numpy as np
from scipy.spatial import cKDTree

from reduxd import maskbits, phot_columns
from reduxd.products.labels import OFFSETS, place_labels
from reduxd.steps.detect import _suppress
from reduxd.steps.measure import Flag, aperture_flags, circle_sums, measure_radii
from reduxd.steps.sky import annulus_sky, clipped_stats

RNG = np.random.default_rng(12)


def _one_by_one_labels(stars, *, radius, char_width, height):
    """The first-fit rule, one candidate box at a time against every box and circle."""
    cx, cy = np.array([s[1] for s in stars]), np.array([s[2] for s in stars])
    boxes, out, gap = [], {}, radius + 0.25 * height
    for key, x, y, text in stars:
        width = char_width * max(len(text), 1)
        for dx, dy in OFFSETS:
            x0 = x + dx * gap - (width if dx < 0 else width / 2 if dx == 0 else 0.0)
            y0 = y + dy * gap - (height if dy < 0 else height / 2 if dy == 0 else 0.0)
            box = (x0, y0, x0 + width, y0 + height)
            over = any(x0 < b[2] and b[0] < box[2] and y0 < b[3] and b[1] < box[3] for b in boxes)
            nx, ny = np.clip(cx, x0, box[2]), np.clip(cy, y0, box[3])
            if not over and not np.any((nx - cx) ** 2 + (ny - cy) ** 2 < radius**2):
                boxes.append(box)
                out[key] = box
                break
    return out


def test_labels_of_a_crowded_chart_are_placed_by_the_first_fit_rule():
    for n in (1, 40, 700):
        xy = RNG.uniform(0, 800, (2, n))
        stars = [(k, xy[0, k], xy[1, k], f"{k} -{k % 9}.5"[: 1 + k % 7]) for k in range(n)]
        opts = dict(radius=6.0, char_width=6.0, height=12.0)
        assert place_labels(stars, **opts) == _one_by_one_labels(stars, **opts)


def test_peak_suppression_keeps_the_brightest_of_each_group():
    for _ in range(50):
        n = int(RNG.integers(1, 300))
        x, y = RNG.integers(0, 40, (2, n)) * 4 + 1.5  # ties and plateaus on purpose
        value = RNG.integers(0, 4, n).astype(float)
        order, taken = np.argsort(-value, kind="stable"), np.zeros(n, bool)
        tree, keep = cKDTree(np.column_stack([x, y])), np.zeros(n, bool)
        for i in order:
            if not taken[i]:
                keep[i] = True
                taken[tree.query_ball_point([x[i], y[i]], 6.0)] = True
        assert np.array_equal(_suppress(x, y, value, 6.0), keep)


def _crowded(n=400, shape=(300, 400)):
    img = RNG.normal(100.0, 5.0, shape)
    x, y = RNG.uniform(-5, shape[1] + 5, n), RNG.uniform(-5, shape[0] + 5, n)
    ix, iy = np.clip(x.astype(int), 0, shape[1] - 1), np.clip(y.astype(int), 0, shape[0] - 1)
    img[iy, ix] += RNG.uniform(100, 5e4, n)  # bright pixels: outliers in the annuli
    return img, x, y


def test_sums_of_every_radius_equal_photutils_exact_even_off_the_edge_and_read_only():
    img, x, y = _crowded()
    radii = [2.0, 3.5, 7.25]
    data = img.astype(">f4")  # FITS byte order, read-only
    data.flags.writeable = False
    sums = circle_sums(data, x, y, radii)
    for k, r in enumerate(radii):
        ref = phot_columns.aperture_sums(img.astype(np.float32), x, y, r)
        np.testing.assert_allclose(sums[:, k], ref, rtol=1e-12)


def test_nan_pixels_are_left_out_of_sums_and_areas_at_every_radius():
    img, x, y = _crowded(50)
    img = img.astype(np.float32)  # calibrated lights are float32 (sep sums pixels as float)
    img[np.rint(y[0]).astype(int) % 300, np.rint(x[0]).astype(int) % 400] = np.nan
    sky = annulus_sky(img, x, y, r_in=10, r_out=15)
    flux, _ = measure_radii(img, x, y, radii=[2.0, 4.0], sky=sky)
    for k, r in enumerate((2.0, 4.0)):
        bad = ~np.isfinite(img)
        sums = phot_columns.aperture_sums(img, x, y, r, mask=bad)
        areas = phot_columns.aperture_areas(img, x, y, r, mask=bad)
        np.testing.assert_allclose(flux[:, k], sums - sky.value * areas, rtol=1e-9)


def test_mask_flags_equal_a_pixel_by_pixel_search():
    img, x, y = _crowded()
    mask = np.zeros(img.shape, np.uint8)
    mask[RNG.integers(0, 300, 60), RNG.integers(0, 400, 60)] = maskbits.BAD
    mask[RNG.integers(0, 300, 60), RNG.integers(0, 400, 60)] |= maskbits.SATURATED
    flags = aperture_flags(img.shape, x, y, 4.0, mask)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    for i in range(x.size):
        near = (xx - x[i]) ** 2 + (yy - y[i]) ** 2 <= 4.5**2
        bits = np.bitwise_or.reduce(mask[near]) if near.any() else 0
        assert bool(flags[i] & Flag.SATURATED) == bool(bits & maskbits.SATURATED)
        assert bool(flags[i] & Flag.BAD_PIXEL) == bool(bits & maskbits.BAD)


def test_annulus_clipping_equals_clipped_stats_star_by_star_in_a_crowd():
    img, x, y = _crowded(300)
    sky = annulus_sky(img, x, y, r_in=6.5, r_out=14.0)
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    for i in range(0, x.size, 7):
        r = np.hypot(xx - x[i], yy - y[i])
        med, std, n = clipped_stats(img[(r >= 6.5) & (r < 14.0)])
        if n == 0:
            assert sky.npix[i] == 0
            continue
        assert sky.npix[i] == n
        np.testing.assert_allclose([sky.value[i], sky.std[i]], [med, std], rtol=1e-9)
