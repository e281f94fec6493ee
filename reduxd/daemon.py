"""``reduxd watch``: the all-night service.

The main loop is the only thread that touches the ledger and the pipeline. Each
pass: collect queued paths (events and scans are only hints) into the stability
tracker, reduce the files that have settled, build masters of idle calibration
sets, reconcile against the ledger every ``reconcile_seconds``, supervise the
observers, and ping the systemd watchdog only while all of that is healthy.
SIGTERM/SIGINT set a flag; the current frame finishes, pending masters are
built, everything is committed, and the process exits 0.
"""

import contextlib
import queue
import signal
import time
from pathlib import Path

from reduxd import notify
from reduxd.config import load_config
from reduxd.log import configure_logging, get_logger
from reduxd.pipeline import Pipeline
from reduxd.store import Ledger
from reduxd.watch.stability import StabilityTracker
from reduxd.watch.watcher import Watcher, WatchError

log = get_logger("reduxd.daemon")
QUIET = ("skipped",)


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
        self.counts = {}

    def roots(self):
        w = self.config.watch
        return list(w.roots) or list(self.config.paths.data) + list(self.config.paths.calibration)

    def request_stop(self, signum=None, _frame=None):
        """Signal handler: finish the current frame, then stop."""
        self.stop_requested = True
        log.info("stop_requested", signal=signal.Signals(signum).name if signum else None)

    def run(self):
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        state = Path(self.config.paths.state_file)
        state.parent.mkdir(parents=True, exist_ok=True)
        Path(self.config.paths.outdir).mkdir(parents=True, exist_ok=True)
        with Ledger(state) as ledger:
            return self._serve(ledger)

    def _serve(self, ledger):
        w = self.config.watch
        for row in ledger.recover_interrupted(max_tries=w.max_tries):
            log.warning(
                "interrupted_frame", file=row.relpath, state=row.state, attempts=row.attempts
            )
        pipeline = Pipeline(self.config, ledger=ledger, clock=self.clock)
        if not pipeline.tables_in_sync():
            log.warning("tables_rewritten", reason="photometry table differs from the ledger")
            pipeline.rewrite_tables()
        tracker = StabilityTracker(settle_seconds=w.settle_seconds, clock=self.clock)
        watcher = Watcher(
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
        queued = watcher.start(catch_up=True)
        for row in ledger.pending():
            tracker.touch(row.path)
        notify.ready()
        notify.status(f"watching {len(watcher.roots)} folder(s)")
        log.info(
            "service_started",
            roots=[str(r) for r in watcher.roots],
            queued=queued,
            observer=watcher.kinds(),
            ledger=str(self.config.paths.state_file),
        )
        last_work = last_reconcile = self.clock()
        while not self.stop_requested:
            self._collect(watcher.queue, tracker)
            worked = self._reduce_settled(pipeline, tracker, watcher)
            worked |= bool(pipeline.tick())
            now = self.clock()
            if now - last_reconcile >= self.config.watch.reconcile_seconds:
                last_reconcile = now
                watcher.rescan()
                for row in ledger.pending():
                    tracker.touch(row.path)
            if watcher.check_and_restart():
                notify.watchdog()
            if worked or len(tracker) or pipeline.sets:
                last_work = now
            elif self.exit_when_idle is not None and now - last_work >= self.exit_when_idle:
                log.info("idle_exit", idle_seconds=round(now - last_work, 1))
                break
            self._wait(watcher.queue, tracker)
        return self._shutdown(pipeline, ledger)

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

    def _reduce_settled(self, pipeline, tracker, watcher):
        worked = False
        for path in tracker.poll():
            if self.stop_requested:
                tracker.touch(path)
                break
            root, _rel = watcher.split(path)
            outcome = pipeline.handle(path, root, since=self.clock())
            self.counts[outcome.status] = self.counts.get(outcome.status, 0) + 1
            if outcome.status == "incomplete":
                tracker.touch(path)
            worked |= outcome.status not in QUIET
        return worked

    def _shutdown(self, pipeline, ledger):
        notify.stopping()
        pipeline.flush()
        counts = ledger.counts()
        log.info("service_stopped", frames=counts, this_run=self.counts)
        return 0
