"""``reduxd status`` on a real ledger file."""

import subprocess
import sys
from datetime import UTC, datetime

import pytest

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
        ledger.defer(waiting.id, "waiting for calibration: no flat in R")
    return path


def test_format_status(state):
    with Ledger(state) as ledger:
        text = format_status(ledger, n=5)
    lines = text.splitlines()
    assert lines[0] == (
        "frames: seen 1, processing 0, done 2, failed 1, quarantined 1, changed 0, excluded 0"
    )
    assert lines[1] == "masters in use (1):"
    assert "flat" in lines[2] and " V " in lines[2] and "n=10" in lines[2]
    assert "lights=2" in lines[2] and "flat_V.fits" in lines[2]
    assert lines[3] == "last 5 frames:"
    recent = lines[4:9]  # newest first
    assert "m51/light_4.fits" in recent[0] and "waiting for calibration" in recent[0]
    assert "light_2.fits" in recent[3] and "light_1.fits" in recent[4]
    # stars, latency (mtime 0: decades ago) and the reduction's version
    assert " 17 " in recent[3] and " h " in recent[3] and recent[3].endswith("v2")
    assert lines[9] == "failures (2):"
    assert "failed      m51/light_3.fits: ValueError: boom" in lines[10]
    assert "quarantined m51/notes.fits: No SIMPLE card found" in lines[11]


def test_cli(state):
    out = subprocess.run(
        [sys.executable, "-m", "reduxd", "status", "--state", str(state), "-n", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("frames: seen 1,")
    assert "last 2 frames:" in out.stdout and "failures (2):" in out.stdout


def test_cli_without_ledger(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "reduxd", "status", "--state", str(tmp_path / "none.sqlite")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1 and "no ledger" in out.stderr


def test_format_latency():
    assert format_latency(0.0424) == "42 ms"
    assert format_latency(59.94) == "59.9 s"
    assert format_latency(600) == "10.0 min"
    assert format_latency(3 * 3600) == "3.0 h"
