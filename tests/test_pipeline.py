"""Pipeline fixes found while proving ``reduxd reduce``, and one found by CI."""

import contextlib
import time

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from nights import stage_night

from reduxd.config import load_config
from reduxd.pipeline import Pipeline
from reduxd.products import tables
from reduxd.store import Ledger


def write_bias(path, value, minute):
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((16, 24), value, dtype=np.uint16)
    header = fits.Header(
        [("FRAMETYP", "Bias"), ("EXPTIME", 3.2e-05), ("GAIN", 150), ("INSTRUME", "ZWO ASI432MM"),
         ("CCD-TEMP", -10.0), ("DATE-OBS", f"2024-07-02T03:{minute:02d}:00.0000000")]
    )  # fmt: skip
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def test_a_master_rebuilt_under_the_same_name_replaces_the_old_record(tmp_path):
    """The old record pointed at a file that no longer holds it: it must not stay valid."""
    data = tmp_path / "data"
    config = load_config(
        overrides={"paths": {"data": [str(data)], "outdir": str(tmp_path / "out")}}
    )
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        for i in range(3):
            pipeline.handle(write_bias(data / "bias" / f"b{i}.fits", 600, i), data)
        (first,) = pipeline.flush()
        for i in range(3, 6):  # more bias frames the same night: a new set, the same name
            pipeline.handle(write_bias(data / "bias" / f"b{i}.fits", 640, i), data)
        (second,) = pipeline.flush()
        assert second.path == first.path and second.id != first.id
        assert ledger.master_status(first.id) == (
            "rejected",
            f"replaced on disk by master {second.id}",
        )
        assert [m.id for m in ledger.masters(kind="bias")] == [second.id]
        assert float(np.median(fits.getdata(second.path))) == pytest.approx(640.0)


def contract_row(i):
    row = {}
    for name, dtype, _unit, _desc in tables.PHOT_COLUMNS:
        row[name] = {"U": f"{name}{i}", "f": i + 0.5, "i": i}[dtype[0]]
    return row


def test_rows_to_table_matches_add_row_and_is_fast():
    rows = [contract_row(i) for i in range(5)]
    slow = tables.empty_table()
    for row in rows:
        slow.add_row([row[name] for name in tables.NAMES])
    fast = tables.rows_to_table(rows)
    assert fast.dtype == slow.dtype and fast.meta == slow.meta
    for name in tables.NAMES:
        assert (fast[name] == slow[name]).all()
        assert fast[name].unit == slow[name].unit
        assert fast[name].description == slow[name].description
    assert tables.rows_to_table([]).dtype == tables.empty_table().dtype
    many = [contract_row(i) for i in range(20000)]
    start = time.perf_counter()
    assert len(tables.rows_to_table(many)) == 20000
    assert time.perf_counter() - start < 2.0  # add_row took ~4 ms a row: 80 s


def test_light_curves_of_other_fields_are_written_when_the_target_is_not_there(tmp_path):
    """``[lightcurve] target`` names a star of one field; the other fields get check stars."""
    config = load_config(
        overrides={"paths": {"outdir": str(tmp_path)}, "lightcurve": {"target": [100.0, 50.0]}}
    )
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        for obj, x0 in (("A", 100.0), ("B", 300.0)):
            for i in range(3):
                frame = ledger.observe("/raw", f"{obj}_{i}.fits", size=1, mtime_ns=i)
                rows = []
                for sid in range(1, 5):
                    row = contract_row(0)
                    row.update(object=obj, filter="V", file=f"{obj}_{i}.fits", mjd=60000.0 + i,
                               star_id=sid, x=x0 + 40 * (sid - 1), y=50.0, flux=1e4 * sid,
                               flux_err=10.0 * sid, flags=0, exptime=10.0)  # fmt: skip
                    rows.append(row)
                ledger.add_measurements(frame.id, rows, calib="none", master_ids=[])
            pipeline.dirty_curves.add((obj, "V"))
        pipeline.update_curves()
    a = Table.read(tmp_path / "lightcurve_A_V.ecsv")
    b = Table.read(tmp_path / "lightcurve_B_V.ecsv")
    assert a.meta["target_id"] == 1 and "dmag" in a.colnames
    assert b.meta["target_id"] is None and "dmag" not in b.colnames and len(b) == 3


def test_appending_rows_does_not_rebuild_the_ecsv_header(tmp_path):
    """One append per light: astropy's YAML header (~70 ms) is built once, not per append."""
    start = time.perf_counter()
    for i in range(60):
        tables.append_rows(tmp_path, [contract_row(i)])
    assert time.perf_counter() - start < 2.0
    ecsv = Table.read(tmp_path / "photometry.ecsv", format="ascii.ecsv")
    assert len(ecsv) == 60 and ecsv["flux"].unit == "adu"


def tables_only_config(stage, tmp_path):
    """A staged night's config: tables only (no images), calibration sets idle after 1 s."""
    return load_config(
        overrides={
            "paths": {"data": [str(stage)], "outdir": str(tmp_path / "out")},
            "output": {"quicklook": False, "stack": False, "reduced": False},
            "watch": {"set_timeout_seconds": 1.0},
        }
    )


