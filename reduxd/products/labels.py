"""Label placement for finder charts: no label over another label or over a star's circle."""

import numpy as np

from reduxd.products._labels import first_fit

#: candidate places around a star, most liked first: (dx, dy) in units of the gap
OFFSETS = ((1, 1), (-1, 1), (1, -1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def place_labels(stars, *, radius, char_width, height):
    """Boxes for labels that overlap no other label and no star's circle.

    Parameters
    ----------
    stars : list of (key, x, y, text)
        In placement order (most important first). Any orientation of the y axis.
    radius : float
        Circle radius, same units as x and y.
    char_width, height : float
        Size of one character and of a line of text, same units.

    Returns
    -------
    dict
        ``key -> (x0, y0, x1, y1)``, the box of each label placed (a label that fits
        nowhere is left out).

    The stars are taken in order, each label at its first place (``OFFSETS``) that
    is over no circle and no label placed before: one compiled loop
    (:func:`reduxd.products._labels.first_fit`) that looks only at the stars of
    the grid cells near each place.

    A radius or text size that is not finite places no label.

    Raises
    ------
    ValueError
        A star's position is not finite.

    Examples
    --------
    >>> out = place_labels([(1, 50, 50, "1"), (2, 58, 50, "2")], radius=3, char_width=4,
    ...                    height=6)
    >>> sorted(out), out[1] != out[2]
    ([1, 2], True)
    """
    if not stars:
        return {}
    cx = np.array([s[1] for s in stars], dtype=float)
    cy = np.array([s[2] for s in stars], dtype=float)
    if not (np.isfinite(cx).all() and np.isfinite(cy).all()):
        raise ValueError("place_labels: star positions must be finite")
    widths = char_width * np.maximum([len(s[3]) for s in stars], 1).astype(float)
    boxes = _candidates(cx, cy, widths, height, radius + 0.25 * height)  # (n, 8, 4)
    if not (np.isfinite(boxes).all() and np.isfinite(radius)):
        return {}  # a radius or text size that is not finite: no place is known to be free
    # how far a label reaches from its star (what the grid search must cover)
    reach_x = float(np.abs(boxes[..., 0::2] - cx[:, None, None]).max())
    reach_y = float(np.abs(boxes[..., 1::2] - cy[:, None, None]).max())
    span = max(float(np.ptp(cx)), float(np.ptp(cy)))
    size = max(max(reach_x, reach_y) / 2, span / 256, 1e-9)  # <= 257 x 257 cells
    x_origin, y_origin = float(cx.min()), float(cy.min())
    ncx = int((cx.max() - x_origin) // size) + 1
    ncy = int((cy.max() - y_origin) // size) + 1
    cell = np.minimum(((cy - y_origin) // size).astype(np.int64), ncy - 1) * ncx + np.minimum(
        ((cx - x_origin) // size).astype(np.int64), ncx - 1
    )
    by_cell = np.argsort(cell, kind="stable")
    cell_start = np.searchsorted(cell[by_cell], np.arange(ncx * ncy + 1)).astype(np.int64)
    chosen = np.empty(len(stars), dtype=np.int64)
    first_fit(np.ascontiguousarray(boxes), cx, cy, float(radius) ** 2, reach_x, reach_y,
              x_origin, y_origin, size, ncx, ncy, by_cell, cell_start, chosen)  # fmt: skip
    placed = np.flatnonzero(chosen >= 0)
    kept = boxes[placed, chosen[placed]].tolist()
    return {stars[i][0]: tuple(box) for i, box in zip(placed.tolist(), kept, strict=True)}


def _candidates(cx, cy, widths, height, gap):
    """The boxes ``(x0, y0, x1, y1)`` around each star, one per OFFSETS entry."""
    dx, dy = (np.array(v, dtype=float)[None, :] for v in zip(*OFFSETS, strict=True))
    w = widths[:, None]
    x0 = cx[:, None] + dx * gap - np.where(dx < 0, w, np.where(dx == 0, w / 2, 0.0))
    y0 = cy[:, None] + dy * gap - np.where(dy < 0, height, np.where(dy == 0, height / 2, 0.0))
    return np.stack([x0, y0, x0 + w, y0 + height], axis=-1)
