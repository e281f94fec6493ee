"""Star detection: completeness, no artefacts, FWHM from the data, odd stars kept."""

import warnings

import numpy as np
import pytest

from reduxd import maskbits
from reduxd.steps import detect
from reduxd.steps.match import match_nearest
from reduxd.synth import add_ccd_noise, render_stars

GAIN, READ_NOISE, SKY_E = 2.0, 5.0, 200.0


def star_field(rng, *, shape=(512, 512), n=60, fwhm=3.0, flux=(2.5, 6.0), margin=20, sep=14):
    """Random, well-separated stars with log-uniform fluxes (electrons); frame in ADU."""
    x, y = [], []
    while len(x) < n:
        cx, cy = rng.uniform(margin, shape[1] - margin), rng.uniform(margin, shape[0] - margin)
        if all(np.hypot(cx - a, cy - b) > sep for a, b in zip(x, y, strict=True)):
            x.append(cx)
            y.append(cy)
    x, y = np.array(x), np.array(y)
    flux_e = 10 ** rng.uniform(*flux, n)
    electrons = render_stars(shape, x, y, flux_e, fwhm) + SKY_E
    return electrons, x, y, flux_e


def to_adu(electrons, rng):
    return (add_ccd_noise(electrons, read_noise_e=READ_NOISE, rng=rng) / GAIN).astype(np.float32)


def true_snr(flux_e, fwhm, radius_fwhm=3.0):
    n_ap = np.pi * (radius_fwhm * fwhm) ** 2
    return flux_e / np.sqrt(flux_e + n_ap * (SKY_E + READ_NOISE**2))


def test_finds_at_least_99_percent_of_stars_above_snr_20():
    rng = np.random.default_rng(11)
    found = wanted = 0
    for _ in range(5):
        electrons, x, y, flux_e = star_field(rng)
        det = detect.detect_stars(to_adu(electrons, rng))
        bright = true_snr(flux_e, 3.0) > 20
        idx = match_nearest(det.x, det.y, x[bright], y[bright], radius=1.5)
        found += int(np.count_nonzero(idx >= 0))
        wanted += int(bright.sum())
    assert wanted > 150
    assert found / wanted >= 0.99


def test_no_detections_on_cosmic_rays_or_hot_pixels():
    rng = np.random.default_rng(12)
    electrons, x, y, _ = star_field(rng, n=30, flux=(4.0, 5.5))
    img = to_adu(electrons, rng)
    spikes = []
    while len(spikes) < 80:  # single sharp pixels from 20 to 20000 sigma, away from stars
        sx, sy = rng.integers(5, 507, 2)
        if np.min(np.hypot(x - sx, y - sy)) > 12:
            spikes.append((sx, sy))
    sx, sy = np.array(spikes).T
    noise = np.sqrt(SKY_E + READ_NOISE**2) / GAIN
    img[sy, sx] += (noise * 10 ** rng.uniform(1.3, 4.3, sx.size)).astype(np.float32)
    det = detect.detect_stars(img)
    on_spike = match_nearest(sx, sy, det.x, det.y, radius=2.0) >= 0
    assert not on_spike.any(), list(zip(det.x[on_spike], det.y[on_spike], strict=True))
    assert np.count_nonzero(match_nearest(det.x, det.y, x, y, radius=1.5) >= 0) == 30


@pytest.mark.parametrize("fwhm", [2.2, 4.0, 8.0])
def test_fwhm_is_measured_from_the_data(fwhm):
    rng = np.random.default_rng(13)
    electrons, x, y, _ = star_field(rng, n=25, fwhm=fwhm, flux=(4.5, 5.5), sep=6 * fwhm)
    det = detect.detect_stars(to_adu(electrons, rng))
    assert det.frame_fwhm == pytest.approx(fwhm, rel=0.1)
    assert np.count_nonzero(match_nearest(det.x, det.y, x, y, radius=1.0) >= 0) == 25


def test_saturated_and_defocused_stars_are_kept():
    rng = np.random.default_rng(14)
    electrons, x, y, _ = star_field(rng, n=20, flux=(4.0, 5.0), margin=60, sep=40)
    yy, xx = np.mgrid[0:512, 0:512]
    donut = 4000.0 * np.exp(-0.5 * ((np.hypot(xx - 256.3, yy - 250.8) - 12.0) / 3.0) ** 2)
    far = np.hypot(x - 256, y - 251) > 45
    electrons = render_stars((512, 512), x[far], y[far], np.full(far.sum(), 2e5), 3.0)
    electrons += render_stars((512, 512), [100.2], [400.7], [5e7], 3.0) + donut + SKY_E
    img = to_adu(electrons, rng)
    level = 30000.0
    mask = np.where(img >= level, maskbits.SATURATED, 0).astype(np.uint8)
    img = np.minimum(img, level)
    det = detect.detect_stars(img, mask=mask)
    sat = match_nearest(det.x, det.y, [100.2], [400.7], radius=1.0)
    ring = match_nearest(det.x, det.y, [256.3], [250.8], radius=1.5)
    assert sat[0] >= 0 and ring[0] >= 0
    assert np.count_nonzero(np.hypot(det.x - 256.3, det.y - 250.8) < 30) == 1  # one ring, one star
    assert det.fwhm[np.argmin(np.hypot(det.x - 256.3, det.y - 250.8))] > 3 * det.frame_fwhm


