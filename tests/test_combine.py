"""Band-wise combination: equals numpy/astropy, stays within its memory limit."""

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip

from reduxd import fitsio
from reduxd.steps.combine import (
    band_rows,
    clipped_mean,
    combine_files,
    frame_median,
    median_in_place,
    plane_median,
)

SHAPE = (61, 47)


def _write(tmp_path, cube, *, bitpix16=True):
    paths = []
    for i, plane in enumerate(cube):
        path = tmp_path / f"f{i:02d}.fits"
        data = plane.astype(np.uint16) if bitpix16 else plane.astype(np.float32)
        fits.PrimaryHDU(data).writeto(path)
        paths.append(path)
    return paths


@pytest.fixture
def cube(rng):
    values = rng.normal(1000.0, 30.0, size=(7, *SHAPE)).round()
    values[2, 5, 5] = 60000.0  # a cosmic ray
    return values


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.mark.parametrize("nframes", [7, 6])
def test_median_equals_numpy(tmp_path, cube, nframes):
    paths = _write(tmp_path, cube[:nframes])
    out = combine_files(paths)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.median(cube[:nframes], axis=0).astype(np.float32))


def test_bands_and_threads_do_not_change_the_result(tmp_path, cube):
    paths = _write(tmp_path, cube)
    ref = np.median(cube, axis=0).astype(np.float32)
    for threads in (1, 2, 3):
        for mb in (0.05, 64):
            out = combine_files(paths, max_memory_mb=mb, threads=threads)
            np.testing.assert_array_equal(out, ref)


def test_accepts_layouts(tmp_path, cube):
    paths = _write(tmp_path, cube)
    layouts = [fitsio.probe(p, max_bytes=10**7) for p in paths]
    np.testing.assert_array_equal(combine_files(layouts), combine_files(paths))


def test_offsets_and_scale(tmp_path, cube):
    paths = _write(tmp_path, cube)
    n = len(paths)
    pattern = np.linspace(0, 50, SHAPE[0] * SHAPE[1]).reshape(SHAPE).astype(np.float32)
    times = np.arange(1.0, n + 1.0)
    scale = 1.0 / times
    expected = np.median([(cube[i] - pattern * times[i]) * scale[i] for i in range(n)], axis=0)

    def offsets(i, y0, y1):
        return pattern[y0:y1] * np.float32(times[i])

    out = combine_files(paths, offsets=offsets, scale=scale, max_memory_mb=0.05)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-3)
    as_arrays = combine_files(paths, offsets=[pattern * t for t in times], scale=scale)
    np.testing.assert_allclose(as_arrays, expected, rtol=1e-6, atol=1e-3)
    scalars = combine_files(paths, offsets=[100.0] * n)
    np.testing.assert_array_equal(scalars, np.median(cube, axis=0) - 100.0)


def test_inputs_are_not_modified(tmp_path, cube):
    paths = _write(tmp_path, cube)
    pattern = np.ones(SHAPE, np.float32)
    before = [p.read_bytes() for p in paths]
    combine_files(paths, offsets=[pattern] * len(paths))
    assert [p.read_bytes() for p in paths] == before
    np.testing.assert_array_equal(pattern, 1.0)


def test_sigma_clip_equals_astropy(tmp_path, cube):
    paths = _write(tmp_path, cube)
    out = combine_files(paths, method="sigma_clip", clip_sigma=2.5, max_memory_mb=0.05)
    ref = sigma_clip(cube, sigma=2.5, maxiters=5, axis=0, cenfunc="median", stdfunc="std")
    np.testing.assert_allclose(out, ref.mean(axis=0).filled(np.nan), rtol=1e-6)
    assert out[5, 5] < 1200  # the cosmic ray was clipped


def test_clipped_mean_keeps_a_value_in_every_lane():
    lane = np.array([[[5.0, 5.0, 5.0]], [[1.0, 2.0, 3.0]]], np.float32)
    np.testing.assert_allclose(clipped_mean(lane, clip_sigma=0.1), [[5.0], [2.0]])


def test_memory_stays_within_the_limit(tmp_path, rng):
    cube = rng.integers(0, 60000, size=(12, 300, 200))
    paths = _write(tmp_path, cube)
    layouts = [fitsio.probe(p, max_bytes=10**8) for p in paths]
    limit_mb = 1.0  # the result alone is 0.23 MB; the whole stack would be 2.9 MB
    for method in ("median", "sigma_clip"):
        tracemalloc.start()
        out = combine_files(layouts, method=method, max_memory_mb=limit_mb, threads=2)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= limit_mb * 2**20, f"{method}: peak {peak / 2**20:.2f} MB"
    np.testing.assert_array_equal(out.shape, (300, 200))


def test_band_rows_limits():
    assert band_rows((100, 100), 5, max_memory_mb=100) == 100
    with pytest.raises(ValueError, match="too small"):
        band_rows((1000, 1000), 5, max_memory_mb=1)


def test_bad_arguments(tmp_path, cube):
    paths = _write(tmp_path, cube)
    with pytest.raises(ValueError, match="unknown combine method"):
        combine_files(paths, method="mean")
    with pytest.raises(ValueError, match="no frames"):
        combine_files([])
    with pytest.raises(ValueError, match="scale has 2 entries"):
        combine_files(paths, scale=[1.0, 2.0])
    other = tmp_path / "other.fits"
    fits.PrimaryHDU(np.zeros((3, 3), np.uint16)).writeto(other)
    with pytest.raises(ValueError, match="differ in shape"):
        combine_files([*paths, other])


