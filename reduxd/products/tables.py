"""The photometry table contract: one row per star per light, CSV and ECSV.

Other tools (TOPCAT, pandas, the old script's users) read these files, so the
columns, units and meanings are fixed in :mod:`reduxd.schema` and nowhere else. CSV is appended
to as lights arrive; ECSV carries units and descriptions in its YAML header and
is appended to the same way (data lines after the header). When measurements
are superseded (a light re-reduced with a better master), both files are
rewritten from the ledger, atomically.
"""

import contextlib
import csv
import functools
import io
import math
import os
import time
from pathlib import Path

import numpy as np
from astropy.table import Table

from reduxd.files import atomic_write
from reduxd.lightrows import LightRows
from reduxd.products._rowtext import format_rows
from reduxd.rowtext import shared_value
from reduxd.schema import NAMES, PHOT_COLUMNS

# name, numpy dtype, unit, description: defined in reduxd.schema
_FLOAT_FORMAT = {"mjd": ".8f", "x": ".3f", "y": ".3f", "exptime": ".6g"}
_COMMENTS = ("reduxd photometry: one row per star per light",)  # a table's meta comments


def empty_table():
    """Return an empty :class:`astropy.table.Table` with the contract's columns and units."""
    table = Table(names=NAMES, dtype=[c[1] for c in PHOT_COLUMNS])
    for name, _dtype, unit, description in PHOT_COLUMNS:
        table[name].unit = unit
        table[name].description = description
    table.meta["comments"] = list(_COMMENTS)
    return table


def rows_to_table(rows, *, columns=None):
    """Return a contract table holding ``rows`` (dicts keyed by column name).

    Built column by column (``Table.add_row`` per row took ~4 ms a row: 30 s for
    a night of 8000 rows). ``columns``: only the contract columns among these
    (the rows need not hold the others); no rows give the whole empty table.
    """
    rows = list(rows)
    if not rows:
        return empty_table()
    return columns_to_table(
        lambda name, dtype: np.array([row[name] for row in rows], dtype=dtype), columns=columns
    )


def columns_to_table(column_of, *, columns=None):
    """:func:`rows_to_table` of rows given a column at a time: ``column_of(name, dtype)``
    is every row's ``name`` as a numpy array of ``dtype``."""
    kept = [c for c in PHOT_COLUMNS if columns is None or c.name in columns]
    values = [column_of(name, dt) for name, dt, _, _ in kept]
    table = Table(values, names=[c.name for c in kept], copy=False)
    for name, _dtype, unit, description in kept:
        table[name].unit = unit
        table[name].description = description
    table.meta["comments"] = list(_COMMENTS)
    return table


def _format(name, value):
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        return format(value, _FLOAT_FORMAT.get(name, ".6g"))
    return str(value)


def _fields(rows):
    return [[_format(name, row[name]) for name in NAMES] for row in rows]


def row_lines(rows, delimiter):
    """``_lines(_fields(rows), delimiter)``, the columns whose value is the same in every
    row (night, file, ..., version: see :func:`reduxd.rowtext.same_value`) formatted once,
    the others by one ``%`` template per row.

    Taken the plain way when a column of a row's own values is not all finite floats
    or all ints (``%.6g`` writes ``inf`` where :func:`_format` writes ``nan``).
    """
    shared = [name for name in NAMES if shared_value(rows, name)]
    if len(rows) < 2 or not shared or len(shared) == len(NAMES):
        return _lines(_fields(rows), delimiter)
    first, pieces, columns = rows[0], [], []
    for name in NAMES:
        if name in shared:
            pieces.append(_quoted(_format(name, first[name]), delimiter))
            continue
        column = [r[name] for r in rows]
        spec = _spec(name, column)
        if spec is None:
            return _lines(_fields(rows), delimiter)
        pieces.append(spec)
        columns.append(column)
    pattern = delimiter.join(pieces) + "\n"
    return "".join([pattern % values for values in zip(*columns, strict=True)])


