"""Sharp outliers in a light: cosmic rays, and hot pixels no dark removed (pure).

A star spreads its light over a few pixels (FWHM >= 1.5 px): above the sky, its
peak pixel is at most ~2.7 times its second-brightest neighbour (centred on a
pixel; less when centred on an edge or a corner). A cosmic ray or a hot pixel is
a single bright pixel (or a thin track) on the sky. A pixel is *sharp* when it is
the highest (or tied) of its 3 x 3 box, stands more than ``nsigma`` sky sigmas
above the median of its 8 neighbours, and more than ``ratio`` times higher above
the sky than its second-brightest neighbour is (a star's wing pixel is never the
highest of its box; a two-pixel track has one bright neighbour, a longer one is
repaired from its ends inwards, in ``passes`` passes).
Sharp pixels are replaced by that median (the flux of a star they fall on is
repaired, not lost) and marked ``maskbits.REPAIRED``; their SATURATED bit is
cleared, so a cosmic ray at the ADC ceiling does not make a star "saturated".

Only candidates (pixels ``nsigma`` above the sky) are examined, so the cost is
one pass over the frame plus a few operations per bright pixel.
"""

import numpy as np

from reduxd import maskbits

NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
_SAMPLE = 200_000  # pixels sampled for the sky level and its sigma


def _sky(data):
    flat = data.ravel()
    step = max(1, flat.size // _SAMPLE)
    sample = flat[::step]
    sample = sample[np.isfinite(sample)]
    level = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - level)))
    return level, max(sigma, 1e-6)


def sharp_pixels(data, *, nsigma=5.0, ratio=4.0):
    """Return ``(iy, ix, replacement)`` of the sharp pixels of ``data`` (border excluded).

    Examples
    --------
    >>> from reduxd.synth import render_stars
    >>> rng = np.random.default_rng(2)
    >>> img = 100 + rng.normal(0, 3, (40, 40)) + render_stars((40, 40), [12.0], [20.0],
    ...                                                      [20000.0], 1.6)
    >>> img[30, 30] += 500  # a cosmic ray on the sky
    >>> img[20, 15] += 900  # one on the star's wing
    >>> iy, ix, value = sharp_pixels(img)
    >>> [(int(a), int(b)) for a, b in zip(iy, ix)]
    [(20, 15), (30, 30)]
    """
    level, sigma = _sky(data)
    inner = data[1:-1, 1:-1]
    iy, ix = np.nonzero(inner > level + nsigma * sigma)
    iy, ix = iy + 1, ix + 1
    if iy.size == 0:
        return iy, ix, np.zeros(0, dtype=data.dtype)
    around = np.stack([data[iy + dy, ix + dx] for dy, dx in NEIGHBOURS])
    median = np.median(around, axis=0)
    ranked = np.sort(around, axis=0)
    value = data[iy, ix]
    sharp = (
        (value >= ranked[-1])  # ties: a track clipped at the ADC ceiling
        & (value - median > nsigma * sigma)
        & (value - level > ratio * np.maximum(ranked[-2] - level, sigma))
    )
    return iy[sharp], ix[sharp], median[sharp].astype(data.dtype)


def repair_sharp(data, mask, *, nsigma=5.0, ratio=4.0, passes=4):
    """Return ``(data, mask, n)``: sharp pixels replaced and marked (new arrays when n > 0).

    The mask's SATURATED bit is cleared on the repaired pixels and REPAIRED set.
    """
    n = 0
    for _ in range(passes):
        iy, ix, value = sharp_pixels(data, nsigma=nsigma, ratio=ratio)
        if iy.size == 0:
            break
        if n == 0:
            data, mask = data.copy(), mask.copy()
        data[iy, ix] = value
        mask[iy, ix] = (mask[iy, ix] & ~np.uint8(maskbits.SATURATED)) | maskbits.REPAIRED
        n += int(iy.size)
    return data, mask, n
