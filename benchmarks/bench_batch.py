"""Benchmark: ``reduxd reduce`` on a whole night versus a plain ccdproc + photutils recipe.

Usage::

    .venv/bin/python benchmarks/bench_batch.py              # 60 calibration frames, 100 lights
    .venv/bin/python benchmarks/bench_batch.py --lights 20  # quicker
    .venv/bin/python benchmarks/bench_batch.py --profile    # + where reduxd's time goes
    .venv/bin/python benchmarks/bench_batch.py --lights 25 --stars 1000  # a crowded night
    # issue 12's long crowded night (650x500, 800 stars), against the code it was filed on
    .venv/bin/python benchmarks/bench_batch.py --lights 142 --stars 800 --shape 650x500 \
        --against c9f659c --repeat 2

A night is simulated first (not timed; ``reduxd.simulate``, ZWO ASI432MM,
1608x1104): 20 bias, 10 darks at each of the light (15 s) and flat (2 s)
exposures, 20 flats, and ``--lights`` lights in V. Then, in the same run and on
the same files:

reduxd
    ``reduxd reduce -D <lights> -C <calibration> -O <out> --jobs 2`` as a
    subprocess (wall time, start-up included), with the camera's e-/ADU and read
    noise in a config file, everything else at its default: masters, calibrated
    lights (FITS + mask), finder-chart PNGs, photometry tables, light curve, stack
    with its photometry. A second run with ``[output] quicklook = false`` shows
    what the PNGs cost, and a third with ``reduced = false``, ``stack = false``
    as well writes what the baseline writes (tables; reduxd adds the light
    curve and the summary). Each reduxd configuration runs ``--repeat`` times (new
    output folder each time, the previous one deleted) and the median is
    reported, with every run's time: timings vary by 10-20 % from run to run.
    The ~1 GB of products land in page cache that this VM has handed back to
    its host; the last line prints what plain writes of the same bytes cost
    here (:func:`page_cache_cost`).
plain recipe
    ``ccdproc.combine(method='median')`` for the bias, the darks (per exposure,
    bias subtracted) and the flats (bias and dark subtracted, scaled to their
    median); per light ``CCDData.read``, ``subtract_bias``, ``subtract_dark``,
    ``flat_correct``, then photutils ``sigma_clipped_stats`` + ``DAOStarFinder`` +
    ``aperture_photometry`` (r = 15 px) with a sky annulus (20-30 px, median via
    ``ApertureStats``); one CSV at the end. It writes no images.

Prints a table of the times and the ratio (target: reduxd at least 8x faster).

``--against REV`` instead times reduxd (defaults) against itself at git revision
REV: a detached ``git worktree`` of REV in the temporary folder, run with this
venv and ``PYTHONPATH`` set to it, alternated with this tree ``--repeat`` times
on the same night; it prints wall and CPU time (user + sys of every process) of
each and the ratios. The CPU time is the fairer figure on a shared machine.
Both run outside the repository (``python -m`` puts the working folder ahead of
``PYTHONPATH``: run from the repository root, the "other" revision was this
tree until 2026-11-26), and each side is checked to import its own ``reduxd``.
"""

import argparse
import contextlib
import cProfile
import glob
import io
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reduxd.simulate import NightSpec, simulate_night  # noqa: E402

TARGET = 8.0
RADIUS, ANNULUS, FWHM = 15.0, (20.0, 30.0), 3.5


def night_spec(n_lights, shape, n_stars=80):
    return NightSpec(
        filters=("V",),
        n_stars=n_stars,
        n_lights=n_lights,
        n_bias=20,
        n_darks=10,  # at 15 s and at 2 s
        n_flats=20,
        shape=shape,
    )


