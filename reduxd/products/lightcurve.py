"""Differential light curves of one (object, filter) from the photometry rows.

Input is the photometry contract (:mod:`reduxd.products.tables`): one row per
star per light. Only rows with ``current == 1`` count (all rows when the table
has no ``current`` column). A *frame* is one ``file``; frames are ordered by
``mjd``.

Ensemble
    The comparison ensemble of a frame is the **sum of the comparison count
    rates** (``flux / exptime``; 1 s when there is no ``exptime`` column), so
    bright comparisons weigh more, as their photon noise is smaller::

        ensemble_mag = -2.5 log10(sum_i rate_i)
        dmag         = target_mag - ensemble_mag = -2.5 log10(rate_t / sum_i rate_i)

    A comparison counts in a frame only when it is measured there, unflagged
    (``flags == 0``) and has a positive flux. When some are missing, the sum of
    the others is scaled by ``sum(ref_all) / sum(ref_present)`` (``ref`` = each
    comparison's median rate over the frames), so the ensemble level does not
    jump; ``n_comp`` says how many were used. Errors add in quadrature:
    ``dmag_err = sqrt(target_mag_err**2 + ensemble_mag_err**2)``
    (``mag_err = 1.0857 * rate_err / rate``).

Check stars
    Each comparison measured against the ensemble (same rule) of the *other*
    comparisons: columns ``check_<id>``, ``check_err_<id>``. They should be flat
    within their errors (:func:`flatness` gives chi2/dof about the weighted mean).

Output (:func:`write_lightcurve`), *wide* format, one row per frame:
``mjd, date_obs, file``; with a target ``dmag, dmag_err, target_mag,
target_mag_err, ensemble_mag, ensemble_mag_err, n_comp, flags`` (the target's
photometry flags, -1 = target not measured in that frame); ``check_<id>,
check_err_<id>`` per comparison (when there are at least two); then
``mag_<id>, err_<id>, flags_<id>`` for every star of the field (instrumental
magnitude, its error, photometry flags; NaN, NaN, -1 when the star was not
measured in that frame). Without a target, the differential columns are absent
and the plot shows the check stars only (no target is guessed: a wrong guess
would look like a result). Files, each written atomically (temporary file in
the same folder, fsync, rename): ``[<save>_]lightcurve_<object>_<filter>.csv``
(plain CSV, one header line), ``.ecsv`` (the same columns with units,
descriptions and meta: object, filter, target_id, comparison_ids, check_chi2)
and ``.png`` (target's dmag with error bars, magnitude axis inverted; check
stars below, offset for clarity). Names are sanitised by :func:`safe_name`.

Automatic comparisons are chosen afresh on every call, so as frames arrive
during a night the choice (and the dmag zero point) may change; configure
``comparisons`` to pin them.
"""

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from reduxd.errors import ReduxdError
from reduxd.files import atomic_write

MAG_ERR = 2.5 / math.log(10.0)  # 1.0857: d(mag) = MAG_ERR * d(flux) / flux
MISSING = -1  # flags value of a star not measured in a frame

_DIFF_COLUMNS = (
    ("dmag", "mag", "target minus ensemble magnitude"),
    ("dmag_err", "mag", "1-sigma uncertainty of dmag (target and ensemble)"),
    ("target_mag", "mag", "target instrumental magnitude -2.5 log10(flux / exptime)"),
    ("target_mag_err", "mag", "1-sigma uncertainty of target_mag"),
    ("ensemble_mag", "mag", "-2.5 log10 of the summed comparison count rates"),
    ("ensemble_mag_err", "mag", "1-sigma uncertainty of ensemble_mag"),
)


