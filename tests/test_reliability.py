"""reduxd under faults, hostile files and a second copy of itself (issue 11).

Each test reproduces one defect with real processes and files: the daemon and the
batch command run as subprocesses, on simulated nights, and are killed, signalled
or starved the way a real machine does it.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.table import Table
from nights import stage_night
from test_batch import (  # noqa: F401 (fixtures)
    night,
    phot,
    reduxd_command,
    run_reduxd,
    small_night,
    summary,
)
from test_daemon import (
    LIGHTS,
    N_CAL,
    N_LIGHTS,
    check_consistent,
    daemon,
    night_before_flats,
    place,
    query,
    reduced_files,
    states,
    whole_night,
    write_config,
)

from reduxd import lock
from reduxd.config import load_config
from reduxd.errors import ConfigError
from reduxd.products import tables


def watch(config, *extra):
    """``reduxd watch`` run to its end (for commands that must exit at once)."""
    cmd = [sys.executable, "-m", "reduxd", "watch", "--config", str(config), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def json_events(text, name):
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                out.append(event)
    return out


BATCH = "reduce -D pg2213 -C calibration -O analysis"


# -- 1. the daemon never reads its own products ----------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_output_folder_inside_the_root_is_not_reduced(tmp_path):
    """Root = the folder holding the output folder and the ledger: 12 lights, 12
    reductions, and nothing below the output folder in the ledger."""
    stage, rels, _ = stage_night(tmp_path / "s")
    top = tmp_path / "w"
    place(stage, top / "night", rels)
    config = write_config(top, root=top)  # outdir (and ledger) = top/out, inside the root
    db = top / "out" / "reduxd.sqlite"
    with daemon(config, exit_when_idle=RECONCILE_IDLE) as d:
        assert d.wait_exit(90) == 0
    assert states(db) == {"done": N_CAL + N_LIGHTS}
    assert not query(db, "SELECT relpath FROM frames WHERE relpath LIKE 'out/%'")
    lights = [r for r in reduced_files(d)]
    assert len(lights) == N_LIGHTS and all(r.startswith("night/" + LIGHTS) for r in lights)
    # rows point at the night, products went to top/out/reduced once each
    assert {r["file"] for r in check_consistent(top)} == set(lights)
    assert not list((top / "out" / "reduced" / "out").glob("*"))


RECONCILE_IDLE = 5.0  # longer than a reconciliation (2 s): a new product would be seen


@pytest.mark.parametrize("where", ["/", "out", "out/sub"])
def test_roots_that_hold_only_reduxd_files_are_refused(tmp_path, where):
    config = write_config(tmp_path, root="/" if where == "/" else tmp_path / where)
    (tmp_path / "out" / "sub").mkdir(parents=True)
    proc = watch(config)
    assert proc.returncode == 2, proc.stderr
    assert "configuration error: watch root" in proc.stderr
    assert ("whole filesystem" if where == "/" else "output folder") in proc.stderr


# -- 2. a fresh or different ledger never wipes the tables ------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_fresh_ledger_keeps_the_old_tables_aside(night):  # noqa: F811 (fixture)
    """The batch fills analysis/; then the daemon starts on the same output folder
    with a new ledger and nothing to reduce: the old rows survive, named in the log."""
    ok_run = run_reduxd(BATCH, cwd=night)
    assert ok_run.returncode == 0, ok_run.stderr
    out = night / "analysis"
    before = (out / "photometry.csv").read_text()
    assert before.count("\n") > 100
    empty = night / "empty"
    empty.mkdir()
    cmd = [*reduxd_command(), "watch", "--root", str(empty), "--outdir", str(out),
           "--state", str(night / "other.sqlite"), "--exit-when-idle", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (event,) = json_events(proc.stdout, "tables_set_aside")
    assert len(event["files"]) == 2 and "not in the ledger" in event["reason"]
    csv_aside = next(p for p in event["files"] if ".csv.aside-" in p)
    assert Path(csv_aside).read_text() == before
    assert any(".ecsv.aside-" in p for p in event["files"])


# -- 3. the batch recovers frames a kill -9 left in 'processing' ------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_batch_after_kill9_reduces_the_interrupted_lights(night):  # noqa: F811
    db = night / "analysis" / "reduxd.sqlite"
    cmd = [*reduxd_command(), *BATCH.split()]
    proc = subprocess.Popen(cmd, cwd=night, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not query(
            db, "SELECT 1 FROM frames WHERE state = 'processing' AND relpath LIKE 'pg2213_%'"
        ):  # fmt: skip  (a light)
            assert proc.poll() is None and time.monotonic() < deadline, "no light processed"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert query(db, "SELECT count(*) FROM frames WHERE state = 'processing'")[0][0] >= 1
    again = run_reduxd(BATCH, cwd=night)
    assert again.returncode == 0, again.stderr
    assert "interrupted_frame" in again.stdout + again.stderr
    assert not query(db, "SELECT 1 FROM frames WHERE state = 'processing'")
    rows = phot(night / "analysis")
    assert len(set(rows["file"][rows["current"] == 1])) == N_LIGHTS


# -- 5. one writer per ledger -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_second_writer_exits_at_once_naming_the_first(tmp_path):
    _, root, config, db = whole_night(tmp_path)
    with daemon(config) as d:
        d.started()
        assert lock.holder(db) == {**lock.holder(db), "pid": d.pid, "command": "watch"}
        started = time.monotonic()
        second = watch(config)
        assert second.returncode == 3, second.stderr
        assert time.monotonic() - started < 15  # at once (an interpreter start)
        assert f"in use by process {d.pid} (reduxd watch" in second.stderr
        batch = subprocess.run(
            [*reduxd_command(), "reduce", "-D", str(root), "-O", str(tmp_path / "out")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert batch.returncode == 3 and f"process {d.pid}" in batch.stderr
        status = subprocess.run(
            [*reduxd_command(), "status", "--state", str(db)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr  # readers are never blocked
        d.wait_for(lambda: states(db).get("done") == N_CAL + N_LIGHTS, timeout=90, what="all")
        assert d.stop() == 0
    assert lock.holder(db) is None
    rows = check_consistent(tmp_path)
    assert len({r["file"] for r in rows}) == N_LIGHTS == len(reduced_files(d))


def test_lock_holder_never_creates_and_ignores_dead_holders(tmp_path):
    state = tmp_path / "l.sqlite"
    assert lock.holder(state) is None and not list(tmp_path.iterdir())
    code = (
        "import sys, time; from reduxd import lock;"
        f"lock.acquire({str(state)!r}, command='reduce'); print('held', flush=True);"
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        info = lock.holder(state)
        assert info["pid"] == proc.pid and info["command"] == "reduce"
        assert info["started"].endswith("+00:00")
        with pytest.raises(lock.LedgerInUse, match=f"process {proc.pid}"):
            lock.acquire(state, command="watch")
        proc.kill()  # kill -9: the kernel drops the lock, the file stays
        proc.wait()
        assert lock.lock_path(state).exists() and lock.holder(state) is None
        with lock.acquire(state, command="watch") as held:
            assert lock.holder(state)["pid"] == os.getpid() == held.info["pid"]
    finally:
        proc.kill()
        proc.wait()


# -- 6. a master that cannot be built does not stop the service -------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_calibration_frame_deleted_before_its_master_is_built(tmp_path):
    """A bias deleted after it was ingested: the bias set is logged as not built, its
    frames marked, and the daemon goes on to reduce the night (darks do without bias)."""
    stage, rels, _ = stage_night(tmp_path)
    root = tmp_path / "raw"
    root.mkdir()
    bias = [r for r in rels if "bias" in r]
    config = write_config(tmp_path, root=root)  # a set is built 1 s after its last frame
    db = tmp_path / "out" / "reduxd.sqlite"
    with daemon(config) as d:
        d.started()
        place(stage, root, bias)
        d.wait_for(
            lambda: len(d.events("calibration_frame")) == len(bias), timeout=30, what="bias in"
        )
        (root / bias[0]).unlink()
        d.wait_for(lambda: d.events("master_not_built"), timeout=30, what="master_not_built")
        place(stage, root, [r for r in rels if r not in bias])
        d.wait_for(lambda: len(reduced_files(d)) == N_LIGHTS, timeout=90, what="lights")
        assert d.proc.poll() is None
        assert d.stop() == 0
    (event,) = d.events("master_not_built")
    assert event["kind"] == "bias" and bias[0].split("/")[-1] in event["reason"]
    marked = query(db, "SELECT info FROM frames WHERE relpath LIKE '%bias%'")
    assert len(marked) == len(bias)
    assert all(json.loads(i)["master_error"] == event["reason"] for (i,) in marked)
    assert "Traceback" not in d.err_path.read_text()


# -- 4. a full or read-only disk is the service's trouble, not the frames' --------------


@pytest.fixture
def small_disk(tmp_path):
    """``tmp_path/out`` on its own 48 MB tmpfs (root only; skipped elsewhere)."""
    folder = tmp_path / "out"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    cmd = ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield folder
    for _ in range(3):  # a read-only bind left over by a failed test, then the tmpfs
        if subprocess.run(["umount", "-l", str(folder)], capture_output=True).returncode:
            break


def fill(folder):
    """Write a ballast file until the disk is full, to the last page; return it.

    Unbuffered: a buffered file keeps what a short write left over, and flushing it at
    close raises ENOSPC again (the free space is rarely whole megabytes).
    """
    ballast = folder / "ballast.bin"
    with open(ballast, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12):
            chunk = b"\0" * size
            try:
                while fh.write(chunk):
                    pass
            except OSError:
                pass
    return ballast


def read_only(folder):
    """Bind ``folder`` read-only over itself (new writes get EROFS); return the undo."""
    for args in (["--bind", str(folder), str(folder)], ["-o", "remount,bind,ro", str(folder)]):
        proc = subprocess.run(["mount", *args], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot bind {folder} read-only: {proc.stderr.strip()}")
    return lambda: subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_disk_full_or_read_only_pauses_and_loses_nothing(tmp_path, small_disk, fault):
    """Output folder and ledger on a tmpfs that fills up (or is bound read-only: products
    and tables get EROFS, the open ledger does not) while lights arrive: one log line,
    no light failed or tried again, nothing torn; once the disk is back every light is
    reduced once and has its products."""
    stage, rels, _ = stage_night(tmp_path)
    root = tmp_path / "raw"
    lights = [r for r in rels if r.startswith(LIGHTS)]
    place(stage, root, [r for r in rels if r not in lights[4:]])
    config = write_config(tmp_path, root=root)
    db = small_disk / "reduxd.sqlite"
    with daemon(config) as d:
        d.started()
        d.wait_for(lambda: len(reduced_files(d)) == 4, timeout=60, what="first lights")
        undo = fill(small_disk).unlink if fault == "full" else read_only(small_disk)
        place(stage, root, lights[4:])
        d.wait_for(lambda: d.events("output_unavailable"), timeout=30, what="a pause")
        time.sleep(8)  # retries at 1, 2, 4 s: each fails
        assert d.proc.poll() is None
        assert len(d.events("output_unavailable")) == 1
        stuck = query(db, "SELECT relpath, state, attempts FROM frames WHERE state = 'failed'"
                      " OR attempts > 1")  # fmt: skip
        assert not stuck
        undo()
        d.wait_for(lambda: len(set(reduced_files(d))) == N_LIGHTS, timeout=90, what="all")
        d.wait_for(lambda: d.events("output_available"), timeout=30, what="resumed")
        assert d.stop() == 0
    assert states(db) == {"done": N_CAL + N_LIGHTS}
    rows = check_consistent(tmp_path)
    assert {r["file"] for r in rows if r["current"] == "1"} == set(lights)
    for rel in lights:
        assert (small_disk / "reduced" / rel).stat().st_size > 0
    _keys, n_rows, torn = tables.read_keys(small_disk / "photometry.csv")
    assert not torn and n_rows == len(rows)
    ecsv = (small_disk / "photometry.ecsv").read_text()
    assert ecsv.endswith("\n") and len(Table.read(ecsv, format="ascii.ecsv")) == n_rows


# -- 8. a huge file that is not FITS is refused without being read ----------------------

PEAK = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:]);"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)  # peak RSS (KiB) of the command, measured by its parent


def vm_hwm_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gigabytes_of_zeros_named_fits_stay_under_200_mb(tmp_path):
    data = tmp_path / "data" / "n"
    data.mkdir(parents=True)
    with open(data / "x.fits", "wb") as fh:
        fh.truncate(2 * 1024**3)  # sparse: 2 GB of zeros
    cmd = [*reduxd_command(), "reduce", "-D", str(data.parent), "-O", str(tmp_path / "b")]
    proc = subprocess.run(
        [sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, timeout=120
    )
    batch_mb = int(proc.stdout.splitlines()[-1]) / 1024
    assert "not a FITS file" in proc.stdout, proc.stdout[-2000:]
    config = write_config(tmp_path, root=data.parent)
    with daemon(config) as d:
        d.wait_for(lambda: d.events("frame_quarantined"), timeout=60, what="quarantine")
        daemon_mb = vm_hwm_mb(d.pid)
        assert d.stop() == 0
    (event,) = d.events("frame_quarantined")
    assert "not a FITS file" in event["reason"]
    print(f"peak RSS for a 2 GB x.fits: batch {batch_mb:.0f} MB, daemon {daemon_mb:.0f} MB")
    assert batch_mb < 200 and daemon_mb < 200


# -- 9. signals ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_stops_a_rereduction_between_lights_and_it_resumes(tmp_path):
    lights, add_flats, config, db = night_before_flats(tmp_path, force=True)
    with daemon(config, name="first") as d:
        d.started()
        d.wait_for(lambda: len(reduced_files(d)) == N_LIGHTS, timeout=60, what="v1")
        add_flats()
        d.wait_for(lambda: d.events("rereduce"), timeout=60, what="a re-reduction")
        assert d.stop(signal.SIGTERM) == 0
    redone = len(reduced_files(d)) - N_LIGHTS
    assert redone < N_LIGHTS // 2, f"{redone} lights re-reduced after SIGTERM"
    assert d.events("service_stopped")
    with daemon(config, exit_when_idle=2.0, name="second") as d2:
        assert d2.wait_exit(90) == 0
    with_flat = "SELECT count(*) FROM reductions WHERE superseded = 0 AND calib LIKE '%flat'"
    assert query(db, with_flat)[0][0] == N_LIGHTS
    current = [r for r in check_consistent(tmp_path) if r["current"] == "1"]
    assert {r["file"] for r in current} == set(lights)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_second_sigint_exits_at_once_and_sighup_stops_cleanly(tmp_path):
    _, _, config, db = whole_night(tmp_path)
    with daemon(config, name="int") as d:
        d.started()
        deadline = time.monotonic() + 60
        while not query(db, "SELECT 1 FROM frames WHERE state = 'processing'"):
            assert time.monotonic() < deadline and d.proc.poll() is None, d.tail()
            time.sleep(0.001)
        d.proc.send_signal(signal.SIGINT)
        time.sleep(0.02)  # two signals at once would be delivered as one
        d.proc.send_signal(signal.SIGINT)
        assert d.wait_exit(10) == 130
    assert not query(db, "SELECT 1 FROM frames WHERE state = 'processing'")
    assert [e.get("forced") for e in d.events("service_stopped")] == [True]
    assert query(db, "SELECT max(attempts) FROM frames")[0][0] <= 1
    assert lock.holder(db) is None
    with daemon(config, name="hup") as d2:
        d2.started()
        assert d2.stop(signal.SIGHUP) == 0
    (stopped,) = d2.events("stop_requested")
    assert stopped["signal"] == "SIGHUP" and d2.events("service_stopped")


# -- 10. every file reaches a final state -------------------------------------------------


def corrupt_card(blob, key=b"OBJECT  = "):
    """The frame with two control characters inside a card's value (Unparsable card)."""
    blob = bytearray(blob)
    i = blob.index(key)
    blob[i + 11 : i + 13] = b"\x01\x02"
    return bytes(blob)


