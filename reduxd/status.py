"""``reduxd status``: what the service has done, from the ledger.

Safe while the service runs: the ledger is SQLite in WAL mode, so this reader
never blocks the daemon's writes. Times are shown in the local time zone, with
its name; the ledger is found from ``--state``, else from the config (``--config``,
else ``./config.toml`` or ``/etc/reduxd/config.toml`` when present), and when it
is missing the message lists every place looked at.
"""

import sys
from datetime import UTC, datetime
from pathlib import Path

from reduxd.config import load_config
from reduxd.lock import holder
from reduxd.store import Ledger

CONFIG_PLACES = ("config.toml", "/etc/reduxd/config.toml")


def register(subparsers):
    p = subparsers.add_parser(
        "status",
        help="frames by state, masters, latest frames, failures",
        description="Print the ledger's view: whether the service runs, frames by state, "
        "when the last frame arrived, masters in use, the last frames with their latency, "
        "failures with reasons.",
    )
    p.add_argument("--config", help="TOML config file (default: ./config.toml, /etc/reduxd)")
    p.add_argument("--state", help="ledger file (default from the config)")
    p.add_argument("-n", type=int, default=10, help="how many recent frames to show")
    p.set_defaults(func=run)


def find_ledger(args):
    """Return ``(path or None, [where it looked, as text])``."""
    looked = []
    if args.state:
        looked.append(f"{args.state} (--state)")
        return (Path(args.state) if Path(args.state).exists() else None), looked
    configs = [args.config] if args.config else [p for p in CONFIG_PLACES if Path(p).exists()]
    for name in configs or [None]:
        config = load_config(name)
        state = Path(config.paths.state_file)
        key = "[paths] state" if config.paths.state else "[paths] outdir + reduxd.sqlite"
        looked.append(f"{state.absolute()} ({key} of {config.source})")
        if state.exists():
            return state, looked
    return None, looked


def run(args):
    state, looked = find_ledger(args)
    if state is None:
        print(
            "reduxd status: no ledger found; looked at:\n"
            + "\n".join(f"  {place}" for place in looked)
            + "\ngive the service's config (--config FILE) or its ledger (--state FILE)",
            file=sys.stderr,
        )
        return 1
    with Ledger(state) as ledger:
        print(f"ledger: {state.absolute()}")
        print(service_line(state))
        print(format_status(ledger, n=args.n))
    return 0


def service_line(state):
    """Whether a ``reduxd watch`` holds this ledger's lock (its pid, since when)."""
    info = holder(state)
    if not info:
        return f"service: not running on this ledger (no process holds {state}.lock)"
    return (
        f"service: running, pid {info.get('pid')}, since {_when(info.get('started'))}"
        f" ({info.get('command', '')})"
    )


def _when(value):
    """A stored time (ISO text or epoch seconds) in the local zone, with the zone's name."""
    if value in (None, ""):
        return "-"
    if isinstance(value, int | float):
        when = datetime.fromtimestamp(value, UTC)
    else:
        when = datetime.fromisoformat(str(value))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def ago(text, now=None):
    """How long ago an ISO time was, e.g. ``'3.5 min ago'``.

    Examples
    --------
    >>> ago("2025-06-01T03:00:00+00:00", now=datetime(2025, 6, 1, 3, 0, 42, tzinfo=UTC))
    '42.0 s ago'
    """
    if not text:
        return "no frame yet"
    now = now or datetime.now(UTC)
    return f"{format_latency((now - datetime.fromisoformat(text)).total_seconds())} ago"


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
    """Return the status report as text, with labelled columns.

    Latency is from the raw file's last write (mtime) to the frame being done, so
    it includes the settle time; frames found at start-up show their age.
    """
    counts = ledger.counts()
    lines = ["frames: " + ", ".join(f"{state} {k}" for state, k in counts.items())]
    last = ledger.last_arrival()
    lines.append(f"last frame arrived: {_when(last)} ({ago(last)})")
    masters = ledger.masters()
    lines.append(f"masters in use ({len(masters)}):")
    if masters:
        lines.append(f"  {'kind':<12} {'filt/exp':<8} {'frames':<6} {'night':<10}  "
                     f"{'lights':<6} file")  # fmt: skip
    for m in masters:
        what = m.filter or (f"{m.exptime:g} s" if m.exptime is not None else "")
        used = len(ledger.frames_calibrated_with(m.id))
        lines.append(f"  {m.kind:<12} {what:<8} {m.ncombine:<6} {m.night:<10}  {used:<6} {m.path}")
    lines.append(f"last {n} frames:")
    lines.append(f"  {'updated':<23}  {'state':<11} {'kind':<6} {'latency':>9}  "
                 f"{'stars':>5}  file")  # fmt: skip
    for row in ledger.recent(n):
        stars = "" if row.info.n_stars is None else row.info.n_stars
        version = row.info.version
        note = f" v{version}" if version and version > 1 else ""
        if row.state != "done" and row.last_error:
            note += f"  ({row.last_error})"
        lines.append(
            f"  {_when(row.updated):<23}  {row.state:<11} {row.kind or '?':<6} "
            f"{format_latency(row.latency):>9}  {stars!s:>5}  {row.relpath}{note}"
        )
    lines.append("  (latency: from the raw file's last write to its rows being written)")
    failures = ledger.failures()
    lines.append(f"failures ({len(failures)}):")
    lines += [f"  {row.state:<11} {row.relpath}: {row.last_error}" for row in failures]
    return "\n".join(lines)
