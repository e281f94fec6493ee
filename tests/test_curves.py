"""Long nights: light-curve rebuilds read only their field, and run off the daemon's worker."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import wait

import numpy as np
from astropy.table import Table
from test_pipeline import _field_frame, contract_row, field_a_pipeline

from reduxd import curves
from reduxd.config import load_config
from reduxd.curves import KeptRows, field_table
from reduxd.products import lightcurve
from reduxd.store import Ledger


def _other_field_frame(ledger, i):
    frame = ledger.observe("/raw", f"B_{i:03d}.fits", size=1, mtime_ns=i)
    rows = [{"object": "B", "filter": "R", "star_id": s, "flux": 1.0} for s in (1, 2)]
    ledger.add_measurements(frame.id, rows, calib="none", master_ids=[])


def test_field_measurements_read_one_field_up_to_a_snapshot(tmp_path):
    rng = np.random.default_rng(1)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        for i in range(3):
            _field_frame(ledger, i, rng)
            _other_field_frame(ledger, i)
        snapshot = ledger.last_reduction()
        _field_frame(ledger, 3, rng)
        redo = ledger.frame(root="/raw", relpath="A_001.fits")
        ledger.add_measurements(redo.id, [{"object": "A", "filter": "V", "star_id": 1}],
                                calib="none", master_ids=[])  # fmt: skip
        now = list(ledger.field_measurements("A", "V"))
        then = list(ledger.field_measurements("A", "V", upto=snapshot))
        others = list(ledger.field_measurements("B", "R"))
        expected = [
            (m.version, m.row)
            for m in ledger.measurements()
            if (m.row["object"], m.row["filter"]) == ("A", "V")
        ]
    assert now == expected and len(now) == 3 * 8 + 1
    assert [row["file"] for _, row in then] == ["A_000.fits"] * 8 + ["A_002.fits"] * 8
    assert len(others) == 6 and {row["object"] for _, row in others} == {"B"}


def test_tick_rebuilds_in_a_child_and_appends_the_lights_committed_meanwhile(tmp_path):
    """The daemon's rebuild runs in another process on a snapshot of the ledger; the
    lights committed meanwhile wait and are appended to the new curve, each once."""
    csv_path = tmp_path / "lightcurve_A_V.csv"
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(12):
            add(i)
        pipeline.update_curves(final=False)  # the daemon's tick
        curves = pipeline.lightcurves
        assert curves.running is not None and not curves.dirty
        for i in range(12, 15):
            add(i)
        assert len(curves.waiting[("A", "V")]) == 3
        curves.running[0].result(timeout=120)
        pipeline.update_curves(final=False)  # lands: the waiting lights are appended
        assert curves.running is None and not curves.waiting
        assert pipeline.curves[("A", "V")] == {**pipeline.curves[("A", "V")], "frames": 12,
                                               "appended": 3}  # fmt: skip
        appended = Table.read(csv_path, format="ascii.csv")
        pipeline.update_curves()  # a stop: rebuilt here on every frame, the child stopped
        assert curves.pool is None and pipeline.curves[("A", "V")]["frames"] == 15
    assert list(appended["file"]) == [f"A_{i:03d}.fits" for i in range(15)]
    final = Table.read(csv_path, format="ascii.csv")
    assert list(final["file"]) == list(appended["file"])
    assert np.allclose(final["dmag"], appended["dmag"], atol=0.01)


def test_field_table_built_in_chunks_equals_the_whole(tmp_path):
    """A rebuild turns rows into columns a chunk at a time; the table is the same,
    with the whole's rules for columns that only some rows carry."""
    rng = np.random.default_rng(2)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = [row for i in range(4) for row in _field_frame(ledger, i, rng)]
    for i, row in enumerate(rows):
        row["flux_ap"] = [row["flux"], 2 * row["flux"]]
        row["flux_err_ap"] = [row["flux_err"]] * 2
        row["radius_ap"] = [3.0, 6.0]
        row["detector"] = (1.33, 16.1, "photon transfer") if i % 3 else (1.0, 5.0, "assumed")
        if i >= 20:
            row["target_xy"] = [100.0, 50.0]
    rows[-1]["file"] = "a/much/longer/name/than/the/others.fits"
    whole = lightcurve.field_table(rows)
    chunked = field_table(iter(rows), chunk=7)
    assert chunked.colnames == whole.colnames and "target_x" in whole.colnames
    assert chunked.meta == whole.meta and len(whole.meta["detector"]) == 2
    for name in whole.colnames:
        a, b = np.asarray(whole[name]), np.asarray(chunked[name])
        assert a.shape == b.shape and whole[name].unit == chunked[name].unit, name
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f"), name
    rows[3]["flux_ap"] = [1.0]  # radii that differ: the whole leaves the columns out
    assert field_table(iter(rows), chunk=7).colnames == lightcurve.field_table(rows).colnames


