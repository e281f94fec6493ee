"""``reduxd watch`` end to end: the daemon as a real subprocess, real observers, real files.

Every test writes a small config (short settle/reconcile times), drops simulated
SharpCap frames into a watched folder the way cameras, copies and shares do, and
checks the ledger, the photometry table and the JSON log. Subprocesses are always
killed in ``finally``.
"""

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from nights import CAMERA, stage_night

from reduxd.fitsio import file_checksum
from reduxd.simulate import fits_bytes, sharpcap_cards, write_frame

SETTLE = 0.5
RECONCILE = 2.0
N_CAL = 17  # NightSpec.small(): 5 bias, 2 x 3 darks, 2 x 3 flats
N_LIGHTS = 12  # 2 filters x 6
LIGHTS = "pg2213/"


# -- helpers ---------------------------------------------------------------------------


def write_config(tmp, *, root, observer="polling", force=False, target=(), extra=""):
    """A config for fast tests; returns its path (outdir and ledger under ``tmp/out``)."""
    path = tmp / "config.toml"
    target = ", ".join(f"{v:.2f}" for v in target)
    path.write_text(
        f"""
[paths]
data = ["{root}"]
outdir = "{tmp / "out"}"
[calibration]
force = {str(force).lower()}
{CAMERA}
[photometry]
radius = 8.0
[lightcurve]
target = [{target}]
[output]
quicklook = false
stack = false
[watch]
observer = "{observer}"
poll_interval = 0.2
settle_seconds = {SETTLE}
reconcile_seconds = {RECONCILE}
set_timeout_seconds = 1.0
max_tries = 3
{extra}
"""
    )
    return path


def whole_night(tmp):
    """A small night placed whole under ``tmp/raw``: ``(relpaths, root, config, ledger)``."""
    stage, rels, _ = stage_night(tmp)
    root = tmp / "raw"
    place(stage, root, rels)
    return rels, root, write_config(tmp, root=root), tmp / "out" / "reduxd.sqlite"


def night_before_flats(tmp, *, force):
    """A small night under ``tmp/raw`` without its dawn flats yet:
    ``(lights, add_flats, config, ledger)``; ``add_flats()`` places the flats."""
    stage, rels, _ = stage_night(tmp, flats_last=True)
    flats = [r for r in rels if "/flats/" in r]
    root = tmp / "raw"
    place(stage, root, [r for r in rels if r not in flats])
    lights = [r for r in rels if r.startswith(LIGHTS)]
    config = write_config(tmp, root=root, force=force)
    return lights, lambda: place(stage, root, flats), config, tmp / "out" / "reduxd.sqlite"


