"""Standard time cards, pointing and site from a header; BJD_TDB and airmass (pure).

Reduced frames carry ``DATE-OBS`` (start), ``DATE-AVG`` (mid-exposure) and
``MJD-AVG`` in UTC with ``TIMESYS = 'UTC'``, whatever the raw header wrote
(SharpCap's ``2025-06-01T21:00:00.0000000-07:00`` style included); the original
text is kept in ``RDXDOBS``.

Light curves get ``bjd_tdb`` (astropy ``Time`` + ``light_travel_time``) and
``airmass`` (computed, never copied: headers carry stuck values such as 13.37)
from the pointing (``OBJCTRA/OBJCTDEC`` or ``RA/DEC``, sexagesimal hours or
degrees) and the site (``SITELAT/SITELONG/SITEELEV``, ``LAT-OBS/LONG-OBS/ALT-OBS``
or ``OBSGEO-B/L/H``), or the config's ``[site]`` when the header has none. The
pointing centre stands in for the target: 10' away changes BJD by < 0.1 s.
"""

import math

_RA_KEYS = (("OBJCTRA", "OBJCTDEC"), ("RA", "DEC"), ("RA_OBJ", "DEC_OBJ"))
_SITE_KEYS = (
    ("SITELAT", "SITELONG", "SITEELEV"),
    ("LAT-OBS", "LONG-OBS", "ALT-OBS"),
    ("OBSGEO-B", "OBSGEO-L", "OBSGEO-H"),
)


def time_cards(info, raw_header):
    """Return FITS cards ``DATE-OBS, DATE-AVG, MJD-AVG, TIMESYS`` (UTC) for a frame.

    Examples
    --------
    >>> from datetime import UTC, datetime
    >>> from types import SimpleNamespace
    >>> info = SimpleNamespace(date_obs=datetime(2025, 6, 2, 4, 10, 14, tzinfo=UTC),
    ...                        date_mid=datetime(2025, 6, 2, 4, 10, 44, tzinfo=UTC))
    >>> [c[:2] for c in time_cards(info, {'DATE-OBS': '2025-06-01T21:10:14-0700'})]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('DATE-OBS', '2025-06-02T04:10:14.000'), ('DATE-AVG', '2025-06-02T04:10:44.000'),
     ('MJD-AVG', 60828.17412037), ('TIMESYS', 'UTC'),
     ('RDXDOBS', '2025-06-01T21:10:14-0700')]
    """
    from astropy.time import Time

    cards = []
    if info.date_obs is not None:
        cards.append(("DATE-OBS", _iso(info.date_obs), "start of exposure (UTC)"))
    if info.date_mid is not None:
        cards.append(("DATE-AVG", _iso(info.date_mid), "mid-exposure (UTC)"))
        mjd = round(float(Time(info.date_mid.replace(tzinfo=None), scale="utc").mjd), 8)
        cards.append(("MJD-AVG", mjd, "[d] mid-exposure MJD (UTC)"))
    if cards:
        cards.append(("TIMESYS", "UTC", "time scale of DATE-OBS, DATE-AVG, MJD-AVG"))
    original = raw_header.get("DATE-OBS")
    if original is not None:
        cards.append(("RDXDOBS", str(original)[:68], "DATE-OBS as the raw header wrote it"))
    return cards


def _iso(stamp):
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _angle(value, unit):
    """Degrees from a number or a sexagesimal string ('16 02 11.8' in ``unit``)."""
    from astropy.coordinates import Angle

    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return float(Angle(text, unit=unit).degree)
    except ValueError:
        return None


def pointing(header):
    """Return ``(ra_deg, dec_deg)`` of the pointing from the header, or None.

    Sexagesimal RA is in hours, decimal RA in degrees.

    Examples
    --------
    >>> [round(v, 4) for v in pointing({'OBJCTRA': '16 02 11.83', 'OBJCTDEC': '+28 10 10.7'})]
    [240.5493, 28.1696]
    """
    for ra_key, dec_key in _RA_KEYS:
        ra, dec = header.get(ra_key), header.get(dec_key)
        if ra is None or dec is None:
            continue
        ra_deg = _angle(ra, "deg" if isinstance(ra, int | float) else "hourangle")
        dec_deg = _angle(dec, "deg")
        if ra_deg is not None and dec_deg is not None:
            return ra_deg, dec_deg
    return None


def site(header):
    """Return ``(lat_deg, lon_deg, height_m)`` from the header, or None (east longitude > 0).

    Examples
    --------
    >>> [round(v, 4) for v in site({'SITELAT': '32 46 49', 'SITELONG': '-105 49 13'})]
    [32.7803, -105.8203, 0.0]
    """
    for lat_key, lon_key, height_key in _SITE_KEYS:
        lat, lon = header.get(lat_key), header.get(lon_key)
        if lat is None or lon is None:
            continue
        lat_deg, lon_deg = _angle(lat, "deg"), _angle(lon, "deg")
        if lat_deg is not None and lon_deg is not None:
            height = header.get(height_key)
            height = float(height) if isinstance(height, int | float) else 0.0
            return lat_deg, lon_deg, height
    return None


def bjd_and_airmass(mjd_utc, ra_deg, dec_deg, lat_deg, lon_deg, height_m):
    """Return ``(bjd_tdb, airmass)`` arrays for mid-exposure MJDs (UTC).

    Airmass is ``sec z`` from the altitude (NaN below the horizon).

    Examples
    --------
    >>> import numpy as np
    >>> bjd, x = bjd_and_airmass(np.array([60828.17412]), 240.5493, 28.1696,
    ...                          32.7803, -105.8203, 2788.0)
    >>> round(float(bjd[0]), 5), round(float(x[0]), 3)
    (2460828.67862, 1.141)
    """
    import astropy.units as u
    import numpy as np
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time

    location = EarthLocation.from_geodetic(lon_deg * u.deg, lat_deg * u.deg, height_m * u.m)
    times = Time(np.asarray(mjd_utc, dtype=float), format="mjd", scale="utc", location=location)
    target = SkyCoord(ra_deg * u.deg, dec_deg * u.deg, frame="icrs")
    bjd = (times.tdb + times.light_travel_time(target, kind="barycentric")).jd
    alt = target.transform_to(AltAz(obstime=times, location=location)).alt.deg
    with np.errstate(divide="ignore", invalid="ignore"):
        airmass = np.where(alt > 0, 1.0 / np.sin(np.radians(alt)), math.nan)
    return bjd, airmass
