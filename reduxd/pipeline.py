"""The pipeline: one worker that classifies, routes and reduces frames.

The daemon, the batch command and the tests all drive :class:`Pipeline`:

- :meth:`Pipeline.handle` takes one raw file: it records it in the ledger, reads
  it once, classifies it, and either adds it to a calibration set or reduces it
  (calibrate, measure, write rows and products).
- :meth:`Pipeline.tick` builds the masters of calibration sets that have stopped
  growing; :meth:`Pipeline.flush` builds all of them (batch, shutdown).
- When a master is registered, lights of that night that waited for it, or were
  reduced without it or with an older one, are reduced again; their new rows
  supersede the old ones (kept in the ledger, marked superseded).

Exceptions are caught in one place (:meth:`Pipeline.handle`): a bad file is
quarantined with the reason, a failing frame is retried up to ``max_tries``, and
the service goes on.
"""

import dataclasses
import math
import sqlite3
import time
from collections import defaultdict, deque
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

from reduxd.errors import (
    FrameIncomplete,
    FrameRejected,
    MissingCalibration,
    OutputUnavailable,
    ReduxdError,
    is_transient,
)
from reduxd.fingerprint import fingerprint
from reduxd.fitsio import file_checksum, probe
from reduxd.frames import classify, normalise_filter
from reduxd.log import get_logger
from reduxd.products import lightcurve, tables
from reduxd.products.fitsout import read_master, write_master
from reduxd.products.naming import gain_label, safe_name, value_word
from reduxd.reduce import (
    MasterCache,
    camera_for,
    compute_light,
    field_key,
    measured,
    quicklook_path,
    read_light,
    reduce_light,
    reduced_path,
    write_products,
)
from reduxd.steps import masters as steps_masters
from reduxd.steps.match import FieldReference
from reduxd.steps.select import calibration_plan, select_master

CALIBRATION_KINDS = ("bias", "dark", "flat")
BUILD_ORDER = {"bias": 0, "dark": 1, "flat": 2}
WAITING = "waiting for calibration"
OUTSIDE_LINK = (
    "symbolic link to a file outside the data folder: refused "
    "([reading] follow_links_outside = true to read it)"
)

log = get_logger("reduxd.pipeline")
MAX_BUILT = 8  # masters kept in memory after they are built, for the next ones
CURVE_MIN_FRAMES = 10  # a light curve is rebuilt after this many appended lights at least


@dataclass
class Outcome:
    """What happened to one file (one summary log line each)."""

    path: str
    status: str  # reduced|ingested|skipped|excluded|incomplete|quarantined|failed|waiting|changed
    kind: str | None = None
    reason: str | None = None
    n_stars: int = 0
    latency_ms: float | None = None
    info: dict = field(default_factory=dict)


@dataclass
class CalSet:
    """Calibration frames that will make one master."""

    kind: str
    night: str
    members: list = field(default_factory=list)  # (frame_id, path, FrameInfo)
    last_arrival: float = 0.0


