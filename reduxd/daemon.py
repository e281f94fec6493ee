"""``reduxd watch``: the all-night service.

The main loop is the only thread that touches the ledger and the pipeline. Each
pass: collect queued paths (events are only hints) into the stability tracker,
reduce the files that have settled, build masters of idle calibration sets,
reconcile the folders against the ledger every ``reconcile_seconds``, supervise
the observers, and ping the systemd watchdog only while all of that is healthy
(also between frames of a long re-reduction).

Reconciliation stats every file once and hands on only what the ledger does not
account for: new files, files whose size or mtime changed, and frames waiting
for a retry. Frames waiting for a master are retried by the pipeline when one is
built, not on every pass.

SIGTERM/SIGINT set a flag: the current frame finishes, everything is committed,
and the process exits 0. Calibration sets still growing are *not* combined at
shutdown (a master from half a set would be worse): the ledger keeps them and
they are built after the next start.
"""

import contextlib
import importlib
import math
import os
import queue
import signal
import sqlite3
import time
from pathlib import Path

from reduxd import notify
from reduxd.config import load_config
from reduxd.log import configure_logging, get_logger
from reduxd.pipeline import WAITING, Pipeline
from reduxd.reduce import LIGHT_MODULES
from reduxd.store import Ledger
from reduxd.watch.stability import StabilityTracker, file_signature
from reduxd.watch.watcher import Watcher, WatchError
from reduxd.web.server import start_for_service

log = get_logger("reduxd.daemon")
# Outcomes that count as work for --exit-when-idle (not skipped/waiting/incomplete).
WORK = ("reduced", "ingested", "excluded", "quarantined", "failed", "changed")
PING_SECONDS = 1.0  # at most one WATCHDOG=1 per second (or WatchdogSec / 4)
STATUS_SECONDS = 5.0  # at most one STATUS= line per this many seconds


def register(subparsers):
    p = subparsers.add_parser(
        "watch",
        help="run the all-night service",
        description="Watch folders and reduce every frame as it arrives.",
    )
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--root", action="append", help="folder to watch (repeatable)")
    p.add_argument("--outdir", help="output folder")
    p.add_argument("--state", help="ledger file (SQLite, on a local disk)")
    p.add_argument("--level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="stop after this long with nothing to do (demos and tests)",
    )
    p.set_defaults(func=run)


def overrides_from_args(args):
    out = {}
    if args.root:
        out.setdefault("watch", {})["roots"] = args.root
    if args.outdir:
        out.setdefault("paths", {})["outdir"] = args.outdir
    if args.state:
        out.setdefault("paths", {})["state"] = args.state
    if args.level:
        out.setdefault("logging", {})["level"] = args.level
    return out


def run(args):
    config = load_config(args.config, overrides_from_args(args))
    configure_logging(level=config.logging.level, json_file=config.logging.json_file or None)
    return Service(config, exit_when_idle=args.exit_when_idle).run()


