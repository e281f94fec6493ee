"""Per-light photometry time: reduxd versus a plain photutils recipe, same run.

Usage: ``python benchmarks/bench_photometry.py [path/to/light.fits]``
(default: ``../shared/data/umbc-sharpcap/blaze_v_15s_00001.fits``, or
``$REDUXD_TEST_DATA/umbc-sharpcap/...``).

Cases: (a) the first frame of a field (full detection); (b) the frame after the
first, simulated by cutting the frame 7 rows and 5 columns off (a pointing offset
of (-5, -7) px), with the field reference known. The photutils recipe does the
same work on every frame: ``sigma_clipped_stats`` + ``DAOStarFinder`` + an
annulus median (``ApertureStats``) + ``aperture_photometry``.

The flux check measures reduxd's positions with photutils' ``aperture_photometry``
and reduxd's sky: the fluxes must agree to rounding.
"""

import os
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

from reduxd import phot_columns
from reduxd.steps.photometry import PhotParams, photometer

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REDUXD_TEST_DATA", ROOT.parent / "shared" / "data"))
DEFAULT = DATA / "umbc-sharpcap" / "blaze_v_15s_00001.fits"
EXPTIME = 15.0
REPEAT = 7


def photutils_recipe(data, *, fwhm, radius, annulus, nsigma=5.0):
    """The plain recipe: global clipped stats, DAOStarFinder, annulus median, sums."""
    _, median, std = sigma_clipped_stats(data, sigma=3.0)
    x, y, _ = phot_columns.dao_find(data - median, fwhm=fwhm, threshold=nsigma * std)
    sky, _, _ = phot_columns.annulus_stats(data, x, y, *annulus)
    flux = phot_columns.aperture_sums(data, x, y, radius) - sky * np.pi * radius**2
    return x, y, flux


def best_time(func, repeat=REPEAT):
    """Median wall time (s) of ``repeat`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def flux_check(data, table, radius):
    """Max relative difference of reduxd fluxes vs aperture_photometry at the same places."""
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    ref = (
        phot_columns.aperture_sums(data, x, y, radius)
        - np.asarray(table["sky"]) * np.pi * radius**2
    )
    ok = (np.asarray(table["flags"]) & 2) == 0  # NEAR_EDGE apertures use the overlap area
    flux = np.asarray(table["flux"])[ok]
    return float(np.max(np.abs(flux - ref[ok]) / np.abs(ref[ok]))) if ok.any() else np.nan


def recipe_sky_check(data, table, radius, annulus):
    """Max |reduxd flux - flux with photutils' annulus median| / flux_err at reduxd's positions."""
    x, y = np.asarray(table["x"]), np.asarray(table["y"])
    if x.size == 0:
        return np.nan
    sky, _, _ = phot_columns.annulus_stats(data, x, y, *annulus)
    flux = phot_columns.aperture_sums(data, x, y, radius) - sky * np.pi * radius**2
    ok = (np.asarray(table["flags"]) & 2) == 0
    diff = np.abs(np.asarray(table["flux"]) - flux) / np.asarray(table["flux_err"])
    return float(np.max(diff[ok])) if ok.any() else np.nan


def bench_method(data, shifted, method):
    """Rows (a) and (b) for one sky method, and the offset found in (b)."""
    params = PhotParams(sky_method=method)
    t_first, first = best_time(lambda: photometer(data, exptime=EXPTIME, params=params))
    ref = first.reference
    t_next, nxt = best_time(
        lambda: photometer(shifted, exptime=EXPTIME, params=params, reference=ref)
    )
    recipe = {"fwhm": round(first.fwhm, 1), "radius": params.radius, "annulus": params.annulus}
    t_pu_first, pu_first = best_time(lambda: photutils_recipe(data, **recipe))
    t_pu_next, pu_next = best_time(lambda: photutils_recipe(shifted, **recipe))
    rows = []
    for case, frame, ours, t_ours, t_pu, pu in (
        ("(a) first frame", data, first, t_first, t_pu_first, pu_first),
        ("(b) next frame ", shifted, nxt, t_next, t_pu_next, pu_next),
    ):
        same = flux_check(frame, ours.table, params.radius)
        sky = recipe_sky_check(frame, ours.table, params.radius, params.annulus)
        rows.append((f"{case}, sky={method}", t_ours, t_pu, len(ours.table), len(pu[0]), same, sky))
    return rows, nxt.offset


def main(path):
    data = fits.getdata(path).astype(np.float32)
    shifted = np.ascontiguousarray(data[7:, 5:])  # pointing offset (-5, -7)
    rows, offset = bench_method(data, shifted, "radial")
    rows += bench_method(data, shifted, "annulus")[0]
    print(
        f"{Path(path).name}: {data.shape[1]}x{data.shape[0]} px, offset found in (b): "
        f"({offset[0]:.3f}, {offset[1]:.3f}) (true -5, -7)\n"
    )
    print(
        f"{'case':32s} {'reduxd ms':>10s} {'photutils ms':>13s} {'speedup':>8s} {'stars':>6s} "
        f"{'DAO srcs':>9s} {'max rel flux diff':>18s} {'recipe-sky diff/err':>20s}"
    )
    for name, ours, theirs, n_ours, n_theirs, same, sky in rows:
        print(
            f"{name:32s} {ours * 1e3:10.1f} {theirs * 1e3:13.1f} {theirs / ours:7.1f}x "
            f"{n_ours:6d} {n_theirs:9d} {same:18.2e} {sky:20.3f}"
        )
    print(
        "\nmax rel flux diff: reduxd flux vs photutils aperture_photometry at the same positions,"
        "\nradius and sky. recipe-sky diff/err: max |reduxd flux - flux with the recipe's annulus"
        "\nmedian (ApertureStats)| / flux_err at reduxd's positions."
    )


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    if not target.is_file():
        sys.exit(f"no frame at {target} (pass a path or set REDUXD_TEST_DATA)")
    main(target)