def test_burned_in_text_is_not_a_star():
    rng = np.random.default_rng(15)
    electrons, *_ = star_field(rng, n=20, flux=(4.0, 5.0), margin=40)
    img = to_adu(electrons, rng)
    img[0:16, 0:190] = 0.0  # SharpCap's black box ...
    for left in range(2, 186, 9):  # ... with saturated 2-pixel strokes: 0, 8, 1, ...
        glyph = rng.integers(0, 3)
        img[3:14, left : left + 2] = 65535.0
        img[3:14, left + 5 : left + 7] = 65535.0 if glyph != 2 else 0.0
        img[3:5, left : left + 7] = 65535.0
        img[12:14, left : left + 7] = 65535.0 if glyph != 1 else 0.0
        img[8:9, left + 2 : left + 5] = 65535.0 if glyph == 1 else 0.0
    mask = np.where(img >= 65535, maskbits.SATURATED, 0).astype(np.uint8)
    for m in (mask, None):
        det = detect.detect_stars(img, mask=m)
        assert not np.any((det.y < 20) & (det.x < 195)), list(zip(det.x, det.y, strict=True))


def test_detection_does_not_modify_its_input():
    rng = np.random.default_rng(16)
    electrons, *_ = star_field(rng, n=10)
    img = to_adu(electrons, rng)
    mask = np.zeros(img.shape, np.uint8)
    mask[5:7, 5:7] = maskbits.BAD
    img[5:7, 5:7] = np.nan
    before, mask_before = img.copy(), mask.copy()
    detect.detect_stars(img, mask=mask)
    assert np.array_equal(img, before, equal_nan=True) and np.array_equal(mask, mask_before)


def test_an_empty_frame_has_no_stars():
    rng = np.random.default_rng(17)
    det = detect.detect_stars(to_adu(np.full((256, 256), SKY_E), rng))
    assert det.x.size == 0


def test_coarse_peaks_finds_bright_stars_cheaply():
    rng = np.random.default_rng(18)
    electrons, x, y, _ = star_field(rng, n=20, flux=(5.0, 5.5), sep=20)
    peaks = detect.coarse_peaks(to_adu(electrons, rng), binning=4, nsigma=5)
    assert np.count_nonzero(match_nearest(peaks.x, peaks.y, x, y, radius=4.0) >= 0) == 20


def test_local_maxima_are_those_of_scipys_maximum_filter():
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for shape in [(60, 80), (7, 5), (1, 6), (4, 1), (2, 2)]:
        for ties in (False, True):
            img = rng.normal(size=shape).astype(np.float32)
            if ties:  # plateaus: equal neighbours are both maxima
                img = np.round(img * 2) / 2
            expected = img == ndimage.maximum_filter(img, size=3)
            np.testing.assert_array_equal(detect._local_maxima(img), expected)


def test_local_background_is_the_nanmedian_of_the_usable_border_pixels():
    rng = np.random.default_rng(12)
    img = rng.normal(100, 5, (80, 90)).astype(np.float32)
    img[rng.integers(0, 80, 60), rng.integers(0, 90, 60)] = np.nan
    mask = np.zeros(img.shape, np.uint8)
    mask[rng.integers(0, 80, 200), rng.integers(0, 90, 200)] = maskbits.BAD
    x, y = rng.uniform(-3, 93, 50), rng.uniform(-3, 83, 50)
    x[:2], y[:2] = 40.0, 40.0  # an even and an odd count of usable pixels at least
    half = 6
    got = detect.local_background(img, x, y, half=half, mask=mask)
    for i in range(x.size):
        cx, cy = int(np.rint(x[i])), int(np.rint(y[i]))
        values = []
        for jy in range(cy - half, cy + half + 1):
            for jx in range(cx - half, cx + half + 1):
                border = max(abs(jx - cx), abs(jy - cy)) == half
                if border and 0 <= jx < 90 and 0 <= jy < 80 and mask[jy, jx] == 0:
                    values.append(img[jy, jx])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(np.array(values, np.float64)) if values else np.nan
        np.testing.assert_equal(got[i], expected)


def test_robust_std_equals_the_numpy_median_definition():
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 4, 5, 100, 101, 6969, 27738):
        v = rng.normal(100.0, 7.0, n).astype(np.float32)
        v[rng.integers(0, n, max(n // 50, 0))] = 100.0  # ties
        if n > 10:
            v[:3] = [np.nan, np.inf, -np.inf]  # left out
        w = v[np.isfinite(v)].astype(np.float64)
        expected = 1.4826 * np.median(np.abs(w - np.median(w)))
        assert detect.robust_std(v) == expected, n
