"""Photometry of one calibrated light: the step the pipeline calls (pure).

First frame of a field (``reference=None``): full detection (``detect.py``),
sky, aperture measurement, IDs 1..N from the brightest star down.

Following frames (``reference`` given): no full detection. The offset comes
from a vote between the reference's brightest stars and the brightest peaks
of a 4x4-binned image (``match.find_offset``); known stars are re-centred in
small boxes, with a similarity (shift, rotation, scale) fitted to them when the
field rotates (a star that cannot be re-centred within ``match_radius`` is
measured at its predicted position and flagged NOT_RECENTRED); peaks of the
binned image far from every known star are vetted at full resolution and become
new stars with new IDs.
"""

from dataclasses import dataclass, replace

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from reduxd import skymethods
from reduxd.steps import detect, sky
from reduxd.steps.match import FieldReference, assign_ids, brightest, find_offset
from reduxd.steps.measure import (
    COLUMNS,
    Flag,
    aperture_sums,
    describe,
    measure_columns,
    measure_radii,
)

__all__ = ["FieldReference", "PhotParams", "PhotResult", "photometer"]


@dataclass(frozen=True)
class PhotParams:
    """Options of the photometry step (see config.toml, section [photometry])."""

    radius: float = 15.0  # -R, pixels; 0 = from the seeing (``fwhm_factors``)
    radius_fwhm: float = 0.0  # >0: radius = radius_fwhm * measured FWHM
    sky_method: str = skymethods.DEFAULT  # a name in skymethods.py
    subframe: int = 25  # -L, side of the radial-fit subframe
    annulus: tuple[float, float] | None = (20.0, 30.0)  # None: (r_max + 5, r_max + 15)
    sky_region: tuple[int, int, int, int] | None = None  # x0, x1, y0, y1 for global
    smoothing: float = 0.0  # -S, detection only
    detect_sigma: float = 5.0
    fit_quality: float = 0.9  # minimum R^2 of the radial fit
    mesh_box: int = 64
    min_snr: float = 5.0  # below: LOW_SNR flag
    match_radius: float = 3.0  # px, after offset
    max_offset: float = 300.0  # px
    gain_e_per_adu: float = 1.0
    read_noise_e: float = 5.0
    dark_e_per_s: float = 0.0
    noise: str = "measured"  # per-pixel sky variance: measured | model (measure.py)
    large_fwhm: float = 2.0  # LARGE_FWHM above this multiple of the frame's FWHM
    binning: int = 4  # binning of the cheap peak search on following frames
    n_bright: int = 30  # reference stars used to find the offset
    keep_profiles: bool = False  # radial profiles in PhotResult.profiles (plots)
    # radius 0 and radius_fwhm 0: every star through these multiples of the frame's
    # FWHM; the first one listed is the ``flux`` column, the light curve picks one
    fwhm_factors: tuple[float, ...] = (2.0, 1.0, 1.25, 1.5, 2.5, 3.0)


@dataclass(frozen=True)
class PhotResult:
    """Photometry of one frame."""

    table: Table
    reference: FieldReference
    offset: tuple[float, float]
    fwhm: float
    cards: list
    profiles: list | None = None
    n_new: int = 0  # stars added to the reference by this frame
    radius: float = 0.0  # aperture radius used, pixels (differs from params with radius_fwhm)
    apertures: dict | None = None  # multi-aperture: radii (nr,), flux and flux_err (n, nr)


def _radii(params, fwhm):
    """Aperture radii of a frame (pixels); the first is the ``flux`` column's."""
    if params.radius_fwhm > 0 and np.isfinite(fwhm):
        return [float(params.radius_fwhm * fwhm)]
    if params.radius > 0:
        return [float(params.radius)]
    fwhm = float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 4.0
    return [max(1.0, k * fwhm) for k in params.fwhm_factors]


def _annulus(params, radii):
    if params.annulus:
        return tuple(params.annulus)
    return (max(radii) + 5.0, max(radii) + 15.0)


def _frame_fwhm(fwhm, flux, fallback):
    good = np.isfinite(fwhm) & (flux > 0)
    if not good.any():
        return float(fallback)
    return float(np.median(fwhm[good][np.argsort(-flux[good])][:50]))


