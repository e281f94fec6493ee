"""Quicklook PNGs: finder chart and radial-profile plot, written atomically."""

import numpy as np
from astropy.table import Table
from matplotlib.image import imread

from reduxd.products.quicklook import write_profile_plot, write_quicklook
from reduxd.steps.photometry import PhotParams, photometer
from reduxd.synth import add_ccd_noise, render_stars

PNG = b"\x89PNG\r\n\x1a\n"


def frame():
    rng = np.random.default_rng(41)
    x, y = rng.uniform(20, 280, (2, 12))
    img = render_stars((200, 300), x, y, 10 ** rng.uniform(4, 5.5, 12), 3.0) + 100.0
    return add_ccd_noise(img, read_noise_e=5.0, rng=rng).astype(np.float32)


def test_finder_chart_is_a_png_with_circles(tmp_path):
    data = frame()
    result = photometer(data, exptime=10.0, params=PhotParams(radius=6, keep_profiles=True))
    before = data.copy()
    mask = np.zeros(data.shape, np.uint8)
    mask[10:12, 10:40] = 2
    out = write_quicklook(tmp_path / "ql" / "frame.png", data, result.table, title="t", mask=mask)
    assert out.read_bytes()[:8] == PNG
    image = imread(out)
    assert image.shape[0] > 300 and image.shape[1] >= 800  # small frames shown enlarged
    # circles are drawn in green (clean) or orange (flagged): some strongly coloured pixels
    rgb = image[..., :3]
    assert np.count_nonzero((rgb[..., 1] > 0.6) & (rgb[..., 2] < 0.3)) > 100
    assert np.array_equal(data, before)
    assert [p.name for p in out.parent.iterdir()] == ["frame.png"]  # no temp file left


def test_quicklook_replaces_an_existing_file(tmp_path):
    path = tmp_path / "frame.png"
    path.write_bytes(b"old")
    table = Table({"star_id": [], "x": [], "y": [], "mag_inst": [], "flags": []})
    write_quicklook(path, frame(), table)
    assert path.read_bytes()[:8] == PNG
    assert (path.stat().st_mode & 0o777) == 0o644


def test_profile_plot_of_a_measured_star(tmp_path):
    result = photometer(frame(), exptime=10.0, params=PhotParams(radius=6, keep_profiles=True))
    assert result.profiles and "star_id" in result.profiles[0]
    out = write_profile_plot(tmp_path / "p.png", result.profiles[0], radius=6)
    assert out.read_bytes()[:8] == PNG
