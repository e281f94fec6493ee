"""Aperture fluxes, CCD-equation errors, instrumental magnitudes and flags (pure).

Noise model (``noise="measured"``, the default): the per-pixel sky variance is
the measured variance of the sky pixels, converted to electrons. That variance
already contains sky photon noise, read noise, dark-current noise and the noise
of the calibration masters, so read noise and dark current are *not* added
again. With ``noise="model"`` the per-pixel variance is built from the terms
instead: ``sky * g + dark_e_per_s * exptime + read_noise_e**2``.

In electrons, with ``n_ap`` the aperture area and ``sky_err`` the uncertainty
of the sky level::

    var = flux * g + n_ap * var_pix + n_ap**2 * sky_err**2

For median skies ``sky_err**2 = var_pix / n_sky``, which is the textbook
``n_ap * (1 + n_ap / n_sky) * var_pix``; for the radial fit ``sky_err`` is
the sky noise propagated through the fit (``n_sky`` is then the effective
number of sky pixels) and, because that fit also uses pixels inside the
aperture, the covariance term ``- 2 * n_ap * var_pix * aperture_cov`` is added
(``SkyEstimate.aperture_cov``; 0 for the other methods).
``flux_err = sqrt(var) / g`` (ADU),
``mag_err = 1.0857 * flux_err / flux``, ``snr = flux / flux_err``.
"""

import enum

import numpy as np
from astropy.table import Table

from reduxd import maskbits
from reduxd.schema import PHOT_COLUMNS, STAR_NAMES
from reduxd.steps import _apertures

MAG_PER_LN = 2.5 / np.log(10.0)  # 1.0857


class Flag(enum.IntFlag):
    """Bits of the ``flags`` column (0 = clean measurement)."""

    SATURATED = 1  # a pixel of the aperture is saturated in the raw frame (mask bit)
    NEAR_EDGE = 2  # the aperture extends beyond the frame
    BAD_PIXEL = 4  # a BAD/NONFINITE mask pixel or a non-finite value in the aperture
    SKY_FIT_REJECTED = 8  # radial sky fit rejected: the annulus sky was used
    LOW_SNR = 16  # snr below min_snr
    BLEND = 32  # another star inside the aperture, or split from a blended region
    NONPOSITIVE_FLUX = 64  # flux <= 0: no magnitude
    LARGE_FWHM = 128  # FWHM more than twice the frame's median (defocused, extended)
    NOT_RECENTRED = 256  # re-centring failed: measured at the predicted position


Flags = Flag  # the name used in reduxd.products.tables


# unit and description of the columns this step gives (reduxd.schema: the one definition)
COLUMNS = {c.name: (c.unit, c.description) for c in PHOT_COLUMNS if c.name in STAR_NAMES}


def flux_error(
    flux,
    *,
    n_ap,
    sky_std,
    sky_err,
    gain,
    exptime=0.0,
    sky=0.0,
    sky_npix=1.0,
    read_noise_e=0.0,
    dark_e_per_s=0.0,
    noise="measured",
    aperture_cov=0.0,
):
    """CCD-equation flux uncertainty in ADU (see the module docstring).

    Examples
    --------
    >>> float(flux_error(100.0, n_ap=1.0, sky_std=0.0, sky_err=0.0, gain=1.0))
    10.0
    >>> e = flux_error(0.0, n_ap=4.0, sky_std=3.0, sky_err=3.0 / 2, gain=1.0)
    >>> float(e) == float(np.sqrt(4 * (1 + 4 / 4) * 9))
    True
    """
    g = gain
    source = np.clip(np.asarray(flux, dtype=np.float64) * g, 0.0, None)
    if noise == "measured":
        var_pix = (np.asarray(sky_std) * g) ** 2
        var_level = (np.asarray(sky_err) * g) ** 2
    elif noise == "model":
        var_pix = np.clip(np.asarray(sky) * g, 0, None) + dark_e_per_s * exptime + read_noise_e**2
        var_level = var_pix / np.asarray(sky_npix, dtype=np.float64)
    else:
        raise ValueError(f"noise must be 'measured' or 'model', not {noise!r}")
    cross = 2 * n_ap * var_pix * np.asarray(aperture_cov)  # sky fitted on aperture pixels
    return np.sqrt(np.clip(source + n_ap * var_pix + n_ap**2 * var_level - cross, 0, None)) / g


