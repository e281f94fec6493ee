"""``reduxd reduce``: re-reduce a night in batch with the old script's flags.

It drives the same :class:`reduxd.pipeline.Pipeline` as the daemon. Calibration
frames are combined first, then lights. With ``--jobs N`` lights are reduced in
N worker processes; the ledger, the tables and star numbering stay in the main
process, in frame order, so any number of jobs gives the same tables.

Running again into the same output folder does only what is missing (frames the
ledger knows as done are skipped; products are not rewritten when nothing
changed). Products are not fsynced one by one (the daemon's are): a light whose
reduced FITS or finder chart is missing or empty, e.g. after a power cut, is
reduced again by the next run. ``--redo`` reduces everything again: the new
photometry rows supersede the old ones (``version``, ``current`` columns).

Exit status: 0 when something was reduced (or had been, in an earlier run),
even if some files were refused (they are listed in the summary, with the
reason); 1 when nothing could be reduced (no FITS files, or every one refused);
2 when the inputs are unusable (a data folder that does not exist).
"""

import contextlib
import gc
import importlib
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path

from reduxd import __version__, executors, heap, lock
from reduxd.cliargs import OLD_FORMS, FilterNames, checked
from reduxd.config import load_config
from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.executors import EXECUTORS
from reduxd.fingerprint import changes, run_settings
from reduxd.fitsio import probe
from reduxd.framemeta import FrameMeta
from reduxd.frames import classify
from reduxd.log import configure_logging, get_logger
from reduxd.nightplan import NightProgress, plan_nights
from reduxd.outcomes import recover_interrupted
from reduxd.pipeline import WAITING, Outcome, Pipeline
from reduxd.products import tables
from reduxd.readahead import ReadAhead
from reduxd.reduce import load_light_modules, read_light
from reduxd.runplan import run_plan, unused_flags
from reduxd.store import Ledger, ledger_error
from reduxd.watch.watcher import FileFilter, scan

log = get_logger("reduxd.batch")
EXIT_OK, EXIT_NOTHING, EXIT_UNUSABLE = 0, 1, 2
LATER_MODULES = (load_light_modules, "reduxd.products.stacks")
# Made while the lights run: the photometry table's ECSV header (astropy's YAML, ~0.07 s,
# cached), which the first commit writes, while the field's first light is measured and a
# core waits.
TAIL_PRELOAD = (tables.ecsv_header,)
# Imported by the process that plots the light curves (executors.side_process), forked as
# the run starts: matplotlib costs ~0.3 s, on the core this process leaves idle then.
PLOT_MODULES = ("matplotlib.figure", "matplotlib.backends.backend_agg")
# Lights in the pool per job while stacks' runs are started early: a run waits for
# at most this many lights per worker before it starts.
WINDOW_PER_JOB = 4


class InputError(Exception):
    """The command's inputs cannot be used at all (exit status 2)."""


