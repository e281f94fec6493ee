"""Unstable pixels: pixels whose value jumps between the darks of one set (pure).

A warm pixel is steady: the master dark removes it, and it is *not* bad. A pixel
with random telegraph noise (or another flicker) is not removed by any master:
its level in a light is a coin toss. Such pixels go in the bad-pixel mask.

Test, per pixel, on the darks of one set (same exposure): remove each frame's
median (the bias level drifts a little), take the per-pixel median over the
frames, and the absolute deviations from it. The pixel is unstable when the
*second* largest deviation exceeds ``nsigma`` times the noise expected there,
``sqrt(read_noise**2 + signal / gain)`` (ADU), ``signal`` being the pixel's
dark level above the frame's median. Asking for two deviant frames keeps a
cosmic ray (one frame) out; a steady warm pixel has only its Poisson noise.
The read noise comes from pairs of the same darks.
"""

import math

import numpy as np

from reduxd.fitsio import read_rows
from reduxd.steps.combine import median_in_place, plane_median
from reduxd.steps.gain import central_box, pair_read_noise

MIN_FRAMES = 4  # fewer darks cannot tell a flicker from a cosmic ray
BAND_ROWS = 128


def unstable_pixels(layouts, *, nsigma=6.0, gain=1.0, band_rows=BAND_ROWS):
    """Return a boolean mask of the unstable pixels of a set of darks (None: too few frames).

    Parameters
    ----------
    layouts : sequence of reduxd.fitsio.FitsLayout
        Darks (or biases) of one exposure, same shape.
    nsigma : float
        Threshold in units of the expected noise of the pixel. A pixel that spends
        half the frames at each of two levels deviates by half the step, so steps
        above ``2 x nsigma`` sigmas are found.
    gain : float
        e-/ADU for the Poisson noise of warm pixels. 1 when unknown: cameras with
        fewer e-/ADU make that noise larger in ADU, so a larger ``nsigma`` guards
        them.
    band_rows : int
        Rows read at a time (memory: ``4 x n_frames x band_rows x nx`` bytes).

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> from reduxd.fitsio import probe
    >>> rng = np.random.default_rng(0); tmp = tempfile.mkdtemp(); layouts = []
    >>> for i in range(5):
    ...     d = rng.normal(300, 5, (64, 64)); d[10, 10] += 3000  # warm, steady
    ...     d[20, 20] += 200 * (i % 2)  # flickers
    ...     p = os.path.join(tmp, f'd{i}.fits'); fits.PrimaryHDU(d.astype(np.float32)).writeto(p)
    ...     layouts.append(probe(p, max_bytes=10**7))
    >>> [tuple(int(v) for v in xy) for xy in np.argwhere(unstable_pixels(layouts))]
    [(20, 20)]
    """
    if len(layouts) < MIN_FRAMES:
        return None
    boxes = [central_box(lay) for lay in layouts]
    levels = [float(median_in_place(b.copy())) for b in boxes]  # np.median
    read_noise, _ = pair_read_noise([b - lv for b, lv in zip(boxes, levels, strict=True)])
    if not math.isfinite(read_noise) or read_noise <= 0:
        return None
    ny, nx = layouts[0].shape
    mask = np.zeros((ny, nx), dtype=bool)
    n = len(layouts)
    buffer = np.empty(n * min(band_rows, ny) * nx, dtype=np.float32)  # reused per band
    for y0 in range(0, ny, band_rows):
        y1 = min(ny, y0 + band_rows)
        part = buffer[: n * (y1 - y0) * nx].reshape(n, y1 - y0, nx)  # frames first
        for i, (lay, lv) in enumerate(zip(layouts, levels, strict=True)):
            np.subtract(read_rows(lay, y0, y1), np.float32(lv), out=part[i])
        median = plane_median(part, ranks=(0, 1, n - 2, n - 1))  # the ends too, in place
        second = second_deviation(part, median)
        expected = np.sqrt(read_noise**2 + np.clip(median, 0, None) / gain)
        mask[y0:y1] = second > nsigma * expected
    return mask


def second_deviation(ordered, median):
    """The second largest ``|x - median|`` of each column of ``ordered`` (frames first).

    ``ordered[0]``, ``ordered[1]``, ``ordered[-2]`` and ``ordered[-1]`` hold each
    column's two smallest and two largest values (:func:`plane_median` with those
    ranks). Along a sorted column the deviations fall, then rise, so the two
    largest are among those four: the same value as sorting all the deviations
    and taking the one before last, without that sort. Needs at least four values
    per column. A column whose median is NaN gives NaN.

    Examples
    --------
    >>> column = np.array([[1.0], [4.0], [5.0], [6.0], [12.0]], np.float32)
    >>> second_deviation(column, np.array([5.0], np.float32)).tolist()
    [4.0]
    """
    low = np.abs(ordered[:2] - median)  # deviations of the two smallest values
    high = np.abs(ordered[-2:] - median)  # of the two largest
    first = np.minimum(low[0], high[1])  # the smaller of the two ends' deviations
    return np.maximum(first, np.maximum(low[1], high[0]))
