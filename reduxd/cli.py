"""The ``reduxd`` command: ``reduce``, ``watch``, ``status``, ``simulate``."""

import argparse
import importlib
import sys

from reduxd import __version__
from reduxd.errors import ConfigError

COMMANDS = {
    "reduce": "reduxd.batch",
    "watch": "reduxd.daemon",
    "status": "reduxd.status",
    "simulate": "reduxd.simulate",
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
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reduxd: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
