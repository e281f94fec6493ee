"""Pixel-wise combination of many frames under a memory limit.

Frames are never loaded whole: the image is cut into bands of rows, and for each
band every file is opened once and only that band's rows are read
(:func:`reduxd.fitsio.read_rows`). A band stack is allocated once per worker
thread. For the median it is laid out ``(nframes, rows, nx)``: each frame's band
is one contiguous plane, and a compiled comparator network
(:func:`plane_median`) orders the planes pixel by pixel in place with SIMD
min/max, without the GIL. For ``sigma_clip`` it is ``(rows, nx, nframes)``:
each pixel's values are one contiguous lane, sorted in place.

Memory model (bytes, all counted against ``max_memory_mb``): the float32 result
(``4 * ny * nx``), plus per worker thread the band stack (4 bytes per pixel per
frame; 14 for ``sigma_clip``, whose sort, mask and variance need temporaries),
plus one frame's band being read (raw bytes + float32 + an offset band) and
per-pixel temporaries of the band, with a 3% margin.
"""

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from reduxd import fitsio
from reduxd.fitsio import FitsLayout
from reduxd.steps._combine import network_median

METHODS = ("median", "sigma_clip")
MAX_ITERS = 5
_STACK_BYTES = {"median": 4, "sigma_clip": 14}
_LANE_BYTES = {"median": 12, "sigma_clip": 64}
_DEFAULT_MAX_BYTES = 2048 * 1024 * 1024
_BAND_BYTES = 8 * 1024 * 1024  # a band stack of this size stays cache-friendly: faster


def as_layouts(layouts_or_paths, *, max_bytes=_DEFAULT_MAX_BYTES):
    """Return :class:`~reduxd.fitsio.FitsLayout` objects, probing any path given.

    Examples
    --------
    >>> as_layouts([])
    []
    """
    return [
        item if isinstance(item, FitsLayout) else fitsio.probe(Path(item), max_bytes=max_bytes)
        for item in layouts_or_paths
    ]


