"""``reduxd status``: what the service has done, from the ledger."""

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


def format_status(ledger, *, n=10):
    """Return the status report as text."""
    counts = ledger.counts()
    lines = ["frames: " + ", ".join(f"{state} {k}" for state, k in counts.items())]
    masters = ledger.masters()
    lines.append(f"masters in use ({len(masters)}):")
    for m in masters:
        what = m.filter or (f"{m.exptime:g} s" if m.exptime is not None else "")
        lines.append(f"  {m.kind:<12} {what:<8} n={m.ncombine:<3} {m.night}  {m.path}")
    lines.append(f"last {n} frames:")
    for row in ledger.recent(n):
        latency = f"{row.latency * 1000:.0f} ms" if row.latency is not None else "-"
        stars = row.info.get("n_stars", "")
        lines.append(
            f"  {_when(row.updated)}  {row.state:<11} {row.kind or '?':<6} "
            f"{latency:>9}  {stars!s:>4}  {row.relpath}"
        )
    failures = ledger.failures()
    lines.append(f"failures ({len(failures)}):")
    lines += [f"  {row.state:<11} {row.relpath}: {row.last_error}" for row in failures]
    return "\n".join(lines)
