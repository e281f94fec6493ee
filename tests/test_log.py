"""Logging configuration, run in a subprocess so stdout is a real pipe (as under systemd)."""

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import logging, sys, warnings
    from reduxd.log import configure_logging, get_logger

    force = {"json": True, "console": False, "auto": None}[sys.argv[1]]
    configure_logging(level="INFO", json_file=sys.argv[2], force_json=force)
    configure_logging(level="INFO", json_file=sys.argv[2], force_json=force)  # no duplicates
    get_logger("reduxd.test").info("structlog event", frames=3)
    get_logger("reduxd.test").debug("hidden below INFO")
    logging.getLogger("watchdog.observers").warning("stdlib record %s", "with args")
    warnings.warn("plain warning", UserWarning)
    from astropy.utils.exceptions import AstropyUserWarning
    warnings.warn("astropy warning", AstropyUserWarning)
    from astropy import log
    log.warning("astropy logger record")
    try:
        1 / 0
    except ZeroDivisionError:
        get_logger("reduxd.test").exception("failed")
    """
)
KEYS = {"event", "level", "logger", "timestamp"}


def _run(mode, tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(tmp_path / "reduxd.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout, out.stderr, (tmp_path / "reduxd.jsonl").read_text()


@pytest.mark.parametrize("mode", ["json", "auto"])  # auto: stdout is a pipe here
def test_json_lines_with_the_same_keys(mode, tmp_path):
    stdout, stderr, file_text = _run(mode, tmp_path)
    assert stderr == ""  # astropy's own handler no longer prints
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [json.loads(line) for line in file_text.splitlines()] == records
    by_logger = {r["logger"]: r for r in records}
    assert len(records) == 6
    assert by_logger["watchdog.observers"]["event"] == "stdlib record with args"
    warned = [r["event"] for r in records if r["logger"] == "py.warnings"]
    assert len(warned) == 2
    assert warned[0].endswith("UserWarning: plain warning") and "\n" not in warned[0]
    assert warned[1].endswith("AstropyUserWarning: astropy warning")
    assert by_logger["astropy"]["event"] == "astropy logger record"
    structlog_rec = records[0]
    assert structlog_rec["event"] == "structlog event" and structlog_rec["frames"] == 3
    for rec in records:
        assert rec.keys() >= KEYS, rec
    assert set(records[1]) == set(records[2]) == set(by_logger["astropy"]) == KEYS
    assert "ZeroDivisionError" in records[-1]["exception"]
    assert all(r["level"] in ("info", "warning", "error") for r in records)
    assert records[0]["timestamp"].endswith("Z")


def test_console_renderer_on_request(tmp_path):
    stdout, _, file_text = _run("console", tmp_path)
    lines = stdout.splitlines()
    assert any("structlog event" in line and "frames=3" in line for line in lines)
    assert any("stdlib record with args" in line for line in lines)
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[0])
    assert len(file_text.splitlines()) == 6  # the file stays JSON
    json.loads(file_text.splitlines()[0])
