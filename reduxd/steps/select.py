"""Choosing master calibrations for a frame: a query, BANZAI-style (pure functions)."""

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class MasterRecord:
    """One master calibration as the ledger knows it."""

    kind: str  # 'bias' | 'dark' | 'dark_current' | 'flat'
    path: str
    checksum: str
    instrument: str
    shape: tuple[int, int]  # (ny, nx)
    binning: tuple[int, int]  # (xbin, ybin)
    gain: float | None
    exptime: float | None  # dark: its exposure; others: None or informative
    filter: str | None  # flat only
    ccd_temp: float | None
    date_start: datetime | None
    date_end: datetime | None
    ncombine: int
    night: str  # 'YYYY-MM-DD' of the evening the inputs were taken
    id: int | None = None


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def _same_exposure(a, b):
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-3)


def matches(record, *, kind, info, temperature_tolerance, exptime, filter):
    """Return ``''`` when ``record`` may calibrate ``info``, else why not.

    Examples
    --------
    >>> from reduxd.frames import FrameInfo
    >>> info = FrameInfo('l.fits', 'light', 'default', 'V', 30.0, None, None, (1, 1),
    ...                  (4, 4), -25.0, None, 'cam', None, None, None, None)
    >>> rec = MasterRecord('dark', 'd.fits', 'x', 'cam', (4, 4), (1, 1), None, 60.0,
    ...                    None, -25.2, None, None, 5, '2025-06-01')
    >>> matches(rec, kind='dark', info=info, temperature_tolerance=3.0, exptime=30.0,
    ...         filter=None)
    'exposure 60.0 s, not 30.0 s'
    """
    checks = [
        (record.kind == kind, f"kind {record.kind}"),
        (record.instrument == info.instrument, f"instrument {record.instrument!r}"),
        (tuple(record.shape) == tuple(info.shape), f"shape {record.shape}"),
        (tuple(record.binning) == tuple(info.binning), f"binning {record.binning}"),
        (_same(record.gain, info.gain), f"gain {record.gain}"),
        (
            kind != "dark" or _same_exposure(record.exptime, exptime),
            f"exposure {record.exptime} s, not {exptime} s",
        ),
        (kind != "flat" or record.filter == filter, f"filter {record.filter}, not {filter}"),
        (
            _temperature_ok(record.ccd_temp, info.ccd_temp, temperature_tolerance),
            f"CCD-TEMP {record.ccd_temp} vs {info.ccd_temp}",
        ),
    ]
    return next((why for ok, why in checks if not ok), "")


def _temperature_ok(a, b, tolerance):
    return a is None or b is None or abs(a - b) <= tolerance


def age_days(record, when):
    """Days between ``when`` and the span of the record's inputs (0 inside; None if unknown).

    Examples
    --------
    >>> from datetime import UTC
    >>> rec = MasterRecord('bias', 'b.fits', 'x', '', (4, 4), (1, 1), None, 0.0, None, None,
    ...                    datetime(2025, 6, 1, 3, tzinfo=UTC),
    ...                    datetime(2025, 6, 1, 4, tzinfo=UTC), 5, '2025-05-31')
    >>> age_days(rec, datetime(2025, 6, 3, 4, tzinfo=UTC))
    2.0
    """
    start = record.date_start or record.date_end
    end = record.date_end or record.date_start
    if when is None or start is None:
        return None
    if when < start:
        return (start - when).total_seconds() / 86400.0
    return max(0.0, (when - end).total_seconds() / 86400.0)


def select_master(
    candidates,
    *,
    kind,
    info,
    temperature_tolerance,
    max_age_days,
    exptime=None,
    filter=None,
    utc_offset_hours=0.0,
):
    """Choose the master of ``kind`` that fits a frame best (BANZAI-style query).

    A candidate must have the frame's instrument, shape, binning and gain; a dark,
    exactly the exposure ``exptime`` (else the caller asks for bias + dark current);
    a flat, the filter ``filter``; and a CCD temperature within
    ``temperature_tolerance`` (not checked when either is unknown). Among those,
    masters of the frame's own night come first, then the nearest in time within
    ``max_age_days`` (before or after); masters with no date come last.

    Parameters
    ----------
    candidates : iterable of MasterRecord
    kind : {'bias', 'dark', 'dark_current', 'flat'}
    info : FrameInfo
        The frame to calibrate.
    temperature_tolerance, max_age_days : float
    exptime : float, optional
        Default: ``info.exptime``.
    filter : str, optional
        Default: ``info.filter``.
    utc_offset_hours : float
        Site offset used to name the frame's night.

    Returns
    -------
    MasterRecord or None

    Examples
    --------
    >>> from datetime import UTC, timedelta
    >>> from reduxd.frames import FrameInfo
    >>> night = datetime(2025, 6, 2, 4, tzinfo=UTC)
    >>> info = FrameInfo('l.fits', 'light', 'default', 'Z', 60.0, None, None, (1, 1),
    ...                  (4, 4), -25.0, None, 'cam', None, None, night, None)
    >>> def dark(path, days):
    ...     when = datetime(2025, 6, 2, 3, tzinfo=UTC) - timedelta(days=days)
    ...     return MasterRecord('dark', path, 'x', 'cam', (4, 4), (1, 1), None, 60.0, None,
    ...                         -25.0, when, when, 5, info.night() if days == 0 else 'old')
    >>> cands = [dark('old.fits', 3), dark('tonight.fits', 0), dark('ancient.fits', 90)]
    >>> select_master(cands, kind='dark', info=info, temperature_tolerance=3,
    ...               max_age_days=30).path
    'tonight.fits'
    >>> select_master(cands[:1], kind='dark', info=info, temperature_tolerance=3,
    ...               max_age_days=2) is None
    True
    """
    exptime = info.exptime if exptime is None else exptime
    filter = info.filter if filter is None else filter
    night = info.night(utc_offset_hours)
    ranked = []
    for record in candidates:
        why = matches(
            record,
            kind=kind,
            info=info,
            temperature_tolerance=temperature_tolerance,
            exptime=exptime,
            filter=filter,
        )
        if why:
            continue
        same_night = night != "unknown" and record.night == night
        age = age_days(record, info.date_obs)
        if not same_night and age is not None and age > max_age_days:
            continue
        ranked.append(((not same_night, age is None, age or 0.0, -record.ncombine), record))
    if not ranked:
        return None
    return min(ranked, key=lambda item: item[0])[1]