def test_a_light_is_reduced_once_when_one_flat_set_is_built_before_the_other(tmp_path):
    """Found by CI: the V flats go idle a moment before the R flats. Building the V master
    retries the waiting lights; the first R light builds the R set (the camera moved on),
    which retried the waiting lights again inside the first retry. The outer retry then
    reduced the same lights a second time (version 2 without any new master)."""
    stage, rels, _ = stage_night(tmp_path, flats_last=True)
    flats = {f: [r for r in rels if "/flats/" in r and f"_{f.lower()}_" in r] for f in "VR"}
    assert all(len(v) == 3 for v in flats.values()), flats
    now = [0.0]
    config = tables_only_config(stage, tmp_path)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger, clock=lambda: now[0])
        for rel in rels:
            if "/flats/" not in rel:
                pipeline.handle(stage / rel, stage)
        assert ledger.measurements() == []  # every light waits for its flat
        for t, filt in ((100.0, "V"), (100.5, "R")):
            now[0] = t
            for rel in flats[filt]:
                pipeline.handle(stage / rel, stage)
        now[0] = 104.2  # flats expose 2 s, a set is idle after 4 s: V is, R is not yet
        pipeline.tick()
        # the R lights wait on: a retried light does not close the R set, whose flats
        # may still be coming in (a master of fewer flats would be replaced minutes later)
        assert len(ledger.frames(kind="light", state="done")) == 6 and len(pipeline.sets) == 1
        now[0] = 104.7
        pipeline.tick()
        versions = [m.version for m in ledger.measurements(current_only=False)]
        lights = ledger.frames(kind="light", state="done")
        flat_masters = ledger.masters(kind="flat")
    assert len(lights) == 12 and not pipeline.sets
    assert set(versions) == {1} and len(versions) > 12
    assert sorted(m.ncombine for m in flat_masters) == [3, 3]


def _field_frame(ledger, i, rng, field=("A", "V")):
    """A light of ``field`` (A, V) with 8 steady stars, recorded in the ledger; its rows."""
    name = f"{field[0]}_{i:03d}.fits"
    frame = ledger.observe("/raw", name, size=1, mtime_ns=i)
    rows = []
    for sid in range(1, 9):
        row = contract_row(0)
        flux = 1e4 * sid * (1 + rng.normal(0, 0.002))
        row.update(object=field[0], filter=field[1], file=name, mjd=60000.0 + i / 1e3,
                   star_id=sid, x=100.0 + 40 * (sid - 1), y=50.0, flux=flux,
                   flux_err=10.0 * sid, flags=0, exptime=10.0, version=1, current=1)  # fmt: skip
        rows.append(row)
    ledger.add_measurements(frame.id, rows, calib="none", master_ids=[])
    return rows


@contextlib.contextmanager
def field_a_pipeline(tmp_path, clock=time.monotonic):
    """A Pipeline on a fresh ledger, target star 1 of field (A, V); yields ``(pipeline, add)``:
    ``add(i, version=1)`` commits light ``i`` of that field and tells the pipeline."""
    config = load_config(
        overrides={"paths": {"outdir": str(tmp_path)}, "lightcurve": {"target": [100.0, 50.0]}}
    )
    rng = np.random.default_rng(3)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        pipeline = Pipeline(config, ledger=ledger, clock=clock)

        def add(i, version=1):
            pipeline._curve_changed(("A", "V"), _field_frame(ledger, i, rng), version)

        yield pipeline, add


def test_light_curve_grows_by_appends_and_is_rebuilt_when_the_field_doubles(tmp_path):
    """Each new light is appended to its curve (nothing rewritten); the curve is rebuilt,
    comparisons chosen again, once the field has doubled its frames (10 at least)."""
    csv_path = tmp_path / "lightcurve_A_V.csv"
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(5):
            add(i)
        pipeline.update_curves()
        assert len(Table.read(csv_path, format="ascii.csv")) == 5
        for i in range(5, 14):
            before = csv_path.read_bytes()
            add(i)
            assert not pipeline.dirty_curves
            assert csv_path.read_bytes().startswith(before)
            assert len(Table.read(csv_path, format="ascii.csv")) == i + 1
        add(14)  # 10th append
        assert pipeline.dirty_curves == {("A", "V")}
        pipeline.update_curves()
        assert pipeline.curves[("A", "V")]["frames"] == 15
        add(15, version=2)  # a light measured again: rebuild
        assert pipeline.dirty_curves == {("A", "V")}
        pipeline.update_curves()
        add(16)  # appended
        assert not pipeline.dirty_curves
        pipeline.update_curves(min_interval=30.0, final=False)  # the daemon's tick: kept
        assert pipeline.curves[("A", "V")]["appended"] == 1
        pipeline.update_curves()  # the end of a batch or a stop: rebuilt on every frame
        assert pipeline.curves[("A", "V")]["frames"] == 17
    curve = Table.read(tmp_path / "lightcurve_A_V.ecsv")
    assert len(curve) == 17 and np.all(np.abs(curve["dmag"] - np.median(curve["dmag"])) < 0.02)


def test_a_light_whose_commit_fails_leaves_no_rows(tmp_path):
    """A light's rows, its field's reference and its ``done`` state are one transaction:
    when the last step fails (here a real SQLite trigger refuses ``done``; in the field a
    kill between them), no rows of it are left to be superseded by its re-reduction."""
    stage, rels, _ = stage_night(tmp_path)
    now = [0.0]
    config = tables_only_config(stage, tmp_path)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger._db.execute(
            "CREATE TRIGGER refuse_done BEFORE UPDATE OF state ON frames"
            " WHEN NEW.state = 'done' AND NEW.kind = 'light'"
            " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        pipeline = Pipeline(config, ledger=ledger, clock=lambda: now[0])
        for rel in rels:
            with contextlib.suppress(Exception):
                pipeline.handle(stage / rel, stage)
        now[0] = 100.0
        with contextlib.suppress(Exception):
            pipeline.tick()
        refused = [f for f in ledger.frames() if "refused by the test" in (f.last_error or "")]
        assert refused and not ledger.frames(kind="light", state="done")
        assert ledger.measurements(current_only=False) == []