def aperture_flags(shape, x, y, radius, mask=None):
    """SATURATED, BAD_PIXEL and NEAR_EDGE bits for circular apertures.

    A pixel counts when its centre is within ``radius + 0.5`` of the star.
    The flagged mask pixels are paired with the stars by a k-d tree (all stars
    at once; the cost grows with the number of flagged pixels, not of stars).

    Examples
    --------
    >>> m = np.zeros((50, 50), np.uint8); m[20, 22] = maskbits.SATURATED
    >>> [Flag(f).name for f in aperture_flags(m.shape, [20.0, 2.0], [20.0, 40.0], 3.0, m)]
    ['SATURATED', 'NEAR_EDGE']
    """
    ny, nx = shape
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    flags = np.zeros(x.size, np.int64)
    edge = (x - radius < -0.5) | (y - radius < -0.5) | (x + radius > nx - 0.5)
    edge |= y + radius > ny - 0.5
    flags[edge] |= Flag.NEAR_EDGE
    if mask is None or x.size == 0:
        return flags
    bits = _mask_bits_within(mask, x, y, radius + 0.5)
    flags[(bits & maskbits.SATURATED) != 0] |= Flag.SATURATED
    flags[(bits & (maskbits.BAD | maskbits.NONFINITE)) != 0] |= Flag.BAD_PIXEL
    return flags


def _mask_bits_within(mask, x, y, reach):
    """OR of the mask bits of the pixels whose centres lie within ``reach`` of each star."""
    py, px = flagged_pixels(mask)
    bits = np.zeros(x.size, np.int64)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if py.size == 0 or finite.size == 0:
        return bits
    from scipy.spatial import cKDTree  # 0.2 s to import: not at the coordinator's start

    stars = cKDTree(np.column_stack([x[finite], y[finite]]))
    pixels = cKDTree(np.column_stack([px, py]).astype(np.float64))
    pairs = stars.sparse_distance_matrix(pixels, reach, output_type="ndarray")
    found = mask[py[pairs["j"]], px[pairs["j"]]].astype(np.int64)
    np.bitwise_or.at(bits, finite[pairs["i"]], found)
    return bits


def flagged_pixels(mask):
    """``np.nonzero(mask)`` of a 2-D mask, in the same order, reading only the rows that
    have a flagged pixel (0.3 against 9 ms for a 1608x1104 mask with a hundred).

    Examples
    --------
    >>> m = np.zeros((4, 5), np.uint8); m[1, 3] = m[3, 0] = m[3, 4] = 2
    >>> [a.tolist() for a in flagged_pixels(m)]
    [[1, 3, 3], [3, 0, 4]]
    """
    rows = np.flatnonzero(mask.any(axis=1))
    py, px = np.nonzero(mask[rows])
    return rows[py], px


def _kernel_image(data):
    """``data`` as the kernel reads it: 2-D, C-contiguous, native float32 or float64."""
    data = np.asarray(data)
    if data.ndim != 2:
        raise ValueError(f"aperture sums need a 2-D image, not shape {data.shape}")
    if data.dtype.kind == "f" and data.dtype.itemsize in (4, 8):
        data = data.astype(data.dtype.newbyteorder("="), copy=False)  # FITS byte order: a copy
    else:
        data = data.astype(np.float64)
    return np.ascontiguousarray(data)


