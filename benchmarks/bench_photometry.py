"""Per-light photometry time: reduxd versus a plain photutils recipe, same run.

Usage: ``python benchmarks/bench_photometry.py [path/to/light.fits] [--crowded N]``
(default: ``../shared/data/umbc-sharpcap/blaze_v_15s_00001.fits``, or
``$REDUXD_TEST_DATA/umbc-sharpcap/...``; ``--crowded 0`` skips the crowded case).

Cases: (a) the first frame of a field (full detection); (b) the frame after the
first, simulated by cutting the frame 7 rows and 5 columns off (a pointing offset
of (-5, -7) px), with the field reference known. The photutils recipe does the
same work on every frame: ``sigma_clipped_stats`` + ``DAOStarFinder`` + an
annulus median (``ApertureStats``) + ``aperture_photometry``.

The flux check measures reduxd's positions with photutils' ``aperture_photometry``
and reduxd's sky: the fluxes must agree to rounding.

Crowded case (``--crowded``, default 1,000 stars): two simulated 1608x1104 lights
of a field of N stars (bias, dark and flat taken out with the simulator's truth
maps); reduxd's whole photometry step on the second one with the defaults of
config.toml (annulus sky, six radii from the FWHM, re-centring, errors, flags),
one core (median wall and CPU times; the ratios by CPU time, which moves less on
a shared machine). Beside it, on the same frame and at all six radii: the photutils recipe
(as above, plus ``aperture_photometry`` per radius), and ``sep`` as the practical
floor (``Background`` + ``sum_circle`` with a local annulus and errors, at reduxd's
positions; and with ``extract`` finding the stars itself). Then reduxd's smallest
CPU time of the calls, and where its step spends its time (medians of the parts).

One core: the thread pools of BLAS and OpenMP are pinned to one thread before
numpy loads (``OPENBLAS_NUM_THREADS`` etc., unless already set), so that the
process's CPU time is that of one core and no idle pool threads spin into it.
"""

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: one core (see above)

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.stats import sigma_clipped_stats  # noqa: E402

from reduxd import phot_columns  # noqa: E402
from reduxd.steps import detect, photometry  # noqa: E402
from reduxd.steps import sky as sky_step  # noqa: E402
from reduxd.steps.photometry import PhotParams, photometer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("REDUXD_TEST_DATA", ROOT.parent / "shared" / "data"))
DEFAULT = DATA / "umbc-sharpcap" / "blaze_v_15s_00001.fits"
EXPTIME = 15.0
REPEAT = 7


def photutils_recipe(data, *, fwhm, radius, annulus, nsigma=5.0, radii=()):
    """The plain recipe: global clipped stats, DAOStarFinder, annulus median, sums.

    ``radii``: more aperture radii, each through ``aperture_photometry`` too.
    """
    _, median, std = sigma_clipped_stats(data, sigma=3.0)
    x, y, _ = phot_columns.dao_find(data - median, fwhm=fwhm, threshold=nsigma * std)
    sky, _, _ = phot_columns.annulus_stats(data, x, y, *annulus)
    flux = phot_columns.aperture_sums(data, x, y, radius) - sky * np.pi * radius**2
    for r in radii:
        phot_columns.aperture_sums(data, x, y, r)
    return x, y, flux


def timed(func, repeat=REPEAT, *, with_min=False):
    """Median wall and CPU times (s) of ``repeat`` calls, and the last result.

    The CPU time (this process's) moves less than the wall time on a machine
    shared with other jobs. ``with_min``: also the smallest CPU time, after
    the median CPU time.
    """
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    wall, cpu = float(np.median(walls)), float(np.median(cpus))
    return (wall, cpu, min(cpus), result) if with_min else (wall, cpu, result)


# where the photometry step of a following frame spends its time (functions it calls)
PARTS = (
    ("peak search (coarse_peaks)", detect, "coarse_peaks"),
    ("offset vote", photometry, "_cheap_offset"),
    ("re-centring known stars", photometry, "_known_stars"),
    ("new stars", photometry, "_new_stars"),
    ("sky (annulus)", sky_step, "estimate_sky"),
    ("aperture sums (kernel, all radii)", photometry, "aperture_sums"),
    ("fluxes, errors, flags", photometry, "measure_columns"),
    ("fluxes at every radius", photometry, "measure_radii"),
    ("table", photometry, "_finish"),
)


def step_parts(func, repeat=REPEAT):
    """Median CPU time (s) of each part in ``PARTS`` over ``repeat`` calls of ``func``.

    Each part's function is wrapped by a timer for these calls only (the step's
    own timing above runs without the wrappers).
    """
    spent = defaultdict(lambda: np.zeros(repeat))
    call = 0
    originals = [(module, name, getattr(module, name)) for _, module, name in PARTS]

    def timer(label, original):
        def timed_part(*args, **kwargs):
            cpu = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                spent[label][call] += time.process_time() - cpu

        return timed_part

    try:
        for (label, _, _), (module, name, original) in zip(PARTS, originals, strict=True):
            setattr(module, name, timer(label, original))
        total = np.zeros(repeat)
        for call in range(repeat):  # the timers add to spent[...][call]
            cpu = time.process_time()
            func()
            total[call] = time.process_time() - cpu
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
    parts = {label: float(np.median(spent[label])) for label, _, _ in PARTS}
    parts["rest"] = float(np.median(total - sum(spent.values())))
    return parts


def best_time(func, repeat=REPEAT):
    """Median wall time (s) of ``repeat`` calls, and the last result."""
    wall, _, result = timed(func, repeat)
    return wall, result


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