def reduxd_command():
    script = Path(sys.executable).with_name("reduxd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]


def write_config(path, truth, *, quicklook=True, products=True):
    """reduxd's config for the run: the camera; ``products=False`` writes what the baseline does."""
    cam = truth["camera"]
    extra = "" if products else "reduced = false\nstack = false\n"
    path.write_text(
        f"""
[[calibration.cameras]]
instrument = "{cam["instrument"]}"
gain_e_per_adu = {cam["gain_e_per_adu"]}
read_noise_e = {cam["read_noise_e"]}
saturation_adu = {cam["saturation_adu"]}

[output]
quicklook = {"true" if quicklook and products else "false"}
{extra}"""
    )
    return path


def run_reduxd(night, outdir, config, jobs, *, code=None):
    """Run ``reduxd reduce`` on the night; ``(wall seconds, stdout)``.

    ``code``: a source tree whose ``reduxd`` is run instead (``PYTHONPATH``, same venv).
    """
    command = reduxd_command() if code is None else [sys.executable, "-m", "reduxd"]
    args = [*command, "reduce", "-D", str(night / "pg2213"),
            "-C", str(night / "calibration"), "-O", str(outdir), "--config", str(config),
            "--jobs", str(jobs), "--level", "WARNING"]  # fmt: skip
    env = None if code is None else code_env(code)
    start = time.perf_counter()
    # cwd: ``python -m`` puts the working folder first on sys.path, before PYTHONPATH
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=outdir.parent)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"reduxd failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def byte_compile(code):
    """Write the bytecode of source tree ``code``'s ``reduxd``, as ``pip install`` does.

    An editable install under ``PYTHONDONTWRITEBYTECODE`` (or in a read-only tree)
    has none, and every run would compile the package again (about 0.2 s of one
    process's start); both sides of a comparison are compiled alike.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(code) / "reduxd")],
                   check=True, capture_output=True)  # fmt: skip


def installed_tree():
    """The source tree of the ``reduxd`` this venv runs (``reduxd_command``)."""
    probe = [sys.executable, "-c", "import reduxd; print(reduxd.__file__)"]
    found = subprocess.run(probe, capture_output=True, text=True, check=True, cwd="/")
    return Path(found.stdout.strip()).resolve().parents[1]


def code_env(code):
    """The environment that runs the ``reduxd`` of source tree ``code`` (checked)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    probe = [sys.executable, "-c", "import reduxd; print(reduxd.__file__)"]
    found = subprocess.run(probe, capture_output=True, text=True, env=env, cwd=code.parent)
    where = Path(found.stdout.strip()).resolve()
    if not where.is_relative_to(Path(code).resolve()):
        raise SystemExit(f"PYTHONPATH={code} runs the reduxd of {where}, not of {code}")
    return env


def children_cpu():
    """User + system CPU seconds of this process's finished children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def checkout(rev, folder):
    """A detached ``git worktree`` of ``rev`` in ``folder`` (removed afterwards)."""
    git = ["git", "-C", str(ROOT)]
    subprocess.run([*git, "worktree", "add", "--detach", str(folder), rev], check=True,
                   capture_output=True)  # fmt: skip
    try:
        if any(Path(folder, "reduxd").rglob("*.pyx")):  # its compiled kernels, in place
            subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=folder, check=True, capture_output=True)  # fmt: skip
        byte_compile(folder)
        yield folder
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(folder)], check=False)


def against(night, work, config, jobs, rev, repeat):
    """``reduxd reduce`` of this tree and of ``rev``, alternated ``repeat`` times on the
    same night; prints wall and CPU (user + sys, all processes) of each and the ratios."""
    times = {"this": [], rev: []}
    with checkout(rev, work / "against") as base:
        for i in range(repeat):
            for name, code in ((rev, base), ("this", ROOT)):
                folder = work / f"out-{name}-{i}"
                cpu = children_cpu()
                seconds, _ = run_reduxd(night, folder, config, jobs, code=code)
                times[name].append((seconds, children_cpu() - cpu))
                print(f"{name:>10s} run {i + 1}: {seconds:6.1f} s wall, "
                      f"{times[name][-1][1]:6.1f} s CPU; load {_load()}", flush=True)  # fmt: skip
                shutil.rmtree(folder)
    wall = {k: float(np.median([w for w, _ in v])) for k, v in times.items()}
    cpu = {k: float(np.median([c for _, c in v])) for k, v in times.items()}
    print(f"\nreduxd reduce --jobs {jobs}, default products, median of {repeat}:")
    for name in (rev, "this"):
        print(f"  {name:>10s}: {wall[name]:6.1f} s wall, {cpu[name]:6.1f} s CPU (user + sys)")
    print(f"  this tree is {wall[rev] / wall['this']:.2f}x faster than {rev} by wall time, "
          f"{cpu[rev] / cpu['this']:.2f}x by CPU time ({os.cpu_count()} CPUs)")  # fmt: skip
    return wall, cpu


def _load():
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def repeated(night, outdir, config, jobs, repeat, label):
    """Median wall time of ``repeat`` runs, each into a new output folder.

    A run's folder is deleted once timed (the last one is kept), as a disk
    that fills up would be cleaned. That does not make the page cache warm for
    the next run: see :func:`page_cache_cost`.
    """
    times = []
    for i in range(repeat):
        folder = outdir.with_name(f"{outdir.name}-{i}")
        seconds, _ = run_reduxd(night, folder, config, jobs)
        times.append(seconds)
        if i < repeat - 1:
            shutil.rmtree(folder)
    spread = f" (runs: {', '.join(f'{t:.1f}' for t in times)})" if repeat > 1 else ""
    median = float(np.median(times))
    print(f"reduxd reduce --jobs {jobs}{label}: {median:.1f} s{spread}", flush=True)
    return median


def page_cache_cost(folder, nbytes, nfiles, *, pause=3.0):
    """Seconds to write ``nbytes`` in ``nfiles`` plain files: (after ``pause``, at once).

    On a VM whose balloon driver reports free pages to the host, memory freed
    for more than about two seconds goes back to the host, and the next write
    into it pays a first touch: here 1.3-1.9 s for 1.0 GB, against 0.26-0.39 s for
    pages freed just before. reduxd's products land in such pages (its masters
    take longer than that), the baseline writes no images. The same bytes are
    written with ``open().write``: what the machine charges, not reduxd.
    """
    chunk = np.random.default_rng(0).bytes(max(1, nbytes // max(nfiles, 1)))

    def write_all():
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        for i in range(nfiles):
            (folder / f"f{i}.bin").write_bytes(chunk)
        return time.perf_counter() - start

    write_all()
    shutil.rmtree(folder)
    time.sleep(pause)
    cold = write_all()
    shutil.rmtree(folder)
    warm = write_all()
    shutil.rmtree(folder)
    return cold, warm


def folder_bytes(folder):
    """(total bytes, number of files) under ``folder``."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


