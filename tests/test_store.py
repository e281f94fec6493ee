"""The SQLite ledger on a real database file."""

import dataclasses
import hashlib
import math
import sqlite3
import threading
from datetime import UTC, datetime

import numpy as np
import pytest

from reduxd import fsinfo
from reduxd.fitsio import file_checksum
from reduxd.steps.select import MasterRecord
from reduxd.store import Ledger, LedgerError

ROOT = "/data/sharpcap"


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "ledger.sqlite"


@pytest.fixture
def ledger(db_path):
    with Ledger(db_path) as led:
        yield led


def _master(kind="flat", path="/srv/masters/flat_V.fits", checksum="c1", night="2025-06-01"):
    return MasterRecord(
        kind=kind,
        path=path,
        checksum=checksum,
        instrument="ZWO ASI294MM",
        shape=(2822, 4144),
        binning=(1, 1),
        gain=120.0,
        exptime=None,
        filter="V" if kind == "flat" else None,
        ccd_temp=-10.0,
        date_start=datetime(2025, 6, 1, 20, 0, tzinfo=UTC),
        date_end=datetime(2025, 6, 1, 20, 30, tzinfo=UTC),
        ncombine=21,
        night=night,
    )


def _done_light(ledger, relpath, night="2025-06-01"):
    row = ledger.observe(ROOT, relpath, size=100, mtime_ns=1)
    ledger.begin(row.id)
    ledger.finish(row.id, kind="light", checksum="x", night=night)
    return row.id


# -- database setup --------------------------------------------------------------------


def test_pragmas_and_schema(ledger, db_path):
    assert ledger.schema_version == 2
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    db = ledger._db
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 10000


def test_newer_schema_is_refused(db_path):
    Ledger(db_path).close()
    con = sqlite3.connect(db_path)
    con.execute("UPDATE schema_version SET version = 99")
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match="schema version 99"):
        Ledger(db_path)


def test_network_filesystem_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "mountinfo"
    fake.write_text(f"1 0 0:1 / / rw - ext4 /dev/vda rw\n2 1 0:2 / {tmp_path} rw - nfs4 n:/x rw\n")
    monkeypatch.setattr(fsinfo, "MOUNTINFO", str(fake))
    with pytest.raises(LedgerError, match=r"network filesystem.*nfs4"):
        Ledger(tmp_path / "ledger.sqlite")
    assert not (tmp_path / "ledger.sqlite").exists()
    with pytest.warns(UserWarning, match="network filesystem"):
        Ledger(tmp_path / "ledger.sqlite", allow_network_fs=True).close()


def test_connection_belongs_to_its_thread(ledger):
    errors = []

    def use():
        try:
            ledger.counts()
        except sqlite3.ProgrammingError as exc:
            errors.append(exc)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    assert errors


# -- frames ---------------------------------------------------------------------------


def test_observe_twice_gives_one_row(ledger):
    a = ledger.observe(ROOT, "M51/Light_001.fits", size=100, mtime_ns=5)
    b = ledger.observe(ROOT, "M51/Light_001.fits", size=100, mtime_ns=5)
    assert a.id == b.id and a.state == b.state == "seen" and not b.changed
    assert ledger.counts()["seen"] == 1
    # SharpCap reuses file names across folders: same name, other folder, other row
    c = ledger.observe(ROOT, "M52/Light_001.fits", size=100, mtime_ns=5)
    assert c.id != a.id
    assert str(c.path) == f"{ROOT}/M52/Light_001.fits"


def test_full_lifecycle(ledger):
    row = ledger.observe(ROOT, "a.fits", size=100, mtime_ns=1_700_000_000 * 10**9)
    assert ledger.begin(row.id) == 1
    assert ledger.frame(row.id).state == "processing"
    assert ledger.pending() == []
    done = ledger.finish(
        row.id,
        kind="light",
        checksum="abc",
        night="2025-06-01",
        info={"filter": "V", "exptime": np.float32(30.0)},
    )
    assert done.state == "done" and done.kind == "light" and done.night == "2025-06-01"
    assert done.info == {"filter": "V", "exptime": 30.0}
    assert done.latency > 0 and done.finished >= done.started
    assert datetime.fromisoformat(done.first_seen).tzinfo is not None
    assert ledger.frame(root=ROOT, relpath="a.fits").id == row.id
    assert ledger.recent(1)[0].id == row.id


def test_attempt_is_committed_before_the_work(ledger, db_path):
    row = ledger.observe(ROOT, "a.fits", size=1, mtime_ns=1)
    ledger.begin(row.id)
    # another connection (another process) sees it at once
    con = sqlite3.connect(db_path)
    state, attempts = con.execute("SELECT state, attempts FROM frames").fetchone()
    con.close()
    assert (state, attempts) == ("processing", 1)
    with pytest.raises(LedgerError, match="already"):
        ledger.begin(row.id)


