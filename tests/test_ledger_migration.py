"""A ledger written by main before ``frames.wait`` (tests/data/ledger_main_6aa1e13.sqlite,
made by tests/data/make_ledger_main.py with main's store.py) opens and is migrated in
place: its waiting and incomplete frames become ``wait`` values, nothing else changes."""

import shutil
import sqlite3
from pathlib import Path

from reduxd.store import Ledger

FIXTURE = Path(__file__).parent / "data" / "ledger_main_6aa1e13.sqlite"


def _rows(path):
    with sqlite3.connect(path) as db:
        return db.execute("SELECT id, relpath, state, attempts, last_error FROM frames").fetchall()


def test_a_ledger_from_main_is_migrated_in_place(tmp_path):
    path = tmp_path / "reduxd.sqlite"
    shutil.copy(FIXTURE, path)
    before = _rows(path)
    with sqlite3.connect(path) as db:
        assert "wait" not in {r[1] for r in db.execute("PRAGMA table_info(frames)")}
    with Ledger(path) as ledger:
        waits = {r.relpath: (r.state, r.wait) for r in ledger.frames()}
        assert ledger.counts()["seen"] == 3 and ledger.counts()["done"] == 1
        assert ledger.frame(4).info["object"] == "m51"
    assert waits == {
        "m51/light_1.fits": ("seen", "calibration"),
        "m51/light_2.fits": ("seen", "incomplete"),
        "m51/light_3.fits": ("seen", None),
        "m51/light_4.fits": ("done", None),
    }
    assert _rows(path) == before  # ids, states, attempts and reasons kept
    with Ledger(path) as ledger:  # opened again: nothing more to do
        assert ledger.frame(1).wait == "calibration"


def test_wait_is_set_by_its_cause_and_cleared_by_any_state_change(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        row = ledger.observe("/d", "a.fits", size=1, mtime_ns=1)
        ledger.begin(row.id)
        ledger.defer(row.id, "waiting for calibration: no flat", wait="calibration")
        assert ledger.frame(row.id).wait == "calibration"
        ledger.begin(row.id)
        assert ledger.frame(row.id).wait is None
        ledger.fail(row.id, "incomplete: short", max_tries=10**9, wait="incomplete")
        assert ledger.frame(row.id).wait == "incomplete"
        ledger.defer(row.id, "some other reason")
        assert ledger.frame(row.id).wait is None


def test_a_read_only_reader_of_an_old_ledger_sees_the_waits_without_migrating(tmp_path):
    path = tmp_path / "reduxd.sqlite"
    shutil.copy(FIXTURE, path)
    with Ledger(path, readonly=True) as ledger:
        assert [(r.relpath, r.wait) for r in ledger.pending()] == [
            ("m51/light_1.fits", "calibration"),
            ("m51/light_2.fits", "incomplete"),
            ("m51/light_3.fits", None),
        ]
    with sqlite3.connect(path) as db:  # never migrated by a reader
        assert "wait" not in {r[1] for r in db.execute("PRAGMA table_info(frames)")}