def row_line_pair(rows):
    """``(row_lines(rows, ","), row_lines(rows, " "))``, each star's own values formatted once.

    The own values (numbers: no delimiter, quote or newline in their text) make one
    run of columns between the shared ones; their CSV text, delimiters turned into
    spaces, is their ECSV text. Otherwise :func:`row_lines` is called twice. ``rows``:
    dicts, or a :class:`~reduxd.lightrows.LightRows` (read from its columns).
    """
    light = isinstance(rows, LightRows)  # its columns read as they are
    same = rows.same if light else functools.partial(shared_value, rows)
    own = [i for i, name in enumerate(NAMES) if not same(name)]
    one_run = bool(own) and own == list(range(own[0], own[-1] + 1))
    if len(rows) < 2 or not one_run or len(own) == len(NAMES):
        return row_lines(rows, ","), row_lines(rows, " ")
    names = [NAMES[i] for i in own]
    if light:
        columns = [rows.columns[name] for name in names]
        specs = [_array_spec(name, column) for name, column in zip(names, columns, strict=True)]
    else:
        columns = [[r[name] for r in rows] for name in names]
        specs = [_spec(name, column) for name, column in zip(names, columns, strict=True)]
    if None in specs:
        return row_lines(rows, ","), row_lines(rows, " ")
    if light:  # compiled: the text of ``%`` (see _rowtext.format_rows)
        text = format_rows(*_kernel_columns(specs, columns), ",")
    else:
        pattern = ",".join(specs)
        text = "\n".join([pattern % values for values in zip(*columns, strict=True)])
    first = rows[0]
    head, tail = NAMES[: own[0]], NAMES[own[-1] + 1 :]

    def lines(body, delimiter):
        pre = "".join(_field(_format(n, first[n]), delimiter) + delimiter for n in head)
        post = "".join(delimiter + _field(_format(n, first[n]), delimiter) for n in tail)
        return pre + body.replace("\n", post + "\n" + pre) + post + "\n"

    return lines(text, ","), lines(text.replace(",", " "), " ")


def _spec(name, column):
    """The ``%`` spec writing ``column`` as :func:`_format` does, or None if there is none."""
    kinds = set(map(type, column))
    if kinds == {int}:
        return "%d"
    if kinds == {float} and not column.count(math.inf) and not column.count(-math.inf):
        return "%" + _FLOAT_FORMAT.get(name, ".6g")
    return None


def _kernel_columns(specs, columns):
    """``(columns, codes, precisions)`` for :func:`format_rows` from ``%`` specs (``%d``,
    ``%.6g``, ``%.3f``): int64 and float64 C-contiguous columns, as ``tolist`` reads them."""
    codes, precisions, out = bytearray(), [], []
    for spec, values in zip(specs, columns, strict=True):
        code = spec[-1]
        codes.append(ord(code))
        precisions.append(int(spec[2:-1]) if code != "d" else 0)
        dtype = np.int64 if code == "d" else np.float64
        out.append(np.ascontiguousarray(values, dtype=dtype))
    return out, bytes(codes), precisions


def _array_spec(name, values):
    """:func:`_spec` of a column's Python values, from the column (int64 or float64)."""
    if values.dtype.kind == "i":
        return "%d"
    if values.dtype.kind == "f" and not np.isinf(values).any():
        return "%" + _FLOAT_FORMAT.get(name, ".6g")
    return None


def _quoted(text, delimiter):
    """:func:`_field`, ``%`` escaped for a template."""
    return _field(text, delimiter).replace("%", "%%")


def _field(text, delimiter):
    """One field as the csv module (and :func:`_lines`) writes it among others."""
    return _lines([[text, "x"]], delimiter)[: -len(delimiter) - 2]


_EMPTY = "\x00empty\x00"  # stands for "" while the csv module writes ECSV lines


def _lines(fields, delimiter):
    """CSV lines, or with ``delimiter=" "`` ECSV lines, where an empty string must be
    written ``""`` (a light without FILTER): bare, the reader would lose the column."""
    buf = io.StringIO()
    if delimiter == " ":
        fields = [[_EMPTY if f == "" else f for f in row] for row in fields]
    csv.writer(buf, delimiter=delimiter, lineterminator="\n").writerows(fields)
    text = buf.getvalue()
    return text.replace(_EMPTY, '""') if delimiter == " " else text


