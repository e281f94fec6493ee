"""What the web page shows, as plain JSON-ready dicts, from a read-only ledger.

Nothing here writes: the ledger is opened with ``readonly=True`` and files are
only read (raw headers for airmass and frame size). Floats that are not finite
become ``None`` (JSON ``null``).
"""

import math

import numpy as np
from astropy.table import Table

from reduxd.errors import ReduxdError
from reduxd.products import lightcurve, tables
from reduxd.products.quicklook import MAX_SIDE, MIN_WIDTH, TITLE_HEIGHT

MJD_UNIX = 40587.0  # MJD of 1970-01-01


def clean(value):
    """``value`` with every non-finite float replaced by None (recursively).

    Examples
    --------
    >>> clean({"a": float("nan"), "b": [1.5, float("inf")]})
    {'a': None, 'b': [1.5, None]}
    """
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def master_text(m):
    """One master as the page names it, e.g. ``'flat V n=5 (2025-06-01)'``."""
    what = m.filter or (f"{m.exptime:g} s" if m.exptime is not None else "")
    return " ".join(p for p in (m.kind, what, f"n={m.ncombine}", f"({m.night})") if p)


def service_state(ledger, service=None):
    """Frames by state, masters in use, the last frame, waiting lights and failures.

    ``service`` is a dict from the running daemon (``running_since``, ``roots``,
    ``observer``, ``pending_sets``) or None when serving a ledger read-only.
    """
    recent = ledger.recent(1)
    last = recent[0] if recent else None
    masters = [
        {
            "id": m.id,
            "kind": m.kind,
            "filter": m.filter,
            "exptime": m.exptime,
            "n": m.ncombine,
            "night": m.night,
            "lights": len(ledger.frames_calibrated_with(m.id)),
            "path": str(m.path),
        }
        for m in ledger.masters()
    ]
    waiting = [{"file": r.relpath, "reason": r.last_error} for r in ledger.frames(state="waiting")]
    failures = [
        {"id": r.id, "file": r.relpath, "state": r.state, "reason": r.last_error}
        for r in ledger.failures()
    ]
    return clean(
        {
            "service": service,
            "counts": ledger.counts(),
            "last": None
            if last is None
            else {
                "file": last.relpath,
                "state": last.state,
                "kind": last.kind,
                "updated": last.updated,
            },
            "masters": masters,
            "waiting": waiting,
            "failures": failures,
        }
    )


def header_facts(path):
    """``(airmass, ny, nx)`` from a raw frame's header (None for what it does not give).

    Airmass is the AIRMASS card, or sec(z) from an altitude card (CENTALT,
    OBJCTALT, ALTITUDE, ALT) above 5 degrees.
    """
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            header = hdul[1].header if len(hdul) > 1 and not hdul[0].header.get("NAXIS") else None
            header = header if header is not None else hdul[0].header
            nx = header.get("ZNAXIS1", header.get("NAXIS1"))
            ny = header.get("ZNAXIS2", header.get("NAXIS2"))
            airmass = _airmass(header)
    except (OSError, ValueError, IndexError):
        return None, None, None
    return airmass, ny, nx


