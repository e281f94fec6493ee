"""Fields and star identity: which field a light belongs to, and its star catalogue.

A field's reference (:class:`~reduxd.steps.match.FieldReference`) numbers its
stars; it is kept in the ledger and grows as lights find new stars. Star IDs of
new stars are given when a light is committed (:func:`merge_new_stars`), so
lights measured in parallel against an older reference get the same IDs as in
a serial run.
"""

import re
from pathlib import Path

import numpy as np

from reduxd.lightrows import LightRows
from reduxd.steps.match import FieldReference


def field_key(info, relpath):
    """Return the key of a light's field: its OBJECT (or target folder) without filter/exposure.

    SharpCap names objects like ``pg2213_V_15s``; the V and R lights of that target
    are one field, so a trailing ``_<filter>`` or ``_<exposure>s`` is dropped. A light
    with no OBJECT card directly in the data folder is named by its file name
    without the frame counter or time stamp (``wasp12_0042.fits``: ``wasp12``), so
    the lights of one sequence make one field, not one field each.

    Examples
    --------
    >>> from reduxd.frames import FrameInfo
    >>> info = FrameInfo('x', 'light', 'default', 'V', 15.0, None, None, (1, 1), (2, 2),
    ...                  None, None, '', None, 'blaze_v_15s', None, None)
    >>> field_key(info, 'blaze/blaze_v_15s/01_51_29/blaze_00001.fits')
    'blaze'
    >>> bare = FrameInfo('x', 'light', 'default', None, 60.0, None, None, (1, 1), (2, 2),
    ...                  None, None, '', None, None, None, None)
    >>> field_key(bare, 'WASP-12_20240310_021500.fits'), field_key(bare, 'light_017.fits')
    ('WASP-12', 'light')
    """
    name = info.object
    if not name:
        parts = Path(relpath).parts
        name = parts[0] if len(parts) > 1 else _without_counter(Path(relpath).stem)
    tokens = name.split("_")
    while len(tokens) > 1 and (
        tokens[-1].lower() == (info.filter or "").lower()
        or re.fullmatch(r"\d+(\.\d+)?s", tokens[-1].lower())
    ):
        tokens.pop()
    return "_".join(tokens)


def _without_counter(stem):
    """``stem`` without trailing groups of a separator and 3 or more digits ('field' if empty)."""
    name = stem
    while True:
        shorter = re.sub(r"[_\-. ]\d{3,}$", "", name)
        if shorter == name or not shorter:
            break
        name = shorter
    return name if not re.fullmatch(r"\d*", name) else "field"


class Fields:
    """The references of the fields met so far (read from the ledger once, then kept)."""

    def __init__(self, ledger, *, match_radius):
        self.ledger = ledger
        self.match_radius = match_radius
        self.references = {}

    def reference(self, key):
        """The reference of field ``key`` now, or None before its first light."""
        if key not in self.references:
            data = self.ledger.load_reference(key)
            self.references[key] = FieldReference.from_dict(data) if data else None
        return self.references[key]

    def identify(self, key, base, found, rows):
        """Final star IDs of a light's ``rows`` (measured against ``base``, returning ``found``).

        Returns the rows and the field's reference after this light; :meth:`save` it
        once the rows are committed.
        """
        return merge_new_stars(self.reference(key), base, found, rows, radius=self.match_radius)

    def save(self, key, reference):
        if reference is not self.references.get(key):
            self.references[key] = reference
            self.ledger.save_reference(key, reference.to_dict())


def merge_new_stars(current, base, found, rows, *, radius):
    """Give final IDs to stars a light found beyond the reference it was reduced with.

    ``base`` is the field reference the light was measured against, ``found`` the
    reference it returned (``base`` plus new stars), ``current`` the field's
    reference now (it may have grown since ``base`` when lights are reduced in
    parallel). New stars matching one added since ``base`` (within ``radius``, in
    reference coordinates) take its ID; the others get the next free IDs.

    Returns
    -------
    rows : list of dict or LightRows
        The rows with final ``star_id`` (new ones: the rows are not changed).
    reference : FieldReference
        The field's reference after this light.
    """
    if current is None or current is base:
        return rows, found
    start = base.next_id if base is not None else 1
    new = found.star_id >= start
    if not new.any():
        return rows, current
    mapping, ref = {}, current
    for sid, x, y, flux in zip(
        found.star_id[new], found.x[new], found.y[new], found.flux[new], strict=True
    ):
        extra = ref.star_id >= start
        d2 = (ref.x[extra] - x) ** 2 + (ref.y[extra] - y) ** 2
        if d2.size and d2.min() <= radius**2:
            mapping[int(sid)] = int(ref.star_id[extra][d2.argmin()])
        else:
            ref = ref.extend([x], [y], [flux])
            mapping[int(sid)] = ref.next_id - 1
    if isinstance(rows, LightRows):
        ids = [mapping.get(sid, sid) for sid in rows.values("star_id")]
        return rows.replaced("star_id", np.array(ids, dtype=np.int64)), ref
    out = [{**r, "star_id": mapping.get(r["star_id"], r["star_id"])} for r in rows]
    return out, ref