@functools.cache  # astropy's YAML header costs ~70 ms; it was built for every append
def ecsv_header():
    """The photometry table's ECSV header (astropy's YAML), made once per process."""
    buf = io.StringIO()
    empty_table().write(buf, format="ascii.ecsv")
    return buf.getvalue()


def table_paths(outdir, save=""):
    """Return the CSV and ECSV paths of the photometry table under ``outdir``."""
    base = f"{save}_photometry" if save else "photometry"
    return Path(outdir) / f"{base}.csv", Path(outdir) / f"{base}.ecsv"


def current_path(outdir, save=""):
    """The CSV of current rows only (no superseded rows) beside the full history."""
    csv_path, _ = table_paths(outdir, save)
    return csv_path.with_name(csv_path.stem + "_current.csv")


def append_rows(outdir, rows, *, save="", durable=True):
    """Append new current ``rows`` to the tables, creating them with headers if needed.

    The full history (CSV, ECSV) and the current table (:func:`current_path`) get
    the rows. ``durable``: fsync the files before returning.
    """
    csv_path, ecsv_path = table_paths(outdir, save)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    header, (lines, ecsv_lines) = ",".join(NAMES) + "\n", row_line_pair(rows)
    _append(csv_path, header, lines, durable=durable)
    _append(ecsv_path, ecsv_header(), ecsv_lines, durable=durable)
    _append(current_path(outdir, save), header, lines, durable=durable)
    return csv_path, ecsv_path


def _append(path, header, lines, *, durable):
    """Append whole lines, or nothing: a failed write (disk full) is cut off again."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = memoryview(((header if size == 0 else "") + lines).encode("utf-8"))
        try:
            while data:
                data = data[os.write(fd, data) :]
            if durable:
                os.fsync(fd)
        except BaseException:  # disk full, or a forced stop in the middle
            with contextlib.suppress(OSError):  # else repaired at the next start
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def append_lines(path, header, lines, *, durable=True):
    """Append whole text lines to ``path`` (``header`` first if it is empty), or nothing."""
    _append(path, header, lines, durable=durable)


def row_key(row):
    """What identifies a table row: ``(file, star_id, version)``, as text."""
    return (str(row["file"]), str(row["star_id"]), str(row["version"]))


def read_keys(csv_path):
    """Keys of the complete rows of a CSV table, and whether its last line is torn.

    Returns ``(keys, n_rows, torn)``, or None when the file does not exist. A
    torn line (a crash or a full disk in the middle of an append) is one without
    its newline or with the wrong number of fields; it is not counted.
    """
    try:
        text = Path(csv_path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    records = list(csv.reader(io.StringIO(text)))
    torn = bool(text) and not text.endswith("\n")
    if torn and records:
        records.pop()
    body = records[1:]
    complete = [r for r in body if len(r) == len(NAMES)]
    torn = torn or len(complete) != len(body)
    i, j, k = NAMES.index("file"), NAMES.index("star_id"), NAMES.index("version")
    return {(r[i], r[j], r[k]) for r in complete}, len(complete), torn


def set_aside(paths):
    """Rename existing ``paths`` to ``<name>.aside-<UTC time>``; return the new names."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = []
    for path in map(Path, paths):
        if path.exists():
            out.append(path.rename(path.with_name(f"{path.name}.aside-{stamp}")))
    return out


def rewrite_rows(outdir, rows, *, save=""):
    """Rewrite both tables with exactly ``rows``, and the current table with the current
    ones (atomically: temp file + rename)."""
    csv_path, ecsv_path = table_paths(outdir, save)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    fields = _fields(rows)
    _replace(csv_path, ",".join(NAMES) + "\n" + _lines(fields, ","))
    _replace(ecsv_path, ecsv_header() + _lines(fields, " "))
    current = _fields([r for r in rows if r.get("current", 1)])
    _replace(current_path(outdir, save), ",".join(NAMES) + "\n" + _lines(current, ","))
    return csv_path, ecsv_path


def _replace(path, text):
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
