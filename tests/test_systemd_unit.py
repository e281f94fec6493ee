"""The shipped systemd unit: key directives, and `systemd-analyze verify` is silent on it."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "reduxd.service"
ANALYZE = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None
)
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze not installed")

EXPECTED = {
    "Unit": {"StartLimitIntervalSec": "0"},
    "Service": {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/reduxd/.venv/bin/reduxd watch --config /etc/reduxd/config.toml"
        " --root /data/sharpcap --outdir /srv/reduxd/analysis"
        " --state /var/lib/reduxd/reduxd.sqlite",
        "WatchdogSec": "60",
        "Restart": "on-failure",
        "RestartSec": "30",
        "TimeoutStopSec": "60",
        "KillSignal": "SIGTERM",
        "User": "reduxd",
        "Group": "reduxd",
        "ProtectSystem": "strict",
        "ReadOnlyPaths": "-/data/sharpcap",
        "ReadWritePaths": "/var/lib/reduxd /srv/reduxd/analysis",
        "StateDirectory": "reduxd",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "IPAddressAllow": "localhost",
        "IPAddressDeny": "any",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "UMask": "0027",
    },
    "Install": {"WantedBy": "multi-user.target"},
}


def _directives():
    """{section: {key: [values]}} (systemd keys may repeat)."""
    found, section = {}, None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
            found[section] = {}
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"not a directive: {line!r}"
        found[section].setdefault(key.strip(), []).append(value.strip())
    return found


def test_key_directives_present():
    found = _directives()
    for section, keys in EXPECTED.items():
        for key, value in keys.items():
            assert found[section].get(key) == [value], (section, key)
    env = found["Service"]["Environment"]
    assert "PYTHONUNBUFFERED=1" in env
    assert "StartLimitIntervalSec" not in found["Service"]  # belongs to [Unit]


def test_every_block_is_commented():
    text = UNIT.read_text()
    for section in ("[Unit]", "[Service]", "[Install]"):
        assert section in text
    blocks = re.split(r"\n# --- ", text)
    assert len(blocks) >= 5
    assert "systemctl enable" in text and "useradd" in text  # how to install


def _verify(unit_path):
    out = subprocess.run(
        [ANALYZE, "verify", "--man=no", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, (out.stdout + out.stderr).strip()


@needs_analyze
def test_systemd_analyze_verify_is_silent(tmp_path):
    # ExecStart must name an existing executable; the rest is the shipped unit.
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -c pass", UNIT.read_text())
    unit = tmp_path / "reduxd.service"
    unit.write_text(text)
    rc, output = _verify(unit)
    assert (rc, output) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_catches_mistakes(tmp_path):
    # the check above can fail: a misspelt key is reported
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -c pass", UNIT.read_text())
    unit = tmp_path / "reduxd.service"
    unit.write_text(text.replace("WatchdogSec=60", "WatchDogSec=60"))
    _rc, output = _verify(unit)
    assert "Unknown key" in output and "WatchDogSec" in output


@needs_analyze
def test_shipped_unit_only_lacks_the_installed_binary():
    rc, output = _verify(UNIT)
    lines = [line for line in output.splitlines() if line.strip()]
    if Path("/opt/reduxd/.venv/bin/reduxd").exists():
        assert (rc, lines) == (0, [])
    else:
        assert len(lines) == 1 and "/opt/reduxd/.venv/bin/reduxd is not executable" in lines[0]


@needs_analyze
def test_security_exposure_stays_low(tmp_path):
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -c pass", UNIT.read_text())
    unit = tmp_path / "reduxd.service"
    unit.write_text(text)
    out = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for reduxd.service: ([0-9.]+)", out.stdout)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {out.stderr[:200]}")
    assert float(m.group(1)) <= 1.5
