"""Calibration sets and masters: the one owner of everything between a calibration frame
and the master a light is calibrated with.

:class:`Calibrations` gathers calibration frames into sets (one master each),
builds a set's masters when it stops growing (in a pool or in this process),
checks a new master against the one it follows, names and writes it, registers
it in the ledger, and answers which masters a light uses (its calibration plan,
with the bad-pixel mask of its dark current and flat, cached).
"""

import dataclasses
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from reduxd.errors import (
    FrameIncomplete,
    FrameRejected,
    MissingCalibration,
    ReduxdError,
    is_transient,
)
from reduxd.fitsio import file_checksum, probe
from reduxd.framemeta import FrameMeta
from reduxd.frames import classify, normalise_filter
from reduxd.log import get_logger
from reduxd.products.fitsout import read_master, write_master
from reduxd.products.naming import gain_label, safe_name, value_word
from reduxd.steps import gain as steps_gain
from reduxd.steps import masters as steps_masters
from reduxd.steps import unstable as steps_unstable
from reduxd.steps.select import calibration_plan, select_master

CALIBRATION_KINDS = ("bias", "dark", "flat")
BUILD_ORDER = {"bias": 0, "dark": 1, "flat": 2}
POOL_STAGE = {"bias": 0, "dark": 0, "flat": 1}  # darks combine beside the bias (see build)
MAX_BUILT = 8  # masters kept in memory after they are built, for the next ones

log = get_logger("reduxd.pipeline")


@dataclass
class CalSet:
    """Calibration frames that will make one master."""

    kind: str
    night: str
    members: list = field(default_factory=list)  # (frame_id, path, FrameInfo)
    last_arrival: float = 0.0


def header_info(row, config):
    """Classify a known frame from its header only (no pixels read); None if unreadable."""
    try:
        layout = probe(row.path, max_bytes=config.reading.max_bytes)
        return classify(layout.header, row.relpath, config.classify)
    except (FrameIncomplete, FrameRejected):
        return None


def make_masters(kind, layouts, *, opts, bias=None, dark=None, dark_current=None, flat_scale=None,
                 levels=None):  # fmt: skip
    """Combine one calibration set into its masters (a list); nothing written.

    ``kind`` 'bias' gives a master bias; 'dark' a master dark, and its dark
    current when ``bias`` is given; 'flat' a master flat (``levels``: the flats'
    levels, when already measured). Module level and with plain arguments, so
    that a worker process runs it. The set's detector measurements go on its
    masters (:func:`measure_set`).
    """
    if kind == "bias":
        return [measure_set(kind, layouts, steps_masters.make_bias(layouts, **opts))]
    if kind == "dark":
        made = measure_set(kind, layouts, steps_masters.make_dark(layouts, **opts))
        return [made] if bias is None else [made, steps_masters.make_dark_current(made, bias)]
    flat = steps_masters.make_flat(
        layouts, dark=dark, bias=bias, dark_current=dark_current, flat_scale=flat_scale,
        levels=levels, **opts,
    )  # fmt: skip
    cards = steps_gain.flat_gain_cards(layouts, dark=dark, bias=bias, dark_current=dark_current)
    return [dataclasses.replace(flat, cards=(*flat.cards, *cards))]


def _levels(parts):
    """The flats' levels measured in ``parts`` (futures); None when not measured or one failed
    (the flat is then made whole, and says why it cannot be)."""
    if parts is None:
        return None
    try:
        return [level for part in parts for level in part.result()]
    except Exception:
        return None


def measure_set(kind, layouts, master):
    """``master`` with its set's read noise (biases, darks) and unstable pixels (darks)."""
    frames = [lay for _info, lay in layouts]
    cards = steps_gain.read_noise_cards(frames, kind)
    unstable = steps_unstable.unstable_pixels(frames) if kind == "dark" else None
    if unstable is not None:
        cards.append(("RDXNUNST", int(unstable.sum()), "unstable pixels (extension UNSTABLE)"))
    return dataclasses.replace(master, cards=(*master.cards, *cards), unstable=unstable)


