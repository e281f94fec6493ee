"""Gain and read noise by photon transfer: synthetic truth, and the real ARCSAT night."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from reduxd.steps.gain import photon_transfer

ROOT = Path(__file__).resolve().parent.parent


def _frame(rng, level_e, gain, read_noise_e, *, pattern=1.0):
    shape = (300, 300)
    return (rng.poisson(level_e * pattern, shape) + rng.normal(0, read_noise_e, shape)) / gain + 700


def test_photon_transfer_recovers_gain_and_read_noise():
    rng = np.random.default_rng(4)
    pattern = 1 + 0.05 * rng.standard_normal((300, 300))  # flat-field structure cancels
    flats = [_frame(rng, 30000, 2.5, 7.0, pattern=pattern) for _ in range(2)]
    flats[1] = (flats[1] - 700) * 1.04 + 700  # a slightly longer exposure
    biases = [_frame(rng, 0, 2.5, 7.0) for _ in range(2)]
    gain, noise = photon_transfer(*flats, *biases)
    assert gain == pytest.approx(2.5, rel=0.04)
    assert noise == pytest.approx(7.0, rel=0.05)


def test_shipped_arcsat_entry_matches_the_flats(arcsat_dir):
    flats = sorted(arcsat_dir.glob("domeflat_z_*.fits"))[1:3]  # 82.4 and 82.7 s
    biases = sorted(arcsat_dir.glob("Bias_BIN1_*.fits"))[:2]
    data = [fits.getdata(p).astype(np.float64) for p in (*flats, *biases)]
    gain, noise = photon_transfer(*data, size=512)
    with open(ROOT / "config.toml", "rb") as fh:
        cameras = tomllib.load(fh)["calibration"]["cameras"]
    (entry,) = [c for c in cameras if c["instrument"] == "dcam-spare"]
    assert gain == pytest.approx(entry["gain_e_per_adu"], rel=0.02)
    assert noise == pytest.approx(entry["read_noise_e"], rel=0.05)
