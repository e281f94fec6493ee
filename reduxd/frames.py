"""Classifying a frame from its header (and, failing that, its path).

:func:`classify` returns a :class:`FrameInfo` that records which rule decided
the frame type, so that a surprising classification can be explained from one
log line.
"""

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import PurePath

from reduxd.errors import FrameRejected

KINDS = ("light", "bias", "dark", "flat")


@dataclass(frozen=True)
class ClassifyRules:
    """How frame types and filters are recognised (the ``[classify]`` config section)."""

    type_keywords: tuple[str, ...] = ("FRAMETYP", "IMAGETYP", "OBSTYPE")
    types: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "light": ("light", "light frame", "object", "science"),
            "bias": ("bias", "zero", "bias frame"),
            "dark": ("dark", "dark frame"),
            "flat": ("flat", "flat field", "flat frame", "domeflat", "skyflat", "twilight flat"),
        }
    )
    path_rules: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "bias": ("bias", "biases"),
            "dark": ("dark", "darks"),
            "flat": ("flat", "flats"),
        }
    )
    default_kind: str = "light"
    filter_aliases: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FrameInfo:
    """What a frame is, read from its header."""

    path: str
    kind: str
    kind_rule: str
    filter: str | None
    exptime: float | None
    gain: float | None
    offset: float | None
    binning: tuple[int, int]
    shape: tuple[int, int]
    ccd_temp: float | None
    set_temp: float | None
    instrument: str
    readout_mode: str | None
    object: str | None
    date_obs: datetime | None
    date_mid: datetime | None

    def night(self, utc_offset_hours=0.0):
        """Return the observing night 'YYYY-MM-DD' (local date at the evening's start).

        Examples
        --------
        >>> info = FrameInfo('a.fits', 'light', 'default', 'V', 1.0, None, None, (1, 1),
        ...                  (2, 2), None, None, '', None, None,
        ...                  datetime(2024, 7, 2, 1, 51, tzinfo=UTC), None)
        >>> info.night(-4.0)
        '2024-07-01'
        """
        return night_of(self.date_obs, utc_offset_hours)


def night_of(stamp, utc_offset_hours=0.0):
    """Return the observing night 'YYYY-MM-DD' of a UTC time ('unknown' for None).

    The night is named after the local date at its start: local time minus 12 h.

    Examples
    --------
    >>> night_of(datetime(2025, 6, 2, 4, 10, tzinfo=UTC), -7.0)
    '2025-06-01'
    """
    if stamp is None:
        return "unknown"
    return (stamp + timedelta(hours=utc_offset_hours - 12.0)).date().isoformat()


def _text(header, key):
    value = header.get(key)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(header, keys, path, *, what):
    for key in keys:
        value = header.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, bool):
            raise FrameRejected(path, f"{key}={value!r} is not a number ({what})")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise FrameRejected(path, f"{key}={value!r} is not a number ({what})") from None
    return None


def _kind_from_header(header, rules):
    for key in rules.type_keywords:
        value = _text(header, key)
        if value is None:
            continue
        word = " ".join(value.lower().replace("_", " ").split())
        for kind, names in rules.types.items():
            if word in names:
                return kind, f"header:{key}={value}"
        return None, f"header:{key}={value} (unknown type)"
    return None, None


def _kind_from_path(path, rules):
    parts = [p.lower() for p in PurePath(path).parts[:-1]]
    for part in reversed(parts):
        for kind, names in rules.path_rules.items():
            words = re.split(r"[^a-z0-9]+", part)
            if part in names or any(w in names for w in words):
                return kind, f"path:{part}"
    return None, None


def frame_kind(header, path, rules):
    """Return ``(kind, rule)``: the frame type and the rule that decided it."""
    kind, rule = _kind_from_header(header, rules)
    if kind is not None:
        return kind, rule
    unknown = rule
    kind, rule = _kind_from_path(path, rules)
    if kind is not None:
        return kind, rule if unknown is None else f"{rule} ({unknown})"
    rule = "default" if unknown is None else f"default ({unknown})"
    return rules.default_kind, rule