@dataclass(frozen=True)
class _Grid:
    """The rows of one field as (frame, star) arrays; frames sorted by mjd."""

    files: np.ndarray  # (nf,) str
    date_obs: np.ndarray  # (nf,) str
    mjd: np.ndarray  # (nf,) float
    star_ids: np.ndarray  # (ns,) int, sorted
    present: np.ndarray  # (nf, ns) bool
    rate: np.ndarray  # (nf, ns) flux / exptime, NaN when absent
    rate_err: np.ndarray
    flags: np.ndarray  # (nf, ns) int, MISSING when absent
    x: np.ndarray
    y: np.ndarray

    def column(self, star_id):
        index = np.searchsorted(self.star_ids, star_id)
        if index >= len(self.star_ids) or self.star_ids[index] != star_id:
            raise ReduxdError(f"star {star_id} is not in the photometry of this field")
        return int(index)

    def mags(self):
        """Return (mag, mag_err) arrays (nf, ns); NaN where the flux is not positive."""
        with np.errstate(divide="ignore", invalid="ignore"):
            good = self.rate > 0
            mag = np.where(good, -2.5 * np.log10(np.where(good, self.rate, 1.0)), np.nan)
            err = np.where(good, MAG_ERR * self.rate_err / np.where(good, self.rate, 1.0), np.nan)
        return mag, err


def _current(table):
    """Return a Table of the rows that count (``current == 1``)."""
    if not isinstance(table, Table):
        rows = list(table)
        table = Table(rows=rows) if rows else Table()
    if "current" in table.colnames and len(table):
        table = table[np.asarray(table["current"]) == 1]
    return table


def _grid(table):
    table = _current(table)
    if len(table) == 0:
        raise ReduxdError("no current photometry rows for this field")
    files = np.asarray(table["file"]).astype(str)
    mjd = np.asarray(table["mjd"], dtype=np.float64)
    date_obs = (
        np.asarray(table["date_obs"]).astype(str)
        if "date_obs" in table.colnames
        else np.full(len(table), "")
    )
    ufiles, finv = np.unique(files, return_inverse=True)
    fmjd = np.full(len(ufiles), np.inf)
    np.minimum.at(fmjd, finv, mjd)
    order = np.lexsort((ufiles, fmjd))
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    fi = rank[finv]
    star_ids, si = np.unique(np.asarray(table["star_id"], dtype=np.int64), return_inverse=True)
    shape = (len(ufiles), len(star_ids))

    flux = np.asarray(table["flux"], dtype=np.float64)
    flux_err = np.asarray(table["flux_err"], dtype=np.float64)
    if "exptime" in table.colnames:
        exptime = np.asarray(table["exptime"], dtype=np.float64)
        exptime = np.where(np.isfinite(exptime) & (exptime > 0), exptime, 1.0)
    else:
        exptime = np.ones(len(table))
    flags = np.asarray(table["flags"], dtype=np.int64) if "flags" in table.colnames else 0

    def fill(values, fill_value, dtype=np.float64):
        out = np.full(shape, fill_value, dtype=dtype)
        out[fi, si] = values
        return out

    present = fill(True, False, bool)
    frame_dates = np.empty(len(ufiles), dtype=date_obs.dtype)
    frame_dates[fi] = date_obs
    return _Grid(
        files=ufiles[order],
        date_obs=frame_dates,
        mjd=fmjd[order],
        star_ids=star_ids,
        present=present,
        rate=fill(flux / exptime, np.nan),
        rate_err=fill(flux_err / exptime, np.nan),
        flags=fill(flags, MISSING, np.int64),
        x=fill(np.asarray(table["x"], dtype=np.float64), np.nan),
        y=fill(np.asarray(table["y"], dtype=np.float64), np.nan),
    )


def _usable(grid):
    """(nf, ns) bool: measured, unflagged, positive flux with a finite error."""
    with np.errstate(invalid="ignore"):
        return (
            grid.present
            & (grid.flags == 0)
            & np.isfinite(grid.rate)
            & (grid.rate > 0)
            & np.isfinite(grid.rate_err)
        )


