"""Stacking aligned lights: positions, mean, counts, purity."""

import numpy as np
import pytest
from astropy.io import fits

from reduxd import maskbits
from reduxd.fitsio import add_cards
from reduxd.steps.stack import StackAccumulator, _round
from reduxd.synth import render_stars

SHAPE = (64, 80)  # (ny, nx)
SKY = 100.0
X = np.array([20.0, 40.0, 60.0, 33.0])
Y = np.array([20.0, 32.0, 44.0, 50.0])
FLUX = np.array([5e4, 3e4, 2e4, 1e4])
FWHM = 3.0


def frame(dx, dy):
    """The field seen with pointing offset (dx, dy): a star at x appears at x + dx."""
    return (render_stars(SHAPE, X + dx, Y + dy, FLUX, FWHM) + SKY).astype(np.float32)


def readonly(array):
    array = np.array(array)
    array.setflags(write=False)
    return array


def test_integer_shifts_mean_equals_truth_in_covered_region():
    shifts = [(0, 0), (3, -2), (-5, 4), (7, 6)]
    acc = StackAccumulator()
    for dx, dy in shifts:
        acc.add(readonly(frame(dx, dy)), None, dx=float(dx), dy=float(dy))
    data, count, cards = acc.result()
    assert data.dtype == np.float32 and data.shape == SHAPE
    assert count.dtype == np.int32
    # reference pixel (X, Y) is read from frame pixel (X + dx, Y + dy)
    dxs, dys = [s[0] for s in shifts], [s[1] for s in shifts]
    covered = np.zeros(SHAPE, dtype=bool)
    covered[max(0, -min(dys)) : SHAPE[0] - max(dys), max(0, -min(dxs)) : SHAPE[1] - max(dxs)] = 1
    np.testing.assert_array_equal(count == len(shifts), covered)
    truth = frame(0, 0)
    np.testing.assert_allclose(data[covered], truth[covered], rtol=1e-5)
    assert dict((k, v) for k, v, _ in cards if k != "HISTORY") == {
        "NCOMBINE": 4,
        "RDXKIND": "stack",
    }
    assert any(k == "HISTORY" and "no interpolation" in v for k, v, _ in cards)
    header = add_cards(fits.Header(), cards)
    fits.PrimaryHDU(data, header).verify("exception")


def test_fractional_shifts_peak_at_reference_positions():
    shifts = [(0.0, 0.0), (2.4, -1.3), (-3.6, 0.2), (5.45, 4.4), (-1.2, -2.49)]
    acc = StackAccumulator(SHAPE)
    for dx, dy in shifts:
        acc.add(frame(dx, dy), np.zeros(SHAPE, np.uint8), dx=dx, dy=dy)
    data, count, _ = acc.result()
    assert acc.n_frames == len(shifts)
    for x, y in zip(X, Y, strict=True):
        xi, yi = int(x), int(y)
        box = data[yi - 4 : yi + 5, xi - 4 : xi + 5]
        assert np.unravel_index(np.argmax(box), box.shape) == (4, 4)
        assert count[yi, xi] == len(shifts)
    # without the alignment the brightest star would be smeared over ~9 px
    assert data[20, 20] > 0.8 * frame(0, 0)[20, 20]


def test_masked_and_nonfinite_pixels_not_counted():
    truth = frame(0, 0)
    a, b = frame(2, 1), frame(0, 0)
    mask_a = np.zeros(SHAPE, np.uint8)
    a[31, 40 + 2 + 1] = 1e6  # hot pixel: frame pixel (x=43, y=31) -> reference (41, 30)
    mask_a[30 + 1, 41 + 2] = maskbits.BAD
    b[10, 10] = np.nan
    mask_b = np.zeros(SHAPE, np.uint8)
    mask_b[5, 6] = maskbits.SATURATED
    a_before, b_before = a.copy(), b.copy()
    mask_a_before = mask_a.copy()

    acc = StackAccumulator()
    n_a = acc.add(a, mask_a, dx=2, dy=1)
    n_b = acc.add(b, mask_b, dx=0, dy=0)
    assert n_a == (SHAPE[0] - 1) * (SHAPE[1] - 2) - 1
    assert n_b == SHAPE[0] * SHAPE[1] - 2
    data, count, _ = acc.result()
    assert count[30, 41] == 1 and data[30, 41] == pytest.approx(truth[30, 41], rel=1e-6)
    assert count[10, 10] == 1 and data[10, 10] == pytest.approx(truth[10, 10], rel=1e-6)
    assert count[5, 6] == 1
    assert count[20, 20] == 2
    # inputs untouched
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)
    np.testing.assert_array_equal(mask_a, mask_a_before)


def test_noise_averages_down_and_uncovered_pixels_are_nan():
    rng = np.random.default_rng(3)
    acc = StackAccumulator()
    n = 16
    for _ in range(n):
        dx, dy = rng.integers(-4, 5, size=2)
        acc.add(rng.normal(0.0, 1.0, SHAPE).astype(np.float32), None, dx=dx, dy=dy)
    assert acc.add(np.ones(SHAPE), None, dx=SHAPE[1] + 3, dy=0) == 0  # nothing overlaps
    data, count, cards = acc.result()
    assert acc.n_frames == n and cards[0][1] == n
    full = count == n
    assert full.sum() > 1000
    assert np.std(data[full]) == pytest.approx(1.0 / np.sqrt(n), rel=0.1)

    acc = StackAccumulator()
    acc.add(np.ones(SHAPE), None, dx=10, dy=0)
    data, count, _ = acc.result()
    assert np.all(count[:, -10:] == 0) and np.all(np.isnan(data[:, -10:]))
    assert np.all(data[:, :-10] == 1.0)


