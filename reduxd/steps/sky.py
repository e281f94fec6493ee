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

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage

from reduxd import phot_columns
from reduxd.skymethods import METHODS, get
from reduxd.steps._annulus import annulus_stats

__all__ = ["METHODS", "SkyEstimate", "estimate_sky"]
MAX_GLOBAL_PIXELS = 250_000  # larger frames/regions are subsampled on a regular grid
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
CLIP_ITERS = 5  # clipping iterations of clipped_stats (and of the annulus kernel)


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


def clipped_stats(values, *, sigma=3.0, maxiters=CLIP_ITERS):
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


def flat_take(image, index):
    """``image`` at flat (row-major) indices, without copying the image."""
    if image.flags.c_contiguous:
        return image.reshape(-1).take(index)
    return image[index // image.shape[1], index % image.shape[1]]


def annulus_sky(data, x, y, *, r_in, r_out, mask=None, sigma=3.0):
    """Sigma-clipped median in the annulus ``r_in <= r < r_out`` around each star.

    ``r`` is the distance from the star's centre to a pixel's centre. Per star,
    the annulus pixels that are on the frame, finite and not masked are clipped
    as ``clipped_stats`` does (same rule, iterations, median and std), in the
    compiled kernel ``_annulus.annulus_stats``; stars with no such pixel get
    NaN and ``npix`` 0.

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image, 2-D (not modified). float32 and float64 are read as
        they are; other types as float64 (float16 as float32: the same values).
    x, y : array_like
        Star centres (0-based).
    r_in, r_out : float
        Inner and outer radius of the annulus, pixels: ``0 <= r_in < r_out``.
    mask : numpy.ndarray, optional
        Same shape as ``data``; non-zero pixels are ignored.
    sigma : float
        Clipping threshold in standard deviations.

    Returns
    -------
    SkyEstimate

    Examples
    --------
    >>> img = np.full((81, 81), 10.0)
    >>> img[40, 60] = 1e4  # a hot pixel in the annulus: clipped
    >>> sky = annulus_sky(img, [40.0, 0.0], [40.0, 0.0], r_in=10, r_out=20)
    >>> sky.value.tolist(), sky.std.tolist(), sky.npix.tolist()
    ([10.0, 10.0], [0.0, 0.0], [940.0, 245.0])
    """
    r_in, r_out, sigma = float(r_in), float(r_out), float(sigma)
    if not 0.0 <= r_in < r_out < np.inf:
        raise ValueError(f"annulus sky: need 0 <= r_in < r_out (finite), got ({r_in}, {r_out})")
    if not sigma > 0.0:
        raise ValueError(f"annulus sky: the clipping sigma must be positive, got {sigma}")
    data = _kernel_image(data)
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"annulus sky: x and y must be 1-D of one size, got {x.shape}, {y.shape}")
    order = row_order(y)  # each star on its own: the same values in any order
    median, std, npix = np.empty(x.size), np.empty(x.size), np.empty(x.size, np.int64)
    annulus_stats(
        data, _kernel_mask(mask, data.shape), x[order], y[order], r_in, r_out, sigma,
        CLIP_ITERS, median, std, npix,
    )  # fmt: skip
    out = np.empty((4, x.size))
    out[0, order], out[1, order], out[2, order] = median, std, npix
    out[3, order] = std / np.sqrt(np.maximum(npix, 1))
    return SkyEstimate(*out, np.zeros(x.size, bool), "annulus")


def _kernel_image(data):
    """``data`` as the kernel reads it: 2-D, C-contiguous, native float32 or float64."""
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"annulus sky: the image must be 2-D, got shape {data.shape}")
    kind = {np.float16: np.float32, np.float32: np.float32}.get(data.dtype.type, np.float64)
    return np.ascontiguousarray(data, dtype=kind)


def _kernel_mask(mask, shape):
    """``mask`` as the kernel reads it: None, or C-contiguous uint8 (non-zero: ignored)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"annulus sky: mask shape {mask.shape} is not the image's {shape}")
    if mask.dtype.itemsize == 1 and mask.dtype.kind in "biu":
        return np.ascontiguousarray(mask).view(np.uint8)
    return (mask != 0).view(np.uint8)


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
