"""Finder charts of stacks, named like the old script's ``finder_<save>_....png``.

The stack is drawn as a light's chart is (:func:`reduxd.products.quicklook.
write_quicklook`: zscale and asinh, each measured star circled with its aperture,
labels that never overlap, a colour key), with the target in magenta and the
comparison ensemble in blue (as chosen for the light curve of the same object and
filter), and each star labelled with its ID alone (the target's and comparisons'
first). The IDs are those of the photometry table and the light curves.
"""

from functools import lru_cache

from reduxd.products.lightcurve import ensemble_ids
from reduxd.products.naming import gain_label, titled, value_word
from reduxd.products.quicklook import write_quicklook


def finder_path(outdir, *, save, obj, filt, gain, exptime):
    """``<outdir>/finder_<save>_<object>_<filter>_g<gain>_<exp>s.png`` (see ``titled``)."""
    exp = f"{value_word(exptime)}s"
    return outdir / (titled("finder", filt, gain_label(gain), exp, save=save, obj=obj) + ".png")


def read_ensemble(ecsv_path):
    """``(target_id, comparison_ids)`` from a light curve's ECSV meta; ``(None, [])`` if none.

    Only the file's header is read (its YAML, then the column names), and the answer
    is cached by that header: the daemon asks for every light, and appending a
    light's row leaves the header, and so the ensemble, as it was (parsing the header
    takes about 50 ms, reading the whole table more as the night grows).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astropy.table import Table
    >>> path = Path(tempfile.mkdtemp()) / "lc.ecsv"
    >>> t = Table({"mjd": [1.0]}, meta={"target_id": 3, "comparison_ids": [5, 7]})
    >>> t.write(path, format="ascii.ecsv")
    >>> read_ensemble(path)
    (3, (5, 7))
    >>> with open(path, "a") as fh:
    ...     _ = fh.write("2.0\\n")
    >>> read_ensemble(path), _ensemble.cache_info().hits > 0
    ((3, (5, 7)), True)
    """
    try:
        header = _header_text(ecsv_path)
    except (OSError, UnicodeDecodeError):
        return None, []
    return _ensemble(header)


def _header_text(path):
    """An ECSV file's comment lines and the line of column names after them."""
    lines = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            lines.append(line)
            if not line.startswith("#"):
                break
    return "".join(lines)


@lru_cache(maxsize=16)
def _ensemble(header):
    from astropy.table import Table

    try:
        meta = Table.read(header, format="ascii.ecsv").meta  # a table of no rows
    except (OSError, ValueError):
        return None, []
    return ensemble_ids(meta)


def write_finder(path, image, table, *, radius, target_id=None, comparison_ids=(), title="",
                 mask=None, durable=True):  # fmt: skip
    """Write a stack's finder chart to ``path`` atomically; return the path.

    ``table``: star_id, x, y (0-based), mag_inst, flags; ``radius``: the aperture, in
    image pixels; ``mask``: pixels shown in red (e.g. those no light covered).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from astropy.table import Table
    >>> t = Table({"star_id": [1, 2], "x": [20.0, 40.0], "y": [30.0, 10.0],
    ...            "mag_inst": [-7.5, -8.0], "flags": [0, 0]})
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = write_finder(Path(d) / "f.png", np.random.rand(64, 64), t, radius=4.0,
    ...                        target_id=1, comparison_ids=[2])
    ...     out.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    roles = chart_roles(target_id, comparison_ids)
    return write_quicklook(path, image, table, title=title, mask=mask, radius=radius,
                           roles=roles, magnitudes=False, durable=durable)  # fmt: skip


def chart_roles(target_id, comparison_ids):
    """``star_id -> 'target' | 'comparison'`` of a light curve's ensemble, as a chart
    draws them (:func:`reduxd.products.quicklook.write_quicklook`'s ``roles``).

    >>> chart_roles(3, (5, 7))
    {5: 'comparison', 7: 'comparison', 3: 'target'}
    """
    roles = dict.fromkeys((int(c) for c in comparison_ids), "comparison")
    if target_id is not None:
        roles[int(target_id)] = "target"
    return roles
