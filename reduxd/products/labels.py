"""Label placement for finder charts: no label over another label or over a star's circle."""

import numpy as np
from scipy.spatial import cKDTree

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
    widths = np.array([char_width * max(len(s[3]), 1) for s in stars], dtype=float)
    gap = radius + 0.25 * height
    boxes = _candidates(cx, cy, widths, height, gap)  # (n, 8, 4), most liked first
    # a label lies within (gap + width, gap + height) of its star: only stars that
    # close in x and in y can be in each other's way
    wide, tall = gap + widths.max(), gap + height
    pairs = cKDTree(np.column_stack([cx, cy])).query_pairs(
        float(np.hypot(2 * wide, 2 * tall)) + radius, output_type="ndarray"
    )
    near = (np.abs(cx[pairs[:, 0]] - cx[pairs[:, 1]]) < 2 * wide + radius) & (
        np.abs(cy[pairs[:, 0]] - cy[pairs[:, 1]]) < 2 * tall + radius
    )
    pairs = pairs[near]
    n = len(stars)
    a = np.r_[pairs[:, 0], pairs[:, 1], np.arange(n)].astype(np.int64)
    b = np.r_[pairs[:, 1], pairs[:, 0], np.arange(n)].astype(np.int64)
    blocked = np.zeros((n, len(OFFSETS)), bool)  # over a circle: whatever the order
    np.logical_or.at(blocked, a, _over_circle(boxes[a], cx[b], cy[b], radius))
    others = a != b
    a, b = a[others], b[others]
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    start = np.searchsorted(a, np.arange(n + 1))
    placed = np.full((n, 4), np.nan)  # the box chosen for each star (NaN: none yet)
    out = {}
    for i, (key, *_rest) in enumerate(stars):
        free = ~blocked[i]
        taken = placed[b[start[i] : start[i + 1]]]
        if taken.size:
            free &= ~_overlap(boxes[i], taken).any(axis=1)
        if free.any():
            k = int(np.argmax(free))  # the most liked free place
            placed[i] = boxes[i, k]
            out[key] = tuple(float(v) for v in boxes[i, k])
    return out


def _candidates(cx, cy, widths, height, gap):
    """The boxes ``(x0, y0, x1, y1)`` around each star, one per OFFSETS entry."""
    dx, dy = (np.array(v, dtype=float)[None, :] for v in zip(*OFFSETS, strict=True))
    w = widths[:, None]
    x0 = cx[:, None] + dx * gap - np.where(dx < 0, w, np.where(dx == 0, w / 2, 0.0))
    y0 = cy[:, None] + dy * gap - np.where(dy < 0, height, np.where(dy == 0, height / 2, 0.0))
    return np.stack([x0, y0, x0 + w, y0 + height], axis=-1)


def _over_circle(boxes, cx, cy, radius):
    """(pairs, 8): does each box come within ``radius`` of its pair's star."""
    nx = np.clip(cx[:, None], boxes[..., 0], boxes[..., 2])  # nearest point of the box
    ny = np.clip(cy[:, None], boxes[..., 1], boxes[..., 3])
    return (nx - cx[:, None]) ** 2 + (ny - cy[:, None]) ** 2 < radius**2


def _overlap(candidates, boxes):
    """(8, m): does each candidate box overlap each of ``boxes`` (NaN rows never do)."""
    p, q = candidates[:, None, :], boxes[None, :, :]
    return (
        (p[..., 0] < q[..., 2]) & (q[..., 0] < p[..., 2])
        & (p[..., 1] < q[..., 3]) & (q[..., 1] < p[..., 3])
    )  # fmt: skip
