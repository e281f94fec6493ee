"""Label placement for finder charts: no label over another label or over a star's circle."""

import numpy as np

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
    boxes = np.empty((0, 4))
    gap = radius + 0.25 * height
    out = {}
    for key, x, y, text in stars:
        width = char_width * max(len(text), 1)
        for dx, dy in OFFSETS:
            x0 = x + dx * gap - (width if dx < 0 else width / 2 if dx == 0 else 0.0)
            y0 = y + dy * gap - (height if dy < 0 else height / 2 if dy == 0 else 0.0)
            box = (x0, y0, x0 + width, y0 + height)
            if _free(box, boxes, cx, cy, radius):
                boxes = np.vstack([boxes, box])
                out[key] = box
                break
    return out


def _free(box, boxes, cx, cy, radius):
    x0, y0, x1, y1 = box
    if len(boxes) and np.any(
        (x0 < boxes[:, 2]) & (boxes[:, 0] < x1) & (y0 < boxes[:, 3]) & (boxes[:, 1] < y1)
    ):
        return False
    nx, ny = np.clip(cx, x0, x1), np.clip(cy, y0, y1)  # nearest point of the box
    return not np.any((nx - cx) ** 2 + (ny - cy) ** 2 < radius**2)