def test_retry_until_max_tries_then_failed(ledger):
    row = ledger.observe(ROOT, "a.fits", size=1, mtime_ns=1)
    for attempt in (1, 2):
        assert ledger.begin(row.id) == attempt
        assert ledger.fail(row.id, f"boom {attempt}", max_tries=3) == "seen"
        assert [r.id for r in ledger.pending()] == [row.id]
    assert ledger.begin(row.id) == 3
    assert ledger.fail(row.id, "boom 3", max_tries=3) == "failed"
    failed = ledger.frame(row.id)
    assert (failed.state, failed.attempts, failed.last_error) == ("failed", 3, "boom 3")
    assert ledger.pending() == []
    assert [r.id for r in ledger.failures()] == [row.id]
    ledger.reset(row.id)
    assert ledger.frame(row.id).state == "seen" and ledger.frame(row.id).attempts == 0


def test_quarantine(ledger):
    row = ledger.observe(ROOT, "text.fits", size=10, mtime_ns=1)
    ledger.begin(row.id)
    ledger.quarantine(row.id, "No SIMPLE card found")
    q = ledger.frame(row.id)
    assert (q.state, q.last_error) == ("quarantined", "No SIMPLE card found")
    assert ledger.observe(ROOT, "text.fits", size=10, mtime_ns=1).state == "quarantined"
    # rewritten file: a fresh start
    again = ledger.observe(ROOT, "text.fits", size=2880, mtime_ns=2)
    assert (again.state, again.attempts) == ("seen", 0) and not again.changed
    assert "quarantined" in again.last_error


def test_crash_recovery_from_another_ledger(db_path):
    first = Ledger(db_path)
    crashed = first.observe(ROOT, "kills-the-process.fits", size=1, mtime_ns=1).id
    fine = first.observe(ROOT, "fine.fits", size=1, mtime_ns=1).id
    first.begin(crashed)
    # the process dies here: nothing else is written, the connection is dropped
    del first
    for attempt in (1, 2, 3):
        second = Ledger(db_path)
        recovered = second.recover_interrupted(max_tries=3)
        assert [r.id for r in recovered] == [crashed]
        expected = "seen" if attempt < 3 else "failed"
        assert recovered[0].state == expected
        assert "interrupted during attempt" in recovered[0].last_error
        if expected == "seen":
            assert second.begin(crashed) == attempt + 1  # and it crashes again
        second.close()
    third = Ledger(db_path)
    assert third.recover_interrupted(max_tries=3) == []
    assert third.frame(crashed).state == "failed"  # no crash loop
    assert [r.id for r in third.pending()] == [fine]
    third.close()


def test_changed_after_done_is_flagged_once(ledger):
    row = ledger.observe(ROOT, "a.fits", size=100, mtime_ns=1)
    ledger.begin(row.id)
    ledger.finish(row.id, kind="light", checksum="abc")
    changed = ledger.observe(ROOT, "a.fits", size=200, mtime_ns=2)
    assert changed.changed and changed.state == "changed"
    assert "size 100 -> 200" in changed.last_error
    assert (changed.size, changed.mtime_ns) == (200, 2)
    later = ledger.observe(ROOT, "a.fits", size=200, mtime_ns=2)
    assert later.state == "changed" and not later.changed
    assert ledger.pending() == []  # not redone silently
    assert ledger.counts()["changed"] == 1
    assert ledger.begin(row.id) == 1  # an explicit re-reduction restarts the count


def test_growing_file_before_work_stays_seen(ledger):
    row = ledger.observe(ROOT, "a.fits", size=100, mtime_ns=1)
    grown = ledger.observe(ROOT, "a.fits", size=200, mtime_ns=2)
    assert (grown.id, grown.state, grown.size, grown.changed) == (row.id, "seen", 200, False)


def test_counts_and_filters(ledger):
    assert ledger.counts() == dict.fromkeys(
        (
            "seen",
            "processing",
            "done",
            "failed",
            "quarantined",
            "changed",
            "excluded",
            "waiting",
            "incomplete",
        ),
        0,
    )
    _done_light(ledger, "n1/a.fits", night="2025-06-01")
    _done_light(ledger, "n2/b.fits", night="2025-06-02")
    ledger.observe(ROOT, "n2/c.fits", size=1, mtime_ns=1)
    assert ledger.counts()["done"] == 2 and ledger.counts()["seen"] == 1
    assert [r.relpath for r in ledger.frames(night="2025-06-02")] == ["n2/b.fits"]
    assert len(ledger.frames(kind="light", state="done")) == 2
    assert ledger.frame(12345) is None
    with pytest.raises(LedgerError):
        ledger.begin(12345)