def circle_pass(data, x, y, radii):
    """Exact circular-aperture sums and covered areas of every star at every radius.

    One pass of a compiled kernel (``_apertures.pyx``) over the box of each
    star's largest radius: a pixel wholly inside a radius is added once (to the
    smallest such radius; the sums are cumulated across radii at the end), and
    the exact overlap of circle and pixel square (photutils' ``method="exact"``,
    sep's ``subpix=0``) is computed only for the radii whose circle crosses the
    pixel. Sums in float64 of float32 or float64 pixels; the stars are taken in
    row order (the image is read band by band).

    Parameters
    ----------
    data : array_like
        2-D image (float32 and float64 read as they are, other types as float64).
    x, y : array_like
        0-based centres (x = column), one per star.
    radii : array_like
        Radii in pixels (>= 0, any order).

    Returns
    -------
    sums, areas : numpy.ndarray
        ``(n, n_radii)`` float64: the sum of pixel value times overlap, and the
        sum of overlaps, over the finite pixels on the frame. NaN when no pixel
        of the aperture's bounding box is on the frame (as photutils); 0 for a
        non-finite centre.
    bad : numpy.ndarray of bool
        ``(n, n_radii)``: a non-finite pixel overlaps the aperture (it is left out
        of the sum and of the area), or the aperture is wholly off the frame.

    Examples
    --------
    >>> img = np.ones((9, 9), np.float32); img[4, 6] = np.nan
    >>> sums, areas, bad = circle_pass(img, [4.0, -0.5], [4.0, -0.5], [1.0, 3.0])
    >>> bool(np.allclose(sums[0], [np.pi, areas[0, 1]])), bad[0].tolist()
    (True, [False, True])
    >>> bool(np.isclose(areas[1, 1], np.pi * 9 / 4))  # centred on the frame's corner
    True
    """
    data = _kernel_image(data)
    x = np.ascontiguousarray(np.atleast_1d(x), dtype=np.float64)
    y = np.ascontiguousarray(np.atleast_1d(y), dtype=np.float64)
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of one length, not {x.shape} and {y.shape}")
    if radii.ndim != 1 or not np.all(np.isfinite(radii) & (radii >= 0)):
        raise ValueError(f"radii must be a 1-D list of finite radii >= 0, not {radii}")
    n, m = x.size, radii.size
    ascending = np.argsort(radii, kind="stable")
    sums, areas = np.zeros((n, m)), np.zeros((n, m))
    bad = np.zeros((n, m), np.uint8)
    sorted_radii = np.ascontiguousarray(radii[ascending])
    from reduxd.steps.sky import row_order  # with scipy.ndimage: not at the coordinator's start

    _apertures.circle_pass(data, x, y, sorted_radii, sums, areas, bad, row_order(y))
    if np.any(ascending != np.arange(m)):  # back to the order of radii
        back = np.argsort(ascending)
        sums, areas, bad = sums[:, back], areas[:, back], bad[:, back]
    ny, nx = data.shape
    xs, ys, r = x[:, None], y[:, None], radii[None, :]
    # no pixel of the aperture's bounding box on the frame: NaN, as photutils
    off = (np.ceil(xs + r + 0.5) <= 0) | (np.floor(xs - r + 0.5) >= nx)
    off |= (np.ceil(ys + r + 0.5) <= 0) | (np.floor(ys - r + 0.5) >= ny)
    sums[off] = areas[off] = np.nan
    return sums, areas, (bad != 0) | off


def circle_sums(data, x, y, radii):
    """Exact circular-aperture sums of every star through every radius, ``(n, n_radii)``.

    :func:`circle_pass`'s sums. Non-finite pixels that overlap an aperture make
    its sum NaN; NaN too where the aperture's box is wholly off the frame.

    Examples
    --------
    >>> s = circle_sums(np.ones((21, 21)), np.array([10.0]), np.array([10.0]), [1.0, 2.0])
    >>> bool(np.allclose(s, np.pi * np.array([[1.0, 4.0]])))
    True
    """
    sums, _, bad = circle_pass(data, x, y, radii)
    sums[bad] = np.nan
    return sums