class Calibrations:
    """Calibration sets, masters and calibration plans of one pipeline.

    Parameters
    ----------
    config : reduxd.config.Config
    ledger : reduxd.store.Ledger
    clock : callable
        Monotonic clock (when a set last grew).
    cache : reduxd.reduce.MasterCache
        Master images in memory (shared with the lights' calibration).
    calibration_level : str
        Log level of the one line per calibration frame.
    """

    def __init__(self, config, *, ledger, clock, cache, calibration_level="info"):
        self.config = config
        self.ledger = ledger
        self.clock = clock
        self.cache = cache
        self.calibration_level = calibration_level
        self.outdir = Path(config.paths.outdir)
        self.sets = {}
        self._masters = None
        self._built = {}
        self._bpm = {}
        self._detectors = {}
        self._skips_logged = set()
        self._read = {}  # frame id: (layout with its SHA-1, file mtime) as its ingest read it
        self.restore_sets()

    # -- policy ------------------------------------------------------------------

    def is_excluded(self, filter_name):
        """True when lights in ``filter_name`` (as classified) are excluded (``-x``)."""
        aliases = self.config.classify.filter_aliases
        excluded = {normalise_filter(f, aliases) for f in self.config.calibration.exclude_filters}
        return bool(filter_name) and filter_name in excluded

    def skipped(self, kind, filter_name):
        """Why no master is built from frames of ``kind`` in ``filter_name`` (None: it is)."""
        cal = self.config.calibration
        if kind == "flat" and cal.no_flat:
            return "--no-flat"
        if kind == "flat" and self.is_excluded(filter_name):
            return f"filter {filter_name} excluded (-x)"
        if kind == "dark" and cal.no_dark:
            return "--no-dark"
        return None

    # -- frames in, sets -----------------------------------------------------------

    def ingest(self, row, raw, info, rel, path):
        """Record a calibration frame and put it in its set; return the reason if skipped."""
        night = info.night(self.config.site.utc_offset_hours)
        reason = self.skipped(info.kind, info.filter)
        if reason is not None:
            meta = FrameMeta(skipped=reason, filter=info.filter, exptime=info.exptime)
            self.ledger.finish(
                row.id, kind=info.kind, checksum=raw.checksum, night=night, info=meta
            )
            if (info.kind, reason) not in self._skips_logged:
                self._skips_logged.add((info.kind, reason))
                log.info("calibration_skipped", kind=info.kind, file=rel, reason=reason)
            return reason
        key = (info.kind, night, steps_masters.group_key(info))
        meta = FrameMeta(set=repr(key), exptime=info.exptime, filter=info.filter)
        self.ledger.finish(row.id, kind=info.kind, checksum=raw.checksum, night=night, info=meta)
        cal_set = self._add_to_set(row.id, path, info, night)
        self._read[row.id] = (dataclasses.replace(raw.layout, sha1=raw.checksum), row.mtime_ns)
        getattr(log, self.calibration_level)(
            "calibration_frame",
            file=rel,
            kind=info.kind,
            rule=info.kind_rule,
            filter=info.filter,
            exptime=info.exptime,
            set_size=len(cal_set.members),
        )
        return None

    def restore_sets(self):
        """Rebuild pending calibration sets from the ledger (after a restart, or when
        masters must be built again: see :meth:`repair`)."""
        rows = [
            r for kind in CALIBRATION_KINDS for r in self.ledger.frames(kind=kind, state="done")
        ]
        queued = {fid for cal_set in self.sets.values() for fid, _p, _i in cal_set.members}
        for row in rows:
            if row.info.master_tried or row.info.set is None:
                continue
            if row.id in queued or not row.path.exists():
                continue
            info = header_info(row, self.config)
            if info is None:
                continue
            self._add_to_set(row.id, row.path, info, row.night)

    def _add_to_set(self, frame_id, path, info, night):
        """Put a calibration frame in its set (created if new); return the set."""
        key = (info.kind, night, steps_masters.group_key(info))
        cal_set = self.sets.setdefault(key, CalSet(info.kind, night))
        cal_set.members.append((frame_id, str(path), info))
        cal_set.last_arrival = self.clock()
        return cal_set

    def idle(self):
        """Keys of the sets idle for ``set_timeout_seconds`` (at least two exposures)."""
        now = self.clock()
        return [k for k, s in self.sets.items() if now - s.last_arrival >= self._timeout(s)]

    def _timeout(self, cal_set):
        exptime = max((info.exptime or 0.0) for _fid, _p, info in cal_set.members)
        return max(self.config.watch.set_timeout_seconds, 2.0 * exptime)

    # -- building ------------------------------------------------------------------

    def build(self, keys, *, final, pool=None):
        """Build the masters of sets ``keys`` (kind by kind); return their records.

        With ``pool`` (a ``concurrent.futures`` executor) the biases and darks are
        combined there at once, then the flats: as soon as the bias and the darks
        of the flats' exposure are registered, when the flats need no other dark
        (:meth:`_flats_need_none_of`); this process registers and writes them in
        the same order as without it. A master dark needs no bias: its dark
        current is made here once the bias is registered, from the bias the
        darks would have been given after it (same pixels, same cards).
        """
        built, started, stages = [], {}, set()
        order = self._build_order(keys)
        for i, key in enumerate(order):
            cal_set = self.sets.get(key)
            if cal_set is None:
                continue
            stage = POOL_STAGE[key[0]]
            if pool is not None and stage not in stages:  # every set of this stage at once
                stages.add(stage)
                started.update(self._start([k for k in order if POOL_STAGE[k[0]] == stage], pool))
            records = self._build_set(key, cal_set, final=final, work=started.get(key))
            if records is not None:
                del self.sets[key]
                built.extend(records)
                for frame_id, _path, _info in cal_set.members:
                    self._read.pop(frame_id, None)
            if pool is not None and 1 not in stages and self._flats_need_none_of(order[i + 1 :]):
                stages.add(1)  # the flats start beside the darks they do not use
                started.update(self._start([k for k in order if POOL_STAGE[k[0]] == 1], pool))
        return built

    def _build_order(self, keys):
        """``keys`` kind by kind; among darks, first those of an exposure of the flats.

        The flats need the bias and the darks of their own exposure only (when
        there is one for each flat): built first, the flats can start before the
        other darks are done (see :meth:`_flats_need_none_of`).
        """
        flat_times = self._flat_exposures(keys)

        def rank(key):
            other = key[0] == "dark" and not _among(self._exposure(key), flat_times)
            return BUILD_ORDER[key[0]], other

        return sorted(keys, key=rank)

    def _flats_need_none_of(self, later):
        """True when the flats' masters are all registered and ``later`` (the sets still to
        register) hold none of them: only darks of other exposures.

        A flat is made with the bias and the dark of its exposure, and with the
        dark current only when that dark is missing: then it waits for every dark.
        """
        flats = [k for k in later if k[0] == "flat" and k in self.sets]
        if not flats or any(k[0] != "dark" for k in later if k[0] != "flat"):
            return False
        flat_times = self._flat_exposures(flats)
        darks = [self._exposure(k) for k in later if k[0] == "dark"]
        if None in flat_times or any(_among(t, flat_times) for t in darks):
            return False
        for key in flats:
            info = self.sets[key].members[0][2]
            if len(self._exposures(key)) != 1 or self._pick_loaded("dark", info) is None:
                return False
        return True

    def _flat_exposures(self, keys):
        return {t for k in keys if k[0] == "flat" and k in self.sets for t in self._exposures(k)}

    def _exposures(self, key):
        return {info.exptime for _fid, _path, info in self.sets[key].members}

    def _exposure(self, key):
        times = self._exposures(key) if key in self.sets else set()
        return next(iter(times)) if len(times) == 1 else None

    def _start(self, keys, pool):
        """Submit the combining of sets ``keys`` to ``pool``; ``{key: future}``.

        A set whose inputs are missing (a flat without its dark) or unreadable is
        left out: :meth:`_build_set` finds the same and says so.
        """
        started = {}
        for key in keys:
            if key not in self.sets:
                continue
            try:
                layouts = self._layouts(self.sets[key])
                inputs = self._master_inputs(key[0], layouts, dark_current=False)
            except (ReduxdError, OSError):
                continue
            started[key] = (layouts, inputs, self._measure_levels(key[0], layouts, inputs, pool))
        return {
            key: pool.submit(make_masters, key[0], layouts, **inputs, levels=_levels(parts))
            for key, (layouts, inputs, parts) in started.items()
        }

    def _measure_levels(self, kind, layouts, inputs, pool):
        """Futures of the levels of a set of flats, measured in two halves (None: not needed).

        A flat's level (its median after its dark, on one core) is a third of its
        combining: measured in two workers at once, then combined with them.
        """
        if kind != "flat" or inputs["flat_scale"] != "median" or len(layouts) < 2:
            return None
        masters = {k: inputs[k] for k in ("dark", "bias", "dark_current")}
        used = steps_masters.flat_masters_used(layouts, **masters)  # less to send
        half = len(layouts) // 2
        mb = inputs["opts"]["max_memory_mb"]
        return [
            pool.submit(steps_masters.flat_levels, part, max_memory_mb=mb, **used)
            for part in (layouts[:half], layouts[half:])
        ]

    def _finish(self, kind, results, info):
        """The masters of a set combined in a pool: a dark gets its dark current here."""
        if kind != "dark":
            return results
        bias = self._pick_loaded("bias", info)
        if bias is None:
            return results
        return [*results, steps_masters.make_dark_current(results[0], bias)]

    def _layouts(self, cal_set):
        return [(info, self._layout(fid, path)) for fid, path, info in cal_set.members]

    def _layout(self, frame_id, path):
        """A member's layout and SHA-1: as its ingest read them while the file keeps its size
        and time; else probed again, with the checksum the ledger took."""
        read = self._read.get(frame_id)
        if read is not None:
            layout, mtime_ns = read
            st = os.stat(path)
            if (st.st_size, st.st_mtime_ns) == (layout.file_size, mtime_ns):
                return layout
        layout = probe(path, max_bytes=self.config.reading.max_bytes)
        return dataclasses.replace(layout, sha1=self._sha1(frame_id))

    def _sha1(self, frame_id):
        """The checksum the ledger took when the frame was read (None: not known)."""
        row = self.ledger.frame(frame_id)
        return row.checksum if row is not None else None

    def _build_set(self, key, cal_set, *, final, work=None):
        """Build one set's masters; None to wait (a missing master), [] if it cannot be built.

        ``work``: the future of its combining, when started in a pool. A set that
        cannot be built (a member deleted or broken since it was ingested, an
        error while combining) is logged with the reason and its frames are
        marked (``master_error``): the service goes on without it.
        """
        kind, night, _ = key
        try:
            if work is not None:
                results = self._finish(kind, work.result(), cal_set.members[0][2])
            else:
                layouts = self._layouts(cal_set)
                results = make_masters(kind, layouts, **self._master_inputs(kind, layouts))
        except MissingCalibration as exc:
            if not final:
                return None
            return self._not_built(cal_set, night, exc.reason)
        except sqlite3.Error:
            raise  # the ledger's trouble, not the set's
        except Exception as exc:
            if is_transient(exc):
                raise  # the disk's trouble: built after the pause
            return self._not_built(cal_set, night, f"{type(exc).__name__}: {exc}")
        records = [self._register(result, night) for result in results]
        master_id = records[0].id if records[0] else None
        self._annotate(cal_set, master_id=master_id, rebuild=False)
        return [r for r in records if r is not None]

    def _not_built(self, cal_set, night, reason):
        log.error(
            "master_not_built",
            kind=cal_set.kind,
            night=night,
            frames=len(cal_set.members),
            reason=reason,
        )
        self._annotate(cal_set, master_id=None, master_error=reason, rebuild=False)
        return []

    def _annotate(self, cal_set, **changes):
        self.ledger.annotate([fid for fid, _p, _i in cal_set.members], **changes)

    def _master_inputs(self, kind, layouts, *, dark_current=True):
        """Keyword arguments of :func:`make_masters` for one set: options, masters it needs.

        ``dark_current=False``: darks get no bias (their dark current is made later).
        """
        cal = self.config.calibration
        opts = {
            "method": cal.combine,
            "clip_sigma": cal.clip_sigma,
            "max_memory_mb": cal.max_memory_mb,
        }
        info = layouts[0][0]
        if kind == "bias":
            return {"opts": opts}
        if kind == "dark":
            return {"opts": opts, "bias": self._pick_loaded("bias", info) if dark_current else None}
        exposures = {i.exptime for i, _ in layouts}
        dark = self._pick_loaded("dark", info) if len(exposures) == 1 else None
        bias = self._pick_loaded("bias", info)
        dark_current = self._pick_loaded("dark_current", info)
        if dark is None and dark_current is None and not (cal.no_dark or cal.force):
            raise MissingCalibration(
                info.path, f"no dark for flats of {info.filter} ({sorted(exposures)} s)"
            )
        return {"opts": opts, "bias": bias, "dark": dark, "dark_current": dark_current,
                "flat_scale": cal.flat_scale}  # fmt: skip

    def _pick_loaded(self, kind, info):
        cal = self.config.calibration
        exptime = info.exptime if kind == "dark" else None
        record = select_master(
            self.masters(),
            kind=kind,
            info=info,
            exptime=exptime,
            filter=None,
            temperature_tolerance=cal.temperature_tolerance,
            max_age_days=cal.max_age_days,
            utc_offset_hours=self.config.site.utc_offset_hours,
        )
        if record is None:
            return None
        built = self._built.get((record.path, record.checksum))
        if built is not None:
            return built
        return read_master(record.path, max_bytes=self.config.reading.max_bytes)

    # -- registering -----------------------------------------------------------------

    def _register(self, result, night):
        """Check, write and record a new master; None when it is rejected."""
        path = (self.outdir / "masters" / night / master_name(result)).absolute()
        previous = self._previous(result)
        ok, reason = (True, "")
        if previous is not None:
            old = read_master(previous.path, max_bytes=self.config.reading.max_bytes)
            ok, reason = steps_masters.check_master(
                result, old, max_deviation=self.config.calibration.master_max_deviation
            )
        if not ok:
            path = path.with_name(path.stem + ".rejected.fits")
        write_master(path, result)
        checksum = file_checksum(path)
        record = result.record(
            path, checksum=checksum, utc_offset_hours=self.config.site.utc_offset_hours
        )
        status = "valid" if ok else "rejected"
        record_id = self.ledger.add_master(record, status=status, reason=reason or None)
        self._masters = None
        for stale in self.masters():  # same file name rewritten: the old record is gone
            if stale.path == record.path and stale.id != record_id:
                self.ledger.reject_master(stale.id, f"replaced on disk by master {record_id}")
                self._masters = None
        if not ok:
            log.warning("master_rejected", kind=result.kind, file=str(path), reason=reason)
            return None
        # masters made next from this one (dark current, flat) need not read it back
        self._built[(record.path, checksum)] = dataclasses.replace(
            result, path=record.path, checksum=checksum
        )
        self.cache.put(record.path, checksum, result.data)  # nor the lights
        while len(self._built) > MAX_BUILT:  # a month-long daemon builds many
            self._built.pop(next(iter(self._built)))
        log.info(
            "master_built",
            kind=result.kind,
            file=str(path),
            ncombine=result.ncombine,
            filter=result.filter,
            exptime=result.exptime,
        )
        return dataclasses.replace(record, id=record_id)

    def _previous(self, result):
        same = [
            m
            for m in self.masters()
            if m.kind == result.kind
            and m.instrument == result.instrument
            and m.shape == tuple(result.shape)
            and m.binning == tuple(result.binning)
            and m.gain == result.gain
            and m.filter == result.filter
            and (result.kind not in ("dark", "dark_current") or m.exptime == result.exptime)
        ]
        return same[-1] if same else None

    def repair(self):
        """Valid masters whose file is gone are rejected and built again from their raw
        frames (their sets are queued); return them."""
        gone = [m for m in self.ledger.masters() if not Path(m.path).exists()]
        if not gone:
            return []
        ids = {m.id for m in gone}
        for m in gone:
            self.ledger.reject_master(m.id, "file missing: built again from its raw frames")
            log.warning("master_missing", kind=m.kind, file=str(m.path), action="rebuilt")
        members = [
            r.id
            for kind in CALIBRATION_KINDS
            for r in self.ledger.frames(kind=kind, state="done")
            if r.info.master_id in ids
        ]
        self.ledger.annotate(members, rebuild=True)
        self._masters = None
        self._built.clear()
        self._bpm.clear()
        self._detectors.clear()
        self.restore_sets()
        return gone

    # -- lights ------------------------------------------------------------------------

    def masters(self):
        """Valid masters known to the ledger (cached until one is added)."""
        if self._masters is None:
            self._masters = self.ledger.masters()
        return self._masters

    def best(self, info):
        """The calibration plan of a light (raw, without its bad-pixel mask)."""
        return calibration_plan(
            self.masters(),
            info,
            self.config.calibration,
            utc_offset_hours=self.config.site.utc_offset_hours,
        )

    def better_masters(self, row):
        """True when a reduced light's best masters now differ from those it used."""
        used = sorted(self.ledger.masters_used(row.id))
        info = header_info(row, self.config)
        if info is None:
            return False
        return sorted(r.id for r in self.best(info).records().values()) != used

    def plan(self, info, rel):
        """The calibration plan of light ``rel``, with its bad-pixel mask.

        Raises
        ------
        MissingCalibration
            A master the policy requires is not there (yet).
        """
        plan = self.best(info)
        if not plan.ok:
            raise MissingCalibration(rel, plan.reason)
        return self._with_detector(self._with_bad_pixels(plan, info))

    def _with_detector(self, plan):
        """``plan`` with the gain its master flat measured (photon transfer), if any."""
        if plan.flat is None:
            return plan
        key = (plan.flat.path, plan.flat.checksum)
        if key not in self._detectors:
            header = fits.getheader(plan.flat.path)
            self._detectors[key] = steps_gain.measured_detector(header)
        return dataclasses.replace(plan, detector=self._detectors[key])

    def _with_bad_pixels(self, plan, info):
        cal = self.config.calibration
        dc = plan.dark_current or select_master(
            self.masters(),
            kind="dark_current",
            info=info,
            temperature_tolerance=cal.temperature_tolerance,
            max_age_days=cal.max_age_days,
            exptime=None,
            utc_offset_hours=self.config.site.utc_offset_hours,
        )
        key = (dc.id if dc else None, plan.flat.id if plan.flat else None)
        if key == (None, None):
            return plan
        key += (plan.dark.id if plan.dark else None,)
        if key not in self._bpm:
            self._bpm[key] = steps_masters.bad_pixel_mask(
                dark_current=self.cache.get(dc),
                flat=self.cache.get(plan.flat),
                hot_sigma=cal.hot_sigma,
                low_flat=cal.low_flat,
                unstable=unstable_of(plan.dark) if plan.dark else unstable_of(dc),
            )
        return dataclasses.replace(plan, bad_pixels=self._bpm[key])


def _among(exptime, exptimes):
    """True when ``exptime`` is one of ``exptimes`` (as a dark matches a frame); None: unknown,
    taken as a match."""
    return exptime is None or any(math.isclose(exptime, t) for t in exptimes if t is not None)


def unstable_of(record):
    """The unstable-pixel mask (bool) a master dark or dark current carries (None: none)."""
    if record is None:
        return None
    with fits.open(record.path, memmap=False) as hdul:
        return np.asarray(hdul["UNSTABLE"].data, bool) if "UNSTABLE" in hdul else None


def master_name(result):
    """The file name of a master: kind, camera, size, binning, gain, exposure, filter."""
    parts = [
        result.kind,
        safe_name(result.instrument or "camera"),
        f"{result.shape[1]}x{result.shape[0]}",
        f"bin{result.binning[0]}x{result.binning[1]}",
        gain_label(result.gain),
    ]
    if result.kind in ("dark", "dark_current"):
        parts.append(f"{value_word(result.exptime)}s")
    if result.filter:
        parts.append(safe_name(result.filter))
    return "_".join(parts) + ".fits"
