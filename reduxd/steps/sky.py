"""Sky estimates for aperture photometry (pure functions, inputs never modified).

Methods (``estimate_sky(method=...)``, registered by name in ``skymethods``):

``global``
    sigma-clipped median of the frame, or of a region ``(x0, x1, y0, y1)``.
``annulus``
    sigma-clipped median in an annulus ``(r_in, r_out)`` around each star.
``radial``
    the observatory's method: in a subframe of side ``L`` around each star the
    radial profile is fitted with ``M(r) = A * exp(-(r - mu)**2 / (2 sigma**2)) + G``
    and ``G`` is the sky. The fit is accepted only if R^2 >= ``fit_quality``,
    the parameters are sane and no pixel outside the star deviates from the
    model (a blend); otherwise the annulus estimate is used and ``rejected`` set.
``mesh``
    photutils ``Background2D`` (median in boxes, 3x3 filtered), read at each star.

Every estimate carries, per star, the sky level per pixel (``value``), the
per-pixel standard deviation of the sky pixels (``std``, which therefore
includes read noise and dark-current noise), the number of sky pixels
(``npix``) and the uncertainty of the level (``err = std / sqrt(npix)``).
For the median methods that is the CCD-equation convention (the median's
extra factor sqrt(pi/2) is ignored; note too that the median of Poisson counts
lies about 1/6 electron below their mean). For the radial fit, ``err`` is the
sky noise propagated through the fit and ``npix`` the effective number of sky
pixels; as the fit also uses pixels inside the aperture, ``aperture_cov``
carries the covariance needed by the flux error (``measure.flux_error``).
"""

import functools
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage

from reduxd import phot_columns
from reduxd.skymethods import METHODS, get

__all__ = ["METHODS", "SkyEstimate", "estimate_sky"]
MAX_GLOBAL_PIXELS = 250_000  # larger frames/regions are subsampled on a regular grid
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class SkyEstimate:
    """Sky per star: level, per-pixel std, pixel count, level error, fit rejected."""

    value: np.ndarray
    std: np.ndarray
    npix: np.ndarray
    err: np.ndarray
    rejected: np.ndarray
    method: str
    profiles: tuple = ()
    aperture_cov: np.ndarray | float = 0.0  # radial fit only, see fit_radial_sky


