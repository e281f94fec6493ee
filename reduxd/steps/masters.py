"""Master calibrations: bias, dark, dark current, flat; bad pixels; saturation.

The model of a raw frame is ``L = (eps * I + T) * t + B``: bias ``B``, dark
current ``T`` (ADU/s), flat response ``eps``. Masters are pixel-wise combinations
(median by default) of frames of one instrument, shape, binning, gain (and, for
darks, exposure; for flats, filter) taken at similar CCD temperatures:

- master bias: combined biases;
- master dark: combined darks (bias included, for one exposure time);
- dark current: ``(master dark - master bias) / t``, to build a dark for any exposure;
- master flat: each flat minus its own dark (the exact-exposure master dark, or
  ``bias + dark_current * t_flat``, subtracted frame by frame), combined, divided
  by its own median.

Each function takes ``(FrameInfo, FitsLayout)`` pairs (see :func:`load_frames`)
and returns a new :class:`MasterResult`; nothing passed in is modified.
"""

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.table import Table

from reduxd import __version__, fitsio, maskbits
from reduxd.frames import classify, night_of
from reduxd.steps.combine import combine_files, frame_median, median_in_place
from reduxd.steps.select import MasterRecord

KINDS = ("bias", "dark", "dark_current", "flat")
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class InputFile:
    """One raw frame that went into a master."""

    name: str  # file name without folders
    sha1: str
    exptime: float | None
    date_obs: str  # ISO 8601 UTC, '' when unknown


@dataclass(frozen=True, eq=False)
class MasterResult:
    """A master calibration: float32 pixels, header cards and what it was made from."""

    kind: str
    data: np.ndarray
    cards: tuple
    inputs: tuple[InputFile, ...]
    instrument: str
    shape: tuple[int, int]
    binning: tuple[int, int]
    gain: float | None
    exptime: float | None  # dark: its exposure; dark_current: that of its darks; flat: mean
    filter: str | None
    ccd_temp: float | None
    date_start: datetime | None  # DATE-OBS of the first input
    date_end: datetime | None  # DATE-OBS of the last input
    method: str
    path: str | None = None  # set when read back from a file
    checksum: str | None = None
    unstable: np.ndarray | None = None  # bool: pixels that flicker between the darks

    @property
    def ncombine(self):
        return len(self.inputs)

    def inputs_table(self):
        """Return the inputs as an astropy Table (name, sha1, exptime, date_obs)."""
        return Table(
            {
                "name": [f.name for f in self.inputs],
                "sha1": [f.sha1 for f in self.inputs],
                "exptime": [math.nan if f.exptime is None else f.exptime for f in self.inputs],
                "date_obs": [f.date_obs for f in self.inputs],
            }
        )

    def record(self, path, *, checksum, utc_offset_hours=0.0, id=None):
        """Return the :class:`MasterRecord` of this master once written to ``path``."""
        night = night_of(self.date_start, utc_offset_hours)
        return MasterRecord(
            kind=self.kind,
            path=str(path),
            checksum=checksum,
            instrument=self.instrument,
            shape=self.shape,
            binning=self.binning,
            gain=self.gain,
            exptime=self.exptime,
            filter=self.filter,
            ccd_temp=self.ccd_temp,
            date_start=self.date_start,
            date_end=self.date_end,
            ncombine=self.ncombine,
            night=night,
            id=id,
        )


def load_frames(paths, *, max_bytes, rules=None):
    """Probe and classify files: return ``(FrameInfo, FitsLayout)`` pairs.

    Examples
    --------
    >>> load_frames([], max_bytes=1)
    []
    """
    out = []
    for path in paths:
        layout = fitsio.probe(path, max_bytes=max_bytes)
        out.append((classify(layout.header, path, rules), layout))
    return out


def group_key(info):
    """Return what frames must share to be combined into one master.

    Examples
    --------
    >>> from reduxd.frames import FrameInfo
    >>> info = FrameInfo('d.fits', 'dark', 'default', None, 60.0, None, None, (1, 1),
    ...                  (4, 4), -25.0, None, 'cam', None, None, None, None)
    >>> group_key(info)
    ('dark', 'cam', (4, 4), (1, 1), None, 60.0, None)
    """
    exptime = round(info.exptime, 3) if info.kind == "dark" and info.exptime else None
    gain = None if info.gain is None else round(info.gain, 3)
    filt = info.filter if info.kind == "flat" else None
    return (info.kind, info.instrument, info.shape, info.binning, gain, exptime, filt)