@dataclass(frozen=True)
class Plan:
    """Which masters calibrate a light, and what is missing.

    ``dark_mode`` is 'exact' (master dark of the light's exposure), 'scaled' (bias +
    dark current * t), 'bias' (bias only, dark current not removed: only with
    ``force``) or 'none'. ``ok`` is False when the policy forbids going on;
    ``reason`` says why.
    """

    dark_mode: str
    dark: MasterRecord | None
    bias: MasterRecord | None
    dark_current: MasterRecord | None
    flat: MasterRecord | None
    missing: tuple[str, ...]
    skipped: tuple[str, ...]
    ok: bool
    reason: str
    bad_pixels: object = None  # uint8 mask from these masters, set by the caller
    detector: object = None  # reduxd.steps.gain.Detector its flat measured, set by the caller

    def records(self):
        """Return ``{name: MasterRecord}`` for the masters the plan uses."""
        names = ("dark", "bias", "dark_current", "flat")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def sources(self):
        """Return ``{name: (file, checksum)}`` for the masters the plan uses."""
        return {k: (r.path, r.checksum) for k, r in self.records().items()}


def calibration_plan(candidates, info, calib_config, *, utc_offset_hours=0.0):
    """Decide how to calibrate a light from the masters available and the policy.

    Dark: the master dark of the light's exposure if there is one, else bias +
    dark current scaled to the exposure, else nothing (missing). Flat: the master
    flat of the light's filter, else nothing (missing). ``calib_config.no_dark`` and
    ``no_flat`` skip a step on purpose (the bias is still used with ``no_dark``);
    anything missing makes the plan not ``ok`` unless ``calib_config.force``, in
    which case the bias alone stands in for a missing dark.

    Parameters
    ----------
    candidates : sequence of MasterRecord
    info : FrameInfo
        The light.
    calib_config : reduxd.config.Calibration
    utc_offset_hours : float

    Returns
    -------
    Plan

    Examples
    --------
    >>> from reduxd.config import Calibration
    >>> from reduxd.frames import FrameInfo
    >>> info = FrameInfo('l.fits', 'light', 'default', 'Z', 30.0, None, None, (1, 1),
    ...                  (4, 4), -25.0, None, 'cam', None, None, None, None)
    >>> def rec(kind, exptime=None, filt=None):
    ...     return MasterRecord(kind, f'{kind}.fits', 'x', 'cam', (4, 4), (1, 1), None,
    ...                         exptime, filt, -25.0, None, None, 5, 'unknown')
    >>> masters = [rec('bias', 0.0), rec('dark', 60.0), rec('dark_current', 60.0),
    ...            rec('flat', 80.0, 'Z')]
    >>> plan = calibration_plan(masters, info, Calibration())
    >>> plan.dark_mode, plan.flat.path, plan.ok
    ('scaled', 'flat.fits', True)
    >>> plan = calibration_plan(masters[:2], info, Calibration())
    >>> plan.ok, plan.missing
    (False, ('dark', 'flat'))
    """
    candidates = list(candidates)

    def pick(kind, **extra):
        return select_master(
            candidates,
            kind=kind,
            info=info,
            utc_offset_hours=utc_offset_hours,
            temperature_tolerance=calib_config.temperature_tolerance,
            max_age_days=calib_config.max_age_days,
            **extra,
        )

    missing, skipped = [], []
    bias = pick("bias")
    dark = dark_current = None
    if calib_config.no_dark:
        skipped.append("dark")
        mode = "bias" if bias else "none"
    else:
        dark = pick("dark")
        dark_current = None if dark or bias is None else pick("dark_current")
        mode = "exact" if dark else "scaled" if dark_current else "none"
        if mode == "none":
            missing.append("dark")
            mode = "bias" if bias and calib_config.force else "none"
    flat = None
    if calib_config.no_flat:
        skipped.append("flat")
    else:
        flat = pick("flat")
        if flat is None:
            missing.append("flat")
    bias = bias if mode in ("scaled", "bias") else None
    ok = not missing or calib_config.force
    return Plan(
        dark_mode=mode,
        dark=dark,
        bias=bias,
        dark_current=dark_current,
        flat=flat,
        missing=tuple(missing),
        skipped=tuple(skipped),
        ok=ok,
        reason=_plan_reason(info, missing, calib_config.force),
    )


def _plan_reason(info, missing, force):
    if not missing:
        return "all masters found"
    what = " and ".join(
        {
            "dark": f"no dark for {info.exptime} s (nor bias + dark current)",
            "flat": f"no flat in filter {info.filter}",
        }[m]
        for m in missing
    )
    setting = f"instrument {info.instrument!r}, gain {info.gain}, binning {info.binning}"
    if force:
        return f"{what} ({setting}): going on because of force"
    return (
        f"{what} ({setting}); to go on without, use --force, --no-dark or --no-flat"
        " (config: force, no_dark, no_flat)"
    )