def _aperture_fwhm(reference, frame_fwhm):
    """The FWHM the apertures scale with: the field's, when :func:`_field_fwhm` fixed it.

    Otherwise (an uncrowded field) the frame's own: radii at a fixed multiple of
    each frame's seeing take in the same fraction of every star's light whatever
    the seeing.
    """
    if reference is not None and reference.aperture_fwhm > 0:
        return reference.aperture_fwhm
    return frame_fwhm


def _field_fwhm(params, x, y, frame_fwhm):
    """On a field's first frame: the FWHM its radii stay fixed at, or 0 to follow the seeing.

    Radii that follow each frame's seeing take in more or less of the neighbours'
    light as the seeing changes, a trend the comparisons do not share with the
    target; so a crowded field (the median distance from a star to its nearest
    detected neighbour is within the outer edge of the sky annulus, the region
    each star's photometry uses) keeps the radii of its first frame. In an
    uncrowded field radii that follow the seeing are steadier (ARCSAT XO-1:
    median nearest neighbour 76 px against an annulus edge of 26 px).

    Examples
    --------
    >>> params = PhotParams(radius=0.0, annulus=None)
    >>> _field_fwhm(params, np.array([0.0, 10.0, 20.0]), np.zeros(3), 3.0)
    3.0
    >>> _field_fwhm(params, np.array([0.0, 100.0, 200.0]), np.zeros(3), 3.0)
    0.0
    """
    if x.size < 2:
        return 0.0
    dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    outer = _annulus(params, _radii(params, frame_fwhm))[1]
    return float(frame_fwhm) if np.median(dist[:, 1]) < outer else 0.0


def _measure_stars(data, mask, exptime, params, x, y, fwhm, frame_fwhm, scale_fwhm):
    radii = _radii(params, frame_fwhm if params.radius_fwhm > 0 else scale_fwhm)
    radius = radii[0]
    guess = np.where(np.isfinite(fwhm), fwhm, frame_fwhm)
    estimate = sky.estimate_sky(
        data,
        x,
        y,
        method=params.sky_method,
        mask=mask,
        region=params.sky_region or None,
        annulus=_annulus(params, radii),
        size=params.subframe,
        fwhm=guess,
        fit_quality=params.fit_quality,
        box=params.mesh_box,
        radius=radius,
        keep=params.keep_profiles,
    )
    detector = dict(
        gain_e_per_adu=params.gain_e_per_adu,
        read_noise_e=params.read_noise_e,
        dark_e_per_s=params.dark_e_per_s,
        noise=params.noise,
    )
    # the sums at every radius once: the first radius's are the table's
    sums = aperture_sums(data, x, y, radii) if len(radii) > 1 else None
    table = measure_columns(
        data, x, y, radius=radius, sky=estimate, exptime=exptime, mask=mask,
        min_snr=params.min_snr, flag_radius=max(radii), sums=sums, **detector,
    )  # fmt: skip
    apertures = None
    if len(radii) > 1:
        flux, flux_err = measure_radii(data, x, y, radii=radii, sky=estimate, sums=sums,
                                       **detector)  # fmt: skip
        apertures = {"radii": np.asarray(radii), "flux": flux, "flux_err": flux_err}
    return table, estimate, radius, apertures


def _neighbour_within(x, y, radius):
    if x.size < 2:
        return np.zeros(x.size, bool)
    # the nearest other star (k=2: the first hit is the star itself)
    dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
    return dist[:, 1] < radius


def _finish(table, ids, fwhm, frame_fwhm, radius, params, blend=None):
    flags = np.asarray(table["flags"]).copy()
    close = _neighbour_within(np.asarray(table["x"]), np.asarray(table["y"]), radius)
    flags[close if blend is None else close | blend] |= Flag.BLEND
    flags[fwhm > params.large_fwhm * frame_fwhm] |= Flag.LARGE_FWHM
    columns = {"star_id": ids, "fwhm": fwhm, "flags": flags}
    values = [columns[c] if c in columns else table[c] for c in COLUMNS]
    return describe(Table(values, names=list(COLUMNS)))


