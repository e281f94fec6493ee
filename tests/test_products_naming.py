"""Products a returning user recognises: run log, names, current table, DS9 regions,
raw file and SHA-1 in reduced FITS, stack time span, finder charts.

``reduxd reduce`` runs in a subprocess on a copy of the small simulated night.
"""

import hashlib
from datetime import timedelta

import pytest
from astropy.io import fits
from astropy.table import Table
from test_batch import ok, run_reduxd

from reduxd.frames import classify
from reduxd.products.naming import gain_label
from reduxd.simulate import NightSpec, simulate_night

BASE = "reduce -D pg2213 -C calibration -O analysis --save pg2213"


@pytest.fixture(scope="module")
def reduced_night(tmp_path_factory):
    """The small night reduced once with ``--save pg2213``, then with ``--redo``."""
    night = tmp_path_factory.mktemp("names") / "night"
    simulate_night(night, NightSpec.small())
    ok(run_reduxd(BASE, cwd=night))
    ok(run_reduxd(BASE + " --redo", cwd=night))
    return night


def test_run_log_file_per_run(reduced_night):
    logs = sorted((reduced_night / "analysis").glob("redux_*.log"))
    assert len(logs) == 2  # one per run
    text = logs[-1].read_text()
    assert "run_plan" in text and "frame_reduced" in text and "\x1b[" not in text
    assert "lights reduced" in text  # the summary at its end


def test_save_once_in_each_name_and_one_gain_rule(reduced_night):
    out = reduced_night / "analysis"
    names = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [n for n in names if n.count("pg2213") > 1 and not n.startswith("stack_")]
    assert (out / "pg2213_lightcurve_V.csv").exists()
    assert not [n for n in names if "g150.0" in n or "gNone" in n]
    assert (out / "stacks" / "stack_pg2213_V_g150_15s.fits").exists()
    assert gain_label(None) == "gnone" and gain_label(150.0) == "g150"


def test_current_table_beside_the_history(reduced_night):
    out = reduced_night / "analysis"
    history = Table.read(out / "pg2213_photometry.csv", format="ascii.csv")
    current = Table.read(out / "pg2213_photometry_current.csv", format="ascii.csv")
    assert set(history["current"]) == {0, 1}
    assert len(current) == (history["current"] == 1).sum() and set(current["current"]) == {1}
    assert set(current["version"]) == {2}
    ecsv = (out / "pg2213_photometry.ecsv").read_text()
    assert "reduxd.steps.measure.Flag" in ecsv and "measure.Flags" not in ecsv


def test_reduced_fits_name_raw_file_and_regions(reduced_night):
    out = reduced_night / "analysis"
    current = Table.read(out / "pg2213_photometry_current.csv", format="ascii.csv")
    reduced = sorted((out / "reduced").rglob("*.fits"))
    assert len(reduced) == 12
    for path in reduced:
        header = fits.getheader(path)
        raw = reduced_night / "pg2213" / header["RAWFILE"]
        assert header["RAWSHA1"] == hashlib.sha1(raw.read_bytes()).hexdigest()
        regions = path.with_suffix(".reg").read_text().splitlines()
        assert regions[0] == "# Region file format: DS9 version 4.1" and regions[2] == "image"
        circles = [line for line in regions if line.startswith("circle(")]
        assert len(circles) == (current["file"] == header["RAWFILE"]).sum() > 0


def test_stack_carries_the_span_of_its_inputs(reduced_night):
    raw = sorted((reduced_night / "pg2213").rglob("*.fits"))
    infos = [classify(fits.getheader(p), p) for p in raw]
    infos = [i for i in infos if i.filter == "V"]
    first = min(i.date_obs for i in infos)
    last = max(i.date_obs for i in infos)
    header = fits.getheader(reduced_night / "analysis" / "stacks" / "stack_pg2213_V_g150_15s.fits")
    assert header["DATE-OBS"] == first.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    end = last + timedelta(seconds=15.0)  # the lights are 15 s exposures
    assert header["DATE-END"] == end.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    assert header["DATE-OBS"] < header["DATE-AVG"] < header["DATE-END"]


def test_finder_chart_per_stack(reduced_night):
    out = reduced_night / "analysis"
    for filt in ("V", "R"):
        png = out / f"finder_pg2213_{filt}_g150_15s.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
