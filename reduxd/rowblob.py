"""A light's photometry rows as one binary record: how the ledger stores them.

A light's rows (one dict per star, the same keys in the same order) are stored
as one record instead of one JSON text per row: a value every row holds (night,
file, exptime, radii: see :func:`reduxd.rowtext.same_value`) once, as JSON;
each other column of floats, of ints or of equal-length float lists as
little-endian float64 / int64 bytes; any other column (text, None, mixed types)
as one JSON list. Reading a record back gives rows equal to what ``json.loads``
gave for each row's JSON text (the ledger's format before): the same keys in
the same order, the same values and types, bit for bit (NaN and -0.0
included), and each row its own lists.

On a crowded light (660 rows) writing costs about a seventh of the JSON texts'
and reading a quarter: their floats' ``repr`` and parsing were most of the
coordinator's commit and of a light curve's rebuild.

Layout: ``MAGIC``, a little-endian uint32 length, the JSON header
(``{"n": rows, "columns": [[key, kind, spec], ...]}``), padding to 8 bytes,
then the binary columns' values in column order. ``kind`` and ``spec``:
``same`` and the value; ``json`` and the values; ``f8`` / ``i8`` and the
width (values per row: 1, or a list's length) of ``rows * width`` values in
the binary part.
"""

import json
import struct
from itertools import chain, repeat
from operator import itemgetter

import numpy as np

from reduxd.lightrows import LightRows, same_column
from reduxd.rowtext import same_value

MAGIC = b"RXROWS1\n"  # the format's name and version
_LENGTH = struct.Struct("<I")
_IMMUTABLE = (str, int, float, bool, type(None))


def encode_rows(rows, dumps):
    """The record of a light's ``rows`` (dicts, or a :class:`~reduxd.lightrows.LightRows`),
    or None if they do not fit one.

    ``dumps`` is the ledger's ``json.dumps`` (its ``default`` turns numpy
    values into Python ones, as for a JSON row). None (store the rows as JSON
    texts) when there are no rows or no keys, the rows' keys differ or are not all
    strings, or ``dumps`` would refuse a value.

    Examples
    --------
    >>> import json
    >>> night = "2024-07-01"
    >>> rows = [{"night": night, "x": 1.5, "id": 1}, {"night": night, "x": -0.0, "id": 2}]
    >>> decode_rows(encode_rows(rows, json.dumps)) == rows
    True
    """
    if isinstance(rows, LightRows):  # read from its columns, never made into dicts
        keys, specs = rows.order, map(_light_column, repeat(rows), rows.order)
    else:
        if not rows or not rows[0]:
            return None
        keys = list(rows[0])
        if not all(type(k) is str for k in keys) or any(list(r) != keys for r in rows):
            return None
        if len(keys) > 1:  # the rows' values a column at a time
            values = zip(*map(itemgetter(*keys), rows), strict=True)
        else:
            values = [[row[keys[0]] for row in rows]]
        specs = map(_column, values)
    columns, data = [], []
    for key, (kind, spec) in zip(keys, specs, strict=True):
        if kind in ("same", "json"):
            columns.append([key, kind, spec])
        else:
            columns.append([key, kind, spec.shape[1] if spec.ndim == 2 else 1])
            data.append(spec.tobytes())
    try:
        header = dumps({"n": len(rows), "columns": columns}).encode()
    except (TypeError, ValueError):  # a value JSON refuses: the plain way says why
        return None
    pad = b" " * (-(len(MAGIC) + _LENGTH.size + len(header)) % 8)
    return b"".join([MAGIC, _LENGTH.pack(len(header) + len(pad)), header, pad, *data])


def _column(values):
    """``(kind, spec)`` of one column: ``same`` and the one value every row holds;
    ``f8``/``i8`` and its array; ``json`` and the values."""
    first = values[0]
    if same_value(values):
        return "same", first
    kinds = set(map(type, values))
    if kinds == {float}:
        return "f8", np.array(values, dtype="<f8")
    if kinds == {int}:
        try:
            return "i8", np.array(values, dtype="<i8")
        except OverflowError:  # beyond int64: as JSON
            return "json", list(values)
    if kinds == {list} and first and set(map(len, values)) == {len(first)}:
        flat = list(chain.from_iterable(values))  # one flat list: a third faster to convert
        if set(map(type, flat)) == {float}:
            return "f8", np.array(flat, dtype="<f8").reshape(len(values), len(first))
    return "json", list(values)


def _light_column(rows, key):
    """:func:`_column` of ``key``'s values in ``rows`` (a :class:`LightRows`), from its
    columns: a shared value, or a column of one value, is ``same``."""
    if key in rows.shared:
        return "same", rows.shared[key]
    values = rows.columns[key]
    if same_column(values):
        return "same", values[0].tolist()
    return values.dtype.str[1:], values  # f8 or i8, little-endian (reduxd.lightrows)


def is_record(data):
    """Whether ``data`` (a ledger value) is a record of this module."""
    return isinstance(data, bytes) and data.startswith(MAGIC)


def decode_rows(data):
    """The rows of a record made by :func:`encode_rows` (a list of dicts).

    Raises ValueError if ``data`` is not such a record.
    """
    if not is_record(data):
        raise ValueError(f"not a row record (it starts {bytes(data[:8])!r})")
    start = len(MAGIC) + _LENGTH.size
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    header = json.loads(data[start : start + length])
    n, offset = header["n"], start + length
    keys, columns, copies = [], [], []
    for key, kind, spec in header["columns"]:
        keys.append(key)
        if kind == "json":
            columns.append(spec)
        elif kind == "same":
            columns.append([spec] * n)
            if not isinstance(spec, _IMMUTABLE):
                copies.append((key, _copier(spec)))
        else:
            if offset + 8 * n * spec > len(data):
                raise ValueError(f"row record of {len(data)} bytes is cut short")
            array = np.frombuffer(data, dtype="<" + kind, count=n * spec, offset=offset)
            offset += array.nbytes
            columns.append(array.tolist() if spec == 1 else array.reshape(n, spec).tolist())
    if offset != len(data):
        raise ValueError(f"row record of {len(data)} bytes holds {offset}")
    # each tuple of values has one value per key
    rows = [dict(zip(keys, values, strict=False)) for values in zip(*columns, strict=True)]
    for key, copy in copies:  # each row its own lists, as each row's JSON gave
        for row in rows:
            row[key] = copy()
    return rows


def _copier(value):
    """A function making copies of a JSON value (of a list of plain values: shallow)."""
    if isinstance(value, list) and all(isinstance(x, _IMMUTABLE) for x in value):
        return value.copy
    text = json.dumps(value)
    return lambda: json.loads(text)