def _cards(params, radius, frame_fwhm, offset, table, estimate, n_new, votes=None):
    cards = [
        ("PHOTSKY", params.sky_method, "sky method"),
        ("PHOTRAD", round(radius, 3), "[pix] aperture radius"),
        ("PHOTFWHM", round(frame_fwhm, 3), "[pix] median FWHM of the stars"),
        ("PHOTNST", len(table), "stars measured"),
        ("PHOTNEW", int(n_new), "stars new to the field"),
        ("PHOTDX", round(offset[0], 3), "[pix] x offset from the field reference"),
        ("PHOTDY", round(offset[1], 3), "[pix] y offset from the field reference"),
    ]
    if params.sky_method == "radial":
        cards.append(("PHOTSKYR", int(estimate.rejected.sum()), "radial sky fits rejected"))
    if votes is not None:
        cards.append(("PHOTVOTE", int(votes), "stars agreeing on the offset"))
    return cards


def _profiles(params, estimate, ids):
    if not params.keep_profiles or not estimate.profiles:
        return None
    return [dict(p, star_id=int(i)) for p, i in zip(estimate.profiles, ids, strict=True)]


def _first_frame(data, mask, exptime, params, reference):
    found = detect.detect_stars(
        data,
        mask=mask,
        detect_sigma=params.detect_sigma,
        smoothing=params.smoothing,
        box=params.mesh_box,
    )
    frame_fwhm = found.frame_fwhm
    scale = _aperture_fwhm(reference, frame_fwhm)
    table, estimate, radius, apertures = _measure_stars(
        data, mask, exptime, params, found.x, found.y, found.fwhm, frame_fwhm, scale
    )
    base = FieldReference.empty() if reference is None else reference
    flux = np.asarray(table["flux"])
    offset, votes = (0.0, 0.0), None
    if len(base):  # a known field where the cheap offset failed: vote with all stars
        bright = brightest(base.flux, params.n_bright)
        dx, dy, votes = find_offset(
            base.x[bright],
            base.y[bright],
            found.x[: 2 * params.n_bright],
            found.y[: 2 * params.n_bright],
            max_offset=params.max_offset,
            tol=2 * params.match_radius,
        )
        offset = (dx, dy) if votes >= min(3, bright.size) else (0.0, 0.0)
        ids, ref = assign_ids(
            base, found.x, found.y, flux, offset=offset, radius=params.match_radius
        )
    else:
        ref = base.extend(found.x, found.y, flux)
        ids = ref.star_id
    fixed = (
        _field_fwhm(params, found.x, found.y, frame_fwhm)
        if reference is None
        else reference.aperture_fwhm
    )
    ref = replace(ref, fwhm=frame_fwhm, aperture_fwhm=fixed)
    table = _finish(table, ids, found.fwhm, frame_fwhm, radius, params, found.blend)
    n_new = len(ref) - len(base)
    cards = _cards(params, radius, frame_fwhm, offset, table, estimate, n_new, votes)
    profiles = _profiles(params, estimate, ids)
    return PhotResult(table, ref, offset, frame_fwhm, cards, profiles, n_new, radius, apertures)


def _inside(shape, x, y):
    ny, nx = shape
    return (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)


def _recentre(data, mask, params, x, y, fwhm_guess):
    half = int(np.ceil(max(2 * fwhm_guess, params.match_radius + 3)))
    level = detect.local_background(data, x, y, half=half, mask=mask)
    rx, ry, fw, _, wflux = detect.refine_stars(
        data, x, y, fwhm=fwhm_guess, background=level, mask=mask
    )
    moved = np.hypot(rx - x, ry - y)
    ok = np.isfinite(fw) & (moved <= params.match_radius) & (wflux > 0)
    return rx, ry, fw, wflux, ok


