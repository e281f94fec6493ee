"""The whole ARCSAT XO-1 b night (80 lights, half through cloud) with only the target named.

``reduxd reduce`` with built-in defaults (no camera entry, no radius, no
comparisons): the light curve has no NaN point, at least five comparisons, a
point-to-point scatter no worse than the best ccdproc + photutils peer of
``benchmarks/bench_xo1_peer.py`` (which, unlike reduxd, chooses its radius and
comparison set by looking at the target's own curve), and honest errors on clear
frames.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from reduxd.products.lightcurve import p2p_scatter

pytestmark = pytest.mark.slow

# The peer's best: ``python benchmarks/bench_xo1_peer.py`` (ccdproc masters and calibration,
# photutils apertures; best of 7 fixed radii x the k = 1 .. 12 brightest comparison sets, chosen
# by the target's own scatter) printed "p2p scatter 0.00308, radius 6.0 px, 5 comparisons" on
# 2026-11-26 (issue 10 and again for issue 10b). Not recomputed here: the peer takes about a
# minute. Issue 10's hand-tuned figures were 0.0055 (reduxd) and 0.0052 (peer).
PEER_SCATTER = 0.00308


@pytest.fixture(scope="module")
def xo1_curve(arcsat_dir, tmp_path_factory):
    more = arcsat_dir.parent / "arcsat-20250601-xo1"
    if not more.is_dir():
        pytest.skip(f"{more} not found (the rest of the XO-1 b sequence)")
    work = tmp_path_factory.mktemp("xo1")
    config = work / "xo1.toml"
    config.write_text(
        "[lightcurve]\ntarget = [525.6, 571.6]\n"
        "[output]\nquicklook = false\nstack = false\nreduced = false\n"
    )
    script = Path(sys.executable).with_name("reduxd")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]
    command += ["reduce", "--config", str(config), "-D", str(arcsat_dir), str(more),
                "-C", str(arcsat_dir), "-O", str(work / "out"), "--level", "WARNING"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    assert run.returncode == 0, run.stderr[-2000:]
    lc = Table.read(work / "out" / "lightcurve_XO1-b_Z.ecsv", format="ascii.ecsv")
    return lc, run.stdout + run.stderr


def test_no_nan_enough_comparisons_and_low_scatter(xo1_curve):
    lc, _ = xo1_curve
    assert len(lc) == 80
    assert np.all(np.isfinite(lc["dmag"]))
    assert len(lc.meta["comparison_ids"]) >= 5 and np.all(lc["n_comp"] >= 5)
    scatter = p2p_scatter(lc["dmag"])
    print(f"XO-1 p2p scatter {scatter:.5f}, radius {lc.meta['aperture']['radius_px']:.2f} px, "
          f"weights {lc.meta['comparison_weights']}")  # fmt: skip
    assert scatter <= PEER_SCATTER
    # the radius follows the seeing (FWHM 2.5-4 px), not the old 15 px default
    assert 2.5 <= lc.meta["aperture"]["radius_px"] <= 12.0
    assert lc.meta["dropped"]  # every candidate left out is named with its reason
    # times and airmass computed for every frame (49 headers say AIRMASS = 13.37)
    assert np.all(np.diff(lc["bjd_tdb"]) > 0)
    assert np.all((lc["airmass"] > 1.0) & (lc["airmass"] < 1.2))
    assert "site from header" in lc.meta["time"]


def test_errors_are_honest_on_clear_frames(xo1_curve):
    lc, _ = xo1_curve
    ens = np.asarray(lc["ensemble_mag"], dtype=float)
    clear = ens <= np.nanmin(ens) + 0.1  # within 10 % of the clearest frame's flux
    assert clear.sum() >= 20
    ratios = []
    for star in lc.meta["comparison_ids"]:
        value = np.asarray(lc[f"check_{star}"], dtype=float)[clear]
        err = np.asarray(lc[f"check_err_{star}"], dtype=float)[clear]
        ok = np.isfinite(value) & np.isfinite(err)
        robust = 1.4826 * np.median(np.abs(value[ok] - np.median(value[ok])))
        ratios.append(robust / np.median(err[ok]))
    print("robust scatter / median error of the comparisons:", np.round(ratios, 2))
    assert 0.8 <= float(np.median(ratios)) <= 1.3


def test_unknown_camera_warned_once(xo1_curve):
    _, output = xo1_curve
    assert output.count("camera_unknown") == 1 and "dcam-spare" in output
