"""Deblending stops at the first level with fewer than two of the region's local maxima
above it, and regions with one local maximum are placed all at once: the same stars, bit
for bit, as the level-by-level, region-by-region search they replaced."""

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from reduxd.fitsio import read_frame
from reduxd.steps import detect
from reduxd.synth import render_stars

DATA = Path(os.environ.get("REDUXD_TEST_DATA", Path(__file__).parents[1] / "../shared/data"))


def segment_peaks_every_level(det, region, thresh, contrast, min_pixels, nlevels=32, **_):
    """``detect._segment_peaks`` before the early stop: every level is labelled."""
    values = det[region]
    peak = values.max()
    if peak <= thresh:
        return [np.unravel_index(np.argmax(np.where(region, det, -np.inf)), det.shape)], False
    levels = thresh * (peak / thresh) ** (np.arange(1, nlevels) / nlevels)
    leaves = split_every_level(det, region, levels, 0, contrast * values.sum(), min_pixels)
    return leaves, len(leaves) > 1


def split_every_level(det, region, levels, start, min_flux, min_pixels):
    eight = np.ones((3, 3), bool)
    for k in range(start, levels.size):
        labels, n = ndimage.label(region & (det > levels[k]), structure=eight)
        if n < 2:
            continue
        index = np.arange(1, n + 1)
        npix = ndimage.sum_labels(np.ones_like(det), labels, index)
        flux = ndimage.sum_labels(det, labels, index)
        strong = index[(npix >= min_pixels) & (flux >= min_flux)]
        if strong.size >= 2:
            leaves = []
            for lab in strong:
                leaves += split_every_level(det, labels == lab, levels, k + 1, min_flux, min_pixels)
            return leaves
    return [np.unravel_index(np.argmax(np.where(region, det, -np.inf)), det.shape)]


def candidates_region_by_region(det, thresh, *, min_pixels, contrast):
    """``detect._candidates`` as it was: a maximum filter and a peak per region."""
    labels, _ = ndimage.label(det > thresh, structure=np.ones((3, 3), bool))
    xs, ys, blend, size = [], [], [], []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[sl] == lab
        if np.count_nonzero(region) < min_pixels:
            continue
        sub = det[sl]
        maxima = (sub == ndimage.maximum_filter(sub, size=3)) & region
        if np.count_nonzero(maxima) > 1:
            leaves, split = detect._segment_peaks(sub, region, thresh, contrast, min_pixels,
                                                  maxima=maxima)  # fmt: skip
        else:
            best = np.argmax(np.where(region, sub, -np.inf))
            leaves, split = [np.unravel_index(best, sub.shape)], False
        for jy, jx in leaves:
            ys.append(sl[0].start + jy)
            xs.append(sl[1].start + jx)
            blend.append(split)
            size.append(2 * np.sqrt(np.count_nonzero(region) / np.pi))
    return np.array(xs, int), np.array(ys, int), np.array(blend, bool), np.array(size)


def crowded(seed, n=400, shape=(300, 300)):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, shape[1], (2, n))
    image = render_stars(shape, xy[0], xy[1], rng.uniform(200, 2e4, n), rng.uniform(2, 6))
    return (image + 100 + rng.normal(0, 5, shape)).astype(np.float32)


def assert_same_stars(image, monkeypatch, mask=None):
    fast = detect.detect_stars(image, mask=mask)
    with monkeypatch.context() as m:
        m.setattr(detect, "_segment_peaks", segment_peaks_every_level)
        slow = detect.detect_stars(image, mask=mask)
    assert fast.x.size > 0 and fast.blend.any()  # blends were split
    for name, value in vars(fast).items():
        np.testing.assert_array_equal(value, getattr(slow, name), err_msg=name)


@pytest.mark.parametrize("seed", range(4))
def test_crowded_fields_give_the_same_stars(seed, monkeypatch):
    assert_same_stars(crowded(seed), monkeypatch)


def saturated_at_the_edges(seed):
    """A crowded field with flat-topped (saturated) stars, some cut by the frame's edges."""
    image = crowded(seed)
    rng = np.random.default_rng(seed)
    for x, y in [(0.0, 150.0), (299.0, 40.0), (120.0, 0.0), (60.0, 299.0), (150.0, 150.0)]:
        image += render_stars(image.shape, [x], [y], [rng.uniform(2e5, 1e6)], 4.0)
    return np.minimum(image, np.float32(6e4))


@pytest.mark.parametrize("seed", range(3))
def test_regions_placed_at_once_give_the_peaks_of_the_region_by_region_search(seed):
    image = saturated_at_the_edges(seed)
    det = (image - np.median(image)) / 5.0
    for thresh in (3.0, 5.0, 20.0):
        got = detect._candidates(det, thresh, min_pixels=5, contrast=0.005)
        want = candidates_region_by_region(det, thresh, min_pixels=5, contrast=0.005)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    assert got[2].any() and (~got[2]).sum() > 50  # both kinds of region were there


@pytest.mark.parametrize("image", ["saturated", "real"])
def test_stars_found_with_regions_placed_at_once_are_those_of_the_old_search(image, monkeypatch):
    if image == "saturated":
        data = saturated_at_the_edges(7)
    else:
        frames = sorted((DATA / "arcsat-20250601-xo1").glob("*.fits"))
        if not frames:
            pytest.skip(f"no real frames under {DATA} (set REDUXD_TEST_DATA)")
        data = read_frame(frames[0], max_bytes=1 << 28).data
    fast = detect.detect_stars(data)
    monkeypatch.setattr(detect, "_candidates", candidates_region_by_region)
    slow = detect.detect_stars(data)
    assert fast.x.size > 0
    for name, value in vars(fast).items():
        np.testing.assert_array_equal(value, getattr(slow, name), err_msg=name)


def test_a_real_crowded_light_gives_the_same_stars(monkeypatch):
    frames = sorted((DATA / "arcsat-20250601-xo1").glob("*.fits"))
    if not frames:
        pytest.skip(f"no real frames under {DATA} (set REDUXD_TEST_DATA)")
    assert_same_stars(read_frame(frames[0], max_bytes=1 << 28).data, monkeypatch)


def test_a_noise_bump_on_a_star_is_not_split_and_costs_one_labelling(monkeypatch):
    """A star with a faint bump in its wing: the bump is too weak to be a part; above its
    level one maximum is left, so the search stops there instead of labelling every level."""
    image = render_stars((40, 40), [20.0], [20.0], [5e4], 3.0) + 10.0
    image[20, 26] += 40.0  # a local maximum in the wing
    det = image.astype(np.float64)
    region = det > 15.0
    maxima = (det == ndimage.maximum_filter(det, size=3)) & region
    assert np.count_nonzero(maxima) == 2
    calls = []
    real = ndimage.label
    monkeypatch.setattr(ndimage, "label", lambda *a, **k: calls.append(1) or real(*a, **k))
    leaves, split = detect._segment_peaks(det, region, 15.0, 0.005, 5, maxima=maxima)
    assert (leaves, split) == ([(20, 20)], False)
    stops_at = len(calls)
    calls.clear()
    assert segment_peaks_every_level(det, region, 15.0, 0.005, 5) == (leaves, split)
    assert stops_at < len(calls) == 31  # every level labelled before
