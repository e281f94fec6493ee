"""A light's photometry rows in the ledger: one binary record (schema 2), JSON rows of
older ledgers read and kept.

``tests/data/ledger_main_857cd46.sqlite`` was written by main 857cd46
(``tests/data/make_ledger_main_857cd46.py``): schema 1, one JSON text per row.
"""

import importlib.util
import json
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reduxd.rowblob import MAGIC, decode_rows, encode_rows
from reduxd.store import Ledger, _dumps

DATA = Path(__file__).parent / "data"
OLD = DATA / "ledger_main_857cd46.sqlite"
_spec = importlib.util.spec_from_file_location("make_old", DATA / "make_ledger_main_857cd46.py")
_make_old = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_make_old)
light_rows = _make_old.light_rows  # the rows the old ledger holds


def as_json(rows):
    """What the ledger gave back before: each row's JSON text, parsed."""
    return [json.loads(_dumps(row)) for row in rows]


def crowded(n=300, seed=1):
    """Rows of one light as the coordinator gets them: shared values, then the stars'."""
    rng = np.random.default_rng(seed)
    base = light_rows(1, 1, "A", "V")[0]
    rows = []
    for k in range(n):
        row = dict(base)
        row.update(
            x=float(rng.uniform(0, 650)), flux=float(rng.lognormal(8, 2)), star_id=k + 1,
            flags=int(rng.integers(0, 64)), flux_ap=rng.normal(1e4, 1e3, 6).tolist(),
        )  # fmt: skip
        rows.append(row)
    rows[3]["flux"] = math.nan
    rows[4]["flux_ap"][2] = -math.inf
    return rows


