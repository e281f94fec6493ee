"""``reduxd reduce``: flags, exit status, broken files, re-runs, --redo, --jobs, progress.

Each test copies a small simulated night (``NightSpec.small()``: V and R, 6 lights
each, 384x256) and runs the ``reduxd`` command in a subprocess, as a user would:
stdout and stderr are pipes, not a terminal.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from reduxd.batch import Progress
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger

OLD_ARGS = "reduce -D pg2213 -C calibration -O analysis -R 15 -L 25 -S 0 -x U B R I --save pg2213"
N_CAL = 5 + 2 * 3 + 2 * 3  # bias, darks (15 s and 2 s), flats (V and R)
N_LIGHTS = 12


def reduxd_command():
    script = Path(sys.executable).with_name("reduxd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "reduxd"]


def run_reduxd(args, cwd, timeout=300):
    args = args.split() if isinstance(args, str) else list(args)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [*reduxd_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.fixture(scope="session")
def small_night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small") / "night"
    simulate_night(folder, NightSpec.small())
    return folder


@pytest.fixture
def night(small_night, tmp_path):
    """A private copy of the small night."""
    return Path(shutil.copytree(small_night, tmp_path / "night"))


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr}"
    return proc


def summary(outdir, save=""):
    name = f"{save}_summary.json" if save else "summary.json"
    return json.loads((Path(outdir) / name).read_text())


def phot(outdir, save=""):
    name = f"{save}_photometry.csv" if save else "photometry.csv"
    return Table.read(Path(outdir) / name, format="ascii.csv")


def reduced_headers(outdir):
    paths = sorted((Path(outdir) / "reduced").rglob("*.fits"))
    assert paths
    return [fits.getheader(p) for p in paths]


# -- exit status and messages (fast) ------------------------------------------------


def test_empty_folder_fails_with_a_clear_message(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_reduxd("reduce -D empty -O out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "nothing to reduce: no FITS files" in proc.stderr
    assert str(tmp_path / "empty") in proc.stderr
    assert not (tmp_path / "out").exists()


def test_missing_folder_is_unusable_input(tmp_path):
    proc = run_reduxd("reduce -D nowhere -O out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere is not a folder" in proc.stderr


def test_only_unreadable_files_exit_nonzero_and_are_listed(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.fits").write_text("not a FITS file\n")
    proc = run_reduxd("reduce -D data -O out", cwd=tmp_path)
    assert proc.returncode == 1
    assert "nothing could be reduced: 1 of 1 files refused" in proc.stderr
    assert "notes.fits: quarantined: not a FITS file" in proc.stdout
    (refused,) = summary(tmp_path / "out")["refused"]
    assert refused["file"] == "notes.fits" and refused["status"] == "quarantined"


def test_progress_lines_are_periodic_off_a_terminal():
    clock = iter([0.0, 3.0, 9.0, 10.5, 15.0, 21.0, 22.0])
    out = io.StringIO()
    progress = Progress(6, stream=out, every=10.0, clock=lambda: next(clock))
    for name in "abcdef":
        progress.step(name)
    lines = out.getvalue().splitlines()
    assert [line.split(" frames")[0] for line in lines] == [
        "progress: 3/6",  # 10.5 s after the start
        "progress: 5/6",  # 21 s: 10.5 s after the last line
        "progress: 6/6",  # always the last frame
    ]
    assert lines[-1].endswith("done in 22 s") and "\r" not in out.getvalue()


def test_progress_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Progress(2, stream=out, every=10.0) as progress:  # a tqdm bar, cleared at the end
        progress.step("a.fits")
        progress.step("b.fits")
    text = out.getvalue()
    assert "0/2" in text and text.endswith("\r") and "\n" not in text
    assert "progress:" not in text


# -- whole runs (slow) ----------------------------------------------------------------


@pytest.mark.slow
def test_old_line_without_config_and_jobs_give_identical_tables(small_night, tmp_path):
    """The old line as is; ``--jobs 2`` gives the same tables, light curves and pixels."""
    one = Path(shutil.copytree(small_night, tmp_path / "one"))
    two = Path(shutil.copytree(small_night, tmp_path / "two"))
    ok(run_reduxd(OLD_ARGS, cwd=one))
    ok(run_reduxd(f"{OLD_ARGS} --jobs 2", cwd=two))
    a, b = one / "analysis", two / "analysis"
    assert summary(a, "pg2213")["reduced"] == 6 and summary(a, "pg2213")["excluded"] == 6
    for name in ("pg2213_photometry.csv", "pg2213_photometry.ecsv",
                 "pg2213_lightcurve_V.csv", "pg2213_lightcurve_V.ecsv"):  # fmt: skip
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    rows = phot(a, "pg2213")
    assert set(rows["filter"]) == {"V"} and len(set(rows["file"])) == 6
    for path in sorted((a / "reduced").rglob("*.fits")):
        other = b / path.relative_to(a)
        assert (fits.getdata(path) == fits.getdata(other)).all()
    for path in sorted((a / "stacks").glob("*.csv")):
        assert path.read_bytes() == (b / path.relative_to(a)).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flag", "calib", "cards"),
    [
        ("--no-flat", "dark", {"RDXSKIP": "flat", "RDXDMODE": "exact"}),
        ("--no-dark", "bias+flat", {"RDXSKIP": "dark", "RDXDMODE": "bias"}),
    ],
)
def test_no_flat_and_no_dark_are_flagged(night, flag, calib, cards):
    proc = ok(run_reduxd(f"reduce -D pg2213 -C calibration -O analysis {flag}", cwd=night))
    assert summary(night / "analysis")["reduced"] == N_LIGHTS, proc.stdout[-2000:]
    rows = phot(night / "analysis")
    assert set(rows["calib"]) == {calib}
    skipped = flag.removeprefix("--no-")
    for header in reduced_headers(night / "analysis"):
        for key, value in cards.items():
            assert header[key] == value
        assert header["RDXMISS"] == "none" and header["RDXFORCE"] is False
        assert any(f"skipped {skipped} (requested)" in h for h in header["HISTORY"])
        absent = ("RDXFLAT",) if skipped == "flat" else ("RDXDARK", "RDXDCUR")
        assert not any(k in header for k in absent)


@pytest.mark.slow
def test_broken_files_are_listed_and_the_rest_is_reduced(night):
    run = next((night / "pg2213" / "pg2213_V_15s").iterdir())
    good = sorted(run.glob("*.fits"))[0]
    (run / "empty.fits").write_bytes(b"")
    (run / "truncated.fits").write_bytes(good.read_bytes()[:50000])
    (run / "notes.fits").write_text("observing log, not a FITS file\n")
    broken = {"empty.fits", "truncated.fits", "notes.fits"}
    for attempt in range(2):  # a re-run lists them again
        proc = ok(run_reduxd("reduce -D pg2213 -C calibration -O analysis", cwd=night))
        result = summary(night / "analysis")
        refused = {Path(r["file"]).name: r for r in result["refused"]}
        assert set(refused) == broken, attempt
        assert refused["empty.fits"]["reason"] == "file is empty (0 bytes)"
        assert "truncated" in refused["truncated.fits"]["reason"]
        assert refused["notes.fits"]["status"] == "quarantined"
        assert "not a FITS file" in refused["notes.fits"]["reason"]
        text = (night / "analysis" / "summary.txt").read_text()
        for name, r in refused.items():
            line = f"{name}: {r['status']}: {r['reason']}"
            assert line in text and line in proc.stdout
        assert f"{len(broken)} refused" in proc.stdout
    assert result["already_done"] == N_CAL + N_LIGHTS
    assert len(set(phot(night / "analysis")["file"])) == N_LIGHTS


def test_file_name_not_utf8_is_refused_not_a_crash(night):
    run = next((night / "pg2213" / "pg2213_V_15s").iterdir())
    good = sorted(run.glob("*.fits"))[0]
    bad = os.fsencode(run) + b"/bad\xff.fits"  # a name only bytes can spell
    with open(bad, "wb") as fh:
        fh.write(good.read_bytes())
    proc = ok(run_reduxd("reduce -D pg2213 -C calibration -O analysis", cwd=night))
    refused = summary(night / "analysis")["refused"]
    assert [r["reason"] for r in refused] == ["file name is not valid UTF-8: rename it"]
    assert "bad" in refused[0]["file"] and "not valid UTF-8" in proc.stdout
    assert len(set(phot(night / "analysis")["file"])) == N_LIGHTS


@pytest.mark.slow
def test_redo_supersedes_rows(night):
    line = "reduce -D pg2213 -C calibration -O analysis"
    ok(run_reduxd(line, cwd=night))
    first = phot(night / "analysis")
    assert set(first["version"]) == {1} and set(first["current"]) == {1}
    ok(run_reduxd(f"{line} --redo", cwd=night))
    out = night / "analysis"
    assert summary(out)["reduced"] == N_LIGHTS
    rows = phot(out)
    assert len(rows) == 2 * len(first)
    old, new = rows[rows["version"] == 1], rows[rows["version"] == 2]
    assert set(old["current"]) == {0} and set(new["current"]) == {1}
    assert sorted(zip(new["file"], new["star_id"], strict=True)) == sorted(
        zip(first["file"], first["star_id"], strict=True)
    )
    lc = Table.read(out / "lightcurve_pg2213_V.csv", format="ascii.csv")
    assert len(lc) == 6  # one row per light: only current rows count
    # masters rebuilt under the same names: one valid record per file
    masters = summary(out)["masters"]
    assert len(masters) == len({m["file"] for m in masters}) == 7
    with Ledger(out / "reduxd.sqlite") as ledger:
        replaced = ledger.masters(status="rejected")
        assert len(replaced) == 7
        assert all(ledger.master_status(m.id)[1].startswith("replaced") for m in replaced)


@pytest.mark.slow
def test_lights_with_missing_or_empty_products_are_reduced_again(night):
    """Batch products are not fsynced one by one: a re-run repairs what a power cut lost."""
    line = "reduce -D pg2213 -C calibration -O analysis"
    ok(run_reduxd(line, cwd=night))
    out = night / "analysis"
    reduced = sorted((out / "reduced").rglob("*.fits"))
    charts = sorted((out / "quicklook").rglob("*.png"))
    assert len(reduced) == len(charts) == N_LIGHTS
    reduced[0].unlink()
    charts[-1].write_bytes(b"")  # what delayed allocation can leave after a power cut
    untouched = {p: p.stat().st_mtime_ns for p in reduced[1:-1]}
    proc = ok(run_reduxd(line, cwd=night))
    result = summary(out)
    assert result["reduced"] == 2 and result["already_done"] == N_CAL + N_LIGHTS - 2
    assert "products_missing" in proc.stdout + proc.stderr
    assert reduced[0].stat().st_size > 0 and charts[-1].stat().st_size > 0
    assert charts[-1].read_bytes()[:4] == b"\x89PNG"
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    with fits.open(reduced[0], checksum=True) as hdul:
        assert hdul[0].header["DATASUM"] and hdul["MASK"].data.dtype == np.uint8
    rows = phot(out)
    assert len(set(rows["file"][rows["current"] == 1])) == N_LIGHTS


@pytest.mark.slow
def test_progress_lines_and_output_inside_the_data_folder(night):
    """``-D . -O analysis``: products are not raw frames; one progress line per frame."""
    proc = ok(run_reduxd("reduce -D . -O analysis --progress-every 0", cwd=night))
    total = N_CAL + N_LIGHTS
    lines = [line for line in proc.stderr.splitlines() if line.startswith("progress:")]
    assert [line.split(" frames")[0] for line in lines] == [
        f"progress: {i}/{total}" for i in range(1, total + 1)
    ]
    assert "\r" not in proc.stderr and "[#" not in proc.stderr
    first = phot(night / "analysis")
    assert summary(night / "analysis")["frames"] == total
    proc = ok(run_reduxd("reduce -D . -O analysis", cwd=night))
    again = summary(night / "analysis")
    assert again["frames"] == total and again["reduced"] == 0 and again["refused"] == []
    assert again["already_done"] == total
    assert len(phot(night / "analysis")) == len(first)
