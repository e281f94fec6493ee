"""``reduxd status``: what the service has done, from the ledger.

Safe while the service runs: the ledger is SQLite in WAL mode, so this reader
never blocks the daemon's writes.
"""

import sys
from datetime import datetime
from pathlib import Path

from reduxd.config import load_config
from reduxd.store import Ledger


def register(subparsers):
    p = subparsers.add_parser(
        "status",
        help="frames by state, masters, latest frames, failures",
        description="Print the ledger's view: frames by state, masters in use, "
        "the last frames with their latency, failures with reasons.",
    )
    p.add_argument("--config", help="TOML config file")
    p.add_argument("--state", help="ledger file (default from the config)")
    p.add_argument("-n", type=int, default=10, help="how many recent frames to show")
    p.set_defaults(func=run)


def run(args):
    config = load_config(args.config)
    state = Path(args.state or config.paths.state_file)
    if not state.exists():
        print(f"reduxd status: no ledger at {state}", file=sys.stderr)
        return 1
    with Ledger(state) as ledger:
        print(format_status(ledger, n=args.n))
    return 0


def _when(text):
    if not text:
        return "-"
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S")


def format_latency(seconds):
    """Seconds as a short human duration.

    Examples
    --------
    >>> format_latency(0.0423), format_latency(3.5), format_latency(7200)
    ('42 ms', '3.5 s', '2.0 h')
    >>> format_latency(None)
    '-'
    """
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(ledger, *, n=10):
    """Return the status report as text.

    Latency is from the raw file's last write (mtime) to the frame being done, so
    it includes the settle time; frames found at start-up show their age.
    """
    counts = ledger.counts()
    lines = ["frames: " + ", ".join(f"{state} {k}" for state, k in counts.items())]
    masters = ledger.masters()
    lines.append(f"masters in use ({len(masters)}):")
    for m in masters:
        what = m.filter or (f"{m.exptime:g} s" if m.exptime is not None else "")
        used = len(ledger.frames_calibrated_with(m.id))
        lines.append(
            f"  {m.kind:<12} {what:<8} n={m.ncombine:<4} {m.night}  lights={used:<5} {m.path}"
        )
    lines.append(f"last {n} frames:")
    for row in ledger.recent(n):
        stars = row.info.get("n_stars", "")
        version = row.info.get("version")
        note = f" v{version}" if version and version > 1 else ""
        if row.state != "done" and row.last_error:
            note += f"  ({row.last_error})"
        lines.append(
            f"  {_when(row.updated)}  {row.state:<11} {row.kind or '?':<6} "
            f"{format_latency(row.latency):>9}  {stars!s:>4}  {row.relpath}{note}"
        )
    failures = ledger.failures()
    lines.append(f"failures ({len(failures)}):")
    lines += [f"  {row.state:<11} {row.relpath}: {row.last_error}" for row in failures]
    return "\n".join(lines)
