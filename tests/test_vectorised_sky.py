"""The vectorised annulus sky equals the per-star clipped_stats reference."""

import numpy as np

from reduxd.steps import sky


def _reference(data, x, y, r_in, r_out, mask):
    out = np.full((3, x.size), np.nan)
    ny, nx = data.shape
    half = int(np.ceil(r_out))
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        xc, yc = round(float(xi)), round(float(yi))
        sl = (
            slice(max(yc - half, 0), min(yc + half + 1, ny)),
            slice(max(xc - half, 0), min(xc + half + 1, nx)),
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