def test_joined_columns_are_the_joined_arrays_not_copies_of_them(tmp_path, monkeypatch):
    """Joining a curve's parts (the batch's last step, each rebuild) copies a column once:
    the table holds the array the parts were joined into, not a copy of it (a second copy
    of every column, on the batch's critical path)."""
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = [row for i in range(4) for row in _field_frame(ledger, i, np.random.default_rng(3))]
    joined, concatenate = [], np.concatenate
    monkeypatch.setattr(
        np, "concatenate", lambda *a, **k: joined.append(concatenate(*a, **k)) or joined[-1]
    )
    table = field_table(iter(rows), chunk=7)
    assert len(table) == len(rows) and len(table.colnames) > 10
    for name in table.colnames:
        assert any(np.shares_memory(np.asarray(table[name]), j) for j in joined), name


def test_final_rebuild_in_a_batch_pool_gives_the_curve_of_an_inline_rebuild(tmp_path):
    """``reduxd reduce --jobs N`` rebuilds the curves in a worker (beside the stacks):
    nothing is installed until ``close``; the files are those of a rebuild here."""
    from concurrent.futures import ProcessPoolExecutor

    csv_path, ecsv_path = tmp_path / "lightcurve_A_V.csv", tmp_path / "lightcurve_A_V.ecsv"
    with field_a_pipeline(tmp_path) as (pipeline, add), ProcessPoolExecutor(1) as pool:
        for i in range(12):
            add(i)
        curves = pipeline.lightcurves
        pipeline.update_curves(pool=pool)
        assert curves.running is not None and not curves.ensembles
        curves.close()
        assert curves.running is None and curves.pool is None
        assert curves.ensembles[("A", "V")]["target_id"] == 1
        assert pipeline.curves[("A", "V")]["frames"] == 12
        in_worker = csv_path.read_bytes(), ecsv_path.read_bytes()
        csv_path.unlink()
        curves.dirty.add(("A", "V"))
        pipeline.update_curves()  # the same rebuild, in this process
    assert (csv_path.read_bytes(), ecsv_path.read_bytes()) == in_worker
    assert len(Table.read(csv_path, format="ascii.csv")) == 12


def test_a_new_field_gets_its_curve_at_the_next_tick_not_after_the_interval(tmp_path):
    """The daemon spaces rebuilds of curves that exist (30 s); a field without a curve
    yet is built at the next tick, so its curve (and its finder charts' target) shows
    seconds after its first lights."""
    now = [0.0]
    with field_a_pipeline(tmp_path, clock=lambda: now[0]) as (pipeline, add):
        curves = pipeline.lightcurves
        for i in range(3):
            add(i)
        pipeline.update_curves(min_interval=30.0, final=False)
        curves.running[0].result(timeout=120)
        now[0] = 5.0
        pipeline.update_curves(min_interval=30.0, final=False)  # lands: A has its curve
        assert curves.running is None and curves.states[("A", "V")]
        add(3)  # appended to A's curve
        rows = _field_frame(pipeline.ledger, 0, np.random.default_rng(5), field=("B", "R"))
        pipeline._curve_changed(("B", "R"), rows, 1)
        now[0] = 6.0
        pipeline.update_curves(min_interval=30.0, final=False)
        assert curves.running is not None and curves.running[1] == {("B", "R")}
        curves.running[0].result(timeout=120)
        pipeline.update_curves()
    assert (tmp_path / "lightcurve_B_R.csv").exists()


