"""One naming rule for product files: masters, stacks, finder charts, light curves.

A gain is written ``g150`` (``g0.5``), a missing value as the word ``none``
(``gnone``), and ``--save`` appears once in a name: the object is left out of a
name when it is the same as the save title.
"""

import re
from pathlib import Path

from reduxd.files import cap_name

MISSING = "none"


def safe_name(text):
    """``text`` usable in a file name (letters, digits and ``._+-``); ``none`` when empty.

    The one sanitiser of product names: no leading dot, at most 64 characters.

    Examples
    --------
    >>> safe_name("pg 2213/V"), safe_name(None), safe_name(""), safe_name("..")
    ('pg_2213_V', 'none', 'none', 'none')
    >>> len(safe_name("x" * 300))  # capped, ending in a hash of the whole
    64
    """
    if text is None:
        return MISSING
    return cap_name(re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")) or MISSING


def value_word(value):
    """A number as it appears in a name (``150``, ``0.5``), or ``none``.

    Examples
    --------
    >>> value_word(150.0), value_word(0.5), value_word(None)
    ('150', '0.5', 'none')
    """
    if value is None:
        return MISSING
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return safe_name(value)


def gain_label(gain):
    """The gain part of a name.

    Examples
    --------
    >>> gain_label(150.0), gain_label(None)
    ('g150', 'gnone')
    """
    return f"g{value_word(gain)}"


def titled(kind, *parts, save="", obj=None):
    """``<kind>_<save>_<object>_<parts...>``, the object left out when it equals ``save``.

    Examples
    --------
    >>> titled("finder", "V", "g150", "15s", save="pg2213", obj="pg2213")
    'finder_pg2213_V_g150_15s'
    >>> titled("finder", "V", save="", obj="pg2213")
    'finder_pg2213_V'
    """
    words = [kind]
    if save:
        words.append(safe_name(save))
    if obj is not None and safe_name(obj) != safe_name(save):
        words.append(safe_name(obj))
    words += [safe_name(p) for p in parts]
    return "_".join(words)


def reduced_path(outdir, rel):
    """Where the calibrated light of raw frame ``rel`` is written."""
    return Path(outdir) / "reduced" / rel


def regions_path(outdir, rel):
    """The DS9 region file of the stars measured on raw frame ``rel`` (beside its FITS)."""
    return Path(outdir) / "reduced" / (rel.rsplit(".", 1)[0] + ".reg")


def quicklook_path(outdir, rel):
    """Where the finder chart of raw frame ``rel`` is written."""
    return Path(outdir) / "quicklook" / (rel.rsplit(".", 1)[0] + ".png")


def products_missing(outdir, rel, output):
    """True when the reduced FITS or finder chart ``output`` asks for is missing or empty."""
    expected = []
    if output.reduced:
        expected.append(reduced_path(outdir, rel))
    if output.quicklook:
        expected.append(quicklook_path(outdir, rel))
    return any(not p.exists() or p.stat().st_size == 0 for p in expected)
