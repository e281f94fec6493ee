"""Honest re-runs: settings fingerprints, excluded lights, the ledger's in-place migration.

The re-run tests run the real ``reduxd reduce`` in a subprocess on a copy of the
small simulated night.
"""

import shutil
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from test_batch import ok, phot, run_reduxd, summary

from reduxd import store
from reduxd.simulate import NightSpec, simulate_night
from reduxd.store import Ledger

BASE = "reduce -D pg2213 -C calibration -O analysis"


@pytest.fixture(scope="module")
def small_night_rerun(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rerun") / "night"
    simulate_night(folder, NightSpec.small())
    return folder


@pytest.fixture
def night(small_night_rerun, tmp_path):
    return Path(shutil.copytree(small_night_rerun, tmp_path / "night"))


def current(table):
    return table[table["current"] == 1]


def test_changed_radius_reduces_again(night):
    ok(run_reduxd(f"{BASE} -R 15", cwd=night))
    proc = ok(run_reduxd(f"{BASE} -R 8", cwd=night))
    assert "radius 15.0 -> 8.0" in proc.stdout
    assert summary(night / "analysis")["reduced"] == 12
    table = phot(night / "analysis")
    assert set(current(table)["radius"]) == {8.0}
    assert set(table[table["current"] == 0]["radius"]) == {15.0}
    again = ok(run_reduxd(f"{BASE} -R 8", cwd=night))  # same settings: nothing to do
    assert summary(night / "analysis")["reduced"] == 0
    assert "settings_changed" not in again.stdout


def test_changed_calibration_choice_reduces_again(night):
    ok(run_reduxd(f"{BASE}", cwd=night))
    proc = ok(run_reduxd(f"{BASE} --no-flat", cwd=night))
    assert "no_flat False -> True" in proc.stdout
    assert set(current(phot(night / "analysis"))["calib"]) == {"dark"}


def test_length_with_annulus_does_not_reduce_again(night):
    ok(run_reduxd(f"{BASE}", cwd=night))
    ok(run_reduxd(f"{BASE} -L 50", cwd=night))
    assert summary(night / "analysis")["reduced"] == 0


def test_excluded_lights_are_reduced_by_a_later_run(night):
    ok(run_reduxd(f"{BASE} -x U B R I", cwd=night))
    with Ledger(night / "analysis" / "reduxd.sqlite") as ledger:
        assert ledger.counts()["excluded"] == 6
        assert all(r.info["excluded"] == "R" for r in ledger.frames(state="excluded"))
    again = ok(run_reduxd(f"{BASE} -x r", cwd=night))  # still excluded: not reduced
    assert summary(night / "analysis")["excluded"] == 6, again.stdout
    ok(run_reduxd(BASE, cwd=night))
    s = summary(night / "analysis")
    assert s["reduced"] == 6 and s["excluded"] == 0
    assert Counter(current(phot(night / "analysis"))["filter"]) == {"V": 96, "R": 96}
    with Ledger(night / "analysis" / "reduxd.sqlite") as ledger:
        assert ledger.counts()["excluded"] == 0 and ledger.counts()["done"] == 29


def old_ledger(path):
    """A ledger made by reduxd before fingerprints: no column, no ``excluded`` state."""
    schema = store._SCHEMA.replace(", 'excluded', 'waiting', 'incomplete')", ")").replace(
        "    fingerprint TEXT,           -- JSON: the settings that produced the rows\n", ""
    )
    assert "excluded" not in schema and "fingerprint" not in schema
    db = sqlite3.connect(path)
    db.executescript(schema)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.execute(
        "INSERT INTO frames (root, relpath, size, mtime_ns, state, first_seen, updated, kind)"
        " VALUES ('/d', 'a.fits', 1, 1, 'done', 'x', 'x', 'light')"
    )
    db.execute("INSERT INTO reductions (frame_id, version, calib, created) VALUES (1, 1, 'x', 'x')")
    db.execute("INSERT INTO measurements (reduction_id, data) VALUES (1, '{\"star_id\": 1}')")
    db.commit()
    db.close()


def test_old_ledger_is_migrated_in_place(tmp_path):
    path = tmp_path / "reduxd.sqlite"
    old_ledger(path)
    with Ledger(path) as ledger:
        assert [m.row for m in ledger.measurements()] == [{"star_id": 1}]  # rows kept
        assert ledger.fingerprints() == {1: {}}
        row = ledger.observe("/d", "b.fits", size=1, mtime_ns=1)
        ledger.exclude(row.id, checksum=None, night=None, info={"excluded": "R"})
        assert ledger.counts()["excluded"] == 1
        ledger.add_measurements(1, [], calib="x", master_ids=[], fingerprint={"radius": 8.0})
        assert ledger.fingerprints()[1] == {"radius": 8.0}
    with Ledger(path) as ledger:  # a second open finds nothing to migrate
        assert ledger.counts()["done"] == 1
