"""Saturation known without configuration: a 12-bit camera stored as BITPIX 16, no SATURATE."""

import numpy as np
from astropy.io import fits

from reduxd import maskbits
from reduxd.config import Camera, load_config
from reduxd.frames import FrameInfo
from reduxd.reduce import camera_for
from reduxd.steps.masters import saturation_level
from reduxd.steps.measure import Flag
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.steps.saturation import MARGIN, adc_ceiling, saturation
from reduxd.synth import render_stars

HEADER = fits.Header({"BITPIX": 16})  # no BZERO, no SATURATE: the file type says 32767


def twelve_bit_frame():
    """Six stars on a 300 ADU sky: two clip at 4095, one peaks near 4000, three faint."""
    rng = np.random.default_rng(2)
    x = np.array([50.0, 150.0, 250.0, 50.0, 150.0, 250.0])
    y = np.array([60.0, 60.0, 60.0, 160.0, 160.0, 160.0])
    peak = np.array([9000.0, 20000.0, 3900.0, 800.0, 1000.0, 1200.0])  # x 0.95 on a pixel
    fwhm = 3.0
    flux = peak * 2 * np.pi * (fwhm / 2.3548) ** 2  # Gaussian: peak x 2 pi sigma^2
    img = render_stars((220, 300), x, y, flux, fwhm) + 300.0 + rng.normal(0, 5, (220, 300))
    return np.clip(np.round(img), 0, 4095).astype(np.int16), x, y


def test_ceiling_is_read_off_the_data_with_a_margin():
    data, _, _ = twelve_bit_frame()
    assert adc_ceiling(data) == 4095.0
    level, source = saturation(HEADER, None, data)
    assert level == MARGIN * 4095 and "4095" in source
    # declared values win, as they are
    assert saturation(fits.Header({"SATURATE": 4000}), None, data) == (4000.0, "header SATURATE")
    assert saturation(fits.Header({"DATAMAX": 3900}), None, data)[0] == 3900.0
    assert saturation(HEADER, Camera(saturation_adu=4000.0), data) == (4000.0, "camera entry")


def test_stars_at_the_ceiling_and_near_it_are_flagged():
    data, x, y = twelve_bit_frame()
    level, _ = saturation(HEADER, None, data)
    params = PhotParams(radius=0.0, sky_method="annulus", annulus=None)

    def flags_with(limit):
        mask = np.where(data >= limit, maskbits.SATURATED, 0).astype(np.uint8)
        result = photometer(data.astype(np.float32), mask=mask, exptime=1.0, params=params)
        order = [int(np.argmin(np.hypot(result.table["x"] - a, result.table["y"] - b)))
                 for a, b in zip(x, y, strict=True)]  # fmt: skip
        return (np.asarray(result.table["flags"])[order] & Flag.SATURATED) != 0

    assert flags_with(level).tolist() == [True, True, True, False, False, False]
    # the file type's ceiling (what reduxd assumed before) flags none of them
    assert not flags_with(saturation_level(HEADER)).any()


def test_unknown_camera_is_warned_about_once(capsys):
    config = load_config(overrides={"logging": {"level": "WARNING"}})
    info = FrameInfo("x", "light", "default", "R", 60.0, None, None, (1, 1), (2, 2),
                     None, None, "Mystery 12-bit", None, "field", None, None)  # fmt: skip
    assert camera_for(config, info).gain_e_per_adu == 1.0
    camera_for(config, info)
    err = capsys.readouterr()
    text = err.out + err.err
    assert text.count("camera_unknown") == 1 and "Mystery 12-bit" in text
