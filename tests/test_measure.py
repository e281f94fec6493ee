"""Aperture fluxes equal photutils', errors are honest (pulls ~ N(0, 1)), flags are set."""

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry

from reduxd import maskbits, phot_columns
from reduxd.steps import sky
from reduxd.steps.match import match_nearest
from reduxd.steps.measure import Flag, flagged_pixels, flux_error, measure
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import add_ccd_noise, render_stars

GAIN, READ_NOISE, SKY_E, FWHM, EXPTIME = 2.0, 5.0, 200.0, 3.0, 10.0


def grid_frame(rng, *, shape=(400, 400), n=6):
    """Stars on a jittered grid (no blends), log-uniform fluxes; (adu, x, y, flux_adu)."""
    g = np.linspace(40, shape[0] - 40, n)
    gx, gy = np.meshgrid(g, g)
    x = gx.ravel() + rng.uniform(-5, 5, gx.size)
    y = gy.ravel() + rng.uniform(-5, 5, gx.size)
    flux_e = 10 ** rng.uniform(3.0, 6.0, x.size)
    electrons = render_stars(shape, x, y, flux_e, FWHM) + SKY_E
    adu = add_ccd_noise(electrons, read_noise_e=READ_NOISE, rng=rng) / GAIN
    return adu.astype(np.float32), x, y, flux_e / GAIN


def test_flag_bits_are_the_documented_ones():
    expected = {
        "SATURATED": 1,
        "NEAR_EDGE": 2,
        "BAD_PIXEL": 4,
        "SKY_FIT_REJECTED": 8,
        "LOW_SNR": 16,
        "BLEND": 32,
        "NONPOSITIVE_FLUX": 64,
        "LARGE_FWHM": 128,
        "NOT_RECENTRED": 256,
    }
    assert {f.name: f.value for f in Flag} == expected


