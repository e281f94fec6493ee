"""Gain and read noise by photon transfer: synthetic truth, and the real ARCSAT night."""

import os
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from reduxd import maskbits
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


def _flat_files(tmp_path, rng, *, gain, read_noise_e, levels_e, bias_adu=500.0, shape=(300, 300)):
    """Raw flats and biases (uint16 FITS) of a camera with a known gain; their paths."""
    pattern = 1 + 0.03 * rng.standard_normal(shape)
    paths = []
    for kind, levels in (("BIAS", [0.0] * 4), ("FLAT", levels_e)):
        for i, level in enumerate(levels):
            electrons = rng.poisson(level * pattern) + rng.normal(0, read_noise_e, shape)
            adu = np.clip(np.round(electrons / gain + bias_adu), 0, 65535).astype(np.uint16)
            header = fits.Header({"IMAGETYP": kind, "EXPTIME": 10.0 if level else 0.0,
                                  "FILTER": "V", "INSTRUME": "Nobody's camera"})  # fmt: skip
            paths.append(tmp_path / f"{kind.lower()}_{i}.fits")
            fits.PrimaryHDU(adu, header).writeto(paths[-1])
    return paths


def test_flat_set_gain_matches_the_analytic_camera(tmp_path):
    """A master flat measures the gain of a camera whose truth is known; the bias set
    its read noise; a GAIN card that is a gain *setting* is not taken for e-/ADU."""
    from reduxd.steps import gain as steps_gain
    from reduxd.steps import masters

    rng = np.random.default_rng(11)
    paths = _flat_files(tmp_path, rng, gain=2.2, read_noise_e=9.0,
                        levels_e=[30000, 31500, 29000, 45000])  # fmt: skip
    frames = masters.load_frames(paths, max_bytes=10**8)
    biases = [f for f in frames if f[0].kind == "bias"]
    flats = [f for f in frames if f[0].kind == "flat"]
    bias = masters.make_bias(biases)
    cards = steps_gain.read_noise_cards([lay for _i, lay in biases], "bias")
    bias = replace(bias, cards=(*bias.cards, *cards))
    assert dict((k, v) for k, v, _c in cards)["RDXRNADU"] == pytest.approx(9.0 / 2.2, rel=0.03)
    measured = dict((k, v) for k, v, _c in steps_gain.flat_gain_cards(flats, bias=bias))
    assert measured["RDXPTGN"] == pytest.approx(2.2, rel=0.03)
    assert measured["RDXPTRN"] == pytest.approx(9.0, rel=0.05)
    # 3 flats within 10 % of each other make one pair; the 45000 e- flat has no partner
    assert measured["RDXPTSRC"] == "photon transfer from 1 flat pair"
    # without a bias or dark the flats' pedestal is unknown: nothing is measured
    assert steps_gain.flat_gain_cards(flats) == []


def test_detector_order_of_trust():
    from reduxd.config import Camera
    from reduxd.steps.gain import Detector, choose_detector

    measured = Detector(1.33, 15.9, "photon transfer from 2 flat pairs")
    card = fits.Header([("EGAIN", 1.5, "[e-/ADU]")])
    setting = fits.Header([("GAIN", 150, "camera gain setting")])
    entry = Camera(instrument="cam", gain_e_per_adu=2.0, read_noise_e=7.0)
    assert choose_detector(entry=entry, header=card, measured=measured).source == "camera entry cam"
    chosen = choose_detector(header=card, measured=measured)
    assert (chosen.gain, chosen.source) == (1.5, "header EGAIN card")
    assert chosen.read_noise == pytest.approx(15.9 * 1.5 / 1.33)  # same ADU read noise
    assert choose_detector(header=setting, measured=measured) == measured
    assert choose_detector(header=setting).source.startswith("assumed")


@pytest.mark.slow
def test_arcsat_gain_measured_when_the_camera_is_unknown(arcsat_dir, tmp_path):
    """ARCSAT with no camera entry: gain and read noise by photon transfer from its flats,
    recorded in the reduced FITS, the masters and the light curve's metadata."""
    config = tmp_path / "noentry.toml"
    config.write_text(
        "[lightcurve]\ntarget = [525.6, 571.6]\n[output]\nquicklook = false\nstack = false\n"
    )
    script = Path(sys.executable).with_name("reduxd")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]
    out = tmp_path / "out"
    command += ["reduce", "--config", str(config), "-D", str(arcsat_dir), "-C", str(arcsat_dir),
                "-O", str(out), "--level", "WARNING"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-2000:]
    (flat,) = out.glob("masters/*/flat_*.fits")
    (bias,) = out.glob("masters/*/bias_*.fits")
    (dark,) = out.glob("masters/*/dark_dcam-spare_*60s*.fits")
    print("master flat:", {k: fits.getval(flat, k) for k in ("RDXPTGN", "RDXPTRN", "RDXPTSRC")},
          "bias read noise", fits.getval(bias, "RDXRNADU"), "ADU; unstable pixels",
          fits.getval(dark, "RDXNUNST"))  # fmt: skip
    reduced = sorted(out.glob("reduced/**/XO1-b_z_*.fits"))
    assert len(reduced) == 6
    for path in reduced:
        header = fits.getheader(path)
        assert header["RDXGAIN"] == pytest.approx(1.33, rel=0.03)  # issue 10: 1.33 e-/ADU
        assert header["RDXRDNS"] == pytest.approx(15.9, rel=0.05)  # and 15.9 e-
        assert header["RDXGAINS"].startswith("photon transfer from ")
    lc = Table.read(out / "lightcurve_XO1-b_Z.ecsv", format="ascii.ecsv")
    (detector,) = lc.meta["detector"]
    assert detector["gain_e_per_adu"] == pytest.approx(1.33, rel=0.03)
    assert detector["source"] == fits.getheader(reduced[0])["RDXGAINS"]
    output = run.stdout + run.stderr
    assert output.count("camera_unknown") == 1 and "photon transfer" in output
    # the dark set's unstable pixels (1 on this night) are bad in every reduced light's mask
    unstable = np.argwhere(fits.getdata(dark, "UNSTABLE"))
    assert len(unstable) == fits.getval(dark, "RDXNUNST") >= 1
    for path in reduced:
        mask = fits.getdata(path, "MASK")
        assert all(mask[y, x] & maskbits.BAD for y, x in unstable)
