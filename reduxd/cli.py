"""The ``reduxd`` command: ``reduce``, ``watch``, ``status``, ``simulate``, ``serve``."""

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
    parser.add_argument("--version", action="version", version=f"reduxd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        importlib.import_module(COMMANDS[name]).register(subparsers)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reduxd: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
