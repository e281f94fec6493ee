"""Label placement for finder charts: no label over another label or over a star's circle."""

import numpy as np
from scipy.spatial import cKDTree

from reduxd.products._labels import mark_over_circle

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
    # a label lies within (wide, tall) of its star: only stars that close in x and in
    # y can be in each other's way (``reach``)
    wide, tall = gap + widths.max(), gap + height
    reach = (2 * wide + radius, 2 * tall + radius, float(np.hypot(2 * wide, 2 * tall)) + radius)
    # the pairs where a's labels can come over b's circle (a pixel to spare for rounding)
    a, b = _pairs(cx, cy, (wide + radius + 1, tall + radius + 1))
    dx, dy = np.abs(cx[a] - cx[b]), np.abs(cy[a] - cy[b])
    circle = (dx < gap + widths[a] + radius + 1) & (dy < gap + height + radius + 1)
    circle &= _within(dx, dy, reach)
    ac, bc = a[circle], b[circle]
    blocked = over_circles(boxes, cx, cy, ac, bc, radius)
    # a star whose every place is over a circle never gets a label (in a crowded field,
    # most of them): it takes no part in the waits, nor does a pair with it
    live = np.flatnonzero(~blocked.all(axis=1))
    a, b = _pairs(cx[live], cy[live], reach)
    a, b = live[a], live[b]
    # the pairs where a's label can come over b's (a pixel to spare for rounding); a
    # label waits only for those before it
    dx, dy = np.abs(cx[a] - cx[b]), np.abs(cy[a] - cy[b])
    label = (dx < 2 * gap + widths[a] + widths[b] + 1) & (dy < 2 * (gap + height) + 1)
    earlier = label & (b < a)
    a, b = a[earlier], b[earlier]
    chosen = _first_fit(boxes, blocked, a, b)
    return {
        stars[i][0]: tuple(float(v) for v in boxes[i, chosen[i]])
        for i in np.flatnonzero(chosen >= 0).tolist()
    }


def _pairs(cx, cy, reach):
    """``(a, b)``: both orders of each pair of stars within ``reach`` of each other, and
    each star with itself.

    ``reach``: ``(x, y)``, within that in x and in y; or ``(x, y, d)``, and within a
    distance ``d`` as well.
    """
    n = len(cx)
    tree = cKDTree(np.column_stack([cx, cy]))
    pairs = tree.query_pairs(reach[2] if len(reach) > 2 else float(np.hypot(*reach)),
                             output_type="ndarray")  # fmt: skip
    pairs = pairs[
        (np.abs(cx[pairs[:, 0]] - cx[pairs[:, 1]]) < reach[0])
        & (np.abs(cy[pairs[:, 0]] - cy[pairs[:, 1]]) < reach[1])
    ]
    a = np.r_[pairs[:, 0], pairs[:, 1], np.arange(n)].astype(np.int64)
    b = np.r_[pairs[:, 1], pairs[:, 0], np.arange(n)].astype(np.int64)
    return a, b


def _within(dx, dy, reach):
    """Which of the pairs ``dx``, ``dy`` apart are within ``reach`` (as :func:`_pairs`,
    the distance compared as the k-d tree does, squared)."""
    return (dx < reach[0]) & (dy < reach[1]) & (dx * dx + dy * dy <= reach[2] * reach[2])


def _first_fit(boxes, blocked, a, b):
    """Each star's first free place (-1: none), the stars taken in order, as a loop
    over them would: a place is free unless blocked or over the box chosen for an
    earlier star ``b`` near it (pairs ``a, b``, ``b < a``).

    Done in waves: every star whose earlier neighbours all have their place takes
    its own at once (a few dozen waves for a crowded field, not a step per star).
    """
    n = len(boxes)
    by_a, by_b = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    a_start = np.searchsorted(a[by_a], np.arange(n + 1))
    b_start = np.searchsorted(b[by_b], np.arange(n + 1))
    waiting = np.diff(a_start)  # earlier neighbours without a place yet
    placed = np.full((n, 4), np.nan)  # the box chosen for each star (NaN: none)
    chosen = np.full(n, -1)
    wave = np.flatnonzero(waiting == 0)
    while wave.size:
        mine = by_a[_segments(a_start, wave)]  # the pairs of this wave's stars
        pa = a[mine]
        hit = _overlap_pairs(boxes[pa], placed[b[mine]])  # (pairs, 8)
        free = ~(blocked[wave] | _any_by(pa, hit, n)[wave])
        has = free.any(axis=1)
        k = np.argmax(free, axis=1)  # the most liked free place
        chosen[wave[has]] = k[has]
        placed[wave[has]] = boxes[wave[has], k[has]]
        waiting -= np.bincount(a[by_b[_segments(b_start, wave)]], minlength=n)
        waiting[wave] = -1
        wave = np.flatnonzero(waiting == 0)
    return chosen