def _batch_lights(ledger, pipeline, rng, lights, version=1):
    """Commit ``lights`` of field (A, V) as a batch does: each with its ledger id."""
    for i in lights:
        rows = _field_frame(ledger, i, rng)
        frame = ledger.frame(root="/raw", relpath=f"A_{i:03d}.fits")
        pipeline.lightcurves.changed(("A", "V"), rows, version, frame=frame.id)


def _reads_rows(ledger, work):
    """Run ``work()``; whether it read measurement rows from the ledger."""
    seen = []
    ledger._db.set_trace_callback(seen.append)
    try:
        work()
    finally:
        ledger._db.set_trace_callback(None)
    return any(f"SELECT data FROM {t}" in s for s in seen for t in ("measurements", "light_rows"))


def test_batch_final_curve_from_the_rows_in_memory_is_the_ledgers(tmp_path):
    """A batch keeps the rows it commits; the final light curve of a field all of whose
    lights it committed is built from them (no rows read back from the ledger), in
    chunks, and is the very file the ledger's rows give."""
    paths = [tmp_path / f"lightcurve_A_V.{ext}" for ext in ("csv", "ecsv")]
    rng = np.random.default_rng(4)
    with field_a_pipeline(tmp_path) as (pipeline, _add):
        curves, ledger = pipeline.lightcurves, pipeline.ledger
        curves.keep_rows()
        curves.kept = KeptRows(chunk=30)  # parts of 30 rows: several chunks
        _batch_lights(ledger, pipeline, rng, range(25))
        assert len(curves.kept.fields[("A", "V")][1]) == 6
        assert not _reads_rows(ledger, pipeline.update_curves)
        from_memory = [p.read_bytes() for p in paths]
        upto = ledger.last_reduction()
        curves._install(curves._rebuild([("A", "V")], upto))  # the ledger's rows
    assert [p.read_bytes() for p in paths] == from_memory
    assert len(Table.read(paths[0], format="ascii.csv")) == 25


def test_batch_final_curve_from_the_ledger_when_memory_has_not_every_light(tmp_path):
    """A field with a light committed before the run, or a light committed again (a new
    version), is built from the ledger's rows."""
    rng = np.random.default_rng(5)
    with field_a_pipeline(tmp_path) as (pipeline, add):
        curves, ledger = pipeline.lightcurves, pipeline.ledger
        add(0)  # an earlier run's light
        curves.keep_rows()
        _batch_lights(ledger, pipeline, rng, range(1, 12))
        assert _reads_rows(ledger, pipeline.update_curves)
        assert len(Table.read(tmp_path / "lightcurve_A_V.csv", format="ascii.csv")) == 12
        curves.keep_rows()
        _batch_lights(ledger, pipeline, rng, range(12, 14))
        _batch_lights(ledger, pipeline, rng, [13], version=2)
        assert ("A", "V") in curves.kept.spoilt
        assert _reads_rows(ledger, pipeline.update_curves)


def test_rebuild_keeps_only_the_curve_columns_and_writes_the_same_curve(tmp_path, monkeypatch):
    """A rebuild's table holds only what a light curve reads (its memory is the
    field's rows times those columns), joined from chunks; the curve's CSV and
    ECSV are byte for byte those of the whole contract table."""
    monkeypatch.setattr(curves, "CHUNK_ROWS", 50)
    rng = np.random.default_rng(4)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        rows = []
        for i in range(30):
            frame = ledger.observe("/raw", f"A_{i:03d}.fits", size=1, mtime_ns=i)
            light = [_with_extras(row) for row in _field_rows(i, rng)]
            ledger.add_measurements(frame.id, light, calib="none", master_ids=[])
            rows += light
        written = {}
        for name in ("new", "old"):
            config = load_config(overrides={"paths": {"outdir": str(tmp_path / name)},
                                            "lightcurve": {"target": [100.0, 50.0]}})  # fmt: skip
            out = tmp_path / name
            built = curves.Curves(config, ledger=ledger, outdir=out, clock=time.monotonic)
            built._write = lambda *args, built=built, name=name: (
                written.setdefault(name, args[2]),
                curves.Curves._write(built, *args),
            )
            if name == "new":
                built._rebuild([("A", "V")], ledger.last_reduction())
            else:
                built._write("A", "V", lightcurve.field_table(rows), {}, {})
    assert set(written["new"].colnames) <= lightcurve.CURVE_COLUMNS
    assert {"flux_ap", "ra_deg", "target_x", "file"} <= set(written["new"].colnames)
    assert len(written["new"]) == len(written["old"]) == 240
    for suffix in ("csv", "ecsv"):
        new = (tmp_path / "new" / f"lightcurve_A_V.{suffix}").read_bytes()
        assert new == (tmp_path / "old" / f"lightcurve_A_V.{suffix}").read_bytes()
    assert b"bjd_tdb" in new and b"radius_px" in new


