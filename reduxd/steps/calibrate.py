"""Calibrating a light: ``(raw - dark) / flat`` in float32, with a pixel mask.

The dark is the master dark of the light's exposure, or ``bias + dark_current * t``
(scaled). One output array is allocated and every step works on it in place;
the raw frame and the masters are never modified.
"""

from dataclasses import dataclass

import numpy as np

from reduxd import __version__, maskbits
from reduxd.errors import MissingCalibration
from reduxd.steps.masters import source_cards

_BLOCK_ROWS = 256  # rows per block when scaling the dark current (small temporaries)


@dataclass(frozen=True, eq=False)
class Calibrated:
    """A calibrated light: float32 data, uint8 mask (:mod:`reduxd.maskbits`), header cards."""

    data: np.ndarray
    mask: np.ndarray
    cards: tuple
    dark_mode: str  # 'exact' | 'scaled' | 'bias' | 'none'
    missing: tuple[str, ...]  # masters that were needed but absent (went on with force)


def _array(master):
    if master is None or isinstance(master, np.ndarray):
        return master
    return master.data  # a MasterResult


def _check_shapes(raw, masters):
    for name, array in masters.items():
        if array is not None and array.shape != raw.shape:
            raise ValueError(f"master {name} has shape {array.shape}, the light {raw.shape}")


def _dark_mode(*, dark, bias, dark_current, no_dark):
    if no_dark:
        return "bias" if bias is not None else "none"
    if dark is not None:
        return "exact"
    if bias is not None and dark_current is not None:
        return "scaled"
    return "bias" if bias is not None else "none"


def calibrate_light(
    raw,
    info,
    *,
    dark=None,
    bias=None,
    dark_current=None,
    flat=None,
    bad_pixels=None,
    saturation,
    no_dark=False,
    no_flat=False,
    force=False,
    sources=None,
):
    """Return the calibrated light ``(raw - dark) / flat`` (float32), its mask and cards.

    Parameters
    ----------
    raw : numpy.ndarray
        The raw light in ADU (float32 from :func:`reduxd.fitsio.read_frame`).
    info : FrameInfo
        The light (its exposure scales the dark current).
    dark : ndarray or MasterResult, optional
        Master dark of exactly the light's exposure (bias included).
    bias, dark_current : ndarray or MasterResult, optional
        Used when there is no such dark: ``bias + dark_current * info.exptime``.
    flat : ndarray or MasterResult, optional
        Normalised master flat of the light's filter.
    bad_pixels : ndarray, optional
        Non-zero where a pixel is bad (see :func:`reduxd.steps.masters.bad_pixel_mask`).
    saturation : float
        Raw level at and above which a pixel is flagged SATURATED.
    no_dark, no_flat : bool
        Skip the dark (the bias is still subtracted if given) or the flat on purpose.
    force : bool
        Go on when a dark or flat is missing (with a bias only, it is subtracted).
    sources : dict, optional
        ``{'dark' | 'bias' | 'dark_current' | 'flat' | 'bad_pixels': (file, checksum)}``
        named in the header.

    Returns
    -------
    Calibrated

    Raises
    ------
    MissingCalibration
        A dark or flat is needed, absent, and neither ``force`` nor the matching
        ``no_dark`` / ``no_flat`` was given.

    Examples
    --------
    >>> from reduxd.frames import FrameInfo
    >>> info = FrameInfo('l.fits', 'light', 'default', 'V', 10.0, None, None, (1, 1),
    ...                  (2, 2), None, None, '', None, None, None, None)
    >>> raw = np.array([[1100.0, 1200.0], [65535.0, 1100.0]], np.float32)
    >>> out = calibrate_light(raw, info, bias=np.full((2, 2), 100.0, np.float32),
    ...                       dark_current=np.full((2, 2), 10.0, np.float32),
    ...                       flat=np.array([[1.0, 0.5], [1.0, 1.0]], np.float32),
    ...                       saturation=65535.0)
    >>> out.data.tolist(), out.mask.tolist(), out.dark_mode
    ([[900.0, 2000.0], [65335.0, 900.0]], [[0, 0], [2, 0]], 'scaled')
    """
    masters = {
        "dark": _array(dark),
        "bias": _array(bias),
        "dark_current": _array(dark_current),
        "flat": None if no_flat else _array(flat),
        "bad_pixels": bad_pixels,
    }
    _check_shapes(raw, masters)
    mode = _dark_mode(
        dark=masters["dark"],
        bias=masters["bias"],
        dark_current=masters["dark_current"],
        no_dark=no_dark,
    )
    missing = _missing(mode, masters["flat"], no_dark=no_dark, no_flat=no_flat)
    if missing and not force:
        raise MissingCalibration(info.path, _missing_text(missing, info))
    out = np.array(raw, dtype=np.float32, copy=True)  # the only full-frame allocation
    history = _subtract_dark(out, mode, masters, info.exptime)
    if masters["flat"] is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            out /= masters["flat"]
        history.append("divided by the master flat")
    mask = _mask(raw, out, bad_pixels, saturation)
    cards = _cards(
        mode,
        masters,
        missing,
        history,
        sources or {},
        saturation,
        info,
        no_dark=no_dark,
        no_flat=no_flat,
        force=force,
    )
    return Calibrated(out, mask, tuple(cards), mode, tuple(missing))


