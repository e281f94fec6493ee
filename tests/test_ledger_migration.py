"""Ledgers written by earlier versions open and are migrated in place.

- tests/data/ledger_main_6aa1e13.sqlite (made by tests/data/make_ledger_main.py with
  main 6aa1e13's store.py): a waiting or incomplete frame was ``seen``, its reason only
  in ``last_error``;
- tests/data/ledger_main_f55142a.sqlite (tests/data/make_ledger_main_f55142a.py, main
  f55142a): the same frames ``seen`` with the column ``frames.wait``.

Both become the states ``waiting`` and ``incomplete``, in one transaction, ids, other
states, attempts, reasons and metadata kept.
"""

import shutil
import sqlite3
from pathlib import Path

import pytest

from reduxd.store import DUPLICATE, Ledger, LedgerError

DATA = Path(__file__).parent / "data"
STATES = {
    "m51/light_1.fits": "waiting",
    "m51/light_2.fits": "incomplete",
    "m51/light_3.fits": "seen",
    "m51/light_4.fits": "done",
}


def _copy(tmp_path, name):
    path = tmp_path / "reduxd.sqlite"
    shutil.copy(DATA / name, path)
    return path


def _rows(path):
    with sqlite3.connect(path) as db:
        cur = db.execute("SELECT id, relpath, attempts, last_error, info FROM frames ORDER BY id")
        return cur.fetchall()


def _columns(path):
    with sqlite3.connect(path) as db:
        return {r[1] for r in db.execute("PRAGMA table_info(frames)")}


@pytest.mark.parametrize("name", ["ledger_main_6aa1e13.sqlite", "ledger_main_f55142a.sqlite"])
def test_a_ledger_from_main_is_migrated_in_place(tmp_path, name):
    path = _copy(tmp_path, name)
    before = _rows(path)
    with Ledger(path) as ledger:
        states = {r.relpath: r.state for r in ledger.frames()}
        counts = ledger.counts()
        assert ledger.frame(4).info["object"] == "m51"
        assert [r.relpath for r in ledger.pending()] == [f"m51/light_{i}.fits" for i in (1, 2, 3)]
    assert {k: states[k] for k in STATES} == STATES
    assert (counts["waiting"], counts["incomplete"], counts["seen"], counts["done"]) == (1, 1, 1, 1)
    assert _rows(path) == before  # ids, attempts, reasons and metadata kept
    assert "wait" not in _columns(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    with Ledger(path) as ledger:  # opened again: nothing more to do
        assert ledger.frame(1).state == "waiting"


def test_the_f55142a_ledger_keeps_its_excluded_light(tmp_path):
    path = _copy(tmp_path, "ledger_main_f55142a.sqlite")
    with Ledger(path) as ledger:
        row = ledger.frame(5)
    assert (row.state, row.info) == ("excluded", {"excluded": "filter R"})


def test_a_failed_migration_changes_nothing(tmp_path):
    path = _copy(tmp_path, "ledger_main_f55142a.sqlite")
    with sqlite3.connect(path) as db:  # a frame the new CHECK refuses: the copy fails
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("UPDATE frames SET state = 'lost' WHERE id = 3")
    before = _rows(path)
    with pytest.raises(LedgerError):
        Ledger(path)
    assert _rows(path) == before and "wait" in _columns(path)


def test_waiting_and_incomplete_are_states_set_by_their_cause(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        row = ledger.observe("/d", "a.fits", size=1, mtime_ns=1)
        ledger.begin(row.id)
        ledger.defer(row.id, "waiting for calibration: no flat", state="waiting")
        assert (ledger.frame(row.id).state, ledger.frame(row.id).attempts) == ("waiting", 0)
        assert ledger.begin(row.id) == 1
        assert ledger.fail(row.id, "incomplete: short", max_tries=10**9, retry="incomplete") == (
            "incomplete"
        )
        assert [r.id for r in ledger.pending()] == [row.id]
        ledger.begin(row.id)
        ledger.defer(row.id, "some other reason")
        assert ledger.frame(row.id).state == "seen"
        with pytest.raises(LedgerError, match="'done' is not one of seen, waiting"):
            ledger.defer(row.id, "x", state="done")


@pytest.mark.parametrize("name", ["ledger_main_6aa1e13.sqlite", "ledger_main_f55142a.sqlite"])
def test_a_read_only_reader_of_an_old_ledger_sees_the_states_without_migrating(tmp_path, name):
    path = _copy(tmp_path, name)
    schema = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master").fetchall()
    with Ledger(path, readonly=True) as ledger:
        assert [(r.relpath, r.state) for r in ledger.pending()] == list(STATES.items())[:3]
        counts = ledger.counts()
        assert (counts["waiting"], counts["incomplete"], counts["seen"]) == (1, 1, 1)
        assert [r.relpath for r in ledger.frames(state="waiting")] == ["m51/light_1.fits"]
    with sqlite3.connect(path) as db:  # never migrated by a reader
        assert db.execute("SELECT sql FROM sqlite_master").fetchall() == schema


def _indexes(path):
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


@pytest.mark.parametrize("name", ["ledger_main_6aa1e13.sqlite", "ledger_main_f55142a.sqlite", None])
def test_frames_are_found_by_checksum_through_an_index_in_every_ledger(tmp_path, name):
    """A light's copy is looked for by checksum (``duplicate_of``, twice a light): through an
    index, so the look-up does not grow with a ledger that holds months of frames. A ledger
    made without the index (an earlier version's) gets it when opened."""
    path = _copy(tmp_path, name) if name else tmp_path / "reduxd.sqlite"
    if name is None:
        Ledger(path).close()
        with sqlite3.connect(path) as db:
            db.execute("DROP INDEX frames_checksum")  # as this version's schema was before
    assert "frames_checksum" not in _indexes(path)
    with Ledger(path) as ledger:
        plan = ledger._db.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM frames {DUPLICATE}", ("0" * 40, 1)
        ).fetchall()
        assert ledger.duplicate_of(1, "0" * 40) is None
    assert any("frames_checksum" in row[-1] for row in plan), plan
    assert {"frames_state", "frames_night", "frames_checksum"} <= _indexes(path)
