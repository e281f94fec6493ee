"""The pipeline: routes each frame to the part of reduxd that handles it.

The daemon, the batch command and the tests all drive :class:`Pipeline`:

- :meth:`Pipeline.handle` takes one raw file: it records it in the ledger, reads it
  once, classifies it, and adds it to a calibration set (:mod:`reduxd.calsets`) or
  reduces it as a :class:`~reduxd.lightjob.LightJob` (calibrate, measure, write the
  products, then commit the rows); :meth:`Pipeline.handle_many` does the same for
  many lights in a pool (:class:`~reduxd.lightjob.FanOut`), committed in order.
- :meth:`Pipeline.tick` builds the masters of calibration sets that have stopped
  growing; :meth:`Pipeline.flush` builds all of them (batch, shutdown).
- When a master is registered, lights of that night that waited for it, or were
  reduced without it or with an older one, are reduced again; their new rows
  supersede the old ones (kept in the ledger, marked superseded).

What an exception means for a frame is decided in one place (``Reactions.react``
in :mod:`reduxd.outcomes`), called by each entry point.
"""

import time
from pathlib import Path

from reduxd.calsets import Calibrations, header_info
from reduxd.curves import Curves
from reduxd.errors import (
    FrameIncomplete,
    FrameRejected,
    MissingCalibration,
    OutputUnavailable,
    is_transient,
)
from reduxd.fields import Fields
from reduxd.files import outside_root
from reduxd.fingerprint import fingerprint
from reduxd.frames import classify
from reduxd.lightjob import FanOut, LightJob
from reduxd.lightrows import stamped
from reduxd.log import get_logger
from reduxd.outcomes import WAITING, Outcome, Reactions, log_reduced
from reduxd.products.naming import products_missing
from reduxd.reduce import MasterCache, compute_light, read_light
from reduxd.store import PENDING
from reduxd.tablesync import PhotTables

__all__ = ["WAITING", "Outcome", "Pipeline"]

OUTSIDE_LINK = (
    "symbolic link to a file outside the data folder: refused "
    "([reading] follow_links_outside = true to read it)"
)
log = get_logger("reduxd.pipeline")


