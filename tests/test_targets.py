"""Per-field targets ([[lightcurve.targets]]) by [x, y] or RA/Dec, and the console's target_mag."""

import numpy as np
import pytest
from astropy.io import fits
from test_lightcurve import COMPS, FLAGGED, TARGET, make_rows

from reduxd.config import load_config
from reduxd.errors import ConfigError, ReduxdError
from reduxd.products import lightcurve as lcmod
from reduxd.reduce import target_pixel

CONFIG = """
[lightcurve]
target = [3]
[[lightcurve.targets]]
object = "XO1-b"
radec = [240.549333, 28.169556]
[[lightcurve.targets]]
object = "M 31"
position = [101.0, 99.0]
comparisons = [[2], [4]]
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "targets.toml"
    path.write_text(CONFIG)
    return load_config(path)


def test_per_field_target_wins_over_the_global_one(config):
    lc = config.lightcurve
    assert lcmod.field_target(lc, "m 31 ") == ([101.0, 99.0], [[2.0], [4.0]], None)
    assert lcmod.field_target(lc, "XO1-b") == (None, [], [240.549333, 28.169556])
    assert lcmod.field_target(lc, "elsewhere") == ([3.0], [], None)  # the global target


def test_target_needs_one_position(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[lightcurve.targets]]\nobject = "x"\nposition = [1, 2]\nradec = [3, 4]\n')
    with pytest.raises(ConfigError, match="exactly one of position"):
        load_config(path)


def test_radec_target_uses_the_wcs_and_is_refused_without(config, arcsat_dir):
    first = sorted(arcsat_dir.glob("XO1-b_*.fits"))[0]
    xy = target_pixel(fits.getheader(first), config, "XO1-b")["target_xy"]
    assert xy == pytest.approx([525.6, 571.6], abs=1.5)  # the data README's position
    bare = fits.Header({"NAXIS": 2, "NAXIS1": 1024, "NAXIS2": 1024})
    assert target_pixel(bare, config, "XO1-b") == {"target_xy": None}
    assert target_pixel(bare, config, "M 31") == {}
    rows = make_rows()
    for row in rows:
        row["target_xy"] = None
    with pytest.raises(ReduxdError, match="has a WCS"):
        lcmod.build_lightcurve(lcmod.field_table(rows), radec=[1.0, 2.0])
    for row in rows:
        row["target_xy"] = [row["x"] + 0.5, row["y"]] if row["star_id"] == TARGET else None
        if row["star_id"] != TARGET:
            row["target_xy"] = [100.5, 100.0]  # every row of a frame carries the frame's value
    lc = lcmod.build_lightcurve(lcmod.field_table(rows), radec=[1.0, 2.0])
    assert lc.meta["target_id"] == TARGET


def test_console_target_mag_is_the_targets_dmag():
    rows = make_rows()
    lc = lcmod.build_lightcurve(lcmod.field_table(rows), target=[float(TARGET)])
    ensemble = lcmod.ensemble_of(lc)
    assert sorted(ensemble["ids"]) == sorted([*COMPS, FLAGGED])
    for j in (0, 7, 15):
        frame = [r for r in rows if r["file"] == lc["file"][j] and r["current"] == 1]
        assert lcmod.frame_dmag(frame, ensemble) == pytest.approx(lc["dmag"][j], abs=2e-4)
    frame = [r for r in rows if r["file"] == lc["file"][0] and r["star_id"] != TARGET]
    assert lcmod.frame_dmag(frame, ensemble) is None  # target not measured: nothing
    assert lcmod.ensemble_of(lcmod.build_lightcurve(lcmod.field_table(rows))) is None
    assert np.isfinite(lc["dmag"]).all()
