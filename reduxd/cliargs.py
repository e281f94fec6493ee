"""Argument helpers for ``reduxd reduce``: the old script's flags, checked as typed.

The old ``data_redux.py`` registered single-dash long forms (``-datadir``,
``-radius`` ...) beside ``-D -C -O -R -L -S`` and ``--datadir``; its README used
abbreviations of them (``-r 15 -o analysis -d pg2213 -c calibration -l 50``).
:data:`OLD_FORMS` lists every spelling so that each old command line parses.
A bad value is reported with the flag exactly as the user typed it.
"""

import argparse

from reduxd.frames import normalise_filter

#: every spelling of each ``reduxd reduce`` flag that the old script accepted
OLD_FORMS = {
    "datadir": ("-D", "--datadir", "-datadir", "-d"),
    "caldir": ("-C", "--caldir", "-caldir", "-c"),
    "outdir": ("-O", "--outdir", "-outdir", "-o"),
    "radius": ("-R", "--radius", "-radius", "-r"),
    "length": ("-L", "--length", "-length", "-l"),
    "smoothing": ("-S", "--smoothing", "-smoothing", "-s"),
    "level": ("--level", "-level"),
    "version": ("-V", "--version", "-version"),
}


def checked(check, expected, convert=float):
    """An argparse action converting with ``convert`` and refusing values failing ``check``.

    The error names the flag as typed (``-R 0``, ``-radius 0``) and what was expected,
    under the subcommand's usage.
    """

    class Checked(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            try:
                value = convert(values)
                ok = check(value)
            except ValueError:
                ok = False
            if not ok:
                parser.error(f"{option_string} {values}: expected {expected}")
            setattr(namespace, self.dest, value)
            typed(namespace)[self.dest] = f"{option_string} {values}"

    return Checked


def typed(namespace):
    """``{dest: flag as typed}`` of the checked flags given (kept on the namespace)."""
    if getattr(namespace, "typed", None) is None:
        namespace.typed = {}
    return namespace.typed


class FilterNames(argparse.Action):
    """``-x U B r Ha``: filter names normalised like the FILTER card (strip, upper-case)."""

    def __call__(self, parser, namespace, values, option_string=None):
        names = [normalise_filter(v, {}) for v in values]
        if not all(names):
            parser.error(f"{option_string}: empty filter name")
        setattr(namespace, self.dest, names)
