"""XO-1 b on ARCSAT (80 lights, half through cloud): reduxd with only the target named
against a careful ccdproc + photutils peer with the best fixed radius and comparison set.

The peer: ccdproc masters (median bias; median dark minus bias, scaled to each
exposure; flats bias- and dark-subtracted, scaled by 1/median and median-combined,
as ccdproc's documentation does), each light calibrated with ccdproc; stars found
by photutils' DAOStarFinder on the first light; each later light's offset from the
vote of the 30 brightest detections, positions re-centred (centroid_sources,
centroid_com); aperture photometry with a sigma-clipped annulus median sky
(annulus r + 5 to r + 15). The target's differential curve against the summed
comparisons; for every fixed radius of ``RADII`` and every comparison set made of
the k brightest stars (k = 1 .. 12, target excluded), the lowest
point-to-point scatter of the target is kept: the peer is allowed to look at the
target, reduxd is not. Also printed: the same search with comparisons added
greedily while the target's scatter drops, an over-fitted lower bound (it picks
stars whose noise happens to cancel the target's).

Point-to-point scatter: 1.4826 x MAD of successive differences / sqrt(2), all frames.

Run: ``python benchmarks/bench_xo1_peer.py [--data ../shared/data]``.
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

RADII = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)
TARGET_XY = (525.6, 571.6)  # XO-1 on the first light (0-based)
N_STARS = 40


def p2p_scatter(values):
    """1.4826 x MAD of successive differences / sqrt(2) (NaN skipped)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    diff = np.diff(values)
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2.0))


def lights_of(data):
    """The 80 XO-1 b lights, in time order."""
    paths = glob.glob(str(data / "arcsat-20250601" / "XO1-b_*.fits"))
    paths += glob.glob(str(data / "arcsat-20250601-xo1" / "XO1-b_*.fits"))
    return sorted(paths, key=os.path.basename)


def ccdproc_masters(caldir):
    """Return (bias, dark minus bias, flat) as CCDData, ccdproc's recipe."""
    import ccdproc

    def files(pattern):
        return sorted(glob.glob(str(caldir / pattern)))

    bias = ccdproc.combine(files("Bias_*.fits"), method="median", unit="adu")
    dark = ccdproc.subtract_bias(
        ccdproc.combine(files("Dark_*.fits"), method="median", unit="adu"), bias
    )
    flats = [calibrate(path, bias, dark, None) for path in files("domeflat_z_*.fits")]
    flat = ccdproc.combine(flats, method="median", scale=lambda a: 1.0 / np.median(a))
    return bias, dark, flat


def calibrate(path, bias, dark, flat):
    """One frame through ccdproc: bias, scaled dark, flat."""
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData

    ccd = ccdproc.subtract_bias(CCDData.read(path, unit="adu"), bias)
    ccd = ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s, scale=True)
    return ccd if flat is None else ccdproc.flat_correct(ccd, flat)


def find_stars(data, n):
    """(x, y) of the ``n`` brightest DAOStarFinder detections."""
    from astropy.stats import sigma_clipped_stats
    from photutils.detection import DAOStarFinder

    _, median, std = sigma_clipped_stats(data, sigma=3.0)
    found = DAOStarFinder(fwhm=3.5, threshold=8.0 * std)(data - median)
    found.sort("flux", reverse=True)
    found = found[:n]
    return np.asarray(found["x_centroid"]), np.asarray(found["y_centroid"])


def offset(ref_xy, xy, tol=2.0):
    """Offset (dx, dy) from the vote of all pairs of reference and frame detections."""
    dx = (xy[0][:, None] - ref_xy[0][None, :]).ravel()
    dy = (xy[1][:, None] - ref_xy[1][None, :]).ravel()
    votes = [(np.sum((np.abs(dx - a) < tol) & (np.abs(dy - b) < tol)), a, b)
             for a, b in zip(dx, dy, strict=True)]  # fmt: skip
    _, a, b = max(votes)
    near = (np.abs(dx - a) < tol) & (np.abs(dy - b) < tol)
    return float(np.median(dx[near])), float(np.median(dy[near]))


