"""The README's install steps for the service, checked where no clean container exists.

The steps' order and their agreement with the unit's own comment are checked as text;
every ``install`` line is run into a scratch root (owners left out), and
``systemd-analyze verify`` runs on the unit installed there. ``useradd``, ``usermod``
and ``systemctl`` would change this machine, so they are checked only for order.
"""

import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from reduxd.config import load_config

REPO = Path(__file__).resolve().parents[1]
SRC = "/opt/reduxd/src"  # where the README checks the repository out
ANALYZE = shutil.which("systemd-analyze")


def readme_steps():
    text = (REPO / "README.md").read_text()
    section = text.split("### Installing the service (admin)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return _commands(block.splitlines())


def unit_steps():
    lines = (REPO / "systemd" / "reduxd.service").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Install"))
    steps = []
    for line in lines[start + 1 :]:
        if not line.startswith("#   "):
            break
        steps.append(line[4:])
    return _commands(steps)


def _commands(lines):
    """Shell commands, comments dropped, ``a && b`` split."""
    out = []
    for line in lines:
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def _index(steps, prefix):
    found = [i for i, step in enumerate(steps) if step.startswith(prefix)]
    assert found, f"no step starting with {prefix!r} in {steps}"
    return found[0]


@pytest.mark.parametrize("steps", [readme_steps(), unit_steps()], ids=["README", "unit"])
def test_steps_in_the_right_order(steps):
    useradd = _index(steps, "useradd --system")
    raw_group = _index(steps, "usermod -aG")
    verify = _index(steps, "systemd-analyze verify /etc/systemd/system/reduxd.service")
    enable = _index(steps, "systemctl enable --now reduxd")
    copy_unit = _index(steps, "install -m 0644")
    assert useradd < raw_group < enable
    assert copy_unit < verify < enable  # verified before it is started


def test_readme_and_unit_install_the_same_way():
    readme, unit = readme_steps(), unit_steps()
    for prefix in ("python3 -m venv", "/opt/reduxd/.venv/bin/pip install", "install -D"):
        assert readme[_index(readme, prefix)] == unit[_index(unit, prefix)]
    pip = readme[_index(readme, "/opt/reduxd/.venv/bin/pip install")]
    assert pip.split()[-1] == SRC
    config = readme[_index(readme, "install -D")]
    assert "config.example.toml" in config and not config.split()[-2].endswith("/config.toml")


def test_installed_config_has_no_demo_target_and_the_units_folders():
    config = load_config(REPO / "systemd" / "config.example.toml")
    assert config.lightcurve.target == ()
    unit = (REPO / "systemd" / "reduxd.service").read_text()
    exec_start = re.search(r"(?m)^ExecStart=(.*)$", unit).group(1).split()
    assert exec_start[exec_start.index("--root") + 1] in config.paths.data
    assert exec_start[exec_start.index("--outdir") + 1] == config.paths.outdir
    assert exec_start[exec_start.index("--state") + 1] == config.paths.state_file


def _rerooted(command, root):
    """An ``install`` line with owners dropped and paths moved into ``root`` (or the repo)."""
    words, out, skip = shlex.split(command), [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("-o", "-g"):
            skip = True
        elif word.startswith(SRC + "/"):
            out.append(str(REPO / word[len(SRC) + 1 :]))
        elif word.startswith("/"):
            out.append(str(root) + word)
        else:
            out.append(word)
    return out


def test_install_lines_run_into_a_scratch_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)  # there on any systemd machine
    for step in readme_steps():
        if step.startswith("install "):
            done = subprocess.run(_rerooted(step, root), capture_output=True, text=True)
            assert done.returncode == 0, (step, done.stderr)
    paths = ("srv/reduxd/analysis", "etc/reduxd/config.toml", "etc/systemd/system/reduxd.service")
    mode = {p: stat.S_IMODE((root / p).stat().st_mode) for p in paths}
    assert mode == {
        "srv/reduxd/analysis": 0o750,
        "etc/reduxd/config.toml": 0o640,
        "etc/systemd/system/reduxd.service": 0o644,
    }
    assert load_config(root / "etc/reduxd/config.toml").lightcurve.target == ()
    # the installed config finds the service's ledger, or says where it looked
    config = str(root / "etc/reduxd/config.toml")
    proc = subprocess.run(
        [sys.executable, "-m", "reduxd", "status", "--config", config],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "/var/lib/reduxd/reduxd.sqlite ([paths] state of" in proc.stderr
    if ANALYZE is None:
        pytest.skip("systemd-analyze not installed")
    unit = root / "etc/systemd/system/reduxd.service"
    text = re.sub(r"(?m)^ExecStart=.*$", f"ExecStart={sys.executable} -c pass", unit.read_text())
    unit.write_text(text)  # the venv's reduxd is not installed at /opt here
    verify = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