def calibration_groups(frames, *, temperature_tolerance):
    """Split calibration frames into sets that can each make one master.

    Frames are grouped by :func:`group_key`, then by CCD temperature: a set spans at
    most ``temperature_tolerance`` degrees (frames without a temperature form their
    own set). Lights are ignored.

    Examples
    --------
    >>> calibration_groups([], temperature_tolerance=3.0)
    []
    """
    groups = {}
    for info, layout in frames:
        if info.kind != "light":
            groups.setdefault(group_key(info), []).append((info, layout))
    out = []
    for members in groups.values():
        out.extend(_split_by_temperature(members, temperature_tolerance))
    return out


def _split_by_temperature(members, tolerance):
    unknown = [m for m in members if m[0].ccd_temp is None]
    known = sorted((m for m in members if m[0].ccd_temp is not None), key=lambda m: m[0].ccd_temp)
    sets = [unknown] if unknown else []
    for member in known:
        if (
            sets
            and sets[-1] is not unknown
            and member[0].ccd_temp - sets[-1][0][0].ccd_temp <= (tolerance)
        ):
            sets[-1].append(member)
        else:
            sets.append([member])
    return sets


def _check_set(frames, kind, temperature_tolerance):
    if not frames:
        raise ValueError(f"no {kind} frames given")
    infos = [info for info, _ in frames]
    wrong = [i.path for i in infos if i.kind != kind]
    if wrong:
        raise ValueError(f"not {kind} frames: {wrong}")
    keys = {group_key(i) for i in infos}
    if len(keys) > 1:
        raise ValueError(f"{kind} frames differ (instrument, shape, binning, gain ...): {keys}")
    temps = [i.ccd_temp for i in infos if i.ccd_temp is not None]
    spread = max(temps) - min(temps) if temps else 0.0
    if temperature_tolerance is not None and spread > temperature_tolerance:
        raise ValueError(
            f"{kind} frames span {min(temps):.1f}..{max(temps):.1f} C, "
            f"more than {temperature_tolerance} C"
        )
    return infos


def _inputs(frames):
    return tuple(
        InputFile(
            name=Path(info.path).name,
            sha1=layout.sha1 or fitsio.file_checksum(layout.path),
            exptime=info.exptime,
            date_obs=_iso(info.date_obs),
        )
        for info, layout in frames
    )


def _iso(stamp):
    return "" if stamp is None else stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _result(kind, data, frames, infos, *, method, exptime, clip_sigma, extra=()):
    """Build the MasterResult and its header cards from the inputs' FrameInfos."""
    dated = sorted(i.date_obs for i in infos if i.date_obs is not None)
    temps = [i.ccd_temp for i in infos if i.ccd_temp is not None]
    first = infos[0]
    result = dict(
        kind=kind,
        data=data,
        inputs=_inputs(frames),
        instrument=first.instrument,
        shape=tuple(data.shape),
        binning=first.binning,
        gain=first.gain,
        exptime=exptime,
        filter=first.filter if kind == "flat" else None,
        ccd_temp=float(np.mean(temps)) if temps else None,
        date_start=dated[0] if dated else None,
        date_end=dated[-1] if dated else None,
        method=method,
    )
    settings = {"OFFSET": first.offset, "READOUTM": first.readout_mode}
    cards = _cards(result, settings, clip_sigma) + list(extra) + _input_history(result["inputs"])
    return MasterResult(cards=tuple(cards), **result)


