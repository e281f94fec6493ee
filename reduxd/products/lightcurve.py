"""Differential light curves of one (object, filter) from the photometry rows.

Input is the photometry contract (:mod:`reduxd.products.tables`): one row per
star per light. Only rows with ``current == 1`` count (all rows when the table
has no ``current`` column). A *frame* is one ``file``; frames are ordered by
``mjd``.

Ensemble
    The comparison ensemble of a frame is the inverse-variance weighted mean of
    the comparisons' count rates (``flux / exptime``; 1 s when there is no
    ``exptime`` column) relative to each one's median rate, times the sum of
    those medians (so ``ensemble_mag`` is that of the summed comparisons)::

        ensemble_rate = sum(ref) * sum_i w_i rate_i / ref_i / sum_i w_i
        dmag          = target_mag - ensemble_mag

    Each weight is 1 / the comparison's variance measured against the others
    (:func:`measured_variances`), scaled in each frame by its reported error
    there. A comparison counts in a frame only when it is measured there with a
    positive flux and no flag but LOW_SNR; the others keep their weights, so the
    level does not jump; ``n_comp`` says how many were used. When none is usable,
    the members measured there (unsaturated) are used rather than give a NaN.
    Errors: ``dmag_err = sqrt(target_mag_err**2 + ensemble_mag_err**2)``
    (``mag_err = 1.0857 * rate_err / rate``). Automatic membership, the radius of
    multi-aperture rows and the reasons candidates were dropped: see
    :func:`choose_comparisons`, :func:`choose_aperture` and the ``dropped`` meta.

Check stars
    Each comparison measured against the ensemble (same rule) of the *other*
    comparisons: columns ``check_<id>``, ``check_err_<id>``. They should be flat
    within their errors (:func:`flatness` gives chi2/dof about the weighted mean).

Output (:func:`write_lightcurve`), *wide* format, one row per frame: ``mjd,
date_obs, file``; with a target ``dmag, dmag_err, target_mag, target_mag_err,
ensemble_mag, ensemble_mag_err, n_comp, flags`` (the target's photometry flags,
-1 = target not measured in that frame); ``check_<id>, check_err_<id>`` per
comparison (when there are at least two); ``radius`` (the aperture used),
``bjd_tdb`` and ``airmass`` (when the rows carry the pointing and site). The
files have no per-star columns, so their size grows with the frames, not with
frames x stars: every star's magnitude, error and flags per frame are in the
photometry table (long format, one row per star per light; :func:`star_table`
gives the wide ``mag_<id>, err_<id>, flags_<id>`` form on demand, and
``build_lightcurve(per_star=True)``, the default, adds those columns in memory).
Without a target, the differential columns are absent
and the plot shows the check stars only (no target is guessed: a wrong guess
would look like a result). Files, each written atomically (temporary file in
the same folder, fsync, rename): ``[<save>_]lightcurve_<object>_<filter>.csv``
(the object is left out when it is the save title)
(plain CSV, one header line), ``.ecsv`` (the same columns with units,
descriptions and meta: object, filter, target_id, comparison_ids,
comparison_weights, comparison_rates, dropped, aperture, time, check_chi2) and
``.png`` (target's dmag with error bars, magnitude axis inverted; check stars
below, offset for clarity). Names are sanitised by :func:`safe_name`.

Automatic comparisons are chosen afresh on every call, so as frames arrive
during a night the choice (and the dmag zero point) may change; configure
``comparisons`` to pin them.
"""

import csv
import functools
import io
import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from astropy.table import Table

from reduxd.errors import ReduxdError
from reduxd.files import atomic_write
from reduxd.products.naming import safe_name
from reduxd.products.tables import append_lines, rows_to_table
from reduxd.schema import column
from reduxd.steps.measure import Flag

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
    radius: np.ndarray  # (nf,) aperture radius of rate, pixels
    # multi-aperture photometry (rows with ``flux_ap``): (nf, ns, nr) and (nf, nr)
    rate_ap: np.ndarray | None = None
    rate_err_ap: np.ndarray | None = None
    radius_ap: np.ndarray | None = None
    place: np.ndarray | None = None  # (nf, 5): PLACE_COLUMNS of each frame
    site_source: np.ndarray | None = None  # (nf,) str

    def apertures(self):
        """Return one grid per aperture radius (just this grid without multi-aperture data)."""
        if self.rate_ap is None:
            return [self]
        return [
            replace(
                self,
                rate=self.rate_ap[:, :, k],
                rate_err=self.rate_err_ap[:, :, k],
                radius=self.radius_ap[:, k],
            )
            for k in range(self.rate_ap.shape[2])
        ]

    @functools.cached_property
    def usable(self):
        """(nf, ns) bool, read-only: measured, no harmful flag (:data:`HARMLESS`), positive
        rate with a finite error. Made once per grid: choosing an ensemble asks ~60 times."""
        with np.errstate(invalid="ignore"):
            out = (
                self.present
                & ((self.flags & ~HARMLESS) == 0)
                & (self.flags >= 0)
                & np.isfinite(self.rate)
                & (self.rate > 0)
                & np.isfinite(self.rate_err)
            )
        out.flags.writeable = False
        return out

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


APERTURE_KEYS = ("radius_ap", "flux_ap", "flux_err_ap")
PLACE_COLUMNS = ("ra_deg", "dec_deg", "site_lat", "site_lon", "site_height")
# what a light curve reads of a field's rows (:func:`_grid`, :func:`resolve_radec`);
# a rebuild keeps only these (no ``current``: its rows are all current)
CURVE_COLUMNS = frozenset(
    ("file", "mjd", "date_obs", "star_id", "x", "y", "flux", "flux_err", "exptime", "flags",
     "radius", "site_source", "target_x", "target_y", *APERTURE_KEYS, *PLACE_COLUMNS)
)  # fmt: skip


def row_place(row):
    """(ra, dec, lat, lon, height) of a row's frame (a row, or a light's shared values);
    NaN where unknown."""
    radec = row.get("pointing") or (math.nan, math.nan)
    where = row.get("site") or (math.nan, math.nan, math.nan)
    return (*radec, *where)


def ensemble_ids(meta):
    """``(target_id, comparison_ids)`` a light curve's meta names (target None if unset).

    >>> ensemble_ids({"target_id": 3, "comparison_ids": [5, 7]})
    (3, (5, 7))
    """
    target = meta.get("target_id")
    comparisons = tuple(int(c) for c in meta.get("comparison_ids", []))
    return (None if target is None else int(target)), comparisons


def detector_meta(detectors):
    """The ``detector`` meta of a light curve: each distinct (gain, read noise, source), sorted.

    >>> detector_meta([(1.33, 16.1, "flats"), (1.33, 16.1, "flats")])
    [{'gain_e_per_adu': 1.33, 'read_noise_e': 16.1, 'source': 'flats'}]
    """
    return [
        {"gain_e_per_adu": g, "read_noise_e": n, "source": s} for g, n, s in sorted(set(detectors))
    ]


