"""Detector gain and read noise measured from the frames themselves (pure).

Photon transfer (Janesick): with two flats ``F1, F2`` of about the same level
and two biases ``B1, B2`` (or darks of the flats' exposure), in a central box::

    gain = ((mean F1 + mean F2) - (mean B1 + mean B2)) / (var(F1 - F2) - var(B1 - B2))
    read_noise = gain * std(B1 - B2) / sqrt(2)

Differences cancel the fixed pattern (flat-field structure, hot pixels);
variances are robust (1.4826 x MAD). The second flat is scaled to the first
one's level, so flats of slightly different exposure can be paired.

Not yet used by the pipeline: the camera entry's values (``config.toml``) were
measured with it (``tests/test_gain.py`` checks the shipped ARCSAT entry). The
lights' sky is no substitute on read-noise-limited frames (ARCSAT z: sky 130
ADU, sky-noise gain 0.45 against 1.34 from the flats).
"""

import math

import numpy as np

MAD_TO_SIGMA = 1.4826


def _box(data, size=256):
    ny, nx = data.shape
    h = min(size, ny, nx) // 2
    return np.asarray(data[ny // 2 - h : ny // 2 + h, nx // 2 - h : nx // 2 + h], dtype=np.float64)


def _robust_var(values):
    values = values[np.isfinite(values)]
    return float((MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))) ** 2)


def photon_transfer(flat1, flat2, bias1, bias2, *, size=256):
    """Return ``(gain_e_per_adu, read_noise_e)`` from two flats and two biases.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> g, rn = 1.5, 9.0  # e-/ADU, e-
    >>> def frame(level_e):
    ...     return (rng.poisson(level_e, (300, 300)) + rng.normal(0, rn, (300, 300))) / g + 500
    >>> gain, noise = photon_transfer(frame(20000), frame(20000), frame(0), frame(0))
    >>> round(gain, 1), round(noise)
    (1.5, 9)
    """
    f1, f2, b1, b2 = (_box(a, size) for a in (flat1, flat2, bias1, bias2))
    signal = (np.median(f1) + np.median(f2)) - (np.median(b1) + np.median(b2))
    ratio = np.median(f1) / np.median(f2)  # levels differing a little: scale the second
    bias_var = _robust_var(b1 - b2)
    flat_var = _robust_var(f1 - ratio * f2)
    gain = signal / (flat_var - bias_var) if flat_var > bias_var else math.nan
    return float(gain), float(gain * math.sqrt(bias_var / 2.0))