def _cards(r, settings, clip_sigma):
    units = {"dark_current": "adu/s", "flat": ""}
    cards = [
        ("RDXKIND", r["kind"], "reduxd master kind"),
        ("FILTER", r["filter"] or "", "filter ('' for none)"),
        ("EXPTIME", _exptime_value(r), _exptime_comment(r["kind"])),
        ("NCOMBINE", len(r["inputs"]), "number of frames combined"),
        ("INSTRUME", r["instrument"], "instrument of the inputs"),
        ("XBINNING", r["binning"][0], "binning along x"),
        ("YBINNING", r["binning"][1], "binning along y"),
        ("RDXSHAPE", f"{r['shape'][0]} x {r['shape'][1]}", "ny x nx of the inputs"),
        ("BUNIT", units.get(r["kind"], "adu"), "unit of the data"),
        ("RDXCOMB", r["method"], "pixel-wise combination of the inputs"),
        ("RDXVERS", __version__, "reduxd version"),
    ]
    if r["method"] == "sigma_clip":
        cards.append(("RDXCLIP", float(clip_sigma), "sigma-clipping threshold"))
    optional = [
        ("GAIN", r["gain"], "camera gain setting"),
        ("OFFSET", settings["OFFSET"], "camera offset setting"),
        ("READOUTM", settings["READOUTM"], "readout mode"),
        ("CCD-TEMP", _round(r["ccd_temp"]), "[C] mean CCD temperature of the inputs"),
        ("DATE-OBS", _iso(r["date_start"]) or None, "[UTC] start of the first input"),
        ("RDXFIRST", _iso(r["date_start"]) or None, "[UTC] DATE-OBS of the first input"),
        ("RDXLAST", _iso(r["date_end"]) or None, "[UTC] DATE-OBS of the last input"),
    ]
    return cards + [card for card in optional if card[1] is not None]


def _round(value):
    return None if value is None else round(value, 4)


def _exptime_value(r):
    return 0.0 if r["exptime"] is None else float(r["exptime"])


def _exptime_comment(kind):
    return {
        "dark_current": "[s] exposure of its darks (data are ADU/s)",
        "flat": "[s] mean exposure of the inputs",
    }.get(kind, "[s] exposure time")


def _input_history(inputs):
    lines = [("HISTORY", f"reduxd {__version__}: combined {len(inputs)} frames:", "")]
    lines += [("HISTORY", f"input {f.name} sha1={f.sha1}", "") for f in inputs]
    return lines


def make_bias(
    frames,
    *,
    method="median",
    clip_sigma=3.0,
    max_memory_mb=2048,
    temperature_tolerance=None,
    threads=2,
):
    """Combine bias frames into a master bias.

    Parameters
    ----------
    frames : sequence of (FrameInfo, FitsLayout)
        Biases of one instrument, shape, binning and gain (see :func:`load_frames`).
    method : {'median', 'sigma_clip'}
    clip_sigma : float
    max_memory_mb : float
    temperature_tolerance : float, optional
        Largest spread of CCD temperatures allowed in the set (None: not checked).
    threads : int

    Returns
    -------
    MasterResult

    Raises
    ------
    ValueError
        The frames are not all biases of one camera setting.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> tmp = tempfile.mkdtemp(); paths = []
    >>> for v in (100, 102, 101):
    ...     paths.append(os.path.join(tmp, f'b{v}.fits'))
    ...     h = fits.Header({'IMAGETYP': 'BIAS', 'INSTRUME': 'cam'})
    ...     fits.PrimaryHDU(np.full((4, 4), v, np.uint16), h).writeto(paths[-1])
    >>> bias = make_bias(load_frames(paths, max_bytes=10**6))
    >>> float(bias.data[0, 0]), bias.ncombine, dict((c[0], c[1]) for c in bias.cards)['RDXKIND']
    (101.0, 3, 'bias')
    """
    infos = _check_set(frames, "bias", temperature_tolerance)
    data = combine_files(
        [lay for _, lay in frames],
        method=method,
        clip_sigma=clip_sigma,
        max_memory_mb=max_memory_mb,
        threads=threads,
    )
    return _result("bias", data, frames, infos, method=method, exptime=0.0, clip_sigma=clip_sigma)


def make_dark(
    frames,
    *,
    method="median",
    clip_sigma=3.0,
    max_memory_mb=2048,
    temperature_tolerance=None,
    threads=2,
):
    """Combine darks of one exposure time into a master dark (bias included).

    Parameters are those of :func:`make_bias`; the darks must also share their
    exposure time.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> tmp = tempfile.mkdtemp(); paths = []
    >>> for v in (110, 130, 120):
    ...     paths.append(os.path.join(tmp, f'd{v}.fits'))
    ...     h = fits.Header({'IMAGETYP': 'DARK', 'EXPTIME': 60.0})
    ...     fits.PrimaryHDU(np.full((4, 4), v, np.uint16), h).writeto(paths[-1])
    >>> dark = make_dark(load_frames(paths, max_bytes=10**6))
    >>> float(dark.data[0, 0]), dark.exptime
    (120.0, 60.0)
    """
    infos = _check_set(frames, "dark", temperature_tolerance)
    data = combine_files(
        [lay for _, lay in frames],
        method=method,
        clip_sigma=clip_sigma,
        max_memory_mb=max_memory_mb,
        threads=threads,
    )
    return _result(
        "dark",
        data,
        frames,
        infos,
        method=method,
        exptime=infos[0].exptime,
        clip_sigma=clip_sigma,
    )