def register(subparsers):
    p = subparsers.add_parser(
        "reduce",
        help="re-reduce a night (old script's flags)",
        description="Reduce every frame under the data folders: masters first, then lights.",
    )
    forms = OLD_FORMS
    p.add_argument(*forms["datadir"], dest="datadir", nargs="+", help="folder(s) with raw frames")
    p.add_argument(
        *forms["caldir"], dest="caldir", nargs="+", help="folder(s) with calibration frames"
    )
    p.add_argument(*forms["outdir"], dest="outdir", help="output folder")
    p.add_argument(
        *forms["radius"],
        dest="radius",
        action=checked(lambda v: v > 0, "a radius > 0 pixels"),
        help="aperture radius, pixels",
    )
    p.add_argument(
        *forms["length"],
        dest="length",
        action=checked(lambda v: v >= 5, "an integer >= 5", int),
        help="subframe side for the radial sky fit",
    )
    p.add_argument(
        *forms["smoothing"],
        dest="smoothing",
        action=checked(lambda v: v >= 0, "a sigma >= 0"),
        help="Gaussian smoothing sigma (0 = off)",
    )
    p.add_argument(
        "-x",
        "--excludeFilter",
        nargs="+",
        action=FilterNames,
        metavar="FILTER",
        help="skip lights in these filters (any name, e.g. U B r Ha OIII)",
    )
    p.add_argument("--save", metavar="TITLE", help="base name of the output tables")
    p.add_argument(
        *forms["level"], dest="level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    p.add_argument(*forms["version"], action="version", version=f"reduxd {__version__}")
    p.add_argument(
        "--force",
        action="store_true",
        default=None,
        help="go on without missing masters (the header says so)",
    )
    p.add_argument("--no-flat", action="store_true", default=None, help="do not flat-field")
    p.add_argument("--no-dark", action="store_true", default=None, help="do not subtract darks")
    p.add_argument("--config", help="TOML config file (flags override it)")
    p.add_argument(
        "--jobs",
        default=1,
        action=checked(lambda v: v >= 1, "an integer >= 1", int),
        help="worker processes (local: a process pool; dask-local: Dask workers)",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where masters, lights and stacks are computed: local (default), dask (an existing "
        "cluster, see --scheduler), dask-local (a Dask LocalCluster of --jobs workers)",
    )
    p.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="Dask scheduler for --executor dask"
    )
    p.add_argument(
        "--redo",
        action="store_true",
        help="reduce again frames already done (new rows supersede old)",
    )
    p.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="seconds between progress lines when stderr is not a terminal (default 10)",
    )
    p.set_defaults(func=run)


def overrides_from_args(args):
    """Return the config overrides given on the command line (nested dict)."""
    pairs = {
        ("paths", "data"): args.datadir,
        ("paths", "calibration"): args.caldir,
        ("paths", "outdir"): args.outdir,
        ("photometry", "radius"): args.radius,
        ("photometry", "subframe"): args.length,
        ("photometry", "smoothing"): args.smoothing,
        ("calibration", "exclude_filters"): args.excludeFilter,
        ("calibration", "force"): args.force,
        ("calibration", "no_flat"): args.no_flat,
        ("calibration", "no_dark"): args.no_dark,
        ("output", "save"): args.save,
        ("logging", "level"): args.level,
    }
    out = {}
    for (section, key), value in pairs.items():
        if value is not None:
            out.setdefault(section, {})[key] = value
    return out


def discover(roots, config, *, exclude=()):
    """Return ``(root, path)`` of every FITS file under ``roots`` (sorted, no duplicates).

    Files below a folder of ``exclude`` (the output folder, when it lies inside a
    data folder: ``-D . -O analysis``) are left out, so products are never taken
    for raw frames.

    Raises
    ------
    InputError
        A root is not a readable folder.
    """
    file_filter = FileFilter(config.watch.ignore_patterns, config.reading.extensions)
    skip = [Path(p).resolve() for p in exclude]
    seen, out = set(), []
    for root in roots:
        root = Path(root).resolve()
        if not root.is_dir():
            raise InputError(f"{root} is not a folder")
        try:
            paths = list(scan(root, file_filter=file_filter))
        except OSError as exc:
            raise InputError(f"{root}: cannot read: {exc.strerror or exc}") from exc
        for path in paths:
            resolved = path.resolve()
            if resolved in seen or any(resolved.is_relative_to(s) for s in skip):
                continue
            seen.add(resolved)
            out.append((root, path))
    return out


def unreadable_names(found):
    """Split off files whose name is not valid UTF-8 (the ledger stores names as text)."""
    good, bad = [], []
    for root, path in found:
        try:
            str(path).encode("utf-8")
            good.append((root, path))
        except UnicodeEncodeError:
            bad.append(
                {
                    "file": ascii(str(path)),
                    "status": "quarantined",
                    "reason": "file name is not valid UTF-8: rename it",
                }
            )
    return good, bad


