"""The per-frame metadata the ledger keeps (``frames.info``): one typed, versioned record.

Stored as JSON in ``frames.info`` with its version (``meta_version``); the keys are
the field names, so the JSON that earlier versions wrote (an untyped bag with the
same keys, no ``meta_version``) reads as version 0. Unknown keys are refused, except
in a version-0 bag, where they are kept, untouched, in ``extra``.

A dataclass rather than columns: the fields belong to different kinds of frame
(a light's stars and offset, a calibration frame's set and master), most are empty
for any one frame, and the SQL reads only ``excluded`` (``json_extract``).

``FrameMeta`` is also a read-only mapping of its set fields, so the stored keys and
``meta["offset"]`` read the same; code reads the attributes.

Examples
--------
>>> meta = FrameMeta(object="m51", filter="V", exptime=30.0, offset=[1.5, -2.0])
>>> meta.to_dict()
{'object': 'm51', 'filter': 'V', 'exptime': 30.0, 'offset': (1.5, -2.0), 'meta_version': 1}
>>> FrameMeta.from_dict(meta.to_dict()).offset, meta["filter"], "gain" in meta
((1.5, -2.0), 'V', False)
>>> FrameMeta.from_dict({"object": "m51", "colour": "red"}).extra
{'colour': 'red'}
>>> FrameMeta.from_dict({"object": "m51", "colour": "red", "meta_version": 1})
Traceback (most recent call last):
...
ValueError: frame metadata version 1 has unknown keys: colour
"""

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

META_VERSION = 1


@dataclass(frozen=True, eq=False)
class FrameMeta(Mapping):
    """What the ledger records about a frame besides its state (all fields optional).

    Attributes
    ----------
    object, filter, exptime, gain
        From the header: a light's field (``fields.field_key``), filter, exposure
        (s) and gain setting; a calibration frame's filter and exposure.
    n_stars, offset, fwhm, calib, version
        A reduced light: stars measured, (dx, dy) from its field's reference (pixels),
        median FWHM (pixels), calibration applied, and its reduction number.
    excluded, duplicate_of
        A light not measured: the excluded filter, or ``"duplicate"`` and the first
        light with the same bytes.
    skipped
        A calibration frame set aside (``--no-dark``, ``-x``...), and why.
    set, master_id, master_error, rebuild
        A calibration frame: its set (repr of the key), the master built from it,
        why none could be, and whether its master must be built again.
    meta_version
        Version of this record: 1; 0 for the untyped bag of earlier ledgers.
    extra
        Keys of a version-0 bag this version does not know (kept, not used).
    """

    object: str | None = None
    filter: str | None = None
    exptime: float | None = None
    gain: float | None = None
    n_stars: int | None = None
    offset: tuple[float, float] | None = None
    fwhm: float | None = None
    calib: str | None = None
    version: int | None = None
    excluded: str | None = None
    duplicate_of: str | None = None
    skipped: str | None = None
    set: str | None = None
    master_id: int | None = None
    master_error: str | None = None
    rebuild: bool | None = None
    meta_version: int = META_VERSION
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.offset is not None:  # stored as a JSON list
            object.__setattr__(self, "offset", tuple(float(v) for v in self.offset))

    @property
    def master_tried(self):
        """A master was built from this calibration frame's set, or could not be."""
        return (self.master_id is not None or self.master_error is not None) and not self.rebuild

    @classmethod
    def of(cls, value):
        """``value`` as a FrameMeta: itself, a mapping of field names, or None (empty)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        unknown = sorted(set(value) - set(_FIELDS))
        if unknown:
            raise ValueError(f"frame metadata has unknown keys: {', '.join(unknown)}")
        return cls(**value)

    @classmethod
    def from_dict(cls, stored):
        """Read the stored form (the JSON object of ``frames.info``; empty: no metadata)."""
        data = dict(stored)
        version = data.pop("meta_version", 0)
        unknown = {k: data.pop(k) for k in sorted(set(data) - set(_FIELDS))}
        if version > META_VERSION:
            raise ValueError(f"frame metadata version {version}, this reduxd knows {META_VERSION}")
        if unknown and version:
            raise ValueError(
                f"frame metadata version {version} has unknown keys: {', '.join(unknown)}"
            )
        return cls(**data, meta_version=version, extra=unknown)

    def to_dict(self):
        """The stored form: the set fields, extra keys and the version (written as JSON).

        A record with ``extra`` keys (from an untyped bag) stays version 0.
        """
        return {**self, "meta_version": 0 if self.extra else META_VERSION}

    def updated(self, **changes):
        """A copy with ``changes`` (field names only)."""
        return dataclasses.replace(self, **changes)

    # read-only mapping of the set fields (and of extra), as stored
    def _items(self):
        out = {name: getattr(self, name) for name in _FIELDS}
        return {**{k: v for k, v in out.items() if v is not None}, **self.extra}

    def __getitem__(self, key):
        return self._items()[key]

    def __iter__(self):
        return iter(self._items())

    def __len__(self):
        return len(self._items())

    def __repr__(self):
        return f"FrameMeta({self._items()!r})"


_FIELDS = tuple(f.name for f in dataclasses.fields(FrameMeta))[:-2]  # not meta_version, extra
