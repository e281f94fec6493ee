"""No flag silently ignored: the run's plan line, unused flags, no master for a skipped step.

``reduxd reduce`` runs in a subprocess on a copy of the small simulated night.
"""

import json
import shutil
from pathlib import Path

import pytest
from test_batch import ok, run_reduxd

from reduxd.simulate import NightSpec, simulate_night

BASE = "reduce -D pg2213 -C calibration -O analysis"


@pytest.fixture(scope="module")
def small_night_plan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plan") / "night"
    simulate_night(folder, NightSpec.small())
    return folder


@pytest.fixture
def night(small_night_plan, tmp_path):
    return Path(shutil.copytree(small_night_plan, tmp_path / "night"))


def events(stdout, name):
    out = []
    for line in stdout.splitlines():
        if line.startswith("{") and f'"event": "{name}"' in line:
            out.append(json.loads(line))
    return out


def masters(night):
    return sorted(p.name for p in (night / "analysis" / "masters").rglob("*.fits"))


def test_plan_line_and_unused_length(night):
    proc = ok(run_reduxd(f"{BASE} -R 12 -L 25 -x R", cwd=night))
    (plan,) = events(proc.stdout, "run_plan")
    assert plan["aperture"] == "radius 12 px"
    assert plan["sky"].startswith("annulus: ") and "default" in plan["sky"]
    assert plan["calibration"].startswith("bias+dark+flat")
    assert plan["skipped"] == "lights and flats in R (-x)"
    (unused,) = events(proc.stdout, "flag_unused")
    assert unused["flag"] == "-L 25" and "radial" in unused["reason"]


def test_no_master_for_excluded_filter_or_skipped_step(night):
    proc = ok(run_reduxd(f"{BASE} -x R", cwd=night))
    names = masters(night)
    assert any(n.startswith("flat_") and n.endswith("_V.fits") for n in names)
    assert not any(n.startswith("flat_") and n.endswith("_R.fits") for n in names)
    skipped = events(proc.stdout, "calibration_skipped")
    assert [s["reason"] for s in skipped] == ["filter R excluded (-x)"]  # logged once
    ok(run_reduxd(BASE, cwd=night))  # a later run without -x builds it and reduces R
    assert any(n.startswith("flat_") and n.endswith("_R.fits") for n in masters(night))


def test_no_flat_and_no_dark_build_no_such_master(night):
    ok(run_reduxd(f"{BASE} --no-flat --no-dark", cwd=night))
    names = masters(night)
    assert not any(n.startswith(("flat_", "dark_")) for n in names), names
    assert any(n.startswith("bias_") for n in names)
