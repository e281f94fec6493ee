"""Detector gain and read noise measured from the frames themselves (pure).

Photon transfer (Janesick): with two flats ``F1, F2`` of about the same level
and two biases ``B1, B2`` (or darks of the flats' exposure), in a central box::

    gain = ((mean F1 + mean F2) - (mean B1 + mean B2)) / (var(F1 - F2) - var(B1 - B2))
    read_noise = gain * std(B1 - B2) / sqrt(2)

Differences cancel the fixed pattern (flat-field structure, hot pixels);
variances are clipped at 5 robust sigmas (:func:`_robust_var`). The second
flat is scaled to the first one's level, so flats of slightly different
exposure can be paired.

The pipeline measures once per calibration set: the read noise (ADU) of a bias
or dark set from its pairs (:func:`read_noise_cards`, card ``RDXRNADU`` on the
master), the gain of a flat set from its pairs of similar level
(:func:`flat_gain_cards`, cards ``RDXPTGN``/``RDXPTRN``/``RDXPTSRC`` on the
master flat). :func:`choose_detector` then picks, for a light, the camera entry,
else an ``EGAIN`` card (or a ``GAIN`` card whose comment says e-/ADU), else the
flats' measurement, else 1 e-/ADU ("assumed"). The lights' sky is not used: on
read-noise-limited frames it is no substitute (ARCSAT z: sky 130 ADU, sky-noise
gain 0.45 against 1.34 from the flats), and without a bias its pedestal is unknown.
"""

import math
import re
from dataclasses import dataclass

import numpy as np

from reduxd.fitsio import read_rows
from reduxd.steps.combine import median_in_place

MAD_TO_SIGMA = 1.4826


