"""The only module that knows photutils' names (photutils >= 3.0).

photutils 3.0 renamed many table columns (``xcenter`` -> ``x_center``,
``xcentroid`` -> ``x_centroid``, ...). Everything else in reduxd calls the small
wrappers below and gets plain numpy arrays back, so the next rename is a
one-file change.
"""

import numpy as np
from astropy.stats import SigmaClip

# Column names of photutils 3.x tables.
SUM = "aperture_sum"
X_CENTER = "x_center"
Y_CENTER = "y_center"
X_CENTROID = "x_centroid"
Y_CENTROID = "y_centroid"
DAO_FLUX = "flux"


def _aperture():
    """photutils.aperture, imported on first use: ~0.4 s that most runs never need."""
    import photutils.aperture

    return photutils.aperture


def _positions(x, y):
    return np.column_stack([np.atleast_1d(x), np.atleast_1d(y)]).astype(np.float64)


def circular_aperture(x, y, radius):
    """Return a photutils ``CircularAperture`` at 0-based pixel positions.

    Examples
    --------
    >>> circular_aperture([10.0], [12.0], 3.0).positions.tolist()
    [[10.0, 12.0]]
    """
    return _aperture().CircularAperture(_positions(x, y), r=float(radius))


def aperture_sums(data, x, y, radius, *, mask=None):
    """Return the exact circular-aperture sums (float64 array, one per position).

    Parameters
    ----------
    data : numpy.ndarray
        2-D image.
    x, y : array_like
        0-based centres (x = column).
    radius : float
        Aperture radius in pixels.
    mask : numpy.ndarray of bool, optional
        True where a pixel is excluded from the sum.

    Examples
    --------
    >>> float(aperture_sums(np.ones((21, 21)), [10.0], [10.0], 2.0)[0]) == np.pi * 4
    True
    """
    if np.size(x) == 0:
        return np.zeros(0)
    aperture = circular_aperture(x, y, radius)
    table = _aperture().aperture_photometry(data, aperture, mask=mask, method="exact")
    return np.asarray(table[SUM], dtype=np.float64)


def aperture_weights(x, y, radius, shape):
    """Exact fractional overlap of one circular aperture with each pixel of ``shape``.

    Examples
    --------
    >>> w = aperture_weights(5.0, 5.0, 2.0, (11, 11))
    >>> bool(abs(w.sum() - np.pi * 4) < 1e-9)
    True
    """
    aperture = _aperture().CircularAperture((float(x), float(y)), r=float(radius))
    mask = aperture.to_mask(method="exact")
    return mask.to_image(shape)


def aperture_areas(data, x, y, radius, *, mask=None):
    """Return the area (pixels) each aperture actually covers on the frame.

    Smaller than ``pi * radius**2`` where the aperture leaves the frame or
    covers masked pixels.

    Examples
    --------
    >>> area = aperture_areas(np.ones((21, 21)), [-0.5], [10.0], 2.0)
    >>> bool(abs(area[0] - np.pi * 2) < 1e-9)
    True
    """
    if np.size(x) == 0:
        return np.zeros(0)
    aperture = circular_aperture(x, y, radius)
    areas = aperture.area_overlap(data, mask=mask, method="exact")
    return np.atleast_1d(np.asarray(areas, dtype=np.float64))


def annulus_stats(data, x, y, r_in, r_out, *, mask=None, sigma=3.0):
    """Return the sigma-clipped median, std and pixel count in annuli (photutils).

    Examples
    --------
    >>> med, std, n = annulus_stats(np.full((41, 41), 7.0), [20.0], [20.0], 5.0, 8.0)
    >>> float(med[0]), float(std[0])
    (7.0, 0.0)
    """
    photutils_aperture = _aperture()
    annulus = photutils_aperture.CircularAnnulus(
        _positions(x, y), r_in=float(r_in), r_out=float(r_out)
    )
    stats = photutils_aperture.ApertureStats(
        data, annulus, mask=mask, sigma_clip=SigmaClip(sigma=sigma)
    )
    return (
        np.atleast_1d(np.asarray(stats.median, dtype=np.float64)),
        np.atleast_1d(np.asarray(stats.std, dtype=np.float64)),
        np.atleast_1d(np.asarray(stats.sum_aper_area, dtype=np.float64)),
    )


def dao_find(data, *, fwhm, threshold, mask=None):
    """Run photutils' ``DAOStarFinder``; return ``(x, y, flux)`` arrays.

    Examples
    --------
    >>> img = np.zeros((31, 31))
    >>> img[14:17, 14:17] = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]
    >>> x, y, _ = dao_find(img, fwhm=2.0, threshold=0.5)
    >>> [round(float(v)) for v in (x[0], y[0])]
    [15, 15]
    """
    from photutils.detection import DAOStarFinder  # imported when used (slow to import)

    table = DAOStarFinder(threshold=threshold, fwhm=fwhm).find_stars(data, mask=mask)
    if table is None:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return (
        np.asarray(table[X_CENTROID], dtype=np.float64),
        np.asarray(table[Y_CENTROID], dtype=np.float64),
        np.asarray(table[DAO_FLUX], dtype=np.float64),
    )


def mesh_background(data, *, box, mask=None, sigma=3.0):
    """Return photutils' ``Background2D`` median map and its rms map (new arrays).

    Examples
    --------
    >>> bkg, rms = mesh_background(np.full((64, 64), 3.0), box=16)
    >>> float(bkg.mean()), float(rms.max())
    (3.0, 0.0)
    """
    box = int(min(box, *np.shape(data)))
    from photutils.background import Background2D, MedianBackground  # mesh sky only

    background = Background2D(
        data,
        box,
        mask=mask,
        filter_size=3,
        sigma_clip=SigmaClip(sigma=sigma),
        bkg_estimator=MedianBackground(),
    )
    return np.asarray(background.background), np.asarray(background.background_rms)