def make_dark_current(dark, bias):
    """Return the dark-current rate ``(dark - bias) / t`` (ADU/s) as a new master.

    Parameters
    ----------
    dark, bias : MasterResult
        A master dark with a positive exposure time and the master bias of the same
        camera setting.

    Returns
    -------
    MasterResult
        ``kind='dark_current'``; its inputs are those of both masters.

    Examples
    --------
    >>> def master(kind, value, t):
    ...     return MasterResult(kind, np.full((2, 2), value, np.float32), (), (), 'cam',
    ...                         (2, 2), (1, 1), None, t, None, -10.0, None, None, 'median')
    >>> dc = make_dark_current(master('dark', 130.0, 60.0), master('bias', 100.0, 0.0))
    >>> float(dc.data[0, 0]), dc.kind
    (0.5, 'dark_current')
    """
    if dark.kind != "dark" or bias.kind != "bias":
        raise ValueError(f"need a dark and a bias, got {dark.kind} and {bias.kind}")
    if not dark.exptime or dark.exptime <= 0:
        raise ValueError(f"the master dark has no usable exposure time ({dark.exptime})")
    if dark.data.shape != bias.data.shape:
        raise ValueError(f"dark {dark.data.shape} and bias {bias.data.shape} differ in shape")
    data = np.subtract(dark.data, bias.data, dtype=np.float32)
    data /= np.float32(dark.exptime)
    inputs = dark.inputs + bias.inputs
    result = dict(
        kind="dark_current",
        data=data,
        inputs=inputs,
        instrument=dark.instrument,
        shape=dark.shape,
        binning=dark.binning,
        gain=dark.gain,
        exptime=dark.exptime,
        filter=None,
        ccd_temp=dark.ccd_temp,
        date_start=dark.date_start,
        date_end=dark.date_end,
        method=dark.method,
    )
    history = [
        ("HISTORY", f"reduxd {__version__}: (master dark - master bias) / {dark.exptime} s", ""),
        *source_cards({"dark": _source(dark), "bias": _source(bias)}),
    ]
    settings = {key: _card(dark.cards, key) for key in ("OFFSET", "READOUTM")}
    clip_sigma = _card(dark.cards, "RDXCLIP")  # sigma-clipped darks say so
    cards = _cards(result, settings, clip_sigma) + history + _input_history(inputs)
    return MasterResult(cards=tuple(cards), unstable=dark.unstable, **result)


def _card(cards, key):
    return next((c[1] for c in cards if c[0] == key), None)


def _source(master):
    if master is None or master.path is None:
        return None
    return (Path(master.path).name, master.checksum or "")


SOURCE_KEYS = {
    "bias": ("RDXBIAS", "RDXBIASC"),
    "dark": ("RDXDARK", "RDXDARKC"),
    "dark_current": ("RDXDCUR", "RDXDCURC"),
    "flat": ("RDXFLAT", "RDXFLATC"),
    "bad_pixels": ("RDXBPM", "RDXBPMC"),
}


def source_cards(sources):
    """Cards naming each master used: file name and checksum."""
    cards = []
    for name, source in sources.items():
        if source is None:
            continue
        key, sum_key = SOURCE_KEYS[name]
        cards.append((key, Path(str(source[0])).name, f"master {name} file"))
        cards.append((sum_key, str(source[1]), f"sha1 of the {key} file"))
    return cards