# -- the plain recipe -------------------------------------------------------------


def plain_recipe(night, outdir):
    """ccdproc masters + per-light calibration and photutils photometry; returns timings."""
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData
    from astropy.stats import sigma_clipped_stats
    from astropy.table import vstack
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        CircularAperture,
        aperture_photometry,
    )
    from photutils.detection import DAOStarFinder

    def files(pattern):
        return sorted(glob.glob(str(night / pattern), recursive=True))

    times = {}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ccdproc/astropy header and unit chatter
        bias = ccdproc.combine(files("calibration/bias/**/*.fits"), method="median", unit="adu")
        darks = {}
        for folder in sorted((night / "calibration" / "darks").iterdir()):
            dark = ccdproc.combine(files(f"{folder}/**/*.fits"), method="median", unit="adu")
            dark = ccdproc.subtract_bias(dark, bias)
            darks[float(dark.header["EXPTIME"])] = dark
        flats = []
        for path in files("calibration/flats/**/*.fits"):
            ccd = ccdproc.subtract_bias(CCDData.read(path, unit="adu"), bias)
            dark = darks[float(ccd.header["EXPTIME"])]
            flats.append(
                ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s)
            )
        flat = ccdproc.combine(flats, method="median", scale=lambda a: 1.0 / np.median(a))
        times["masters"] = time.perf_counter() - start

        start = time.perf_counter()
        tables = []
        for path in files("pg2213/**/*.fits"):
            ccd = ccdproc.subtract_bias(CCDData.read(path, unit="adu"), bias)
            dark = darks[float(ccd.header["EXPTIME"])]
            ccd = ccdproc.subtract_dark(ccd, dark, exposure_time="EXPTIME", exposure_unit=u.s)
            ccd = ccdproc.flat_correct(ccd, flat)
            data = np.asarray(ccd.data)
            _, median, std = sigma_clipped_stats(data, sigma=3.0)
            found = DAOStarFinder(fwhm=FWHM, threshold=5.0 * std)(data - median)
            if found is None:
                continue
            xy = np.column_stack([found["xcentroid"], found["ycentroid"]])
            aperture = CircularAperture(xy, r=RADIUS)
            sky = ApertureStats(data, CircularAnnulus(xy, *ANNULUS)).median
            table = aperture_photometry(data, aperture)
            table["sky"] = sky
            table["flux"] = table["aperture_sum"] - sky * aperture.area
            table["file"] = os.path.relpath(path, night)
            tables.append(table)
        vstack(tables).write(outdir / "plain_photometry.csv", format="ascii.csv", overwrite=True)
        times["lights"] = time.perf_counter() - start
    return times, sum(len(t) for t in tables)


# -- profile ----------------------------------------------------------------------


def profile_reduxd(night, outdir, config, top=25):
    """Run ``reduxd reduce --jobs 1`` in this process under cProfile; print the top entries."""
    from reduxd.cli import main

    args = ["reduce", "-D", str(night / "pg2213"), "-C", str(night / "calibration"),
            "-O", str(outdir), "--config", str(config), "--jobs", "1",
            "--level", "WARNING"]  # fmt: skip
    profiler = cProfile.Profile()
    stdout, sys.stdout = sys.stdout, io.StringIO()
    try:
        profiler.runcall(main, args)
    finally:
        sys.stdout = stdout
    stats = pstats.Stats(profiler).sort_stats("cumulative")
    buf = io.StringIO()
    stats.stream = buf
    stats.print_stats(r"reduxd/", top)
    print("\nreduxd --jobs 1 under cProfile (cumulative, reduxd functions):")
    print(buf.getvalue().split("function calls", 1)[-1])


