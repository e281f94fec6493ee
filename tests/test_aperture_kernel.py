"""The compiled exact-aperture kernel (steps/_apertures.pyx via measure.circle_pass)
against photutils' ``method="exact"`` and analytic areas."""

import subprocess
import sys

import numpy as np
import pytest

from reduxd import phot_columns
from reduxd.steps.measure import Flag, aperture_sums, circle_pass, circle_sums

RNG = np.random.default_rng(2026)
NY, NX = 47, 61
RADII = [2.7, 0.5, 9.9, 20.0, 1.3, 5.0]  # not sorted: the kernel sorts and puts them back


def _positions(n=120):
    """Random sub-pixel centres on, near, across and wholly off every edge, plus exact
    pixel centres and pixel corners (where the geometry's cases meet)."""
    x = RNG.uniform(-25.0, NX + 24.0, n)
    y = RNG.uniform(-25.0, NY + 24.0, n)
    edges_x = [-0.5, -3.2, 0.1, NX - 0.5, NX + 2.2, NX - 1.0, 30.0, 30.5, 12.0, -21.0, NX + 20.6]
    edges_y = [-0.5, 20.0, -2.9, NY - 0.5, 10.5, NY + 3.1, -0.4, 22.0, NY - 1.0, -21.0, 3.0]
    return np.r_[x, edges_x], np.r_[y, edges_y]


def _photutils(img, x, y, radii, mask=None):
    sums = np.column_stack([phot_columns.aperture_sums(img, x, y, r, mask=mask) for r in radii])
    areas = np.column_stack([phot_columns.aperture_areas(img, x, y, r, mask=mask) for r in radii])
    return sums, areas


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f4"])
def test_sums_and_areas_equal_photutils_exact_at_every_radius(dtype):
    img = (100.0 + RNG.normal(0.0, 10.0, (NY, NX))).astype(dtype)
    img.flags.writeable = False
    x, y = _positions()
    sums, areas, bad = circle_pass(img, x, y, RADII)
    ref_sums, ref_areas = _photutils(img.astype(img.dtype.newbyteorder("=")), x, y, RADII)
    off = np.isnan(ref_sums)
    assert off.any() and (~off).any()  # some apertures wholly off the frame, most not
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-10, atol=0)  # NaN where photutils NaN
    np.testing.assert_allclose(areas, ref_areas, rtol=1e-10, atol=0)
    assert np.array_equal(bad, off)  # no non-finite pixel: bad only off the frame


def test_non_finite_pixels_are_left_out_of_sums_and_areas_and_reported():
    img = (50.0 + RNG.normal(0.0, 5.0, (NY, NX))).astype(np.float32)
    nan_y, nan_x = RNG.integers(0, NY, 25), RNG.integers(0, NX, 25)
    img[nan_y, nan_x] = np.nan
    img[5, 7] = np.inf
    x, y = _positions()
    sums, areas, bad = circle_pass(img, x, y, RADII)
    bad_pixels = ~np.isfinite(img)
    ref_sums, ref_areas = _photutils(img, x, y, RADII, mask=bad_pixels)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-10, atol=0)
    np.testing.assert_allclose(areas, ref_areas, rtol=1e-10, atol=0)
    # bad: a non-finite pixel overlaps the aperture (its exact overlap is > 0), or off frame
    overlap, _ = _photutils(bad_pixels.astype(np.float64), x, y, RADII)
    expected = np.isnan(overlap) | (overlap > 0)
    assert expected.any() and (~expected).any()
    assert np.array_equal(bad, expected)
    assert np.array_equal(np.isnan(circle_sums(img, x, y, RADII)), expected)


def test_bad_pixel_flag_comes_from_the_first_radius_and_sums_skip_the_pixel():
    img = np.full((40, 40), 3.0, np.float32)
    img[20, 26] = np.nan  # 6 px right of the star: outside radius 4, inside radius 8
    x, y = np.array([20.0, 20.0]), np.array([20.0, 8.0])
    sums, areas, bad = aperture_sums(img, x, y, [4.0, 8.0])
    assert bad.tolist() == [False, False]
    sums, areas, bad = aperture_sums(img, x, y, [8.0, 4.0])
    assert bad.tolist() == [True, False]
    assert sums[0, 0] == pytest.approx(3.0 * (np.pi * 64 - 1.0), rel=1e-12)
    assert areas[0, 0] == pytest.approx(np.pi * 64 - 1.0, rel=1e-12)
    assert areas[1, 0] == np.pi * 64  # a clean aperture on the frame: pi r^2 as before
    assert int(Flag.BAD_PIXEL) == 4


def test_constant_image_gives_pi_r_squared_and_a_quarter_on_a_corner():
    level = 7.25
    img = np.full((NY, NX), level, np.float32)
    radii = np.array([0.5, 0.77, 1.0, 2.5, 3.3, 7.0, 10.49, 11.0])
    x = RNG.uniform(12.0, NX - 13.0, 40)
    y = RNG.uniform(12.0, NY - 13.0, 40)
    sums, areas, _ = circle_pass(img, x, y, radii)
    np.testing.assert_allclose(areas, np.broadcast_to(np.pi * radii**2, areas.shape), rtol=1e-12)
    np.testing.assert_allclose(sums, level * areas, rtol=1e-12)
    # centred on a corner of the frame: a quarter of the circle is on the frame
    corners_x = np.array([-0.5, NX - 0.5, -0.5, NX - 0.5])
    corners_y = np.array([-0.5, -0.5, NY - 0.5, NY - 0.5])
    sums, areas, _ = circle_pass(img, corners_x, corners_y, radii)
    quarter = np.broadcast_to(np.pi * radii**2 / 4, areas.shape)
    np.testing.assert_allclose(areas, quarter, rtol=1e-12)
    np.testing.assert_allclose(sums, level * quarter, rtol=1e-12)


def test_many_radii_in_one_call_equal_one_radius_at_a_time():
    img = RNG.normal(200.0, 30.0, (NY, NX)).astype(np.float32)
    img[RNG.integers(0, NY, 10), RNG.integers(0, NX, 10)] = np.nan
    x, y = _positions(60)
    radii = np.r_[np.linspace(0.5, 20.0, 17), 3.0, 3.0]  # a repeated radius too
    sums, areas, bad = circle_pass(img, x, y, radii)
    for k, r in enumerate(radii):
        one_sums, one_areas, one_bad = circle_pass(img, x, y, [r])
        np.testing.assert_allclose(sums[:, k], one_sums[:, 0], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(areas[:, k], one_areas[:, 0], rtol=1e-12, atol=1e-12)
        assert np.array_equal(bad[:, k], one_bad[:, 0])


def test_arguments_are_checked():
    img = np.ones((10, 10))
    with pytest.raises(ValueError, match="2-D image"):
        circle_pass(np.ones(10), [1.0], [1.0], [2.0])
    with pytest.raises(ValueError, match="radii"):
        circle_pass(img, [1.0], [1.0], [np.nan])
    with pytest.raises(ValueError, match="x and y"):
        circle_pass(img, [1.0, 2.0], [1.0], [2.0])
    sums, areas, bad = circle_pass(img.astype(np.int16), [], [], [1.0, 2.0])
    assert sums.shape == areas.shape == bad.shape == (0, 2)


def test_the_photometry_step_does_not_import_sep():
    # sep is a test/benchmark dependency only (pyproject.toml): the kernel replaced it
    code = (
        "import sys, numpy as np; from reduxd.steps import photometry; "
        "from reduxd.steps.measure import aperture_sums; "
        "aperture_sums(np.ones((9, 9)), [4.0], [4.0], [2.0, 3.0]); print('sep' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