def make_flat(
    frames,
    *,
    dark=None,
    bias=None,
    dark_current=None,
    flat_scale="median",
    method="median",
    clip_sigma=3.0,
    max_memory_mb=2048,
    temperature_tolerance=None,
    sources=None,
    threads=2,
    levels=None,
):
    """Combine flats of one filter, each minus its own dark, normalised to 1.

    Parameters
    ----------
    frames : sequence of (FrameInfo, FitsLayout)
        Flats of one instrument, shape, binning, gain and filter.
    dark, bias, dark_current : MasterResult, optional
        Each flat ``i`` loses the master dark when its exposure equals the flat's,
        otherwise ``bias + dark_current * t_i``, otherwise the bias alone (dark
        current not removed); with none of them nothing is subtracted. The header
        says which (``RDXFSUB``).
    flat_scale : {'none', 'median'}
        'none': combine as they are (the observatory's recipe); 'median': scale each
        dark-subtracted flat to its own median first.
    method, clip_sigma, max_memory_mb, temperature_tolerance, threads
        As for :func:`make_bias`.
    sources : dict, optional
        ``{'dark' | 'bias' | 'dark_current': (file, checksum)}`` named in the header;
        default from the masters' ``path`` and ``checksum``.
    levels : sequence of float, optional
        The flats' levels from :func:`flat_levels` (computed elsewhere, e.g. in
        parts in worker processes); default: computed here.

    Returns
    -------
    MasterResult
        Float32 flat with median 1.

    Raises
    ------
    ValueError
        Mixed frames, or a flat whose level is not positive after dark subtraction.

    Examples
    --------
    >>> import tempfile, os
    >>> from astropy.io import fits
    >>> tmp = tempfile.mkdtemp(); paths = []
    >>> for i, v in enumerate((1000, 1100, 1200)):
    ...     paths.append(os.path.join(tmp, f'f{i}.fits'))
    ...     h = fits.Header({'IMAGETYP': 'FLAT', 'FILTER': 'v', 'EXPTIME': 5.0})
    ...     data = np.full((4, 4), v, np.uint16); data[0, 0] = v // 2
    ...     fits.PrimaryHDU(data, h).writeto(paths[-1])
    >>> flat = make_flat(load_frames(paths, max_bytes=10**6))
    >>> float(flat.data[0, 0]), float(flat.data[1, 1]), flat.filter
    (0.5, 1.0, 'V')
    """
    if flat_scale not in ("none", "median"):
        raise ValueError(f"unknown flat_scale {flat_scale!r} (expected 'none' or 'median')")
    infos = _check_set(frames, "flat", temperature_tolerance)
    layouts = [lay for _, lay in frames]
    how = [_dark_for_flat(info.exptime, dark, bias, dark_current) for info in infos]
    offsets = _flat_offsets(how, infos, dark, bias, dark_current)
    scale = None
    if flat_scale == "median":
        if levels is None:
            levels = flat_levels(frames, dark=dark, bias=bias, dark_current=dark_current,
                                 max_memory_mb=max_memory_mb)  # fmt: skip
        scale = [1.0 / level for level in levels]
    data = combine_files(
        layouts,
        method=method,
        clip_sigma=clip_sigma,
        max_memory_mb=max_memory_mb,
        scale=scale,
        offsets=offsets,
        threads=threads,
    )
    level = float(median_in_place(data.copy()))  # np.median(data), one partition
    if not level > 0:
        raise ValueError(f"combined flat has median {level}: not usable")
    data /= np.float32(level)
    if sources is None:
        sources = {"dark": dark, "bias": bias, "dark_current": dark_current}
        sources = {k: _source(v) for k, v in sources.items()}
    extra = _flat_cards(how, flat_scale, level, sources)
    exptime = float(np.mean([i.exptime or 0.0 for i in infos]))
    return _result(
        "flat",
        data,
        frames,
        infos,
        method=method,
        exptime=exptime,
        clip_sigma=clip_sigma,
        extra=extra,
    )


SUBTRACTED = {"dark": ("dark",), "bias": ("bias",), "bias+dark_current*t": ("bias", "dark_current")}


def flat_masters_used(frames, *, dark=None, bias=None, dark_current=None):
    """The masters the flats' own darks are made of: ``{'dark' | 'bias' | 'dark_current': m}``."""
    given = {"dark": dark, "bias": bias, "dark_current": dark_current}
    how = {_dark_for_flat(info.exptime, dark, bias, dark_current) for info, _lay in frames}
    return {name: given[name] for h in sorted(how) for name in SUBTRACTED.get(h, ())}


