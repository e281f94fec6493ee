"""Benchmark: master dark through reduxd and through ccdproc, and reduxd's memory bound.

Usage::

    .venv/bin/python benchmarks/bench_masters.py            # speed: 25 darks 1608x1104
    .venv/bin/python benchmarks/bench_masters.py --memory   # 40 frames 6388x9576, 2048 MB

The speed run writes 25 uint16 darks of the ZWO ASI432MM size to a temporary folder
and combines them with ``reduxd.steps.combine.combine_files`` and with
``ccdproc.combine(method='median')`` in the same run; it prints both times (wall
and CPU, all threads), the ratios and the largest difference; also the level of
each frame (``frame_median``, as for flats) and the median of a stack held in
memory by reduxd's compiled kernel (``plane_median``) and by ``np.median``.
The memory run writes 40 frames of 6388x9576 (~4.9 GB; free space is checked
first), combines them in a child process with ``max_memory_mb=2048`` and prints
the child's peak RSS (VmHWM and RUSAGE_CHILDREN).
Temporary files are removed at the end.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reduxd import fitsio  # noqa: E402
from reduxd.steps.combine import band_rows, combine_files, frame_median, plane_median  # noqa: E402
from reduxd.steps.masters import load_frames, make_dark  # noqa: E402

BLOCK = 2880


def write_uint16(path, shape, cards, rows):
    """Write a uint16 frame as BITPIX 16 + BZERO 32768, as cameras do, band by band.

    ``rows(y0, y1)`` returns the uint16 rows ``y0:y1``; memory stays at one band.
    """
    ny, nx = shape
    header = fits.Header(
        [("SIMPLE", True), ("BITPIX", 16), ("NAXIS", 2), ("NAXIS1", nx), ("NAXIS2", ny),
         ("BZERO", 32768), ("BSCALE", 1), *cards]
    )  # fmt: skip
    with open(path, "wb") as fh:
        fh.write(header.tostring(padding=True).encode("ascii"))
        for y0 in range(0, ny, 512):
            band = rows(y0, min(ny, y0 + 512)) ^ np.uint16(0x8000)  # - 32768 as int16
            fh.write(memoryview(band.view(np.int16).astype(">i2")))
        fh.write(b"\0" * (-(ny * nx * 2) % BLOCK))
    return path


def dark_cards(i, exptime=60.0):
    return [("FRAMETYP", "Dark"), ("EXPTIME", exptime), ("GAIN", 150),
            ("INSTRUME", "ZWO ASI432MM"), ("CCD-TEMP", -10.0),
            ("DATE-OBS", f"2024-07-02T01:{i // 60:02d}:{i % 60:02d}")]  # fmt: skip


def write_darks(folder, count, shape, seed=0):
    """Darks with a fixed pattern (the same in every frame) plus noise, written band by band."""

    def rows(i):
        def band(y0, y1):
            pattern = np.random.default_rng([seed, y0]).gamma(2.0, 20.0, (y1 - y0, shape[1]))
            noise = np.random.default_rng([seed, y0, i + 1]).normal(0, 8, pattern.shape)
            return np.clip(500 + pattern + noise, 0, 65535).astype(np.uint16)

        return band

    return [
        write_uint16(folder / f"dark_{i:05d}.fits", shape, dark_cards(i), rows(i))
        for i in range(count)
    ]


def best_of(func, repeat):
    """``(best wall seconds, CPU seconds of that run, result)``: CPU counts every thread."""
    best, result = None, None
    for _ in range(repeat):
        cpu, start = time.process_time(), time.perf_counter()
        result = func()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        best = (wall, cpu) if best is None or wall < best[0] else best
    return (*best, result)


def in_memory_median(frames):
    """The median of ``frames`` darks held in memory (no reading): reduxd's kernel and numpy."""
    stack = np.random.default_rng(0).normal(500.0, 8.0, (frames, 256, 1608)).round()
    stack = stack.astype(np.float32)
    t_kernel, c_kernel, ours = best_of(lambda: plane_median(stack.copy()), 5)
    t_numpy, c_numpy, theirs = best_of(lambda: np.median(stack, axis=0), 5)
    assert ours.tobytes() == theirs.tobytes()
    return [
        (f"plane_median, {frames}x256x1608 in memory", t_kernel, c_kernel),
        ("np.median(axis=0), same stack", t_numpy, c_numpy),
    ]