def test_fluxes_equal_photutils_at_the_same_positions_radius_and_sky():
    rng = np.random.default_rng(21)
    img, *_ = grid_frame(rng)
    x, y = rng.uniform(30, 370, 25), rng.uniform(30, 370, 25)
    est = sky.annulus_sky(img, x, y, r_in=15, r_out=25)
    table = measure(img, x, y, radius=7.3, sky=est, exptime=EXPTIME)
    ref = aperture_photometry(img, CircularAperture(np.column_stack([x, y]), r=7.3), method="exact")
    expected = np.asarray(ref[phot_columns.SUM]) - est.value * np.pi * 7.3**2
    assert np.asarray(table["flux"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["radial", "annulus", "global", "mesh"])
def test_photometer_fluxes_equal_photutils_at_its_positions(method):
    rng = np.random.default_rng(22)
    img, *_ = grid_frame(rng)
    params = PhotParams(radius=9.0, sky_method=method, annulus=(15, 25), mesh_box=50)
    table = photometer(img, exptime=EXPTIME, params=params).table
    xy = np.column_stack([table["x"], table["y"]])
    ref = aperture_photometry(img, CircularAperture(xy, r=9.0), method="exact")
    expected = np.asarray(ref[phot_columns.SUM]) - np.asarray(table["sky"]) * np.pi * 81
    assert len(table) == 36
    assert np.asarray(table["flux"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("method", "noise"),
    [
        ("radial", "measured"),
        ("annulus", "measured"),
        ("annulus", "model"),
        ("global", "measured"),
        ("mesh", "model"),
    ],
)
def test_magnitude_errors_are_honest(method, noise):
    rng = np.random.default_rng(23)
    pulls, bright_dm = [], []
    params = PhotParams(
        radius=3 * FWHM,
        sky_method=method,
        annulus=(15, 25),
        mesh_box=50,
        gain_e_per_adu=GAIN,
        read_noise_e=READ_NOISE,
        noise=noise,
    )
    for _ in range(10):
        img, x, y, flux = grid_frame(rng)
        table = photometer(img, exptime=EXPTIME, params=params).table
        idx = match_nearest(x, y, np.asarray(table["x"]), np.asarray(table["y"]), radius=1.5)
        ok = (idx >= 0) & ((np.asarray(table["flags"]) & (Flag.NEAR_EDGE | Flag.BLEND)) == 0)
        dm = np.asarray(table["mag_inst"])[ok] + 2.5 * np.log10(flux[idx[ok]] / EXPTIME)
        good = np.isfinite(dm)
        pulls.append(dm[good] / np.asarray(table["mag_err"])[ok][good])
        bright_dm.append(dm[np.asarray(table["snr"])[ok] > 200])
    pulls, bright_dm = np.concatenate(pulls), np.concatenate(bright_dm)
    robust_std = 1.4826 * np.median(np.abs(pulls - np.median(pulls)))
    assert pulls.size > 300 and bright_dm.size > 50
    assert 0.8 < robust_std < 1.2
    assert abs(np.mean(bright_dm)) < 0.005


def test_flux_error_is_the_ccd_equation():
    flux, n_ap, std, n_sky, g = 5000.0, 100.0, 4.0, 400.0, 2.0
    err = flux_error(flux, n_ap=n_ap, sky_std=std, sky_err=std / np.sqrt(n_sky), gain=g)
    expected = np.sqrt(flux * g + n_ap * (1 + n_ap / n_sky) * (std * g) ** 2) / g
    assert float(err) == pytest.approx(expected)
    model = flux_error(
        flux,
        n_ap=n_ap,
        sky_std=0,
        sky_err=0,
        gain=g,
        sky=50.0,
        sky_npix=n_sky,
        exptime=30.0,
        read_noise_e=6.0,
        dark_e_per_s=0.5,
        noise="model",
    )
    var_pix = 50.0 * g + 0.5 * 30.0 + 36.0
    expected = np.sqrt(flux * g + n_ap * (1 + n_ap / n_sky) * var_pix) / g
    assert float(model) == pytest.approx(expected)


def test_flags_from_mask_edges_and_flux():
    img = np.full((100, 100), 10.0, np.float32)
    img += render_stars((100, 100), [30, 60, 2, 80], [30, 60, 50, 80], [5e4, 5e4, 5e4, 5e4], 3.0)
    mask = np.zeros(img.shape, np.uint8)
    mask[30, 31] = maskbits.SATURATED
    mask[61, 60] = maskbits.BAD
    img[80, 81] = np.nan
    img[15, 45] -= 50.0  # a dip: negative flux
    est = sky.global_sky(img, n=5)
    table = measure(
        img,
        [30, 60, 2, 80, 45],
        [30, 60, 50, 80, 15],
        radius=5,
        sky=est,
        exptime=1.0,
        mask=mask,
        min_snr=5,
    )
    flags = [Flag(int(f)) for f in table["flags"]]
    assert flags[0] == Flag.SATURATED
    assert flags[1] == Flag.BAD_PIXEL
    assert Flag.NEAR_EDGE in flags[2]
    assert Flag.BAD_PIXEL in flags[3] and np.isfinite(table["flux"][3])
    assert Flag.NONPOSITIVE_FLUX in flags[4] and Flag.LOW_SNR in flags[4]
    assert np.isnan(table["mag_inst"][4])


def test_measure_table_has_units_and_descriptions():
    img = np.full((50, 50), 10.0)
    table = measure(img, [25.0], [25.0], radius=3, sky=sky.global_sky(img), exptime=1.0)
    assert str(table["flux"].unit) == "adu" and str(table["x"].unit) == "pix"
    assert all(table[name].description for name in table.colnames)


def test_measure_does_not_modify_its_input():
    rng = np.random.default_rng(24)
    img, x, y, _ = grid_frame(rng)
    mask = np.zeros(img.shape, np.uint8)
    before = img.copy()
    measure(img, x, y, radius=5, sky=sky.global_sky(img, n=x.size), exptime=1.0, mask=mask)
    assert np.array_equal(img, before) and not mask.any()


@pytest.mark.parametrize("n_set", [0, 1, 40, 5000, 20 * 33])
def test_flagged_pixels_are_nonzeros_in_the_same_order(n_set):
    rng = np.random.default_rng(n_set)
    mask = np.zeros((20, 33), np.uint8)
    mask.flat[rng.choice(mask.size, size=min(n_set, mask.size), replace=False)] = rng.integers(
        1, 255, size=min(n_set, mask.size), dtype=np.uint8
    )
    py, px = flagged_pixels(mask)
    ey, ex = np.nonzero(mask)
    assert py.tolist() == ey.tolist() and px.tolist() == ex.tolist()
    assert py.dtype.kind == px.dtype.kind == "i"
