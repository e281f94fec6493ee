"""Where a raw frame saturates, found without configuration (pure).

In order: the header's ``SATURATE`` or ``DATAMAX`` card; the camera entry's
``saturation_adu``; the ADC ceiling read off the data (the largest value, when
at least ``min_pixels`` pixels pile up at exactly that value: 4095 for a 12-bit
camera stored as 16-bit integers, 16383, 65535, SharpCap's 65520 ...); else the
largest value the file's integer type holds (:func:`reduxd.steps.masters.saturation_level`).
A ceiling (data or file type) is multiplied by ``margin``: detectors turn
non-linear before they clip. Values the header or the camera entry state are
used as they are.
"""

import math

import numpy as np

from reduxd.steps.masters import saturation_level

MARGIN = 0.95  # fraction of an ADC ceiling below which the response is taken as linear
MIN_PIXELS = 3  # pixels sharing the largest value for it to count as a pile-up


def adc_ceiling(data, *, min_pixels=MIN_PIXELS):
    """Return the value raw pixels pile up at (the ADC ceiling), or None.

    A pile-up: at least ``min_pixels`` pixels at exactly the largest value, more
    than in the 1 % of values just below it (a sky's or a star's own tail thins
    out towards its maximum; a ceiling collects a spike), and the largest value
    at least 1.5 times the median (not a flat, featureless frame).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> img = np.round(rng.normal(300.0, 20.0, (200, 200)))
    >>> adc_ceiling(img) is None  # the sky's maximum is no ceiling
    True
    >>> img[2, 2:6] = 4095.0
    >>> adc_ceiling(img)
    4095.0
    >>> img[2, 3:6] = 1000.0
    >>> adc_ceiling(img) is None
    True
    """
    data = np.asarray(data)
    finite = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
    if finite.size == 0:
        return None
    top = float(finite.max())
    if top < 255 or top < 1.5 * float(np.median(finite)):
        return None
    at_top = int(np.count_nonzero(finite == top))
    below = int(np.count_nonzero((finite < top) & (finite >= top - max(1.0, 0.01 * top))))
    if at_top < min_pixels or at_top <= below:
        return None
    return top


def saturation(header, camera=None, data=None, *, margin=MARGIN):
    """Return ``(level, source)``: raw level at and above which a pixel is saturated.

    Parameters
    ----------
    header : astropy.io.fits.Header
        Raw frame header.
    camera : reduxd.config.Camera, optional
        Matching camera entry (``saturation_adu`` > 0 is used as it is).
    data : numpy.ndarray, optional
        Raw pixel values, for the ADC ceiling.
    margin : float
        Non-linearity margin applied to ceilings.

    Returns
    -------
    tuple of (float, str)

    Examples
    --------
    >>> from astropy.io import fits
    >>> saturation(fits.Header({'BITPIX': 16, 'SATURATE': 50000}))
    (50000.0, 'header SATURATE')
    >>> img = np.full((10, 10), 300, np.int16); img[0, :4] = 4095
    >>> saturation(fits.Header({'BITPIX': 16}), data=img)
    (3890.25, 'data pile-up at 4095 ADU x 0.95')
    >>> saturation(fits.Header({'BITPIX': 16}), data=img[1:])
    (31128.65, 'file type ceiling 32767 ADU x 0.95')
    """
    for key in ("SATURATE", "DATAMAX"):
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value), f"header {key}"
    if camera is not None and camera.saturation_adu > 0:
        return float(camera.saturation_adu), "camera entry"
    ceiling = adc_ceiling(data) if data is not None else None
    if ceiling is not None:
        text = f"data pile-up at {ceiling:g} ADU x {margin:g}"
        return round(margin * ceiling, 4), text
    ceiling = saturation_level(header)
    if not math.isfinite(ceiling):
        return ceiling, "floating-point data: no ceiling"
    text = f"file type ceiling {ceiling:g} ADU x {margin:g}"
    return round(margin * ceiling, 4), text
