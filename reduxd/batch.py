"""``reduxd reduce``: re-reduce a night in batch with the old script's flags.

It drives the same :class:`reduxd.pipeline.Pipeline` as the daemon. Calibration
frames are combined first, then lights. With ``--jobs N`` lights are reduced in
N worker processes; the ledger, the tables and star numbering stay in the main
process, in frame order, so any number of jobs gives the same tables.
"""

import json
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from reduxd.config import load_config
from reduxd.errors import FrameIncomplete, FrameRejected
from reduxd.fitsio import probe
from reduxd.frames import classify
from reduxd.log import configure_logging, get_logger
from reduxd.pipeline import Outcome, Pipeline
from reduxd.products import stacks
from reduxd.store import Ledger
from reduxd.watch.watcher import FileFilter, scan

log = get_logger("reduxd.batch")
OLD_FILTERS = ("U", "B", "V", "R", "I")


def register(subparsers):
    p = subparsers.add_parser(
        "reduce",
        help="re-reduce a night (old script's flags)",
        description="Reduce every frame under the data folders: masters first, then lights.",
    )
    p.add_argument("-D", "--datadir", nargs="+", help="folder(s) with raw frames")
    p.add_argument("-C", "--caldir", nargs="+", help="folder(s) with calibration frames")
    p.add_argument("-O", "--outdir", help="output folder")
    p.add_argument("-R", "--radius", type=float, help="aperture radius, pixels")
    p.add_argument("-L", "--length", type=int, help="subframe side for the radial sky fit")
    p.add_argument("-S", "--smoothing", type=float, help="Gaussian smoothing sigma (0 = off)")
    p.add_argument(
        "-x",
        "--excludeFilter",
        nargs="+",
        type=str.upper,
        choices=OLD_FILTERS,
        metavar="FILTER",
        help="skip lights in these filters (U B V R I)",
    )
    p.add_argument("--save", metavar="TITLE", help="base name of the output tables")
    p.add_argument("--level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument(
        "--force",
        action="store_true",
        default=None,
        help="go on without missing masters (the header says so)",
    )
    p.add_argument("--no-flat", action="store_true", default=None, help="do not flat-field")
    p.add_argument("--no-dark", action="store_true", default=None, help="do not subtract darks")
    p.add_argument("--config", help="TOML config file (flags override it)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes for lights")
    p.add_argument(
        "--redo",
        action="store_true",
        help="reduce again frames already done (new rows supersede old)",
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


def discover(roots, config):
    """Return ``(root, path)`` of every FITS file under ``roots`` (sorted, no duplicates)."""
    file_filter = FileFilter(config.watch.ignore_patterns, config.reading.extensions)
    seen, out = set(), []
    for root in roots:
        root = Path(root).resolve()
        if not root.is_dir():
            raise SystemExit(f"reduxd reduce: {root} is not a folder")
        for path in scan(root, file_filter=file_filter):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.append((root, path))
    return out


def sort_frames(found, config):
    """Split into calibration frames and lights (lights in time order), by header only."""
    cal, lights = [], []
    for root, path in found:
        try:
            layout = probe(path, max_bytes=config.reading.max_bytes)
            info = classify(layout.header, path.relative_to(root), config.classify)
        except (FrameIncomplete, FrameRejected):
            cal.append((root, path, None))  # the pipeline records why
            continue
        if info.kind == "light":
            lights.append((info.date_obs.timestamp() if info.date_obs else 0.0, root, path))
        else:
            cal.append((root, path, info))
    lights.sort(key=lambda item: (item[0], str(item[2])))
    return cal, [(root, path) for _, root, path in lights]


class Progress:
    """A progress bar on a terminal, plain periodic lines otherwise."""

    def __init__(self, total, *, stream=sys.stderr, every=10.0):
        self.total, self.done, self.stream, self.every = total, 0, stream, every
        self.tty = stream.isatty()
        self.started = self.last = time.monotonic()

    def step(self, label=""):
        self.done += 1
        now = time.monotonic()
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {label[-40:]:<40}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif now - self.last >= self.every or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            self.stream.write(f"progress: {self.done}/{self.total} frames ({rate:.1f}/s)\n")
            self.stream.flush()


def run(args):
    config = load_config(args.config, overrides_from_args(args))
    configure_logging(level=config.logging.level, json_file=config.logging.json_file or None)
    started = time.monotonic()
    outdir = Path(config.paths.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    roots = list(config.paths.data) + list(config.paths.calibration)
    found = discover(roots, config)
    cal, lights = sort_frames(found, config)
    with Ledger(config.paths.state_file) as ledger:
        pipeline = Pipeline(config, ledger=ledger)
        if args.redo:
            _reset_done(ledger, found)
        if not pipeline.tables_in_sync():
            pipeline.rewrite_tables()
        progress = Progress(len(cal) + len(lights))
        outcomes = [_step(pipeline, root, path, progress) for root, path, _info in cal]
        pipeline.flush()
        outcomes += reduce_lights(pipeline, lights, jobs=max(args.jobs, 1), progress=progress)
        outcomes += pipeline.retry_waiting()
        pipeline.update_curves()
        stacked = stacks.write_stacks(pipeline) if config.output.stack else []
        summary = make_summary(ledger, outcomes, stacked, time.monotonic() - started)
    write_summary(outdir, summary, save=config.output.save)
    print(format_summary(summary))
    return 0 if summary["reduced"] or summary["already_done"] else 1


def _step(pipeline, root, path, progress):
    outcome = pipeline.handle(path, root)
    progress.step(outcome.path)
    return outcome


def _reset_done(ledger, found):
    wanted = {(str(root), path.relative_to(root).as_posix()) for root, path in found}
    for row in ledger.frames(state="done"):
        if (row.root, row.relpath) in wanted:
            ledger.reset(row.id)


def reduce_lights(pipeline, lights, *, jobs, progress):
    """Reduce lights in time order, with ``jobs`` worker processes when > 1."""
    if jobs <= 1:
        return pipeline.handle_many(lights, progress=progress)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return pipeline.handle_many(lights, pool=pool, progress=progress)


def make_summary(ledger, outcomes, stacked, seconds):
    """Return the run summary (a JSON-able dict)."""
    status = Counter(o.status for o in outcomes)
    groups = Counter()
    for o in outcomes:
        if o.status in ("reduced", "ingested"):
            groups[_group(o)] += 1
    refused = [
        {"file": o.path, "status": o.status, "reason": o.reason}
        for o in outcomes
        if o.status in ("quarantined", "failed", "incomplete", "waiting", "changed")
    ]
    return {
        "frames": len(outcomes),
        "reduced": status.get("reduced", 0),
        "ingested": status.get("ingested", 0),
        "already_done": status.get("skipped", 0),
        "excluded": status.get("excluded", 0),
        "status": dict(status),
        "groups": dict(sorted(groups.items())),
        "masters": [
            {
                "kind": m.kind,
                "file": m.path,
                "filter": m.filter,
                "exptime": m.exptime,
                "ncombine": m.ncombine,
            }
            for m in ledger.masters()
        ],
        "stacks": [str(p) for p in stacked],
        "refused": refused,
        "seconds": round(seconds, 2),
    }


def _group(outcome):
    info = outcome.info or {}
    if outcome.kind == "light":
        return f"light {info.get('object')} {info.get('filter')} {info.get('exptime'):g}s"
    return outcome.kind or "unknown"


def format_summary(summary):
    """Return the summary as readable text."""
    lines = [
        f"reduxd reduce: {summary['frames']} frames in {summary['seconds']:.1f} s: "
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
        lines.append("refused:")
        lines += [f"  {r['file']}: {r['status']}: {r['reason']}" for r in summary["refused"]]
    return "\n".join(lines)


def write_summary(outdir, summary, *, save=""):
    base = f"{save}_summary" if save else "summary"
    (Path(outdir) / f"{base}.json").write_text(json.dumps(summary, indent=2, default=str))
    (Path(outdir) / f"{base}.txt").write_text(format_summary(summary) + "\n")


__all__ = ["Outcome", "register", "run"]
