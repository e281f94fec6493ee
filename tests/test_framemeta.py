"""The ledger's per-frame metadata is a typed, versioned record (reduxd.framemeta.FrameMeta),
not a free JSON bag: unknown keys are refused, types are kept, and the bag of earlier
ledgers is read (its unknown keys kept apart, untouched)."""

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reduxd.framemeta import META_VERSION, FrameMeta
from reduxd.store import Ledger, LedgerError

FIXTURE = Path(__file__).parent / "data" / "ledger_main_f55142a.sqlite"


def _stored(path, frame_id):
    with sqlite3.connect(path) as db:
        return json.loads(
            db.execute("SELECT info FROM frames WHERE id = ?", (frame_id,)).fetchone()[0]
        )


def test_metadata_is_typed_and_versioned_in_the_ledger(tmp_path):
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        row = ledger.observe("/d", "a.fits", size=1, mtime_ns=1)
        ledger.begin(row.id)
        meta = FrameMeta(object="m51", exptime=np.float32(30.0), offset=np.array([1.5, -2.0]))
        ledger.finish(row.id, kind="light", checksum="c", info=meta)
        info = ledger.frame(row.id).info
    assert isinstance(info, FrameMeta)
    assert (info.object, info.exptime, info.offset, info.gain) == ("m51", 30.0, (1.5, -2.0), None)
    assert _stored(path, row.id) == {
        "object": "m51", "exptime": 30.0, "offset": [1.5, -2.0], "meta_version": META_VERSION
    }  # fmt: skip


def test_unknown_metadata_keys_are_refused(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as ledger:
        row = ledger.observe("/d", "a.fits", size=1, mtime_ns=1)
        ledger.begin(row.id)
        with pytest.raises(LedgerError, match="unknown keys: colour"):
            ledger.finish(row.id, kind="light", checksum="c", info={"colour": "red"})
        ledger.finish(row.id, kind="flat", checksum="c", info=FrameMeta(set="k"))
        with pytest.raises(TypeError):
            ledger.annotate([row.id], colour="red")


def test_the_bag_of_an_earlier_ledger_is_read_and_its_unknown_keys_kept(tmp_path):
    path = tmp_path / "reduxd.sqlite"
    shutil.copy(FIXTURE, path)
    with sqlite3.connect(path) as db:  # a bag as earlier versions wrote it, with a key now unknown
        bag = {"set": "('flat', 'V')", "filter": "V", "master_id": None, "colour": "red"}
        db.execute("UPDATE frames SET info = ? WHERE id = 3", (json.dumps(bag),))
    with Ledger(path) as ledger:
        light = ledger.frame(4).info
        assert (light.object, light.n_stars, light.meta_version) == ("m51", 3, 0)
        flat = ledger.frame(3).info
        assert (flat.set, flat.extra, flat.master_tried) == (
            "('flat', 'V')",
            {"colour": "red"},
            False,
        )
        ledger.annotate([3], master_id=7, rebuild=False)
        assert ledger.frame(3).info.master_tried
    stored = _stored(path, 3)
    assert stored["colour"] == "red" and stored["master_id"] == 7 and stored["meta_version"] == 0
    with sqlite3.connect(path) as db:  # a current record may not carry unknown keys
        db.execute("UPDATE frames SET info = ? WHERE id = 4", ('{"x": 1, "meta_version": 1}',))
    with Ledger(path) as ledger, pytest.raises(LedgerError, match=r"frame 4 \(m51/light_4.fits\)"):
        ledger.frame(4)


def test_a_master_tried_or_to_rebuild():
    assert not FrameMeta(set="k").master_tried
    assert FrameMeta(set="k", master_id=3).master_tried
    assert FrameMeta(set="k", master_error="too few frames").master_tried
    assert not FrameMeta(set="k", master_id=3, rebuild=True).master_tried
