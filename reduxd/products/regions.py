"""DS9 region files of the measured stars (plain DS9 region text, version 4.1).

One circle per star, at its 1-based image position (DS9's ``image`` system), of
the aperture radius, labelled with the star ID; flagged stars are drawn orange.
Open with ``ds9 light.fits -regions light.reg``.
"""

import numpy as np

from reduxd.files import atomic_write

HEADER = (
    "# Region file format: DS9 version 4.1\n"
    'global color=green dashlist=8 3 width=1 font="helvetica 10 normal roman" '
    "select=1 highlite=1 dash=0 fixed=0 edit=1 move=1 delete=1 include=1 source=1\n"
    "image\n"
)


def region_text(table, *, radius, title=""):
    """The DS9 region text of a star table (``star_id``, ``x``, ``y``, ``flags``; 0-based).

    Examples
    --------
    >>> table = {"star_id": [1, 2], "x": [9.0, 20.5], "y": [4.0, 7.25], "flags": [0, 2]}
    >>> print(region_text(table, radius=5).splitlines()[-1])
    circle(21.500,8.250,5.00) # color=orange text={2}
    """
    head = HEADER + (f"# {title}\n" if title else "")
    x, y = (np.asarray(table[name], dtype=float) for name in ("x", "y"))
    keep = np.isfinite(x) & np.isfinite(y)
    ids = np.asarray(table["star_id"]).astype(np.int64)[keep].tolist()
    flagged = (np.asarray(table["flags"]).astype(np.int64) != 0)[keep].tolist()
    size = f",{float(radius):.2f}) #"
    lines = [
        f"circle({xi:.3f},{yi:.3f}{size}{' color=orange' if bad else ''} text={{{sid}}}\n"
        for xi, yi, bad, sid in zip(
            (x[keep] + 1).tolist(), (y[keep] + 1).tolist(), flagged, ids, strict=True
        )
    ]
    return head + "".join(lines)


def write_regions(path, table, *, radius, title="", durable=True):
    """Write :func:`region_text` to ``path`` atomically; return the path."""
    text = region_text(table, radius=radius, title=title)
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), durable=durable)
