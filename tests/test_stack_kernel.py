"""The stack's compiled add (reduxd.steps._stack) against the numpy code it replaced."""

import numpy as np
import pytest

from reduxd.steps.stack import StackAccumulator, _overlap, _round


class NumpyAccumulator(StackAccumulator):
    """``StackAccumulator.add`` as it was before the kernel: whole-array numpy steps."""

    def add(self, data, mask=None, *, dx, dy):
        data = np.asarray(data)
        if self._shape is None:
            self._shape = data.shape
        ix, iy = _round(dx), _round(dy)
        x0, x1, y0, y1 = _overlap(self._shape, ix, iy)
        if x0 >= x1 or y0 >= y1:
            return 0
        src = data[y0 + iy : y1 + iy, x0 + ix : x1 + ix]
        good = np.isfinite(src)
        if mask is not None:
            good &= np.asarray(mask)[y0 + iy : y1 + iy, x0 + ix : x1 + ix] == 0
        used = int(np.count_nonzero(good))
        if used == 0:
            return 0
        if self._sum is None:
            self._allocate()
        region = self._sum[y0:y1, x0:x1]
        if used == good.size:
            np.add(region, src, out=region)
        elif 64 * (good.size - used) < good.size:
            rows, cols = np.divmod(np.flatnonzero(~good), x1 - x0)
            rows += y0
            cols += x0
            kept = self._sum[rows, cols]
            with np.errstate(invalid="ignore", over="ignore"):
                np.add(region, src, out=region)
            self._sum[rows, cols] = kept
            self._count[rows, cols] -= 1
        else:
            np.add(region, src, out=region, where=good)
            counts = self._count[y0:y1, x0:x1]
            np.subtract(counts, ~good, out=counts, casting="unsafe")
        self._n += 1
        self._shifts.append((ix, iy))
        return used


SHAPE = (37, 53)


def frames(rng):
    """``(data, mask, dx, dy)``: every case the add handles."""
    ny, nx = SHAPE
    out = []
    for k in range(12):
        data = rng.normal(1000.0, 300.0, SHAPE) * 10.0 ** rng.integers(-6, 5)
        data = data.astype(np.float32)
        if k % 3 == 1:  # a few non-finite pixels (the "few left out" path)
            data[rng.integers(0, ny, 3), rng.integers(0, nx, 3)] = [np.nan, np.inf, -np.inf]
        mask = None
        if k % 4 == 2:  # many masked pixels (the masked-ufunc path)
            mask = (rng.random(SHAPE) < 0.3).astype(np.uint8) * 4
        if k % 4 == 3:
            mask = np.zeros(SHAPE, np.int16)
            mask[5:9, 10:30] = 256  # only the high byte set
        out.append((data, mask, rng.uniform(-6, 6), rng.uniform(-6, 6)))
    big_endian = out[0][0].astype(">f4")
    out += [
        (np.full(SHAPE, np.nan, np.float32), None, 0.0, 0.0),  # nothing usable
        (out[1][0], np.ones(SHAPE, bool), 1.0, 1.0),  # all masked
        (out[2][0], None, 60.0, 0.0),  # no overlap
        (big_endian, None, 0.4, -2.6),
        (rng.integers(0, 60000, SHAPE).astype(np.uint16), None, -1.5, 2.5),
        (rng.normal(0.0, 1e-7, SHAPE), rng.random(SHAPE) < 0.5, 2.0, 0.0),  # float64, bool mask
    ]
    return out


@pytest.mark.parametrize("first_unusable", [False, True])
def test_compiled_add_gives_the_numpy_sums_counts_and_results(first_unusable):
    rng = np.random.default_rng(7)
    cases = frames(rng)
    if first_unusable:  # the first frame offered adds nothing: nothing allocated yet
        cases.insert(0, cases.pop(12))
    new, old = StackAccumulator(), NumpyAccumulator()
    for data, mask, dx, dy in cases:
        assert new.add(data, mask, dx=dx, dy=dy) == old.add(data, mask, dx=dx, dy=dy)
        assert (new._sum is None) == (old._sum is None)
    assert new._sum.tobytes() == old._sum.tobytes()  # bit for bit
    np.testing.assert_array_equal(new._count, old._count)
    assert new.n_frames == old.n_frames == len(cases) - 3 and new._shifts == old._shifts
    (a, ca, cards_a), (b, cb, cards_b) = new.result(), old.result()
    assert a.tobytes() == b.tobytes() and cards_a == cards_b
    np.testing.assert_array_equal(ca, cb)


def test_a_frame_adding_nothing_leaves_the_stack_as_it_was():
    acc = StackAccumulator()
    assert acc.add(np.full((4, 5), np.nan), None, dx=0, dy=0) == 0
    assert acc._sum is None and acc._count is None and acc.n_frames == 0
    acc.add(np.ones((4, 5), np.float32), None, dx=0, dy=0)
    before = acc._sum.copy(), acc._count.copy()
    assert acc.add(np.ones((4, 5), np.float32), np.ones((4, 5), np.uint8), dx=1, dy=0) == 0
    assert (acc._sum == before[0]).all() and (acc._count == before[1]).all()
    assert acc.n_frames == 1


def test_kernel_on_strided_views_adds_the_good_pixels_and_counts_the_others():
    from reduxd.steps._stack import add_good

    rng = np.random.default_rng(3)
    total, count = np.zeros((20, 30)), np.zeros((20, 30), np.int32)
    src = rng.normal(size=(40, 60)).astype(np.float32)[::2, ::2]  # a strided view
    src[0, :3] = np.nan
    bad = (rng.random((20, 30)) < 0.2).astype(np.uint8)
    good = np.isfinite(src) & (bad == 0)
    used = add_good(total[:, :], count, src, bad)
    assert used == good.sum()
    np.testing.assert_array_equal(total, np.where(good, src.astype(np.float64), 0.0))
    np.testing.assert_array_equal(count, -(~good).astype(np.int32))