def field_table(rows, *, columns=None):
    """Return the contract table of one field's rows, with multi-aperture columns when known.

    ``radius_ap``, ``flux_ap`` and ``flux_err_ap`` (2-D) are added when every row
    carries them with the same number of radii (see ``reduxd.reduce.contract_rows``).
    ``columns``: build only these (a rebuild's :data:`CURVE_COLUMNS`); the table is
    that of all the columns with the others removed.
    """
    rows = list(rows)
    table = rows_to_table(rows, columns=columns)
    if rows and all("pointing" in r and "site" in r for r in rows):
        place = np.array([row_place(r) for r in rows], dtype=np.float64)
        for k, name in enumerate(PLACE_COLUMNS):
            table[name] = place[:, k]
        table["site_source"] = [str(r.get("site_source") or "") for r in rows]
    if rows and any("target_xy" in r for r in rows):
        xy = [r.get("target_xy") or (math.nan, math.nan) for r in rows]
        table["target_x"] = np.array([v[0] for v in xy], dtype=np.float64)
        table["target_y"] = np.array([v[1] for v in xy], dtype=np.float64)
    detectors = detector_meta(tuple(r["detector"]) for r in rows if r.get("detector"))
    if detectors:
        table.meta["detector"] = detectors
    sizes = {len(r[k]) if isinstance(r.get(k), list) else -1 for r in rows for k in APERTURE_KEYS}
    if rows and len(sizes) == 1 and sizes != {-1}:
        for key in APERTURE_KEYS:
            table[key] = np.array([r[key] for r in rows], dtype=np.float64)
    return table


def _current(table):
    """Return a Table of the rows that count (``current == 1``)."""
    if not isinstance(table, Table):
        rows = list(table)
        table = Table(rows=rows) if rows else Table()
    if "current" in table.colnames and len(table):
        table = table[np.asarray(table["current"]) == 1]
    return table


def _unique_runs(values):
    """``np.unique(values, return_inverse=True)`` of rows that come in runs (a frame's
    stars one after another): only the runs' first values are sorted, not every row's
    (a copy and a sort of a million file names, hundreds of MB, on a long night).

    >>> _unique_runs(np.array(["b", "b", "a", "a", "b"]))
    (array(['a', 'b'], dtype='<U1'), array([1, 1, 0, 0, 1]))
    """
    first = np.ones(len(values), dtype=bool)
    first[1:] = values[1:] != values[:-1]
    unique, inverse = np.unique(values[first], return_inverse=True)
    return unique, inverse[np.cumsum(first) - 1]


def _grid(table):
    table = _current(table)
    if len(table) == 0:
        raise ReduxdError("no current photometry rows for this field")
    files = np.asarray(table["file"]).astype(str, copy=False)
    mjd = np.asarray(table["mjd"], dtype=np.float64)
    date_obs = (
        np.asarray(table["date_obs"]).astype(str, copy=False)
        if "date_obs" in table.colnames
        else np.full(len(table), "")
    )
    ufiles, finv = _unique_runs(files)
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
    radius = np.full(len(ufiles), np.nan)
    if "radius" in table.colnames:
        radius[fi] = np.asarray(table["radius"], dtype=np.float64)
    extra = {}
    if "flux_ap" in table.colnames and np.ndim(table["flux_ap"]) == 2:
        nr = np.shape(table["flux_ap"])[1]
        rate_ap = np.full((*shape, nr), np.nan)
        err_ap = np.full((*shape, nr), np.nan)
        rate_ap[fi, si] = np.asarray(table["flux_ap"], dtype=np.float64) / exptime[:, None]
        err_ap[fi, si] = np.asarray(table["flux_err_ap"], dtype=np.float64) / exptime[:, None]
        radius_ap = np.full((len(ufiles), nr), np.nan)
        radius_ap[fi] = np.asarray(table["radius_ap"], dtype=np.float64)
        extra = dict(rate_ap=rate_ap, rate_err_ap=err_ap, radius_ap=radius_ap)
    if all(name in table.colnames for name in PLACE_COLUMNS):
        place = np.full((len(ufiles), len(PLACE_COLUMNS)), np.nan)
        place[fi] = np.column_stack([np.asarray(table[n], dtype=float) for n in PLACE_COLUMNS])
        source = np.full(len(ufiles), "", dtype=object)
        source[fi] = np.asarray(table["site_source"]).astype(str)
        extra.update(place=place, site_source=source)
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
        radius=radius,
        **extra,
    )


# Flags that do not stop a star from counting in a frame's ensemble: a faint
# measurement (LOW_SNR, e.g. through cloud) just weighs little.
HARMLESS = int(Flag.LOW_SNR)


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


def field_target(lightcurve_config, obj):
    """Return ``(target, comparisons, radec)`` configured for field ``obj``.

    A ``[[lightcurve.targets]]`` entry whose ``object`` is the field's (case and
    surrounding spaces ignored) wins; otherwise the global ``target`` and
    ``comparisons``. ``target`` is a spec for :func:`resolve_star` or None;
    ``radec`` is ``[ra_deg, dec_deg]`` or None.
    """
    for entry in lightcurve_config.targets:
        if entry.object.strip().lower() == str(obj).strip().lower():
            comparisons = [list(c) for c in entry.comparisons]
            return list(entry.position) or None, comparisons, list(entry.radec) or None
    comparisons = [list(c) for c in lightcurve_config.comparisons]
    return list(lightcurve_config.target) or None, comparisons, None


def resolve_radec(table, *, radius=5.0):
    """Return the star_id at the target's RA/Dec (rows' ``target_x/target_y`` from the WCS).

    The earliest frame whose header had a WCS is used.

    Raises
    ------
    ReduxdError
        No frame of the field had a WCS, or no star lies within ``radius`` px.
    """
    table = _current(table)
    if "target_x" in table.colnames:
        x = np.asarray(table["target_x"], dtype=np.float64)
        known = np.isfinite(x)
    else:
        known = np.zeros(len(table), bool)
    if not known.any():
        frames = len(set(np.asarray(table["file"]).astype(str))) if len(table) else 0
        raise ReduxdError(
            f"target given as RA/Dec, but none of the {frames} frames of this field has a WCS "
            "in its header: give it as position = [x, y] on the first frame"
        )
    mjd = np.asarray(table["mjd"], dtype=np.float64)
    first = np.asarray(table["file"]).astype(str)[known][np.argmin(mjd[known])]
    rows = table[np.asarray(table["file"]).astype(str) == first]
    tx, ty = float(rows["target_x"][0]), float(rows["target_y"][0])
    dist = np.hypot(np.asarray(rows["x"]) - tx, np.asarray(rows["y"]) - ty)
    best = int(np.argmin(dist))
    if dist[best] > radius:
        raise ReduxdError(
            f"no star within {radius:g} px of the target's RA/Dec ({tx:.1f}, {ty:.1f}) "
            f"on {first} (nearest {dist[best]:.1f} px)"
        )
    return int(rows["star_id"][best])