def _missing(mode, flat, *, no_dark, no_flat):
    missing = []
    if not no_dark and mode in ("bias", "none"):
        missing.append("dark")
    if not no_flat and flat is None:
        missing.append("flat")
    return missing


def _missing_text(missing, info):
    what = {
        "dark": f"no master dark for {info.exptime} s and no bias + dark current",
        "flat": f"no master flat for filter {info.filter}",
    }
    text = "; ".join(what[m] for m in missing)
    return f"{text} (to go on without, use --force, --no-dark or --no-flat)"


def _subtract_dark(out, mode, masters, exptime):
    """Subtract the dark in place; return the HISTORY lines."""
    if mode == "exact":
        out -= masters["dark"]
        return ["subtracted the master dark (exact exposure)"]
    if mode == "none":
        return []
    out -= masters["bias"]
    history = ["subtracted the master bias"]
    if mode == "scaled":
        rate, t = masters["dark_current"], np.float32(exptime)
        for y0 in range(0, out.shape[0], _BLOCK_ROWS):
            out[y0 : y0 + _BLOCK_ROWS] -= rate[y0 : y0 + _BLOCK_ROWS] * t
        history.append(f"subtracted the dark current x {exptime} s (scaled dark)")
    return history


def _mask(raw, out, bad_pixels, saturation):
    mask = np.zeros(raw.shape, dtype=np.uint8)
    if bad_pixels is not None:
        np.bitwise_or(mask, maskbits.BAD, out=mask, where=bad_pixels != 0)
    np.bitwise_or(mask, maskbits.SATURATED, out=mask, where=raw >= saturation)
    np.bitwise_or(mask, maskbits.NONFINITE, out=mask, where=~np.isfinite(out))
    return mask


def _used(mode, masters):
    used = {"exact": ["dark"], "scaled": ["bias", "dark_current"], "bias": ["bias"]}
    extra = [name for name in ("flat", "bad_pixels") if masters[name] is not None]
    return used.get(mode, []) + extra


def _cards(mode, masters, missing, history, sources, saturation, info, *, no_dark, no_flat, force):
    skipped = [name for name, flag in (("dark", no_dark), ("flat", no_flat)) if flag]
    cards = [
        ("RDXCAL", True, "calibrated by reduxd"),
        ("RDXVERS", __version__, "reduxd version"),
        ("BUNIT", "adu", "unit of the data"),
        ("RDXDMODE", mode, "dark: exact, scaled (bias+dc*t), bias, none"),
        ("RDXDSCAL", mode == "scaled", "dark scaled from the dark current?"),
        ("RDXSKIP", ",".join(skipped) or "none", "steps skipped on request"),
        ("RDXMISS", ",".join(missing) or "none", "masters missing"),
        ("RDXFORCE", bool(force and missing), "went on without them (force)?"),
        ("RDXSATUR", float(saturation), "[adu] saturation level of the raw frame"),
    ]
    if mode == "scaled":
        cards.append(
            ("RDXDEXP", float(info.exptime), "[s] exposure the dark current was scaled to")
        )
    cards += source_cards({n: sources[n] for n in _used(mode, masters) if n in sources})
    prefix = f"reduxd {__version__}: "
    cards += [("HISTORY", prefix + line, "") for line in history]
    cards += [("HISTORY", f"{prefix}skipped {s} (requested)", "") for s in skipped]
    cards += [("HISTORY", f"{prefix}no {m} available: went on (force)", "") for m in missing]
    return cards