def test_float_frames(tmp_path, cube):
    paths = _write(tmp_path, cube / 7.0, bitpix16=False)
    expected = np.median((cube / 7.0).astype(np.float32), axis=0)
    np.testing.assert_array_equal(combine_files(paths), expected)


def test_frame_median(tmp_path, cube):
    paths = _write(tmp_path, cube[:1])
    layout = fitsio.probe(paths[0], max_bytes=10**7)
    pattern = np.full(SHAPE, 10.0, np.float32)
    assert frame_median(layout) == np.median(cube[0])
    assert frame_median(layout, offset=pattern) == np.median(cube[0]) - 10.0
    band = frame_median(layout, offset=lambda y0, y1: pattern[y0:y1])
    assert band == np.median(cube[0]) - 10.0


def _sorted_middle(stack):
    """Reference median along axis 0: numpy's sort, the middle value or ``(a + b) * 0.5``."""
    ordered = np.sort(stack, axis=0)  # NaN sort last
    n, k = len(stack), len(stack) // 2
    with np.errstate(over="ignore"):
        middle = ordered[k] if n % 2 else (ordered[k - 1] + ordered[k]) * stack.dtype.type(0.5)
    return np.where(np.isnan(ordered[-1]), stack.dtype.type(np.nan), middle)


def _hard_stack(rng, nframes, dtype, npix=(37, 29)):
    """Noise with ties, NaN, infinities, values whose sum overflows, subnormals."""
    stack = rng.normal(300.0, 5.0, size=(nframes, *npix)).astype(dtype)
    stack[:, ::3] = np.round(stack[:, ::3] * 4) / 4  # ties
    stack[:, 4] = np.round(stack[:, 4] / 100)  # many ties
    stack[nframes // 2, 1, 2] = np.nan  # one NaN: the column's median is NaN
    stack[0, 1, 3] = np.nan
    stack[:, 2, 0] = np.finfo(dtype).max  # the two middle values overflow when added
    stack[: nframes // 2 + 1, 2, 1] = -np.finfo(dtype).max
    stack[:, 3] = np.finfo(dtype).smallest_subnormal
    stack[: (nframes + 1) // 2, 5, :5] = np.inf
    stack[nframes // 3 :, 6, :5] = -np.inf
    stack[:, 7, 0] = -rng.permutation(nframes).astype(dtype) * 1e30  # big values
    return stack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nframes", range(1, 41))
def test_plane_median_equals_numpy(rng, nframes, dtype):
    stack = _hard_stack(rng, nframes, dtype)
    with np.errstate(over="ignore"):
        expected = np.median(stack, axis=0)
    out = plane_median(stack.copy())
    assert out.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(out, expected)  # ==, NaN where numpy gives NaN
    # bit for bit as the sort it replaces (np.median's mean turns a -0.0 middle into 0.0)
    assert out.tobytes() == _sorted_middle(stack).tobytes()
    into = np.empty(stack.shape[1:], dtype)
    assert plane_median(stack.copy(), out=into) is into
    assert into.tobytes() == out.tobytes()


@pytest.mark.parametrize("nframes", [4, 5, 9, 20, 33])
def test_plane_median_leaves_the_ranks_asked_for_in_place(rng, nframes):
    stack = _hard_stack(rng, nframes, np.float32)
    ordered = np.sort(stack, axis=0)
    ranks = (0, 1, nframes - 2, -1)
    plane_median(stack, ranks=ranks)
    finite = ~np.isnan(ordered[-1])
    for r in ranks:
        np.testing.assert_array_equal(stack[r][finite], ordered[r][finite])


@pytest.mark.parametrize("nframes", range(1, 15))
def test_median_network_selects_the_middle_of_every_zero_one_input(nframes):
    """The 0-1 principle: a comparator network that selects rank k of every 0/1 input
    selects it for any input."""
    rows = np.array(np.meshgrid(*[[0.0, 1.0]] * nframes, indexing="ij"), np.float32)
    stack = rows.reshape(nframes, -1).copy()
    expected = np.sort(stack, axis=0)
    out = plane_median(stack, ranks=(0, -1))
    np.testing.assert_array_equal(out, np.median(expected, axis=0))
    np.testing.assert_array_equal(stack[[0, -1]], expected[[0, -1]])


def test_plane_median_refuses_what_it_cannot_take():
    with pytest.raises(ValueError, match="C-contiguous float32"):
        plane_median(np.ones((3, 4), np.float16))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        plane_median(np.ones((3, 4), np.float32)[:, ::2])
    with pytest.raises(ValueError, match="no frames"):
        plane_median(np.ones((0, 4), np.float32))
    with pytest.raises(ValueError, match="out must be"):
        plane_median(np.ones((3, 4), np.float32), out=np.empty(4, np.float64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [*range(1, 41), 10_000, 10_001])
def test_median_in_place_equals_numpy_bit_for_bit(rng, size, dtype):
    noise = rng.normal(0.0, 100.0, size).astype(dtype)
    ties = np.round(noise / 30) + dtype(0.0)  # + 0.0: no -0.0, whose place is arbitrary
    big = noise.copy()
    big[: size // 3] = np.inf
    big[-2:] = np.finfo(dtype).max  # the two middle values may overflow when added
    for values in (noise, ties, big):
        with np.errstate(over="ignore"):
            expected = np.median(values)
            got = median_in_place(values.copy())
        assert type(got) is type(expected) and got.tobytes() == expected.tobytes()
    noise[size // 2] = np.nan
    assert np.isnan(median_in_place(noise))
