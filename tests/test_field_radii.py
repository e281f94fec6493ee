"""Aperture radii from the seeing: fixed per field only where the field is crowded."""

import numpy as np
import pytest

from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import add_ccd_noise, render_stars

SHAPE = (400, 500)


def frame(rng, stars, fwhm):
    x, y, flux = stars
    electrons = render_stars(SHAPE, x, y, flux, fwhm) + 300.0
    return add_ccd_noise(electrons, read_noise_e=5.0, rng=rng).astype(np.float32)


@pytest.mark.parametrize(("n_stars", "crowded"), [(25, False), (900, True)])
def test_radii_follow_the_seeing_unless_the_field_is_crowded(n_stars, crowded):
    rng = np.random.default_rng(41)
    stars = (rng.uniform(20, SHAPE[1] - 20, n_stars), rng.uniform(20, SHAPE[0] - 20, n_stars),
             10 ** rng.uniform(4.0, 5.5, n_stars))  # fmt: skip
    params = PhotParams(radius=0.0, sky_method="annulus", annulus=None)
    first = photometer(frame(rng, stars, 3.0), exptime=1.0, params=params)
    worse = photometer(
        frame(rng, stars, 4.5), exptime=1.0, params=params, reference=first.reference
    )
    assert first.radius == pytest.approx(2 * first.fwhm)
    assert worse.fwhm > 1.3 * first.fwhm
    if crowded:  # neighbours inside the annulus: the first frame's radii are kept
        assert first.reference.aperture_fwhm == first.fwhm
        assert worse.radius == first.radius
    else:  # isolated stars: 2 x each frame's FWHM
        assert first.reference.aperture_fwhm == 0.0
        assert worse.radius == pytest.approx(2 * worse.fwhm)
