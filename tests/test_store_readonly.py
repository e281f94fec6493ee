"""``Ledger(path, readonly=True)``: reads a ledger another process writes, never writes it."""

import sqlite3

import pytest

from reduxd.store import Ledger, LedgerError


def test_missing_ledger_is_not_created(tmp_path):
    path = tmp_path / "sub" / "ledger.sqlite"
    with pytest.raises(LedgerError, match="no ledger there"):
        Ledger(path, readonly=True)
    assert not path.exists() and not path.parent.exists()


def test_not_a_ledger_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (a)").connection.close()
    with pytest.raises(LedgerError, match="cannot open the ledger read-only"):
        Ledger(path, readonly=True)


def test_reader_follows_the_writer_and_cannot_write(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as writer:
        row = writer.observe("/data", "a.fits", size=1, mtime_ns=1)
        with Ledger(path, readonly=True) as reader:
            version = reader.data_version()
            assert reader.frame(row.id).relpath == "a.fits"
            assert reader.reductions_since(0) == []
            writer.begin(row.id)
            writer.add_measurements(row.id, [{"star_id": 1}], calib="none", master_ids=[])
            assert reader.data_version() != version  # the reader sees the commit
            assert reader.reductions_since(0) == [(1, row.id)]
            writer.add_measurements(row.id, [{"star_id": 1}], calib="none", master_ids=[])
            assert reader.reductions_since(0) == [(2, row.id)]  # superseded: only the current
            assert reader.reductions_since(2) == []
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                reader.observe("/data", "b.fits", size=1, mtime_ns=1)
            assert reader.counts()["processing"] == 1