# -- main -------------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lights", type=int, default=100, help="lights (default 100)")
    parser.add_argument("--shape", default="1608x1104", help="WIDTHxHEIGHT (default 1608x1104)")
    parser.add_argument("--stars", type=int, default=80, help="field stars (crowded: 1000)")
    parser.add_argument("--jobs", type=int, default=2, help="reduxd --jobs (default 2)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="reduxd runs, median reported (default 3)"
    )
    parser.add_argument("--profile", action="store_true", help="also profile reduxd (--jobs 1)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--against",
        metavar="REV",
        help="only compare reduxd (defaults) with the code of git revision REV, run from a "
        "detached worktree with this venv; --repeat runs of each, alternated",
    )
    args = parser.parse_args(argv)
    nx, ny = (int(v) for v in args.shape.lower().split("x"))
    for tree in {ROOT, installed_tree()}:
        byte_compile(tree)

    work = Path(tempfile.mkdtemp(prefix="reduxd-bench-batch-"))
    try:
        night = work / "night"
        t0 = time.perf_counter()
        truth = simulate_night(night, night_spec(args.lights, (ny, nx), args.stars))
        n_cal, n_lights = len(truth["calibration"]), len(truth["lights"])
        print(
            f"simulated {n_cal} calibration frames + {n_lights} lights of {nx}x{ny}, "
            f"{args.stars} field stars "
            f"in {time.perf_counter() - t0:.1f} s ({os.cpu_count()} CPUs)",
            flush=True,
        )
        config = write_config(work / "reduxd.toml", truth)
        if args.against:
            against(night, work, config, args.jobs, args.against, args.repeat)
            return 0
        fast = write_config(work / "reduxd-noql.toml", truth, quicklook=False)
        tables_only = write_config(work / "reduxd-tables.toml", truth, products=False)

        t_reduxd = repeated(night, work / "reduxd", config, args.jobs, args.repeat, "")
        t_noql = repeated(night, work / "reduxd-noql", fast, args.jobs, args.repeat, ", no PNGs")
        t_tables = repeated(
            night, work / "reduxd-tables", tables_only, args.jobs, args.repeat, ", tables only"
        )
        (work / "plain").mkdir()
        plain, n_rows = plain_recipe(night, work / "plain")
        t_plain = sum(plain.values())
        print(f"plain ccdproc + photutils: {t_plain:.1f} s ({n_rows} star rows)", flush=True)

        rows = [
            ("plain ccdproc + photutils (1 process)", t_plain,
             f"masters {plain['masters']:.1f} s + lights {plain['lights']:.1f} s"),
            (f"reduxd reduce --jobs {args.jobs}", t_reduxd, "defaults: FITS, PNGs, tables, stack"),
            (f"reduxd reduce --jobs {args.jobs}, quicklook=false", t_noql, "no finder PNGs"),
            (f"reduxd reduce --jobs {args.jobs}, tables only", t_tables,
             "baseline's outputs: no reduced FITS, PNGs, stack"),
        ]  # fmt: skip
        print()
        print(f"{'':44s} {'seconds':>8s} {'per light':>10s} {'plain/x':>8s}")
        for name, seconds, note in rows:
            print(
                f"{name:44s} {seconds:8.1f} {seconds / n_lights:10.3f} "
                f"{t_plain / seconds:7.1f}x   {note}"
            )
        print()
        for what, seconds in (("with all its products", t_reduxd), ("tables only", t_tables)):
            ratio = t_plain / seconds
            verdict = "met" if ratio >= TARGET else "MISSED"
            print(
                f"reduxd ({what}) is {ratio:.1f}x faster than the plain recipe "
                f"(target {TARGET:g}x: {verdict})"
            )
        nbytes, nfiles = folder_bytes(work / f"reduxd-{args.repeat - 1}")
        cold, warm = page_cache_cost(work / "page-cache", nbytes, nfiles)
        print(
            f"\nthis machine: writing reduxd's {nbytes / 1e9:.2f} GB of products ({nfiles} "
            f"files) with plain writes takes {cold:.2f} s into pages freed 3 s earlier, "
            f"{warm:.2f} s into pages freed just before (VM page reporting; see page_cache_cost)"
        )
        if args.profile:
            profile_reduxd(night, work / "reduxd-profile", config)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