def _field_rows(i, rng):
    """The rows of light ``i`` of field (A, V), as ``_field_frame`` makes them."""
    rows = []
    for sid in range(1, 9):
        row = contract_row(0)
        flux = 1e4 * sid * (1 + rng.normal(0, 0.002))
        row.update(object="A", filter="V", file=f"A_{i:03d}.fits", mjd=60000.0 + i / 1e3,
                   star_id=sid, x=100.0 + 40 * (sid - 1), y=50.0, flux=flux,
                   flux_err=10.0 * sid, flags=0, exptime=10.0, version=1, current=1)  # fmt: skip
        rows.append(row)
    return rows


def _with_extras(row):
    """A row with what real lights carry besides the contract: apertures, place, target."""
    return {**row, "flux_ap": [row["flux"], 1.5 * row["flux"]],
            "flux_err_ap": [row["flux_err"], 2.0 * row["flux_err"]], "radius_ap": [4.0, 8.0],
            "pointing": [150.0, 20.0], "site": [39.25, -76.71, 60.0], "site_source": "config",
            "target_xy": [100.0, 50.0], "detector": [1.33, 16.1, "flats"]}  # fmt: skip


def test_a_rebuild_child_that_dies_is_replaced_and_the_curve_rebuilt(tmp_path):
    """A child killed mid-rebuild (the OOM killer on a long night) costs that rebuild
    only: the field is rebuilt in a new child, the daemon's tick does not raise."""
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(12):
            add(i)
        pipeline.update_curves(final=False)
        curves = pipeline.lightcurves
        future = curves.running[0]
        for pid in list(curves.pool._processes):
            os.kill(pid, signal.SIGKILL)
        wait([future], timeout=120)
        pipeline.update_curves(final=False)  # lands the failure, starts a new child
        assert curves.running is not None and curves.running[0] is not future
        curves.running[0].result(timeout=120)
        pipeline.update_curves(final=False)
        assert pipeline.curves[("A", "V")]["frames"] == 12
        curves.close()


def test_unique_runs_is_numpy_unique_in_any_order():
    """A field's rows come a frame at a time; the grid's frame index sorts only the runs'
    first names, with numpy's result for rows in any order."""
    rng = np.random.default_rng(5)
    names = np.array([f"pg2213/night_{k:03d}.fits" for k in range(40)])
    grouped = np.repeat(names[rng.permutation(40)], rng.integers(1, 30, 40))
    for values in (grouped, rng.permutation(grouped), grouped[:1]):
        unique, inverse = lightcurve._unique_runs(values)
        expected, expected_inverse = np.unique(values, return_inverse=True)
        assert np.array_equal(unique, expected) and unique.dtype == expected.dtype
        assert np.array_equal(inverse, expected_inverse)


def test_lights_waiting_for_a_rebuild_are_kept_packed(tmp_path):
    """A light committed during a rebuild waits as one compressed block (not thousands of
    dicts on a crowded field), and is appended as it was when the rebuild lands."""
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(12):
            add(i)
        pipeline.update_curves(final=False)
        lc = pipeline.lightcurves
        rows = _field_frame(pipeline.ledger, 12, np.random.default_rng(6))
        pipeline._curve_changed(("A", "V"), rows, 1)
        [(packed, version)] = lc.waiting[("A", "V")]
        assert isinstance(packed, bytes) and version == 1 and curves._unpack(packed) == rows
        lc.running[0].result(timeout=120)
        pipeline.update_curves(final=False)
        assert not lc.waiting and pipeline.curves[("A", "V")]["appended"] == 1
        lc.close()
    written = Table.read(tmp_path / "lightcurve_A_V.csv", format="ascii.csv")
    assert list(written["file"])[-1] == "A_012.fits"