def flat_levels(frames, *, dark=None, bias=None, dark_current=None, max_memory_mb=2048):
    """The level of each flat: its median after its own dark (:func:`make_flat` divides by it).

    Raises
    ------
    ValueError
        A flat whose level is not positive after dark subtraction.
    """
    infos = [info for info, _lay in frames]
    how = [_dark_for_flat(info.exptime, dark, bias, dark_current) for info in infos]
    offsets = _flat_offsets(how, infos, dark, bias, dark_current)
    return [_positive_level(lay, offsets, i, max_memory_mb) for i, (_i, lay) in enumerate(frames)]


def _dark_for_flat(exptime, dark, bias, dark_current):
    if dark is not None and exptime is not None and math.isclose(exptime, dark.exptime or -1):
        return "dark"
    if bias is not None and dark_current is not None and exptime is not None:
        return "bias+dark_current*t"
    if bias is not None:
        return "bias"
    return "none"


def _flat_offsets(how, infos, dark, bias, dark_current):
    """The per-frame offset callable for :func:`combine_files` (bands, no full copies)."""
    if all(h == "none" for h in how):
        return None

    def offset(i, y0, y1):
        if how[i] == "dark":
            return dark.data[y0:y1]
        if how[i] == "bias":
            return bias.data[y0:y1]
        if how[i] == "none":
            return None
        band = dark_current.data[y0:y1] * np.float32(infos[i].exptime)
        band += bias.data[y0:y1]
        return band

    return offset


def _positive_level(layout, offsets, i, max_memory_mb):
    band = None if offsets is None else (lambda y0, y1: offsets(i, y0, y1))
    level = frame_median(layout, offset=band, max_memory_mb=max_memory_mb)
    if not level > 0:
        raise ValueError(f"{layout.path}: median {level} after dark subtraction: not a flat")
    return level


def _flat_cards(how, flat_scale, level, sources):
    used = sorted(set(how))
    cards = [
        ("RDXFSUB", ",".join(used), "subtracted from each flat before combining"),
        ("RDXFSCAL", flat_scale, "flats scaled to their own median first?"),
        ("RDXFLEV", round(level, 3), "[adu] median before normalising to 1"),
    ]
    keep = {n for h in used for n in SUBTRACTED.get(h, ())}
    cards += source_cards({k: v for k, v in sources.items() if k in keep})
    for h in used:
        cards.append(("HISTORY", f"reduxd {__version__}: flats minus {h}, then combined", ""))
    cards.append(("HISTORY", f"reduxd {__version__}: divided by its median {level:.3f}", ""))
    return cards


def _data(value):
    return value.data if isinstance(value, MasterResult) else value


def robust_sigma(values):
    """Return ``1.4826 * MAD`` of the finite values (a new copy is made).

    Examples
    --------
    >>> round(robust_sigma(np.array([1.0, 2.0, 3.0, 4.0, 100.0])), 4)
    1.4826
    """
    finite = values[np.isfinite(values)]
    return float(MAD_TO_SIGMA * np.median(np.abs(finite - np.median(finite))))


def bad_pixel_mask(*, dark_current=None, flat=None, hot_sigma, low_flat, unstable=None):
    """Return a uint8 mask with :data:`reduxd.maskbits.BAD` on bad pixels.

    Bad means: not finite in a master, low in the flat (dead or nearly),
    unstable between the darks (``unstable``, see :mod:`reduxd.steps.unstable`), or,
    only when ``hot_sigma > 0``, dark current above ``median + hot_sigma *
    robust sigma``. Warm and hot pixels are *not* bad by default
    (``hot_sigma = 0``): the dark subtraction removes them, and flagging every
    star whose aperture touches one empties comparison ensembles.

    Parameters
    ----------
    dark_current : MasterResult or ndarray, optional
        Dark current; its non-finite pixels are bad, and with ``hot_sigma > 0``
        its hot pixels.
    flat : MasterResult or ndarray, optional
        Normalised flat: pixels below ``low_flat`` (or not finite) are dead or low.
    hot_sigma, low_flat : float
    unstable : ndarray of bool, optional
        Pixels that flicker between the darks of the set.

    Examples
    --------
    >>> dc = np.array([[50, .1, .12], [.09, .11, .1], [.1, .08, .1]], np.float32)
    >>> flat = np.ones((3, 3), np.float32); flat[2, 2] = 0.1
    >>> bad_pixel_mask(dark_current=dc, flat=flat, hot_sigma=0, low_flat=0.5)
    array([[0, 0, 0],
           [0, 0, 0],
           [0, 0, 1]], dtype=uint8)
    >>> bad_pixel_mask(dark_current=dc, flat=flat, hot_sigma=10, low_flat=0.5)
    array([[1, 0, 0],
           [0, 0, 0],
           [0, 0, 1]], dtype=uint8)
    """
    arrays = [a for a in (_data(dark_current), _data(flat)) if a is not None]
    if not arrays:
        raise ValueError("bad_pixel_mask needs a dark current or a flat")
    mask = np.zeros(arrays[0].shape, dtype=np.uint8)
    dc = _data(dark_current)
    if dc is not None:
        mask[~np.isfinite(dc)] = maskbits.BAD
    if dc is not None and hot_sigma > 0:
        limit = np.nanmedian(dc) + hot_sigma * max(robust_sigma(dc), 1e-6)
        mask[~(dc <= limit)] = maskbits.BAD
    fl = _data(flat)
    if fl is not None:
        mask[~(fl >= low_flat)] = maskbits.BAD
    if unstable is not None and unstable.shape == mask.shape:
        mask[unstable] = maskbits.BAD
    return mask