class Pipeline:
    """Classify, route and reduce frames, with the ledger as the source of truth.

    Parameters
    ----------
    config : reduxd.config.Config
    ledger : reduxd.store.Ledger
        Owned by the calling thread.
    clock : callable
        Monotonic clock (injectable for tests).
    progress : callable, optional
        Called with the relative path before each frame is processed, including
        re-reductions run inside :meth:`tick` (the daemon feeds the watchdog there).
    should_stop : callable
        Re-reductions and retries stop between lights when it returns True (a
        stop was requested); what is left is found again after the restart.
    durable : bool
        Fsync each reduced FITS and PNG (the daemon). ``reduxd reduce`` passes
        False: it redoes lights whose products are missing on its next run.
    calibration_level : str
        Log level of the one line per calibration frame (``reduxd reduce``: debug).
    """

    def __init__(
        self,
        config,
        *,
        ledger,
        clock=time.monotonic,
        progress=None,
        durable=True,
        calibration_level="info",
        should_stop=lambda: False,
    ):
        self.config = config
        self.calibration_level = calibration_level
        self.should_stop = should_stop
        self.durable = durable
        self.ledger = ledger
        self.clock = clock
        self.progress = progress
        self.outdir = Path(config.paths.outdir)
        self.cache = MasterCache()
        self.sets = {}
        self.references = {}
        self.incomplete_since = {}
        self._incomplete_seen = set()
        self._curves_at = -math.inf
        self.dirty_curves = set()
        self.ensembles = {}  # (field, filter) -> its last light curve's target and ensemble
        self.curves = {}  # (field, filter) -> what appending to its light curve needs
        self._masters = None
        self.tables_stale = False  # rows in the ledger missing from the tables (disk full)
        self.to_release = set()  # frames left 'processing' by a ledger write error
        self._built = {}
        self._bpm = {}
        self._skips_logged = set()
        self._restore_sets()

    # -- entry points ------------------------------------------------------------

    def handle(self, path, root, *, since=None):
        """Process one raw file found under ``root``; return its :class:`Outcome`.

        ``since`` is when the file was seen stable (``clock`` time): the latency of
        a light is measured from it to its rows being written (default: from now).
        """
        path, root = Path(path), Path(root)
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except FileNotFoundError:
            return Outcome(str(path), "skipped", reason="file vanished")
        row = self.ledger.observe(str(root), rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
        if row.state == "seen" and self._outside_link(path, root):
            return self._quarantine(row, rel, OUTSIDE_LINK)
        if row.changed:
            log.error("raw_frame_changed", file=rel, reason=row.last_error)
            return Outcome(rel, "changed", reason=row.last_error)
        if row.state == "excluded":
            return Outcome(rel, "excluded", kind="light", reason=row.info.get("excluded"))
        if row.state != "seen":
            return Outcome(rel, "skipped", kind=row.kind, reason=row.state)
        return self._process(row, path, rel, since)

    def tick(self):
        """Build the masters of calibration sets idle for ``set_timeout_seconds``."""
        now = self.clock()
        ready = [k for k, s in self.sets.items() if now - s.last_arrival >= self._timeout(s)]
        built = self._build_sets(ready, final=False)
        self.update_curves(min_interval=30.0, final=False)
        return built

    def _timeout(self, cal_set):
        # the next frame of a set comes one exposure later: wait at least two exposures
        exptime = max((info.exptime or 0.0) for _fid, _p, info in cal_set.members)
        return max(self.config.watch.set_timeout_seconds, 2.0 * exptime)

    def flush(self, *, pool=None):
        """Build the masters of every pending calibration set (batch, shutdown).

        With ``pool`` (a ``concurrent.futures`` executor) the sets of one kind
        are combined there at once (biases, then darks, then flats); this
        process registers and writes them in the same order as without it.
        """
        built = self._build_sets(list(self.sets), final=True, pool=pool)
        self.update_curves()
        return built

    def retry_waiting(self):
        """Reduce lights that were waiting for a master; return their outcomes."""
        out = []
        for row in self.ledger.pending():
            if self.should_stop():
                break
            if (row.last_error or "").startswith(WAITING) and row.path.exists():
                out.append(self._process(row, row.path, row.relpath, again=True))
        return out

    # -- one frame ---------------------------------------------------------------

    def _process(self, row, path, rel, since=None, *, again=False):
        """Read, classify and route one frame. ``again``: a light retried or re-reduced
        after a master was built (its arrival says nothing about pending sets)."""
        if self.progress is not None:
            self.progress(rel)
        started = self.clock() if since is None else since
        try:
            raw = read_light(path, self.config)
            info = classify(raw.header, rel, self.config.classify)
        except FrameIncomplete as exc:
            return self._incomplete(row, rel, exc)
        except FrameRejected as exc:
            return self._quarantine(row, rel, exc.reason)
        except Exception as exc:  # e.g. astropy's VerifyError on an unparsable card
            if is_transient(exc):
                raise
            return self._quarantine(row, rel, f"header unusable: {type(exc).__name__}: {exc}")
        self.incomplete_since.pop(row.id, None)
        self.ledger.begin(row.id)
        try:
            if info.kind == "light":
                return self._light(row, raw, info, rel, started, again=again)
            return self._calibration(row, raw, info, rel, path)
        except MissingCalibration as exc:
            self.ledger.defer(row.id, f"{WAITING}: {exc.reason}")
            if row.last_error != f"{WAITING}: {exc.reason}":  # each problem logged once
                log.warning("light_waiting", file=rel, reason=exc.reason)
            return Outcome(rel, "waiting", kind="light", reason=exc.reason)
        except KeyboardInterrupt:  # a forced stop: the frame waits, its attempt not spent
            self.ledger.defer(row.id, "interrupted by a forced stop")
            raise
        except Exception as exc:  # the one place that catches everything
            if is_transient(exc):
                self._pause_frame(row, rel, exc)  # raises OutputUnavailable
            reason = f"{type(exc).__name__}: {exc}"
            state = self.ledger.fail(row.id, reason, max_tries=self.config.watch.max_tries)
            log.exception("frame_failed", file=rel, state=state, reason=reason)
            return Outcome(rel, "failed", kind=info.kind, reason=reason)

    def _pause_frame(self, row, rel, exc):
        """A write error of the disk: the frame waits, its attempt not spent; raise.

        If the ledger itself cannot be written the frame is remembered and
        released by :meth:`resume`.
        """
        reason = exc.reason if isinstance(exc, OutputUnavailable) else f"{rel}: {exc}"
        try:
            if self.ledger.frame(row.id).state == "processing":
                self.ledger.defer(row.id, f"output unavailable: {reason}")
        except Exception as ledger_exc:
            if not is_transient(ledger_exc):
                raise
            self.to_release.add(row.id)
        raise OutputUnavailable(reason) from exc

    def resume(self):
        """After a write error: release held frames and repair the tables; raise if still failing.

        Raises
        ------
        OutputUnavailable
            The disk still refuses writes.
        """
        try:
            for frame_id in sorted(self.to_release):
                if self.ledger.frame(frame_id).state == "processing":
                    self.ledger.defer(frame_id, "output unavailable (released)")
                self.to_release.discard(frame_id)
            if self.tables_stale:
                self.sync_tables()
                self.tables_stale = False
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise OutputUnavailable(str(exc)) from exc

    def _outside_link(self, path, root):
        """A link (or a link in the path) leading out of ``root``, unless the config allows it."""
        if self.config.reading.follow_links_outside:
            return False
        return not Path(path).resolve().is_relative_to(Path(root).resolve())

    def _quarantine(self, row, rel, reason):
        self.ledger.quarantine(row.id, reason)
        log.error("frame_quarantined", file=rel, reason=reason)
        return Outcome(rel, "quarantined", reason=reason)

    def _incomplete(self, row, rel, exc):
        first = self.incomplete_since.setdefault(row.id, self.clock())
        if self.clock() - first >= self.config.watch.incomplete_timeout_seconds:
            reason = f"still incomplete after {self.config.watch.incomplete_timeout_seconds:g} s: "
            self.ledger.quarantine(row.id, reason + exc.reason)
            log.error("frame_quarantined", file=rel, reason=reason + exc.reason)
            return Outcome(rel, "quarantined", reason=reason + exc.reason)
        self.ledger.fail(row.id, f"incomplete: {exc.reason}", max_tries=10**9)
        if not self._incomplete_logged(row.id):
            log.info("frame_incomplete", file=rel, reason=exc.reason)  # once per frame
        return Outcome(rel, "incomplete", reason=exc.reason)

    def _incomplete_logged(self, frame_id):
        logged = frame_id in self._incomplete_seen
        self._incomplete_seen.add(frame_id)
        return logged

    def calibration_skipped(self, kind, filter_name):
        """Why no master is built from frames of ``kind`` in ``filter_name`` (None: it is)."""
        cal = self.config.calibration
        if kind == "flat" and cal.no_flat:
            return "--no-flat"
        if kind == "flat" and self.is_excluded(filter_name):
            return f"filter {filter_name} excluded (-x)"
        if kind == "dark" and cal.no_dark:
            return "--no-dark"
        return None

    def _skip_calibration(self, row, raw, info, rel, night, reason):
        """Record a calibration frame no master will be built from (logged once per reason)."""
        self.ledger.finish(
            row.id,
            kind=info.kind,
            checksum=raw.checksum,
            night=night,
            info={"skipped": reason, "filter": info.filter, "exptime": info.exptime},
        )
        if (info.kind, reason) not in self._skips_logged:
            self._skips_logged.add((info.kind, reason))
            log.info("calibration_skipped", kind=info.kind, file=rel, reason=reason)
        return Outcome(rel, "ingested", kind=info.kind, reason=f"no master: {reason}")

    def _calibration(self, row, raw, info, rel, path):
        night = info.night(self.config.site.utc_offset_hours)
        skipped = self.calibration_skipped(info.kind, info.filter)
        if skipped is not None:
            return self._skip_calibration(row, raw, info, rel, night, skipped)
        key = (info.kind, night, steps_masters.group_key(info))
        info_json = {"set": repr(key), "exptime": info.exptime, "filter": info.filter}
        self.ledger.finish(
            row.id, kind=info.kind, checksum=raw.checksum, night=night, info=info_json
        )
        cal_set = self._add_to_set(row.id, path, info, night)
        getattr(log, self.calibration_level)(
            "calibration_frame",
            file=rel,
            kind=info.kind,
            rule=info.kind_rule,
            filter=info.filter,
            exptime=info.exptime,
            set_size=len(cal_set.members),
        )
        return Outcome(rel, "ingested", kind=info.kind)

    def _light(self, row, raw, info, rel, started, *, again=False):
        cfg = self.config
        night = info.night(cfg.site.utc_offset_hours)
        if self._excluded(info):
            return self._exclude(row, info, rel, raw.checksum, night)
        first = self.ledger.duplicate_of(row.id, raw.checksum)
        if first is not None:
            return self._duplicate(row, rel, raw.checksum, night, first)
        if self.sets and not again:  # the camera moved on to lights: pending sets are complete
            self._build_sets(list(self.sets), final=False)
        plan = self._plan(info, rel)
        key = field_key(info, rel)
        base = self.reference(key)
        result = reduce_light(
            raw,
            info,
            plan,
            cache=self.cache,
            config=cfg,
            camera=camera_for(cfg, info),
            reference=base,
            night=night,
            relpath=rel,
        )
        # products first: a light the ledger calls done always has them
        write_products(self.outdir, rel, result, cfg.output, durable=self.durable)
        return self._commit(row, info, rel, plan, measured(result, raw.checksum), base, started)

    def _excluded(self, info):
        return self.is_excluded(info.filter)

    def is_excluded(self, filter_name):
        """True when lights in ``filter_name`` (as classified) are excluded (``-x``)."""
        aliases = self.config.classify.filter_aliases
        excluded = {normalise_filter(f, aliases) for f in self.config.calibration.exclude_filters}
        return bool(filter_name) and filter_name in excluded

    def _exclude(self, row, info, rel, checksum, night):
        self.ledger.exclude(row.id, checksum=checksum, night=night, info={"excluded": info.filter})
        return Outcome(rel, "excluded", kind="light", reason=f"filter {info.filter} excluded")

    def _duplicate(self, row, rel, checksum, night, first):
        """A byte-identical copy of a light already reduced: recorded, not measured again."""
        reason = f"duplicate of {first.relpath} (same checksum)"
        info = {"excluded": "duplicate", "duplicate_of": first.relpath}
        self.ledger.finish(row.id, kind="light", checksum=checksum, night=night, info=info)
        log.warning("frame_duplicate", file=rel, duplicate_of=first.relpath)
        return Outcome(rel, "excluded", kind="light", reason=reason)

    def _plan(self, info, rel):
        plan = calibration_plan(
            self.masters(),
            info,
            self.config.calibration,
            utc_offset_hours=self.config.site.utc_offset_hours,
        )
        if not plan.ok:
            raise MissingCalibration(rel, plan.reason)
        return self._with_bad_pixels(plan, info)

    def _commit(self, row, info, rel, plan, result, base, started):
        """Record a reduced light: ledger, star IDs, tables, one log line."""
        key = field_key(info, rel)
        night = info.night(self.config.site.utc_offset_hours)
        rows, reference = merge_new_stars(
            self.reference(key),
            base,
            result.reference,
            result.rows,
            radius=self.config.photometry.match_radius,
        )
        master_ids = sorted(r.id for r in plan.records().values())
        version = self.ledger.add_measurements(
            row.id,
            rows,
            calib=result.calib,
            master_ids=master_ids,
            fingerprint=fingerprint(self.config, plan),
        )
        self._save_reference(key, reference)
        extra = {
            "object": key,
            "filter": info.filter,
            "exptime": info.exptime,
            "gain": info.gain,
            "n_stars": len(rows),
            "offset": list(result.offset),
            "fwhm": result.fwhm,
            "calib": result.calib,
            "version": version,
        }
        self.ledger.finish(row.id, kind="light", checksum=result.checksum, night=night, info=extra)
        for r in rows:
            r["version"], r["current"] = version, 1
        try:
            self._write_rows(rows, version)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self.tables_stale = True  # the ledger has the rows: rewritten on resume()
            raise OutputUnavailable(f"{rel}: photometry table: {exc}") from exc
        self._curve_changed((key, info.filter or ""), rows, version)
        latency_ms = (self.clock() - started) * 1000.0  # rows and light curve written
        self._log_reduced(rel, key, info, rows, result, latency_ms, version)
        return Outcome(
            rel, "reduced", kind="light", n_stars=len(rows), latency_ms=latency_ms, info=extra
        )

    # -- batch: many lights, optionally in worker processes ----------------------

    def handle_many(self, items, *, pool=None, progress=None):
        """Reduce lights ``[(root, path)]`` in order; return their outcomes.

        Every light of a field is reduced, in ``pool`` when given, against the
        field's reference as it was when this run met the field (frozen). A
        field without one takes the reference its first light makes: its other
        lights are submitted once that light is done, while other fields' lights
        go on. Results are committed in the original order as they come; star
        IDs of new stars are given at commit time, so any number of workers
        gives the same tables.
        """
        outcomes, pending, frozen, firsts = [], deque(), {}, {}
        waiting = defaultdict(list)  # field: lights waiting for the field's first light
        for root, path in items:
            job = self._prepare(Path(root), Path(path))
            if isinstance(job, Outcome):
                outcomes.append(self._tick_progress(job, progress))
                continue
            light = _Light(*job, path=str(path), started=self.clock())
            self.ledger.begin(light.row.id)
            pending.append(light)
            self._release(waiting, firsts, frozen, pool, block=False)
            key = light.key
            if key in firsts:  # the field's first light is still running
                waiting[key].append(light)
            elif key not in frozen and self.reference(key) is None:  # the field's first light
                self._submit(light, None, pool)
                firsts[key] = light
            else:
                self._submit(light, frozen.setdefault(key, self.reference(key)), pool)
            outcomes += self._commit_ready(pending, progress, block=False)
        self._release(waiting, firsts, frozen, pool, block=True)
        outcomes += self._commit_ready(pending, progress, block=True)
        return outcomes

    def _submit(self, light, base, pool):
        night = light.info.night(self.config.site.utc_offset_hours)
        args = (light.path, light.rel, light.plan, base, self.config, night, self.durable)
        light.base = base
        light.work = pool.submit(compute_light, *args) if pool else _Done(compute_light, args)

    def _release(self, waiting, firsts, frozen, pool, *, block):
        """Freeze the reference of fields whose first light is done; submit their waiting lights.

        ``block``: wait until every first light is done.
        """
        while firsts:
            done = [key for key, first in firsts.items() if first.work.done()]
            if not done and not block:
                return
            if not done:
                works = [first.work for first in firsts.values()]
                futures.wait(works, return_when=futures.FIRST_COMPLETED)
                continue
            for key in done:
                frozen[key] = _reference_of(firsts.pop(key).work)
                for light in waiting.pop(key, ()):
                    self._submit(light, frozen[key], pool)

    def _commit_ready(self, pending, progress, *, block):
        """Commit lights from the front of ``pending`` while done (all of them: ``block``)."""
        outcomes = []
        while pending and (block or (pending[0].work is not None and pending[0].work.done())):
            light = pending.popleft()
            try:
                outcome = self._commit_result(light, light.work.result())
            except Exception as exc:  # a worker's failure, recorded like any other
                if is_transient(exc):
                    self._pause_frame(light.row, light.rel, exc)  # raises OutputUnavailable
                outcome = self._failed(light.row, light.rel, light.info, exc)
            outcomes.append(self._tick_progress(outcome, progress))
        return outcomes

    def _commit_result(self, light, result):
        """Commit a worker's result, or record the light as a copy of one already reduced."""
        first = self.ledger.duplicate_of(light.row.id, result.checksum)
        if first is not None:
            night = light.info.night(self.config.site.utc_offset_hours)
            return self._duplicate(light.row, light.rel, result.checksum, night, first)
        return self._commit(
            light.row, light.info, light.rel, light.plan, result, light.base, light.started
        )

    def _tick_progress(self, outcome, progress):
        if progress is not None:
            progress.step(outcome.path)
        return outcome

    def _prepare(self, root, path):
        """Ledger and plan for one light, from its header only; an Outcome if not to reduce."""
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        row = self.ledger.observe(str(root), rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
        if row.state != "seen" or self._outside_link(path, root):
            return self.handle(path, root)
        info = self._header_info(row)
        if info is None or info.kind != "light" or self._excluded(info):
            return self._process(row, path, rel)
        try:
            plan = self._plan(info, rel)
        except MissingCalibration:
            return self._process(row, path, rel)
        return row, rel, info, plan, field_key(info, rel)

    def _failed(self, row, rel, info, exc):
        if isinstance(exc, FrameRejected):
            self.ledger.quarantine(row.id, exc.reason)
            log.error("frame_quarantined", file=rel, reason=exc.reason)
            return Outcome(rel, "quarantined", reason=exc.reason)
        reason = f"{type(exc).__name__}: {exc}"
        state = self.ledger.fail(row.id, reason, max_tries=self.config.watch.max_tries)
        log.error("frame_failed", file=rel, state=state, reason=reason)
        return Outcome(rel, "failed", kind=info.kind, reason=reason)

    def _log_reduced(self, rel, key, info, rows, result, latency_ms, version):
        fields = {
            "file": rel,
            "object": key,
            "filter": info.filter,
            "n_stars": len(rows),
            "latency_ms": round(latency_ms, 1),
            "calib": result.calib,
            "fwhm": round(result.fwhm, 2),
        }
        if version > 1:
            fields["version"] = version
        target = self._target_mag(rows)
        if target is not None:
            fields["target_mag"] = target
        log.info("frame_reduced", **fields)

    def _target_mag(self, rows):
        """The configured target's differential magnitude in this frame, or None.

        Uses the field's ensemble from its last light curve; None before there is
        one, when no target is configured, or when the target is not measured here.
        """
        key = (rows[0]["object"], rows[0]["filter"]) if rows else None
        ensemble = self.ensembles.get(key)
        return lightcurve.frame_dmag(rows, ensemble) if ensemble else None

    def _write_rows(self, rows, version):
        save = self.config.output.save
        if version == 1:
            tables.append_rows(self.outdir, rows, save=save, durable=self.durable)
        else:
            self.rewrite_tables()

    def rewrite_tables(self):
        """Rewrite the photometry tables from the ledger (all versions, marked)."""
        tables.rewrite_rows(self.outdir, self._ledger_rows(), save=self.config.output.save)

    def sync_tables(self):
        """At start: make the tables hold exactly the ledger's rows; return what was done.

        Rows the ledger does not know (a fresh or different ledger on an existing
        output folder) are never dropped: both tables are first renamed aside
        (logged with their new names). A torn last line is repaired by the rewrite.
        Returns None (in sync), ``"rewritten"`` or ``"set aside"``.
        """
        csv_path, ecsv_path = tables.table_paths(self.outdir, self.config.output.save)
        rows = self._ledger_rows()
        found = tables.read_keys(csv_path)
        if found is None:
            if rows:
                tables.rewrite_rows(self.outdir, rows, save=self.config.output.save)
            return "rewritten" if rows else None
        keys, n_rows, torn = found
        known = {tables.row_key(r) for r in rows}
        unknown = keys - known
        if unknown:
            aside = tables.set_aside([csv_path, ecsv_path])
            log.warning(
                "tables_set_aside",
                files=[str(p) for p in aside],
                reason=f"{len(unknown)} of {n_rows} rows of {csv_path} are not in the ledger "
                f"{self.ledger.path} (a new or different ledger?): kept under the new names",
            )
        elif keys == known and n_rows == len(rows) and not torn and self._current_table_ok(rows):
            return None
        else:
            log.warning(
                "tables_rewritten",
                file=str(csv_path),
                reason=f"{n_rows} rows{' and a torn last line' if torn else ''}; "
                f"the ledger has {len(rows)}",
            )
        tables.rewrite_rows(self.outdir, rows, save=self.config.output.save)
        return "set aside" if unknown else "rewritten"

    def _current_table_ok(self, rows):
        """The table of current rows exists whenever there are rows."""
        return not rows or tables.current_path(self.outdir, self.config.output.save).exists()

    def _ledger_rows(self):
        return [
            {**m.row, "version": m.version, "current": int(not m.superseded)}
            for m in self.ledger.measurements(current_only=False)
        ]

    # -- field references --------------------------------------------------------

    def reference(self, key):
        if key not in self.references:
            data = self.ledger.load_reference(key)
            self.references[key] = FieldReference.from_dict(data) if data else None
        return self.references[key]

    def _save_reference(self, key, reference):
        if reference is not self.references.get(key):
            self.references[key] = reference
            self.ledger.save_reference(key, reference.to_dict())

    # -- masters -----------------------------------------------------------------

    def masters(self):
        """Valid masters known to the ledger (cached until one is added)."""
        if self._masters is None:
            self._masters = self.ledger.masters()
        return self._masters

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
        if key not in self._bpm:
            self._bpm[key] = steps_masters.bad_pixel_mask(
                dark_current=self.cache.get(dc),
                flat=self.cache.get(plan.flat),
                hot_sigma=cal.hot_sigma,
                low_flat=cal.low_flat,
            )
        return dataclasses.replace(plan, bad_pixels=self._bpm[key])

    def _restore_sets(self):
        """Rebuild pending calibration sets from the ledger (after a restart, or when
        masters must be built again: see :meth:`repair_masters`)."""
        rows = [
            r for kind in CALIBRATION_KINDS for r in self.ledger.frames(kind=kind, state="done")
        ]
        queued = {fid for cal_set in self.sets.values() for fid, _p, _i in cal_set.members}
        for row in rows:
            built = "master_id" in row.info and not row.info.get("rebuild")
            if built or "set" not in row.info or row.id in queued or not row.path.exists():
                continue
            info = self._header_info(row)
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

    def _header_info(self, row):
        """Classify a known frame from its header only (no pixels read)."""
        try:
            layout = probe(row.path, max_bytes=self.config.reading.max_bytes)
            return classify(layout.header, row.relpath, self.config.classify)
        except (FrameIncomplete, FrameRejected):
            return None

    def _build_sets(self, keys, *, final, pool=None):
        built, started, kinds = [], {}, set()
        for key in sorted(keys, key=lambda k: BUILD_ORDER[k[0]]):
            cal_set = self.sets.get(key)
            if cal_set is None:
                continue
            if pool is not None and key[0] not in kinds:  # every set of this kind at once
                kinds.add(key[0])
                started.update(self._start_masters([k for k in keys if k[0] == key[0]], pool))
            records = self._build_set(key, cal_set, final=final, work=started.get(key))
            if records is not None:
                del self.sets[key]
                built.extend(records)
        if built:
            nights = {r.night for r in built}
            self.retry_waiting()
            for night in sorted(nights):
                self.rereduce(night)
        return built

    def _start_masters(self, keys, pool):
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
                inputs = self._master_inputs(key[0], layouts)
            except (ReduxdError, OSError):
                continue
            started[key] = pool.submit(make_masters, key[0], layouts, **inputs)
        return started

    def _layouts(self, cal_set):
        return [
            (info, dataclasses.replace(self._probe(path), sha1=self._sha1(fid)))
            for fid, path, info in cal_set.members
        ]

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
                results = work.result()
            else:
                results = self._make_masters(kind, self._layouts(cal_set))
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
        self._annotate(cal_set, {"master_id": master_id, "rebuild": False})
        return [r for r in records if r is not None]

    def _probe(self, path):
        return probe(path, max_bytes=self.config.reading.max_bytes)

    def _not_built(self, cal_set, night, reason):
        log.error(
            "master_not_built",
            kind=cal_set.kind,
            night=night,
            frames=len(cal_set.members),
            reason=reason,
        )
        self._annotate(cal_set, {"master_id": None, "master_error": reason, "rebuild": False})
        return []

    def _sha1(self, frame_id):
        """The checksum the ledger took when the frame was read (None: not known)."""
        row = self.ledger.frame(frame_id)
        return row.checksum if row is not None else None

    def _annotate(self, cal_set, info):
        self.ledger.annotate([fid for fid, _p, _i in cal_set.members], info)

    def _make_masters(self, kind, layouts):
        return make_masters(kind, layouts, **self._master_inputs(kind, layouts))

    def _master_inputs(self, kind, layouts):
        """Keyword arguments of :func:`make_masters` for one set: options, masters it needs."""
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
            return {"opts": opts, "bias": self._pick_loaded("bias", info)}
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

    def _register(self, result, night):
        name = self._master_name(result)
        path = (self.outdir / "masters" / night / name).absolute()  # valid from any cwd
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

    def _master_name(self, result):
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

    # -- repairs (start and reconciliation) ----------------------------------------

    def repair_masters(self):
        """Valid masters whose file is gone are rejected and built again from their raw
        frames (their sets are queued; lights reduced with them follow); return them."""
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
            if r.info.get("master_id") in ids
        ]
        self.ledger.annotate(members, {"rebuild": True})
        self._masters = None
        self._built.clear()
        self._bpm.clear()
        self._restore_sets()
        return gone

    def products_missing(self, relpath):
        """True when a done light's reduced FITS or finder chart is missing or empty."""
        expected = []
        if self.config.output.reduced:
            expected.append(reduced_path(self.outdir, relpath))
        if self.config.output.quicklook:
            expected.append(quicklook_path(self.outdir, relpath))
        return any(not p.exists() or p.stat().st_size == 0 for p in expected)

    def repair_products(self):
        """Done lights whose products are missing go back to ``seen``; return them."""
        out = []
        for row in self.ledger.frames(kind="light", state="done"):
            if "excluded" in row.info or not row.path.exists():
                continue
            if self.products_missing(row.relpath):
                log.warning("products_missing", file=row.relpath, action="reduced again")
                self.ledger.reset(row.id)
                out.append(row)
        return out

    # -- re-reduction ------------------------------------------------------------

    def rereduce(self, night):
        """Reduce again the lights of ``night`` whose best masters changed; return outcomes."""
        out = []
        for row in self.ledger.frames(night=night, kind="light", state="done"):
            if self.should_stop():
                break
            if "excluded" in row.info or not row.path.exists():
                continue
            if self._best_ids(row) == sorted(self.ledger.masters_used(row.id)):
                continue
            log.info("rereduce", file=row.relpath, reason="better masters available")
            out.append(self._process(row, row.path, row.relpath, again=True))
        return out

    def _best_ids(self, row):
        info = self._header_info(row)
        if info is None:
            return sorted(self.ledger.masters_used(row.id))
        plan = calibration_plan(
            self.masters(),
            info,
            self.config.calibration,
            utc_offset_hours=self.config.site.utc_offset_hours,
        )
        return sorted(r.id for r in plan.records().values())

    # -- light curves ------------------------------------------------------------

    def _curve_changed(self, field, rows, version):
        """Append a new light to its field's curve, or mark the curve for a rebuild.

        Rebuilt (comparisons chosen again) when a light is superseded, when the
        frame cannot be appended, and when the field has doubled its frames
        since the last build: the work per light stays the same all night.
        """
        state = self.curves.get(field)
        if version == 1 and state is not None and field not in self.dirty_curves:
            save = self.config.output.save
            try:
                ok = lightcurve.append_lightcurve(
                    self.outdir, rows, state, object=field[0], filter=field[1], save=save
                )
            except Exception as exc:
                log.warning("lightcurve_not_appended", object=field[0], reason=str(exc))
                ok = False
            if ok:
                state["appended"] = state.get("appended", 0) + 1
                if state["appended"] < max(state["frames"], CURVE_MIN_FRAMES):
                    return
        self.dirty_curves.add(field)

    def update_curves(self, *, min_interval=0.0, final=True):
        """Rewrite the light curves of fields that got new rows.

        ``final`` (the end of a batch, a stop): curves that were appended to since
        their last build are rebuilt too, so they end on the whole night's ensemble.
        """
        if final:
            appended = [f for f, state in self.curves.items() if state and state.get("appended")]
            self.dirty_curves.update(appended)
        now = self.clock()
        if not self.dirty_curves or now - self._curves_at < min_interval:
            return
        self._curves_at = now
        groups = defaultdict(list)
        wanted = set(self.dirty_curves)
        for m in self.ledger.measurements(current_only=True):
            key = (m.row.get("object"), m.row.get("filter"))
            if key in wanted:
                groups[key].append({**m.row, "version": m.version, "current": 1})
        lc = self.config.lightcurve
        for (obj, filt), rows in groups.items():
            table = lightcurve.field_table(rows)
            common = dict(object=obj, filter=filt, n_comparisons=lc.n_comparisons,
                          save=self.config.output.save)  # fmt: skip
            target, comparisons, radec = lightcurve.field_target(lc, obj)
            kept = {}
            try:
                try:
                    lightcurve.write_lightcurve(
                        self.outdir, table, target=target, comparisons=comparisons,
                        radec=radec, keep=kept, **common,
                    )  # fmt: skip
                except ReduxdError as exc:
                    if target is None and radec is None:
                        raise
                    # the configured target (and its comparisons) is in another field
                    log.warning("lightcurve_target_not_in_field", object=obj, reason=str(exc))
                    lightcurve.write_lightcurve(
                        self.outdir, table, target=None, keep=kept, **common
                    )
                if "lightcurve" in kept:
                    self.ensembles[(obj, filt)] = lightcurve.ensemble_of(kept["lightcurve"])
                self.curves[(obj, filt)] = (
                    lightcurve.frozen_of(kept["lightcurve"]) if "lightcurve" in kept else None
                )
            except Exception as exc:
                log.warning("lightcurve_not_written", object=obj, filter=filt, reason=str(exc))
        self.dirty_curves.clear()


class _Done:
    """A computation run in-process, with the ``result()`` of a future."""

    def __init__(self, func, args):
        try:
            self.value, self.error = func(*args), None
        except Exception as exc:
            self.value, self.error = None, exc

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value

    def done(self):
        return True


def make_masters(kind, layouts, *, opts, bias=None, dark=None, dark_current=None, flat_scale=None):
    """Combine one calibration set into its masters (a list); nothing written.

    ``kind`` 'bias' gives a master bias; 'dark' a master dark, and its dark
    current when ``bias`` is given; 'flat' a master flat. Module level and with
    plain arguments, so that a worker process runs it (:meth:`Pipeline.flush`).
    """
    if kind == "bias":
        return [steps_masters.make_bias(layouts, **opts)]
    if kind == "dark":
        made = steps_masters.make_dark(layouts, **opts)
        return [made] if bias is None else [made, steps_masters.make_dark_current(made, bias)]
    flat = steps_masters.make_flat(
        layouts, dark=dark, bias=bias, dark_current=dark_current, flat_scale=flat_scale, **opts
    )
    return [flat]


@dataclass
class _Light:
    """A light of :meth:`Pipeline.handle_many` between its plan and its commit."""

    row: object
    rel: str
    info: object
    plan: object
    key: str
    path: str
    started: float
    base: object = None  # the field reference it is reduced against
    work: object = None  # its future, once submitted


def _reference_of(work):
    """The field reference a first light found (None if it failed: as without one)."""
    try:
        return work.result().reference
    except Exception:
        return None


def merge_new_stars(current, base, found, rows, *, radius):
    """Give final IDs to stars a light found beyond the reference it was reduced with.

    ``base`` is the field reference the light was measured against, ``found`` the
    reference it returned (``base`` plus new stars), ``current`` the field's
    reference now (it may have grown since ``base`` when lights are reduced in
    parallel). New stars matching one added since ``base`` (within ``radius``, in
    reference coordinates) take its ID; the others get the next free IDs.

    Returns
    -------
    rows : list of dict
        The rows with final ``star_id``.
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
    out = [{**r, "star_id": mapping.get(r["star_id"], r["star_id"])} for r in rows]
    return out, ref