class Pipeline:
    """Classify and route frames, with the ledger as the source of truth.

    Parameters
    ----------
    config : reduxd.config.Config
    ledger : reduxd.store.Ledger
        Owned by the calling thread.
    clock : callable
        Monotonic clock (injectable for tests).
    progress : callable, optional
        Called with the relative path before each frame (the daemon feeds the watchdog).
    should_stop : callable
        True: re-reductions and retries stop between lights (found again at restart).
    durable : bool
        Fsync each product (the daemon); ``reduxd reduce`` redoes missing ones instead.
    calibration_level : str
        Log level of the one line per calibration frame (``reduxd reduce``: debug).
    """

    def __init__(self, config, *, ledger, clock=time.monotonic, progress=None, durable=True,
                 calibration_level="info", should_stop=lambda: False):  # fmt: skip
        self.config = config
        self.should_stop = should_stop
        self.durable = durable
        self.ledger = ledger
        self.clock = clock
        self.progress = progress
        self.outdir = Path(config.paths.outdir)
        self.cache = MasterCache()
        self.reactions = Reactions(ledger, config.watch, clock)
        self.fields = Fields(ledger, match_radius=config.photometry.match_radius)
        self.tables = PhotTables(self.outdir, ledger=ledger, save=config.output.save,
                                 durable=durable)  # fmt: skip
        self.lightcurves = Curves(config, ledger=ledger, outdir=self.outdir, clock=clock)
        self.calibrations = Calibrations(config, ledger=ledger, clock=clock, cache=self.cache,
                                         calibration_level=calibration_level)  # fmt: skip
        self.read_ahead = None  # a ReadAhead of the frames to come (reduxd reduce), or None

    # -- what the daemon, the batch, the stacks and the tests read ----------------

    @property
    def sets(self):
        """Pending calibration sets (``{key: CalSet}``)."""
        return self.calibrations.sets

    @property
    def dirty_curves(self):
        return self.lightcurves.dirty

    @property
    def curves(self):  # {(field, filter): state} of the light curves appended to
        return self.lightcurves.states

    def _curve_changed(self, field, rows, version):
        self.lightcurves.changed(field, rows, version)

    def reference(self, key):
        """The field reference of ``key`` now (None before its first light)."""
        return self.fields.reference(key)

    def update_curves(self, *, min_interval=0.0, final=True, pool=None, plots=None):
        self.lightcurves.update(min_interval=min_interval, final=final, pool=pool, plots=plots)

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
        if row.state in PENDING and self._outside(path, root):
            return self.reactions.quarantine(row, rel, OUTSIDE_LINK)
        if row.changed:
            log.error("raw_frame_changed", file=rel, reason=row.last_error)
            return Outcome(rel, "changed", reason=row.last_error)
        if row.state == "excluded":
            return Outcome(rel, "excluded", kind="light", reason=row.info.excluded)
        if row.state not in PENDING:
            return Outcome(rel, "skipped", kind=row.kind, reason=row.state)
        return self._process(row, path, rel, since)

    def tick(self):
        """Build the masters of calibration sets idle for ``set_timeout_seconds``."""
        built = self._build(self.calibrations.idle(), final=False)
        self.update_curves(min_interval=30.0, final=False)
        return built

    def flush(self, *, pool=None):
        """Build the masters of every pending calibration set (batch, shutdown).

        With ``pool`` (a ``concurrent.futures`` executor) the sets of one kind
        are combined there at once (biases, then darks, then flats); this
        process registers and writes them in the same order as without it.
        """
        built = self._build(list(self.sets), final=True, pool=pool)
        self.update_curves()
        return built

    def retry_waiting(self):
        """Reduce lights that were waiting for a master; return their outcomes."""
        out = []
        for row in self.ledger.frames(state="waiting"):
            if self.should_stop():
                break
            if row.path.exists():
                out.append(self._process(row, row.path, row.relpath, again=True))
        return out

    def handle_many(
        self, items, *, pool=None, progress=None, committed=None, window=None, infos=None
    ):
        """Reduce lights ``[(root, path)]`` in ``pool`` (see :class:`~reduxd.lightjob.FanOut`);
        return their outcomes. Results are committed in order as they come; star IDs of
        new stars are given at commit time, so any number of workers gives the same tables.
        ``committed(outcome)`` is called with each outcome of a job sent to the pool, in
        order; at most ``window`` lights are in the pool and not done (None: no limit).
        ``infos``: ``{path: FrameInfo}`` of lights already classified from their headers
        (:func:`reduxd.batch.sort_frames`), not read again.
        """
        fan = FanOut(pool, reference=self.fields.reference, config=self.config,
                     durable=self.durable, window=window)  # fmt: skip
        outcomes = []
        for root, path in items:
            job = self._prepare(Path(root), Path(path), (infos or {}).get(path))
            if isinstance(job, Outcome):
                outcomes.append(_tick_progress(job, progress))
                continue
            self.ledger.begin(job.row.id)
            fan.add(job)
            outcomes += [self._finish(j, progress, committed) for j in fan.ready()]
        while fan.pending:
            outcomes += [self._finish(j, progress, committed) for j in fan.ready(wait=True)]
        return outcomes

    def resume(self):
        """After a write error: release held frames, repair the tables (``OutputUnavailable``
        if the disk still refuses writes)."""
        try:
            self.reactions.release()
            self.tables.repair()
        except Exception as exc:
            if not is_transient(exc):
                raise
            raise OutputUnavailable(str(exc)) from exc

    # -- one frame ---------------------------------------------------------------

    def _process(self, row, path, rel, since=None, *, again=False):
        """Read, classify and route one frame. ``again``: a light retried or re-reduced
        after a master was built (its arrival says nothing about pending sets)."""
        if self.progress is not None:
            self.progress(rel)
        started = self.clock() if since is None else since
        try:
            raw = self._read(path)
            info = classify(raw.header, rel, self.config.classify)
        except Exception as exc:  # e.g. astropy's VerifyError on an unparsable card
            if is_transient(exc):
                raise
            if not isinstance(exc, FrameRejected | FrameIncomplete):
                exc = FrameRejected(rel, f"header unusable: {type(exc).__name__}: {exc}")
            return self.reactions.react(row, rel, None, exc)
        self.reactions.complete(row)
        self.ledger.begin(row.id)
        try:
            if info.kind == "light":
                return self._light(row, raw, info, rel, path, started, again=again)
            reason = self.calibrations.ingest(row, raw, info, rel, path)
            extra = f"no master: {reason}" if reason else None
            return Outcome(rel, "ingested", kind=info.kind, reason=extra)
        except (Exception, KeyboardInterrupt) as exc:  # the one place that catches everything
            return self.reactions.react(row, rel, info.kind, exc)

    def _read(self, path):
        """The frame at ``path``, read ahead if it was (:mod:`reduxd.readahead`)."""
        raw = None if self.read_ahead is None else self.read_ahead.take(path)
        return read_light(path, self.config) if raw is None else raw

    def _light(self, row, raw, info, rel, path, started, *, again=False):
        night = info.night(self.config.site.utc_offset_hours)
        if self.calibrations.is_excluded(info.filter):
            return self.reactions.excluded(row, rel, raw.checksum, night, info.filter)
        first = self.ledger.duplicate_of(row.id, raw.checksum)
        if first is not None:
            return self.reactions.duplicate(row, rel, raw.checksum, night, first)
        if self.sets and not again:  # the camera moved on to lights: pending sets are complete
            self._build(list(self.sets), final=False)
        job = self._job(row, path, rel, info, started)
        job.base = self.fields.reference(job.key)
        result = compute_light(
            job.path, rel, info, job.plan, job.base, self.config, night=job.night,
            field=job.key, durable=self.durable, raw=raw, cache=self.cache,
        )  # fmt: skip
        return self._commit(job, result)

    def _outside(self, path, root):
        return not self.config.reading.follow_links_outside and outside_root(path, root)

    def _job(self, row, path, rel, info, started):
        """The :class:`LightJob` of a light; raises MissingCalibration without its masters."""
        plan = self.calibrations.plan(info, rel)
        return LightJob.build(row, path, rel, info, plan, started=started,
                              utc_offset_hours=self.config.site.utc_offset_hours)  # fmt: skip

    def _commit(self, job, result):
        """Record a reduced light (its products are written): ledger, star IDs, tables, log."""
        first = self.ledger.duplicate_of(job.row.id, result.checksum)
        if first is not None:  # a copy of a light committed while this one was in a worker
            return self.reactions.duplicate(job.row, job.rel, result.checksum, job.night, first)
        rows, reference = self.fields.identify(job.key, job.base, result.reference, result.rows)
        master_ids = sorted(r.id for r in job.plan.records().values())
        with self.ledger.transaction():  # rows, reference and state: a kill leaves all or none
            version = self.ledger.add_measurements(
                job.row.id, rows, calib=result.calib, master_ids=master_ids,
                fingerprint=fingerprint(self.config, job.plan),
            )  # fmt: skip
            self.fields.save(job.key, reference)
            meta = job.meta(result, len(rows), version)
            self.ledger.finish(
                job.row.id, kind="light", checksum=result.checksum, night=job.night, info=meta
            )
        rows = stamped(rows, version)
        self.tables.add(rows, version, job.rel)
        self.lightcurves.changed((job.key, job.info.filter or ""), rows, version, frame=job.row.id)
        latency_ms = (self.clock() - job.started) * 1000.0  # rows and light curve written
        log_reduced(job, rows, result, latency_ms, version, self.lightcurves.target_mag(rows))
        return Outcome(job.rel, "reduced", kind="light", n_stars=len(rows),
                       latency_ms=latency_ms, info=meta)  # fmt: skip

    def _finish(self, job, progress, committed=None):
        """Commit a job done in the pool (or record why it failed)."""
        try:
            outcome = self._commit(job, job.work.result())
        except Exception as exc:
            outcome = self.reactions.react(job.row, job.rel, "light", exc)
        if committed is not None:
            committed(outcome)
        return _tick_progress(outcome, progress)

    def _prepare(self, root, path, info=None):
        """The LightJob of one light, from its header only (``info``: already classified);
        an Outcome if not to reduce."""
        rel = path.relative_to(root).as_posix()
        st = path.stat()
        row = self.ledger.observe(str(root), rel, size=st.st_size, mtime_ns=st.st_mtime_ns)
        if row.state not in PENDING or self._outside(path, root):
            return self.handle(path, root)
        info = info if info is not None else header_info(row, self.config)
        if info is None or info.kind != "light" or self.calibrations.is_excluded(info.filter):
            return self._process(row, path, rel)
        try:
            return self._job(row, path, rel, info, self.clock())
        except MissingCalibration:
            return self._process(row, path, rel)

    # -- masters built: lights reduced again -------------------------------------

    def _build(self, keys, *, final, pool=None):
        built = self.calibrations.build(keys, final=final, pool=pool)
        if built:
            self.retry_waiting()
            for night in sorted({r.night for r in built}):
                self.rereduce(night)
        return built

    def rereduce(self, night):
        """Reduce again the lights of ``night`` whose best masters changed; return outcomes."""
        out = []
        for row in self.ledger.frames(night=night, kind="light", state="done"):
            if self.should_stop():
                break
            if row.info.excluded is not None or not row.path.exists():
                continue
            if not self.calibrations.better_masters(row):
                continue
            log.info("rereduce", file=row.relpath, reason="better masters available")
            out.append(self._process(row, row.path, row.relpath, again=True))
        return out

    # -- repairs (start and reconciliation) ----------------------------------------

    def repair_products(self, only=None):
        """Done lights whose products are missing go back to ``seen``; return them.

        ``only``: a set of ``(root, relpath)`` to look at (default: every light).
        """
        out = []
        for row in self.ledger.frames(kind="light", state="done"):
            if only is not None and (row.root, row.relpath) not in only:
                continue
            if row.info.excluded is not None or not row.path.exists():
                continue
            if products_missing(self.outdir, row.relpath, self.config.output):
                log.warning("products_missing", file=row.relpath, action="reduced again")
                self.ledger.reset(row.id)
                out.append(row)
        return out


def _tick_progress(outcome, progress):
    if progress is not None:
        progress.step(outcome.path)
    return outcome