def _new_stars(data, mask, params, peaks, known_x, known_y, fwhm):
    """Peaks of the binned image far from every known star, vetted at full resolution."""
    if peaks.x.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    far = params.match_radius + peaks.binning + 2 * fwhm
    if known_x.size:
        dist, _ = cKDTree(np.column_stack([known_x, known_y])).query(
            np.column_stack([peaks.x, peaks.y])
        )
        cand = dist > far
    else:
        cand = np.ones(peaks.x.size, bool)
    if not cand.any():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    px, py = detect.peak_position(data, peaks.x[cand], peaks.y[cand], half=peaks.binning)
    half = int(np.ceil(max(3 * fwhm, 8)))
    level = detect.local_background(data, px, py, half=half, mask=mask)
    noise = np.full(px.size, detect.robust_std(data[::16, ::16]))  # per-pixel, whole frame
    # cheap vetting first (hot pixels, cosmic rays, text), then measure the survivors
    ok = detect.vet_peaks(data, px, py, noise=noise, background=level, mask=mask)
    px, py, level, noise = px[ok], py[ok], level[ok], noise[ok]
    x, y, fw, elong, wflux = detect.refine_stars(
        data, px, py, fwhm=fwhm, background=level, mask=mask
    )
    ok = detect.vet_peaks(data, px, py, noise=noise, background=level, elongation=elong, mask=mask)
    ok &= np.isfinite(fw) & (wflux > 0) & _inside(data.shape, x, y)
    ok &= (fw >= 0.5 * fwhm) & ~((fw > 2 * fwhm) & (data[py, px] - level < 10 * noise))
    return x[ok], y[ok], fw[ok]


def _cheap_offset(peaks, reference, params):
    bright = brightest(reference.flux, params.n_bright)
    n = 2 * params.n_bright
    dx, dy, votes = find_offset(
        reference.x[bright],
        reference.y[bright],
        peaks.x[:n],
        peaks.y[:n],
        max_offset=params.max_offset,
        tol=params.binning + params.match_radius,
    )
    return dx, dy, votes, votes >= min(3, bright.size)


def fit_similarity(x0, y0, x1, y1):
    """Least-squares similarity (scale, rotation, shift) taking (x0, y0) to (x1, y1).

    Returns a function ``(x, y) -> (x', y')``; a pure shift with fewer than 3 pairs.

    Examples
    --------
    >>> t = np.radians(0.6)
    >>> x0, y0 = np.array([0.0, 500.0, 0.0, 500.0]), np.array([0.0, 0.0, 500.0, 500.0])
    >>> x1 = np.cos(t) * x0 - np.sin(t) * y0 + 3.0
    >>> y1 = np.sin(t) * x0 + np.cos(t) * y0 - 2.0
    >>> xp, yp = fit_similarity(x0, y0, x1, y1)(np.array([250.0]), np.array([250.0]))
    >>> bool(abs(xp[0] - (np.cos(t) * 250 - np.sin(t) * 250 + 3)) < 1e-9)
    True
    """
    if x0.size < 3:
        dx, dy = float(np.median(x1 - x0)), float(np.median(y1 - y0))
        return lambda x, y: (x + dx, y + dy)
    # x1 = a x0 - b y0 + c ; y1 = b x0 + a y0 + d
    ones, zeros = np.ones_like(x0), np.zeros_like(x0)
    design = np.block([[x0[:, None], -y0[:, None], ones[:, None], zeros[:, None]],
                       [y0[:, None], x0[:, None], zeros[:, None], ones[:, None]]])  # fmt: skip
    (a, b, c, d), *_ = np.linalg.lstsq(design, np.r_[x1, y1], rcond=None)
    return lambda x, y: (a * x - b * y + c, b * x + a * y + d)


def _known_stars(data, mask, params, reference, offset):
    """Re-centre the known stars inside the frame; refine the offset with them.

    A shift is found first; when the re-centred stars show a rotation (or scale)
    too, a similarity fitted to them predicts every star again and the stars are
    re-centred once more. Stars that still cannot be re-centred keep their
    predicted position and are returned with ``ok`` False (flagged NOT_RECENTRED).
    """
    dx, dy = offset
    fwhm_guess = reference.fwhm if reference.fwhm > 0 else 4.0
    inside = _inside(data.shape, reference.x + dx, reference.y + dy)
    px, py = reference.x[inside] + dx, reference.y[inside] + dy
    rx, ry, fw, wflux, ok = _recentre(data, mask, params, px, py, fwhm_guess)
    if ok.any():
        dx += float(np.median(rx[ok] - px[ok]))
        dy += float(np.median(ry[ok] - py[ok]))
    px, py = reference.x[inside] + dx, reference.y[inside] + dy
    if ok.sum() >= 3:
        model = fit_similarity(reference.x[inside][ok], reference.y[inside][ok], rx[ok], ry[ok])
        sx, sy = model(reference.x[inside], reference.y[inside])
        if np.max(np.hypot(sx - px, sy - py)) > 0.5:  # rotation matters: re-centre again
            px, py = sx, sy
            rx, ry, fw, wflux, ok = _recentre(data, mask, params, px, py, fwhm_guess)
    fw = np.where(ok, fw, np.nan)
    frame_fwhm = _frame_fwhm(fw, wflux, fwhm_guess)
    stars = (reference.star_id[inside], np.where(ok, rx, px), np.where(ok, ry, py), fw, ok)
    return stars, (dx, dy), frame_fwhm


