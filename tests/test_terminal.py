"""A calm terminal: the progress bar never glued to log lines, no third-party DEBUG noise,
one screen of INFO for a small night, repeated warnings once.

``reduxd reduce`` runs in a subprocess, under a pseudo-terminal where the test is
about the terminal.
"""

import fcntl
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from test_batch import ok, reduxd_command, run_reduxd

from reduxd.simulate import NightSpec, simulate_night

BASE = "reduce -D pg2213 -C calibration -O analysis"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


@pytest.fixture(scope="module")
def small_night_tty(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tty") / "night"
    simulate_night(folder, NightSpec.small())
    return folder


@pytest.fixture
def night(small_night_tty, tmp_path):
    return Path(shutil.copytree(small_night_tty, tmp_path / "night"))


def run_in_pty(args, cwd, *, columns=120):
    """Run ``reduxd args`` with stdout and stderr on one pseudo-terminal; return its bytes."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        [*reduxd_command(), *args.split()], cwd=cwd, stdin=slave, stdout=slave, stderr=slave
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def screen_lines(text):
    """What a terminal shows: each line after its carriage returns overwrote it."""
    out = []
    for line in ANSI.sub("", text).split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        out.append(shown.rstrip())
    return out


def test_progress_bar_never_glued_to_log_lines(night):
    text = run_in_pty(BASE + " --jobs 2", night)
    assert "frame/s" in text  # the bar was drawn
    lines = screen_lines(text)
    logs = [line for line in lines if "frame_reduced" in line or "master_built" in line]
    assert len(logs) == 12 + 7
    for line in logs:
        assert STAMP.match(line), repr(line)
        assert "frame/s" not in line and "%|" not in line, repr(line)
    (summary,) = [line for line in lines if "lights reduced" in line]
    assert summary.startswith("reduxd reduce: 29 files")


def test_debug_without_third_party_noise_and_info_on_one_screen(night):
    debug = ok(run_reduxd(BASE + " --level DEBUG", cwd=night))
    lines = debug.stdout.splitlines()
    assert not [line for line in lines if "findfont" in line or '"logger": "matplotlib' in line]
    assert any('"level": "debug"' in line and "reduxd." in line for line in lines)
    shutil.rmtree(night / "analysis")
    info = ok(run_reduxd(BASE, cwd=night))
    assert "calibration_frame" not in info.stdout  # at DEBUG
    assert len(info.stdout.splitlines()) + len(info.stderr.splitlines()) <= 50


def test_repeated_warning_logged_once(tmp_path):
    code = (
        "import warnings\n"
        "from astropy.io.fits.verify import VerifyWarning\n"
        "from reduxd.log import configure_logging\n"
        "configure_logging(level='INFO', force_json=True)\n"
        "warnings.simplefilter('always')  # as when they come from many places and modules\n"
        "for i in range(5):\n"
        "    warnings.warn('Card is too long, comment will be truncated.', VerifyWarning)\n"
        "warnings.warn('another one', VerifyWarning)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert proc.stdout.count("Card is too long") == 1
    assert proc.stdout.count("another one") == 1
