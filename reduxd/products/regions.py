"""DS9 region files of the measured stars (plain DS9 region text, version 4.1).

One circle per star, at its 1-based image position (DS9's ``image`` system), of
the aperture radius, labelled with the star ID; flagged stars are drawn orange.
Open with ``ds9 light.fits -regions light.reg``.
"""

import math

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
    lines = [HEADER + (f"# {title}\n" if title else "")]
    radius = float(radius)
    ids, xs, ys, flags = (_plain(table[name]) for name in ("star_id", "x", "y", "flags"))
    for sid, x, y, flag in zip(ids, xs, ys, flags, strict=True):
        x, y = float(x), float(y)
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        color = " color=orange" if int(flag) else ""
        centre = f"{x + 1:.3f},{y + 1:.3f}"
        lines.append(f"circle({centre},{radius:.2f}) #{color} text={{{int(sid)}}}\n")
    return "".join(lines)


def _plain(column):
    """A column's values as Python numbers (a numpy scalar is slow to take one at a time)."""
    return np.asarray(column).tolist()


def write_regions(path, table, *, radius, title="", durable=True):
    """Write :func:`region_text` to ``path`` atomically; return the path."""
    text = region_text(table, radius=radius, title=title)
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")), durable=durable)
