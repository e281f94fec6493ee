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

SIGTERM, SIGINT and SIGHUP set a flag: the current frame finishes, everything is
committed, and the process exits 0; a re-reduction stops between lights and
resumes after the restart. A second SIGINT (Ctrl-C twice) stops at once: the
frame in hand goes back to ``seen`` (its attempt not spent) and the process
exits 130. SIGHUP (a closed terminal) is a stop like SIGTERM, not a reload:
``systemctl restart reduxd`` applies a new configuration.
Calibration sets still growing are *not* combined at shutdown (a master from
half a set would be worse): the ledger keeps them and they are built after the
next start.
"""

import contextlib
import math
import os
import queue
import signal
import sqlite3
import time
from pathlib import Path

from reduxd import lock, notify
from reduxd.config import load_config
from reduxd.errors import OutputUnavailable, is_transient
from reduxd.log import configure_logging, get_logger
from reduxd.memory import release_free_memory
from reduxd.outcomes import recover_interrupted
from reduxd.pipeline import Pipeline
from reduxd.reduce import load_light_modules
from reduxd.runplan import run_plan
from reduxd.store import PENDING, Ledger, ledger_error
from reduxd.watch.stability import StabilityTracker, file_signature
from reduxd.watch.watcher import Watcher, WatchError, check_roots
from reduxd.web.server import start_for_service

log = get_logger("reduxd.daemon")
# Outcomes that count as work for --exit-when-idle (not skipped/waiting/incomplete).
WORK = ("reduced", "ingested", "excluded", "quarantined", "failed", "changed")
PING_SECONDS = 1.0  # at most one WATCHDOG=1 per second (or WatchdogSec / 4)
MAX_BACKOFF = 60.0  # longest pause between retries after a disk write error
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
    configure_logging(
        level=config.logging.level,
        json_file=config.logging.json_file or None,
        third_party_debug=config.logging.third_party_debug,
    )
    log.info("run_plan", **run_plan(config))
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
        self.paused_until = self.outage_since = None  # write errors: see _pause
        self.backoff = 0.0
        self.own_folders = ()  # output and ledger folders below a root: never read
        self.missing = set()  # ids of unfinished frames whose file was gone at the last pass
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
        """Signal handler: finish the current frame, then stop (logged by the main loop).

        A second SIGINT raises KeyboardInterrupt: the frame in hand is rolled back.
        """
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        self.stop_signal = signum

    def run(self):
        paths = self.config.paths
        # raises ConfigError (exit 2) for a root that would feed reduxd its own files
        self.own_folders = check_roots(
            self.roots(), outdir=paths.outdir, state_file=paths.state_file
        )
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)
        state = Path(self.config.paths.state_file)
        try:  # ledger trouble is named, with advice, by the command line (exit 4)
            state.parent.mkdir(parents=True, exist_ok=True)
            held = lock.acquire(state, command="watch")
        except OSError as exc:
            raise ledger_error(state, exc) from exc
        Path(self.config.paths.outdir).mkdir(parents=True, exist_ok=True)
        try:
            with held, Ledger(state) as ledger:
                web = start_for_service(self)  # the live page ([web] listen); None when off
                try:
                    return self._serve(ledger)
                finally:
                    if web is not None:
                        web.stop()
        except KeyboardInterrupt:
            log.warning("service_stopped", forced=True)
            return 130
        except sqlite3.Error as exc:
            raise ledger_error(state, exc) from exc

    def _serve(self, ledger):
        w = self.config.watch
        load_light_modules()  # now, not on the first light (its latency)
        recover_interrupted(ledger, max_tries=w.max_tries)
        pipeline = Pipeline(
            self.config,
            ledger=ledger,
            clock=self.clock,
            progress=self._progress,
            should_stop=lambda: self.stop_requested,
        )
        self.pipeline = pipeline
        pipeline.tables.sync()  # logs what it did; never drops rows the ledger lacks
        # min_size=0: a file that stays empty is handed on (and refused), not kept for ever
        tracker = StabilityTracker(settle_seconds=w.settle_seconds, clock=self.clock, min_size=0)
        self.watcher = watcher = Watcher(
            self.roots(),
            observer=w.observer,
            poll_interval=w.poll_interval,
            ignore_patterns=w.ignore_patterns,
            extensions=self.config.reading.extensions,
            exclude=self.own_folders,
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
        self._repair(pipeline)
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
            worked = self._work(pipeline, tracker, watcher)
            now = self.clock()
            if now - last_reconcile >= self.config.watch.reconcile_seconds:
                last_reconcile = now
                self._repair(pipeline)
                self._reconcile(ledger, tracker, watcher)
            self._supervise(watcher, ledger)
            busy = len(tracker) or pipeline.sets or self.paused_until is not None
            if worked or busy or not watcher.queue.empty():
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
            found = set()
            try:
                for path, rel, sig in _walk(root, watcher.file_filter):
                    found.add(rel)
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
                continue
            self._vanished(ledger, root, found, known)
        return n

    def _vanished(self, ledger, root, found, known):
        """Frames never finished whose file is gone (deleted while incomplete): quarantined.

        Only when missing from two reconciliations in a row (a share remounting).
        """
        missing = set()
        for (r, rel), row in known.items():
            if r != root or row.state not in PENDING or rel in found:
                continue
            if os.path.lexists(row.path):  # e.g. excluded by a pattern since: not ours to judge
                continue
            missing.add(row.id)
            if row.id not in self.missing:
                continue
            reason = "file deleted before it could be reduced"
            ledger.quarantine(row.id, reason)
            log.error("frame_quarantined", file=rel, reason=reason)
        of_root = {row.id for (r, _rel), row in known.items() if r == root}
        self.missing = (self.missing - of_root) | missing

    def _repair(self, pipeline):
        """Masters and products deleted behind reduxd's back are made again.

        Lights sent back to ``seen`` are picked up by the reconciliation; missing
        masters are rebuilt from their raw frames by the next :meth:`Pipeline.tick`.
        """
        try:
            pipeline.calibrations.repair()
            pipeline.repair_products()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._pause(exc)

    # -- doing it ----------------------------------------------------------------

    def _work(self, pipeline, tracker, watcher):
        """Reduce what settled and build idle sets, unless paused by a write error."""
        now = self.clock()
        if self.paused_until is not None and now < self.paused_until:
            return False
        try:
            if self.paused_until is not None:
                pipeline.resume()
            worked = self._reduce_settled(pipeline, tracker, watcher)
            worked |= bool(pipeline.tick())
            if worked:  # RSS stays the night's live data, not the heaps' high-water mark
                release_free_memory()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._pause(exc)
            return False
        if self.paused_until is not None and (worked or not (len(tracker) or pipeline.sets)):
            log.info("output_available", paused_seconds=round(now - self.outage_since, 1))
            self.paused_until = self.outage_since = None
            self.backoff = 0.0
        return worked

    def _pause(self, exc):
        """A disk write error: one log line, then retries with back-off (1 s doubling to 60 s)."""
        now = self.clock()
        self.backoff = min(max(2 * self.backoff, 1.0), MAX_BACKOFF)
        self.paused_until = now + self.backoff
        reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
        if self.outage_since is None:
            self.outage_since = now
            log.error(
                "output_unavailable",
                reason=reason,
                action=f"paused; retrying every {MAX_BACKOFF:g} s at most, frames wait",
            )
        self.counts["paused"] = self.counts.get("paused", 0) + 1

    def _reduce_settled(self, pipeline, tracker, watcher):
        worked = False
        settled = tracker.poll()
        since = self.clock()  # when these files were found stable: latency starts here
        for i, path in enumerate(settled):
            if self.stop_requested:
                for rest in settled[i:]:
                    tracker.touch(rest)
                break
            try:
                outcome = self._handle(pipeline, watcher, path, since)
            except OutputUnavailable:
                for rest in settled[i:]:  # tried again after the pause
                    tracker.touch(rest)
                raise
            if outcome is None:
                continue
            self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
            # an incomplete file is tried again when it changes (an event) or at the
            # next reconciliation, not at once: a file that stays short (0 bytes, a
            # copy that died) must not keep the loop busy
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
        if not _utf8(path):
            reason = "file name is not valid UTF-8: rename it"
            self.broken[str(path)] = file_signature(path)
            log.error("frame_quarantined", file=ascii(str(path)), reason=reason)
            self.counts["quarantined"] = self.counts.get("quarantined", 0) + 1
            return None
        try:
            root, _rel = watcher.split(path)
            return pipeline.handle(path, root, since=since)
        except sqlite3.Error as exc:
            if is_transient(exc):
                raise OutputUnavailable(f"ledger: {exc}") from exc
            raise
        except OutputUnavailable:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise OutputUnavailable(f"{path}: {exc}") from exc
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
            pending = sum(counts[state] for state in PENDING)
            text = f"{counts['done']} done, {pending} pending, {counts['failed']} failed"
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
                if not file_filter.ignored(entry.name) and not file_filter.excluded(entry.path):
                    with contextlib.suppress(OSError):
                        yield from _walk(root, file_filter, rel + entry.name + "/")
            elif file_filter.wanted(entry.name) and entry.is_file():
                st = entry.stat()
                yield entry.path, rel + entry.name, (st.st_size, st.st_mtime_ns)
        except OSError:  # vanished meanwhile
            continue


def _utf8(path):
    """True when the path can be stored as text (the ledger's names are UTF-8)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _retry(row):
    """A frame to try again (not one waiting for a master: see the docstring)."""
    return row.state in ("seen", "incomplete")
