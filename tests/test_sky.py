"""Sky estimates: global, annulus, radial profile fit (the observatory's method), mesh."""

import numpy as np
import pytest

from reduxd.steps import sky
from reduxd.synth import add_ccd_noise, render_stars

SKY = 100.0  # ADU, gain 1
READ_NOISE = 5.0


def noisy(image, rng):
    return add_ccd_noise(image, read_noise_e=READ_NOISE, rng=rng).astype(np.float32)


def test_clipped_stats_ignores_outliers_and_nan():
    values = np.r_[np.full(200, 10.0), 1e6, np.nan, -1e6]
    assert sky.clipped_stats(values) == (10.0, 0.0, 200)


def test_global_sky_of_region_and_frame():
    rng = np.random.default_rng(1)
    img = noisy(np.full((200, 300), SKY), rng)
    img[:, 150:] += 50.0  # the right half is brighter
    left = sky.global_sky(img, n=3, region=(0, 150, 0, 200))
    assert left.value.shape == (3,)
    # the median of Poisson counts sits 1/6 electron below the mean (documented)
    assert abs(left.value[0] - (SKY - 1 / 6)) < 4 * np.sqrt(np.pi / 2) * left.err[0]
    assert left.std[0] == pytest.approx(np.sqrt(SKY + READ_NOISE**2), rel=0.05)
    assert left.npix[0] > 10000


def test_annulus_sky_ignores_the_star_and_neighbours():
    rng = np.random.default_rng(2)
    img = noisy(render_stars((120, 120), [60, 85], [60, 62], [1e6, 1e5], 3.0) + SKY, rng)
    est = sky.annulus_sky(img, [60.0], [60.0], r_in=20, r_out=30)
    assert abs(est.value[0] - SKY) < 4 * est.err[0]
    assert est.err[0] == pytest.approx(est.std[0] / np.sqrt(est.npix[0]))


def test_radial_sky_recovers_a_known_constant_sky_within_its_error():
    rng = np.random.default_rng(3)
    pulls = []
    for _ in range(40):
        x, y = 30 + rng.uniform(-0.5, 0.5, 2)
        flux = 10 ** rng.uniform(4.0, 6.0)
        img = noisy(render_stars((61, 61), [x], [y], [flux], 3.0) + SKY, rng)
        fit = sky.fit_radial_sky(img, x, y, size=25, fwhm=3.0)
        assert fit["ok"], fit["reason"]
        pulls.append((fit["sky"] - SKY) / fit["err"])
    pulls = np.array(pulls)
    assert np.all(np.abs(pulls) < 4)
    assert abs(pulls.mean()) < 0.5
    assert 0.6 < pulls.std() < 1.5


def test_radial_sky_fits_a_defocused_ring():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:61, 0:61]
    ring = sky.ring_profile(np.hypot(xx - 30.2, yy - 29.7), 500.0, 6.0, 1.5, SKY)
    fit = sky.fit_radial_sky(noisy(ring, rng), 30.2, 29.7, size=41, fwhm=12.0)
    assert fit["ok"], fit["reason"]
    assert fit["params"][1] == pytest.approx(6.0, abs=0.2)
    assert abs(fit["sky"] - SKY) < 4 * fit["err"]


@pytest.mark.parametrize("companion", [(8.0, 0.0, 1.0), (5.0, 2.0, 1.0), (6.0, -4.0, 0.1)])
def test_radial_sky_rejects_a_blend_and_falls_back_to_the_annulus(companion):
    rng = np.random.default_rng(5)
    dx, dy, ratio = companion
    img = render_stars((81, 81), [40.0, 40 + dx], [40.0, 40 + dy], [1e5, 1e5 * ratio], 3.0)
    img = noisy(img + SKY, rng)
    est = sky.radial_sky(img, [40.0], [40.0], size=25, annulus=(20, 30), fwhm=3.0)
    assert est.rejected.tolist() == [True]
    ann = sky.annulus_sky(img, [40.0], [40.0], r_in=20, r_out=30)
    assert est.value[0] == ann.value[0]
    assert est.npix[0] == ann.npix[0]


def test_radial_sky_rejects_an_empty_subframe():
    rng = np.random.default_rng(6)
    for _ in range(10):
        img = noisy(np.full((81, 81), SKY), rng)
        est = sky.radial_sky(img, [40.0], [40.0], size=25, annulus=(20, 30), fwhm=3.0)
        assert est.rejected[0]
        assert abs(est.value[0] - SKY) < 5 * est.err[0]


def test_radial_sky_aperture_covariance_is_zero_without_an_aperture():
    rng = np.random.default_rng(7)
    img = noisy(render_stars((61, 61), [30.0], [30.0], [1e5], 3.0) + SKY, rng)
    est = sky.radial_sky(img, [30.0], [30.0], size=25, annulus=(20, 28), fwhm=3.0)
    with_ap = sky.radial_sky(img, [30.0], [30.0], size=25, annulus=(20, 28), fwhm=3.0, radius=9)
    assert np.all(est.aperture_cov == 0)
    assert 0 < with_ap.aperture_cov[0] < 1


def test_mesh_sky_follows_a_gradient():
    rng = np.random.default_rng(8)
    xx = np.mgrid[0:256, 0:256][1]
    img = noisy(SKY + 0.2 * xx, rng)
    est = sky.mesh_sky(img, [40.0, 200.0], [128.0, 128.0], box=32)
    assert est.value == pytest.approx(SKY + 0.2 * np.array([40.0, 200.0]), abs=1.5)


def test_background_map_matches_a_smooth_background():
    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[0:300, 0:400]
    truth = SKY + 0.05 * xx - 0.03 * yy
    bkg, noise = sky.background_map(noisy(truth, rng), box=50)
    # a box median from 625 pixels has an error of ~0.55 ADU here
    assert np.abs(bkg - truth).max() < 2.5
    assert np.abs(bkg - truth).mean() < 0.6
    assert noise == pytest.approx(np.sqrt(SKY + READ_NOISE**2), rel=0.15)


@pytest.mark.parametrize("method", sky.METHODS)
def test_sky_methods_do_not_modify_their_input(method):
    rng = np.random.default_rng(10)
    img = noisy(render_stars((128, 128), [64.0], [64.0], [1e5], 3.0) + SKY, rng)
    mask = np.zeros(img.shape, np.uint8)
    mask[10, 10] = 1
    before, mask_before = img.copy(), mask.copy()
    est = sky.estimate_sky(img, [64.0], [64.0], method=method, mask=mask, box=32)
    assert np.array_equal(img, before) and np.array_equal(mask, mask_before)
    assert abs(est.value[0] - SKY) < 5 * max(est.err[0], 0.1)


def test_unknown_sky_method_is_refused():
    with pytest.raises(ValueError, match="unknown sky method"):
        sky.estimate_sky(np.zeros((10, 10)), [5.0], [5.0], method="median")