def _rel(grid, columns, ref=None):
    """Rates of ``columns`` relative to each star's median usable rate: (rel, rel_err, use, ref).

    ``ref``: those medians given (a frozen ensemble, :func:`append_lightcurve`).
    """
    use = grid.usable[:, columns]
    rate = grid.rate[:, columns]
    if ref is None:
        ref = column_medians(rate, use)
    ref = np.asarray(ref, dtype=np.float64)
    use &= np.isfinite(ref)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(use, rate / ref, np.nan)
        rel_err = np.where(use, grid.rate_err[:, columns] / ref, np.nan)
    return rel, rel_err, use, ref


def _weights(rel_err, use):
    """Inverse-variance weight of each star: 1 / median(relative error)**2 over its frames."""
    typical = column_medians(rel_err, use)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(np.isfinite(typical) & (typical > 0), 1.0 / typical**2, 0.0)
    return w


def _robust_std(values, axis=0):
    """1.4826 x MAD along ``axis``, ignoring NaN."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN
        med = np.nanmedian(values, axis=axis, keepdims=True)
        return 1.4826 * np.nanmedian(np.abs(values - med), axis=axis)


def p2p_scatter(values):
    """Point-to-point scatter: 1.4826 x MAD of successive differences / sqrt(2) (NaN skipped).

    Examples
    --------
    >>> round(p2p_scatter(np.array([0.0, 1.0, 0.0, 1.0, 0.0])), 4)
    1.0484
    """
    return float(_p2p_columns(np.asarray(values, dtype=np.float64).reshape(-1, 1))[0])


def _typical(rel_err, use):
    """Median relative error of each star over its usable frames."""
    return column_medians(rel_err, use)


def column_medians(values, use):
    """``np.median(values[use[:, j], j])`` of each column ``j`` (NaN where none is used).

    All columns at once (one sort), the same numbers: the middle value, or the mean
    of the two middle values; NaN for a column with a NaN among its used values.

    Examples
    --------
    >>> v = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 9.0], [2.0, 7.0, 4.0], [8.0, 1.0, 0.0]])
    >>> use = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]], dtype=bool)
    >>> column_medians(v, use).tolist()
    [2.5, 6.0, nan]
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return np.full(values.shape[1], np.nan)
    n = use.sum(axis=0)
    ordered = np.sort(np.where(use, values, np.nan), axis=0)  # the used values first
    cols = np.arange(values.shape[1])
    upper, lower = ordered[n // 2, cols], ordered[np.maximum(n // 2 - 1, 0), cols]
    with np.errstate(invalid="ignore"):
        out = np.where(n % 2 == 1, upper, (lower + upper) / 2.0)
    out[(n == 0) | (use & np.isnan(values)).any(axis=0)] = np.nan
    return out


def _per_frame(w, rel_err, use, typical=None):
    """Per-frame weights: ``w`` scaled by each frame's reported variance over the median one.

    Through cloud a faint star's relative error grows faster than a bright one's
    (sky and read noise take over), so its weight drops in those frames.
    ``typical``: the median variances given (a frozen ensemble).
    """
    typical = _typical(rel_err, use) if typical is None else np.asarray(typical, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = (typical[None, :] / rel_err) ** 2
    return np.where(use & np.isfinite(factor), w[None, :] * factor, 0.0)


def _leave_one_out(rel, rel_err, use, w):
    """Each star divided by the weighted ensemble of the others: (ratio, ratio_err), (nf, n)."""
    wu = _per_frame(np.asarray(w, dtype=float), rel_err, use)
    num = np.nansum(np.where(use, wu * rel, 0.0), axis=1)[:, None] - np.where(use, wu * rel, 0.0)
    den = wu.sum(axis=1)[:, None] - wu
    var = np.nansum(np.where(use, (wu * rel_err) ** 2, 0.0), axis=1)[:, None]
    var = var - np.where(use, (wu * rel_err) ** 2, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ens = np.where(den > 0, num / den, np.nan)
        ens_err = np.sqrt(np.clip(var, 0, None)) / den
        ratio = np.where(use, rel / ens, np.nan)
        err = np.abs(ratio) * np.hypot(rel_err / rel, ens_err / ens)
    return ratio, err


def _p2p_columns(values):
    """:func:`p2p_scatter` of each column (its non-finite values skipped), all at once."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    order = np.argsort(~finite, axis=0, kind="stable")  # each column's finite values first
    with np.errstate(invalid="ignore"):  # past a column's finite values: not used
        diff = np.diff(np.take_along_axis(values, order, axis=0), axis=0)
        valid = np.arange(len(diff))[:, None] < (n - 1)[None, :]
        dev = np.abs(diff - column_medians(diff, valid)[None, :])
        out = 1.4826 * column_medians(dev, valid) / math.sqrt(2.0)
    out[n < 3] = np.nan
    return out


def _steadiness(rel, rel_err, use, w):
    """Each star against the others: (chi, scatter) per star.

    ``chi`` is the point-to-point scatter of the ratio in units of both error
    sets (its own and the ensemble's): about 1 for a steady star with honest
    errors, larger for a noisy star or one varying from frame to frame. Slow
    drifts common to a night (colour-dependent extinction, thin cloud) do not
    count. ``scatter`` is the point-to-point scatter of the ratio itself.
    """
    ratio, err = _leave_one_out(rel, rel_err, use, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (ratio - np.nanmedian(ratio, axis=0)) / err
    return _p2p_columns(z), _p2p_columns(ratio)


@dataclass(frozen=True)
class Ensemble:
    """A comparison ensemble: members (best first), their weights, the candidates dropped."""

    ids: tuple  # star_ids of the members
    weights: tuple  # inverse-variance weights, same order
    dropped: dict  # {star_id: reason}
    aperture: int = 0  # index of the radius in the rows' multi-aperture columns


_FLAG_BITS = np.array([int(bit) for bit in Flag], dtype=np.int64)


def _flag_summary(flags):
    """Text naming the flags that make a star unusable in its frames, most frequent first."""
    measured = flags[flags >= 0]
    per_bit = np.count_nonzero(measured[:, None] & _FLAG_BITS, axis=0)
    counts = {bit.name: int(n) for bit, n in zip(Flag, per_bit, strict=True) if n}
    missing = int(np.sum(flags == MISSING))
    if missing:
        counts["not measured"] = missing
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} in {n}" for name, n in ranked[:3])


def _candidates(grid, allowed, coverage):
    """Columns usable in at least ``coverage`` of the frames and never saturated; reasons."""
    nf = len(grid.files)
    usable = grid.usable
    frac = usable.mean(axis=0)
    saturated = ((grid.flags >= 0) & ((grid.flags & int(Flag.SATURATED)) != 0)).sum(axis=0)
    allowed = [j for j in allowed if frac[j] > 0]
    clean = [j for j in allowed if saturated[j] == 0]
    best = max((frac[j] for j in clean), default=0.0)
    limit = coverage if sum(frac[j] >= coverage for j in clean) >= 3 else 0.9 * best
    dropped, out = {}, []
    for j in allowed:
        sid = int(grid.star_ids[j])
        if saturated[j]:
            dropped[sid] = f"saturated in {saturated[j]} of {nf} frames"
        elif frac[j] < limit:
            used = int(usable[:, j].sum())
            why = _flag_summary(grid.flags[:, j])
            dropped[sid] = f"usable in {used} of {nf} frames (< {limit:.0%}): {why}"
        else:
            out.append(j)
    return out, dropped


def _by_brightness(grid, cands, target_col, size):
    """The ``size`` candidates to test: near the target's brightness (-3 to +1.5 mag) first."""
    _, rel_err, use, ref = _rel(grid, cands)
    precision = 1.0 / np.sqrt(np.maximum(_weights(rel_err, use), 1e-300))
    if target_col is not None and grid.usable[:, target_col].any():
        t_ref = np.median(grid.rate[grid.usable[:, target_col], target_col])
        delta = -2.5 * np.log10(ref / t_ref)
        near = (delta >= -3.0) & (delta <= 1.5)
        key = np.where(near, precision, 1e6 + np.abs(delta))
        why = "not among the {} candidates nearest the target's brightness"
    else:
        key = precision
        why = "not among the {} most precise candidates"
    order = np.argsort(key, kind="stable")
    pool = [cands[i] for i in order[:size]]
    dropped = {int(grid.star_ids[cands[i]]): why.format(size) for i in order[size:]}
    return pool, dropped


def _reject_variables(grid, pool, reject):
    """Drop, one at a time, the star least steady against the others.

    Returns ``(keep, chi, scatter, dropped)``.
    """
    rel, rel_err, use, _ = _rel(grid, pool)
    w = _weights(rel_err, use)
    keep = np.ones(len(pool), dtype=bool)
    dropped = {}
    chi = np.ones(len(pool))
    scatter = np.zeros(len(pool))
    while len(grid.files) >= 3 and keep.sum() >= 3:
        idx = np.flatnonzero(keep)
        chi_k, scat_k = _steadiness(rel[:, idx], rel_err[:, idx], use[:, idx], w[idx])
        chi[idx], scatter[idx] = chi_k, scat_k
        if not np.isfinite(chi_k).any():
            break
        limit = max(1.5, reject * float(np.nanmedian(chi_k)))
        worst = int(np.nanargmax(chi_k))
        if chi_k[worst] <= limit:
            break
        keep[idx[worst]] = False
        dropped[int(grid.star_ids[pool[idx[worst]]])] = (
            f"noisy or variable: point-to-point scatter {chi_k[worst]:.1f} x its errors against "
            f"the other comparisons (limit {limit:.1f})"
        )
    return keep, chi, scatter, dropped


def select_ensemble(grid, *, target_col, n, exclude_cols=(), reject=2.0, coverage=0.9):
    """Choose the comparison ensemble of a field (see :func:`choose_comparisons`).

    Returns
    -------
    Ensemble
    """
    excluded = set(exclude_cols) | ({target_col} if target_col is not None else set())
    allowed = [j for j in range(len(grid.star_ids)) if j not in excluded]
    cands, dropped = _candidates(grid, allowed, coverage)
    if not cands:
        return Ensemble((), (), dropped)
    pool, far = _by_brightness(grid, cands, target_col, max(3 * n, n + 10))
    dropped.update(far)
    keep, _, scatter, variable = _reject_variables(grid, pool, reject)
    dropped.update(variable)
    ranked = [i for i in np.argsort(scatter, kind="stable") if keep[i]]
    for i in ranked[n:]:
        dropped[int(grid.star_ids[pool[i]])] = (
            f"steady, but {n} more precise comparisons were found"
        )
    members = [pool[i] for i in ranked[:n]]
    weights = ensemble_weights(grid, members)
    return Ensemble(tuple(int(grid.star_ids[j]) for j in members), tuple(weights), dropped)


def measured_variances(grid, columns):
    """Each comparison's relative variance, measured against the others (N-cornered hat).

    For every pair of comparisons the point-to-point scatter ``s_ij`` of the log
    of their ratio is measured (the same for i/j and j/i). For independent noise
    ``s_ij**2 = var_i + var_j``; the variances are the least-squares solution of
    those ``N (N - 1) / 2`` equations, each weighted by ``1 / s_ij**2``, never
    below each star's reported variance (the CCD-equation errors are honest or
    low, issue 10's check: a star measured quieter than its photon, sky and read
    noise is an estimate's noise). Reported errors of bright stars
    miss the noise floor (scintillation, flat-field), so weights from them alone
    put too much on the brightest star. The earlier estimate (each star against
    the weighted ensemble of the others, iterated) did not converge when two
    stars dominate: on XO-1 the split between the two brightest went from
    66/25 % to 39/49 % with a faint member swapped. When the other members are
    much noisier than the two brightest, their split stays poorly determined by
    any estimate.
    """
    rel, rel_err, use, _ = _rel(grid, columns)
    w = _weights(rel_err, use)
    with np.errstate(divide="ignore"):
        reported = np.where(w > 0, 1.0 / w, np.inf)
    n = len(columns)
    if n < 3 or len(grid.files) < 5 or not np.all(w > 0):
        return reported
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    both = np.stack([use[:, i] & use[:, j] for i, j in pairs], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.stack([np.log(rel[:, i] / rel[:, j]) for i, j in pairs], axis=1)
    scatter = _p2p_columns(np.where(both, ratio, np.nan))  # each pair's frames with both
    scatter[both.sum(axis=0) < 5] = np.nan
    design, s2 = [], []
    for (i, j), s in zip(pairs, scatter.tolist(), strict=True):
        if np.isfinite(s) and s > 0:
            row = np.zeros(n)
            row[[i, j]] = 1.0
            design.append(row)
            s2.append(s**2)
    if len(s2) < n:
        return reported
    design, s2 = np.array(design), np.array(s2)
    var = np.linalg.lstsq(design / s2[:, None], np.ones(len(s2)), rcond=None)[0]
    return np.maximum(np.where(np.isfinite(var), var, reported), reported)


def ensemble_weights(grid, columns):
    """Inverse-variance weights (:func:`measured_variances`) of ``columns``, summing to 1."""
    columns = list(columns)
    if not columns:
        return []
    with np.errstate(divide="ignore"):
        w = 1.0 / measured_variances(grid, columns)
    if not np.any(w > 0):
        w = np.ones(len(columns))
    return [float(v) for v in w / w.sum()]


def choose_comparisons(table, *, target_id, n, exclude=(), reject=2.0, coverage=0.9):
    """Choose ``n`` comparison stars automatically; return their star_ids, best first.

    Candidates are stars usable (measured, unflagged, positive flux) in at least
    ``coverage`` of the frames (fewer when fewer than three stars are), never
    saturated, neither the target nor in ``exclude``. The ``max(3 n, n + 10)``
    most precise of those within -3 to +1.5 mag of the target are tested (all
    candidates, most precise first, without a target). Steadiness: each star is
    divided by the inverse-variance weighted ensemble of the others; its robust
    scatter in units of both error sets (its own and the ensemble's) is its chi.
    The star with the largest chi is dropped while that chi exceeds
    ``max(1.5, reject * median chi)``, and the test is repeated. The ``n``
    remaining stars with the smallest scatter are returned. A per-frame flag only
    drops a member from that frame's ensemble.

    Examples
    --------
    >>> rows = [dict(file=f'{i}.fits', mjd=float(i), star_id=s, x=0.0, y=0.0,
    ...              flux=1000.0 * s, flux_err=1.0, flags=0)
    ...         for i in range(2) for s in (1, 2, 3)]
    >>> choose_comparisons(rows, target_id=1, n=5)
    [3, 2]
    """
    grid = _grid(table)
    target_col = None if target_id is None else grid.column(int(target_id))
    exclude_cols = [grid.column(int(s)) for s in exclude if int(s) in set(grid.star_ids.tolist())]
    ens = select_ensemble(
        grid, target_col=target_col, n=n, exclude_cols=exclude_cols, reject=reject,
        coverage=coverage,
    )  # fmt: skip
    return list(ens.ids)


def _ensemble(grid, columns, weights=None, frozen=None):
    """Return (rate, rate_err, n_used) of the weighted comparison ensemble per frame.

    The ensemble is the weighted mean of the members' rates relative to their
    median rates, times the sum of those medians (so its magnitude is that of the
    summed comparisons). A frame in which no member is usable falls back on the
    members measured there with a positive, unsaturated flux. ``frozen``:
    ``{"ref": medians, "typical": median relative errors}`` of the members, from
    the frames of an earlier build (:func:`append_lightcurve`).
    """
    nf = len(grid.files)
    if len(columns) == 0:
        return np.full(nf, np.nan), np.full(nf, np.nan), np.zeros(nf, dtype=np.int64)
    columns = list(columns)
    w = np.asarray(ensemble_weights(grid, columns) if weights is None else weights, dtype=float)
    frozen = frozen or {}
    rel, rel_err, use, ref = _rel(grid, columns, frozen.get("ref"))
    empty = ~use.any(axis=1)
    if empty.any():
        flags = grid.flags[:, columns]
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = grid.rate[:, columns] / ref
            raw_err = grid.rate_err[:, columns] / ref
        fallback = (
            empty[:, None] & grid.present[:, columns] & np.isfinite(raw) & (raw > 0)
            & np.isfinite(raw_err) & ((flags & int(Flag.SATURATED)) == 0)
        )  # fmt: skip
        rel, rel_err = np.where(fallback, raw, rel), np.where(fallback, raw_err, rel_err)
        use = use | fallback
    wu = _per_frame(w, rel_err, use, frozen.get("typical"))
    den = wu.sum(axis=1)
    total = float(np.nansum(ref))
    with np.errstate(divide="ignore", invalid="ignore"):
        ens = np.sum(np.where(use, wu * rel, 0.0), axis=1) / den
        err = np.sqrt(np.sum(np.where(use, (wu * rel_err) ** 2, 0.0), axis=1)) / den
    ens = np.where(den > 0, ens, np.nan)
    return ens * total, err * total, use.sum(axis=1)


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
    table["mjd"].unit = column("mjd").unit
    table["mjd"].description = column("mjd").description
    table["mjd"].format = ".8f"
    table["date_obs"] = grid.date_obs
    table["date_obs"].description = column("date_obs").description
    table["file"] = grid.files
    table["file"].description = column("file").description
    return table


def _add(table, name, values, unit, description, fmt=".5f"):
    table[name] = values
    table[name].unit = unit
    table[name].description = description
    if fmt:
        table[name].format = fmt


def _add_times(table, grid):
    """Add ``bjd_tdb`` and ``airmass`` (computed) where the frame's pointing and site are known."""
    if grid.place is None:
        table.meta["time"] = "no pointing/site in the rows: no bjd_tdb or airmass"
        return
    from reduxd.steps.times import bjd_and_airmass

    bjd = np.full(len(grid.files), np.nan)
    airmass = np.full(len(grid.files), np.nan)
    known = np.all(np.isfinite(grid.place), axis=1) & np.isfinite(grid.mjd)
    places, which = np.unique(grid.place[known], axis=0, return_inverse=True)
    frames = np.flatnonzero(known)
    for k, place in enumerate(places):  # one vectorised astropy call per pointing and site
        idx = frames[np.ravel(which) == k]
        bjd[idx], airmass[idx] = bjd_and_airmass(grid.mjd[idx], *place)
    _add(table, "bjd_tdb", bjd, "d", "mid-exposure BJD_TDB (astropy light_travel_time)",
         fmt=".7f")  # fmt: skip
    _add(table, "airmass", airmass, None, "sec z at mid-exposure, computed from the site")
    sources = sorted({str(v) for v in grid.site_source[known]})
    table.meta["time"] = (
        "bjd_tdb and airmass computed with astropy from the frames' pointing (header "
        f"OBJCTRA/OBJCTDEC or RA/DEC) and the site from {' and '.join(sources) or 'nowhere'}; "
        f"{int((~known).sum())} frames without pointing or site have NaN"
    )


def _add_checks(table, grid, comparison_ids, frozen=None):
    columns = [grid.column(int(c)) for c in comparison_ids]
    if len(columns) < 2:
        return
    check_weights = {}
    for k, (cid, col) in enumerate(zip(comparison_ids, columns, strict=True)):
        others = columns[:k] + columns[k + 1 :]
        if frozen is None:
            weights, stats = ensemble_weights(grid, others), None
        else:
            weights = frozen["check_weights"][str(cid)]
            stats = {key: np.delete(np.asarray(frozen[key]), k) for key in ("ref", "typical")}
        check_weights[str(cid)] = [float(v) for v in weights]
        rate, rate_err, _ = _ensemble(grid, others, weights, stats)
        own = grid.usable[:, col]
        star, star_err = _to_mag(np.where(own, grid.rate[:, col], np.nan), grid.rate_err[:, col])
        ens, ens_err = _to_mag(rate, rate_err)
        _add(table, f"check_{cid}", star - ens, "mag", f"comparison {cid} minus the others")
        _add(
            table, f"check_err_{cid}", np.hypot(star_err, ens_err), "mag",
            f"1-sigma uncertainty of check_{cid}",
        )  # fmt: skip
    table.meta["check_weights"] = check_weights


def _differential(grid, target_id, comparison_ids, weights=None, frozen=None):
    table = _frame_table(grid)
    t = grid.column(int(target_id))
    columns = [grid.column(int(c)) for c in comparison_ids]
    if int(target_id) in {int(c) for c in comparison_ids}:
        raise ReduxdError(f"star {target_id} is both the target and a comparison")
    ens, ens_err, n_used = _ensemble(grid, columns, weights, frozen)
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
    _add_checks(table, grid, comparison_ids, frozen)
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


def lightcurve_paths(outdir, *, object, filter, save=""):
    """Return the (csv, ecsv, png) paths of one (object, filter) light curve."""
    prefix = f"{safe_name(save)}_" if save else ""
    same = save and safe_name(object) == safe_name(save)  # --save used once in a name
    middle = "" if same else f"{safe_name(object)}_"
    base = f"{prefix}lightcurve_{middle}{safe_name(filter)}"
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


def _data_lines(table):
    """Return the (csv, ecsv) data lines of ``table`` as text (no header)."""
    columns = [_column_strings(table[name]) for name in table.colnames]
    rows = list(zip(*columns, strict=True)) if columns else []
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    quoted = [
        [_ecsv_quote(v) for v in col] if table[name].dtype.kind in "US" else col
        for name, col in zip(table.colnames, columns, strict=True)
    ]
    lines = [" ".join(row) + "\n" for row in zip(*quoted, strict=True)] if quoted else []
    return buf.getvalue(), "".join(lines)


def _table_bytes(table):
    """Return (csv, ecsv) texts of ``table`` as bytes.

    astropy writes the ECSV header (units, descriptions, meta); the data lines are
    formatted here, column by column, which is many times faster than astropy's
    writers for wide tables (hundreds of star columns).
    """
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(table.colnames)
    csv_body, ecsv_body = _data_lines(table)
    header = io.StringIO()
    table[:0].write(header, format="ascii.ecsv")
    return (buf.getvalue() + csv_body).encode("utf-8"), (header.getvalue() + ecsv_body).encode(
        "utf-8"
    )


def _empty_spec(spec):
    return spec is None or (not np.isscalar(spec) and len(spec) == 0)


def _ensemble_for(grid, target_col, comparison_ids, n):
    if comparison_ids:
        columns = [grid.column(int(c)) for c in comparison_ids]
        return Ensemble(tuple(comparison_ids), tuple(ensemble_weights(grid, columns)), {})
    return select_ensemble(grid, target_col=target_col, n=n)


def ensemble_scatter(grid, ensemble, *, target_col=None):
    """Expected point-to-point noise (mag) of a differential curve with this ensemble.

    From the comparisons only (:func:`measured_variances`): the ensemble's noise
    ``1 / sqrt(sum 1 / var_i)``, and, when a target column is given, in
    quadrature the noise of the member nearest the target in brightness, a
    stand-in for the target (whose own curve is never looked at).
    """
    columns = [grid.column(int(c)) for c in ensemble.ids]
    if len(columns) < 3:
        return math.inf
    var = measured_variances(grid, columns)
    if not np.all(np.isfinite(var)):
        return math.inf
    total = float(1.0 / np.sum(1.0 / var))
    if target_col is not None and grid.usable[:, target_col].any():
        _, _, _, ref = _rel(grid, columns)
        level = np.median(grid.rate[grid.usable[:, target_col], target_col])
        k = int(np.argmin(np.abs(np.log(ref / level))))
        rest = np.delete(var, k)
        total = float(var[k] + 1.0 / np.sum(1.0 / rest))
    return MAG_ERR * math.sqrt(total)


def _radius_key(radius):
    finite = radius[np.isfinite(radius)]
    return f"{float(np.median(finite)):.2f}" if finite.size else "unknown"


def radius_margin(n_frames):
    """Relative gain in expected noise needed to leave the main radius: 2 x 1.166 / sqrt(N - 1).

    1.166 / sqrt(N) is the relative standard error of a MAD-based scatter from
    N normal values; the point-to-point scatter of ``n_frames`` has
    ``n_frames - 1`` differences. 26 % for 80 frames, 20 % for 142.
    """
    return 2.0 * 1.166 / math.sqrt(max(n_frames - 1, 1))


def choose_aperture(grid, *, target_col, comparison_ids, n):
    """Pick the aperture radius whose comparison ensemble is steadiest (never looks at the target).

    The first radius of the rows (the ``flux`` column's, 2 x FWHM by default)
    is kept unless another one's expected noise (:func:`ensemble_scatter`) is
    lower by more than :func:`radius_margin`: those estimates come from the same
    few frames, and a difference within their own scatter is noise (on XO-1 the
    estimates for 1.5, 2 and 2.5 x FWHM were within 7 % of each other while the
    target's curve scattered 0.0030, 0.0030 and 0.0043 through them).

    Returns
    -------
    tuple
        ``(grid, ensemble, scatter)``: the grid of the chosen radius, its
        ensemble, and ``{median radius in pixels: ensemble scatter}`` per radius.
    """
    trials = []
    for g in grid.apertures():
        ens = _ensemble_for(g, target_col, comparison_ids, n)
        trials.append((ensemble_scatter(g, ens, target_col=target_col), g, ens))
    best = min(range(len(trials)), key=lambda k: trials[k][0])
    if trials[best][0] >= trials[0][0] * (1.0 - radius_margin(len(grid.files))):
        best = 0
    object.__setattr__(trials[best][2], "aperture", best)  # which radius of the rows
    scatter = {
        _radius_key(g.radius): (round(v, 6) if math.isfinite(v) else None) for v, g, _ in trials
    }
    return trials[best][1], trials[best][2], scatter


def _rounded(weights):
    """Weights rounded to 6 decimals, the largest taking the rounding so they still sum to 1.

    Examples
    --------
    >>> sum(_rounded([1 / 3, 1 / 3, 1 / 3])) == 1.0
    True
    """
    out = [round(float(w), 6) for w in weights]
    if out:
        k = max(range(len(out)), key=out.__getitem__)
        out[k] = round(out[k] + 1.0 - math.fsum(out), 6)
    return out


def build_lightcurve(
    table, *, target=None, comparisons=(), n_comparisons=10, radec=None, per_star=True
):
    """Return the wide light-curve table of one field (what :func:`write_lightcurve` writes).

    ``target`` and ``comparisons`` are config specs (``[star_id]`` or ``[x, y]``);
    with no comparisons they are chosen by :func:`select_ensemble`. With
    multi-aperture rows the radius is chosen by :func:`choose_aperture`. The
    table's meta holds ``target_id`` (or None), ``comparison_ids``,
    ``comparison_weights``, ``dropped`` (candidate: reason), ``aperture``,
    ``check_chi2`` and, from :func:`field_table`, ``detector`` (the gain and read
    noise behind the errors, with their source). ``per_star=False`` leaves out the
    ``mag_<id>, err_<id>, flags_<id>`` columns (the web page, which rebuilds curves
    often, does not show them; nor does :func:`write_lightcurve`: the photometry table
    has them in long format).
    """
    grid = _grid(table)
    if radec is not None:
        target_id = resolve_radec(table)
    else:
        target_id = None if _empty_spec(target) else resolve_star(table, target)
    target_col = None if target_id is None else grid.column(target_id)
    comparison_ids = []
    if comparisons:
        resolved = [resolve_star(table, spec) for spec in comparisons]
        comparison_ids = list(dict.fromkeys(resolved))  # the same star named twice: once
    grid, ens, scatter = choose_aperture(
        grid, target_col=target_col, comparison_ids=comparison_ids, n=n_comparisons
    )
    comparison_ids = list(ens.ids)
    out = _curve_table(grid, target_id, comparison_ids, ens.weights)
    if per_star:
        _add_stars(out, grid)
    out.meta["target_id"] = target_id
    out.meta["comparison_ids"] = [int(c) for c in comparison_ids]
    out.meta["comparison_weights"] = _rounded(ens.weights)
    if comparison_ids:
        _, rel_err, use, ref = _rel(grid, [grid.column(c) for c in comparison_ids])
        out.meta["comparison_rates"] = [float(r) for r in ref]  # median count rates (ADU/s)
        out.meta["comparison_typical_err"] = [float(v) for v in _typical(rel_err, use)]
    out.meta["dropped"] = {str(k): v for k, v in sorted(ens.dropped.items())}
    if isinstance(table, Table) and "detector" in table.meta:  # gain, read noise, their source
        out.meta["detector"] = table.meta["detector"]
    out.meta["check_chi2"] = {str(k): v for k, v in flatness(out).items()}
    out.meta["ensemble"] = (
        "inverse-variance weighted mean of the comparisons' rates relative to their medians, "
        "times the sum of those medians"
    )
    finite = grid.radius[np.isfinite(grid.radius)]
    radius = float(np.median(finite)) if finite.size else None
    out.meta["aperture"] = {
        "index": int(ens.aperture),
        "radius_px": radius,
        "ensemble_scatter_by_radius": scatter,
        "rule": (
            "the first radius (2 x FWHM by default) unless another one's comparisons scatter "
            f"less by more than {radius_margin(len(grid.files)):.0%} (target not used)"
        ),
    }
    return out


def _curve_table(grid, target_id, comparison_ids, weights, frozen=None):
    """The light-curve columns of ``grid``'s frames (no per-star columns)."""
    if target_id is not None:
        out = _differential(grid, target_id, comparison_ids, weights, frozen)
    else:
        out = _frame_table(grid)
        _add_checks(out, grid, comparison_ids, frozen)
    _add(out, "radius", grid.radius, "pix", "aperture radius used in this frame", fmt=".3f")
    _add_times(out, grid)
    return out


def write_lightcurve(
    outdir,
    table,
    *,
    object,
    filter,
    target=None,
    comparisons=(),
    n_comparisons=10,
    save="",
    radec=None,
    keep=None,
    files=None,
    later=None,
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
        table has the check-star columns and the plot shows the check stars only.
    comparisons : sequence of sequences, optional
        Comparison specs; empty: ``n_comparisons`` chosen automatically.
    n_comparisons : int, optional
    save : str, optional
        Prefix of the file names (``<save>_lightcurve_<object>_<filter>.*``).
    files : dict, optional
        When given, the files' contents are put there (``{path: bytes}``) instead of
        written (a rebuild in a child process: the daemon installs them, see
        :mod:`reduxd.curves`).
    later : list, optional
        When given, the curve is built only and ``(object, filter, table)`` is
        appended there: :func:`write_built` writes its files later, e.g. in another
        process while this one goes on with what needs only the curve's ensemble.

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
        table, target=target, comparisons=comparisons, n_comparisons=n_comparisons, radec=radec,
        per_star=False,
    )  # fmt: skip
    if keep is not None:
        keep["lightcurve"] = lc
    lc.meta["object"] = str(object)
    lc.meta["filter"] = str(filter)
    if later is not None:
        later.append((object, filter, lc))
        return list(lightcurve_paths(outdir, object=object, filter=filter, save=save))
    return write_built(outdir, lc, object=object, filter=filter, save=save, files=files)


CURVE_FILES = ("plot", "tables")  # what write_built writes: the PNG (the longer), CSV + ECSV


def write_built(outdir, lc, *, object, filter, save="", files=None, parts=CURVE_FILES):
    """Write the CSV, ECSV and PNG of a light curve built by :func:`write_lightcurve`
    (``parts``: ``"tables"`` for the CSV and ECSV, ``"plot"`` for the PNG).

    ``files`` as in :func:`write_lightcurve`. Returns the paths, of ``[csv, ecsv, png]``.
    """
    csv_path, ecsv_path, png_path = lightcurve_paths(
        outdir, object=object, filter=filter, save=save
    )
    payloads = {}
    if "tables" in parts:
        payloads[csv_path], payloads[ecsv_path] = _table_bytes(lc)
    if "plot" in parts:
        payloads[png_path] = plot_lightcurve(lc, title=f"{object}  {filter}")
    if files is not None:
        files.update(payloads)
    else:
        write_files(payloads)
    return list(payloads)


def write_files(payloads):
    """Write ``{path: bytes}``, each file atomically."""
    for path, payload in payloads.items():
        atomic_write(path, lambda fh, payload=payload: fh.write(payload))


def ensemble_of(lc):
    """What :func:`frame_dmag` needs from a built light curve (None without a target)."""
    meta = lc.meta
    if meta.get("target_id") is None or not meta.get("comparison_ids"):
        return None
    return {
        "target_id": int(meta["target_id"]),
        "ids": list(meta["comparison_ids"]),
        "weights": list(meta["comparison_weights"]),
        "rates": list(meta["comparison_rates"]),
        "aperture": int(meta["aperture"]["index"]),
    }


def frozen_of(lc):
    """What :func:`append_lightcurve` needs from a built light curve (None if it cannot append).

    The members, their weights (also each check star's), median rates and
    median relative errors, the aperture, the file's columns and how many frames
    the build had.
    """
    meta = lc.meta
    ids = list(meta.get("comparison_ids") or [])
    if not ids or len(lc) == 0:
        return None
    return {
        "target_id": meta.get("target_id"),
        "ids": ids,
        "weights": list(meta["comparison_weights"]),
        "ref": list(meta["comparison_rates"]),
        "typical": list(meta["comparison_typical_err"]),
        "check_weights": dict(meta.get("check_weights") or {}),
        "aperture": int(meta["aperture"]["index"]),
        "columns": list(lc.colnames),
        "frames": len(lc),
        "last_mjd": float(np.nanmax(np.asarray(lc["mjd"], dtype=float))),
    }


def _with_members(rows, star_ids):
    """This frame's rows of ``star_ids``, with an unmeasured row for each one absent."""
    by_id = {int(r["star_id"]): r for r in rows}
    template = rows[0]
    out = []
    for sid in star_ids:
        row = by_id.get(int(sid))
        if row is None:  # not measured here: as absent (flags MISSING, no flux)
            row = dict(template, star_id=int(sid), flux=math.nan, flux_err=math.nan,
                       flags=MISSING, x=math.nan, y=math.nan)  # fmt: skip
            for key in ("flux_ap", "flux_err_ap"):
                if isinstance(template.get(key), list):
                    row[key] = [math.nan] * len(template[key])
        out.append(row)
    return out


def append_lightcurve(outdir, rows, frozen, *, object, filter, save=""):
    """Append one new frame to a light curve's CSV and ECSV, against its frozen ensemble.

    The frame's row is computed as :func:`write_lightcurve` computes every row,
    with the members, weights, median rates and median errors of the last build
    (``frozen``, from :func:`frozen_of`; ``frozen['frames']`` is not changed), so
    the rows already written stay valid and are not rewritten; the PNG is left
    as it was. Returns False, writing nothing, when the frame cannot simply be
    appended: files missing, columns changed, or the frame is older than the
    last row (the caller then rebuilds the whole curve).
    """
    csv_path, ecsv_path, _ = lightcurve_paths(outdir, object=object, filter=filter, save=save)
    rows = [r for r in rows if int(r.get("current", 1)) == 1]
    if not rows or not (csv_path.exists() and ecsv_path.exists()):
        return False
    if float(rows[0]["mjd"]) < frozen["last_mjd"]:
        return False
    target_id = frozen["target_id"]
    members = [*([] if target_id is None else [target_id]), *frozen["ids"]]
    grid = _grid(field_table(_with_members(rows, members))).apertures()[frozen["aperture"]]
    out = _curve_table(grid, target_id, frozen["ids"], frozen["weights"], frozen)
    if out.colnames != frozen["columns"]:
        return False
    csv_body, ecsv_body = _data_lines(out)
    append_lines(csv_path, "", csv_body)
    append_lines(ecsv_path, "", ecsv_body)
    frozen["last_mjd"] = float(rows[0]["mjd"])
    return True


def frame_dmag(rows, ensemble):
    """The target's differential magnitude in one frame's rows, against a fixed ensemble.

    ``ensemble`` from :func:`ensemble_of`. None when the target is not measured
    (or not positive) in these rows or no member is usable.

    Examples
    --------
    >>> rows = [dict(star_id=s, flux=f, exptime=1.0, flags=0) for s, f in ((1, 10.0), (2, 50.0))]
    >>> frame_dmag(rows, dict(target_id=1, ids=[2], weights=[1.0], rates=[100.0], aperture=0))
    1.7474
    """
    k = ensemble["aperture"]

    def rate(row):
        flux = row["flux_ap"][k] if isinstance(row.get("flux_ap"), list) else row["flux"]
        return flux / (row.get("exptime") or 1.0)

    by_id = {int(r["star_id"]): r for r in rows}
    target = by_id.get(ensemble["target_id"])
    if target is None or not rate(target) > 0:
        return None
    num = den = 0.0
    for sid, w, ref in zip(ensemble["ids"], ensemble["weights"], ensemble["rates"], strict=True):
        row = by_id.get(int(sid))
        if row is not None and (int(row["flags"]) & ~HARMLESS) == 0 and rate(row) > 0:
            num += w * rate(row) / ref
            den += w
    if den <= 0:
        return None
    ens = num / den * sum(ensemble["rates"])
    return round(-2.5 * math.log10(rate(target) / ens), 4)


def plot_lightcurve(lc, *, title=""):
    """Return PNG bytes: the target's dmag (if any) and the check stars, magnitudes inverted.

    Flagged target points are drawn as open grey circles. Check stars are shown
    relative to their median, offset for clarity (:func:`lightcurve_figure`).
    The bytes of ``savefig(format="png", dpi=100)``, drawn once: ``savefig`` draws a
    figure with a layout engine twice (a dry draw that lays it out, then the
    drawing), the canvas lays it out as it draws.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(lightcurve_figure(lc, title=title)).print_png(buf)
    return buf.getvalue()


def _errorbar(ax, x, y, err, fmt, *, elinewidth, **style):
    """Points ``(x, y)`` with vertical error bars ``y +- err``, in the points' colour and
    under them: ``ax.errorbar`` drawn as two lines (the bars one line broken by NaN), which
    costs a fraction of its collection of segments (the plot is the last step of a batch).
    """
    (points,) = ax.plot(x, y, fmt, **style)
    bars = np.full((3, len(x)), np.nan)
    bars[0], bars[1] = y - err, y + err
    ax.plot(np.repeat(x, 3), bars.T.ravel(), "-", color=points.get_color(), lw=elinewidth,
            zorder=points.get_zorder() - 0.1)  # fmt: skip


def lightcurve_figure(lc, *, title=""):
    """The figure :func:`plot_lightcurve` draws (8 in wide, dpi 100, constrained layout)."""
    has_target = "dmag" in lc.colnames
    checks = [n for n in lc.colnames if re.fullmatch(r"check_-?\d+", n)]
    panels = int(has_target) + int(bool(checks)) or 1
    from matplotlib.figure import Figure  # imported on first plot: ~0.5 s at start-up otherwise

    fig = Figure(figsize=(8.0, 3.2 * panels + 0.6), dpi=100, layout="constrained")
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
        _errorbar(ax, days[~flagged], dmag[~flagged], err[~flagged], "o", ms=3, color="C0",
                  elinewidth=0.8, label="target")  # fmt: skip
        if flagged.any():
            _errorbar(ax, days[flagged], dmag[flagged], err[flagged], "o", ms=4, mfc="none",
                      color="0.5", elinewidth=0.8, label="flagged")  # fmt: skip
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
            _errorbar(ax, days, value - centre + i * step, err, ".", ms=3, elinewidth=0.6,
                      label=f"star {name[6:]}")  # fmt: skip
        ax.set_ylabel("check star − others (mag, offset)")
        ax.invert_yaxis()
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    if not has_target and not checks:
        axes[0].text(0.5, 0.5, "no target and fewer than two comparisons", ha="center",
                     va="center", transform=axes[0].transAxes)  # fmt: skip
    axes[-1].set_xlabel(f"MJD − {origin}")
    if title:
        fig.suptitle(title)
    return fig
