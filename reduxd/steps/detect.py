"""Star detection (pure functions, inputs never modified).

``detect_stars`` runs on the first frame of a field:

1. a coarse background (clipped medians in boxes) is removed;
2. the frame's FWHM is measured on the brightest peaks of a binned image
   (adaptive Gaussian-windowed second moments, no guessed FWHM ladder);
3. the image is convolved with a Gaussian matched to that FWHM (plus the
   optional extra smoothing ``S``), thresholded at ``detect_sigma`` times its
   noise, and connected regions of at least ``min_pixels`` pixels are kept;
4. regions with several peaks are split by multi-threshold deblending
   (a branch counts if it holds at least ``contrast`` of the region's light);
5. each peak is centred with windowed moments and vetted on the unsmoothed
   data (``vet_peaks``): a peak whose neighbours hold too little of its light
   (hot pixel, cosmic ray, a saturated stroke of burned-in text next to its
   black box), a peak with pixels far below the sky around it (that black
   box), or a bright, strongly elongated peak (trail) is not a star; neither
   is a source sharper than half the frame's FWHM, nor a faint smudge wider
   than twice the FWHM (vignetting, glow).

Saturated and defocused stars pass: they are flagged later, not dropped.
``coarse_peaks`` is the cheap detector of the following frames of a field.
"""

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from reduxd import maskbits
from reduxd.steps import _centroid, _deblend
from reduxd.steps.combine import median_in_place
from reduxd.steps.sky import background_map, flat_take, row_order

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
IGNORED = maskbits.BAD | maskbits.NONFINITE


@dataclass(frozen=True)
class Detections:
    """Stars found in a frame (0-based pixel positions, x = column)."""

    x: np.ndarray
    y: np.ndarray
    fwhm: np.ndarray  # per star, pixels (NaN when unmeasurable)
    peak: np.ndarray  # highest pixel above the background, ADU
    flux: np.ndarray  # windowed flux above the background (for ranking), ADU
    blend: np.ndarray  # split from a region holding several stars
    frame_fwhm: float
    noise: float  # per-pixel background noise, ADU


@dataclass(frozen=True)
class Peaks:
    """Local maxima of a binned image, brightest first, in full-frame pixels."""

    x: np.ndarray
    y: np.ndarray
    value: np.ndarray  # binned, background-removed value
    noise: float  # noise of one binned pixel
    binning: int