def sort_frames(found, config, *, infos=None):
    """Split into calibration frames and lights (lights in time order), by header only.

    ``infos``, a dict, receives ``{path: FrameInfo}`` of each light (as the pipeline
    classifies it: the path relative to its root, in posix form), so that neither the
    pipeline nor the night plan reads them again.
    """
    cal, lights = [], []
    for root, path in found:
        try:
            layout = probe(path, max_bytes=config.reading.max_bytes)
            info = classify(layout.header, path.relative_to(root).as_posix(), config.classify)
        except (FrameIncomplete, FrameRejected):
            cal.append((root, path, None))  # the pipeline records why
            continue
        if info.kind == "light":
            lights.append((info.date_obs.timestamp() if info.date_obs else 0.0, root, path))
            if infos is not None:
                infos[path] = info
        else:
            cal.append((root, path, info))
    lights.sort(key=lambda item: (item[0], str(item[2])))
    return cal, [(root, path) for _, root, path in lights]


class Progress:
    """A progress bar on a terminal; plain lines every ``every`` seconds otherwise.

    Off a terminal (a log file, a pipe, cron) a line such as
    ``progress: 40/160 frames (25%), 2.4 frames/s, about 50 s left`` is written
    when ``every`` seconds have passed since the last one, and always for the
    last frame; ``every=0`` writes one line per frame.

    Examples
    --------
    >>> import io
    >>> ticks = iter([0.0, 4.0, 11.0, 12.0])
    >>> out = io.StringIO()
    >>> p = Progress(3, stream=out, every=10.0, clock=lambda: next(ticks))
    >>> for name in 'abc':
    ...     p.step(name)
    >>> print(out.getvalue(), end='')
    progress: 2/3 frames (67%), 0.2 frames/s, about 6 s left
    progress: 3/3 frames (100%), 0.2 frames/s, done in 12 s
    """

    def __init__(self, total, *, stream=None, every=10.0, clock=time.monotonic):
        self.total, self.done, self.every, self.clock = total, 0, max(float(every), 0.0), clock
        self.stream = sys.stderr if stream is None else stream
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.started = self.last = clock()
        self._bar = self._redirect = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def start(self):
        """On a terminal: a tqdm bar, and log lines written above it (never glued to it).

        Called by the first :meth:`step`; the last one calls :meth:`close`.
        """
        if self.tty and self._bar is None:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._bar = tqdm(total=self.total, file=self.stream, unit="frame", leave=False)
            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()

    def close(self):
        """Remove the bar and give the log handlers back (on a terminal)."""
        if self._bar is not None:
            self._redirect.__exit__(None, None, None)
            self._bar.close()
            self._bar = None

    def write(self, text):
        """Write one line of its own (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def step(self, label=""):
        if self.done == 0:
            self.start()
        self.done += 1
        now = self.clock()
        if self._bar is not None:
            self._bar.set_postfix_str(label[-40:], refresh=False)
            self._bar.update(1)
            if self.done >= self.total:
                self.close()
        elif not self.tty and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now):
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        pct = 100.0 * self.done / max(self.total, 1)
        text = f"progress: {self.done}/{self.total} frames ({pct:.0f}%), {rate:.1f} frames/s"
        if self.done >= self.total:
            return f"{text}, done in {elapsed:.0f} s"
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        return f"{text}, about {left:.0f} s left"


def run(args):
    """Run ``reduxd reduce``; return the exit status (see the module docstring)."""
    with contextlib.ExitStack() as outer:  # the plots' process, closed last
        return _run(args, outer)


def _plots_start():
    """The plots' process: matplotlib imported with the collector off, then frozen (a
    collection there would walk it; see reduxd.heap). It ignores Ctrl-C, which reaches the
    whole process group: waiting for its first task there, it would die with a traceback;
    the coordinator stops it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if heap.in_program():
        gc.disable()
    Preload.load(PLOT_MODULES)
    heap.settle(collect=False)


