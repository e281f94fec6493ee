"""A small simulated night staged outside any watched tree (test helper)."""

import json

from reduxd.simulate import NightSpec, simulate_night

CAMERA = NightSpec().camera_toml()  # the simulated camera's config entry


def stage_night(tmp, *, flats_last=False, spec=None):
    """Simulate a small night outside the watched tree.

    Returns ``(stage, relpaths in time order, truth)``.
    """
    stage = tmp / "stage"
    simulate_night(stage, spec or NightSpec.small(), flats_last=flats_last, workers=1)
    truth = json.loads((stage / "truth.json").read_text())
    rels = sorted(
        (p.relative_to(stage).as_posix() for p in stage.rglob("*.fits")),
        key=lambda r: (stage / r).stat().st_mtime_ns,
    )
    return stage, rels, truth
