"""Star identity across a night: pointing offsets and persistent ``star_id`` (pure).

The field's catalogue (``FieldReference``) holds each star's position in the
pixel frame of the field's first frame. A later frame is shifted by a pointing
offset ``(dx, dy)`` (frame = reference + offset; translation only, no rotation
or scale). ``find_offset`` votes over all pairwise differences between the
brightest reference stars and the brightest peaks of the frame: the true
offset collects one vote per star present in both lists, wrong pairings
scatter. Ties are broken by how similar the brightness ranks of the pairs are.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FieldReference:
    """Stars of one field in reference-frame pixels (immutable; JSON-able via to_dict)."""

    star_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    next_id: int
    fwhm: float = 0.0  # FWHM (pixels) of the latest frame, a starting guess; 0 = unknown
    aperture_fwhm: float = 0.0  # crowded field: its first frame's FWHM, radii fixed; 0: follow

    def to_dict(self):
        """Plain lists and ints, for JSON.

        Examples
        --------
        >>> ref = FieldReference.empty().extend([1.0], [2.0], [3.0])
        >>> ref.to_dict()  # doctest: +NORMALIZE_WHITESPACE
        {'star_id': [1], 'x': [1.0], 'y': [2.0], 'flux': [3.0], 'next_id': 2, 'fwhm': 0.0,
         'aperture_fwhm': 0.0}
        """
        return {
            "star_id": [int(v) for v in self.star_id],
            "x": [float(v) for v in self.x],
            "y": [float(v) for v in self.y],
            "flux": [float(v) for v in self.flux],
            "next_id": int(self.next_id),
            "fwhm": float(self.fwhm),
            "aperture_fwhm": float(self.aperture_fwhm),
        }

    @classmethod
    def from_dict(cls, d):
        """Inverse of ``to_dict``.

        Examples
        --------
        >>> ref = FieldReference.empty().extend([1.0], [2.0], [3.0])
        >>> FieldReference.from_dict(ref.to_dict()).to_dict() == ref.to_dict()
        True
        """
        return cls(
            np.asarray(d["star_id"], dtype=np.int64),
            np.asarray(d["x"], dtype=np.float64),
            np.asarray(d["y"], dtype=np.float64),
            np.asarray(d["flux"], dtype=np.float64),
            int(d["next_id"]),
            float(d.get("fwhm", 0.0)),
            float(d.get("aperture_fwhm", 0.0)),
        )

    @classmethod
    def empty(cls):
        """A field with no stars yet; the first ID will be 1."""
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0), 1)

    def extend(self, x, y, flux):
        """Return a new reference with stars appended under new IDs.

        Examples
        --------
        >>> FieldReference.empty().extend([5.0, 6.0], [1.0, 2.0], [9.0, 8.0]).star_id.tolist()
        [1, 2]
        """
        x, y, flux = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, y, flux))
        ids = np.arange(self.next_id, self.next_id + x.size, dtype=np.int64)
        return FieldReference(
            np.concatenate([self.star_id, ids]),
            np.concatenate([self.x, x]),
            np.concatenate([self.y, y]),
            np.concatenate([self.flux, flux]),
            self.next_id + x.size,
            self.fwhm,
        )

    def __len__(self):
        return int(self.star_id.size)


def brightest(flux, n):
    """Indices of the ``n`` largest finite fluxes, brightest first.

    Examples
    --------
    >>> brightest(np.array([1.0, np.nan, 5.0, 3.0]), 2).tolist()
    [2, 3]
    """
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    order = np.argsort(-flux, kind="stable")
    return order[: min(n, int(np.isfinite(flux).sum()))]


def find_offset(ref_x, ref_y, x, y, *, max_offset=300.0, tol=3.0):
    """Offset ``(dx, dy, votes)`` with frame = reference + offset.

    Both lists should be ordered brightest first (a few dozen stars each).
    ``votes`` is the number of reference stars matched at the best offset;
    ``(0.0, 0.0, 0)`` when no offset within ``max_offset`` collects a vote.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> rx, ry = rng.uniform(0, 1000, (2, 30))
    >>> fx, fy = np.r_[rx[3:] + 120.4, 500.0], np.r_[ry[3:] - 80.2, 20.0]
    >>> dx, dy, votes = find_offset(rx, ry, fx, fy)
    >>> round(dx, 1), round(dy, 1), votes
    (120.4, -80.2, 27)
    """
    ref_x, ref_y, x, y = (np.asarray(v, dtype=np.float64) for v in (ref_x, ref_y, x, y))
    if ref_x.size == 0 or x.size == 0:
        return 0.0, 0.0, 0
    dx = (x[None, :] - ref_x[:, None]).ravel()
    dy = (y[None, :] - ref_y[:, None]).ravel()
    rank = np.abs(np.arange(x.size)[None, :] - np.arange(ref_x.size)[:, None]).ravel()
    near = np.hypot(dx, dy) <= max_offset
    if not near.any():
        return 0.0, 0.0, 0
    dx, dy, rank = dx[near], dy[near], rank[near]
    from scipy.spatial import cKDTree  # 0.2 s to import: not before the first light

    tree = cKDTree(np.column_stack([dx, dy]))
    # each difference's votes: itself and every other within ``tol`` (each pair once)
    pairs = tree.query_pairs(tol, output_type="ndarray")
    votes = np.bincount(pairs.ravel(), minlength=dx.size) + 1
    best = np.lexsort((rank, -votes))[0]
    members = tree.query_ball_point([dx[best], dy[best]], tol)
    return float(np.median(dx[members])), float(np.median(dy[members])), int(votes[best])


def match_nearest(ref_x, ref_y, x, y, *, radius):
    """For each position the index of the nearest reference star within ``radius``, else -1.

    One-to-one: a reference star goes to its closest position only.

    Examples
    --------
    >>> match_nearest([0.0, 10.0], [0.0, 0.0], [0.5, 9.0, 50.0], [0.0, 0.0, 0.0], radius=2).tolist()
    [0, 1, -1]
    """
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    out = np.full(x.size, -1, dtype=np.int64)
    if np.size(ref_x) == 0 or x.size == 0:
        return out
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(np.column_stack([ref_x, ref_y])).query(
        np.column_stack([x, y]), distance_upper_bound=radius
    )
    found = np.isfinite(dist)
    for i in np.flatnonzero(found)[np.argsort(dist[found], kind="stable")]:
        if not np.any(out == idx[i]):
            out[i] = idx[i]
    return out


def assign_ids(reference, x, y, flux, *, offset=(0.0, 0.0), radius=3.0):
    """Give measured stars their field IDs; unmatched stars get new IDs.

    Parameters
    ----------
    reference : FieldReference
        The field so far.
    x, y, flux : array_like
        Stars of this frame (frame pixels).
    offset : tuple of float
        ``(dx, dy)`` of this frame relative to the reference.
    radius : float
        Match radius after the offset, pixels.

    Returns
    -------
    ids : numpy.ndarray
    reference : FieldReference
        With the new stars appended (positions moved into reference pixels).

    Examples
    --------
    >>> ref = FieldReference.empty().extend([10.0, 50.0], [10.0, 50.0], [1.0, 1.0])
    >>> ids, ref2 = assign_ids(ref, [60.2, 90.0], [59.9, 30.0], [1.0, 2.0], offset=(10, 10))
    >>> ids.tolist(), ref2.x.tolist()
    ([2, 3], [10.0, 50.0, 80.0])
    """
    x, y, flux = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (x, y, flux))
    rx, ry = x - offset[0], y - offset[1]
    idx = match_nearest(reference.x, reference.y, rx, ry, radius=radius)
    ids = np.where(idx >= 0, reference.star_id[np.maximum(idx, 0)], 0)
    new = idx < 0
    updated = reference.extend(rx[new], ry[new], flux[new])
    ids[new] = updated.star_id[len(reference) :]
    return ids, updated
