"""Stacked lights: the pixel-wise mean of calibrated lights aligned on their offsets.

One stack per (object, filter, gain, exposure) - the caller keeps one
:class:`StackAccumulator` per key. Memory stays constant whatever the number
of lights: a running sum (float64) and a per-pixel count of the valid pixels
(int32), both the size of the reference frame.

Alignment is by the *rounded integer* offset, without interpolation: every
stacked pixel is the mean of whole, untouched pixels, so the noise of the
stack stays independent from pixel to pixel and its variance is simply the
frame variance over the count. The price is up to half a pixel of blur per
frame, negligible for seeing-limited stars of a few pixels FWHM.
"""

import numpy as np

HISTORY = (
    "reduxd stack: mean of {n} calibrated lights aligned on integer pixel offsets "
    "(no interpolation); masked, non-finite and out-of-frame pixels excluded"
)


def _round(value):
    """Round half away from zero (``round`` and ``np.round`` round half to even)."""
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"offset {value!r} is not a finite number")
    return int(np.sign(value) * np.floor(abs(value) + 0.5))


class StackAccumulator:
    """Running mean of aligned frames on the reference frame's pixel grid.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` of the reference frame; default: the shape of the first
        frame added. Every frame must have this shape.

    Examples
    --------
    >>> acc = StackAccumulator()
    >>> a = np.zeros((3, 4), np.float32); a[1, 1] = 8.0
    >>> b = np.zeros((3, 4), np.float32); b[1, 2] = 8.0  # the same star, 1 px right
    >>> acc.add(a, None, dx=0.0, dy=0.0)
    12
    >>> acc.add(b, None, dx=1.2, dy=0.0)
    9
    >>> data, count, cards = acc.result()
    >>> float(data[1, 1]), int(count[1, 1]), int(count[1, 3]), cards[0]
    (8.0, 2, 1, ('NCOMBINE', 2, 'number of lights stacked'))
    """

    def __init__(self, shape=None):
        self._shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self._sum = None
        self._count = None
        self._n = 0
        self._shifts = []

    @property
    def shape(self):
        """``(ny, nx)`` of the stack, or None before the first frame."""
        return self._shape

    @property
    def n_frames(self):
        """Number of frames that contributed at least one pixel."""
        return self._n

    def add(self, data, mask=None, *, dx, dy):
        """Add one calibrated frame.

        Parameters
        ----------
        data : numpy.ndarray
            2-D frame (any float or int dtype); not modified.
        mask : numpy.ndarray or None
            Same shape; pixels with ``mask != 0`` are left out (see
            :mod:`reduxd.maskbits`). Non-finite pixels are always left out.
        dx, dy : float
            The frame's pointing offset relative to the reference frame: a star at
            reference position ``(x, y)`` appears at ``(x + dx, y + dy)`` in this
            frame. Rounded to the nearest integer (half away from zero).

        Returns
        -------
        int
            Number of pixels of this frame added to the stack.

        Raises
        ------
        ValueError
            Wrong dimensions or shape, or a non-finite offset.
        """
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"expected a 2-D frame, got shape {data.shape}")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != data.shape:
                raise ValueError(f"mask shape {mask.shape} != data shape {data.shape}")
        if self._shape is None:
            self._shape = data.shape
        if data.shape != self._shape:
            raise ValueError(f"frame shape {data.shape} != stack shape {self._shape}")
        if self._sum is None:
            self._sum = np.zeros(self._shape, dtype=np.float64)
            self._count = np.zeros(self._shape, dtype=np.int32)
        ix, iy = _round(dx), _round(dy)
        ny, nx = self._shape
        x0, x1 = max(0, -ix), min(nx, nx - ix)
        y0, y1 = max(0, -iy), min(ny, ny - iy)
        if x0 >= x1 or y0 >= y1:
            return 0
        src = data[y0 + iy : y1 + iy, x0 + ix : x1 + ix]
        good = np.isfinite(src)
        if mask is not None:
            good &= mask[y0 + iy : y1 + iy, x0 + ix : x1 + ix] == 0
        used = int(np.count_nonzero(good))
        if used == 0:
            return 0
        region = self._sum[y0:y1, x0:x1]
        np.add(region, src, out=region, where=good)
        self._count[y0:y1, x0:x1] += good
        self._n += 1
        self._shifts.append((ix, iy))
        return used

    def result(self):
        """Return ``(data, count, cards)`` of the stack so far.

        Returns
        -------
        data : numpy.ndarray
            float32 mean of the valid pixels; NaN where no frame contributed.
        count : numpy.ndarray
            int32 number of frames that contributed to each pixel.
        cards : list of tuple
            ``NCOMBINE``, ``RDXKIND = 'stack'`` and a ``HISTORY`` line.

        Raises
        ------
        ValueError
            No frame has contributed yet.
        """
        if self._n == 0:
            raise ValueError("nothing stacked yet")
        count = self._count.copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, self._sum / np.maximum(count, 1), np.nan)
        shifts = np.asarray(self._shifts)
        cards = [
            ("NCOMBINE", self._n, "number of lights stacked"),
            ("RDXKIND", "stack", "reduxd product kind"),
            ("HISTORY", HISTORY.format(n=self._n), ""),
            (
                "HISTORY",
                f"reduxd stack: integer shifts dx {shifts[:, 0].min()}..{shifts[:, 0].max()}, "
                f"dy {shifts[:, 1].min()}..{shifts[:, 1].max()} px",
                "",
            ),
        ]
        return mean.astype(np.float32), count, cards
