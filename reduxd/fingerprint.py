"""The settings fingerprint of a reduction: everything that changes its numbers.

The ledger stores it beside each reduction's rows. ``reduxd reduce`` compares the
settings of the run with the stored ones and reduces again the lights whose
numbers would differ (the new rows supersede the old, as with ``--redo``).
"""

from reduxd import __version__, skymethods


def run_settings(config):
    """The settings of a run that change a light's rows (a JSON-able dict).

    Options a sky method does not use are left out, so ``-L`` with the annulus
    does not make every light be reduced again.

    Examples
    --------
    >>> from reduxd.config import load_config
    >>> s = run_settings(load_config(overrides={"photometry": {"radius": 8}}))
    >>> s["radius"], s["sky_method"], "subframe" in s
    (8.0, 'annulus', False)
    """
    p, cal = config.photometry, config.calibration
    out = {
        "reduxd": __version__,
        "radius": p.radius,
        "radius_fwhm": p.radius_fwhm,
        "sky_method": p.sky_method,
        "smoothing": p.smoothing,
        "detect_sigma": p.detect_sigma,
        "min_snr": p.min_snr,
        "match_radius": p.match_radius,
        "force": cal.force,
        "no_dark": cal.no_dark,
        "no_flat": cal.no_flat,
    }
    for name in skymethods.get(p.sky_method).options:
        value = getattr(p, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def fingerprint(config, plan):
    """The settings of the run plus the masters a light was calibrated with (name: SHA-1)."""
    masters = {kind: rec.checksum for kind, rec in plan.records().items()}
    return {**run_settings(config), "masters": masters}


def changes(stored, settings):
    """What differs between a stored fingerprint and this run's settings, as text.

    A reduction stored before fingerprints existed (``{}``) is not reported.

    Examples
    --------
    >>> changes({"radius": 15.0, "masters": {}}, {"radius": 8.0})
    ['radius 15.0 -> 8.0']
    >>> changes({}, {"radius": 8.0})
    []
    """
    if not stored:
        return []
    return [
        f"{key} {stored.get(key)} -> {value}"
        for key, value in settings.items()
        if stored.get(key) != value
    ]