def test_round_half_away_from_zero():
    assert [_round(v) for v in (0.5, -0.5, 1.49, -2.5, 2.51)] == [1, -1, 1, -3, 3]


def test_errors():
    acc = StackAccumulator()
    with pytest.raises(ValueError, match="nothing stacked"):
        acc.result()
    acc.add(np.zeros(SHAPE), None, dx=0, dy=0)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((10, 10)), None, dx=0, dy=0)
    with pytest.raises(ValueError, match="mask shape"):
        acc.add(np.zeros(SHAPE), np.zeros((3, 3)), dx=0, dy=0)
    with pytest.raises(ValueError, match="finite"):
        acc.add(np.zeros(SHAPE), None, dx=np.nan, dy=0)


# -- the fast paths of add, merge, pickling -------------------------------------------


def naive_stack(frames):
    """Reference: per-pixel mean of the valid, aligned pixels, by explicit loops over frames."""
    total = np.zeros(SHAPE)
    count = np.zeros(SHAPE, dtype=np.int32)
    for data, mask, dx, dy in frames:
        ix, iy = _round(dx), _round(dy)
        for y in range(SHAPE[0]):
            sy = y + iy
            if not 0 <= sy < SHAPE[0]:
                continue
            xs = np.arange(SHAPE[1])
            sx = xs + ix
            inside = (sx >= 0) & (sx < SHAPE[1])
            values = data[sy, sx[inside]]
            good = np.isfinite(values)
            if mask is not None:
                good &= mask[sy, sx[inside]] == 0
            total[y, xs[inside][good]] += values[good]
            count[y, xs[inside][good]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).astype(np.float32), count


def random_frames(n, bad_fraction, seed):
    """Noisy frames with NaN/inf pixels, a mask covering ``bad_fraction`` and random offsets."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        data = (frame(0, 0) + rng.normal(0, 5, SHAPE)).astype(np.float32)
        data[rng.random(SHAPE) < 0.002] = np.nan
        data[rng.random(SHAPE) < 0.001] = np.inf
        mask = (rng.random(SHAPE) < bad_fraction).astype(np.uint8) * maskbits.BAD
        dx, dy = rng.uniform(-6, 6, size=2)
        frames.append((data, mask, dx, dy))
    return frames


@pytest.mark.parametrize("bad_fraction", [0.0, 0.005, 0.3])  # the three ways add() sums
def test_add_matches_a_naive_stack(bad_fraction):
    frames = random_frames(6, bad_fraction, seed=int(bad_fraction * 1000))
    if bad_fraction == 0.0:
        frames = [(np.nan_to_num(d, posinf=0.0), None, dx, dy) for d, _, dx, dy in frames]
    acc = StackAccumulator()
    for data, mask, dx, dy in frames:
        before = data.copy()
        acc.add(data, mask, dx=dx, dy=dy)
        np.testing.assert_array_equal(data, before)
    data, count, _ = acc.result()
    expected, expected_count = naive_stack(frames)
    np.testing.assert_array_equal(count, expected_count)
    np.testing.assert_array_equal(data, expected)  # same sums in the same order


def test_merge_equals_one_accumulator():
    frames = random_frames(7, 0.01, seed=5)
    whole = StackAccumulator()
    for data, mask, dx, dy in frames:
        whole.add(data, mask, dx=dx, dy=dy)
    merged = StackAccumulator()
    for part in (frames[:3], frames[3:4], [], frames[4:]):
        acc = StackAccumulator()
        for data, mask, dx, dy in part:
            acc.add(data, mask, dx=dx, dy=dy)
        assert merged.merge(acc) is merged
    assert merged.n_frames == whole.n_frames == 7 and merged.shape == SHAPE
    (d1, c1, k1), (d2, c2, k2) = whole.result(), merged.result()
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)
    assert k1 == k2  # NCOMBINE, shift range


def test_merge_empty_and_shape_errors():
    acc = StackAccumulator()
    acc.add(frame(0, 0), None, dx=0, dy=0)
    before = acc.result()
    acc.merge(StackAccumulator())  # no frames: no-op
    acc.merge(StackAccumulator(shape=(3, 3)))  # no frames, other shape: still a no-op
    after = acc.result()
    np.testing.assert_array_equal(before[0], after[0])
    assert acc.n_frames == 1
    other = StackAccumulator()
    other.add(np.zeros((10, 10)), None, dx=0, dy=0)
    with pytest.raises(ValueError, match="merge"):
        acc.merge(other)
    with pytest.raises(ValueError, match="merge"):
        StackAccumulator(shape=(3, 3)).merge(acc)
    empty = StackAccumulator()
    empty.merge(acc)  # into an empty one: a copy, independent of the source
    acc.add(frame(0, 0), None, dx=0, dy=0)
    assert empty.n_frames == 1 and acc.n_frames == 2
    np.testing.assert_array_equal(empty.result()[0], before[0])


@pytest.mark.parametrize("bad_fraction", [0.01, 0.5])  # counts pickled sparse, then dense
def test_pickles_compactly_and_unchanged(bad_fraction):
    import pickle

    acc = StackAccumulator()
    for data, mask, dx, dy in random_frames(3, bad_fraction, seed=9):
        acc.add(data, mask, dx=dx, dy=dy)
    blob = pickle.dumps(acc)
    assert len(blob) < acc._sum.nbytes * 1.6  # the int32 maps: at most half the size
    copy = pickle.loads(blob)
    for a, b in zip(acc.result(), copy.result(), strict=True):
        np.testing.assert_array_equal(a, b)
    empty = pickle.loads(pickle.dumps(StackAccumulator()))
    assert empty.n_frames == 0 and empty.shape is None