CASES = {
    "light": light_rows(2, 7, "A", "V"),
    "crowded": crowded(),
    "one row": light_rows(1, 1, "A", "V"),
    "numpy values": [{"a": np.float64(1.5), "b": np.int64(k), "c": np.arange(3)} for k in range(4)],
    "bools and big ints": [{"ok": k % 2 == 0, "n": 2**70 + k, "m": k} for k in range(5)],
    "ints and floats mixed": [{"v": 1 if k else 1.0, "w": [1.0, k]} for k in range(3)],
    "lists of other lengths": [{"v": [1.0] * k} for k in range(4)],
    "one value every row, not shared": [{"s": "x" * 3, "i": 5, "none": None} for _ in range(3)],
    "equal floats, -0.0 and 0.0": [{"z": 0.0}, {"z": -0.0}, {"z": 0.0}],
    "nested": [{"d": {"k": [1.0, math.nan]}, "e": []} for _ in range(3)],
    "true and 1": [{"v": True}, {"v": 1}],
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_record_reads_back_as_the_rows_json(name):
    rows = CASES[name]
    data = encode_rows(rows, _dumps)
    assert data.startswith(MAGIC)
    back, want = decode_rows(data), as_json(rows)
    assert repr(back) == repr(want)  # keys in order, types, NaN, -0.0
    assert [list(map(type, r.values())) for r in back] == [
        list(map(type, r.values())) for r in want
    ]
    lists = [id(v) for row in back for v in row.values() if isinstance(v, list | dict)]
    assert len(lists) == len(set(lists))  # each row its own lists, as from JSON


def test_rows_that_do_not_fit_a_record():
    assert encode_rows([], _dumps) is None
    assert encode_rows([{}], _dumps) is None
    assert encode_rows([{"a": 1.0}, {"b": 1.0}], _dumps) is None  # other keys
    assert encode_rows([{"a": 1.0, "b": 2.0}, {"b": 2.0, "a": 1.0}], _dumps) is None
    assert encode_rows([{1: 1.0}], _dumps) is None
    assert encode_rows([{"a": object()}], _dumps) is None
    with pytest.raises(ValueError, match="not a row record"):
        decode_rows(b'{"a": 1}')
    with pytest.raises(ValueError, match="row record of"):
        decode_rows(encode_rows(CASES["light"], _dumps)[:-8])


def test_a_light_is_stored_as_one_record(tmp_path):
    rows = crowded()
    with Ledger(tmp_path / "l.sqlite") as ledger:
        frame = ledger.observe("/d", "a.fits", size=1, mtime_ns=1)
        ledger.add_measurements(frame.id, rows, calib="none", master_ids=[])
        db = ledger._db
        assert db.execute("SELECT count(*) FROM measurements").fetchone()[0] == 0
        stored = db.execute("SELECT object, filter, n, data FROM light_rows").fetchall()
        assert [tuple(r)[:3] for r in stored] == [("A", "V", len(rows))]
        assert repr([m.row for m in ledger.measurements()]) == repr(as_json(rows))
        found = [row for _, row in ledger.field_measurements("A", "V")]
        assert repr(found) == repr(as_json(rows))
        assert list(ledger.field_measurements("A", "R")) == []


def test_rows_that_do_not_fit_are_stored_as_json_texts(tmp_path):
    rows = [{"object": "A", "filter": "V", "x": 1.0}, {"object": "A", "x": 2.0}]
    odd_field = [{"object": 7, "filter": "V", "x": 1.0}]
    with Ledger(tmp_path / "l.sqlite") as ledger:
        for i, light in enumerate([rows, odd_field]):
            frame = ledger.observe("/d", f"{i}.fits", size=1, mtime_ns=1)
            ledger.add_measurements(frame.id, light, calib="none", master_ids=[])
        db = ledger._db
        assert db.execute("SELECT count(*) FROM light_rows").fetchone()[0] == 0
        assert [m.row for m in ledger.measurements()] == rows + odd_field
        assert [row for _, row in ledger.field_measurements("A", "V")] == rows


def _old_rows(path):
    """The rows as 857cd46's ``Ledger.measurements(current_only=False)`` read them."""
    db = sqlite3.connect(path)
    cur = db.execute(
        "SELECT f.id, r.version, r.superseded, m.data FROM measurements m JOIN reductions r"
        " ON m.reduction_id = r.id JOIN frames f ON r.frame_id = f.id"
        " ORDER BY f.id, r.version, m.id"
    )
    out = [(r[0], r[1], bool(r[2]), json.loads(r[3])) for r in cur]
    db.close()
    return out


def _copy(tmp_path):
    path = tmp_path / "reduxd.sqlite"
    shutil.copy(OLD, path)
    return path


def test_a_ledger_of_857cd46_is_migrated_and_read_as_before(tmp_path):
    path = _copy(tmp_path)
    before = _old_rows(path)
    assert len(before) == 24
    with Ledger(path) as ledger:
        assert ledger.schema_version == 2
        got = [(m.frame_id, m.version, m.superseded, m.row)
               for m in ledger.measurements(current_only=False)]  # fmt: skip
        assert repr(got) == repr(before)
        current = [(m.frame_id, m.version) for m in ledger.measurements()]
        assert current == [(f, v) for f, v, s, _ in before if not s]
        a = [(v, row["file"], row["star_id"]) for v, row in ledger.field_measurements("A", "V")]
        assert a == [(1, "A_001.fits", k) for k in range(1, 6)] + [
            (2, "A_002.fits", k) for k in range(1, 5)
        ] + [(1, "A_003.fits", k) for k in range(1, 6)]
        assert [r[1] for r in ledger.field_reductions("B", "R")] == [4]
    assert repr(_old_rows(path)) == repr(before)  # the JSON rows kept as they were
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_a_ledger_of_857cd46_goes_on_with_records(tmp_path):
    """New lights and a light reduced again are records; a field's rows come in frame
    order from both kinds; the old version of the light reduced again is superseded."""
    path = _copy(tmp_path)
    with Ledger(path) as ledger:
        light_1 = light_rows(1, 3, "A", "V", version=5)
        assert ledger.add_measurements(1, light_1, calib="dark+flat", master_ids=[]) == 2
        frame = ledger.observe("/data", "A_005.fits", size=100, mtime_ns=5)
        light_5 = light_rows(5, 6, "A", "V")
        ledger.add_measurements(frame.id, light_5, calib="dark+flat", master_ids=[])
        found = list(ledger.field_measurements("A", "V"))
        assert [(v, row["file"]) for v, row in found] == (
            [(2, "A_001.fits")] * 3 + [(2, "A_002.fits")] * 4 + [(1, "A_003.fits")] * 5
            + [(1, "A_005.fits")] * 6
        )  # fmt: skip
        assert repr([row for _, row in found[:3]]) == repr(as_json(light_1))
        assert repr([row for _, row in found[-6:]]) == repr(as_json(light_5))
        assert ledger._db.execute("SELECT count(*) FROM light_rows").fetchone()[0] == 2
        versions = [(m.frame_id, m.version, m.superseded) for m in
                    ledger.measurements(current_only=False, frame_id=1)]  # fmt: skip
        assert versions == [(1, 1, True)] * 5 + [(1, 2, False)] * 3
    with Ledger(path) as ledger:  # opened again: nothing more to migrate
        assert len(list(ledger.field_measurements("A", "V"))) == 18


def test_a_reader_of_a_857cd46_ledger_reads_its_rows_without_migrating(tmp_path):
    path = _copy(tmp_path)
    schema = sqlite3.connect(path).execute("SELECT sql FROM sqlite_master").fetchall()
    with Ledger(path, readonly=True) as ledger:
        got = [(m.frame_id, m.version, m.superseded, m.row)
               for m in ledger.measurements(current_only=False)]  # fmt: skip
        assert repr(got) == repr(_old_rows(path))
        assert len(list(ledger.field_measurements("A", "V"))) == 14
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sql FROM sqlite_master").fetchall() == schema
        assert db.execute("SELECT version FROM schema_version").fetchone()[0] == 1
