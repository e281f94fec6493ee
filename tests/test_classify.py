"""Frame classification: real ARCSAT (MaxIm DL) and UMBC (SharpCap) headers, SharpCap paths."""

from collections import Counter

import numpy as np
import pytest
from astropy.io import fits

from reduxd import fitsio
from reduxd.errors import FrameRejected
from reduxd.frames import ClassifyRules, classify

MAX_BYTES = 2 * 1024**3


def _classify(path, rules=None):
    return classify(fitsio.probe(path, max_bytes=MAX_BYTES).header, path, rules)


def test_arcsat_night(arcsat_dir):
    infos = [_classify(p) for p in sorted(arcsat_dir.glob("*.fits"))]
    assert len(infos) == 22
    assert Counter(i.kind for i in infos) == {"bias": 5, "dark": 5, "flat": 5, "light": 7}
    assert all(i.kind_rule.startswith("header:IMAGETYP") for i in infos)
    assert {i.exptime for i in infos if i.kind == "dark"} == {60.0}
    assert {i.exptime for i in infos if i.kind == "bias"} == {0.0}
    flats = [i for i in infos if i.kind == "flat"]
    assert {i.filter for i in flats} == {"Z"}
    assert all(76 <= i.exptime <= 83 for i in flats)
    lights = [i for i in infos if i.kind == "light"]
    assert {i.filter for i in lights} == {"Z"}
    assert sorted(i.exptime for i in lights) == [30.0] + [60.0] * 6
    assert all(i.filter is None for i in infos if i.kind in ("bias", "dark"))
    assert {(i.instrument, i.shape, i.binning, i.gain) for i in infos} == {
        ("dcam-spare", (1024, 1024), (1, 1), None)
    }
    assert all(-26 < i.ccd_temp < -24 and i.date_obs.year == 2025 for i in infos)


def test_umbc_sharpcap_lights(umbc_dir):
    blaze = _classify(umbc_dir / "blaze_v_15s_00001.fits")
    assert (blaze.kind, blaze.kind_rule) == ("light", "header:FRAMETYP=Light")
    assert (blaze.filter, blaze.gain, blaze.exptime) == ("V", 150.0, 15.0)
    assert (blaze.instrument, blaze.shape) == ("ZWO ASI432MM", (1104, 1608))
    for path in sorted(umbc_dir.glob("theta_herc_*.fits")):
        info = _classify(path)
        assert (info.kind, info.filter, info.gain) == ("light", "R", 0.0)
        assert info.exptime == pytest.approx(2.009061)
        assert (info.binning, info.shape) == ((3, 3), (692, 1032))


def _sharpcap(path, frametyp=None, **cards):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = fits.Header(
        {"EXPTIME": 15.0, "GAIN": 150, "INSTRUME": "ZWO ASI432MM", "CCD-TEMP": -10.0, **cards}
    )
    if frametyp:
        header["FRAMETYP"] = frametyp
    fits.PrimaryHDU(np.zeros((8, 10), np.uint16), header).writeto(path)
    return path


@pytest.mark.parametrize(
    ("rel", "frametyp", "kind", "rule"),
    [
        ("calibration/darks/darks_15/10_01_02/dark_00001.fits", "Dark", "dark", "header"),
        ("calibration/darks/darks_15/10_01_02/dark_00001.fits", None, "dark", "path"),
        ("calibration/flats/flat_v_/21_00_00/flat_00001.fits", None, "flat", "path"),
        ("calibration/bias/bias_00001.fits", None, "bias", "path"),
        ("M13/M13_V_/01_02_03/M13_00001.fits", None, "light", "default"),
        ("M13/M13_V_/01_02_03/M13_00001.fits", "Light", "light", "header"),
        ("darks/whatever.fits", "Flat", "flat", "header"),  # the header wins over the path
    ],
)
def test_sharpcap_layout(tmp_path, rel, frametyp, kind, rule):
    path = _sharpcap(tmp_path / rel, frametyp, FILTER="v")
    info = _classify(path)
    assert info.kind == kind
    assert info.kind_rule.startswith(rule)
    assert info.filter == ("V" if kind in ("light", "flat") else None)


def test_unknown_frame_type_falls_back_and_says_so(tmp_path):
    path = _sharpcap(tmp_path / "calibration/darks/d.fits", "Snapshot")
    info = _classify(path)
    assert info.kind == "dark"
    assert "unknown type" in info.kind_rule


def test_filter_aliases(tmp_path):
    path = _sharpcap(tmp_path / "l.fits", "Light", FILTER="sloan_r")
    assert _classify(path, ClassifyRules(filter_aliases={"SLOAN_R": "r"})).filter == "R"


def test_light_without_exposure_is_rejected(tmp_path):
    path = _sharpcap(tmp_path / "l.fits", "Light")
    header = fits.getheader(path)
    del header["EXPTIME"]
    with pytest.raises(FrameRejected, match="exposure"):
        classify(header, path)
    header["EXPTIME"] = 0.0
    with pytest.raises(FrameRejected, match="exposure"):
        classify(header, path)


def test_bias_without_exposure_gets_zero(tmp_path):
    header = fits.Header({"IMAGETYP": "Bias Frame"})
    assert classify(header, tmp_path / "b.fits").exptime == 0.0
