"""The ``reduxd`` command: ``reduce``, ``watch``, ``status``, ``simulate``, ``serve``."""

import argparse
import gc
import importlib
import sqlite3
import sys

from reduxd import __version__, blas, heap  # noqa: F401 (blas: before numpy loads)
from reduxd.errors import ConfigError, OutputUnavailable, is_transient
from reduxd.lock import LedgerInUse
from reduxd.log import get_logger
from reduxd.store import LedgerError

EXIT_IN_USE = 3  # another reduxd writes to this ledger (see README: exit status)
EXIT_LEDGER = 4  # the ledger cannot be opened or written (damaged, not writable, disk full)
EXIT_OUTPUT = 5  # reduxd reduce: products or tables cannot be written (the daemon pauses)

COMMANDS = {
    "reduce": "reduxd.batch",
    "watch": "reduxd.daemon",
    "status": "reduxd.status",
    "simulate": "reduxd.simulate",
    "serve": "reduxd.web.server",
}


def build_parser(command=None):
    """The argument parser: every command, or only ``command`` (its module alone is imported).

    Each command lives in its own module; importing all of them costs a few
    tenths of a second (scipy for ``simulate``, watchdog for ``watch``).
    """
    parser = argparse.ArgumentParser(
        prog="reduxd", description="Live data reduction for small observatories."
    )
    version = f"reduxd {__version__}"
    parser.add_argument("-V", "--version", "-version", action="version", version=version)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(COMMANDS[name]).register(subparsers)
    parser.commands = subparsers.choices  # a mistyped flag gets its command's usage
    return parser


def main(argv=None):
    """Run one command; return its exit status.

    Called as the program (``argv`` None) the heap is frozen at the end: the
    interpreter's last collections then skip it, which saves 0.3-0.5 s at the exit
    of a batch run. Atexit handlers run as before; objects still in reference
    cycles then are left to the operating system (reduxd closes its own files).
    The command's modules are imported with the collector off and frozen before the
    command runs (:mod:`reduxd.heap`).
    """
    if argv is None:
        heap.program_start()  # collector off while the command's modules import
        try:
            return main(sys.argv[1:])
        finally:
            gc.freeze()
    argv = list(argv)
    parser = build_parser(argv[0] if argv else None)
    heap.settle(collect=False)  # the modules' objects are frozen (see reduxd.heap)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reduxd: configuration error: {exc}", file=sys.stderr)
        return 2
    except LedgerInUse as exc:
        print(f"reduxd: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except LedgerError as exc:
        get_logger("reduxd").error("ledger_error", reason=str(exc))
        print(f"reduxd: {exc}", file=sys.stderr)
        return EXIT_LEDGER
    except (OutputUnavailable, sqlite3.Error) as exc:  # in the middle of a batch run
        transient = is_transient(exc)
        event = "output_unavailable" if transient else "ledger_error"
        get_logger("reduxd").error(event, reason=str(exc))
        advice = "free space or make the output folder writable, then run again: nothing is lost"
        print(f"reduxd: {exc}: " + (advice if transient else "see README, Reliability"),
              file=sys.stderr)  # fmt: skip
        return EXIT_OUTPUT if transient else EXIT_LEDGER
    except KeyboardInterrupt:
        return 130
