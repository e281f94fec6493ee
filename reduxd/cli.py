"""The ``reduxd`` command: ``reduce``, ``watch``, ``status``, ``simulate``."""

import argparse
import importlib
import sys

from reduxd import __version__
from reduxd.errors import ConfigError

COMMANDS = ("reduxd.batch", "reduxd.daemon", "reduxd.status", "reduxd.simulate")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="reduxd", description="Live data reduction for small observatories."
    )
    parser.add_argument("--version", action="version", version=f"reduxd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"reduxd: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
