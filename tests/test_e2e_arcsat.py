"""End to end on a real night: ARCSAT 0.5 m, MaxIm DL headers (``shared/data/arcsat-20250601``).

``reduxd reduce`` reads the raw folder in place (read-only: bytes and mtimes are
checked after the run) and writes masters, reduced frames, photometry and the
light curve of XO-1 (OBJECT 'XO1-b'), whose comparison stars must stay flat
within their errors. The camera entry ('dcam-spare') is taken from the
project's ``config.toml``; XO-1 is placed with the frames' own WCS.
"""

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
XO1 = SkyCoord("16h02m11.84s +28d10m10.4s")  # XO-1 (J2000)


def reduxd_command():
    script = Path(sys.executable).with_name("reduxd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]


def snapshot(folder):
    """{name: (size, mtime_ns, sha1)} of every file in ``folder``."""
    out = {}
    for path in sorted(Path(folder).iterdir()):
        st = path.stat()
        out[path.name] = (st.st_size, st.st_mtime_ns, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def camera_entry(name):
    with open(ROOT / "config.toml", "rb") as fh:
        cameras = tomllib.load(fh)["calibration"]["cameras"]
    (entry,) = [c for c in cameras if c["instrument"] == name]
    return entry


def xo1_pixel(path):
    with pytest.warns(FITSFixedWarning):  # MaxIm's RADECSYS; astropy fixes it
        wcs = WCS(fits.getheader(path))
    x, y = wcs.world_to_pixel(XO1)
    return float(x), float(y)


@pytest.fixture(scope="module")
def arcsat_run(arcsat_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("arcsat")
    cam = camera_entry("dcam-spare")
    first_xo1 = sorted(arcsat_dir.glob("XO1-b_*.fits"))[0]
    x, y = xo1_pixel(first_xo1)
    (work / "arcsat.toml").write_text(
        f"""
[site]
utc_offset_hours = -7.0  # Apache Point, MST

[[calibration.cameras]]
instrument = "{cam["instrument"]}"
gain_e_per_adu = {cam["gain_e_per_adu"]}
read_noise_e = {cam["read_noise_e"]}
saturation_adu = {cam["saturation_adu"]}

[photometry]
radius = 6.0  # FWHM ~3.5 px
annulus = [10.0, 18.0]
sky_method = "annulus"

[lightcurve]
target = [{x:.2f}, {y:.2f}]
"""
    )
    before = snapshot(arcsat_dir)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [*reduxd_command(), "reduce", "-D", str(arcsat_dir), "-O", "analysis",
         "--config", "arcsat.toml", "--jobs", "2"],
        cwd=work, capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    after = snapshot(arcsat_dir)
    return work / "analysis", proc, before, after, (x, y)


def test_raw_files_are_untouched(arcsat_run):
    _, _, before, after, _ = arcsat_run
    assert len(before) == 22
    assert after == before


def test_the_night_reduces_without_refusals(arcsat_run):
    out, proc, *_ = arcsat_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["ingested"], summary["reduced"], summary["refused"]) == (15, 7, [])
    assert summary["groups"] == {
        "bias": 5, "dark": 5, "flat": 5, "light 43Bet Com Z 30s": 1, "light XO1-b Z 60s": 6,
    }  # fmt: skip
    kinds = sorted(m["kind"] for m in summary["masters"])
    assert kinds == ["bias", "dark", "dark_current", "flat"]


def test_masters_and_reduced_frames(arcsat_run):
    out, *_ = arcsat_run
    masters = {p.name.split("_dcam")[0]: p for p in (out / "masters").rglob("*.fits")}
    assert set(masters) == {"bias", "dark", "dark_current", "flat"}
    flat = fits.getheader(masters["flat"])
    assert flat["RDXFSUB"] == "bias+dark_current*t"  # 76-83 s flats, only 60 s darks
    assert np.median(fits.getdata(masters["flat"])) == pytest.approx(1.0, abs=1e-3)
    reduced = {p.name: fits.getheader(p) for p in (out / "reduced").rglob("*.fits")}
    assert len(reduced) == 7
    for name, header in reduced.items():
        assert header["RDXCAL"] is True and header["RDXMISS"] == "none"
        assert header["RDXFLAT"] == masters["flat"].name
        # standard UTC times, the saturation level's and the gain's sources
        assert header["TIMESYS"] == "UTC" and header["DATE-AVG"] > header["DATE-OBS"]
        assert header["MJD-AVG"] == pytest.approx(Time(header["DATE-AVG"]).mjd, abs=1e-7)
        assert header["RDXSATSR"] == "camera entry"
        assert header["RDXGAINS"] == "camera entry dcam-spare"
        if name.startswith("43Bet Com"):  # 30 s: no 30 s darks: bias + scaled dark current
            assert header["RDXDMODE"] == "scaled" and header["RDXDEXP"] == 30.0
        else:
            assert header["RDXDMODE"] == "exact" and header["RDXDARK"] == masters["dark"].name


def test_photometry_keeps_the_two_objects_apart(arcsat_run):
    out, *_ = arcsat_run
    phot = Table.read(out / "photometry.csv", format="ascii.csv")
    assert set(phot["object"]) == {"XO1-b", "43Bet Com"}
    assert set(phot["filter"]) == {"Z"}
    xo1 = phot[phot["object"] == "XO1-b"]
    assert len(set(xo1["file"])) == 6
    assert set(phot[phot["object"] == "43Bet Com"]["calib"]) == {"bias+scaled dark+flat"}
    assert set(xo1["calib"]) == {"dark+flat"}
    # the field drifts tens of pixels: the same star keeps its ID
    per_file = [xo1[(xo1["file"] == f) & (xo1["star_id"] == 1)] for f in sorted(set(xo1["file"]))]
    assert all(len(rows) == 1 for rows in per_file)
    assert (out / "lightcurve_43Bet_Com_Z.csv").exists()


def test_xo1_light_curve_with_flat_comparisons(arcsat_run):
    out, _, _, _, (x, y) = arcsat_run
    lc = Table.read(out / "lightcurve_XO1-b_Z.ecsv")
    assert len(lc) == 6 and np.all(np.isfinite(lc["dmag"]))
    assert np.all(lc["flags"] == 0) and np.all(lc["n_comp"] == len(lc.meta["comparison_ids"]))
    target = lc.meta["target_id"]
    phot = Table.read(out / "photometry.csv", format="ascii.csv")
    first = phot[(phot["file"] == lc["file"][0]) & (phot["star_id"] == target)]
    assert np.hypot(first["x"][0] - x, first["y"][0] - y) < 2.0  # XO-1 by its WCS position
    assert len(lc.meta["comparison_ids"]) >= 3
    chi2 = np.array(list(lc.meta["check_chi2"].values()))
    assert np.all(np.isfinite(chi2))
    assert np.median(chi2) < 3.0 and chi2.max() < 6.0, chi2
    assert np.median(lc["dmag_err"]) < 0.01
    assert np.ptp(lc["dmag"]) < 0.05  # XO-1b's transit is ~2 %: no wild points
