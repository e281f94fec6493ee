"""Stacked lights: the pixel-wise mean of calibrated lights aligned on their offsets.

One stack per (object, filter, gain, exposure) - the caller keeps one
:class:`StackAccumulator` per key. Memory stays constant whatever the number
of lights: a running sum (float64) and a per-pixel count of the valid pixels
(int32), both the size of the reference frame. Accumulators of consecutive
runs of frames can be built apart (in worker processes; they pickle) and
combined with :meth:`StackAccumulator.merge`; merged in a fixed order, the
result does not depend on how the work was spread.

Alignment is by the *rounded integer* offset, without interpolation: every
stacked pixel is the mean of whole, untouched pixels, so the noise of the
stack stays independent from pixel to pixel and its variance is simply the
frame variance over the count. The price is up to half a pixel of blur per
frame, negligible for seeing-limited stars of a few pixels FWHM.
"""

import numpy as np

from reduxd.steps._stack import add_good

HISTORY = (
    "reduxd stack: mean of {n} calibrated lights aligned on integer pixel offsets "
    "(no interpolation); masked, non-finite and out-of-frame pixels excluded"
)


def _pixels(data):
    """``data`` as the kernel takes it: native float32 or float64 (others as float64,
    the values numpy adds to a float64 sum)."""
    if data.dtype in (np.float32, np.float64) and data.dtype.isnative:
        return data
    return data.astype(np.float64)


def _flags(mask):
    """``mask != 0`` as bytes (a one-byte integer or boolean mask is used as it is)."""
    if mask.dtype.itemsize == 1 and mask.dtype.kind in "biu":
        return mask.view(np.uint8)
    return (mask != 0).view(np.uint8)


def _round(value):
    """Round half away from zero (``round`` and ``np.round`` round half to even)."""
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"offset {value!r} is not a finite number")
    return int(np.sign(value) * np.floor(abs(value) + 0.5))


def _overlap(shape, ix, iy):
    """``(x0, x1, y0, y1)``: the stack pixels a frame shifted by ``(ix, iy)`` covers."""
    ny, nx = shape
    return max(0, -ix), min(nx, nx - ix), max(0, -iy), min(ny, ny - iy)


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
        # frames per pixel = the frames whose overlap rectangle (from its shift) covers
        # it, built by result(), + ``_count`` (-1 for each frame leaving the pixel out)
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
        ix, iy = _round(dx), _round(dy)
        x0, x1, y0, y1 = _overlap(self._shape, ix, iy)
        if x0 >= x1 or y0 >= y1:
            return 0
        src = _pixels(data[y0 + iy : y1 + iy, x0 + ix : x1 + ix])
        bad = None if mask is None else _flags(mask[y0 + iy : y1 + iy, x0 + ix : x1 + ix])
        fresh = self._sum is None
        if fresh:
            self._allocate()
        counts = self._count[y0:y1, x0:x1]
        used = add_good(self._sum[y0:y1, x0:x1], counts, src, bad)  # one pass, compiled
        if used == 0:  # nothing added: as if the frame had not been offered
            counts += 1
            if fresh:
                self._sum = self._count = None
            return 0
        self._n += 1
        self._shifts.append((ix, iy))
        return used

    def _allocate(self):
        ny, nx = self._shape
        self._sum = np.zeros((ny, nx), dtype=np.float64)
        self._count = np.zeros((ny, nx), dtype=np.int32)

    def _counts(self):
        ny, nx = self._shape
        edges = np.zeros((ny + 1, nx + 1), dtype=np.int32)  # +1 on each overlap rectangle
        for ix, iy in self._shifts:
            x0, x1, y0, y1 = _overlap(self._shape, ix, iy)
            edges[y0, x0] += 1
            edges[y0, x1] -= 1
            edges[y1, x0] -= 1
            edges[y1, x1] += 1
        np.cumsum(edges, axis=0, dtype=np.int32, out=edges)
        np.cumsum(edges, axis=1, dtype=np.int32, out=edges)
        return self._count + edges[:-1, :-1]

    def merge(self, other):
        """Add the frames of another accumulator to this one.

        Afterwards this accumulator holds the stack of its frames followed by
        ``other``'s (``other`` is left as it is). Merging the accumulators of
        consecutive runs of frames in their order gives the same stack, whoever
        computed them, up to the rounding of the float64 sum.

        Parameters
        ----------
        other : StackAccumulator
            Same shape; one without frames is ignored.

        Returns
        -------
        StackAccumulator
            This accumulator.

        Raises
        ------
        ValueError
            The two stacks have different shapes.

        Examples
        --------
        >>> a, b = StackAccumulator(), StackAccumulator()
        >>> _ = a.add(np.full((2, 3), 1.0), None, dx=0, dy=0)
        >>> _ = b.add(np.full((2, 3), 4.0), None, dx=1, dy=0)
        >>> data, count, _ = a.merge(b).result()
        >>> a.n_frames, data[0].tolist(), count[0].tolist()
        (2, [2.5, 2.5, 1.0], [2, 2, 1])
        """
        if other._n == 0:
            return self
        if self._shape is not None and self._shape != other._shape:
            raise ValueError(f"cannot merge a {other._shape} stack into a {self._shape} one")
        if self._sum is None:
            self._shape = other._shape
            self._allocate()
        self._sum += other._sum
        self._count += other._count
        self._n += other._n
        self._shifts.extend(other._shifts)
        return self

    def __getstate__(self):
        # ``_count`` is mostly zeros: pickle its non-zero entries (the accumulators
        # of worker processes come back through a pipe).
        state = self.__dict__.copy()
        count = state["_count"]
        if count is not None:
            flat = np.flatnonzero(count)
            if 4 * flat.size < count.size:
                state["_count"] = (count.shape, flat, count.ravel()[flat])
        return state

    def __setstate__(self, state):
        if isinstance(state["_count"], tuple):
            shape, flat, values = state["_count"]
            state["_count"] = np.zeros(shape, dtype=np.int32)
            state["_count"].ravel()[flat] = values
        self.__dict__.update(state)

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
        count = self._counts()
        mean = np.empty(self._shape, dtype=np.float32)  # float64 quotient, rounded once
        with np.errstate(invalid="ignore", divide="ignore"):
            np.divide(self._sum, count, out=mean, casting="unsafe")
        mean[count == 0] = np.nan
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
        return mean, count, cards