def band_rows(shape, nframes, *, method="median", max_memory_mb=2048, threads=1, itemsize=2):
    """Return how many rows each band may hold within ``max_memory_mb``.

    Bands are also kept near 8 MB per stack, which is faster than one big band.

    Raises
    ------
    ValueError
        When not even one row of every frame fits beside the result.

    Examples
    --------
    >>> band_rows((1000, 1000), 10, max_memory_mb=100)
    209
    >>> band_rows((9576, 6388), 40, max_memory_mb=300, threads=2)
    8
    """
    ny, nx = shape
    budget = 0.97 * max_memory_mb * 1024 * 1024 - 4 * ny * nx  # the result lives throughout
    # per pixel of a band row: the stack, one frame being read (raw + float32 + offset),
    # and per-lane temporaries (median: NaN check; sigma_clip: bounds, centre, spread)
    per_row = nx * (_STACK_BYTES[method] * nframes + itemsize + 8 + _LANE_BYTES[method])
    rows = int(budget // (per_row * threads))
    if rows < 1:
        need = (4 * ny * nx + per_row * threads) / 2**20
        raise ValueError(f"max_memory_mb={max_memory_mb} too small: need at least {need:.0f} MB")
    fast = max(4, _BAND_BYTES // (4 * nx * nframes))
    return min(rows, fast, ny)


def combine_files(
    layouts_or_paths,
    *,
    method="median",
    clip_sigma=3.0,
    max_memory_mb=2048,
    scale=None,
    offsets=None,
    threads=2,
    max_bytes=_DEFAULT_MAX_BYTES,
):
    """Combine many FITS images pixel by pixel, reading them in bands of rows.

    Parameters
    ----------
    layouts_or_paths : sequence of FitsLayout or path
        The frames, all of the same shape (paths are probed first).
    method : {'median', 'sigma_clip'}
        Pixel-wise median, or mean after iterative clipping at ``clip_sigma``
        standard deviations around the median (at most 5 iterations).
    clip_sigma : float
        Clipping threshold for ``sigma_clip``.
    max_memory_mb : float
        Upper bound on the arrays allocated here, the result included.
    scale : sequence of float, optional
        One factor per frame, multiplied in after the offset is subtracted.
    offsets : sequence or callable, optional
        Subtracted from each frame first: a sequence with one scalar or ``(ny, nx)``
        array per frame, or a callable ``offsets(i, y0, y1)`` returning a scalar or
        the ``(y1 - y0, nx)`` band to subtract from rows ``y0:y1`` of frame ``i``.
    threads : int
        Worker threads, each with its own band stack (numpy releases the GIL).
    max_bytes : int
        Size limit used when probing paths.

    Returns
    -------
    numpy.ndarray
        New float32 array ``(ny, nx)``.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> tmp = tempfile.mkdtemp()
    >>> paths = []
    >>> for i, v in enumerate([1, 5, 2]):
    ...     paths.append(os.path.join(tmp, f'{i}.fits'))
    ...     fits.PrimaryHDU(np.full((4, 3), v, np.uint16)).writeto(paths[-1])
    >>> combine_files(paths)[0, 0]
    np.float32(2.0)
    >>> combine_files(paths, offsets=[1, 1, 1], scale=[2, 2, 2])[0, 0]
    np.float32(2.0)
    """
    if method not in METHODS:
        raise ValueError(f"unknown combine method {method!r} (expected one of {METHODS})")
    layouts = as_layouts(layouts_or_paths, max_bytes=max_bytes)
    if not layouts:
        raise ValueError("no frames to combine")
    shape = _common_shape(layouts)
    n = len(layouts)
    _check_per_frame(scale, n, "scale")
    if not callable(offsets):
        _check_per_frame(offsets, n, "offsets")
    itemsize = max(abs(lay.bitpix) // 8 for lay in layouts)
    rows = band_rows(
        shape, n, method=method, max_memory_mb=max_memory_mb, threads=threads, itemsize=itemsize
    )
    bands = [(y0, min(y0 + rows, shape[0])) for y0 in range(0, shape[0], rows)]
    threads = max(1, min(threads, len(bands)))
    out = np.empty(shape, dtype=np.float32)
    work = _Work(layouts, out, method, clip_sigma, scale, offsets)
    if threads == 1:
        work.run(bands, rows)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            jobs = [pool.submit(work.run, bands[k::threads], rows) for k in range(threads)]
            for job in jobs:
                job.result()
    return out


def _common_shape(layouts):
    shapes = {tuple(lay.shape) for lay in layouts}
    if len(shapes) != 1:
        raise ValueError(f"frames differ in shape: {sorted(shapes)}")
    return shapes.pop()


def _check_per_frame(values, n, name):
    if values is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} frames")


class _Work:
    """Everything a worker thread needs to fill its bands of ``out``."""

    def __init__(self, layouts, out, method, clip_sigma, scale, offsets):
        self.layouts = layouts
        self.out = out
        self.method = method
        self.clip_sigma = clip_sigma
        self.scale = scale
        self.offsets = offsets

    def run(self, bands, rows):
        n, nx = len(self.layouts), self.out.shape[1]
        buffer = np.empty(rows * nx * n, dtype=np.float32)  # the band stack, reused per band
        for y0, y1 in bands:
            size = (y1 - y0) * nx * n
            if self.method == "median":
                part = buffer[:size].reshape(n, y1 - y0, nx)  # frames first: planes
                self.fill(part, y0, y1)
                plane_median(part, out=self.out[y0:y1])
            else:
                part = buffer[:size].reshape(y1 - y0, nx, n)  # frames last: lanes
                self.fill(np.moveaxis(part, -1, 0), y0, y1)
                self.out[y0:y1] = clipped_mean(part, clip_sigma=self.clip_sigma)

    def fill(self, planes, y0, y1):
        """Write rows ``y0:y1`` of frame ``i``, offset subtracted and scaled, to ``planes[i]``."""
        for i, layout in enumerate(self.layouts):
            band = fitsio.read_rows(layout, y0, y1)
            offset = self.offset(i, y0, y1)
            if offset is not None:
                band -= offset
            if self.scale is not None:
                band *= np.float32(self.scale[i])
            planes[i] = band

    def offset(self, i, y0, y1):
        if self.offsets is None:
            return None
        if callable(self.offsets):
            return self.offsets(i, y0, y1)
        value = self.offsets[i]
        return value[y0:y1] if np.ndim(value) == 2 else value


def plane_median(stack, *, out=None, ranks=()):
    """Median along the first axis of a frame-major stack, as ``np.median`` gives it.

    Same values as ``np.median(stack, axis=0)``, bit for bit: the mean of the two
    middle values of an even column is ``(a + b) / 2`` in the stack's type, and a
    column with a NaN gives NaN. A compiled comparator network
    (:mod:`reduxd.steps._combine`) orders the middle rank(s) of every column in
    place, one SIMD pass over two frames per comparator, without the GIL.
    ``stack`` is left in an undefined order, except that row ``r`` of each column
    free of NaN holds its rank-``r`` value for ``r`` in ``ranks`` (and the middle).
    A column with ``-0.0`` and ``0.0`` at the middle rank may give either zero.

    Parameters
    ----------
    stack : numpy.ndarray
        float32 or float64, C-contiguous, ``(nframes, ...)``; modified.
    out : numpy.ndarray, optional
        C-contiguous array of shape ``stack.shape[1:]`` and the stack's type.
    ranks : sequence of int
        Ranks (0 = smallest, negative from the top) wanted in place besides the median.

    Returns
    -------
    numpy.ndarray
        ``out``, or a new array.

    Examples
    --------
    >>> planes = np.array([[3.0, 1.0], [1.0, np.nan], [2.0, 0.0], [10.0, 2.0]], np.float32)
    >>> plane_median(planes).tolist()
    [2.5, nan]
    >>> stack = np.array([[5.0], [1.0], [4.0], [2.0], [3.0]])
    >>> plane_median(stack, ranks=(0, -1)).tolist(), stack[[0, -1], 0].tolist()
    ([3.0], [1.0, 5.0])
    """
    if stack.dtype not in (np.float32, np.float64) or not stack.flags.c_contiguous:
        raise ValueError(f"need a C-contiguous float32 or float64 stack, got {stack.dtype}")
    n = stack.shape[0]
    if n == 0:
        raise ValueError("no frames to take the median of")
    if out is None:
        out = np.empty(stack.shape[1:], dtype=stack.dtype)
    if out.shape != stack.shape[1:] or out.dtype != stack.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous {stack.dtype} of shape {stack.shape[1:]}")
    network = median_network(n, tuple(sorted({r % n for r in ranks})))
    flat = stack.reshape(n, -1)
    network_median(flat, out.reshape(-1), network, stack.dtype.type(np.nan))
    return out


@functools.lru_cache(maxsize=64)
def median_network(n, ranks=()):
    """Comparators ``(i, j)`` that put ranks ``ranks`` and the middle of ``n`` values in place.

    Batcher's odd-even merge sort for the next power of two, without the
    comparators that touch the padding (it would hold +inf and never move) or
    whose outputs reach none of the wanted ranks.

    Examples
    --------
    >>> median_network(3).tolist()
    [[0, 1], [0, 2], [1, 2]]
    >>> len(_batcher(20)), len(median_network(20)), len(median_network(20, (0, 1, 18, 19)))
    (103, 84, 93)
    """
    need = {n // 2, (n - 1) // 2, *ranks}
    kept = []
    for i, j in reversed(_batcher(n)):
        if i in need or j in need:
            need.update((i, j))
            kept.append((i, j))
    return np.array(kept[::-1], dtype=np.intc).reshape(-1, 2)


def _batcher(n):
    """Batcher's odd-even merge sort network on the next power of two, pairs below ``n``."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return [(i, j) for i, j in pairs if j < n]


def clipped_mean(stack, *, clip_sigma=3.0, max_iters=MAX_ITERS):
    """Mean along the last axis after iterative clipping around the median (modifies ``stack``).

    As :func:`astropy.stats.sigma_clip` (median centre, standard deviation, rejection
    cumulative). Each lane is sorted in place, so the values kept are always a
    contiguous run: at each iteration the run's median and standard deviation set
    bounds ``median +- clip_sigma * std``, until nothing changes. A lane never loses
    all its values.

    Examples
    --------
    >>> lane = np.array([[[10.0, 11.0, 9.0, 10.0, 10.5, 9.5, 1000.0]]], np.float32)
    >>> float(clipped_mean(lane, clip_sigma=2.0)[0, 0])
    10.0
    """
    stack.sort(axis=-1)
    n = stack.shape[-1]
    lo = np.zeros(stack.shape[:-1], dtype=np.intp)
    hi = np.full(stack.shape[:-1], n, dtype=np.intp)
    index = np.arange(n)
    for _ in range(max_iters):
        keep = (index >= lo[..., None]) & (index < hi[..., None])
        centre = _run_median(stack, lo, hi)
        spread = np.std(stack, axis=-1, where=keep) * np.float32(clip_sigma)
        new_lo = np.maximum(lo, np.sum(stack < (centre - spread)[..., None], axis=-1))
        new_hi = np.minimum(hi, np.sum(stack <= (centre + spread)[..., None], axis=-1))
        empty = new_hi <= new_lo
        new_lo[empty], new_hi[empty] = lo[empty], hi[empty]
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    keep = (index >= lo[..., None]) & (index < hi[..., None])
    return np.mean(stack, axis=-1, where=keep).astype(np.float32, copy=False)


def _run_median(stack, lo, hi):
    a = np.take_along_axis(stack, ((lo + hi - 1) // 2)[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(stack, ((lo + hi) // 2)[..., None], axis=-1)[..., 0]
    return (a + b) * np.float32(0.5)


def frame_median(layout, *, offset=None, max_memory_mb=2048):
    """Return the median of one frame (after subtracting ``offset``), read whole.

    ``offset`` is a scalar, a ``(ny, nx)`` array, or a callable ``offset(y0, y1)``
    for a band. Used to scale flats to their own level.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> path = os.path.join(tempfile.mkdtemp(), 'f.fits')
    >>> fits.PrimaryHDU(np.arange(9, dtype=np.uint16).reshape(3, 3)).writeto(path)
    >>> frame_median(fitsio.probe(path, max_bytes=10**6), offset=1.0)
    3.0
    """
    ny, nx = layout.shape
    if 8 * ny * nx > max_memory_mb * 1024 * 1024:
        raise ValueError(f"max_memory_mb={max_memory_mb} too small for one {ny}x{nx} frame")
    data = fitsio.read_rows(layout, 0, ny)
    step = max(1, math.ceil(ny / 16))  # subtract in blocks: no full-frame temporary
    for y0 in range(0, ny, step):
        y1 = min(ny, y0 + step)
        if callable(offset):
            value = offset(y0, y1)
        else:
            value = offset[y0:y1] if np.ndim(offset) == 2 else offset
        if value is not None:
            data[y0:y1] -= value
    return float(median_in_place(data))


def median_in_place(values):
    """``np.median(values)``, the same value, by one partition of ``values`` (reordered in place).

    ``np.median`` partitions at three ranks (the two middle ones and the last, for
    NaN); one partition at the upper middle, the largest value below it, and
    ``np.mean`` of the middle value(s) as ``np.median`` takes it: about three times
    faster on a frame. Any NaN, or no value, gives NaN as ``np.median`` does.

    Examples
    --------
    >>> median_in_place(np.array([[4.0, 1.0], [3.0, 2.0]], np.float32))
    np.float32(2.5)
    >>> float(median_in_place(np.array([2.0, np.nan, 1.0])))
    nan
    """
    flat = values.reshape(-1)  # a view: values must be contiguous
    if flat.size == 0 or np.isnan(flat).any():
        return np.median(flat)  # NaN (empty: with numpy's warning)
    k = flat.size // 2
    flat.partition(k)
    middle = flat[k : k + 1] if flat.size % 2 else np.array([flat[:k].max(), flat[k]])
    return np.mean(middle)