def _run(args, outer):
    config = load_config(args.config, overrides_from_args(args))
    try:
        executors.require(args.executor, args.scheduler)
    except executors.ExecutorError as exc:
        print(f"reduxd reduce: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if args.executor != "local":  # workers elsewhere: absolute paths only
        config = executors.absolute_outdir(config)
    logging_options = dict(
        level=config.logging.level,
        json_file=config.logging.json_file or None,
        third_party_debug=config.logging.third_party_debug,
    )
    configure_logging(**logging_options)
    started = time.monotonic()
    outdir = Path(config.paths.outdir)
    roots = list(config.paths.data) + list(config.paths.calibration)
    try:
        found = discover(roots, config, exclude=[outdir])
    except InputError as exc:
        print(f"reduxd reduce: error: {exc}{_where_data(args, config)}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not found:
        where = ", ".join(str(Path(r).resolve()) for r in roots) or "(no data folder given)"
        exts = " ".join(config.reading.extensions)
        print(
            f"reduxd reduce: nothing to reduce: no FITS files ({exts}) under {where}",
            file=sys.stderr,
        )
        return EXIT_NOTHING
    outdir.mkdir(parents=True, exist_ok=True)
    log_file = outdir / run_log_name()
    configure_logging(**logging_options, text_file=log_file)  # the old script's redux_*.log
    plots = outer.enter_context(  # forked now: it logs as this process does
        executors.side_process(args.executor, args.jobs, _plots_start)
    )
    log.info("run_plan", **run_plan(config), command=" ".join(sys.argv), log_file=str(log_file))
    for unused in unused_flags(config, getattr(args, "typed", None) or {}):
        log.warning("flag_unused", **unused)
    found, bad_names = unreadable_names(found)
    for bad in bad_names:
        log.error("frame_quarantined", file=bad["file"], reason=bad["reason"])
    light_infos = {}
    cal, lights = sort_frames(found, config, infos=light_infos)
    offset = config.site.utc_offset_hours
    light_nights = {path: info.night(offset) for path, info in light_infos.items()}
    plans, night_of = plan_nights(cal, lights, utc_offset_hours=offset, night_of_light=light_nights)
    try:  # ledger trouble is named, with advice, by the command line (exit 4)
        Path(config.paths.state_file).parent.mkdir(parents=True, exist_ok=True)
        held = lock.acquire(config.paths.state_file, command="reduce")
    except OSError as exc:
        raise ledger_error(config.paths.state_file, exc) from exc
    with contextlib.ExitStack() as stack:
        stack.enter_context(held)
        ledger = stack.enter_context(Ledger(config.paths.state_file, durable=False))
        try:  # after the ledger: its trouble is named first, alone
            workers = stack.enter_context(
                executors.open_executor(args.executor, jobs=args.jobs, scheduler=args.scheduler)
            )
            executors.check_paths(workers, [Path(p).resolve() for p in [*roots, outdir]])
        except executors.ExecutorError as exc:
            print(f"reduxd reduce: error: {exc}", file=sys.stderr)
            return EXIT_UNUSABLE
        config = uncalibrated_if_no_calibration(config, cal, lights, ledger, roots)
        announce(workers, plans)
        pool = workers.pool
        recover_interrupted(ledger, max_tries=config.watch.max_tries)
        pipeline = Pipeline(config, ledger=ledger, durable=False, calibration_level="debug")
        if args.redo:
            _reset_done(ledger, found)
        else:
            pipeline.repair_products(only=_wanted(found))
            _reset_changed_settings(ledger, found, config)
        _reset_no_longer_excluded(ledger, found, pipeline)
        pipeline.tables.sync()
        progress = NightProgress(
            Progress(len(cal) + len(lights), every=args.progress_every), plans, night_of
        )
        outcomes = _ingest(pipeline, cal, progress)
        heap.settle()  # workers forked next share the frozen modules (see reduxd.heap)
        with executors.forked_now(pool, args.jobs) as masters_pool:  # forked before the preload
            preload = Preload(LATER_MODULES)  # imported while the masters are combined
            pipeline.flush(pool=masters_pool)  # the masters, in a pool when there is one
        preload.join()  # before the pool's fork: no import lock held by a thread
        heap.settle(collect=False)  # the lights' modules too (collected as they were made)
        pipeline.lightcurves.keep_rows()  # the final light curves built from memory
        pipeline.cache.share_with_workers()  # workers forked from now on: masters not read
        executors.start_workers(pool)  # forked before the next thread can hold an import lock
        tail = Preload(TAIL_PRELOAD)
        early = _early_runs(pipeline, pool, len(lights))
        window = WINDOW_PER_JOB * args.jobs if early is not None else None
        committed = early.offer if early is not None else None
        outcomes += pipeline.handle_many(
            lights, pool=pool, progress=progress, committed=committed, window=window,
            infos=light_infos,
        )  # fmt: skip
        outcomes += pipeline.retry_waiting()
        progress.close()  # a light waiting for good leaves the bar short of its total
        tail.join()
        stacked = _stacks_and_curves(pipeline, pool, early, plots)
        summary = make_summary(ledger, outcomes, stacked, time.monotonic() - started, found=found)
    summary["refused"] += bad_names
    summary["frames"] += len(bad_names)
    write_summary(outdir, summary, save=config.output.save)
    print(format_summary(summary))
    logging.shutdown()  # the run's log file is complete; the summary goes at its end
    with open(log_file, "a", encoding="utf-8") as fh:
        fh.write(format_summary(summary) + "\n")
    if summary["usable"]:
        return EXIT_OK
    print(
        f"reduxd reduce: nothing could be reduced: {len(summary['refused'])} of "
        f"{summary['frames']} files refused (see the summary above)",
        file=sys.stderr,
    )
    return EXIT_NOTHING


def uncalibrated_if_no_calibration(config, cal, lights, ledger, roots):
    """The run's config: with ``force`` when there is nothing to calibrate with at all.

    A camera that never takes calibration frames (no bias, dark or flat under the
    data and calibration folders, no master in the ledger) has nothing to wait
    for: its lights are measured uncalibrated, as with ``--force``, and one warning
    says so. A night with some calibration frames keeps the policy: a light
    missing its dark or flat is refused, naming ``--force``, ``--no-dark`` and
    ``--no-flat``.
    """
    c = config.calibration
    if c.force or not lights or any(info for *_, info in cal) or ledger.masters(status=None):
        return config
    log.warning(
        "no_calibration_frames",
        reason="no bias, dark or flat found and no master in the ledger: "
        "the lights are measured uncalibrated, as with --force "
        "(give -C FOLDER to calibrate; --force, --no-dark or --no-flat silence this)",
        folders=[str(Path(r)) for r in roots],
        lights=len(lights),
    )
    return replace(config, calibration=replace(c, force=True))


def run_log_name(now=None):
    """The per-run log file's name, as the old script named it.

    Examples
    --------
    >>> from datetime import datetime
    >>> run_log_name(datetime(2025, 6, 1, 3, 4, 5))
    'redux_20250601_030405.log'
    """
    return f"redux_{(now or datetime.now()):%Y%m%d_%H%M%S}.log"


def _where_data(args, config):
    """Why that folder was used, when the user did not type ``-D``."""
    if args.datadir is not None:
        return ""
    return (
        f" (no -D/--datadir given, so [paths] data of {config.source} was used:"
        f" {', '.join(config.paths.data)}); give the raw folder with -D FOLDER"
    )


def _ingest(pipeline, cal, progress):
    """The calibration frames' outcomes; each frame is read while the one before is recorded."""
    read = partial(read_light, config=pipeline.config)
    with ReadAhead([path for _root, path, _info in cal], read) as ahead:
        pipeline.read_ahead = ahead
        try:
            return [_step(pipeline, root, path, progress) for root, path, _info in cal]
        finally:
            pipeline.read_ahead = None


def _step(pipeline, root, path, progress):
    outcome = pipeline.handle(path, root)
    progress.step(outcome.path)
    return outcome


def _wanted(found):
    return {(str(root), path.relative_to(root).as_posix()) for root, path in found}


def _reset_done(ledger, found):
    wanted = _wanted(found)
    for row in ledger.frames(state="done"):
        if (row.root, row.relpath) in wanted:
            ledger.reset(row.id)


def announce(workers, plans):
    """Say on stderr where the work runs (and the Dask dashboard) and what each night holds."""
    lines = [f"reduxd reduce: {len(plans)} night(s); executor: {workers.description}"]
    if workers.dashboard:
        lines.append(f"reduxd reduce: Dask dashboard: {workers.dashboard}")
    lines += [f"  {plan.describe()}" for plan in plans.values()]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _reset_changed_settings(ledger, found, config):
    """Send back to ``seen`` the done lights whose rows were made with other settings.

    One log line says what changed and how many lights are reduced again.
    """
    wanted, settings = _wanted(found), run_settings(config)
    stored = ledger.fingerprints()
    again, what = [], Counter()
    for row in ledger.frames(kind="light", state="done"):
        if (row.root, row.relpath) not in wanted:
            continue
        changed = changes(stored.get(row.id, {}), settings)
        if changed:
            again.append(row.id)
            what.update(changed)
    if again:
        log.info(
            "settings_changed",
            lights=len(again),
            changed="; ".join(what),
            action="reduced again, new rows supersede the old",
        )
    for frame_id in again:
        ledger.reset(frame_id)


def _reset_no_longer_excluded(ledger, found, pipeline):
    """Send back to ``seen`` the frames an earlier run left out that this run wants.

    Excluded lights whose filter is no longer excluded, and calibration frames
    set aside (``-x``, ``--no-flat``, ``--no-dark``) that this run would use.
    """
    wanted, cal = _wanted(found), pipeline.calibrations
    for row in ledger.frames(kind="light", state="excluded"):
        if (row.root, row.relpath) in wanted and not cal.is_excluded(row.info.excluded):
            ledger.reset(row.id)
    for row in ledger.frames(state="done"):
        if row.info.skipped is None or (row.root, row.relpath) not in wanted:
            continue
        if cal.skipped(row.kind, row.info.filter) is None:
            ledger.reset(row.id)


def _early_runs(pipeline, pool, n_lights):
    """The stacks' runs to start while the lights are reduced (a local process pool
    with stacks to write), or None (:class:`reduxd.products.stacks.EarlyRuns`)."""
    from reduxd.products import stacks  # see LATER_MODULES

    if not pipeline.config.output.stack or not isinstance(pool, ProcessPoolExecutor):
        return None
    config = pipeline.config
    return stacks.EarlyRuns(pipeline.outdir, pool, n_lights=n_lights,
                            max_bytes=config.reading.max_bytes, rules=config.classify)  # fmt: skip


def _stacks_and_curves(pipeline, pool, early=None, plots=None):
    """The light curves and the stacks, side by side in the workers; the stack paths.

    With a local process pool the stacks' last runs (those not started while the
    lights were reduced, ``early``) go to the workers first, then each stack, its
    runs merged, is measured and written by a worker while the light curves are
    built here from the rows kept meanwhile; then a worker writes the curves' tables
    and ``plots`` (the process forked as the run started, with matplotlib) their
    plots, while this process draws the stacks' finder charts, which mark the
    curves' comparisons. Dask workers may not see the ledger: not there.
    """
    from reduxd.products import stacks  # see LATER_MODULES

    local = pool if isinstance(pool, ProcessPoolExecutor) else None
    curves = pipeline.lightcurves
    stack = pipeline.config.output.stack
    try:
        pending = stacks.start_stacks(pipeline, pool, early=early) if stack else None
        if stack:  # measured and written by the workers while the curves are built here
            stacks.measure_stacks(pipeline, pending, pool=local)
        if not local or executors.broken(plots):  # its process died: the plots in the pool
            plots = None
        pipeline.update_curves(pool=local, plots=plots)
        return stacks.finish_stacks(pipeline, pending, ensembles=curves.marked) if stack else []
    finally:
        curves.close()
        if early is not None:
            early.cancel()


class Preload:
    """Import modules in a background thread; :meth:`join` before forking workers
    (a worker forked while the thread holds a module's lock would wait for it forever).

    The calibration frames need numpy and astropy.io.fits only; the lights' steps and
    the stacks (scipy among them, about 0.3 s of imports) load while the masters are
    combined: in a pool forked before the thread starts
    (:func:`reduxd.executors.forked_now`), or in this process without one. ``names``
    may hold functions too (called with no argument: a cached value made ahead).
    """

    def __init__(self, names):
        self._thread = threading.Thread(target=self.load, args=(names,), daemon=True)
        self._thread.start()

    @staticmethod
    def load(names):
        """Import (or call) ``names`` in order; stop at the first that fails."""
        for name in names:
            try:
                name() if callable(name) else importlib.import_module(name)
            except Exception:  # the import where the module is used reports it
                return

    def join(self):
        self._thread.join()


def refused_files(ledger, found):
    """Files of this run that are not done, from the ledger (this run's or earlier runs').

    Returns a list of ``{'file', 'status', 'reason'}``: ``status`` is the ledger
    state (``quarantined``, ``failed``, ``changed``), or for a frame still to be
    retried ``incomplete`` or ``waiting`` (for a master).
    """
    wanted = _wanted(found)
    rows = [r for r in ledger.failures() + ledger.pending() if (r.root, r.relpath) in wanted]
    out = []
    for row in sorted(rows, key=lambda r: (r.root, r.relpath)):
        reason = row.last_error or ""
        status = "retry" if row.state == "seen" else row.state
        prefix = {"waiting": WAITING, "incomplete": "incomplete"}.get(status)
        reason = reason.removeprefix(prefix).lstrip(": ") if prefix else reason
        out.append({"file": row.relpath, "status": status, "reason": reason or "unknown"})
    return out


def make_summary(ledger, outcomes, stacked, seconds, *, found=None):
    """Return the run summary (a JSON-able dict).

    ``found`` (the run's ``(root, path)`` list) lets the refused files come from
    the ledger, so a re-run lists files refused in earlier runs too; without it,
    from this run's outcomes.
    """
    status = Counter(o.status for o in outcomes)
    groups = Counter()
    for o in outcomes:
        if o.status in ("reduced", "ingested"):
            groups[_group(o)] += 1
    if found is not None:
        refused = refused_files(ledger, found)
    else:
        refused = [
            {"file": o.path, "status": o.status, "reason": o.reason}
            for o in outcomes
            if o.status in ("quarantined", "failed", "incomplete", "waiting", "changed")
        ]
    already = sum(1 for o in outcomes if o.status == "skipped" and o.reason == "done")
    masters = ledger.masters()
    return {
        "frames": len(found) if found is not None else len(outcomes),
        "reduced": status.get("reduced", 0),
        "ingested": status.get("ingested", 0),
        "already_done": already,
        "excluded": status.get("excluded", 0),
        "usable": bool(status.get("reduced") or status.get("ingested") or already or masters),
        "status": dict(sorted(status.items())),
        "groups": dict(sorted(groups.items())),
        "masters": [
            {
                "kind": m.kind,
                "file": m.path,
                "filter": m.filter,
                "exptime": m.exptime,
                "ncombine": m.ncombine,
            }
            for m in masters
        ],
        "stacks": [str(p) for p in stacked],
        "refused": refused,
        "seconds": round(seconds, 2),
    }


def _group(outcome):
    info = outcome.info or FrameMeta()
    if outcome.kind == "light":
        exp = "?s" if info.exptime is None else f"{info.exptime:g}s"
        return f"light {info.object} {info.filter} {exp}"
    return outcome.kind or "unknown"


def format_summary(summary):
    """Return the summary as readable text."""
    lines = [
        f"reduxd reduce: {summary['frames']} files in {summary['seconds']:.1f} s: "
        f"{summary['reduced']} lights reduced, {summary['ingested']} calibration frames, "
        f"{summary['already_done']} already done, {summary['excluded']} excluded, "
        f"{len(summary['refused'])} refused",
    ]
    lines += [f"  {n:4d}  {group}" for group, n in summary["groups"].items()]
    lines.append(f"masters ({len(summary['masters'])}):")
    lines += [f"  {m['kind']:<12} {m['file']}" for m in summary["masters"]]
    if summary["stacks"]:
        lines.append(f"stacks ({len(summary['stacks'])}):")
        lines += [f"  {p}" for p in summary["stacks"]]
    if summary["refused"]:
        lines.append(f"refused ({len(summary['refused'])}):")
        lines += [f"  {r['file']}: {r['status']}: {r['reason']}" for r in summary["refused"]]
    return "\n".join(lines)


def write_summary(outdir, summary, *, save=""):
    base = f"{save}_summary" if save else "summary"
    (Path(outdir) / f"{base}.json").write_text(json.dumps(summary, indent=2, default=str))
    (Path(outdir) / f"{base}.txt").write_text(format_summary(summary) + "\n")


__all__ = ["Outcome", "Progress", "register", "run"]