def test_lights_committed_during_a_rebuild_are_in_the_curve_at_once(tmp_path):
    """While the child rebuilds (comparisons chosen again), each new light is appended to
    the curve there is: its wait for the curve does not grow with the rebuild's length.
    The child writes nothing; its files are installed when it lands, and the lights that
    came meanwhile are appended to them, each light once."""
    csv_path = tmp_path / "lightcurve_A_V.csv"
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(10):
            add(i)
        pipeline.update_curves()  # the first curve, built here
        for i in range(10, 20):
            add(i)  # appended; at 20 the field has doubled: rebuilt at the next tick
        pipeline.update_curves(final=False)
        curves = pipeline.lightcurves
        assert curves.running is not None
        for i in range(20, 23):
            add(i)
            assert list(Table.read(csv_path, format="ascii.csv")["file"])[-1] == f"A_{i:03d}.fits"
        meanwhile = csv_path.read_bytes()
        curves.running[0].result(timeout=120)
        assert csv_path.read_bytes() == meanwhile  # the child wrote nothing
        pipeline.update_curves(final=False)  # lands: its files, then lights 20-22 on them
        assert curves.running is None and not curves.waiting
        assert pipeline.curves[("A", "V")] == {**pipeline.curves[("A", "V")], "frames": 20,
                                               "appended": 3}  # fmt: skip
        landed = Table.read(csv_path, format="ascii.csv")
        curves.close()
    assert list(landed["file"]) == [f"A_{i:03d}.fits" for i in range(23)]


def test_a_field_that_doubled_is_appended_to_until_its_rebuild_starts(tmp_path):
    """The daemon's ticks space rebuilds by 30 s: the lights of a field waiting for its
    rebuild to start are in the curve at once, as before the field doubled; a light
    measured again stops the appends (the curve would show its old row)."""
    csv_path = tmp_path / "lightcurve_A_V.csv"
    with field_a_pipeline(tmp_path) as (pipeline, add):
        for i in range(10):
            add(i)
        pipeline.update_curves()
        for i in range(10, 24):
            add(i)
        assert pipeline.dirty_curves == {("A", "V")}  # doubled at 20: rebuilt at a tick
        assert len(Table.read(csv_path, format="ascii.csv")) == 24
        add(5, version=2)
        add(24)
        assert len(Table.read(csv_path, format="ascii.csv")) == 24  # waits for the rebuild
        pipeline.update_curves()
        assert pipeline.curves[("A", "V")]["frames"] == 25 and not pipeline.dirty_curves


def _gone(pid):
    try:
        with open(f"/proc/{pid}/status") as fh:
            return "\nState:\tZ" in fh.read()  # a zombie no one reaps yet: exited
    except FileNotFoundError:
        return True


def test_a_rebuild_child_exits_when_the_daemon_is_killed(tmp_path):
    """A daemon killed with SIGKILL mid-rebuild leaves no child behind: without the daemon
    to read it, the child's result (the curve files' contents) would block it for good."""
    (tmp_path / "slow_rebuild.py").write_text(
        "import os, time\n"
        "def run(pid_file):\n"
        "    with open(pid_file, 'w') as fh:\n"
        "        fh.write(str(os.getpid()))\n"
        "    time.sleep(1.0)\n"
        "    return b'x' * 10_000_000\n"
    )
    pid_file = tmp_path / "child.pid"
    script = (
        "import sys, time\n"
        "from reduxd.curves import rebuild_pool\n"
        "from slow_rebuild import run\n"
        f"rebuild_pool().submit(run, {str(pid_file)!r})\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    daemon = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60.0
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the rebuild child never started"
            time.sleep(0.05)
        child = int(pid_file.read_text())
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=10)
        deadline = time.monotonic() + 15.0
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child), f"rebuild child {child} still running after its daemon was killed"
    finally:
        daemon.kill()
        daemon.wait()