def crowded_frames(n_stars):
    """Two calibrated simulated lights (float32) of a field of ``n_stars`` stars."""
    from reduxd.simulate import Night, NightSpec

    spec = NightSpec(
        n_stars=n_stars, filters=("V",), n_lights=2, lights_per_run=2, n_bias=1, n_darks=1,
        n_flats=1,
    )  # fmt: skip
    night = Night(spec)
    lights = [p for p in night.plan if p.kind == "light"]
    dark = night.dark_map * spec.light_exptime / spec.gain_e_per_adu
    flat = night.flats["V"]
    return [
        ((night.render(p).data - night.bias_map - dark) / flat).astype(np.float32) for p in lights
    ]


def sep_floor(data, x, y, radii, annulus, *, gain, extract=False):
    """sep: background map, (optionally) extraction, sums at all radii with a local annulus."""
    import sep

    bkg = sep.Background(data)
    if extract:
        objects = sep.extract(data - bkg.back(), 5.0, err=bkg.globalrms)
        x, y = objects["x"], objects["y"]
    n, nr = x.size, len(radii)
    sums, errs, _ = sep.sum_circle(
        data, np.repeat(x, nr), np.repeat(y, nr), np.tile(radii, n), err=bkg.globalrms,
        gain=gain, bkgann=annulus, subpix=0,
    )  # fmt: skip
    return sums.reshape(n, nr), errs.reshape(n, nr)


def multi_flux_check(data, result):
    """Max rel. difference of reduxd's fluxes at every radius vs photutils at its positions."""
    t = result.table
    x, y, sky = np.asarray(t["x"]), np.asarray(t["y"]), np.asarray(t["sky"])
    ok = (np.asarray(t["flags"]) & 2) == 0
    worst = 0.0
    for k, r in enumerate(result.apertures["radii"]):
        ref = phot_columns.aperture_sums(data, x, y, r) - sky * np.pi * r**2
        flux = result.apertures["flux"][:, k]
        worst = max(worst, float(np.max(np.abs(flux[ok] - ref[ok]) / np.abs(ref[ok]))))
    return worst


def bench_crowded(n_stars):
    """reduxd's photometry step (config defaults) vs photutils and sep on a crowded field."""
    from reduxd.config import Camera, load_config
    from reduxd.reduce import phot_params

    first_img, img = crowded_frames(n_stars)
    camera = Camera(instrument="ZWO ASI432MM", gain_e_per_adu=0.25, read_noise_e=4.0)
    params = phot_params(load_config(), camera)
    first = photometer(first_img, exptime=EXPTIME, params=params)
    ref = first.reference
    step = lambda: photometer(img, exptime=EXPTIME, params=params, reference=ref)  # noqa: E731
    t_ours, c_ours, c_min, ours = timed(step, with_min=True)
    radii = [float(r) for r in ours.apertures["radii"]]
    annulus = (max(radii) + 5.0, max(radii) + 15.0)
    recipe = {"fwhm": round(ours.fwhm, 1), "radius": radii[0], "annulus": annulus}
    t_pu, c_pu, pu = timed(lambda: photutils_recipe(img, radii=radii[1:], **recipe), repeat=3)
    x, y = np.asarray(ours.table["x"]), np.asarray(ours.table["y"])
    gain = params.gain_e_per_adu
    t_sep, c_sep, _ = timed(lambda: sep_floor(img, x, y, radii, annulus, gain=gain))
    t_sepx, c_sepx, _ = timed(lambda: sep_floor(img, x, y, radii, annulus, gain=gain, extract=True))
    parts = step_parts(step)
    print(
        f"\ncrowded field: {n_stars} simulated stars, {img.shape[1]}x{img.shape[0]} px, "
        f"{len(radii)} radii {[round(r, 2) for r in radii]} px, annulus "
        f"({annulus[0]:.2f}, {annulus[1]:.2f}); the frame after the first, one core; "
        "medians of wall and CPU time, compared by CPU time (target: reduxd <= 60 ms)\n"
    )
    print(f"{'method':46s} {'ms':>8s} {'CPU ms':>8s} {'vs reduxd':>10s} {'stars':>6s}")
    rows = [
        ("reduxd photometry step (config defaults)", t_ours, c_ours, len(ours.table)),
        ("photutils recipe (DAO + ApertureStats + sums)", t_pu, c_pu, len(pu[0])),
        ("sep at reduxd's positions (Background+sums)", t_sep, c_sep, x.size),
        ("sep with extract (Background+extract+sums)", t_sepx, c_sepx, None),
    ]
    for name, t, c, n in rows:
        print(
            f"{name:46s} {t * 1e3:8.1f} {c * 1e3:8.1f} {c / c_ours:9.2f}x "
            f"{n if n is not None else '':>6}"
        )
    print(f"\nreduxd step, smallest CPU time of {REPEAT}: {c_min * 1e3:.1f} ms")
    print(f"reduxd step by part (median CPU ms of {REPEAT} more calls, timed per part):")
    for label, spent in parts.items():
        print(f"  {label:34s} {spent * 1e3:6.1f}")
    check = multi_flux_check(img, ours)
    print(f"\nmax rel. flux diff vs photutils aperture_photometry at all radii: {check:.2e}")


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frame", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--crowded", type=int, default=1000, help="stars; 0: skip")
    args = parser.parse_args()
    if not args.frame.is_file():
        sys.exit(f"no frame at {args.frame} (pass a path or set REDUXD_TEST_DATA)")
    main(args.frame)
    if args.crowded:
        bench_crowded(args.crowded)