def _candidates(cx, cy, widths, height, gap):
    """The boxes ``(x0, y0, x1, y1)`` around each star, one per OFFSETS entry."""
    dx, dy = (np.array(v, dtype=float)[None, :] for v in zip(*OFFSETS, strict=True))
    w = widths[:, None]
    x0 = cx[:, None] + dx * gap - np.where(dx < 0, w, np.where(dx == 0, w / 2, 0.0))
    y0 = cy[:, None] + dy * gap - np.where(dy < 0, height, np.where(dy == 0, height / 2, 0.0))
    return np.stack([x0, y0, x0 + w, y0 + height], axis=-1)


def _segments(start, rows):
    """Indices ``start[r]:start[r + 1]`` for each of ``rows``, concatenated."""
    first, stop = start[rows], start[rows + 1]
    sizes = stop - first
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(first - np.cumsum(sizes) + sizes, sizes)
    return offsets + np.arange(total)


def _any_by(rows, hits, n):
    """(n, 8): ``out[i, k]`` is whether ``hits[j, k]`` for any ``j`` with ``rows[j] == i``."""
    width = hits.shape[1]
    cells = (rows[:, None] * width + np.arange(width))[hits]
    return (np.bincount(cells, minlength=n * width) > 0).reshape(n, width)


def over_circles(boxes, cx, cy, a, b, radius):
    """(n, 8) bool: is each place (``boxes``, (n, 8, 4)) of star ``a[p]`` within
    ``radius`` of star ``b[p]`` (``cx``, ``cy``) for any pair ``p``.

    A compiled loop (:mod:`reduxd.products._labels`) that tests a place only until
    it is found blocked; the same test, in the same arithmetic, as
    :func:`_over_circle` (which it falls back to for values that are not finite).

    Examples
    --------
    >>> boxes = np.array([[[5.0, 0.0, 9.0, 2.0]] * 8])
    >>> boxes[0, 1] = [20.0, 0.0, 24.0, 2.0]
    >>> over_circles(boxes, np.array([3.0]), np.array([1.0]), np.array([0]), np.array([0]), 2.5)
    array([[ True, False,  True,  True,  True,  True,  True,  True]])
    """
    n = len(boxes)
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if not (np.isfinite(boxes).all() and np.isfinite(cx).all() and np.isfinite(cy).all()):
        return _any_by(a, _over_circle(boxes[a], cx[b], cy[b], radius), n)
    blocked = np.zeros(boxes.shape[:2], dtype=np.uint8)
    mark_over_circle(
        np.ascontiguousarray(boxes, dtype=np.float64),
        np.ascontiguousarray(cx, dtype=np.float64),
        np.ascontiguousarray(cy, dtype=np.float64),
        np.ascontiguousarray(a),
        np.ascontiguousarray(b),
        float(radius) ** 2,
        blocked,
    )
    return blocked.view(bool)


def _over_circle(boxes, cx, cy, radius):
    """(pairs, 8): does each box come within ``radius`` of its pair's star."""
    # nearest point of the box (np.minimum/maximum: np.clip, the same, is slower)
    nx = np.minimum(np.maximum(cx[:, None], boxes[..., 0]), boxes[..., 2])
    ny = np.minimum(np.maximum(cy[:, None], boxes[..., 1]), boxes[..., 3])
    return (nx - cx[:, None]) ** 2 + (ny - cy[:, None]) ** 2 < radius**2


def _overlap_pairs(candidates, boxes):
    """(pairs, 8): does each of a star's candidate boxes overlap its pair's box (NaN: never)."""
    p, q = candidates, boxes[:, None, :]
    return (
        (p[..., 0] < q[..., 2]) & (q[..., 0] < p[..., 2])
        & (p[..., 1] < q[..., 3]) & (q[..., 1] < p[..., 3])
    )  # fmt: skip