def clipped_stats(values, *, sigma=3.0, maxiters=5):
    """Return ``(median, std, n)`` of finite values after iterative sigma clipping.

    Examples
    --------
    >>> med, std, n = clipped_stats(np.r_[np.zeros(99), 1e6])
    >>> float(med), float(std), n
    (0.0, 0.0, 99)
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    for _ in range(maxiters):
        if v.size < 3:
            break
        med, std = np.median(v), v.std()
        keep = np.abs(v - med) <= sigma * std
        if keep.all():
            break
        v = v[keep]
    if v.size == 0:
        return np.nan, np.nan, 0
    return float(np.median(v)), float(v.std()), int(v.size)


def _good_pixels(block, mask_block):
    good = np.isfinite(block)
    if mask_block is not None:
        good &= mask_block == 0
    return block[good]


def _broadcast(estimate, n):
    full = (np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy() for v in estimate)
    return tuple(full)


def global_sky(data, *, n=1, mask=None, region=None):
    """Sigma-clipped median of the frame or of ``region = (x0, x1, y0, y1)``.

    Frames larger than ``MAX_GLOBAL_PIXELS`` are read on a regular subgrid
    (every k-th pixel in x and y); ``npix`` counts the pixels actually used.

    Examples
    --------
    >>> sky = global_sky(np.full((50, 50), 5.0), n=2)
    >>> sky.value.tolist(), int(sky.npix[0])
    ([5.0, 5.0], 2500)
    """
    if region:
        x0, x1, y0, y1 = (int(v) for v in region)
        data = data[y0:y1, x0:x1]
        mask = None if mask is None else mask[y0:y1, x0:x1]
    step = max(1, int(np.ceil(np.sqrt(data.size / MAX_GLOBAL_PIXELS))))
    block = data[::step, ::step]
    mblock = None if mask is None else mask[::step, ::step]
    med, std, npix = clipped_stats(_good_pixels(block, mblock))
    err = std / np.sqrt(max(npix, 1))
    value, std, npix, err = _broadcast((med, std, npix, err), n)
    return SkyEstimate(value, std, npix, err, np.zeros(n, bool), "global")


def _stamp(data, x, y, half):
    ny, nx = data.shape
    xc, yc = round(float(x)), round(float(y))
    x0, x1 = max(xc - half, 0), min(xc + half + 1, nx)
    y0, y1 = max(yc - half, 0), min(yc + half + 1, ny)
    return slice(y0, y1), slice(x0, x1)


def _radii(sl, x, y):
    yy, xx = np.ogrid[sl[0], sl[1]]
    return np.hypot(xx - x, yy - y)


_SLACK = np.sqrt(0.5) + 1e-6  # a star lies within sqrt(0.5) px of its nearest pixel centre


@functools.lru_cache(maxsize=16)
def _annulus_offsets(r_in, r_out):
    """Integer offsets that can fall in the annulus of a star near a pixel centre.

    A star lies within half a pixel (in x and y) of its nearest pixel centre, so
    its distance to any pixel differs from the offset's length by at most
    ``sqrt(0.5)``. Returns ``(dx, dy, n_sure, half, n_inner, n_outer)``: the
    offsets of the square stamp of half size ``half = ceil(r_out)`` (as
    ``_stamp``) that can fall in the annulus, first the ``n_sure`` ones in it
    wherever the star sits in its pixel, then those that depend on it: the
    ``n_inner`` ones that can only fall inside ``r_in``, the ``n_outer`` ones
    that can only fall beyond ``r_out``, then the rest (both: a narrow annulus).
    Cached by radii; read-only arrays.
    """
    half = int(np.ceil(r_out))
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    length = np.hypot(dx, dy).ravel()
    near = (length >= r_in - _SLACK) & (length < r_out + _SLACK)
    sure = (length - _SLACK >= r_in) & (length + _SLACK < r_out)
    inner = near & ~sure & (length + _SLACK < r_out)  # can miss r_in only
    outer = near & ~sure & ~inner & (length - _SLACK >= r_in)  # can miss r_out only
    both = near & ~sure & ~inner & ~outer
    order = np.concatenate([np.flatnonzero(m) for m in (sure, inner, outer, both)])
    dx, dy = dx.ravel()[order], dy.ravel()[order]
    for a in (dx, dy):
        a.flags.writeable = False
    return dx, dy, int(sure.sum()), half, int(inner.sum()), int(outer.sum())


def _off_ring(r2, r_in, r_out, n_inner, n_outer):
    """True where the squared distances ``r2`` (columns: the near offsets of
    ``_annulus_offsets``, in its order) fall outside ``r_in <= r < r_out``."""
    off = np.empty(r2.shape, bool)
    inner, outer, both = (
        slice(0, n_inner),
        slice(n_inner, n_inner + n_outer),
        slice(n_inner + n_outer, None),
    )
    np.less(r2[:, inner], r_in * r_in, out=off[:, inner])
    np.greater_equal(r2[:, outer], r_out * r_out, out=off[:, outer])
    np.logical_not((r2[:, both] >= r_in * r_in) & (r2[:, both] < r_out * r_out), out=off[:, both])
    return off


# added to a float value: -0.0 leaves every value (and the sign of a zero) as it is
_NAN_WHERE = {t: np.array([-0.0, np.nan], t) for t in (np.float16, np.float32, np.float64)}


def _set_nan(values, where):
    """``values[where] = NaN`` in place (float ``values``, a bool ``where`` of its shape),
    as an addition: faster than a masked copy for a scattered ``where``."""
    table = _NAN_WHERE.get(values.dtype.type)
    if table is None or not where.flags.c_contiguous:
        np.copyto(values, np.nan, where=where)
    else:
        values += table.take(where.view(np.uint8))


def _row_search(flat, base, lo, hi, above):
    """For each row, the first index in ``[lo, hi)`` where ``above(value)`` holds; ``hi``
    where it never does.

    ``flat`` holds the sorted rows end to end, row ``k`` from ``base[k]``;
    ``above`` (the values as stored: compare them with float64 arrays, as numpy
    promotes) must be monotone along each row. A vectorised binary search;
    ``lo`` and ``hi`` are not modified.
    """
    while (lo < hi).any():
        mid = (lo + hi) >> 1  # == lo == hi where the search is over: nothing changes
        ok = above(flat.take(base + mid, mode="clip"))
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, np.minimum(mid + 1, hi))
    return lo


def _clipped_rows(rows, *, sigma=3.0, maxiters=5):
    """``clipped_stats`` of every row at once (same clipping rule and iterations).

    ``rows`` holds one star's candidate pixels per row, NaN where a pixel is not
    usable (values are compared and summed in float64, as ``clipped_stats``);
    it is sorted in place, once: a clipped set ``|v - median| <= sigma * std``
    is a contiguous run ``[lo, hi)`` of the sorted row, found by binary search
    (``_kept_run``); the run's sums (of the row less its first median, so the
    variance loses no precision) are the row's sums less the values clipped off
    its ends. Returns ``(median, std, n)`` arrays; median and std are NaN where
    ``n == 0``.
    """
    rows.sort(axis=1)  # NaN last
    n_rows, width = rows.shape
    flat = rows.reshape(-1)
    base = np.arange(n_rows, dtype=np.int64) * width
    lo = np.zeros(n_rows, np.int64)
    hi = _row_search(flat, base, lo, np.full(n_rows, width, np.int64), np.isnan)

    def median_of(rr, lo, hi):
        n = np.maximum(hi - lo, 1)
        a = flat.take(base[rr] + np.minimum(lo + (n - 1) // 2, width - 1)).astype(np.float64)
        b = flat.take(base[rr] + np.minimum(lo + n // 2, width - 1)).astype(np.float64)
        return np.where(n % 2 == 1, a, (a + b) / 2.0)

    every = np.arange(n_rows)
    first = np.nan_to_num(median_of(every, lo, hi))
    s1, s2 = _centred_sums(rows[:, : max(int(hi.max(initial=0)), 1)], first, hi)

    def drop(rr, start, stop):  # take the values in [start, stop) out of the sums
        count = stop - start  # rows rr, twice: both ends
        total = int(count.sum())
        if total == 0:
            return
        owner = np.repeat(np.arange(count.size) % rr.size, count)
        at = np.repeat(np.tile(base[rr], 2) + start - (np.cumsum(count) - count), count)
        u = np.subtract(flat.take(at + np.arange(total)), first[rr].take(owner), dtype=np.float64)
        s1[rr] -= np.bincount(owner, u, minlength=rr.size)
        s2[rr] -= np.bincount(owner, u * u, minlength=rr.size)

    def stats(rr, lo, hi):
        n = np.maximum(hi - lo, 1)
        mean_u = s1[rr] / n
        var = np.maximum(s2[rr] / n - mean_u * mean_u, 0.0)
        return median_of(rr, lo, hi), np.sqrt(var)

    active = np.flatnonzero(hi >= 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(maxiters):
            if active.size == 0:
                break
            a_lo, a_hi = lo[active], hi[active]
            median, std = stats(active, a_lo, a_hi)
            new_lo, new_hi = _kept_run(flat, base[active], a_lo, a_hi, median, std, sigma)
            drop(active, np.concatenate([a_lo, new_hi]), np.concatenate([new_lo, a_hi]))
            lo[active], hi[active] = new_lo, new_hi
            moved = (new_lo != a_lo) | (new_hi != a_hi)
            active = active[moved & (new_hi - new_lo >= 3)]
        median, std = stats(every, lo, hi)
    n = hi - lo
    empty = n == 0
    return np.where(empty, np.nan, median), np.where(empty, np.nan, std), n


def _centred_sums(rows, centre, finite, block=64):
    """Sums of ``rows - centre`` and of its squares per row (float64, NaN as 0).

    ``finite``: per row, the number of leading values that are not NaN (sorted
    rows: the NaNs are last), so NaNs are looked for only from the block's
    smallest count on. In blocks of rows, so the float64 copy stays small (in cache).
    """
    s1, s2 = np.empty(rows.shape[0]), np.empty(rows.shape[0])
    buffer = np.empty((block, rows.shape[1]))
    for start in range(0, rows.shape[0], block):
        stop = min(start + block, rows.shape[0])
        u = buffer[: stop - start]
        np.subtract(rows[start:stop], centre[start:stop, None], out=u)
        tail = u[:, int(finite[start:stop].min()) :]
        np.copyto(tail, 0.0, where=np.isnan(tail))
        s1[start:stop], s2[start:stop] = u.sum(axis=1), np.einsum("ij,ij->i", u, u)
    return s1, s2


def _kept_run(flat, base, lo, hi, median, std, sigma):
    """The run ``[new_lo, new_hi)`` of each sorted row's ``[lo, hi)`` within ``sigma * std``.

    Along a sorted row ``|v - median|`` falls, then rises. The middle element
    (``(lo + hi) // 2``) is kept whenever ``sigma >= 1`` (it lies within one std
    of the median), and then both ends are found by one binary search of twice
    the rows: the first kept value below it, the first one not kept from it on.
    Rows whose middle is not kept search from ``lo`` for both ends, in turn.
    """
    limit = sigma * std

    def kept(v, median, limit):
        return np.abs(v - median) <= limit

    mid = (lo + hi) // 2
    both = np.tile(base, 2)
    start, stop = np.concatenate([lo, mid]), np.concatenate([mid, hi])
    centre = kept(flat.take(np.minimum(base + mid, flat.size - 1)).astype(np.float64), median,
                  limit)  # fmt: skip
    upper = np.arange(2 * lo.size) >= lo.size
    med2, lim2 = np.tile(median, 2), np.tile(limit, 2)
    ends = _row_search(flat, both, start, stop, lambda v: kept(v, med2, lim2) != upper)
    new_lo, new_hi = ends[: lo.size], ends[lo.size :]
    odd = np.flatnonzero(~centre & (lo < hi))
    if odd.size:  # the middle not kept (sigma < 1, or a non-finite std): in turn from lo
        m, lm = median[odd], limit[odd]
        new_lo[odd] = _row_search(flat, base[odd], lo[odd], hi[odd], lambda v: kept(v, m, lm))
        new_hi[odd] = _row_search(flat, base[odd], new_lo[odd], hi[odd],
                                  lambda v: ~kept(v, m, lm))  # fmt: skip
    return new_lo, new_hi


def _annulus_rows(data, mask, x, y, *, r_in, r_out):
    """Candidate pixels of each star's annulus, one row per star, NaN where unusable.

    Each star's square stamp is gathered at once (a window view of the image,
    fancy-indexed by the stamps' corners) and the annulus offsets picked from
    it; only the offsets near ``r_in`` or ``r_out`` are tested against the
    star's exact position, and only stars whose stamp crosses the frame edge
    pay for bounds checks (their pixels are gathered by linear index).
    """
    dx, dy, n_sure, half, n_inner, n_outer = _annulus_offsets(float(r_in), float(r_out))
    ny, nx = data.shape
    cx, cy = np.rint(x).astype(np.int64), np.rint(y).astype(np.int64)
    side = 2 * half + 1
    pick = (dy + half) * side + (dx + half)
    edge = (cx - half < 0) | (cx + half >= nx) | (cy - half < 0) | (cy + half >= ny)
    # ((cx + dx) - x)**2, exactly: x - cx is exact (Sterbenz), so one rounding either
    # way; once per star and stamp column (row), then picked for the offsets near the radii
    steps = np.arange(-half, half + 1)
    ddx2, ddy2 = steps - (x - cx)[:, None], steps - (y - cy)[:, None]
    ddx2 *= ddx2
    ddy2 *= ddy2
    r2 = ddx2.take(dx[n_sure:] + half, axis=1)
    r2 += ddy2.take(dy[n_sure:] + half, axis=1)  # squared: no square root per pixel
    off_ring = _off_ring(r2, r_in, r_out, n_inner, n_outer)
    if ny < side or nx < side:
        edge[:] = True
        rows = np.empty((x.size, dx.size), _as_float(data[:0, :0]).dtype)
    else:  # corners clamped into the frame: the edge stars' rows are redone below
        x0, y0 = np.clip(cx - half, 0, nx - side), np.clip(cy - half, 0, ny - side)
        rows = _as_float(_flat_stamps(data, x0, y0, side).take(pick, axis=1))
        if mask is not None:
            _set_nan(rows, _flat_stamps(mask, x0, y0, side).take(pick, axis=1) != 0)
        _set_nan(rows[:, n_sure:], off_ring)
    if edge.any():
        # per star and stamp column (row), then picked for the offsets
        col, row = cx[edge, None] + steps, cy[edge, None] + steps
        jx, jy = dx + half, dy + half
        usable = ((col >= 0) & (col < nx)).take(jx, axis=1)
        usable &= ((row >= 0) & (row < ny)).take(jy, axis=1)
        usable[:, n_sure:] &= ~off_ring[edge]
        index = (np.clip(row, 0, ny - 1) * nx).take(jy, axis=1)
        index += np.clip(col, 0, nx - 1).take(jx, axis=1)
        if mask is not None:
            usable &= flat_take(mask, index) == 0
        values = _as_float(flat_take(data, index))
        rows[edge] = np.where(usable, values, np.array(np.nan, values.dtype))
    return rows


def _as_float(values):
    return values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)


def square_stamps(image, x0, y0, side):
    """The ``side x side`` stamps ``(n, side, side)`` with corners ``(x0, y0)`` (inside the image).

    One fancy index of a window view of the image: each stamp is copied row by row.

    Examples
    --------
    >>> square_stamps(np.arange(16).reshape(4, 4), np.array([1]), np.array([2]), 2).tolist()
    [[[9, 10], [13, 14]]]
    """
    (ny, nx), (sy, sx) = image.shape, image.strides
    shape = (ny - side + 1, nx - side + 1, side, side)  # sliding_window_view, less checking
    if image.flags.c_contiguous:  # a view of its buffer: built in ~1 us, as_strided in ~10
        windows = np.ndarray(shape, image.dtype, image, 0, (sy, sx, sy, sx))
    else:
        windows = np.lib.stride_tricks.as_strided(image, shape, (sy, sx, sy, sx), writeable=False)
    return windows[y0, x0]


def flat_take(image, index):
    """``image`` at flat (row-major) indices, without copying the image."""
    if image.flags.c_contiguous:
        return image.reshape(-1).take(index)
    return image[index // image.shape[1], index % image.shape[1]]


def _flat_stamps(image, x0, y0, side):
    return square_stamps(image, x0, y0, side).reshape(x0.size, side * side)


def annulus_sky(data, x, y, *, r_in, r_out, mask=None, sigma=3.0):
    """Sigma-clipped median in the annulus ``r_in <= r < r_out`` around each star.

    All stars at once: the annulus pixels of every star are gathered into one
    array (NaN for pixels off the frame, outside the star's annulus, non-finite
    or masked) and clipped row by row as ``clipped_stats`` does.

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image (not modified).
    x, y : array_like
        Star centres (0-based).
    r_in, r_out : float
        Inner and outer radius of the annulus, pixels.
    mask : numpy.ndarray, optional
        Non-zero pixels are ignored.
    sigma : float
        Clipping threshold in standard deviations.

    Returns
    -------
    SkyEstimate

    Examples
    --------
    >>> img = np.full((81, 81), 10.0)
    >>> sky = annulus_sky(img, [40.0], [40.0], r_in=10, r_out=20)
    >>> float(sky.value[0]), float(sky.std[0])
    (10.0, 0.0)
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    order = row_order(y)  # each star's rows on its own: the same values in any order
    x, y = x[order], y[order]
    found = np.full((4, x.size), np.nan)
    dx = _annulus_offsets(float(r_in), float(r_out))[0]
    chunk = max(1, 4_000_000 // max(dx.size, 1))  # bound the gathered array's memory
    for start in range(0, x.size, chunk):
        xs, ys = x[start : start + chunk], y[start : start + chunk]
        rows = _annulus_rows(data, mask, xs, ys, r_in=r_in, r_out=r_out)
        med, std, npix = _clipped_rows(rows, sigma=sigma)
        block = slice(start, start + xs.size)
        found[0, block], found[1, block], found[2, block] = med, std, npix
        found[3, block] = std / np.sqrt(np.maximum(npix, 1))
    out = np.empty_like(found)
    out[:, order] = found
    return SkyEstimate(*out, np.zeros(x.size, bool), "annulus")


def row_order(y):
    """The order of positions from the first image row to the last (stable).

    Stars taken in this order read the image row band by row band, so a
    gather around each star finds most of its pixels still in the CPU cache;
    callers put the results back in the stars' own order.

    Examples
    --------
    >>> row_order(np.array([5.0, 1.0, 3.0, 1.0])).tolist()
    [1, 3, 2, 0]
    """
    return np.argsort(np.asarray(y), kind="stable")


def mesh_sky(data, x, y, *, box, mask=None):
    """photutils ``Background2D`` map read at each star (nearest pixel).

    ``npix`` is the number of pixels in one mesh box.

    Examples
    --------
    >>> sky = mesh_sky(np.full((64, 64), 2.0), [10.0], [20.0], box=16)
    >>> float(sky.value[0])
    2.0
    """
    bad = None if mask is None else mask != 0
    bkg, rms = phot_columns.mesh_background(data, box=box, mask=bad)
    ny, nx = bkg.shape
    ix = np.clip(np.rint(np.atleast_1d(x)).astype(int), 0, nx - 1)
    iy = np.clip(np.rint(np.atleast_1d(y)).astype(int), 0, ny - 1)
    npix = np.full(ix.size, float(min(box, nx) * min(box, ny)))
    std = rms[iy, ix].astype(np.float64)
    return SkyEstimate(
        bkg[iy, ix].astype(np.float64),
        std,
        npix,
        std / np.sqrt(npix),
        np.zeros(ix.size, bool),
        "mesh",
    )


def ring_profile(r, amp, mu, sigma, sky):
    """The radial model ``amp * exp(-(r - mu)**2 / (2 sigma**2)) + sky``.

    Examples
    --------
    >>> float(ring_profile(0.0, 10.0, 0.0, 2.0, 1.0))
    11.0
    """
    return amp * np.exp(-0.5 * ((r - mu) / sigma) ** 2) + sky


def _binned_profile(r, v):
    """Mean radius and value in 1-pixel rings, pixel counts, and each pixel's ring index."""
    k = r.astype(np.int64)
    counts = np.bincount(k)
    use = counts > 0
    rb = np.bincount(k, r)[use] / counts[use]
    pb = np.bincount(k, v)[use] / counts[use]
    return rb, pb, counts[use], (np.cumsum(use) - 1)[k]


def _r_squared(pb, model, w):
    mean = np.average(pb, weights=w)
    ss_tot = np.sum(w * (pb - mean) ** 2)
    return 1.0 - np.sum(w * (pb - model) ** 2) / ss_tot if ss_tot > 0 else -np.inf


def _ring_jacobian(r, amp, mu, sigma, sky):
    """Rows: derivatives of ``ring_profile`` by amp, mu, sigma, sky."""
    e = np.exp(-0.5 * ((r - mu) / sigma) ** 2)
    u = (r - mu) / sigma**2
    return np.array([e, amp * e * u, amp * e * u * (r - mu) / sigma, np.ones_like(r)])


def _least_squares(r, v, p0, *, centred, maxfev):
    """Levenberg-Marquardt fit of ``ring_profile`` to the pixels ``(r, v)``.

    ``centred`` fixes ``mu = 0``. Returns ``(popt, perr, var_sky, sens)`` or
    None: ``perr`` is scaled by the reduced chi^2 (as ``curve_fit`` with
    ``absolute_sigma=False``); ``var_sky`` is the variance of the fitted sky
    for a per-pixel noise of 1, and ``sens`` the derivative of the fitted sky
    by each pixel (linearised at the solution).
    """
    from scipy.optimize import leastsq  # 0.16 s to import: radial sky only

    keep = [0, 2, 3] if centred else [0, 1, 2, 3]

    def full(p):
        return np.insert(p, 1, 0.0) if centred else p

    def residual(p):
        return ring_profile(r, *full(p)) - v

    def jacobian(p):
        return _ring_jacobian(r, *full(p))[keep]

    try:
        popt, _, _, _, ier = leastsq(
            residual, p0, Dfun=jacobian, col_deriv=True, full_output=True, maxfev=maxfev
        )
    except (ValueError, np.linalg.LinAlgError):
        return None
    if ier not in (1, 2, 3, 4) or r.size <= len(p0):
        return None
    jac = jacobian(popt)  # (params, pixels)
    try:
        unit = np.linalg.inv(jac @ jac.T)
    except np.linalg.LinAlgError:
        return None
    if not (np.all(np.isfinite(unit)) and unit[-1, -1] > 0):
        return None
    chi2 = np.sum(residual(popt) ** 2) / (r.size - len(p0))
    perr = full(np.sqrt(np.abs(np.diag(unit)) * chi2))
    return full(popt), perr, float(abs(unit[-1, -1])), (unit @ jac)[-1]


def _fit_profile(r, v, fwhm):
    """Fit the radial profile (every pixel at its radius); (popt, perr, var_sky, sens, r2).

    ``mu`` is free (a defocused ring has ``mu > 0``); when that fit fails or
    runs off into the degenerate ``mu << 0`` regime, ``mu`` is fixed at 0.
    R^2 is that of the profile binned in 1-pixel rings (data and model alike).
    Returns None when no fit converges.
    """
    rb, pb, counts, ring = _binned_profile(r, v)
    if rb.size < 5:
        return None
    outer = v[r > 0.7 * r.max()]
    g0 = float(np.median(outer)) if outer.size else float(np.median(v))
    amp0 = max(float(pb.max()) - g0, 1e-6)
    mu0 = float(rb[np.argmax(pb)]) if np.argmax(pb) > 1 else 0.0
    sigma0 = fwhm / _FWHM_PER_SIGMA
    fit = _least_squares(r, v, [amp0, mu0, sigma0, g0], centred=False, maxfev=60)
    if fit is None or fit[0][1] < -2 * abs(fit[0][2]):
        fit = _least_squares(r, v, [amp0, sigma0, g0], centred=True, maxfev=200)
        if fit is None:
            return None
    popt, perr, var_sky, sens = fit
    popt[2] = abs(popt[2])
    model_b = np.bincount(ring, ring_profile(r, *popt)) / counts
    return popt, perr, var_sky, sens, _r_squared(pb, model_b, counts)


def _asymmetric(r, resid, good, model_height, std, start):
    """Size of the largest clump of pixels beyond ``start`` far above the rest of their ring.

    2-D inputs. ``resid`` is data minus the fitted model; its median per
    1-pixel ring removes the symmetric part of any model mismatch, so what is
    left is light that is not round about the star. A neighbour star makes a
    clump of adjacent pixels; a hot pixel or cosmic ray only one or two.
    """
    wing = good & (r > start)
    if not wing.any():
        return 0
    k = np.where(wing, r.astype(np.int64) + 1, 0)
    rings = np.unique(k[wing])
    medians = np.zeros(k.max() + 1)
    medians[rings] = ndimage.median(resid, labels=k, index=rings)
    hits = wing & (resid - medians[k] > 5 * std + 0.3 * model_height)
    if not hits.any():
        return 0
    labels, _ = ndimage.label(hits, structure=np.ones((3, 3), bool))
    return int(np.bincount(labels.ravel())[1:].max())


def _judge_fit(r2d, v2d, good, popt, perr, r2, fit_quality):
    """Return (accepted, reason, sky std, sky pixel count)."""
    _, mu, sigma, sky = popt
    r, v = r2d[good], v2d[good]
    core = max(mu, 0.0) + 2.5 * sigma  # the profile is at 4 % of its peak there
    outer = r > core
    resid = v - ring_profile(r, *popt)
    n_out = int(outer.sum())
    std = 1.4826 * np.median(np.abs(resid[outer] - np.median(resid[outer]))) if n_out else np.nan
    height = ring_profile(max(mu, 0.0), *popt) - sky
    checks = (
        (np.isfinite(perr[3]) and np.isfinite(r2), "fit did not converge"),
        (r2 >= fit_quality, f"R^2 {r2:.3f} < {fit_quality}"),
        (n_out >= 10 and sigma >= 0.3, "star fills the subframe"),
        (height > 3 * std, "no significant star"),
        (-r.max() < mu < 0.5 * r.max(), "profile centre off"),
    )
    for ok, reason in checks:
        if not ok:
            return False, reason, std, n_out
    model = ring_profile(r2d, *popt)
    start = max(mu, 0.0) + 1.5 * sigma
    if _asymmetric(r2d, v2d - model, good, model - sky, std, start) >= 3:
        return False, "blend: asymmetric light around the star", std, n_out
    return True, "", std, n_out


def fit_radial_sky(data, x, y, *, size, fwhm=4.0, mask=None, fit_quality=0.9, radius=None):
    """Fit the radial profile of one star; return a dict with the sky and the verdict.

    Keys: ``sky``, ``std``, ``npix`` (effective: ``(std / err)**2``), ``err``,
    ``ok``, ``reason``, ``r2``, ``params`` (amp, mu, sigma, sky), ``r``,
    ``values`` (the subframe pixels) and ``aperture_cov``: with an aperture
    ``radius``, the sum over the aperture's pixels of (exact aperture weight x
    derivative of the fitted sky by that pixel). The fit uses pixels that are
    also in the aperture, so the sky error and the aperture sum are correlated.

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> rng = np.random.default_rng(0)
    >>> img = render_stars((41, 41), [20.0], [20.0], [5e4], 3.0) + rng.normal(100, 5, (41, 41))
    >>> fit = fit_radial_sky(img, 20.0, 20.0, size=25, fwhm=3.0)
    >>> fit["ok"], bool(abs(fit["sky"] - 100.0) < 3 * fit["err"])
    (True, True)
    """
    sl = _stamp(data, x, y, int(size) // 2)
    r = _radii(sl, x, y)
    v = data[sl].astype(np.float64)
    good = np.isfinite(v) if mask is None else np.isfinite(v) & (mask[sl] == 0)
    r2d, v2d = r, np.where(good, v, 0.0)
    r, v = r[good], v[good]
    result = {"ok": False, "reason": "subframe too small", "r": r, "values": v, "r2": np.nan}
    result.update(sky=np.nan, std=np.nan, npix=0, err=np.nan, params=None, aperture_cov=0.0)
    fit = _fit_profile(r, v, fwhm) if v.size >= 25 else None
    if fit is None:
        result["reason"] = "fit failed" if v.size >= 25 else result["reason"]
        return result
    popt, perr, var_sky, sens, r2 = fit
    ok, reason, std, _ = _judge_fit(r2d, v2d, good, popt, perr, r2, fit_quality)
    cov = 0.0
    if radius:
        weights = phot_columns.aperture_weights(x - sl[1].start, y - sl[0].start, radius, r2d.shape)
        cov = float(np.sum(weights[good] * sens))
    result.update(ok=ok, reason=reason, r2=float(r2), params=tuple(float(p) for p in popt))
    result.update(
        sky=float(popt[3]),
        std=float(std),
        npix=1.0 / var_sky,
        err=float(std * np.sqrt(var_sky)),
        aperture_cov=cov,
    )
    return result


def radial_sky(
    data, x, y, *, size, annulus, fwhm=4.0, mask=None, fit_quality=0.9, radius=None, keep=False
):
    """Radial-profile sky per star, falling back to the annulus where the fit is rejected.

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image.
    x, y : array_like
        Star centres (0-based).
    size : int
        Side ``L`` of the subframe fitted around each star.
    annulus : tuple of float
        ``(r_in, r_out)`` of the fallback annulus.
    fwhm : float or array_like
        Starting guess of the star width (pixels).
    mask : numpy.ndarray, optional
        Non-zero pixels are ignored.
    fit_quality : float
        Minimum R^2 of the fit.
    radius : float, optional
        Aperture radius, to compute ``aperture_cov`` (see ``fit_radial_sky``).
    keep : bool
        Keep each star's profile and fit in ``profiles`` (for plots).

    Returns
    -------
    SkyEstimate
        ``rejected`` is True where the annulus value was used.

    Examples
    --------
    >>> img = np.full((61, 61), 3.0)
    >>> sky = radial_sky(img, [30.0], [30.0], size=25, annulus=(10, 20))
    >>> bool(sky.rejected[0]), float(sky.value[0])
    (True, 3.0)
    """
    x, y = np.atleast_1d(x), np.atleast_1d(y)
    fwhm = np.broadcast_to(np.asarray(fwhm, dtype=np.float64), x.shape)
    out = np.full((5, x.size), np.nan)
    rejected = np.zeros(x.size, bool)
    profiles = []
    for i in range(x.size):
        fit = fit_radial_sky(
            data,
            x[i],
            y[i],
            size=size,
            fwhm=fwhm[i],
            mask=mask,
            fit_quality=fit_quality,
            radius=radius,
        )
        out[:, i] = fit["sky"], fit["std"], fit["npix"], fit["err"], fit["aperture_cov"]
        rejected[i] = not fit["ok"]
        if keep:
            profiles.append(fit)
    if rejected.any():
        idx = np.flatnonzero(rejected)
        fallback = annulus_sky(data, x[idx], y[idx], r_in=annulus[0], r_out=annulus[1], mask=mask)
        out[:4, idx] = fallback.value, fallback.std, fallback.npix, fallback.err
        out[4, idx] = 0.0
    return SkyEstimate(*out[:4], rejected, "radial", tuple(profiles), out[4])


def estimate_sky(
    data,
    x,
    y,
    *,
    method,
    mask=None,
    region=None,
    annulus=(20.0, 30.0),
    size=25,
    fwhm=4.0,
    fit_quality=0.9,
    box=64,
    radius=None,
    keep=False,
):
    """Measure the sky with the method registered as ``method`` (see ``skymethods``).

    Examples
    --------
    >>> img = np.full((80, 80), 4.0)
    >>> [float(estimate_sky(img, [40.0], [40.0], method=m).value[0]) for m in METHODS]
    [4.0, 4.0, 4.0, 4.0]
    """
    estimator = get(method).resolve()
    if np.size(x) == 0:
        empty = np.zeros(0)
        return SkyEstimate(empty, empty, empty, empty, np.zeros(0, bool), method)
    options = dict(region=region, annulus=annulus, size=size, fwhm=fwhm, fit_quality=fit_quality)
    return estimator(data, x, y, mask=mask, box=box, radius=radius, keep=keep, **options)


# The estimators of the registered methods (skymethods.py), one call signature.


def global_estimator(data, x, y, *, mask, region, **_):
    """``global_sky`` for the stars at ``x, y``."""
    return global_sky(data, n=np.size(x), mask=mask, region=region)


def annulus_estimator(data, x, y, *, mask, annulus, **_):
    """``annulus_sky`` in ``annulus = (r_in, r_out)``."""
    return annulus_sky(data, x, y, r_in=annulus[0], r_out=annulus[1], mask=mask)


def radial_estimator(data, x, y, *, region, box, **options):
    """``radial_sky`` with the other options: the profile fit, the annulus where it fails."""
    return radial_sky(data, x, y, **options)


def mesh_estimator(data, x, y, *, mask, box, **_):
    """``mesh_sky`` with boxes of side ``box``."""
    return mesh_sky(data, x, y, box=box, mask=mask)


def _interp_matrix(n, centres):
    """Linear-interpolation weights (n x len(centres)), extrapolated linearly at the ends."""
    centres = np.asarray(centres, dtype=np.float64)
    weights = np.zeros((n, centres.size))
    if centres.size == 1:
        weights[:] = 1.0
        return weights
    pos = np.arange(n, dtype=np.float64)
    j = np.clip(np.searchsorted(centres, pos) - 1, 0, centres.size - 2)
    t = (pos - centres[j]) / (centres[j + 1] - centres[j])
    weights[np.arange(n), j] = 1.0 - t
    weights[np.arange(n), j + 1] = t
    return weights


def _sorted_clipped_stats(sorted_rows, *, sigma=3.0, maxiters=5):
    """``clipped_stats`` of every row at once; rows sorted ascending, NaN padded at the end."""
    n_rows, width = sorted_rows.shape
    rows = np.arange(n_rows)
    zero = np.zeros((n_rows, 1))
    finite = np.nan_to_num(sorted_rows)
    c1 = np.hstack([zero, np.cumsum(finite, axis=1)])
    c2 = np.hstack([zero, np.cumsum(finite**2, axis=1)])
    lo, hi = np.zeros(n_rows, int), np.isfinite(sorted_rows).sum(axis=1)
    for _ in range(maxiters + 1):
        n = np.maximum(hi - lo, 1)
        mid_lo = np.minimum(lo + (n - 1) // 2, width - 1)
        mid_hi = np.minimum(lo + n // 2, width - 1)
        median = 0.5 * (finite[rows, mid_lo] + finite[rows, mid_hi])
        mean = (c1[rows, hi] - c1[rows, lo]) / n
        std = np.sqrt(np.maximum((c2[rows, hi] - c2[rows, lo]) / n - mean**2, 0.0))
        new_lo = np.sum(sorted_rows < (median - sigma * std)[:, None], axis=1)
        new_hi = np.sum(sorted_rows <= (median + sigma * std)[:, None], axis=1)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    empty = hi - lo <= 0
    return np.where(empty, np.nan, median), np.where(empty, np.nan, std), hi - lo


def _box_samples(data, mask, ye, xe):
    """Every second pixel of each box, one sorted row per box (NaN padded)."""
    boxes = []
    for y0, y1 in pairwise(ye):
        for x0, x1 in pairwise(xe):
            sl = slice(y0, y1, 2), slice(x0, x1, 2)
            boxes.append(_good_pixels(data[sl], None if mask is None else mask[sl]))
    width = max(max(b.size for b in boxes), 1)
    rows = np.full((len(boxes), width), np.nan)
    for i, values in enumerate(boxes):
        rows[i, : values.size] = np.sort(values)
    return rows


def background_map(data, *, mask=None, box=64):
    """Coarse smooth background for detection: clipped medians in boxes, interpolated.

    Returns ``(background, noise)``: a new float32 image and the median of the
    boxes' clipped standard deviations. Each box is read on every second pixel;
    a box far from the median of its 3x3 neighbours (a bright star, a blob)
    takes that median. Linear interpolation between box centres, extrapolated
    linearly to the frame's edges.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:128, 0:128]
    >>> bkg, noise = background_map((10.0 + 0.01 * xx).astype(np.float32), box=32)
    >>> bool(np.abs(bkg - (10.0 + 0.01 * xx)).max() < 1e-3), float(noise) < 0.2
    (True, True)
    """
    ny, nx = data.shape
    ye = np.linspace(0, ny, max(ny // box, 1) + 1).astype(int)
    xe = np.linspace(0, nx, max(nx // box, 1) + 1).astype(int)
    level, noise, count = _sorted_clipped_stats(_box_samples(data, mask, ye, xe))
    shape = (ye.size - 1, xe.size - 1)
    level, noise, count = level.reshape(shape), noise.reshape(shape), count.reshape(shape)
    level = _fill_nan(level)
    finite = noise[np.isfinite(noise)]
    typical = float(np.median(finite)) if finite.size else np.nan
    if level.size >= 9:
        filtered = ndimage.median_filter(level, size=3, mode="nearest")
        error = 1.25 * typical / np.sqrt(np.maximum(count, 1))
        level = np.where(np.abs(level - filtered) > 5 * error, filtered, level)
    # centre of the pixels actually read in each box (every second one)
    wy = _interp_matrix(ny, [np.arange(a, b, 2).mean() for a, b in pairwise(ye)])
    wx = _interp_matrix(nx, [np.arange(a, b, 2).mean() for a, b in pairwise(xe)])
    background = (wy @ level @ wx.T).astype(np.float32)
    return background, typical


def _fill_nan(level):
    bad = ~np.isfinite(level)
    if not bad.any():
        return level
    filled = level.copy()
    filled[bad] = np.nanmedian(level) if (~bad).any() else 0.0
    return filled