def _next_frame(data, mask, exptime, params, reference):
    peaks = detect.coarse_peaks(data, binning=params.binning, nsigma=params.detect_sigma)
    dx, dy, votes, trusted = _cheap_offset(peaks, reference, params)
    if not trusted:
        return _first_frame(data, mask, exptime, params, reference)
    (ids, x, y, fwhm, ok), (dx, dy), frame_fwhm = _known_stars(
        data, mask, params, reference, (dx, dy)
    )
    # new stars: peaks far from every known star, also from those just off the frame
    new_x, new_y, new_fwhm = _new_stars(
        data, mask, params, peaks, reference.x + dx, reference.y + dy, frame_fwhm
    )
    x, y, fwhm = np.r_[x, new_x], np.r_[y, new_y], np.r_[fwhm, new_fwhm]
    scale = _aperture_fwhm(reference, frame_fwhm)
    table, estimate, radius, apertures = _measure_stars(
        data, mask, exptime, params, x, y, fwhm, frame_fwhm, scale
    )
    n_new = new_x.size
    ref = reference.extend(new_x - dx, new_y - dy, np.asarray(table["flux"])[x.size - n_new :])
    ids = np.r_[ids, ref.star_id[len(reference) :]]
    ref = replace(ref, fwhm=frame_fwhm, aperture_fwhm=reference.aperture_fwhm)
    table = _finish(table, ids, fwhm, frame_fwhm, radius, params)
    lost = np.r_[~ok, np.zeros(n_new, bool)]
    table["flags"][lost] |= Flag.NOT_RECENTRED
    cards = _cards(params, radius, frame_fwhm, (dx, dy), table, estimate, n_new, votes)
    profiles = _profiles(params, estimate, ids)
    return PhotResult(table, ref, (dx, dy), frame_fwhm, cards, profiles, n_new, radius, apertures)


def photometer(data, *, mask=None, exptime, params, reference=None):
    """Measure every star of a calibrated frame and keep their IDs across the field.

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image (float32, ADU); not modified.
    mask : numpy.ndarray of uint8, optional
        ``reduxd.maskbits`` bits (BAD, SATURATED, NONFINITE).
    exptime : float
        Exposure time, seconds (for ``mag_inst``).
    params : PhotParams
        Options.
    reference : FieldReference, optional
        The field's stars from earlier frames; None for the first frame.

    Returns
    -------
    PhotResult

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.uniform(30, 170, (2, 8))
    >>> img = render_stars((200, 200), xy[0], xy[1], np.full(8, 2e4), 3.0)
    >>> img = (img + rng.normal(100, 3, img.shape)).astype(np.float32)
    >>> first = photometer(img, exptime=10.0, params=PhotParams(radius=6, sky_method="annulus",
    ...                    annulus=(10, 15)))
    >>> len(first.table), round(first.fwhm)
    (8, 3)
    >>> moved = np.roll(img, (5, -7), axis=(0, 1))
    >>> nxt = photometer(moved, exptime=10.0, params=PhotParams(radius=6),
    ...                  reference=first.reference)
    >>> [round(v) for v in nxt.offset]
    [-7, 5]
    """
    data = np.asarray(data)
    if reference is None or len(reference) == 0:
        return _first_frame(data, mask, exptime, params, None)
    return _next_frame(data, mask, exptime, params, reference)