def speed(args):
    import ccdproc

    shape = (1104, 1608)
    folder = Path(tempfile.mkdtemp(prefix="bench_masters_", dir=args.tmpdir))
    try:
        paths = write_darks(folder, args.frames, shape)
        t_reduxd, c_reduxd, ours = best_of(lambda: combine_files(paths, method="median"), 3)
        frames = load_frames(paths, max_bytes=2**31)
        t_master, c_master, _ = best_of(lambda: make_dark(frames), 3)
        t_level, c_level, _ = best_of(lambda: [frame_median(lay) for _i, lay in frames], 3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t_ccdproc, c_ccdproc, theirs = best_of(
                lambda: ccdproc.combine([str(p) for p in paths], method="median", unit="adu"), 1
            )
        diff = float(np.abs(ours - theirs.data).max())
    finally:
        shutil.rmtree(folder)
    rows = [
        ("reduxd combine_files median", t_reduxd, c_reduxd),
        ("reduxd make_dark (+cards, read noise)", t_master, c_master),
        ("reduxd frame_median of each frame", t_level, c_level),
        ("ccdproc.combine median", t_ccdproc, c_ccdproc),
        *in_memory_median(args.frames),
    ]
    print(f"\n{args.frames} darks of {shape[1]}x{shape[0]} (uint16, BZERO 32768), median")
    print(f"{'what':40s} {'wall [s]':>9s} {'CPU [s]':>9s}")
    for name, seconds, cpu in rows:
        print(f"{name:40s} {seconds:9.3f} {cpu:9.3f}")
    print(f"{'speed-up (ccdproc / reduxd), wall':40s} {t_ccdproc / t_reduxd:8.1f}x")
    print(f"{'speed-up (ccdproc / reduxd), CPU':40s} {c_ccdproc / c_reduxd:8.1f}x")
    print(f"{'max |reduxd - ccdproc| [ADU]':40s} {diff:9.3g}")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    return 0 if diff <= 1e-3 else 1


def memory_child(folder, max_memory_mb):
    """Run in a child process: combine and report own peak RSS as JSON."""
    paths = sorted(Path(folder).glob("*.fits"))
    start = time.perf_counter()
    out = combine_files(paths, method="median", max_memory_mb=max_memory_mb)
    seconds = time.perf_counter() - start
    ny = out.shape[0]
    check = {str(y0): out[y0, :64].tolist() for y0 in (0, ny // 2, ny - 1)}
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "vmhwm_kb": hwm, "check": check}))


def verify_bands(paths, check):
    """Compare a few rows of the child's result with numpy's median of the same rows."""
    layouts = [fitsio.probe(p, max_bytes=2**31) for p in paths]
    worst = 0.0
    for y0, row in check.items():
        y0 = int(y0)
        stack = np.stack([fitsio.read_rows(lay, y0, y0 + 1)[0, :64] for lay in layouts])
        worst = max(worst, float(np.abs(np.median(stack, axis=0) - np.array(row)).max()))
    return worst


def memory(args):
    shape, count = (9576, 6388), args.big_frames
    need = count * shape[0] * shape[1] * 2 * 1.01
    free = shutil.disk_usage(args.tmpdir or tempfile.gettempdir()).free
    if free < need + 2**30:
        print(f"not enough space: need {need / 1e9:.1f} GB, {free / 1e9:.1f} GB free")
        return 2
    folder = Path(tempfile.mkdtemp(prefix="bench_memory_", dir=args.tmpdir))
    try:
        start = time.perf_counter()
        paths = write_darks(folder, count, shape, seed=1)
        t_write = time.perf_counter() - start
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(folder),
             "--max-memory-mb", str(args.max_memory_mb)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        # includes the parent's own peak (subprocess uses vfork): kept small by band writing
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KB on Linux
        parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        worst = verify_bands(paths, report["check"])
    finally:
        shutil.rmtree(folder)
    peak_gb = report["vmhwm_kb"] / 2**20
    rows = band_rows(shape, count, max_memory_mb=args.max_memory_mb, threads=2)
    print(f"\n{count} frames of {shape[1]}x{shape[0]} uint16 ({need / 1e9:.1f} GB on disk)")
    print(f"{'frames written in':34s} {t_write:9.1f} s")
    print(f"{'max_memory_mb':34s} {args.max_memory_mb:9.0f}")
    print(f"{'band rows per thread (2 threads)':34s} {rows:9d}")
    print(f"{'combine time':34s} {report['seconds']:9.1f} s")
    print(f"{'peak RSS of the child (VmHWM)':34s} {peak_gb:9.2f} GB")
    print(f"{'peak RSS (RUSAGE_CHILDREN)':34s} {children / 2**20:9.2f} GB")
    print(f"{'peak RSS of this parent process':34s} {parent / 2**20:9.2f} GB")
    print(f"{'max |diff| vs numpy on checked rows':34s} {worst:9.3g}")
    ok = peak_gb < args.limit_gb and worst == 0.0
    print(f"{'peak under ' + str(args.limit_gb) + ' GB':34s} {'yes' if ok else 'NO':>9s}")
    return 0 if ok else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="run the memory benchmark")
    parser.add_argument("--frames", type=int, default=25, help="darks in the speed run")
    parser.add_argument("--big-frames", type=int, default=40, help="frames in the memory run")
    parser.add_argument("--max-memory-mb", type=float, default=2048.0)
    parser.add_argument("--limit-gb", type=float, default=2.6, help="peak RSS allowed")
    parser.add_argument("--tmpdir", default=None, help="where to write the frames")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.max_memory_mb)
        return 0
    return memory(args) if args.memory else speed(args)


if __name__ == "__main__":
    sys.exit(main())