def resolve_star(table, spec, *, radius=5.0):
    """Return the star_id named by a config spec ``[star_id]`` or ``[x, y]``.

    Parameters
    ----------
    table : astropy.table.Table or list of dict
        Photometry rows of one field (contract columns; only ``current == 1`` count).
    spec : sequence of 1 or 2 numbers, or int
        ``[star_id]``, or ``[x, y]``: a 0-based pixel position on the first frame
        of the field (smallest ``mjd``); the nearest star there is taken.
    radius : float, optional
        Largest distance (pixels) between ``[x, y]`` and the star.

    Returns
    -------
    int

    Raises
    ------
    ReduxdError
        The star_id is unknown, or no star lies within ``radius`` of ``[x, y]``.

    Examples
    --------
    >>> rows = [dict(file='a.fits', mjd=1.0, star_id=s, x=10.0 * s, y=5.0, flux=1.0,
    ...              flux_err=0.1, flags=0) for s in (1, 2, 3)]
    >>> resolve_star(rows, [21.0, 6.0]), resolve_star(rows, [3])
    (2, 3)
    """
    spec = [spec] if np.isscalar(spec) else list(spec)
    grid = _grid(table)
    if len(spec) == 1:
        value = float(spec[0])
        if value != int(value):
            raise ReduxdError(f"star spec [{spec[0]}]: a star_id must be an integer")
        return int(grid.star_ids[grid.column(int(value))])
    if len(spec) != 2:
        raise ReduxdError(f"star spec {spec!r}: expected [star_id] or [x, y]")
    x0, y0 = float(spec[0]), float(spec[1])
    on_first = grid.present[0]
    dist = np.hypot(grid.x[0] - x0, grid.y[0] - y0)
    dist = np.where(on_first & np.isfinite(dist), dist, np.inf)
    best = int(np.argmin(dist))
    if not np.isfinite(dist[best]) or dist[best] > radius:
        nearest = f"nearest is {dist[best]:.1f} px away" if np.isfinite(dist[best]) else "none"
        raise ReduxdError(
            f"no star within {radius:g} px of ({x0:g}, {y0:g}) on the first frame "
            f"{grid.files[0]} ({nearest})"
        )
    return int(grid.star_ids[best])


