"""``reduxd status`` on a real ledger file."""

import os
import re
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from reduxd import lock
from reduxd.status import format_latency, format_status
from reduxd.steps.select import MasterRecord
from reduxd.store import Ledger

ROOT = "/data/sharpcap"


def _master():
    return MasterRecord(
        kind="flat",
        path="/srv/analysis/masters/2025-06-01/flat_V.fits",
        checksum="c1",
        instrument="ZWO ASI432MM",
        shape=(256, 384),
        binning=(1, 1),
        gain=150.0,
        exptime=2.0,
        filter="V",
        ccd_temp=38.0,
        date_start=datetime(2025, 6, 2, 1, 0, tzinfo=UTC),
        date_end=datetime(2025, 6, 2, 1, 5, tzinfo=UTC),
        ncombine=10,
        night="2025-06-01",
    )


@pytest.fixture
def state(tmp_path):
    """A ledger with done, re-reduced, failed, quarantined and waiting frames."""
    path = tmp_path / "reduxd.sqlite"
    with Ledger(path) as ledger:
        flat = ledger.add_master(_master())
        for i in (1, 2):
            row = ledger.observe(ROOT, f"m51/light_{i}.fits", size=100, mtime_ns=0)
            ledger.begin(row.id)
            ledger.add_measurements(row.id, [{"star_id": 1}], calib="bias+flat", master_ids=[flat])
            ledger.finish(
                row.id,
                kind="light",
                checksum="x",
                night="2025-06-01",
                info={"n_stars": 17, "version": i},
            )
        bad = ledger.observe(ROOT, "m51/light_3.fits", size=100, mtime_ns=0)
        for _ in range(2):
            ledger.begin(bad.id)
            ledger.fail(bad.id, "ValueError: boom", max_tries=2)
        broken = ledger.observe(ROOT, "m51/notes.fits", size=5, mtime_ns=0)
        ledger.quarantine(broken.id, "No SIMPLE card found")
        waiting = ledger.observe(ROOT, "m51/light_4.fits", size=100, mtime_ns=0)
        ledger.begin(waiting.id)
        ledger.defer(waiting.id, "waiting for calibration: no flat in R", state="waiting")
    return path


def test_format_status(state):
    with Ledger(state) as ledger:
        text = format_status(ledger, n=5)
    lines = text.splitlines()
    assert lines[0] == (
        "frames: seen 0, processing 0, done 2, failed 1, quarantined 1, changed 0, excluded 0,"
        " waiting 1, incomplete 0"
    )
    # times with their zone, and how long ago
    assert lines[1].startswith("last frame arrived: 20") and lines[1].endswith(" ago)")
    assert re.search(r"\d\d:\d\d:\d\d [A-Z+\-0-9]+ \(", lines[1])
    assert lines[2] == "masters in use (1):"
    assert lines[3].split() == ["kind", "filt/exp", "frames", "night", "lights", "file"]
    assert lines[4].split()[:5] == ["flat", "V", "10", "2025-06-01", "2"]
    assert lines[4].endswith("flat_V.fits")
    assert lines[5] == "last 5 frames:"
    assert lines[6].split() == ["updated", "state", "kind", "latency", "stars", "file"]
    recent = lines[7:12]  # newest first
    assert "m51/light_4.fits" in recent[0] and "waiting for calibration" in recent[0]
    assert "light_2.fits" in recent[3] and "light_1.fits" in recent[4]
    # stars, latency (mtime 0: decades ago) and the reduction's version
    assert " 17 " in recent[3] and " h " in recent[3] and recent[3].endswith("v2")
    assert lines[12].strip().startswith("(latency: from the raw file's last write")
    assert lines[13] == "failures (2):"
    assert "failed      m51/light_3.fits: ValueError: boom" in lines[14]
    assert "quarantined m51/notes.fits: No SIMPLE card found" in lines[15]


def status(args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "reduxd", "status", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_cli(state):
    out = status(["--state", str(state), "-n", "2"], state.parent)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"ledger: {state}"
    assert lines[1].startswith("service: ")
    assert lines[2].startswith("frames: seen 0,") and "waiting 1" in lines[2]
    assert "last 2 frames:" in out.stdout and "failures (2):" in out.stdout


def test_cli_finds_the_ledger_from_the_config(state, tmp_path):
    (tmp_path / "config.toml").write_text(f'[paths]\noutdir = "{state.parent}"\n')
    out = status([], tmp_path)  # ./config.toml
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"ledger: {state}")


def test_cli_without_ledger_says_where_it_looked(tmp_path):
    out = status(["--state", str(tmp_path / "none.sqlite")], tmp_path)
    assert out.returncode == 1 and "no ledger found" in out.stderr
    assert f"{tmp_path / 'none.sqlite'} (--state)" in out.stderr
    (tmp_path / "c.toml").write_text('[paths]\noutdir = "elsewhere"\n')
    out = status(["--config", "c.toml"], tmp_path)
    assert out.returncode == 1
    assert f"{tmp_path / 'elsewhere' / 'reduxd.sqlite'} ([paths] outdir" in out.stderr
    assert "of c.toml" in out.stderr and "--config FILE" in out.stderr


def test_format_latency():
    assert format_latency(0.0424) == "42 ms"
    assert format_latency(59.94) == "59.9 s"
    assert format_latency(600) == "10.0 min"
    assert format_latency(3 * 3600) == "3.0 h"


def test_cli_says_whether_a_service_holds_the_ledger(state):
    out = status(["--state", str(state)], state.parent)
    assert out.stdout.splitlines()[1].startswith("service: not running on this ledger")
    with lock.acquire(state, command="watch"):
        out = status(["--state", str(state)], state.parent)
    line = out.stdout.splitlines()[1]
    assert line.startswith(f"service: running, pid {os.getpid()}, since "), line
    assert line.endswith("(watch)")
