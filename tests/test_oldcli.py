"""The old ``data_redux.py`` command lines, run unchanged as ``reduxd reduce``.

Each test runs the real ``reduxd`` command in a subprocess on a copy of the small
simulated night (folders ``pg2213`` and ``calibration``, as in the old README).
"""

import shutil
from pathlib import Path

import pytest
from test_batch import ok, phot, run_reduxd, summary

from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger

#: the two example lines of the old script's README (``python3 data_redux.py`` dropped)
OLD_README_LINES = (
    "-r 15 -o analysis -d pg2213 -c calibration -l 50 -S 0 --level DEBUG --force "
    "-x U B R I --no-flat",
    "-D pg2213 -C calibration -O analysis -R 15 -L 25 -S 0 -x U B R I --save pg2213",
)


@pytest.fixture(scope="module")
def small_night_13(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small13") / "night"
    simulate_night(folder, NightSpec.small())
    return folder


@pytest.fixture
def night(small_night_13, tmp_path):
    return Path(shutil.copytree(small_night_13, tmp_path / "night"))


def fail(proc, code=2):
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr}"
    return proc.stderr


@pytest.mark.parametrize("line", OLD_README_LINES)
def test_old_readme_lines_run_unchanged(night, line):
    proc = ok(run_reduxd("reduce " + line, cwd=night))
    save = "pg2213" if "--save" in line else ""
    s = summary(night / "analysis", save)
    assert s["reduced"] == 6 and s["excluded"] == 6  # V reduced, R excluded
    table = phot(night / "analysis", save)
    assert set(table["filter"]) == {"V"}
    assert set(table["radius"]) == {15.0}
    if "--no-flat" in line:
        assert set(table["calib"]) == {"dark"}
    assert "unrecognized" not in proc.stderr


def test_single_dash_long_forms(night):
    ok(
        run_reduxd(
            "reduce -datadir pg2213 -caldir calibration -outdir out -radius 9 -length 40 "
            "-smoothing 0 -level INFO -x R",
            cwd=night,
        )
    )
    assert set(phot(night / "out")["radius"]) == {9.0}


@pytest.mark.parametrize("args", ["-version", "-V", "--version", "reduce -V", "reduce -version"])
def test_version_flags(tmp_path, args):
    proc = ok(run_reduxd(args, cwd=tmp_path))
    assert proc.stdout.startswith("reduxd ")


def test_exclude_any_filter_name_normalised(night):
    ok(run_reduxd("reduce -D pg2213 -C calibration -O analysis -x r ha OIII", cwd=night))
    s = summary(night / "analysis")
    assert s["excluded"] == 6 and s["reduced"] == 6


def test_mistyped_flag_prints_reduce_usage(tmp_path):
    err = fail(run_reduxd("reduce --radious 8", cwd=tmp_path))
    assert "usage: reduxd reduce" in err
    assert "unrecognized arguments: --radious 8" in err


@pytest.mark.parametrize(
    "args, typed",
    [("-R 0", "-R 0"), ("-radius -3", "-radius -3"), ("-L 2", "-L 2"), ("-S -1", "-S -1")],
)
def test_errors_name_the_flag_typed(tmp_path, args, typed):
    err = fail(run_reduxd("reduce " + args, cwd=tmp_path))
    assert f"error: {typed}: expected" in err
    assert "usage: reduxd reduce" in err and "<defaults>" not in err


def test_missing_datadir_says_so(tmp_path):
    err = fail(run_reduxd("reduce -O analysis", cwd=tmp_path))
    assert "no -D/--datadir given" in err


def test_missing_flats_name_the_flags_and_log_once(night):
    shutil.rmtree(night / "calibration" / "flats")
    proc = run_reduxd("reduce -D pg2213 -C calibration -O analysis", cwd=night)
    text = proc.stdout + proc.stderr
    assert "--force, --no-dark or --no-flat" in text
    waiting = [line for line in proc.stdout.splitlines() if "light_waiting" in line]
    assert len(waiting) == 12, waiting  # one line per light, not two
    with Ledger(night / "analysis" / "reduxd.sqlite") as ledger:
        assert len(ledger.pending()) == 12


def test_lights_only_are_measured_uncalibrated_with_one_warning(night):
    shutil.rmtree(night / "calibration")
    proc = ok(run_reduxd("reduce -D pg2213 -O analysis", cwd=night))
    warned = [line for line in proc.stdout.splitlines() if "no_calibration_frames" in line]
    assert len(warned) == 1 and "--force, --no-dark or --no-flat" in warned[0]
    assert "light_waiting" not in proc.stdout
    assert summary(night / "analysis")["reduced"] == 12
    assert set(phot(night / "analysis")["calib"]) == {"none"}