def test_file_checksum(tmp_path):
    path = tmp_path / "a.fits"
    data = np.arange(100_000, dtype=">i2").tobytes()
    path.write_bytes(data)
    assert file_checksum(path) == hashlib.sha1(data).hexdigest()
    path.write_bytes(data[:-1] + b"\x01")
    assert file_checksum(path) != hashlib.sha1(data).hexdigest()


# -- masters ------------------------------------------------------------------------------


def test_masters_roundtrip_and_reject(ledger):
    flat = _master()
    fid = ledger.add_master(flat)
    assert ledger.add_master(flat) == fid  # idempotent
    bias = ledger.add_master(_master(kind="bias", path="/srv/masters/bias.fits", checksum="b"))
    got = ledger.masters("flat")
    assert got == [dataclasses.replace(flat, id=fid)]
    assert got[0].shape == (2822, 4144) and got[0].date_start.tzinfo is not None
    assert [m.id for m in ledger.masters()] == [fid, bias]
    assert ledger.masters(instrument="other") == []
    ledger.reject_master(fid, "gradient across the field")
    assert [m.id for m in ledger.masters()] == [bias]
    assert [m.id for m in ledger.masters("flat", status="rejected")] == [fid]
    assert ledger.master_status(fid) == ("rejected", "gradient across the field")
    with pytest.raises(LedgerError):
        ledger.reject_master(999, "x")


# -- measurements -------------------------------------------------------------------------


def test_measurements_supersede(ledger):
    bias = ledger.add_master(_master(kind="bias", path="/m/bias.fits", checksum="b"))
    flat = ledger.add_master(_master())
    fid = _done_light(ledger, "M51/L1.fits")
    rows = [{"star": 1, "flux": np.float64(1234.5), "mag_err": float("nan")}, {"star": 2}]
    assert ledger.add_measurements(fid, rows, calib="bias", master_ids=[bias]) == 1
    assert ledger.frames_reduced_without("flat", night="2025-06-01") == [fid]
    assert (
        ledger.add_measurements(fid, rows[:1], calib="bias+flat", master_ids=[bias, flat, flat])
        == 2
    )
    current = ledger.measurements()
    assert [(m.version, m.calib, m.superseded) for m in current] == [(2, "bias+flat", False)]
    assert current[0].row["flux"] == 1234.5 and math.isnan(current[0].row["mag_err"])
    assert current[0].relpath == "M51/L1.fits" and current[0].night == "2025-06-01"
    everything = ledger.measurements(current_only=False)
    assert [(m.version, m.superseded) for m in everything] == [(1, True), (1, True), (2, False)]
    assert ledger.measurements(night="2025-06-02") == []
    assert ledger.masters_used(fid) == [bias, flat]
    assert ledger.frames_reduced_without("flat") == []
    assert ledger.frames_calibrated_with(flat) == [fid]


def test_relights_to_redo_after_flats_arrive_or_master_rejected(ledger):
    bias = ledger.add_master(_master(kind="bias", path="/m/bias.fits", checksum="b"))
    a = _done_light(ledger, "n1/a.fits")
    b = _done_light(ledger, "n1/b.fits")
    other_night = _done_light(ledger, "n0/c.fits", night="2025-05-31")
    for fid in (a, b, other_night):
        ledger.add_measurements(fid, [{"star": 1}], calib="bias", master_ids=[bias])
    assert ledger.frames_reduced_without("flat", night="2025-06-01") == [a, b]
    assert ledger.frames_reduced_without("flat") == [a, b, other_night]
    assert ledger.frames_calibrated_with(bias) == [a, b, other_night]
    ledger.reject_master(bias, "light leak")
    assert ledger.frames_calibrated_with(bias) == [a, b, other_night]  # redo these


def test_measurements_need_a_known_frame_and_master(ledger):
    with pytest.raises(LedgerError):
        ledger.add_measurements(42, [{"a": 1}], calib="none", master_ids=[])
    fid = _done_light(ledger, "a.fits")
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are on
        ledger.add_measurements(fid, [{"a": 1}], calib="flat", master_ids=[777])
    assert ledger.measurements() == []  # the failed version left nothing behind


def test_unstorable_value_is_a_clear_error(ledger):
    fid = _done_light(ledger, "a.fits")
    with pytest.raises(TypeError, match="cannot store object"):
        ledger.add_measurements(fid, [{"a": object()}], calib="none", master_ids=[])


# -- field references ---------------------------------------------------------------------


def test_field_references(ledger, db_path):
    assert ledger.load_reference("M51") is None
    ref = {"stars": [{"ra": 202.47, "dec": 47.19, "mag": 12.1}], "epoch": "2025-06-01"}
    ledger.save_reference("M51", ref)
    ledger.save_reference("M51", {**ref, "epoch": "2025-06-02"})
    ledger.close()
    with Ledger(db_path) as again:
        assert again.load_reference("M51") == {**ref, "epoch": "2025-06-02"}