def saturation_level(header, camera=None):
    """Return the saturation level (ADU) of raw frames with this header.

    The camera's ``saturation_adu`` when set (> 0), else the largest value the
    file's integer type can hold (65535 for BITPIX=16 with BZERO=32768); float
    data: infinity.

    Examples
    --------
    >>> from astropy.io import fits
    >>> saturation_level(fits.Header({'BITPIX': 16, 'BZERO': 32768}))
    65535.0
    >>> saturation_level(fits.Header({'BITPIX': 16}))
    32767.0
    >>> from reduxd.config import Camera
    >>> saturation_level(fits.Header({'BITPIX': 16}), Camera(saturation_adu=60000.0))
    60000.0
    """
    if camera is not None and camera.saturation_adu > 0:
        return float(camera.saturation_adu)
    bitpix = int(header.get("ZBITPIX", header.get("BITPIX", 16)))
    if bitpix < 0:
        return math.inf
    stored = 255 if bitpix == 8 else 2 ** (bitpix - 1) - 1
    bzero = float(header.get("ZZERO", header.get("BZERO", 0.0)))
    bscale = float(header.get("ZSCALE", header.get("BSCALE", 1.0)))
    return bzero + bscale * stored


def check_master(new, previous, *, max_deviation):
    """Compare a new master with the previous one of its kind: ``(ok, reason)``.

    Levels are compared (median difference over the larger of the previous median
    and its robust sigma); flats, normalised to 1, are compared pixel by pixel
    (median absolute difference). Masters of another kind or shape are refused.

    Examples
    --------
    >>> def m(value):
    ...     return MasterResult('bias', np.full((4, 4), value, np.float32), (), (), '',
    ...                         (4, 4), (1, 1), None, 0.0, None, None, None, None, 'median')
    >>> check_master(m(1000.0), m(1010.0), max_deviation=0.5)[0]
    True
    >>> check_master(m(3000.0), m(1000.0), max_deviation=0.5)
    (False, 'bias median 3000 differs from the previous 1000 by 2 (limit 0.5)')
    """
    if previous is None:
        return True, "no previous master to compare with"
    if new.kind != previous.kind:
        return False, f"kind {new.kind} differs from the previous {previous.kind}"
    if new.data.shape != previous.data.shape:
        return False, f"shape {new.data.shape} differs from the previous {previous.data.shape}"
    if new.kind == "flat":
        diff = float(np.median(np.abs(new.data[::2, ::2] - previous.data[::2, ::2])))
        if not diff <= max_deviation:
            return False, f"flat differs from the previous by {diff:.3g} (limit {max_deviation})"
        return True, f"flat differs from the previous by {diff:.3g}"
    old = previous.data[::2, ::2]
    m_new, m_old = float(np.median(new.data[::2, ::2])), float(np.median(old))
    dev = abs(m_new - m_old) / max(abs(m_old), robust_sigma(old), 1e-6)
    text = f"{new.kind} median {m_new:.4g} differs from the previous {m_old:.4g} by {dev:.3g}"
    if not dev <= max_deviation:
        return False, f"{text} (limit {max_deviation})"
    return True, text
