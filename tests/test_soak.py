"""Fault-injection soak (issue 11): a realtime night while a driver kills and starves
the daemon and drops bad files; at the end nothing is lost and nothing is doubled.

A simulated night (2 filters x 20 lights, 384x256) is delivered frame by frame in
chunks into the watched folder. Meanwhile, on a seeded random schedule, the driver
``kill -9``s the daemon and starts it again, fills the output disk (a small tmpfs
holding the products, the tables and the ledger) and frees it, and drops bad files
(empty, truncated, not FITS, an unparsable header). At the end a clean run settles
everything and the checks are those of an observer the next morning. The counts
are printed (``pytest -s``).
"""

import dataclasses
import os
import random
import signal
import time

import pytest
from nights import stage_night
from test_daemon import LIGHTS, check_consistent, daemon, query, write_config
from test_reliability import corrupt_card, fill, small_disk, status_text  # noqa: F401

from reduxd.products import tables
from reduxd.simulate import NightSpec, write_frame

DURATION = 90.0  # seconds of chaos at most (the night is delivered within it)
CADENCE = 0.6  # seconds between frames


def bad_files(folder, good):
    """Broken files a share or a careless user leaves; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = good.read_bytes()
    (folder / "empty.fits").write_bytes(b"")
    (folder / "truncated.fits").write_bytes(blob[: len(blob) // 3])
    (folder / "notes.fits").write_text("observing log, not FITS\n")
    (folder / "ctrl.fits").write_bytes(corrupt_card(blob))
    return ["empty.fits", "truncated.fits", "notes.fits", "ctrl.fits"]


class Driver:
    """Starts, kills and restarts the daemon; fills and frees the disk."""

    def __init__(self, config, disk, rng):
        self.config, self.disk, self.rng = config, disk, rng
        self.counts = {"kills": 0, "starts": 0, "fills": 0, "exits": 0}
        self.ballast = None
        self.d = None

    def start(self):
        self.counts["starts"] += 1
        self.d = daemon(self.config, name=f"run{self.counts['starts']}")
        self.proc = self.d.__enter__()

    def kill(self):
        if self.proc.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.counts["kills"] += 1
        else:
            self.counts["exits"] += 1  # it stopped by itself (e.g. ledger on a full disk)
        self.d.__exit__(None, None, None)

    def toggle_disk(self):
        if self.ballast is None:
            self.ballast = fill(self.disk)
            self.counts["fills"] += 1
        else:
            self.ballast.unlink()
            self.ballast = None

    def step(self):
        roll = self.rng.random()
        if roll < 0.35:
            self.kill()
            self.start()
        elif roll < 0.6:
            self.toggle_disk()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_soak_kills_full_disk_and_bad_files(tmp_path, small_disk):  # noqa: F811
    rng = random.Random(11)
    spec = dataclasses.replace(NightSpec.small(), n_lights=20)
    stage, rels, _ = stage_night(tmp_path, spec=spec)
    lights = [r for r in rels if r.startswith(LIGHTS)]
    root = tmp_path / "raw"
    root.mkdir()
    config = write_config(tmp_path, root=root, extra="incomplete_timeout_seconds = 5.0")
    text = config.read_text().replace("max_tries = 3", "max_tries = 20")
    config.write_text(text)  # kills mid-frame spend tries: not what is tested here
    db = small_disk / "reduxd.sqlite"
    driver = Driver(config, small_disk, rng)
    driver.start()
    started = time.monotonic()
    next_fault = started + rng.uniform(1.5, 3.5)
    bad = []
    try:
        for i, rel in enumerate(rels):
            blob = (stage / rel).read_bytes()
            write_frame(root / rel, blob, delivery="chunks", chunk_bytes=65536, pause=0.01)
            if i == len(rels) // 2:
                bad = bad_files(root / "junk", stage / lights[0])
            deadline = time.monotonic() + CADENCE
            while time.monotonic() < deadline:
                if time.monotonic() >= next_fault:
                    driver.step()
                    next_fault = time.monotonic() + rng.uniform(1.5, 3.5)
                time.sleep(0.05)
            assert time.monotonic() - started < DURATION, "the night took too long"
        if driver.ballast is not None:
            driver.toggle_disk()
        driver.kill()
    finally:
        if driver.ballast is not None:
            driver.ballast.unlink()
        driver.d.__exit__(None, None, None)
    with daemon(config, exit_when_idle=8.0, name="final") as last:
        assert last.wait_exit(180) == 0, last.tail()
    elapsed = time.monotonic() - started

    # every light reduced exactly once (current rows), with its products
    rows = check_consistent(tmp_path)
    current = {r["file"] for r in rows if r["current"] == "1"}
    assert current == set(lights)
    assert all((small_disk / "reduced" / r).stat().st_size > 0 for r in lights)
    _keys, n_rows, torn = tables.read_keys(small_disk / "photometry.csv")
    assert not torn and n_rows == len(rows)
    # no frame stuck; every bad file quarantined with its reason
    assert "frames: seen 0, processing 0," in status_text(db)
    states = dict(query(db, "SELECT state, count(*) FROM frames GROUP BY state"))
    quarantined = {
        p for (p,) in query(db, "SELECT relpath FROM frames WHERE state = 'quarantined'")
    }
    assert quarantined == {f"junk/{name}" for name in bad}
    assert states.get("failed", 0) == 0
    versions = query(db, "SELECT count(*) FROM reductions")[0][0]
    counts = {
        **driver.counts,
        "frames": len(rels),
        "lights": len(lights),
        "bad_files": len(bad),
        "reductions": versions,
        "rows": len(rows),
        "states": states,
        "seconds": round(elapsed),
    }
    print(f"\nsoak counts: {counts}")
