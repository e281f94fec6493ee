"""A simulated night of issue 10's held-out class, reduced with only the target named.

12-bit ADC stored as BITPIX 16 with no BZERO and no SATURATE card, no calibration
frames, no IMAGETYP/OBJECT/INSTRUME cards, 142 lights of 650 x 500 px, ~800 stars,
the field drifting ~280 px and rotating 0.6 degrees, a transit of depth 0.0239 on
the target, bright stars clipping at 4095 (:func:`reduxd.simulate.bare_night`).
``reduxd reduce`` with the target's position on the first frame and nothing else (no
calibration frame exists, so the lights are measured uncalibrated, with one warning).

Depth: mean of the differential flux out of transit (before first and after last
contact, known from the simulation) against its mean at full depth (between second
and third contact). Scatter: standard deviation of the out-of-transit differential
flux, normalised to its mean; the photon-noise expectation is that of the target
plus the inverse-variance ensemble of the chosen comparisons, in the chosen
aperture, from the simulation's true fluxes, sky, read noise and gain.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from reduxd.products.tables import append_rows
from reduxd.simulate import BareNight, _bare_place, bare_night

INJECTED_DEPTH = 0.0239
EXOTIC_SCATTER = 0.0071  # EXOTIC's out-of-transit scatter on the real held-out night


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    work = tmp_path_factory.mktemp("bare")
    spec = BareNight()
    truth = bare_night(work / "night", spec)
    config = work / "bare.toml"
    x, y = spec.target_xy
    config.write_text(
        f"[lightcurve]\ntarget = [{x}, {y}]\n"
        "[output]\nquicklook = false\nstack = false\nreduced = false\n"
    )
    script = Path(sys.executable).with_name("reduxd")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]
    command += ["reduce", "--config", str(config), "-D", str(work / "night"),
                "-O", str(work / "out"), "--level", "WARNING"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("no_calibration_frames") == 1
    curves = sorted((work / "out").glob("lightcurve_*.ecsv"))
    assert len(curves) == 1, f"one field expected, got {[p.name for p in curves]}"
    lc = Table.read(curves[0], format="ascii.ecsv")
    phot = Table.read(work / "out" / "photometry.ecsv", format="ascii.ecsv")
    return spec, truth, lc, phot, run.stdout + run.stderr


@pytest.mark.slow
def test_depth_scatter_and_comparisons(bare):
    spec, truth, lc, phot, _output = bare
    assert len(lc) == spec.n_lights
    assert np.all(np.isfinite(lc["dmag"]))
    comps = lc.meta["comparison_ids"]
    assert len(comps) >= 5 and np.all(lc["n_comp"] >= 5)
    rel = np.array([light["rel_flux"] for light in truth["lights"]])
    flux = 10 ** (-0.4 * np.asarray(lc["dmag"], dtype=float))
    out, full = rel == 1.0, rel == rel.min()
    baseline = flux[out].mean()
    depth = 1 - flux[full].mean() / baseline
    scatter = float(np.std(flux[out] / baseline))
    expected = photon_noise(spec, lc, phot)
    print(f"\nbare night: depth {depth:.4f} (injected {INJECTED_DEPTH}), out-of-transit scatter "
          f"{scatter:.4f} (photon noise {expected:.4f}, ratio {scatter / expected:.2f}; EXOTIC "
          f"{EXOTIC_SCATTER} on the real night), {len(comps)} comparisons, radius "
          f"{lc.meta['aperture']['radius_px']:.2f} px")  # fmt: skip
    assert abs(depth - INJECTED_DEPTH) <= 0.003
    assert scatter <= EXOTIC_SCATTER
    assert scatter <= 1.5 * expected
    # no comparison has a pixel at the ADC ceiling in any frame (the simulation knows)
    clipped = {i for light in truth["lights"] for i in light["saturated_stars"]}
    assert clipped, "the simulation should clip some bright stars at 4095"
    for star in comps:
        assert true_star(truth, phot, star) not in clipped


@pytest.mark.slow
def test_bare_headers_are_understood(bare):
    _spec, _truth, lc, phot, output = bare
    assert set(np.ma.filled(phot["filter"], "").astype(str)) == {""}  # no FILTER card
    assert "ADC ceiling" in output or "camera_unknown" in output
    (detector,) = lc.meta["detector"]
    assert detector["source"].startswith("assumed")  # no flats, no card, no entry: said so


def true_star(truth, phot, star_id):
    """Index of the simulated star nearest to ``star_id``'s position in the first light."""
    first = phot[(phot["star_id"] == star_id)][0]
    k = int(Path(str(first["file"])).stem.split("_")[-1])
    x, y = np.array(truth["stars"]["x"]), np.array(truth["stars"]["y"])
    spec = BareNight()
    px, py = _bare_place(spec, k, x, y, np.random.default_rng((spec.seed, k)))
    return int(np.argmin(np.hypot(px - first["x"], py - first["y"])))


def photon_noise(spec, lc, phot):
    """Relative noise of target / inverse-variance ensemble from the true photon counts."""
    radius = lc.meta["aperture"]["radius_px"]
    per_pixel = spec.sky_e_per_s * spec.exptime + spec.read_noise_e**2

    def variance(star_id):
        electrons = np.median(phot[phot["star_id"] == star_id]["flux"]) * spec.gain_e_per_adu
        return (electrons + np.pi * radius**2 * per_pixel) / electrons**2

    ensemble = 1 / sum(1 / variance(c) for c in lc.meta["comparison_ids"])
    return float(np.sqrt(variance(lc.meta["target_id"]) + ensemble))


def test_photometry_ecsv_reads_back_without_a_filter(tmp_path):
    """A light with no FILTER card: its empty string must be quoted in the ECSV."""
    from reduxd.schema import NAMES

    row = {name: 1.0 for name in NAMES}
    row.update(night="2024-03-09", file="light_000.fits", object="light", filter="",
               date_obs="2024-03-10T02:00:30.000", calib="none", star_id=1, flags=0,
               version=1, current=1)  # fmt: skip
    _csv, ecsv = append_rows(tmp_path, [row, row], durable=False)
    table = Table.read(ecsv, format="ascii.ecsv")
    assert len(table) == 2 and list(np.ma.filled(table["filter"], "")) == ["", ""]