def status_text(db):
    proc = subprocess.run(
        [*reduxd_command(), "status", "--state", str(db), "-n", "50"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_files_that_never_complete_reach_a_final_state(tmp_path):
    """An empty file, a name that is not UTF-8, a header with control characters and a
    partial frame deleted while incomplete: each quarantined with its reason, and the
    daemon goes idle (--exit-when-idle fires)."""
    stage, rels, _ = stage_night(tmp_path)
    light = stage / next(r for r in rels if r.startswith(LIGHTS))
    root = tmp_path / "raw"
    folder = root / "n"
    folder.mkdir(parents=True)
    (folder / "empty.fits").write_bytes(b"")
    with open(os.fsencode(folder) + b"/bad\xff.fits", "wb") as fh:
        fh.write(light.read_bytes())
    (folder / "ctrl.fits").write_bytes(corrupt_card(light.read_bytes()))
    (folder / "partial.fits").write_bytes(light.read_bytes()[:60000])
    config = write_config(tmp_path, root=root, extra="incomplete_timeout_seconds = 4.0")
    db = tmp_path / "out" / "reduxd.sqlite"
    with daemon(config, name="first") as d:
        d.started()
        d.wait_for(
            lambda: {e["file"] for e in d.events("frame_incomplete")} >= {"n/partial.fits"},
            timeout=30,
            what="the partial frame seen",
        )
        (folder / "partial.fits").unlink()
        d.wait_for(lambda: states(db) == {"quarantined": 3}, timeout=60, what="all final")
        assert d.stop() == 0
    reasons = {e["file"]: e["reason"] for e in d.events("frame_quarantined")}
    bad = ascii(str(folder) + "/bad\udcff.fits")
    assert "not valid UTF-8" in reasons[bad]
    assert "Unparsable card" in reasons["n/ctrl.fits"]
    assert "empty" in reasons["n/empty.fits"]
    assert "deleted" in reasons["n/partial.fits"]
    assert "Traceback" not in d.err_path.read_text()
    with daemon(config, exit_when_idle=2.0, name="second") as d2:
        assert d2.wait_exit(30) == 0  # nothing keeps it busy
    # the ledger cannot store that name: it is refused again (one line) at each start
    assert [e["reason"] for e in d2.events("frame_quarantined")] == [reasons[bad]]
    text = status_text(db)
    assert "frames: seen 0, processing 0," in text


# -- 11. ledger errors: one event, one sentence, a documented exit status ---------------------


def ledger_failure(proc, path, advice):
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"reduxd: ledger {path}: ") and advice in line, line
    (event,) = json_events(proc.stdout, "ledger_error")
    assert str(path) in event["reason"]


@pytest.mark.parametrize("command", ["watch", "reduce"])
def test_damaged_ledger_is_named_with_advice(tmp_path, command):
    root = tmp_path / "raw"
    root.mkdir()
    config = write_config(tmp_path, root=root)
    db = tmp_path / "out" / "reduxd.sqlite"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database\n" * 200)
    (root / "a.fits").write_bytes(b"")  # so that reduce has something to look at
    if command == "watch":
        proc = watch(config)
    else:
        args = ["reduce", "--config", str(config), "-D", str(root), "-O", str(db.parent)]
        proc = subprocess.run([*reduxd_command(), *args], capture_output=True, text=True)
    ledger_failure(proc, db, f"mv {db} {db}.bad")


def test_ledger_folder_not_writable_is_named_with_advice(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (chmod does not stop root)")
    undo = read_only(folder)
    try:
        root = tmp_path / "raw"
        root.mkdir()
        proc = watch(write_config(tmp_path, root=root), "--state", str(folder / "l.sqlite"))
    finally:
        undo()
    ledger_failure(proc, folder / "l.sqlite", "read-only")


# -- 7. products and masters deleted behind the daemon's back are made again ---------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_missing_products_and_masters_are_made_again(tmp_path):
    stage, rels, _ = stage_night(tmp_path)
    lights = [r for r in rels if r.startswith(LIGHTS)]
    root = tmp_path / "raw"
    place(stage, root, rels)
    config = write_config(tmp_path, root=root)
    out, db = tmp_path / "out", tmp_path / "out" / "reduxd.sqlite"
    with daemon(config, exit_when_idle=2.0, name="first") as d:
        assert d.wait_exit(90) == 0
    assert len(reduced_files(d)) == N_LIGHTS
    shutil.rmtree(out / "masters")
    for rel in lights[:2]:
        (out / "reduced" / rel).unlink()
    with daemon(config, name="second") as d2:
        d2.wait_for(
            lambda: (
                all((out / "reduced" / r).exists() for r in lights[:2])
                and not query(db, "SELECT 1 FROM frames WHERE state != 'done'")
            ),
            timeout=120,
            what="products and masters made again",
        )
        d2.wait_for(lambda: len(d2.events("master_built")) >= 7, timeout=60, what="masters")
        (out / "reduced" / lights[5]).unlink()  # while it runs: the reconciliation sees it
        d2.wait_for(
            lambda: (out / "reduced" / lights[5]).exists(), timeout=30, what="product again"
        )
        d2.wait_for(lambda: not query(db, "SELECT 1 FROM frames WHERE state != 'done'"),
                    timeout=30, what="all done")  # fmt: skip
        assert d2.stop() == 0
    missing = {e["file"] for e in d2.events("products_missing")}
    assert missing >= {*lights[:2], lights[5]}
    assert len(d2.events("master_missing")) == 7
    assert not d2.events("frame_failed")
    masters = query(db, "SELECT path FROM masters WHERE status = 'valid'")
    assert masters and all(Path(p).exists() for (p,) in masters)
    used = query(
        db,
        "SELECT DISTINCT m.status FROM reductions r JOIN reduction_masters rm"
        " ON rm.reduction_id = r.id JOIN masters m ON m.id = rm.master_id"
        " WHERE r.superseded = 0",
    )
    assert used == [("valid",)], "current reductions use only masters that exist"
    rows = check_consistent(tmp_path)
    assert {r["file"] for r in rows if r["current"] == "1"} == set(lights)
    assert all((out / "reduced" / r).stat().st_size > 0 for r in lights)


# -- 12. smaller: duplicates, links out of the root, bounds, long names, newlines ---------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_duplicates_links_long_objects_and_newlines(night, tmp_path):  # noqa: F811
    lights = sorted((night / "pg2213").rglob("*.fits"))
    v = [p for p in lights if "_V_" in str(p)]
    r = [p for p in lights if "_R_" in str(p)]
    shutil.copy2(v[0], v[0].with_name("copy_a.fits"))  # byte-identical copies
    shutil.copy2(v[0], v[0].with_name("copy_b.fits"))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy2(v[1], outside / "o.fits")
    os.symlink(outside / "o.fits", v[1].with_name("link.fits"))
    long_object = "X" * 300
    for path in r:
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["OBJECT"] = long_object
    r[0].rename(r[0].with_name("two\nlines.fits"))
    first = run_reduxd(BATCH, cwd=night)
    assert first.returncode == 0, first.stderr
    out = night / "analysis"
    refused = {Path(x["file"]).name: x["reason"] for x in summary(out)["refused"]}
    assert "outside the data folder" in refused["link.fits"]
    folder = v[0].parent.relative_to(night / "pg2213").as_posix()
    same = {f"{folder}/{n}" for n in ("copy_a.fits", "copy_b.fits", v[0].name)}
    dups = json_events(first.stdout, "frame_duplicate")
    assert len(dups) == 2 and {e["file"] for e in dups} < same  # the first in time is kept
    rows = phot(out)
    files = set(rows["file"])
    assert len(files & same) == 1
    assert not any("link" in f for f in files)
    assert any("two\nlines.fits" in f for f in files)
    curves = list(out.glob("lightcurve_XXX*_R.csv"))
    assert len(curves) == 1 and len(curves[0].name) < 100
    again = run_reduxd(BATCH, cwd=night)
    assert again.returncode == 0, again.stderr
    assert "tables_rewritten" not in again.stdout + again.stderr
    assert len(phot(out)) == len(rows)


@pytest.mark.parametrize(
    "toml, key",
    [
        ("[photometry]\nradius = 1e9\n", "photometry.radius"),
        ("[calibration]\nmax_memory_mb = inf\n", "calibration.max_memory_mb"),
        ("[calibration]\nmax_memory_mb = 0.001\n", "calibration.max_memory_mb"),
    ],
)
def test_absurd_radius_and_memory_are_refused_at_start(tmp_path, toml, key):
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_batch_on_a_full_disk_stops_cleanly_and_the_next_run_completes(night, small_disk):  # noqa: F811
    line = ["reduce", "-D", "pg2213", "-C", "calibration", "-O", str(small_disk)]
    assert run_reduxd(line, cwd=night).returncode == 0
    ballast = fill(small_disk)
    full = run_reduxd([*line, "--redo"], cwd=night)
    # 4 when the ledger cannot even be opened, 5 when products or tables fail later
    assert full.returncode in (4, 5), full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert any(w in full.stderr for w in ("nothing is lost", "df", "disk is full"))
    ballast.unlink()
    again = run_reduxd([*line, "--redo"], cwd=night)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = phot(small_disk)
    current = rows[rows["current"] == 1]
    assert len(set(current["file"])) == N_LIGHTS
    assert len(current) == len(set(zip(current["file"], current["star_id"], strict=True)))
    assert not tables.read_keys(small_disk / "photometry.csv")[2]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_torn_last_line_is_repaired_at_start(night):  # noqa: F811
    assert run_reduxd(BATCH, cwd=night).returncode == 0
    csv_path = night / "analysis" / "photometry.csv"
    whole = csv_path.read_text()
    with open(csv_path, "a") as fh:
        fh.write(whole.splitlines()[1][:40])  # what a crash in mid-append leaves
    again = run_reduxd(BATCH, cwd=night)
    assert again.returncode == 0, again.stderr
    (event,) = json_events(again.stdout, "tables_rewritten")
    assert "torn" in event["reason"]
    assert csv_path.read_text() == whole