def _sums_and_areas(data, x, y, radii, flags):
    """Sums and covered areas ``(n, n_radii)``; BAD_PIXEL set in ``flags`` where the first
    radius meets a non-finite pixel (left out of the sums and areas at every radius)."""
    sums, covered, bad = circle_pass(data, x, y, radii)
    areas = np.tile(np.pi * np.asarray(radii, dtype=np.float64) ** 2, (x.size, 1))
    partial = ((flags & Flag.NEAR_EDGE) != 0)[:, None] | bad  # the part on the frame, finite
    areas[partial] = covered[partial]
    flags[bad[:, 0]] |= Flag.BAD_PIXEL
    return sums, areas


def aperture_sums(data, x, y, radii):
    """Sums and covered areas of every star at every radius, for :func:`measure` and
    :func:`measure_radii` together (``sums=``): one pass of :func:`circle_pass` for both.

    Returns ``(sums, areas, bad)``: ``(n, n_radii)`` arrays as ``measure_radii``
    finds them (edges within ``max(radii)``), and ``bad``, the stars whose first
    aperture met non-finite pixels (BAD_PIXEL in ``measure``).
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    edge = aperture_flags(np.shape(data), x, y, max(radii))
    sums, areas = _sums_and_areas(data, x, y, [float(r) for r in radii], edge)
    return sums, areas, (edge & Flag.BAD_PIXEL) != 0


def measure(
    data,
    x,
    y,
    *,
    radius,
    sky,
    exptime,
    gain_e_per_adu=1.0,
    read_noise_e=0.0,
    dark_e_per_s=0.0,
    mask=None,
    min_snr=5.0,
    noise="measured",
    flag_radius=None,
    sums=None,
):
    """Aperture photometry at given positions with a given sky.

    Parameters
    ----------
    data : numpy.ndarray
        Calibrated image in ADU (not modified).
    x, y : array_like
        0-based centres (x = column).
    radius : float
        Aperture radius, pixels.
    sky : reduxd.steps.sky.SkyEstimate
        Sky per star (level, per-pixel std, pixel count, level error).
    exptime : float
        Exposure time, seconds.
    gain_e_per_adu, read_noise_e, dark_e_per_s : float
        Detector parameters (read noise and dark current only with ``noise="model"``).
    mask : numpy.ndarray of uint8, optional
        ``reduxd.maskbits`` bits.
    min_snr : float
        Below this S/N the LOW_SNR flag is set.
    noise : {'measured', 'model'}
        Per-pixel sky variance from the sky pixels or from the detector terms.
    flag_radius : float, optional
        Radius within which SATURATED, BAD_PIXEL and NEAR_EDGE are looked for
        (default ``radius``; the largest radius of a multi-aperture measurement).
    sums : tuple, optional
        :func:`aperture_sums` of radii whose first is ``radius`` and largest
        ``flag_radius`` (already computed for :func:`measure_radii`).

    Returns
    -------
    astropy.table.Table
        Columns x, y, sky, sky_err, flux, flux_err, mag_inst, mag_err, snr, flags.

    Examples
    --------
    >>> from reduxd.steps.sky import global_sky
    >>> img = np.full((40, 40), 10.0); img[20, 20] += 1000.0
    >>> t = measure(img, [20.0], [20.0], radius=3, sky=global_sky(img), exptime=10.0)
    >>> round(float(t["flux"][0]), 6), round(float(t["mag_inst"][0]), 4)
    (1000.0, -5.0)
    """
    columns = measure_columns(
        data, x, y, radius=radius, sky=sky, exptime=exptime, gain_e_per_adu=gain_e_per_adu,
        read_noise_e=read_noise_e, dark_e_per_s=dark_e_per_s, mask=mask, min_snr=min_snr,
        noise=noise, flag_radius=flag_radius, sums=sums,
    )  # fmt: skip
    return describe(Table({k: np.array(v) for k, v in columns.items()}))


def measure_columns(
    data,
    x,
    y,
    *,
    radius,
    sky,
    exptime,
    gain_e_per_adu=1.0,
    read_noise_e=0.0,
    dark_e_per_s=0.0,
    mask=None,
    min_snr=5.0,
    noise="measured",
    flag_radius=None,
    sums=None,
):
    """:func:`measure`'s columns as a dict of arrays (``sky`` and ``sky_err`` may be
    read-only broadcast views), for the photometry step, which builds its own table.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    flags = aperture_flags(data.shape, x, y, flag_radius or radius, mask)
    if sums is None:
        sums, areas = _sums_and_areas(data, x, y, [float(radius)], flags)
    else:
        sums, areas, bad = sums
        flags[bad] |= Flag.BAD_PIXEL
    sums, areas = sums[:, 0], areas[:, 0]
    value = np.broadcast_to(sky.value, x.shape)
    flux = sums - value * areas
    flux_err = flux_error(
        flux,
        n_ap=areas,
        sky_std=sky.std,
        sky_err=sky.err,
        gain=gain_e_per_adu,
        exptime=exptime,
        sky=value,
        sky_npix=sky.npix,
        read_noise_e=read_noise_e,
        dark_e_per_s=dark_e_per_s,
        noise=noise,
        aperture_cov=sky.aperture_cov,
    )
    positive = flux > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(positive, -2.5 * np.log10(flux / exptime), np.nan)
        mag_err = np.where(positive, MAG_PER_LN * flux_err / flux, np.nan)
        snr = flux / flux_err
    flags[~positive] |= Flag.NONPOSITIVE_FLUX
    flags[~(snr >= min_snr)] |= Flag.LOW_SNR
    flags[np.broadcast_to(sky.rejected, x.shape)] |= Flag.SKY_FIT_REJECTED
    return {
        "x": x,
        "y": y,
        "sky": value,
        "sky_err": np.broadcast_to(sky.err, x.shape),
        "flux": flux,
        "flux_err": flux_err,
        "mag_inst": mag,
        "mag_err": mag_err,
        "snr": snr,
        "flags": flags,
    }