def _chi(res, err):
    """Per-column rms of ``res`` in units of ``err`` (falls back to rms / median rms)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.sqrt(np.mean((res / err) ** 2, axis=0))
    if not np.all(np.isfinite(chi)):
        rms = np.sqrt(np.mean(res**2, axis=0))
        chi = rms / max(float(np.median(rms)), 1e-12)
    return chi


def choose_comparisons(table, *, target_id, n, exclude=(), reject=3.0):
    """Choose ``n`` comparison stars automatically: bright, unflagged, steady.

    Candidates are measured and unflagged (``flags == 0``, positive flux) in every
    frame (when no star is, in as many frames as the best-covered star), and are
    neither the target nor in ``exclude``; the ``max(2 n, n + 4)`` brightest are
    kept. Each candidate's magnitude minus its median is compared with the frame's
    common mode (median over the candidates); stars whose residual rms exceeds
    ``reject`` times their photometric error (and ``reject`` times the median of
    that ratio) are dropped; the common mode is recomputed once (weighted mean of
    the remaining stars) and the test repeated. The ``n`` remaining stars with
    the smallest residual rms are returned (fewer when fewer remain). With fewer
    than three frames, the brightest candidates are returned.

    Parameters
    ----------
    table : astropy.table.Table or list of dict
        Photometry rows of one (object, filter).
    target_id : int or None
        Never chosen.
    n : int
        How many comparisons.
    exclude : iterable of int, optional
        Other star_ids never chosen (e.g. known variables).
    reject : float, optional
        Rejection threshold (see above).

    Returns
    -------
    list of int
        star_ids, steadiest first.

    Examples
    --------
    >>> rows = [dict(file=f'{i}.fits', mjd=float(i), star_id=s, x=0.0, y=0.0,
    ...              flux=1000.0 * s, flux_err=1.0, flags=0)
    ...         for i in range(2) for s in (1, 2, 3)]
    >>> choose_comparisons(rows, target_id=1, n=5)
    [3, 2]
    """
    grid = _grid(table)
    usable = _usable(grid)
    excluded = {int(s) for s in exclude}
    if target_id is not None:
        excluded.add(int(target_id))
    allowed = ~np.isin(grid.star_ids, list(excluded))
    coverage = usable.sum(axis=0)
    if not np.any(allowed & (coverage > 0)):
        return []
    cand = np.flatnonzero(allowed & (coverage == coverage[allowed].max()))
    level = [np.median(grid.rate[usable[:, j], j]) for j in cand]
    cand = cand[np.argsort(level, kind="stable")[::-1][: max(2 * n, n + 4)]]
    frames = np.all(usable[:, cand], axis=1)
    mag, err = grid.mags()
    mag, err = mag[np.ix_(frames, cand)], err[np.ix_(frames, cand)]
    if mag.shape[0] < 3 or len(cand) < 3:
        return [int(s) for s in grid.star_ids[cand[:n]]]

    resid = mag - np.median(mag, axis=0)
    keep = np.ones(len(cand), dtype=bool)
    for iteration in range(2):
        if iteration == 0:
            common = np.median(resid[:, keep], axis=1)
        else:
            w = 1.0 / np.where(np.isfinite(err[:, keep]) & (err[:, keep] > 0), err[:, keep], 1.0)
            w = w**2
            common = np.sum(resid[:, keep] * w, axis=1) / np.sum(w, axis=1)
        res = resid - common[:, None]
        res -= np.median(res, axis=0)
        chi = _chi(res, err)
        limit = max(reject, reject * float(np.median(chi[keep])))
        bad = chi > limit
        if np.all(bad | ~keep):
            bad[np.argmin(np.where(keep, chi, np.inf))] = False
        keep &= ~bad
    rms = np.sqrt(np.mean(res**2, axis=0))
    ranked = [i for i in np.argsort(rms, kind="stable") if keep[i]]
    return [int(grid.star_ids[cand[i]]) for i in ranked[:n]]


def _ensemble(grid, columns):
    """Return (rate, rate_err, n_used) of the summed comparison rates per frame."""
    nf = len(grid.files)
    if len(columns) == 0:
        return np.full(nf, np.nan), np.full(nf, np.nan), np.zeros(nf, dtype=np.int64)
    columns = np.asarray(columns, dtype=np.int64)
    valid = _usable(grid)[:, columns]
    rate = grid.rate[:, columns]
    err = grid.rate_err[:, columns]
    ref = np.array(
        [
            np.median(rate[valid[:, j], j]) if valid[:, j].any() else np.nan
            for j in range(len(columns))
        ]
    )
    valid &= np.isfinite(ref)[None, :]
    total = np.nansum(ref)
    ref_present = np.sum(np.where(valid, ref, 0.0), axis=1)
    n_used = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(n_used > 0, total / ref_present, np.nan)
        flux = np.sum(np.where(valid, rate, 0.0), axis=1) * scale
        flux_err = np.sqrt(np.sum(np.where(valid, err**2, 0.0), axis=1)) * scale
    return flux, flux_err, n_used


def _to_mag(rate, rate_err):
    with np.errstate(divide="ignore", invalid="ignore"):
        good = np.isfinite(rate) & (rate > 0)
        safe = np.where(good, rate, 1.0)
        mag = np.where(good, -2.5 * np.log10(safe), np.nan)
        err = np.where(good, MAG_ERR * rate_err / safe, np.nan)
    return mag, err


def _frame_table(grid):
    table = Table()
    table["mjd"] = grid.mjd
    table["mjd"].unit = "d"
    table["mjd"].description = "mid-exposure time, MJD (UTC)"
    table["mjd"].format = ".8f"
    table["date_obs"] = grid.date_obs
    table["date_obs"].description = "mid-exposure time, ISO 8601 UTC"
    table["file"] = grid.files
    table["file"].description = "raw frame, path relative to the data root"
    return table


def _add(table, name, values, unit, description, fmt=".5f"):
    table[name] = values
    table[name].unit = unit
    table[name].description = description
    if fmt:
        table[name].format = fmt


def _add_checks(table, grid, comparison_ids):
    columns = [grid.column(int(c)) for c in comparison_ids]
    if len(columns) < 2:
        return
    for k, (cid, col) in enumerate(zip(comparison_ids, columns, strict=True)):
        others = columns[:k] + columns[k + 1 :]
        rate, rate_err, _ = _ensemble(grid, others)
        own = _usable(grid)[:, col]
        star, star_err = _to_mag(np.where(own, grid.rate[:, col], np.nan), grid.rate_err[:, col])
        ens, ens_err = _to_mag(rate, rate_err)
        _add(table, f"check_{cid}", star - ens, "mag", f"comparison {cid} minus the others")
        _add(
            table, f"check_err_{cid}", np.hypot(star_err, ens_err), "mag",
            f"1-sigma uncertainty of check_{cid}",
        )  # fmt: skip


def _differential(grid, target_id, comparison_ids):
    table = _frame_table(grid)
    t = grid.column(int(target_id))
    columns = [grid.column(int(c)) for c in comparison_ids]
    if int(target_id) in {int(c) for c in comparison_ids}:
        raise ReduxdError(f"star {target_id} is both the target and a comparison")
    ens, ens_err, n_used = _ensemble(grid, columns)
    target, target_err = _to_mag(grid.rate[:, t], grid.rate_err[:, t])
    ens_mag, ens_mag_err = _to_mag(ens, ens_err)
    values = {
        "dmag": target - ens_mag,
        "dmag_err": np.hypot(target_err, ens_mag_err),
        "target_mag": target,
        "target_mag_err": target_err,
        "ensemble_mag": ens_mag,
        "ensemble_mag_err": ens_mag_err,
    }
    for name, unit, description in _DIFF_COLUMNS:
        _add(table, name, values[name], unit, description)
    _add(table, "n_comp", n_used, None, "comparisons used in the ensemble", fmt=None)
    _add(
        table, "flags", grid.flags[:, t], None,
        "target's photometry flags (-1 = not measured in this frame)", fmt=None,
    )  # fmt: skip
    _add_checks(table, grid, comparison_ids)
    table.meta["target_id"] = int(target_id)
    table.meta["comparison_ids"] = [int(c) for c in comparison_ids]
    return table


def differential_lightcurve(table, *, target_id, comparison_ids):
    """Return the target's differential light curve against a comparison ensemble.

    Parameters
    ----------
    table : astropy.table.Table or list of dict
        Photometry rows of one (object, filter); only ``current == 1`` count.
    target_id : int
        The target's star_id.
    comparison_ids : sequence of int
        The comparisons' star_ids.

    Returns
    -------
    astropy.table.Table
        One row per frame (sorted by mjd): ``mjd, date_obs, file, dmag, dmag_err,
        target_mag, target_mag_err, ensemble_mag, ensemble_mag_err, n_comp,
        flags`` and, with at least two comparisons, ``check_<id>, check_err_<id>``
        (each comparison against the sum of the others). Units and descriptions
        set; see the module docstring for the ensemble rule.

    Raises
    ------
    ReduxdError
        A star_id is not in the table, or the target is also a comparison.

    Examples
    --------
    >>> rows = [dict(file=f'{i}.fits', mjd=float(i), date_obs='', star_id=s, x=0.0,
    ...              y=0.0, flux=f * (0.9 if i else 1.0), flux_err=1.0, flags=0)
    ...         for i in range(2) for s, f in ((1, 1000.0), (2, 4000.0), (3, 6000.0))]
    >>> lc = differential_lightcurve(rows, target_id=1, comparison_ids=[2, 3])
    >>> [round(float(v), 4) for v in lc['dmag']]
    [2.5, 2.5]
    """
    return _differential(_grid(table), target_id, list(comparison_ids))


def check_stars(table, *, comparison_ids):
    """Return each comparison's differential curve against the ensemble of the others.

    Columns ``mjd, date_obs, file`` and ``check_<id>, check_err_<id>`` per
    comparison (none when fewer than two comparisons). See :func:`flatness`.
    """
    grid = _grid(table)
    out = _frame_table(grid)
    _add_checks(out, grid, list(comparison_ids))
    return out


def flatness(lightcurve):
    """Return ``{star_id: chi2/dof}`` of each ``check_<id>`` about its weighted mean.

    About 1 when a comparison stays flat within its errors; much larger when it
    varies (or the errors are underestimated). NaN with fewer than two points.

    Examples
    --------
    >>> t = Table({'check_4': [0.0, 0.1, 0.0, 0.1], 'check_err_4': [0.05] * 4})
    >>> {k: round(v, 6) for k, v in flatness(t).items()}
    {4: 1.333333}
    """
    out = {}
    for name in lightcurve.colnames:
        match = re.fullmatch(r"check_(-?\d+)", name)
        if not match:
            continue
        value = np.asarray(lightcurve[name], dtype=np.float64)
        err = np.asarray(lightcurve[f"check_err_{match.group(1)}"], dtype=np.float64)
        good = np.isfinite(value) & np.isfinite(err) & (err > 0)
        if good.sum() < 2:
            out[int(match.group(1))] = math.nan
            continue
        w = 1.0 / err[good] ** 2
        mean = np.sum(w * value[good]) / np.sum(w)
        chi2 = np.sum(w * (value[good] - mean) ** 2)
        out[int(match.group(1))] = float(chi2 / (good.sum() - 1))
    return out


def star_table(table):
    """Return the wide per-star table: one row per frame, ``mag_<id>, err_<id>, flags_<id>``.

    Magnitudes are instrumental (``-2.5 log10(flux / exptime)``); NaN, NaN and -1
    where the star was not measured in that frame.
    """
    grid = _grid(table)
    out = _frame_table(grid)
    _add_stars(out, grid)
    return out


def _add_stars(table, grid):
    mag, err = grid.mags()
    for k, sid in enumerate(grid.star_ids):
        _add(table, f"mag_{sid}", mag[:, k], "mag", f"instrumental magnitude of star {sid}")
        _add(table, f"err_{sid}", err[:, k], "mag", f"1-sigma uncertainty of mag_{sid}")
        _add(
            table, f"flags_{sid}", grid.flags[:, k], None,
            f"photometry flags of star {sid} (-1 = not measured)", fmt=None,
        )  # fmt: skip


def latest_target_mag(table, target_id, *, comparison_ids=()):
    """Return the target's measurement in the latest frame that has it, for a log line.

    Parameters
    ----------
    table : astropy.table.Table or list of dict
        Photometry rows of one (object, filter).
    target_id : int
    comparison_ids : sequence of int, optional
        When given, ``dmag``, ``dmag_err`` and ``n_comp`` are added.

    Returns
    -------
    dict or None
        ``{'file', 'mjd', 'mag', 'mag_err', 'flags'}`` (+ differential keys), or
        None when the target was never measured.

    Examples
    --------
    >>> rows = [dict(file='a.fits', mjd=1.0, star_id=7, x=0.0, y=0.0, flux=100.0,
    ...              flux_err=1.0, flags=0)]
    >>> latest_target_mag(rows, 7)['mag']
    -5.0
    """
    try:
        grid = _grid(table)
        t = grid.column(int(target_id))
    except ReduxdError:
        return None
    frames = np.flatnonzero(grid.present[:, t])
    if len(frames) == 0:
        return None
    i = int(frames[-1])
    mag, err = _to_mag(grid.rate[i : i + 1, t], grid.rate_err[i : i + 1, t])
    out = {
        "file": str(grid.files[i]),
        "mjd": float(grid.mjd[i]),
        "mag": float(mag[0]),
        "mag_err": float(err[0]),
        "flags": int(grid.flags[i, t]),
    }
    if len(comparison_ids):
        lc = _differential(grid, target_id, list(comparison_ids))
        out.update(
            dmag=float(lc["dmag"][i]), dmag_err=float(lc["dmag_err"][i]),
            n_comp=int(lc["n_comp"][i]),
        )  # fmt: skip
    return out


def safe_name(text):
    """Return ``text`` made safe for a file name (``[A-Za-z0-9._+-]``, others -> ``_``).

    Examples
    --------
    >>> safe_name('M 31 / core'), safe_name(''), safe_name('..')
    ('M_31_core', 'unknown', 'unknown')
    """
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("._")
    return name or "unknown"


def lightcurve_paths(outdir, *, object, filter, save=""):
    """Return the (csv, ecsv, png) paths of one (object, filter) light curve."""
    prefix = f"{safe_name(save)}_" if save else ""
    base = f"{prefix}lightcurve_{safe_name(object)}_{safe_name(filter)}"
    outdir = Path(outdir)
    return outdir / f"{base}.csv", outdir / f"{base}.ecsv", outdir / f"{base}.png"


def _column_strings(column):
    values = np.asarray(column)
    fmt = column.format if isinstance(column.format, str) else None
    if values.dtype.kind == "f":
        fmt = fmt or ".10g"
        return [format(v, fmt) if math.isfinite(v) else "nan" for v in values.tolist()]
    return [str(v) for v in values.tolist()]


def _ecsv_quote(text):
    if text == "" or text.startswith("#") or any(c in text for c in ' "\t'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _table_bytes(table):
    """Return (csv, ecsv) texts of ``table`` as bytes.

    astropy writes the ECSV header (units, descriptions, meta); the data lines are
    formatted here, column by column, which is many times faster than astropy's
    writers for wide tables (hundreds of star columns).
    """
    columns = [_column_strings(table[name]) for name in table.colnames]
    rows = list(zip(*columns, strict=True)) if columns else []
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.colnames)
    writer.writerows(rows)
    csv_text = buf.getvalue()
    buf = io.StringIO()
    table[:0].write(buf, format="ascii.ecsv")
    header = buf.getvalue()
    quoted = [
        [_ecsv_quote(v) for v in col] if table[name].dtype.kind in "US" else col
        for name, col in zip(table.colnames, columns, strict=True)
    ]
    lines = [" ".join(row) + "\n" for row in zip(*quoted, strict=True)] if quoted else []
    ecsv_text = header + "".join(lines)
    return csv_text.encode("utf-8"), ecsv_text.encode("utf-8")


def _empty_spec(spec):
    return spec is None or (not np.isscalar(spec) and len(spec) == 0)


def build_lightcurve(table, *, target=None, comparisons=(), n_comparisons=5, per_star=True):
    """Return the wide light-curve table of one field (what :func:`write_lightcurve` writes).

    ``target`` and ``comparisons`` are config specs (``[star_id]`` or ``[x, y]``);
    with no comparisons they are chosen by :func:`choose_comparisons`. The table's
    meta holds ``target_id`` (or None), ``comparison_ids`` and ``check_chi2``.
    ``per_star=False`` leaves out the ``mag_<id>, err_<id>, flags_<id>`` columns
    (the web page, which rebuilds curves often, does not show them).
    """
    grid = _grid(table)
    target_id = None if _empty_spec(target) else resolve_star(table, target)
    if comparisons:
        resolved = [resolve_star(table, spec) for spec in comparisons]
        comparison_ids = list(dict.fromkeys(resolved))  # the same star named twice: once
    else:
        comparison_ids = choose_comparisons(table, target_id=target_id, n=n_comparisons)
    if target_id is not None:
        out = _differential(grid, target_id, comparison_ids)
    else:
        out = _frame_table(grid)
        _add_checks(out, grid, comparison_ids)
    if per_star:
        _add_stars(out, grid)
    out.meta["target_id"] = target_id
    out.meta["comparison_ids"] = [int(c) for c in comparison_ids]
    out.meta["check_chi2"] = {str(k): v for k, v in flatness(out).items()}
    out.meta["ensemble"] = "sum of comparison count rates (flux / exptime)"
    return out


def write_lightcurve(
    outdir, table, *, object, filter, target=None, comparisons=(), n_comparisons=5, save=""
):
    """Write the light curve of one (object, filter): CSV, ECSV and a PNG plot.

    Parameters
    ----------
    outdir : str or Path
        Folder (created if needed).
    table : astropy.table.Table or list of dict
        Photometry rows of this (object, filter); only ``current == 1`` count.
    object, filter : str
        Used in the file names (sanitised) and the plot title.
    target : sequence, optional
        ``[star_id]`` or ``[x, y]`` (first frame); None or ``[]``: no target, the
        table has the per-star and check-star columns and the plot shows the
        check stars only.
    comparisons : sequence of sequences, optional
        Comparison specs; empty: ``n_comparisons`` chosen automatically.
    n_comparisons : int, optional
    save : str, optional
        Prefix of the file names (``<save>_lightcurve_<object>_<filter>.*``).

    Returns
    -------
    list of Path
        ``[csv, ecsv, png]``; empty when there are no current rows.

    Raises
    ------
    ReduxdError
        The target or a comparison cannot be resolved.
    """
    if len(_current(table)) == 0:
        return []
    lc = build_lightcurve(
        table, target=target, comparisons=comparisons, n_comparisons=n_comparisons
    )
    lc.meta["object"] = str(object)
    lc.meta["filter"] = str(filter)
    csv_path, ecsv_path, png_path = lightcurve_paths(
        outdir, object=object, filter=filter, save=save
    )
    csv_bytes, ecsv_bytes = _table_bytes(lc)
    png = plot_lightcurve(lc, title=f"{object}  {filter}")
    for path, payload in ((csv_path, csv_bytes), (ecsv_path, ecsv_bytes), (png_path, png)):
        atomic_write(path, lambda fh, payload=payload: fh.write(payload))
    return [csv_path, ecsv_path, png_path]


def plot_lightcurve(lc, *, title=""):
    """Return PNG bytes: the target's dmag (if any) and the check stars, magnitudes inverted.

    Flagged target points are drawn as open grey circles. Check stars are shown
    relative to their median, offset for clarity.
    """
    has_target = "dmag" in lc.colnames
    checks = [n for n in lc.colnames if re.fullmatch(r"check_-?\d+", n)]
    panels = int(has_target) + int(bool(checks)) or 1
    from matplotlib.figure import Figure  # imported on first plot: ~0.5 s at start-up otherwise

    fig = Figure(figsize=(8.0, 3.2 * panels + 0.6), layout="constrained")
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    mjd = np.asarray(lc["mjd"], dtype=np.float64)
    origin = math.floor(np.nanmin(mjd)) if len(mjd) and np.isfinite(mjd).any() else 0
    days = mjd - origin
    k = 0
    if has_target:
        ax = axes[k]
        k += 1
        dmag = np.asarray(lc["dmag"], dtype=np.float64)
        err = np.asarray(lc["dmag_err"], dtype=np.float64)
        flagged = np.asarray(lc["flags"]) != 0
        ax.errorbar(days[~flagged], dmag[~flagged], yerr=err[~flagged], fmt="o", ms=3,
                    color="C0", ecolor="C0", elinewidth=0.8, label="target")  # fmt: skip
        if flagged.any():
            ax.errorbar(days[flagged], dmag[flagged], yerr=err[flagged], fmt="o", ms=4,
                        mfc="none", color="0.5", elinewidth=0.8, label="flagged")  # fmt: skip
        target_id = lc.meta.get("target_id")
        ax.set_ylabel(f"target {target_id} − ensemble (mag)")
        ax.invert_yaxis()
        ax.legend(loc="best", fontsize="small")
    if checks:
        ax = axes[k]
        errs = [np.nanmedian(np.asarray(lc[f"check_err_{n[6:]}"], dtype=float)) for n in checks]
        step = max(0.02, 6 * float(np.nanmax(errs)) if np.isfinite(errs).any() else 0.02)
        for i, name in enumerate(checks):
            value = np.asarray(lc[name], dtype=np.float64)
            err = np.asarray(lc[f"check_err_{name[6:]}"], dtype=np.float64)
            centre = np.nanmedian(value) if np.isfinite(value).any() else 0.0
            ax.errorbar(days, value - centre + i * step, yerr=err, fmt=".", ms=3,
                        elinewidth=0.6, label=f"star {name[6:]}")  # fmt: skip
        ax.set_ylabel("check star − others (mag, offset)")
        ax.invert_yaxis()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    if not has_target and not checks:
        axes[0].text(0.5, 0.5, "no target and fewer than two comparisons", ha="center",
                     va="center", transform=axes[0].transAxes)  # fmt: skip
    axes[-1].set_xlabel(f"MJD − {origin}")
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
