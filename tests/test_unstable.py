"""Unstable (flickering) pixels: found in the darks of a set, bad in the mask; warm ones not."""

import numpy as np
import pytest
from astropy.io import fits

from reduxd import maskbits
from reduxd.calsets import make_masters
from reduxd.products.fitsout import read_master, write_master
from reduxd.steps import masters as M
from reduxd.steps.unstable import unstable_pixels

SHAPE = (120, 160)
FLICKER = [(10, 20), (50, 60), (100, 140)]  # random telegraph noise, 150 ADU steps
WARM = [(30, 30), (80, 100)]  # steady dark current, 500 and 5000 ADU in 60 s


def _darks(tmp_path, n=6, *, seed=3):
    """Paths of ``n`` 60 s darks (uint16 FITS): read noise 6 ADU, flickering and warm pixels."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        data = 300 + rng.normal(0, 6.0, SHAPE)
        for k, (y, x) in enumerate(FLICKER):
            data[y, x] += 150.0 * ((i + k) % 2)  # on in every other frame
        for (y, x), level in zip(WARM, (500.0, 5000.0), strict=True):
            data[y, x] += rng.poisson(level)  # Poisson noise of the dark current
        header = fits.Header({"IMAGETYP": "DARK", "EXPTIME": 60.0, "INSTRUME": "cam"})
        paths.append(tmp_path / f"dark_{i}.fits")
        fits.PrimaryHDU(np.round(data).astype(np.uint16), header).writeto(paths[-1])
    return paths


def test_flickering_pixels_are_found_and_warm_ones_not(tmp_path):
    frames = M.load_frames(_darks(tmp_path), max_bytes=10**8)
    mask = unstable_pixels([lay for _info, lay in frames])
    assert sorted(map(tuple, np.argwhere(mask).tolist())) == FLICKER
    # too few darks cannot tell a flicker from a cosmic ray
    assert unstable_pixels([lay for _info, lay in frames[:3]]) is None


def test_unstable_pixels_travel_with_the_master_into_the_bad_pixel_mask(tmp_path):
    frames = M.load_frames(_darks(tmp_path), max_bytes=10**8)
    opts = {"method": "median", "clip_sigma": 3.0, "max_memory_mb": 256}
    (dark,) = make_masters("dark", frames, opts=opts)
    assert dict((k, v) for k, v, _c in dark.cards)["RDXNUNST"] == len(FLICKER)
    assert dict((k, v) for k, v, _c in dark.cards)["RDXRNADU"] == pytest.approx(6.0, rel=0.1)
    path = write_master(tmp_path / "master_dark.fits", dark)
    back = read_master(path, max_bytes=10**8)
    assert np.array_equal(back.unstable, dark.unstable)
    flat = np.ones(SHAPE, np.float32)
    bad = M.bad_pixel_mask(flat=flat, hot_sigma=0, low_flat=0.5, unstable=back.unstable)
    assert sorted(map(tuple, np.argwhere(bad == maskbits.BAD).tolist())) == FLICKER


def test_arcsat_darks_have_few_unstable_pixels(arcsat_dir):
    frames = M.load_frames(sorted(arcsat_dir.glob("Dark_BIN1_*.fits")), max_bytes=10**9)
    mask = unstable_pixels([lay for _info, lay in frames])
    print(f"ARCSAT 60 s darks: {int(mask.sum())} unstable pixels of {mask.size}")
    assert mask.sum() / mask.size < 1e-4


def test_unstable_pixels_equal_the_frames_first_formula(tmp_path):
    """The frames-last computation gives the mask of the plain numpy formula, pixel for pixel."""
    frames = [lay for _info, lay in M.load_frames(_darks(tmp_path, n=7), max_bytes=10**8)]
    from reduxd.steps.gain import central_box, pair_read_noise

    boxes = [central_box(lay) for lay in frames]
    levels = [float(np.median(b)) for b in boxes]
    read_noise, _ = pair_read_noise([b - lv for b, lv in zip(boxes, levels, strict=True)])
    stack = np.stack([fits.getdata(lay.path).astype(np.float32) - np.float32(lv)
                      for lay, lv in zip(frames, levels, strict=True)])  # fmt: skip
    median = np.median(stack, axis=0)
    second = np.sort(np.abs(stack - median), axis=0)[-2]
    expected = second > 3.0 * np.sqrt(read_noise**2 + np.clip(median, 0, None))
    mask = unstable_pixels(frames, nsigma=3.0, band_rows=16)
    assert expected.sum() > len(FLICKER)  # noise pixels too at 3 sigma: a real comparison
    np.testing.assert_array_equal(mask, expected)


def test_second_deviation_equals_the_sorted_deviations_one_before_last():
    """From the columns' ends, the same value as sorting all deviations: ties, NaN, inf too."""
    from reduxd.steps.combine import plane_median
    from reduxd.steps.unstable import second_deviation

    rng = np.random.default_rng(3)
    for n in (4, 5, 10, 11):
        stack = rng.normal(100, 5, (n, 64, 32)).astype(np.float32)
        stack[:, :8] = np.round(stack[:, :8] / 10)  # ties
        stack[1, 8, 0] = np.nan
        stack[2, 9, 0] = np.inf
        stack[:, 9, 1] = np.inf
        stack[:2, 10, 0] = -np.inf
        median = np.median(stack, axis=0)
        expected = np.sort(np.abs(stack - median), axis=0)[-2]
        np.testing.assert_array_equal(second_deviation(np.sort(stack, axis=0), median), expected)
        ends = stack.copy()
        np.testing.assert_array_equal(plane_median(ends, ranks=(0, 1, -2, -1)), median)
        np.testing.assert_array_equal(second_deviation(ends, median), expected)