def measure_radii(
    data,
    x,
    y,
    *,
    radii,
    sky,
    gain_e_per_adu=1.0,
    read_noise_e=0.0,
    dark_e_per_s=0.0,
    noise="measured",
    sums=None,
):
    """Fluxes and CCD-equation errors of every star through several radii.

    Vectorised across stars and radii (:func:`circle_pass`: exact overlap).
    ``sums``: :func:`aperture_sums` of ``radii``, when already computed.

    Returns
    -------
    flux, flux_err : numpy.ndarray
        Shape ``(n_stars, n_radii)``, ADU.

    Examples
    --------
    >>> from reduxd.steps.sky import global_sky
    >>> img = np.full((40, 40), 10.0); img[20, 20] += 1000.0
    >>> f, e = measure_radii(img, [20.0], [20.0], radii=[2, 4], sky=global_sky(img))
    >>> f.round(6).tolist()
    [[1000.0, 1000.0]]
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    value = np.broadcast_to(sky.value, x.shape)
    sums, areas, _ = aperture_sums(data, x, y, radii) if sums is None else sums
    flux = sums - value[:, None] * areas
    flux_err = flux_error(
        flux, n_ap=areas, sky_std=_column(sky.std, x), sky_err=_column(sky.err, x),
        gain=gain_e_per_adu, sky=value[:, None], sky_npix=_column(sky.npix, x),
        read_noise_e=read_noise_e, dark_e_per_s=dark_e_per_s, noise=noise,
        aperture_cov=_column(sky.aperture_cov, x),
    )  # fmt: skip
    return flux, flux_err


def _column(values, x):
    """Per-star values (or a scalar) as a column ``(n, 1)`` to broadcast across radii."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64), x.shape)[:, None]


def describe(table):
    """Set units and descriptions of the known columns (returns the same table).

    Examples
    --------
    >>> str(describe(Table({"flux": [1.0]}))["flux"].unit)
    'adu'
    """
    for name, (unit, text) in COLUMNS.items():
        if name in table.colnames:
            table[name].unit = unit
            table[name].description = text
    return table