def measure_night(data):
    """Fluxes (n_frames, n_stars, n_radii) and the target's column."""
    from astropy.stats import SigmaClip
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        CircularAperture,
        aperture_photometry,
    )
    from photutils.centroids import centroid_com, centroid_sources

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ccdproc/astropy header and unit chatter
        bias, dark, flat = ccdproc_masters(data / "arcsat-20250601")
        lights = lights_of(data)
        ref = None
        fluxes = []
        for path in lights:
            image = np.asarray(calibrate(path, bias, dark, flat).data, dtype=np.float64)
            xy = find_stars(image, 30 if ref is not None else N_STARS)
            if ref is None:
                ref = xy
                dx = dy = 0.0
            else:
                dx, dy = offset((ref[0][:30], ref[1][:30]), xy)
            px, py = ref[0] + dx, ref[1] + dy
            ny, nx = image.shape
            inside = (px > 6) & (px < nx - 7) & (py > 6) & (py < ny - 7)
            x, y = np.full(px.size, np.nan), np.full(px.size, np.nan)
            x[inside], y[inside] = centroid_sources(
                image, px[inside], py[inside], box_size=11, centroid_func=centroid_com
            )
            bad = ~np.isfinite(x) | (np.hypot(x - px, y - py) > 3)
            x, y = np.where(bad, px, x), np.where(bad, py, y)
            x, y = np.clip(x, 0, nx - 1), np.clip(y, 0, ny - 1)
            pos = np.column_stack([x, y])
            row = []
            for r in RADII:
                sky = ApertureStats(
                    image, CircularAnnulus(pos, r + 5, r + 15), sigma_clip=SigmaClip(3.0)
                ).median
                ap = CircularAperture(pos, r)
                total = np.asarray(aperture_photometry(image, ap)["aperture_sum"])
                row.append(total - sky * ap.area)
            fluxes.append(np.array(row).T)
    target = int(np.argmin(np.hypot(ref[0] - TARGET_XY[0], ref[1] - TARGET_XY[1])))
    return np.array(fluxes), target, len(lights)


def best_peer(fluxes, target, *, greedy=False):
    """Lowest target p2p scatter over radii and comparison sets; (scatter, radius, comps).

    Comparison sets: the k brightest stars measured in every frame (k = 1 .. 12);
    with ``greedy``, also stars added one at a time while the target's scatter
    drops (this fits the target's noise: a lower bound, not a method).
    """
    best = (np.inf, None, None)
    for k, r in enumerate(RADII):
        f = fluxes[:, :, k]
        whole = [j for j in range(f.shape[1]) if j != target and np.all(f[:, j] > 0)]
        order = sorted(whole, key=lambda j: -np.median(f[:, j]))[:20]

        def scatter(comps, f=f):
            ens = np.sum(f[:, comps], axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                return p2p_scatter(-2.5 * np.log10(f[:, target] / ens))

        for n in range(1, 13):  # the n brightest
            value = scatter(order[:n])
            if value < best[0]:
                best = (value, r, order[:n])
        if not greedy:
            continue
        chosen = []
        for _ in range(10):  # add the star that lowers the target's scatter most
            value, j = min((scatter([*chosen, j]), j) for j in order if j not in chosen)
            if chosen and value >= scatter(chosen):
                break
            chosen.append(j)
        value = scatter(chosen)
        if value < best[0]:
            best = (value, r, list(chosen))
    return best


def reduxd_run(data, outdir):
    """``reduxd reduce`` with only the target named; return the light-curve table."""
    from astropy.table import Table

    config = Path(outdir) / "xo1.toml"
    config.write_text(
        f"[lightcurve]\ntarget = [{TARGET_XY[0]}, {TARGET_XY[1]}]\n"
        "[output]\nquicklook = false\nstack = false\nreduced = false\n"
    )
    script = Path(sys.executable).with_name("reduxd")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]
    command += ["reduce", "--config", str(config), "-D", str(data / "arcsat-20250601"),
                str(data / "arcsat-20250601-xo1"), "-C", str(data / "arcsat-20250601"),
                "-O", str(outdir), "--level", "WARNING"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    return Table.read(Path(outdir) / "lightcurve_XO1-b_Z.ecsv", format="ascii.ecsv")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("REDUXD_TEST_DATA", "../shared/data"))
    args = parser.parse_args(argv)
    data = Path(args.data)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        lc = reduxd_run(data, tmp)
    t_reduxd = time.perf_counter() - start
    start = time.perf_counter()
    fluxes, target, n = measure_night(data)
    peer, radius, comps = best_peer(fluxes, target)
    t_peer = time.perf_counter() - start
    bound = best_peer(fluxes, target, greedy=True)[0]
    ours = p2p_scatter(lc["dmag"])
    print(f"frames: {n}")
    print(f"reduxd (target named only): p2p scatter {ours:.5f}, "
          f"{len(lc.meta['comparison_ids'])} comparisons, radius "
          f"{lc.meta['aperture']['radius_px']:.2f} px, NaN points "
          f"{int(np.sum(~np.isfinite(lc['dmag'])))}, {t_reduxd:.1f} s")  # fmt: skip
    print(f"peer (ccdproc + photutils, best of {len(RADII)} radii x comparison sets): "
          f"p2p scatter {peer:.5f}, radius {radius} px, {len(comps)} comparisons, "
          f"{t_peer:.1f} s")  # fmt: skip
    print(f"peer with comparisons also added greedily on the target's own scatter "
          f"(over-fitted lower bound): {bound:.5f}")  # fmt: skip
    print(f"reduxd / peer: {ours / peer:.3f}")
    return ours, peer


if __name__ == "__main__":
    main()