def _airmass(header):
    value = _number(header.get("AIRMASS"))
    if value is not None and value >= 1.0:
        return value
    for key in ("CENTALT", "OBJCTALT", "ALTITUDE", "ALT"):
        alt = _number(header.get(key))
        if alt is not None and 5.0 < alt <= 90.0:
            return 1.0 / math.sin(math.radians(alt))
    return None


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def chart_position(x, y, shape):
    """Where frame pixel ``(x, y)`` falls on the finder chart, as fractions (0-1) of its size.

    Follows :func:`reduxd.products.quicklook.write_quicklook`: frames larger
    than ``MAX_SIDE`` are block-averaged, small ones enlarged, row 0 at the
    bottom, a title band on top.
    """
    ny, nx = shape
    factor = max(1, math.ceil(max(ny, nx) / MAX_SIDE))
    if factor == 1:
        scale = float(max(1, -(-MIN_WIDTH // nx)))
        width, height = nx * scale, ny * scale
    else:
        scale = 1.0 / factor
        width, height = nx // factor, ny // factor
    top = TITLE_HEIGHT + height - 1
    cx = (x + 0.5) * scale - 0.5
    cy = top - ((y + 0.5) * scale - 0.5)
    return [round(cx / width, 5), round(cy / (height + TITLE_HEIGHT), 5)]


def _first_set(*values):
    """The first of ``values`` that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)


def light_record(frame, rows, *, reduction_id, masters, airmass=None, quicklook=None):
    """One reduced light as the page lists it.

    ``rows`` are the frame's current photometry rows, ``masters`` the texts of
    the masters used, ``quicklook`` the URL of its finder chart (or None).
    """
    info = frame.info
    first = rows[0] if rows else {}
    sky = [r.get("sky") for r in rows if r.get("sky") is not None]
    return clean(
        {
            "id": frame.id,
            "reduction": reduction_id,
            "file": frame.relpath,
            "night": frame.night,
            "object": _first_set(info.object, first.get("object")),
            "filter": _first_set(info.filter, first.get("filter")),
            "exptime": _first_set(info.exptime, first.get("exptime")),
            "fwhm": info.fwhm,
            "sky": float(np.median(sky)) if sky else None,
            "n_stars": len(rows),
            "calib": info.calib,
            "masters": masters,
            "latency": frame.latency,
            "finished": frame.finished,
            "mjd": first.get("mjd"),
            "t": _unix(first.get("mjd")),
            "date_obs": first.get("date_obs"),
            "airmass": airmass,
            "quicklook": quicklook,
        }
    )


def _unix(mjd):
    mjd = _number(mjd)
    return None if mjd is None else round((mjd - MJD_UNIX) * 86400.0, 3)


CURVE_COLUMNS = ("file", "mjd", "date_obs", "star_id", "x", "y", "flux", "flux_err", "exptime",
                 "flags")  # fmt: skip
_DTYPES = {name: dtype for name, dtype, _unit, _desc in tables.PHOT_COLUMNS}


def curve_columns(rows):
    """The columns a light curve needs from one light's rows, as numpy arrays.

    Kept per light instead of the row dicts: a night of 1,000 lights of 100
    stars is a few MB this way, and a curve is rebuilt by concatenation.
    """
    out = {name: _column([r[name] for r in rows], _DTYPES[name]) for name in CURVE_COLUMNS}
    out["bjd_tdb"] = np.array([_number(r.get("bjd_tdb")) or np.nan for r in rows], dtype=float)
    return out


def _column(values, dtype):
    """Numbers in their contract dtype; strings only as wide as they are (not U256)."""
    return np.array(values, dtype=None if dtype.startswith("U") else dtype)


def field_curve(frames, lc_config):
    """The differential light curve of one field, ``(points, meta)``.

    ``frames`` are :func:`curve_columns` of the field's lights (any order).
    Each point has the frame, time (``t`` Unix seconds, ``mjd``, and ``bjd``
    when the rows carry ``bjd_tdb``), ``dmag``/``err`` (with a target), the
    ensemble magnitude ``ens`` and one value per check star. ``meta`` names the
    target and comparisons. The configured target, when it is not in this
    field, is left out (check stars only), as the pipeline does for its files.
    """
    names = (*CURVE_COLUMNS, "bjd_tdb")
    table = Table({name: np.concatenate([f[name] for f in frames]) for name in names})
    table["current"] = np.ones(len(table), dtype=np.int64)
    n = lc_config.n_comparisons
    try:
        lc = lightcurve.build_lightcurve(
            table, target=list(lc_config.target) or None, n_comparisons=n,
            comparisons=[list(c) for c in lc_config.comparisons], per_star=False,
        )  # fmt: skip
    except ReduxdError:
        lc = lightcurve.build_lightcurve(table, target=None, n_comparisons=n, per_star=False)
    bjd = dict(zip(table["file"].tolist(), table["bjd_tdb"].tolist(), strict=True))
    checks = [c for c in lc.colnames if c.startswith("check_") and not c.startswith("check_err")]
    columns = {name: lc[name].tolist() for name in lc.colnames if name in _POINT or name in checks}
    points = []
    for i, file in enumerate(columns["file"]):
        point = {
            "file": file,
            "mjd": columns["mjd"][i],
            "t": _unix(columns["mjd"][i]),
            "date_obs": columns["date_obs"][i],
            "bjd": bjd.get(file),
        }
        for name, key in _POINT.items():
            if key and name in columns:
                point[key] = columns[name][i]
        point["checks"] = [columns[c][i] for c in checks]
        points.append(point)
    meta = {
        "target_id": lc.meta.get("target_id"),
        "comparison_ids": lc.meta.get("comparison_ids", []),
        "checks": [c.removeprefix("check_") for c in checks],
    }
    return clean(points), clean(meta)


# light-curve column -> key of a point (None: read under its own name)
_POINT = {"file": None, "mjd": None, "date_obs": None, "dmag": "dmag", "dmag_err": "err",
          "ensemble_mag": "ens", "n_comp": "n_comp"}  # fmt: skip


def marks(rows, meta, shape):
    """Target and comparison positions on a light's finder chart (fractions), or None."""
    if not shape or None in shape:
        return None
    by_id = {r["star_id"]: r for r in rows}
    target = by_id.get(meta.get("target_id"))
    comps = [by_id[c] for c in meta.get("comparison_ids", []) if c in by_id]
    return {
        "target": None if target is None else chart_position(target["x"], target["y"], shape),
        "comparisons": [chart_position(c["x"], c["y"], shape) for c in comps],
    }