def normalise_filter(value, aliases):
    """Strip and normalise a filter name through ``aliases`` (case-insensitive), upper-cased.

    Examples
    --------
    >>> normalise_filter(' r ', {})
    'R'
    >>> normalise_filter('sloan_r', {'SLOAN_R': 'r'})
    'R'
    """
    if value is None:
        return None
    name = str(value).strip()
    if not name:
        return None
    upper = {k.upper(): v for k, v in aliases.items()}
    return str(upper.get(name.upper(), name)).strip().upper()


_DATE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?$"
)


def parse_date(text, time_text=None):
    """Parse a FITS date (ISO 8601, optional fraction and UTC offset) into aware UTC.

    Examples
    --------
    >>> parse_date('2024-07-02T01:51:29.4505778').isoformat()
    '2024-07-02T01:51:29.450577+00:00'
    >>> parse_date('2025-06-01T21:00:00-0700').isoformat()
    '2025-06-02T04:00:00+00:00'
    """
    match = _DATE.match(str(text).strip())
    if not match:
        return None
    year, month, day, hh, mm, ss, frac, tz = match.groups()
    if hh is None and time_text:
        return parse_date(f"{year}-{month}-{day}T{str(time_text).strip()}")
    micro = int((frac or "0")[:6].ljust(6, "0"))
    stamp = datetime(
        int(year), int(month), int(day), int(hh or 0), int(mm or 0), int(ss or 0), micro, UTC
    )
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        stamp -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return stamp


def _dates(header, exptime):
    start = None
    if _text(header, "DATE-OBS"):
        start = parse_date(header["DATE-OBS"], _text(header, "TIME-OBS") or _text(header, "UT"))
    mid = parse_date(header["DATE-AVG"]) if _text(header, "DATE-AVG") else None
    if mid is None and start is not None:
        mid = start + timedelta(seconds=(exptime or 0.0) / 2.0)
    return start, mid


def _shape(header):
    keys = ("ZNAXIS2", "ZNAXIS1") if header.get("ZIMAGE") else ("NAXIS2", "NAXIS1")
    return int(header.get(keys[0], 0)), int(header.get(keys[1], 0))


def classify(header, path, rules=None):
    """Return the :class:`FrameInfo` of a frame from its header and path.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The header of the image HDU.
    path : str or Path
        Where the frame is (used by the path rules and in messages).
    rules : ClassifyRules, optional
        Synonyms, path rules and filter aliases; defaults recognise SharpCap and MaxIm DL.

    Raises
    ------
    FrameRejected
        A light without a usable exposure time, or a non-numeric numeric card.

    Examples
    --------
    >>> from astropy.io import fits
    >>> h = fits.Header({'IMAGETYP': 'Light Frame', 'EXPTIME': '30.0', 'FILTER': 'v'})
    >>> info = classify(h, 'x.fits')
    >>> info.kind, info.kind_rule, info.exptime, info.filter
    ('light', 'header:IMAGETYP=Light Frame', 30.0, 'V')
    """
    rules = rules or ClassifyRules()
    kind, rule = frame_kind(header, path, rules)
    exptime = _number(header, ("EXPTIME", "EXPOSURE"), path, what="exposure time")
    if kind == "light" and (exptime is None or exptime <= 0):
        raise FrameRejected(path, f"light frame without a usable exposure time ({exptime=})")
    if kind == "bias":
        exptime = exptime or 0.0
    filt = None
    if kind in ("light", "flat"):
        filt = normalise_filter(header.get("FILTER"), rules.filter_aliases)
    start, mid = _dates(header, exptime)
    return FrameInfo(
        path=str(path),
        kind=kind,
        kind_rule=rule,
        filter=filt,
        exptime=exptime,
        gain=_number(header, ("GAIN",), path, what="gain setting"),
        offset=_number(header, ("OFFSET", "BLKLEVEL"), path, what="offset"),
        binning=(int(header.get("XBINNING", 1) or 1), int(header.get("YBINNING", 1) or 1)),
        shape=_shape(header),
        ccd_temp=_number(header, ("CCD-TEMP",), path, what="CCD temperature"),
        set_temp=_number(header, ("SET-TEMP",), path, what="set temperature"),
        instrument=_text(header, "INSTRUME") or "",
        readout_mode=_text(header, "READOUTM") or _text(header, "READMODE"),
        object=_text(header, "OBJECT"),
        date_obs=start,
        date_mid=mid,
    )
