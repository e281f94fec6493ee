"""Sharp outliers (cosmic rays, hot pixels no dark removed) repaired; stars left alone."""

import numpy as np

from reduxd import maskbits
from reduxd.steps.sharp import repair_sharp
from reduxd.synth import render_stars

SHAPE = (200, 300)
CEILING = 4095.0


def _field(rng, fwhm):
    """Sky 100 ADU (noise 5), 40 stars of this FWHM (the 5 brightest clip at the ceiling)."""
    x = rng.uniform(10, SHAPE[1] - 10, 40)
    y = rng.uniform(10, SHAPE[0] - 10, 40)
    flux = np.geomspace(300, 3e5, 40)
    stars = render_stars(SHAPE, x, y, flux, fwhm)
    image = np.minimum(100 + stars + rng.normal(0, 5, SHAPE), CEILING)
    return image, x, y


def test_stars_are_never_repaired_whatever_their_width():
    rng = np.random.default_rng(5)
    for fwhm in (1.5, 2.0, 3.0, 5.0):
        image, _x, _y = _field(rng, fwhm)
        mask = np.where(image >= CEILING, maskbits.SATURATED, 0).astype(np.uint8)
        _fixed, new_mask, n = repair_sharp(image.astype(np.float32), mask)
        assert n == 0, f"FWHM {fwhm}: {n} star pixels taken for cosmic rays"
        assert (new_mask & maskbits.SATURATED).sum() == (mask & maskbits.SATURATED).sum()


def test_cosmic_rays_and_hot_pixels_are_repaired_and_not_saturated():
    rng = np.random.default_rng(6)
    image, x, y = _field(rng, 2.5)
    truth = image.copy()
    hits = [(50, 50), (120, 200), (150, 40)]
    for yy, xx in hits:  # two-pixel tracks at the ADC ceiling, one single hot pixel
        image[yy, xx : xx + 2] = CEILING
    image[20, 280] += 800
    # one on the wing of a star, 3 px from its centre
    star = int(np.argmin(np.abs(np.geomspace(300, 3e5, 40) - 2e4)))
    wy, wx = round(y[star]), round(x[star]) + 3
    image[wy, wx] += 1500
    mask = np.where(image >= CEILING, maskbits.SATURATED, 0).astype(np.uint8)
    fixed, new_mask, n = repair_sharp(image.astype(np.float32), mask)
    repaired = {tuple(p) for p in np.argwhere(new_mask & maskbits.REPAIRED).tolist()}
    expected = {(yy, xx + k) for yy, xx in hits for k in (0, 1)} | {(20, 280), (wy, wx)}
    assert repaired == expected and n == len(expected)
    for yy, xx in expected:  # back to what was there, within a few sky sigmas
        assert abs(fixed[yy, xx] - truth[yy, xx]) < 0.05 * truth[yy, xx] + 15
        assert not new_mask[yy, xx] & maskbits.SATURATED