def _box(data, size=256):
    ny, nx = data.shape
    h = min(size, ny, nx) // 2
    return np.asarray(data[ny // 2 - h : ny // 2 + h, nx // 2 - h : nx // 2 + h], dtype=np.float64)


def _robust_var(values, *, clip=5.0):
    """Variance of the values within ``clip`` robust sigmas of their median.

    The MAD only starts the clipping: on integer data (differences of raw
    frames) it is itself an integer, which would bias a read noise of ~10 ADU by
    up to 5 %.
    """
    values = values[np.isfinite(values)]
    centre = median_in_place(values.copy())  # np.median; values keep their order (np.var)
    sigma = MAD_TO_SIGMA * median_in_place(np.abs(values - centre))
    if not sigma > 0:
        return float(np.var(values))
    return float(np.var(values[np.abs(values - centre) < clip * sigma]))


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


BOX = 256  # side of the central box the pair statistics use (pixels)
SIMILAR_LEVEL = 0.10  # two flats pair up when their levels differ by less than this


@dataclass(frozen=True)
class Detector:
    """Gain (e-/ADU) and read noise (e-) used for a light's errors, and where they came from."""

    gain: float
    read_noise: float
    source: str


def central_box(layout, size=BOX):
    """The central ``size`` x ``size`` pixels of a frame (float64), read without the rest."""
    ny, nx = layout.shape
    h = min(size, ny, nx) // 2
    rows = read_rows(layout, ny // 2 - h, ny // 2 + h)
    return np.asarray(rows[:, nx // 2 - h : nx // 2 + h], dtype=np.float64)


def _box_of(image, size=BOX):
    return None if image is None else _box(image, size)


def pair_read_noise(boxes):
    """Read noise (ADU) from consecutive pairs of biases or darks: ``sigma(B1 - B2) / sqrt 2``.

    Returns ``(read_noise_adu, n_pairs)``; NaN and 0 with fewer than two frames.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> noise, n = pair_read_noise([rng.normal(300, 8.0, (200, 200)) for _ in range(4)])
    >>> round(noise), n
    (8, 2)
    """
    pairs = [(boxes[i], boxes[i + 1]) for i in range(0, len(boxes) - 1, 2)]
    if not pairs:
        return math.nan, 0
    values = [math.sqrt(_robust_var(a - b) / 2.0) for a, b in pairs]
    return float(np.median(values)), len(pairs)


def pair_gain(boxes, pedestals, read_noise_adu):
    """Gain (e-/ADU) from pairs of flats of similar level (photon transfer).

    Parameters
    ----------
    boxes : list of ndarray
        The same central box of each flat (raw ADU).
    pedestals : list of ndarray
        What each flat sits on in that box (its dark, or bias + dark current x t).
    read_noise_adu : float
        Read noise of one frame (ADU); NaN counts as 0 (a small bias on bright flats).

    Returns
    -------
    (gain, n_pairs)
        Median over the pairs; NaN and 0 when no two flats are within
        :data:`SIMILAR_LEVEL` of each other.
    """
    levels = [float(median_in_place(b - p)) for b, p in zip(boxes, pedestals, strict=True)]
    rn2 = 0.0 if not math.isfinite(read_noise_adu) else read_noise_adu**2
    used, gains = set(), []
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if i in used or j in used or min(levels[i], levels[j]) <= 0:
                continue
            ratio = levels[i] / levels[j]
            if abs(ratio - 1) >= SIMILAR_LEVEL:
                continue
            diff = (boxes[i] - pedestals[i]) - ratio * (boxes[j] - pedestals[j])
            excess = _robust_var(diff) - (1 + ratio**2) * rn2
            if excess > 0:
                gains.append(levels[i] * (1 + ratio) / excess)  # S_i/g + r^2 S_j/g, r S_j = S_i
                used.update((i, j))
    if not gains:
        return math.nan, 0
    return float(np.median(gains)), len(gains)


def read_noise_cards(layouts, kind):
    """Header cards of a bias or dark master: its read noise (ADU) from pairs of its frames."""
    noise, n = pair_read_noise([central_box(lay) for lay in layouts])
    if n == 0 or not math.isfinite(noise):
        return []
    return [
        ("RDXRNADU", round(noise, 4), f"[adu] read noise from {n} {kind} pairs"),
        ("RDXRNN", n, f"{kind} pairs behind RDXRNADU"),
    ]


def _card(cards, key):
    for k, value, _comment in cards:
        if k == key:
            return value
    return None


def master_read_noise(*masters):
    """The ``RDXRNADU`` of the first master that has one (NaN: none)."""
    for master in masters:
        value = None if master is None else _card(master.cards, "RDXRNADU")
        if value is not None:
            return float(value)
    return math.nan


def flat_gain_cards(frames, *, dark=None, bias=None, dark_current=None):
    """Header cards of a master flat: gain and read noise by photon transfer from its pairs.

    Parameters
    ----------
    frames : sequence of (FrameInfo, FitsLayout)
        The raw flats of the set.
    dark, bias, dark_current : MasterResult, optional
        As for :func:`reduxd.steps.masters.make_flat`. Without a dark or a bias the
        flats' pedestal is unknown: nothing is measured (empty list).
    """
    pedestals = []
    for info, _layout in frames:
        t = info.exptime
        if dark is not None and t is not None and math.isclose(t, dark.exptime or -1):
            pedestals.append(_box_of(dark.data))
        elif bias is not None and dark_current is not None and t is not None:
            pedestals.append(_box_of(bias.data) + _box_of(dark_current.data) * t)
        elif bias is not None:
            pedestals.append(_box_of(bias.data))
        else:
            return []
    boxes = [central_box(lay) for _info, lay in frames]
    rn_adu = master_read_noise(bias, dark)
    gain, n = pair_gain(boxes, pedestals, rn_adu)
    if n == 0 or not math.isfinite(gain):
        return []
    read_noise = gain * rn_adu if math.isfinite(rn_adu) else math.nan
    source = f"photon transfer from {n} flat pair{'s' if n > 1 else ''}"
    return [
        ("RDXPTGN", round(gain, 4), "[e-/adu] gain by photon transfer of the flats"),
        ("RDXPTRN", round(read_noise, 3), "[e-] read noise (bias pairs x RDXPTGN)"),
        ("RDXPTSRC", source, "how RDXPTGN was measured"),
    ]


def measured_detector(header):
    """The :class:`Detector` a master flat's header records (None: nothing measured)."""
    gain = header.get("RDXPTGN")
    if gain is None:
        return None
    noise = header.get("RDXPTRN")
    noise = float(noise) if noise is not None and math.isfinite(float(noise)) else math.nan
    return Detector(float(gain), noise, str(header.get("RDXPTSRC", "photon transfer")))


_E_PER_ADU = re.compile(r"e-?\s*/\s*(adu|dn|count)|electrons?\s*(/|per)", re.IGNORECASE)


def header_gain(header):
    """The gain (e-/ADU) a raw header states, with its card: ``(gain, key)`` or None.

    ``EGAIN`` is always e-/ADU; ``GAIN`` only when its comment says so (SharpCap
    and others write the camera's gain *setting* there).

    Examples
    --------
    >>> from astropy.io import fits
    >>> header_gain(fits.Header([('GAIN', 150, 'camera gain setting')])) is None
    True
    >>> header_gain(fits.Header([('GAIN', 1.5, '[e-/ADU] electronic gain')]))
    (1.5, 'GAIN')
    """
    for key in ("EGAIN", "GAIN"):
        card = header.get(key)
        if not isinstance(card, int | float) or isinstance(card, bool) or not card > 0:
            continue
        if key == "EGAIN" or _E_PER_ADU.search(header.comments[key] or ""):
            return float(card), key
    return None


def _header_read_noise(header):
    for key in ("RDNOISE", "READNOIS", "RON"):
        value = header.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


def choose_detector(*, entry=None, header=None, measured=None, default=(1.0, 5.0)):
    """The gain and read noise of a light, in this order of trust.

    Parameters
    ----------
    entry : object, optional
        The matching camera entry (``gain_e_per_adu``, ``read_noise_e``, ``instrument``).
    header : astropy.io.fits.Header, optional
        The raw light's header (``EGAIN``, ``GAIN`` in e-/ADU, ``RDNOISE``).
    measured : Detector, optional
        From the flats of the light's calibration set (:func:`measured_detector`).
    default : (float, float)
        Gain and read noise assumed when nothing else is known.

    Examples
    --------
    >>> choose_detector().source
    'assumed: no entry, card or flat pairs'
    >>> choose_detector(measured=Detector(1.33, 15.9, 'photon transfer from 2 flat pairs'))
    Detector(gain=1.33, read_noise=15.9, source='photon transfer from 2 flat pairs')
    """
    if entry is not None:
        name = entry.instrument or "any instrument"
        return Detector(entry.gain_e_per_adu, entry.read_noise_e, f"camera entry {name}")
    card = header_gain(header) if header is not None else None
    if card is not None:
        noise = _header_read_noise(header)
        if noise is None and measured is not None and math.isfinite(measured.read_noise):
            noise = measured.read_noise * card[0] / measured.gain  # same ADU noise
        noise = default[1] if noise is None else noise
        return Detector(card[0], noise, f"header {card[1]} card")
    if measured is not None:
        noise = measured.read_noise if math.isfinite(measured.read_noise) else default[1]
        return Detector(measured.gain, noise, measured.source)
    return Detector(*default, "assumed: no entry, card or flat pairs")
