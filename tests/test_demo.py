"""The demo: a transit across the middle of the sequence, visible in the light curve;
finder charts that mark the target and the comparisons; the list of files to open.

The night is simulated with the simulator arguments of ``make demo`` (read from the
Makefile), smaller, and reduced by the real ``reduxd reduce`` in a subprocess.
"""

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from matplotlib.image import imread
from test_batch import ok, run_reduxd

from reduxd.demo import files_to_open
from reduxd.products.labels import place_labels
from reduxd.products.quicklook import write_quicklook

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
DEMO_ONLY = {"--realtime", "--cadence"}  # delivery in real time: not needed here


def demo_simulate_args():
    """The ``reduxd simulate`` arguments of ``make demo``, without real-time delivery."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    line = re.search(r"\$\(BIN\)/reduxd simulate demo/night ([^&]*)&", text).group(1)
    words, out = shlex.split(line), []
    skip = False
    for word in words:
        if skip:
            skip = False
        elif word in DEMO_ONLY:
            skip = word == "--cadence"
        else:
            out.append(word)
    return out


@pytest.fixture(scope="module")
def demo_night(tmp_path_factory):
    """The demo's night, reduced with the demo's config (its target is the transiting star)."""
    folder = tmp_path_factory.mktemp("demo")
    ok(run_reduxd(["simulate", "night", *demo_simulate_args()], cwd=folder))
    truth = json.loads((folder / "night" / "truth.json").read_text())
    config = MAKEFILE.with_name("config.toml").read_text()
    config = config.replace('"demo/night"', '"night"').replace('"demo/analysis"', '"analysis"')
    (folder / "demo.toml").write_text(config)
    ok(run_reduxd("reduce --config demo.toml --jobs 2", cwd=folder))
    return folder, truth


@pytest.mark.slow
def test_transit_spans_the_middle_of_each_filter(demo_night):
    _folder, truth = demo_night
    for filt in ("V", "R"):
        flux = [lt["transit_rel_flux"] for lt in truth["lights"] if f"_{filt}_" in lt["path"]]
        dipped = np.flatnonzero(np.asarray(flux) < 0.999)
        assert len(dipped) >= len(flux) // 3, flux  # not 3 of 12 at one end
        assert dipped.min() > 0 and dipped.max() < len(flux) - 1  # out of transit at both ends
        assert abs((dipped.min() + dipped.max()) / 2 - (len(flux) - 1) / 2) <= 1.5


@pytest.mark.slow
def test_transit_visible_in_the_light_curve(demo_night):
    folder, truth = demo_night
    lc = Table.read(folder / "analysis" / "lightcurve_pg2213_V.ecsv", format="ascii.ecsv")
    flux = np.array([lt["transit_rel_flux"] for lt in truth["lights"] if "_V_" in lt["path"]])
    dmag = np.asarray(lc["dmag"], dtype=float)
    inside, outside = dmag[flux < 0.96], dmag[flux > 0.999]
    depth = np.mean(inside) - np.mean(outside)
    noise = np.std(outside) / np.sqrt(len(outside)) + np.std(inside) / np.sqrt(len(inside))
    assert depth > 5 * noise and depth > 0.03, (depth, noise)


@pytest.mark.slow
def test_files_to_open(demo_night):
    folder, _truth = demo_night
    items = dict(files_to_open(folder / "analysis"))
    assert items["light curve"].endswith(".png")
    assert items["finder chart of a stack"].endswith(".png")
    assert items["last reduced light in DS9"].startswith("ds9 ")
    proc = ok(run_reduxd("status --state analysis/reduxd.sqlite", cwd=folder))
    assert "frames:" in proc.stdout


def test_finder_chart_marks_target_and_comparisons(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.normal(100.0, 5.0, (200, 300)).astype(np.float32)
    table = Table(
        {
            "star_id": [1, 2, 3],
            "x": [50.0, 150.0, 250.0],
            "y": [100.0] * 3,
            "mag_inst": [-8.0, -9.0, -7.0],
            "flags": [0] * 3,
            "fwhm": [3.0] * 3,
        }
    )
    out = write_quicklook(tmp_path / "q.png", data, table, roles={1: "target", 2: "comparison"})
    rgb = (imread(out)[..., :3] * 255).round().astype(int)
    magenta = (rgb[..., 0] > 200) & (rgb[..., 1] < 60) & (rgb[..., 2] > 200)
    blue = (rgb[..., 0] < 60) & (rgb[..., 1] > 120) & (rgb[..., 2] > 200)
    assert magenta.sum() > 50 and blue.sum() > 50  # circles, labels and the legend


def test_labels_never_overlap_in_a_crowded_field():
    rng = np.random.default_rng(2)
    xy = rng.uniform(0, 200, (80, 2))
    stars = [(i, x, y, f"{i} -9.99") for i, (x, y) in enumerate(xy)]
    boxes = list(place_labels(stars, radius=4, char_width=6, height=12).values())
    assert len(boxes) > 20
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
        for _k, x, y, _t in stars:  # no label over a star's circle
            nx, ny = min(max(x, a[0]), a[2]), min(max(y, a[1]), a[3])
            assert (nx - x) ** 2 + (ny - y) ** 2 >= 4**2 - 1e-9