class Service:
    """The daemon's main loop (see the module docstring).

    Parameters
    ----------
    config : reduxd.config.Config
    exit_when_idle : float, optional
        Stop after this many seconds without work (for demos and tests).
    clock : callable
        Monotonic clock.
    """

    def __init__(self, config, *, exit_when_idle=None, clock=time.monotonic):
        self.config = config
        self.exit_when_idle = exit_when_idle
        self.clock = clock
        self.stop_requested = False
        self.stop_signal = None
        self.counts = {}
        self.watcher = None
        self.pipeline = None
        self.broken = {}  # path -> signature of files whose handling raised (not retried)
        interval = notify.watchdog_interval()
        self.ping_seconds = min(PING_SECONDS, interval / 4) if interval else PING_SECONDS
        self._pinged = self._status_at = -math.inf
        self._last = ""

    def roots(self):
        w = self.config.watch
        return list(w.roots) or list(self.config.paths.data) + list(self.config.paths.calibration)

    def request_stop(self, signum=None, _frame=None):
        """Signal handler: finish the current frame, then stop (logged by the main loop)."""
        self.stop_requested = True
        self.stop_signal = signum

    def run(self):
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        state = Path(self.config.paths.state_file)
        state.parent.mkdir(parents=True, exist_ok=True)
        Path(self.config.paths.outdir).mkdir(parents=True, exist_ok=True)
        with Ledger(state) as ledger:
            web = start_for_service(self)  # the live page ([web] listen); None when off
            try:
                return self._serve(ledger)
            finally:
                if web is not None:
                    web.stop()

    def _serve(self, ledger):
        w = self.config.watch
        for name in LIGHT_MODULES:  # now, not on the first light (its latency)
            importlib.import_module(name)
        for row in ledger.recover_interrupted(max_tries=w.max_tries):
            log.warning(
                "interrupted_frame",
                file=row.relpath,
                state=row.state,
                attempts=row.attempts,
                reason=row.last_error,
            )
        pipeline = Pipeline(self.config, ledger=ledger, clock=self.clock, progress=self._progress)
        self.pipeline = pipeline
        if not pipeline.tables_in_sync():
            log.warning("tables_rewritten", reason="photometry table differs from the ledger")
            pipeline.rewrite_tables()
        tracker = StabilityTracker(settle_seconds=w.settle_seconds, clock=self.clock)
        self.watcher = watcher = Watcher(
            self.roots(),
            observer=w.observer,
            poll_interval=w.poll_interval,
            ignore_patterns=w.ignore_patterns,
            extensions=self.config.reading.extensions,
        )
        try:
            return self._loop(ledger, pipeline, tracker, watcher)
        except WatchError as exc:
            log.error("watch_failed", reason=str(exc))
            notify.stopping()
            return 1
        finally:
            watcher.stop()

    def _loop(self, ledger, pipeline, tracker, watcher):
        watcher.start(catch_up=False)  # the reconciliation below is the catch-up scan
        for row in ledger.pending():  # waiting lights too: masters or config may be new
            if row.root in watcher.roots:
                tracker.touch(row.path)
        queued = self._reconcile(ledger, tracker, watcher)
        notify.ready()
        notify.status(f"watching {len(watcher.roots)} folder(s)")
        log.info(
            "service_started",
            roots=[str(r) for r in watcher.roots],
            queued=queued,
            pending=len(tracker),
            observer=watcher.kinds(),
            ledger=str(self.config.paths.state_file),
        )
        self._resume_rereduction(ledger, pipeline)
        last_work = last_reconcile = self.clock()
        while not self.stop_requested:
            self._collect(watcher.queue, tracker)
            worked = self._reduce_settled(pipeline, tracker, watcher)
            worked |= bool(pipeline.tick())
            now = self.clock()
            if now - last_reconcile >= self.config.watch.reconcile_seconds:
                last_reconcile = now
                self._reconcile(ledger, tracker, watcher)
            self._supervise(watcher, ledger)
            if worked or len(tracker) or pipeline.sets or not watcher.queue.empty():
                last_work = now
            elif self.exit_when_idle is not None and now - last_work >= self.exit_when_idle:
                log.info("idle_exit", idle_seconds=round(now - last_work, 1))
                break
            self._wait(watcher.queue, tracker)
        if self.stop_signal is not None:
            log.info("stop_requested", signal=signal.Signals(self.stop_signal).name)
        return self._shutdown(pipeline, ledger)

    # -- finding work ------------------------------------------------------------

    def _collect(self, q, tracker):
        paths = set()
        while True:
            try:
                paths.add(q.get_nowait())
            except queue.Empty:
                break
        for path in paths:
            tracker.touch(path)

    def _wait(self, q, tracker):
        timeout = 0.05 if len(tracker) else 0.25
        with contextlib.suppress(queue.Empty):
            tracker.touch(q.get(timeout=timeout))

    def _reconcile(self, ledger, tracker, watcher):
        """Hand the tracker every file the ledger does not account for; return how many.

        One ``stat`` per file and one ledger query per pass; nothing is read.
        """
        known = {(r.root, r.relpath): r for r in ledger.frames()}
        n = 0
        for root in watcher.roots:
            try:
                for path, rel, sig in _walk(root, watcher.file_filter):
                    if self.broken.get(path) == sig:
                        continue
                    row = known.get((root, rel))
                    if row is not None and (row.size, row.mtime_ns) == sig and not _retry(row):
                        continue
                    if path not in tracker:
                        tracker.touch(path)
                        n += 1
            except OSError as exc:  # root missing: the supervisor waits for it
                log.debug("reconcile_skipped", root=root, reason=str(exc))
        return n

    # -- doing it ----------------------------------------------------------------

    def _reduce_settled(self, pipeline, tracker, watcher):
        worked = False
        settled = tracker.poll()
        since = self.clock()  # when these files were found stable: latency starts here
        for i, path in enumerate(settled):
            if self.stop_requested:
                for rest in settled[i:]:
                    tracker.touch(rest)
                break
            outcome = self._handle(pipeline, watcher, path, since)
            if outcome is None:
                continue
            self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
            if outcome.status == "incomplete":
                tracker.touch(path)
            if outcome.status in WORK:
                worked = True
                self._last = outcome.path
        return worked

    def _handle(self, pipeline, watcher, path, since):
        """``pipeline.handle`` for one path; a file that makes it raise is set aside.

        The pipeline catches everything about reducing a frame; what gets here
        (e.g. a file name SQLite cannot store) would otherwise crash-loop the service.
        A ledger error is not about the file: it stops the service (exit 1, restarted).
        """
        try:
            root, _rel = watcher.split(path)
            return pipeline.handle(path, root, since=since)
        except sqlite3.Error:
            raise
        except Exception as exc:
            self.broken[str(path)] = file_signature(path)
            log.exception("frame_error", file=str(path), reason=f"{type(exc).__name__}: {exc}")
            self.counts["error"] = self.counts.get("error", 0) + 1
            return None

    def _resume_rereduction(self, ledger, pipeline):
        """Finish a re-reduction that a crash or restart interrupted (newest masters' night)."""
        masters = ledger.masters()
        if masters:
            pipeline.rereduce(masters[-1].night)

    # -- health ------------------------------------------------------------------

    def _watch_ok(self, watcher, *, restart):
        """Observers healthy (restarting dead ones when ``restart``), or a root is away.

        A missing root (a share that dropped out) is waited for: restarting the
        service would not bring it back, so the watchdog keeps being fed.
        """
        ok = watcher.check_and_restart() if restart else watcher.healthy()
        return ok or any(not os.path.lexists(r) for r in watcher.roots)

    def _supervise(self, watcher, ledger):
        if self._watch_ok(watcher, restart=True):
            self._ping()
        now = self.clock()
        if now - self._status_at >= STATUS_SECONDS:
            self._status_at = now
            counts = ledger.counts()
            text = f"{counts['done']} done, {counts['seen']} pending, {counts['failed']} failed"
            notify.status(text + (f"; last {self._last}" if self._last else ""))

    def _ping(self):
        now = self.clock()
        if now - self._pinged >= self.ping_seconds:
            self._pinged = now
            notify.watchdog()

    def _progress(self, _rel):
        """Called by the pipeline before each frame: keep the watchdog fed in long runs."""
        if self.watcher is not None and self._watch_ok(self.watcher, restart=False):
            self._ping()

    def _shutdown(self, pipeline, ledger):
        notify.stopping()
        pipeline.update_curves()
        counts = ledger.counts()
        log.info(
            "service_stopped",
            frames=counts,
            this_run=self.counts,
            pending_sets=len(pipeline.sets),
        )
        return 0


def _walk(root, file_filter, rel=""):
    """Yield ``(path, relpath, (size, mtime_ns))`` of the wanted files below ``root``.

    :func:`reduxd.watch.watcher.scan` with the stat of each file and no ``Path``
    objects (this runs over the whole tree every ``reconcile_seconds``). Raises
    OSError if ``root`` cannot be read; unreadable subfolders are skipped.
    """
    with os.scandir(os.path.join(root, rel) if rel else root) as it:
        entries = list(it)
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if not file_filter.ignored(entry.name):
                    with contextlib.suppress(OSError):
                        yield from _walk(root, file_filter, rel + entry.name + "/")
            elif file_filter.wanted(entry.name) and entry.is_file():
                st = entry.stat()
                yield entry.path, rel + entry.name, (st.st_size, st.st_mtime_ns)
        except OSError:  # vanished meanwhile
            continue


def _retry(row):
    """A ``seen`` frame to try again (not one waiting for a master: see the docstring)."""
    return row.state == "seen" and not (row.last_error or "").startswith(WAITING)