class Daemon:
    """``reduxd watch`` in a subprocess; stdout (JSON lines) goes to a file we can read live."""

    def __init__(self, config, *, exit_when_idle=None, env=None, name="daemon"):
        tmp = Path(config).parent
        self.out_path = tmp / f"{name}.out"
        self.err_path = tmp / f"{name}.err"
        cmd = [sys.executable, "-m", "reduxd", "watch", "--config", str(config)]
        if exit_when_idle is not None:
            cmd += ["--exit-when-idle", str(exit_when_idle)]
        self._out = open(self.out_path, "ab")  # noqa: SIM115 (closed in close())
        self._err = open(self.err_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, stdout=self._out, stderr=self._err, env={**os.environ, **(env or {})}
        )

    @property
    def pid(self):
        return self.proc.pid

    def lines(self):
        text = self.out_path.read_text(encoding="utf-8", errors="replace")
        return text.splitlines()[: text.count("\n")]  # complete lines only

    def events(self, name=None):
        out = [json.loads(line) for line in self.lines()]
        return [e for e in out if name is None or e.get("event") == name]

    def tail(self, n=30):
        err = self.err_path.read_text(errors="replace")[-3000:]
        return "\n".join(self.lines()[-n:]) + "\n--- stderr ---\n" + err

    def wait_for(self, predicate, *, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                if predicate():
                    return
                pytest.fail(
                    f"daemon exited ({self.proc.returncode}) waiting for {what}\n" + self.tail()
                )
            time.sleep(0.05)
        pytest.fail(f"timed out after {timeout} s waiting for {what}\n{self.tail()}")

    def started(self, timeout=30):
        self.wait_for(lambda: self.events("service_started"), timeout=timeout, what="start")

    def wait_exit(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon did not exit within {timeout} s\n{self.tail()}")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        return self.wait_exit(timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self._err.close()


@contextlib.contextmanager
def daemon(config, **kwargs):
    d = Daemon(config, **kwargs)
    try:
        yield d
    finally:
        d.close()


def query(db, sql, args=()):
    """Read the ledger from outside the daemon (its own short read-only connection)."""
    if not Path(db).exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        con.close()


def states(db):
    return dict(query(db, "SELECT state, count(*) FROM frames GROUP BY state"))


def processing(db, like="%"):
    rows = query(
        db, "SELECT relpath FROM frames WHERE state = 'processing' AND relpath LIKE ?", (like,)
    )
    return rows[0][0] if rows else None


def table_rows(outdir):
    path = Path(outdir) / "photometry.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_consistent(tmp):
    """Ledger and table agree; no duplicate rows; one current reduction per light; no
    partial file under a final name."""
    out, db = tmp / "out", tmp / "out" / "reduxd.sqlite"
    rows = table_rows(out)
    n_ledger = query(
        db,
        "SELECT (SELECT count(*) FROM measurements) + (SELECT coalesce(sum(n), 0) FROM light_rows)",
    )[0][0]
    assert len(rows) == n_ledger, "photometry.csv and the ledger hold different rows"
    keys = [(r["file"], r["star_id"], r["version"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate rows in photometry.csv"
    current = [(r["file"], r["star_id"]) for r in rows if r["current"] == "1"]
    assert len(current) == len(set(current)), "a star has two current rows"
    multi = query(
        db,
        "SELECT frame_id, count(*) FROM reductions WHERE superseded = 0"
        " GROUP BY frame_id HAVING count(*) != 1",
    )
    assert not multi, f"frames with several current reductions: {multi}"
    lights_done = query(
        db,
        "SELECT f.relpath FROM frames f WHERE f.kind = 'light' AND f.state = 'done' AND NOT"
        " EXISTS (SELECT 1 FROM reductions r WHERE r.frame_id = f.id AND r.superseded = 0)",
    )
    assert not lights_done, f"done lights without a reduction: {lights_done}"
    assert not query(db, "SELECT id FROM frames WHERE state = 'processing'")
    for path in out.rglob("*.fits"):
        if path.name.startswith("."):
            continue  # a temporary file (written, fsynced, then renamed)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a checksum mismatch is only a warning
            with fits.open(path, checksum=True) as hdul:
                hdul.verify("exception")
                assert hdul[0].data is not None
    return rows


def place(stage, root, rels):
    """Copy frames into the tree keeping their mtimes (files already there at start)."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(stage / rel, root / rel)


def when(event):
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def reduced_files(d):
    return [e["file"] for e in d.events("frame_reduced")]


# -- every frame exactly once -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("observer", ["polling", "inotify"])
def test_every_frame_reduced_exactly_once(tmp_path, observer):
    """Frames present at start plus frames arriving by chunked writes (one slower than
    the settle time), copies, moves from outside the tree and renames: each reduced once."""
    stage, rels, truth = stage_night(tmp_path)
    lights = [r for r in rels if r.startswith(LIGHTS)]
    before = [r for r in rels if not r.startswith(LIGHTS)] + lights[:4]
    arriving = lights[4:]
    root = tmp_path / "raw"
    root.mkdir()
    place(stage, root, before)
    outside = tmp_path / "outside"  # same filesystem, outside the watched tree
    outside.mkdir()
    star = truth["stars"][0]  # the target, at its position on the first light
    config = write_config(tmp_path, root=root, observer=observer, target=(star["x"], star["y"]))
    db = tmp_path / "out" / "reduxd.sqlite"
    with daemon(config) as d:
        d.started()
        d.wait_for(lambda: len(d.events("frame_reduced")) == 4, timeout=30, what="first lights")
        slow = arriving[0]
        blob = (stage / slow).read_bytes()
        write_frame(
            root / slow, blob, delivery="chunks", chunk_bytes=len(blob) // 4 + 1, pause=SETTLE + 0.7
        )  # stable for longer than settle between chunks
        slow_done = time.time()
        write_frame(
            root / arriving[1],
            (stage / arriving[1]).read_bytes(),
            delivery="chunks",
            chunk_bytes=32768,
            pause=0.01,
        )
        for rel in arriving[2:4]:
            write_frame(
                root / rel,
                (stage / rel).read_bytes(),
                delivery="copy",
                staging_dir=tmp_path / "copying",
            )
        for rel in arriving[4:6]:  # mv from outside the tree: inotify sees 'created' only
            shutil.copy2(stage / rel, outside / Path(rel).name)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.rename(outside / Path(rel).name, root / rel)
        for rel in arriving[6:]:  # x.fits.tmp -> x.fits: inotify sees 'moved' only
            write_frame(
                root / rel,
                (stage / rel).read_bytes(),
                delivery="rename",
                chunk_bytes=65536,
                pause=0.01,
            )
        d.wait_for(
            lambda: (
                states(db).get("done") == N_CAL + N_LIGHTS
                and len(d.events("frame_reduced")) >= N_LIGHTS
            ),
            timeout=40,
            what="every frame done",
        )
        n_lines = len(d.lines())
        time.sleep(RECONCILE + 4 * 0.25)  # a reconciliation and many polls: nothing to log
        quiet = d.lines()[n_lines:]
        assert d.stop() == 0
    assert not quiet, f"log lines while idle: {quiet}"
    assert states(db) == {"done": N_CAL + N_LIGHTS}
    reduced = d.events("frame_reduced")
    assert sorted(e["file"] for e in reduced) == sorted(lights), "each light reduced once"
    for e in reduced:
        assert {"file", "object", "filter", "n_stars", "latency_ms"} <= set(e)
        assert e["object"] == "pg2213" and e["n_stars"] >= 10 and "version" not in e
    # the configured target's differential magnitude, once the field has an ensemble
    assert any("target_mag" in e for e in reduced)
    rows = check_consistent(tmp_path)
    assert len(rows) == sum(e["n_stars"] for e in reduced)
    assert {r["version"] for r in rows} == {"1"}
    # the slow frame: read (and reduced) only once complete
    (slow_event,) = [e for e in reduced if e["file"] == slow]
    assert when(slow_event) >= slow_done - 0.05
    ((checksum,),) = query(db, "SELECT checksum FROM frames WHERE relpath = ?", (slow,))
    assert checksum == file_checksum(root / slow)
    # seen stable while partial, refused (not read), reduced once complete
    assert any(e["file"] == slow for e in d.events("frame_incomplete"))
    assert all(json.loads(line) for line in d.lines())  # JSON only on stdout (not a tty)
    errors = [e for e in d.events() if e["level"] in ("error", "critical")]
    assert not errors and "Traceback" not in d.err_path.read_text()


# -- crashes --------------------------------------------------------------------------


def kill_while_processing(d, db, like, *, timeout=30, when=None):
    """SIGKILL the daemon while a frame matching ``like`` is being processed (and the
    ledger query ``when`` returns a true count); return the frame."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rel = processing(db, like)
        if rel is not None and (when is None or query(db, when)[0][0]):
            os.kill(d.pid, signal.SIGKILL)
            d.proc.wait(10)
            return rel
        if d.proc.poll() is not None:
            pytest.fail("daemon exited before the frame was processed\n" + d.tail())
        time.sleep(0.001)
    pytest.fail(f"no frame like {like} was processed within {timeout} s\n{d.tail()}")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill9_mid_frame_then_restart(tmp_path):
    rels, _, config, db = whole_night(tmp_path)
    with daemon(config, name="first") as d:
        d.started()
        killed = kill_while_processing(d, db, LIGHTS + "%")
    # still 'processing' in the ledger: the kill really was mid-frame
    assert query(db, "SELECT state FROM frames WHERE relpath = ?", (killed,)) == [("processing",)]
    with daemon(config, exit_when_idle=2.0, name="second") as d2:
        assert d2.wait_exit(60) == 0
    interrupted = d2.events("interrupted_frame")
    assert [e["file"] for e in interrupted] == [killed]
    assert states(db) == {"done": N_CAL + N_LIGHTS}
    ((attempts,),) = query(db, "SELECT attempts FROM frames WHERE relpath = ?", (killed,))
    assert attempts == 2
    rows = check_consistent(tmp_path)
    files = {r["file"] for r in rows if r["current"] == "1"}
    assert files == {r for r in rels if r.startswith(LIGHTS)}
    assert killed in reduced_files(d2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_frame_that_kills_the_daemon_every_time_ends_failed(tmp_path):
    """A frame during which the process dies (OOM killer, segfault in a library) is
    tried ``max_tries`` times, then set aside as failed; the others are reduced."""
    stage, rels, _ = stage_night(tmp_path)
    root = tmp_path / "raw"
    place(stage, root, rels)
    lights = [r for r in rels if r.startswith(LIGHTS)]
    poison = sorted(lights)[0]
    config = write_config(tmp_path, root=root)
    db = tmp_path / "out" / "reduxd.sqlite"
    for attempt in range(1, 4):
        with daemon(config, name=f"run{attempt}") as d:
            d.started()
            assert kill_while_processing(d, db, poison) == poison
        ((n,),) = query(db, "SELECT attempts FROM frames WHERE relpath = ?", (poison,))
        assert n == attempt
    with daemon(config, exit_when_idle=2.0, name="last") as d:
        assert d.wait_exit(60) == 0
    assert states(db) == {"done": N_CAL + N_LIGHTS - 1, "failed": 1}
    ((state, error),) = query(
        db, "SELECT state, last_error FROM frames WHERE relpath = ?", (poison,)
    )
    assert state == "failed" and "interrupted during attempt 3" in error
    rows = check_consistent(tmp_path)
    assert {r["file"] for r in rows} == set(lights) - {poison}
    # the operator sees it
    out = subprocess.run(
        [sys.executable, "-m", "reduxd", "status", "--state", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    failures = out.stdout.split("failures (1):")[1]
    assert poison in failures and "interrupted during attempt 3" in failures


# -- shares ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("observer", ["polling", "inotify"])
def test_root_removed_and_recreated(tmp_path, observer):
    """The share drops out (root gone), comes back with the same files, then new
    frames arrive: they are reduced within a reconciliation interval, nothing redone."""
    stage, rels, _ = stage_night(tmp_path)
    lights = [r for r in rels if r.startswith(LIGHTS)]
    cal = [r for r in rels if not r.startswith(LIGHTS)]
    root = tmp_path / "raw"
    place(stage, root, cal + lights[:4])
    config = write_config(tmp_path, root=root, observer=observer)
    db = tmp_path / "out" / "reduxd.sqlite"
    with daemon(config) as d:
        d.started()
        d.wait_for(lambda: len(d.events("frame_reduced")) == 4, timeout=30, what="lights")
        away = tmp_path / "away"
        os.rename(root, away)  # unmounted
        d.wait_for(
            lambda: d.events("watch root missing, waiting for it"), timeout=10, what="root missing"
        )
        root.mkdir()  # the mount point is back, then the share's files
        for item in away.iterdir():
            os.rename(item, root / item.name)
        t0 = time.time()
        place(stage, root, lights[4:6])
        d.wait_for(
            lambda: len(d.events("frame_reduced")) == 6, timeout=RECONCILE + 10, what="new lights"
        )
        latest = max(when(e) for e in d.events("frame_reduced"))
        assert latest - t0 < RECONCILE + SETTLE + 1.5, "not within a reconciliation interval"
        assert d.stop() == 0
    assert sorted(reduced_files(d)) == sorted(lights[:6]), "old frames redone or new missed"
    assert states(db) == {"done": N_CAL + 6}
    check_consistent(tmp_path)


# -- calibration arriving late ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("force", [True, False], ids=["force", "wait"])
def test_flats_after_lights(tmp_path, force):
    """Flats taken at dawn. With ``force`` the observer sees photometry all night (lights
    reduced without a flat) and each light is re-reduced with the flat once it exists:
    both versions in the table, the new one current. Without ``force`` the lights wait
    for the flat and are reduced once."""
    lights, add_flats, config, db = night_before_flats(tmp_path, force=force)
    with daemon(config) as d:
        d.started()
        if force:
            d.wait_for(
                lambda: len(d.events("frame_reduced")) == N_LIGHTS,
                timeout=30,
                what="lights reduced without a flat",
            )
            assert not any("flat" in e["calib"] for e in d.events("frame_reduced"))
        else:
            d.wait_for(
                lambda: len(d.events("light_waiting")) >= N_LIGHTS,
                timeout=30,
                what="lights waiting for a flat",
            )
            assert not d.events("frame_reduced")
        add_flats()
        with_flat = "SELECT count(*) FROM reductions WHERE superseded = 0 AND calib LIKE '%flat'"
        d.wait_for(
            lambda: query(db, with_flat)[0][0] == N_LIGHTS,
            timeout=30,
            what="lights reduced with the flat",
        )
        assert d.stop() == 0
    rows = check_consistent(tmp_path)
    current = [r for r in rows if r["current"] == "1"]
    assert {r["file"] for r in current} == set(lights)
    assert all(r["calib"].endswith("flat") for r in current)
    if force:
        assert {r["version"] for r in current} == {"2"}
        old = [r for r in rows if r["current"] == "0"]
        assert {r["file"] for r in old} == set(lights) and {r["version"] for r in old} == {"1"}
        assert not any(r["calib"].endswith("flat") for r in old)
        again = [e for e in d.events("frame_reduced") if e.get("version") == 2]
        assert sorted(e["file"] for e in again) == sorted(lights)
    else:
        assert {r["version"] for r in rows} == {"1"}
        assert sorted(reduced_files(d)) == sorted(lights)


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_kill9_during_rereduction_resumes_it(tmp_path):
    """Killed while re-reducing the night's lights with the new flat: after the restart
    every light is current with the flat, not only the one that was interrupted."""
    lights, add_flats, config, db = night_before_flats(tmp_path, force=True)
    with daemon(config, name="first") as d:
        d.started()
        d.wait_for(lambda: len(d.events("frame_reduced")) == N_LIGHTS, timeout=30, what="v1")
        add_flats()
        flat_built = "SELECT count(*) FROM masters WHERE kind = 'flat'"
        killed = kill_while_processing(d, db, LIGHTS + "%", when=flat_built)
    with_flat = "SELECT count(*) FROM reductions WHERE superseded = 0 AND calib LIKE '%flat'"
    assert query(db, with_flat)[0][0] < N_LIGHTS - 1, "killed too late to show anything"
    with daemon(config, exit_when_idle=2.0, name="second") as d2:
        assert d2.wait_exit(60) == 0
    assert [e["file"] for e in d2.events("interrupted_frame")] == [killed]
    assert query(db, with_flat)[0][0] == N_LIGHTS
    rows = check_consistent(tmp_path)
    current = [r for r in rows if r["current"] == "1"]
    assert {r["file"] for r in current} == set(lights)
    assert all(r["calib"].endswith("flat") for r in current)


# -- systemd --------------------------------------------------------------------------


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop:
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigterm_mid_frame(tmp_path):
    _, _, config, db = whole_night(tmp_path)
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        with daemon(config, env={"NOTIFY_SOCKET": listener.path}) as d:
            d.started()
            d.wait_for(lambda: "WATCHDOG=1" in listener.messages, timeout=10, what="WATCHDOG=1")
            deadline = time.monotonic() + 30
            while (rel := processing(db, LIGHTS + "%")) is None:
                assert time.monotonic() < deadline, d.tail()
                time.sleep(0.001)
            os.kill(d.pid, signal.SIGTERM)
            assert d.wait_exit(30) == 0
        time.sleep(0.2)
    finally:
        listener.close()
    msgs = listener.messages
    assert msgs[0] == "READY=1" and msgs[-1] == "STOPPING=1", msgs
    assert "WATCHDOG=1" in msgs and any(m.startswith("STATUS=") for m in msgs)
    # the frame in progress was finished, nothing else started after the signal
    assert query(db, "SELECT state FROM frames WHERE relpath = ?", (rel,)) == [("done",)]
    assert rel in reduced_files(d)
    stopped = d.events("stop_requested")
    assert stopped and stopped[0]["signal"] == "SIGTERM"
    assert d.events("service_stopped")
    check_consistent(tmp_path)
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers


# -- a burst ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_burst_of_2000_frames(tmp_path, observer):
    """2,000 small bias frames moved into the tree at once: none missed."""
    n = 2000
    outside = tmp_path / "outside"
    outside.mkdir()
    rng = np.random.default_rng(5)
    start = datetime.fromisoformat("2024-07-02T00:50:00+00:00")
    for i in range(n):
        cards = sharpcap_cards("bias", exptime=3.2e-05, date_obs=start)
        data = (600 + rng.integers(0, 8, (64, 64)) * 16).astype(np.uint16)
        (outside / f"bias_{i:05d}.fits").write_bytes(fits_bytes(data, cards))
    root = tmp_path / "raw"
    (root / "calibration" / "bias" / "00_50_00").mkdir(parents=True)
    config = write_config(tmp_path, root=root, observer=observer)
    db = tmp_path / "out" / "reduxd.sqlite"
    with daemon(config) as d:
        d.started()
        dest = root / "calibration" / "bias" / "00_50_00"
        for i in range(n):
            name = f"bias_{i:05d}.fits"
            os.rename(outside / name, dest / name)
        d.wait_for(lambda: states(db).get("done") == n, timeout=180, what=f"{n} frames done")
        d.wait_for(lambda: d.events("master_built"), timeout=30, what="master bias")
        assert d.stop() == 0
    assert states(db) == {"done": n}
    assert len(d.events("calibration_frame")) == n
    ((ncombine,),) = query(db, "SELECT ncombine FROM masters WHERE kind = 'bias'")
    assert ncombine == n