def bin_image(data, factor):
    """Mean over ``factor x factor`` blocks (the ragged border is dropped), float32.

    As numpy's ``data[0::f].astype(float32) + data[1::f] + ...`` over the rows
    of each block, then the same over its columns, then ``/ float32(f * f)``
    (compiled kernel ``_centroid.bin_mean``: one pass, no full-frame copy).

    Examples
    --------
    >>> bin_image(np.arange(16.0).reshape(4, 4), 2).tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if int(factor) != factor or factor < 1:
        raise ValueError(f"bin_image: factor must be an integer >= 1, not {factor}")
    image = np.asarray(data)
    if image.ndim != 2:
        raise ValueError(f"bin_image: the image must be 2-D, not {image.ndim}-D")
    if image.dtype not in (np.float32, np.float64):
        # numpy's float32 += sums: exact in float32 for small ints, else through float64
        exact = np.can_cast(image.dtype, np.float32)
        image = image.astype(np.float32 if exact else np.float64)
    factor = int(factor)
    out = np.empty((image.shape[0] // factor, image.shape[1] // factor), np.float32)
    _centroid.bin_mean(np.ascontiguousarray(image), factor, out)
    return out


def robust_std(values):
    """1.4826 * MAD of the finite values.

    Examples
    --------
    >>> round(robust_std(np.random.default_rng(0).normal(0, 2, 100000)), 1)
    2.0
    """
    v = np.array(values, dtype=np.float64).ravel()  # a copy: the medians partition it
    finite = np.isfinite(v)
    if not finite.all():
        v = v[finite]
    if not v.size:
        return np.nan
    deviation = np.abs(v - median_in_place(v))
    return float(1.4826 * median_in_place(deviation))


def _suppress(x, y, value, radius):
    """Keep the brightest of any group of points closer than ``radius``.

    Greedy, brightest first; only points with a neighbour within ``radius``
    (found at once as pairs) go through the loop, the others are kept.

    Examples
    --------
    >>> _suppress(np.array([0.0, 1.0, 9.0]), np.zeros(3), np.array([1.0, 2.0, 1.0]), 2.0).tolist()
    [False, True, True]
    """
    keep = np.ones(value.size, bool)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    if pairs.size == 0:
        return keep
    neighbours = defaultdict(list)
    for i, j in pairs.tolist():
        neighbours[i].append(j)
        neighbours[j].append(i)
    taken = np.zeros(value.size, bool)
    order = np.argsort(-value, kind="stable")
    for i in order[np.isin(order, pairs)].tolist():  # brightest first
        if taken[i]:
            keep[i] = False
        else:
            taken[neighbours[i]] = True
    return keep


def coarse_peaks(data, *, binning=4, nsigma=5.0, scale=8):
    """Local maxima of a binned, high-passed, lightly smoothed image (cheap).

    Parameters
    ----------
    data : numpy.ndarray
        Image (not modified).
    binning : int
        Block size of the binning.
    nsigma : float
        Threshold in units of the binned image's noise.
    scale : int
        Half size (binned pixels) of the running mean removed as background.

    Returns
    -------
    Peaks
        Brightest first; positions are block centres in full-frame pixels.

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> img = render_stars((128, 128), [40.2, 90.0], [30.0, 100.0], [4e4, 2e4], 3.0)
    >>> rng = np.random.default_rng(0)
    >>> p = coarse_peaks((img + rng.normal(100, 3, img.shape)).astype(np.float32))
    >>> [(round(float(x)), round(float(y))) for x, y in zip(p.x, p.y)]
    [(42, 30), (90, 102)]
    """
    binned = bin_image(data, binning)
    bad = ~np.isfinite(binned)
    if bad.any():
        binned[bad] = np.nanmedian(binned) if not bad.all() else 0.0
    binned = binned - ndimage.uniform_filter(binned, size=2 * scale + 1, mode="nearest")
    noise = robust_std(binned[::2, ::2])
    smooth = ndimage.gaussian_filter(binned, 0.7)
    noise_s = robust_std(smooth[::2, ::2])
    peaks = _local_maxima(smooth) & (smooth > nsigma * noise_s)
    iy, ix = np.nonzero(peaks)
    value = binned[iy, ix]
    x, y = ix * binning + 0.5 * (binning - 1), iy * binning + 0.5 * (binning - 1)
    keep = _suppress(x, y, value, 1.5 * binning) if value.size else np.zeros(0, bool)
    order = np.argsort(-value[keep], kind="stable")
    return Peaks(x[keep][order], y[keep][order], value[keep][order], noise, binning)


def _local_maxima(image):
    """True where a pixel equals the maximum of its 3x3 neighbourhood (within the image).

    As ``image == ndimage.maximum_filter(image, size=3)`` (whose default edge mode
    repeats the edge pixel), by a separable running maximum of shifted slices.

    Examples
    --------
    >>> _local_maxima(np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])).astype(int).tolist()
    [[0, 0, 0], [0, 0, 1]]
    """
    across = image.copy()
    np.maximum(across[:, 1:], image[:, :-1], out=across[:, 1:])
    np.maximum(across[:, :-1], image[:, 1:], out=across[:, :-1])
    both = across.copy()
    np.maximum(both[1:], across[:-1], out=both[1:])
    np.maximum(both[:-1], across[1:], out=both[:-1])
    return image == both


def _box(shape, x, y, half):
    ny, nx = shape
    xc, yc = round(float(x)), round(float(y))
    return (
        slice(max(yc - half, 0), min(yc + half + 1, ny)),
        slice(max(xc - half, 0), min(xc + half + 1, nx)),
    )


def _gather(data, px, py, dx, dy, mask=None):
    """Pixels at integer offsets around each position: (values, usable), shape (n, k).

    Offsets falling off the frame, non-finite values and BAD/NONFINITE mask
    pixels are not usable. Pixels are read by flat index; only the positions
    whose offsets leave the frame pay for bounds checks.
    """
    ny, nx = data.shape
    index = (py * nx + px)[:, None] + (dy * nx + dx)
    usable = np.ones(index.shape, bool)
    edge = (px + dx.min() < 0) | (px + dx.max() >= nx) | (py + dy.min() < 0)
    edge |= py + dy.max() >= ny
    if edge.any():
        xs, ys = px[edge, None] + dx, py[edge, None] + dy
        usable[edge] = (xs >= 0) & (xs < nx) & (ys >= 0) & (ys < ny)
        index[edge] = np.clip(ys, 0, ny - 1) * nx + np.clip(xs, 0, nx - 1)
    values = flat_take(data, index).astype(np.float64)
    usable &= np.isfinite(values)
    if mask is not None:
        usable &= (flat_take(mask, index) & IGNORED) == 0
    return values, usable


def _square(half):
    dy, dx = np.mgrid[-half : half + 1, -half : half + 1]
    return dx.ravel(), dy.ravel()


def local_background(data, x, y, *, half, mask=None):
    """Median of the border pixels of a box around each position.

    The box is the square of half side ``half`` around each rounded position;
    its border pixels that are inside the frame, finite and without a
    BAD/NONFINITE ``mask`` bit are usable. Their median is ``np.median``'s
    (the mean of the middle two for an even count); NaN where none is usable.
    Compiled kernel: ``_centroid.border_median``.

    Parameters
    ----------
    data : numpy.ndarray
        2-D image (not modified); any real dtype.
    x, y : array_like
        Positions (0-based pixels, x = column).
    half : int
        Half side of the box (>= 0).
    mask : numpy.ndarray, optional
        ``reduxd.maskbits`` bits (the image's shape).

    Returns
    -------
    numpy.ndarray
        One float64 level per position.

    Examples
    --------
    >>> float(local_background(np.full((30, 30), 2.0), [15.0], [15.0], half=5)[0])
    2.0
    >>> img = np.arange(25.0).reshape(5, 5)  # border of the 3x3 box at (2, 2): 6 7 8 11 13 16 17 18
    >>> local_background(img, [2.0, -9.0], [2.0, 2.0], half=1).tolist()
    [12.0, nan]
    """
    px, py = _positions(x, y, "local_background")
    half = _half_side(half, "local_background")
    image = _kernel_image(data, "local_background")
    out = np.empty(px.size)
    bits = _kernel_mask(mask, image.shape, "local_background")
    _centroid.border_median(image, bits, IGNORED, px, py, half, out)
    return out


def peak_position(data, x, y, *, half):
    """Integer position of the highest pixel in a box around each position.

    The box is the square of half side ``half`` around the rounded position,
    cut by the frame; NaN pixels rank lowest, and of equal values the first in
    row-major order is taken (compiled kernel ``_centroid.box_argmax``).

    Parameters
    ----------
    data : numpy.ndarray
        2-D image (not modified); any real dtype.
    x, y : array_like
        Positions (0-based pixels, x = column); each box must hold a pixel.
    half : int
        Half side of the box (>= 0).

    Returns
    -------
    tuple of numpy.ndarray
        Columns and rows (int) of the highest pixels.

    Examples
    --------
    >>> img = np.zeros((20, 20)); img[7, 12] = 5.0
    >>> [v.tolist() for v in peak_position(img, [10.0], [8.0], half=2)]
    [[12], [7]]
    """
    x, y = _positions(x, y, "peak_position")
    half = _half_side(half, "peak_position")
    px, py = np.empty(x.size, np.intp), np.empty(x.size, np.intp)
    empty = _centroid.box_argmax(_kernel_image(data, "peak_position"), x, y, half, px, py)
    if empty >= 0:
        raise ValueError(
            f"peak_position: no pixel within {half} of ({x[empty]}, {y[empty]}) in a frame "
            f"of shape {np.shape(data)}"
        )
    return px, py


def refine_star(resid, x, y, *, fwhm, background=0.0, max_fwhm=None, mask=None, iters=12):
    """Gaussian-windowed centroid, FWHM and elongation of one star.

    ``resid - background`` is the star's light. The window adapts to the star's
    size: it grows while the star fills it, up to ``max_fwhm`` (default 4 x
    ``fwhm``), so a defocused star is measured too; a star still filling the
    largest window gets a lower bound of its FWHM.
    Returns ``(x, y, fwhm, elongation, windowed_flux)``; ``fwhm`` is NaN
    when the star cannot be measured and the position is then unchanged.

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> img = render_stars((41, 41), [20.3], [19.6], [1e4], 4.0)
    >>> x, y, fwhm, elong, _ = refine_star(img, 20.0, 20.0, fwhm=2.0)
    >>> round(x, 2), round(y, 2), round(fwhm, 1), round(elong, 2)
    (20.3, 19.6, 4.0, 1.0)
    """
    out = refine_stars(
        resid, [x], [y], fwhm=fwhm, background=background, max_fwhm=max_fwhm, mask=mask, iters=iters
    )
    return tuple(float(v[0]) for v in out)


def refine_stars(resid, x, y, *, fwhm, background=0.0, max_fwhm=None, mask=None, iters=12):
    """``refine_star`` for many positions; returns arrays x, y, fwhm, elongation, flux.

    Each star iterates on its own (compiled kernel ``_centroid.refine``, in
    image row order so that its box is read from cache) with these steps:
    Gaussian-windowed moments of ``resid - background`` in a box of half size
    ``ceil(3 sigma_w) + 1`` around the rounded position, cut by the frame
    (BAD/NONFINITE mask pixels and NaN count as 0); a move by twice the first
    moment, unless the moments are undefined or the star would leave
    ``6 sigma_w + 3`` of its start (it then fails: position unchanged, NaN
    results); the window doubles, up to ``max_fwhm``, while the star fills it
    (second moment >= 0.9 of the window's), else it is narrowed to the star's
    deconvolved size; the star stops when that size settles (1 %) and the
    first moments ``|mx| + |my|`` are below 0.01 px, or after ``iters`` steps.

    Parameters
    ----------
    resid : numpy.ndarray
        2-D image (not modified); any real dtype.
    x, y : array_like
        Starting positions (0-based pixels, x = column).
    fwhm : float or array_like
        Starting FWHM of the window (finite), per star or for all.
    background : float or array_like
        Level removed from the pixels, per star or for all.
    max_fwhm : float or array_like, optional
        Largest window FWHM (finite); default 4 x ``fwhm``.
    mask : numpy.ndarray, optional
        ``reduxd.maskbits`` bits (the image's shape).
    iters : int
        Most steps per star.

    Returns
    -------
    tuple of numpy.ndarray
        x, y, fwhm, elongation, windowed flux; fwhm, elongation and flux are
        NaN (and the position unchanged) where a star cannot be measured.

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> img = render_stars((60, 60), [15.0, 40.0], [20.0, 41.0], [1e4, 1e4], 3.0)
    >>> out = refine_stars(img, [15.4, 39.6], [20.4, 41.4], fwhm=3.0)
    >>> np.round(out[0], 2).tolist(), np.round(out[2], 1).tolist()
    ([15.0, 40.0], [3.0, 3.0])
    """
    x0, y0 = _positions(x, y, "refine_stars")
    fwhm = _per_star(fwhm, x0.size, "fwhm")
    top = _per_star(4 * fwhm if max_fwhm is None else max_fwhm, x0.size, "max_fwhm")
    bkg = _per_star(background, x0.size, "background")
    if not (np.isfinite(fwhm).all() and np.isfinite(top).all()):
        raise ValueError("refine_stars: fwhm and max_fwhm must be finite")
    image = _kernel_image(resid, "refine_stars")
    mask = _kernel_mask(mask, image.shape, "refine_stars")
    order = row_order(y0).astype(np.intp)
    out = np.empty((5, x0.size))
    _centroid.refine(
        image, mask, IGNORED, x0, y0, fwhm, bkg, top, order, iters, FWHM_PER_SIGMA, out
    )
    return tuple(out)


def _per_star(value, n, name):
    """``value`` as a contiguous float64 array of ``n`` values (a scalar is repeated)."""
    value = np.asarray(value, dtype=np.float64)
    try:
        return np.ascontiguousarray(np.broadcast_to(value, (n,)))
    except ValueError:
        message = f"refine_stars: {name} must be a scalar or one value per star, not {value.shape}"
        raise ValueError(message) from None


def _positions(x, y, caller):
    """x and y as contiguous 1-D float64 arrays of one size, for a kernel."""
    x = np.ascontiguousarray(np.atleast_1d(np.asarray(x, dtype=np.float64)))
    y = np.ascontiguousarray(np.atleast_1d(np.asarray(y, dtype=np.float64)))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"{caller}: x and y must be 1-D of one size, not {x.shape}, {y.shape}")
    return x, y


def _half_side(half, caller):
    """``half`` as an int >= 0 (a box's half side)."""
    if int(half) != half or half < 0:
        raise ValueError(f"{caller}: half must be an integer >= 0, not {half}")
    return int(half)


def _kernel_image(image, caller):
    """A C-contiguous float32 or float64 2-D view (or converted copy) of ``image``."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"{caller}: the image must be 2-D, not {image.ndim}-D")
    if image.dtype not in (np.float32, np.float64):
        image = image.astype(np.float64)  # ints and float16: the same values
    return np.ascontiguousarray(image)


def _kernel_mask(mask, shape, caller):
    """A C-contiguous uint8 mask for a kernel ((0, 0) for none); the kernel tests the
    IGNORED bits itself."""
    if mask is None:
        return np.zeros((0, 0), np.uint8)
    if mask.shape != shape:
        raise ValueError(f"{caller}: mask shape {mask.shape} is not the image's {shape}")
    return np.ascontiguousarray(mask if mask.dtype == np.uint8 else mask & IGNORED, np.uint8)


def vet_peaks(
    resid, px, py, *, noise, background=0.0, elongation=None, mask=None, max_elongation=2.5
):
    """True where an integer peak looks like a star rather than an artefact.

    Rejects: a peak whose eight neighbours hold almost no light, or one of
    them none at all (hot pixel, single-pixel cosmic ray, a saturated stroke of
    burned-in text next to its black box); a peak with at least two pixels below
    ``-5 * noise`` within 4 pixels (burned-in text on a black box, frame-edge
    garbage); a peak above 10 sigma with elongation above ``max_elongation``
    (trails, text strokes).

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> img = render_stars((40, 40), [10.0], [10.0], [2000.0], 3.0)
    >>> img[30, 30] = 500.0  # hot pixel
    >>> vet_peaks(img, [10, 30], [10, 30], noise=1.0).tolist()
    [True, False]
    """
    px = np.atleast_1d(np.asarray(px, dtype=np.int64))
    py = np.atleast_1d(np.asarray(py, dtype=np.int64))
    if px.size == 0:
        return np.zeros(0, bool)
    sigma = np.broadcast_to(np.asarray(noise, dtype=np.float64), px.shape)[:, None]
    bkg = np.broadcast_to(np.asarray(background, dtype=np.float64), px.shape)[:, None]
    dx, dy = _square(1)
    values, usable = _gather(resid, px, py, dx, dy, mask)
    values -= bkg
    centre = (dx == 0) & (dy == 0)
    peak = values[:, centre][:, 0]
    n_nb = np.maximum(usable[:, ~centre].sum(axis=1), 1)
    mean_nb = np.where(usable[:, ~centre], values[:, ~centre], 0.0).sum(axis=1) / n_nb
    sharp_ok = mean_nb >= 0.2 * peak - 3 * sigma[:, 0] / np.sqrt(n_nb)
    # every neighbour of a star's peak holds some of its light (>= 1.7 % for FWHM 1.5)
    min_nb = np.where(usable[:, ~centre], values[:, ~centre], np.inf).min(axis=1)
    sharp_ok &= min_nb >= 0.01 * peak - 3 * sigma[:, 0]
    values, usable = _gather(resid, px, py, *_square(4), mask)
    hole = np.count_nonzero(usable & (values - bkg < -5 * sigma), axis=1) >= 2
    ok = sharp_ok & ~hole
    if elongation is not None:
        ok &= ~((peak > 10 * sigma[:, 0]) & (np.asarray(elongation) > max_elongation))
    return ok


def _segment_peaks(det, region, thresh, contrast, min_pixels, nlevels=32, *, maxima=None):
    """Peaks of one connected region, split by multi-threshold deblending.

    ``maxima``: the region's local maxima (``det`` equal to its 3x3 maximum filter),
    which only saves work: each part above a level holds one of them.
    """
    values = det[region]
    peak = values.max()
    if peak <= thresh:
        return [np.unravel_index(np.argmax(np.where(region, det, -np.inf)), det.shape)], False
    levels = thresh * (peak / thresh) ** (np.arange(1, nlevels) / nlevels)
    min_flux = contrast * values.sum()
    if maxima is None:
        maxima = (det == ndimage.maximum_filter(det, size=3)) & region
    leaves = _split(det, region, levels, 0, min_flux, min_pixels, maxima)
    return leaves, len(leaves) > 1


def _split(det, region, levels, start, min_flux, min_pixels, maxima):
    """The leaves of ``region``: its parts at the first level where two or more are
    strong, each split again above it; the region's highest pixel if none is.

    A part above a level holds a local maximum of ``det`` above it (its highest
    pixel), so a level with fewer than two of the region's ``maxima`` above it, and
    every level above that one, has fewer than two parts: the search stops there.
    The search is compiled (:func:`reduxd.steps._deblend.split`): the parts
    ``scipy.ndimage.label`` and ``sum_labels`` give, without their cost per level.
    """
    if det.dtype not in (np.float32, np.float64):
        det = det.astype(np.float64)
    return _deblend.split(
        np.ascontiguousarray(det),
        np.ascontiguousarray(region, dtype=bool).view(np.uint8),
        np.ascontiguousarray(levels, dtype=np.float64),
        start,
        float(min_flux),
        float(min_pixels),
        np.ascontiguousarray(maxima, dtype=bool).view(np.uint8),
    )


def _candidates(det, thresh, *, min_pixels, contrast):
    """Integer peaks of the detection image, whether each came from a split region,
    and the diameter of the region (pixels), region by region in label order.

    A region's local maxima are its pixels equal to their 3x3 maximum in ``det``
    (its neighbours outside it are at most ``thresh``, below all of its pixels).
    A region with one is one peak there, found for all such regions at once; one
    with more is split by :func:`_segment_peaks`.
    """
    labels, n = ndimage.label(det > thresh, structure=np.ones((3, 3), bool))
    npix = np.bincount(labels.ravel(), minlength=n + 1)
    peak = (det == ndimage.maximum_filter(det, size=3)) & (labels > 0)
    py, px = np.nonzero(peak)
    owner = labels[py, px]
    kept = npix >= min_pixels
    kept[0] = False
    npeaks = np.bincount(owner, minlength=n + 1)
    one = (kept & (npeaks == 1))[owner]
    lab, ys, xs, blend = [owner[one]], [py[one]], [px[one]], [np.zeros(one.sum(), bool)]
    slices = ndimage.find_objects(labels)
    for k in np.flatnonzero(kept & (npeaks > 1)).tolist():
        sl = slices[k - 1]
        region = labels[sl] == k
        leaves, split = _segment_peaks(det[sl], region, thresh, contrast, min_pixels,
                                       maxima=peak[sl] & region)  # fmt: skip
        lab.append(np.full(len(leaves), k))
        ys.append(np.array([sl[0].start + jy for jy, _ in leaves], dtype=np.intp))
        xs.append(np.array([sl[1].start + jx for _, jx in leaves], dtype=np.intp))
        blend.append(np.full(len(leaves), split))
    lab = np.concatenate(lab)
    order = np.argsort(lab, kind="stable")
    x, y, blend = (np.concatenate(v)[order] for v in (xs, ys, blend))
    return x.astype(int), y.astype(int), blend, 2 * np.sqrt(npix[lab[order]] / np.pi)


def measure_frame_fwhm(resid, *, noise, mask=None, n=30, binning=4):
    """Median FWHM of the brightest star-like peaks (binned search, adaptive windows).

    Returns NaN when no star-like peak is found.

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> rng = np.random.default_rng(3)
    >>> xy = rng.uniform(20, 180, (2, 15))
    >>> img = render_stars((200, 200), xy[0], xy[1], np.full(15, 2e4), 5.0)
    >>> round(measure_frame_fwhm(img + rng.normal(0, 5, img.shape), noise=5.0), 1)
    5.0
    """
    peaks = coarse_peaks(resid, binning=binning, nsigma=10.0)
    px, py = peak_position(resid, peaks.x[:n], peaks.y[:n], half=binning)
    ok = vet_peaks(resid, px, py, noise=noise, mask=mask)
    if mask is not None and ok.any():
        ok &= np.array(
            [
                not np.any(mask[_box(mask.shape, a, b, 2)] & maskbits.SATURATED)
                for a, b in zip(px, py, strict=True)
            ]
        )
    if not ok.any():
        return np.nan
    _, _, fwhm, elong, _ = refine_stars(resid, px[ok], py[ok], fwhm=2.0, max_fwhm=64.0, mask=mask)
    good = np.isfinite(fwhm) & (elong < 2.0)
    return float(np.median(fwhm[good])) if good.any() else np.nan


def _residual(data, mask, box):
    """Data minus a coarse background (new float32 array; ignored pixels 0) and the noise."""
    background, noise = background_map(data, mask=mask, box=box)
    resid = np.subtract(data, background, dtype=np.float32)
    if mask is not None:
        ignore = (mask & IGNORED) != 0
        if ignore.any():
            resid[ignore] = 0.0
    np.nan_to_num(resid, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return resid, noise


def _measured_candidates(resid, det, thresh, *, fwhm, noise, mask, min_pixels, contrast):
    """Candidate peaks that pass vetting: arrays x, y, fwhm, flux, blend, peak."""
    px, py, blend, size = _candidates(det, thresh, min_pixels=min_pixels, contrast=contrast)
    significance = det[py, px] / thresh  # in units of the threshold
    px, py = peak_position(resid, px, py, half=1)
    first = vet_peaks(resid, px, py, noise=noise, mask=mask)  # cheap: hot pixels out first
    px, py, blend, size, significance = (v[first] for v in (px, py, blend, size, significance))
    top = np.maximum(3 * fwhm, 2 * size)
    x, y, fw, elong, flux = refine_stars(resid, px, py, fwhm=fwhm, max_fwhm=top, mask=mask)
    ok = vet_peaks(resid, px, py, noise=noise, elongation=elong, mask=mask)
    ok &= (flux > 0) & ~(fw < 0.5 * fwhm)  # sharper than the PSF: cosmic ray, hot pixel
    ok &= ~((fw > 2 * fwhm) & (significance < 4))  # faint smudge: background structure
    peak = resid[py, px].astype(np.float64)
    return tuple(v[ok] for v in (x, y, fw, flux, blend, peak))


def detect_stars(
    data,
    *,
    mask=None,
    detect_sigma=5.0,
    smoothing=0.0,
    box=64,
    fwhm=None,
    min_pixels=5,
    contrast=0.005,
):
    """Find stars in a calibrated frame (see the module docstring for the method).

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image (not modified).
    mask : numpy.ndarray of uint8, optional
        ``reduxd.maskbits`` bits; BAD and NONFINITE pixels are ignored.
    detect_sigma : float
        Threshold in units of the detection image's noise.
    smoothing : float
        Extra Gaussian smoothing sigma (pixels) for detection only; 0 = off.
    box : int
        Box size of the coarse background.
    fwhm : float, optional
        Known FWHM; measured from the data when None.
    min_pixels : int
        Smallest connected region above the threshold.
    contrast : float
        Deblending contrast (fraction of the region's light).

    Returns
    -------
    Detections

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> rng = np.random.default_rng(2)
    >>> img = render_stars((100, 100), [30.0, 70.0], [40.0, 60.0], [5e3, 8e3], 3.0)
    >>> img = (img + rng.normal(50, 2, img.shape)).astype(np.float32)
    >>> img[80, 20] += 3000  # hot pixel
    >>> found = detect_stars(img, box=50)
    >>> np.round(found.x).tolist(), np.round(found.y).tolist(), round(found.frame_fwhm)
    ([70.0, 30.0], [60.0, 40.0], 3)
    """
    resid, noise = _residual(data, mask, box)
    if fwhm is None:
        fwhm = measure_frame_fwhm(resid, noise=noise, mask=mask)
    fwhm = float(fwhm) if np.isfinite(fwhm) else 3.0
    sigma_k = float(np.clip(np.hypot(fwhm / FWHM_PER_SIGMA, smoothing), 0.5, 10.0))
    det = ndimage.gaussian_filter(resid, sigma_k)
    thresh = detect_sigma * robust_std(det[::3, ::3])
    x, y, fw, flux, blend, peak = _measured_candidates(
        resid,
        det,
        thresh,
        fwhm=fwhm,
        noise=noise,
        mask=mask,
        min_pixels=min_pixels,
        contrast=contrast,
    )
    keep = _suppress(x, y, flux, 0.5 * fwhm) if x.size else np.zeros(0, bool)
    order = np.argsort(-flux[keep], kind="stable")
    x, y, fw, flux, blend, peak = (v[keep][order] for v in (x, y, fw, flux, blend, peak))
    typical = (fw >= 0.5 * fwhm) & (fw <= 2 * fwhm)  # the frame's PSF, not defocused ones
    frame_fwhm = float(np.median(fw[typical][:50])) if typical.any() else fwhm
    return Detections(x, y, fw, peak, flux, blend, frame_fwhm, noise)
