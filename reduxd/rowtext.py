"""A light's photometry rows as text: the coordinator's commit, once per light.

Each row goes to the ledger as JSON and to the photometry tables as CSV and
ECSV lines. A light's rows share their first values (night, file, exptime, MJD,
calibration, aperture radii: the very same objects in every row, see
:func:`reduxd.reduce.contract_rows`), so that text is made once per light and
only each star's own values once per row. The text is exactly the one the plain
way makes (``json.dumps`` of each row, the ``csv`` module); only the cost
changes.
"""

import math
from itertools import repeat
from operator import is_


def shared_prefix(rows):
    """How many leading keys hold the same object in every row (and the rows' keys
    are the same, in the same order); 0 otherwise.

    Examples
    --------
    >>> night = "2024-07-01"
    >>> shared_prefix([{"night": night, "x": 1.0}, {"night": night, "x": 2.0}])
    1
    """
    if not rows:
        return 0
    first = rows[0]
    keys = list(first)
    if any(list(r) != keys for r in rows):
        return 0
    n = 0
    for key in keys:
        value = first[key]
        if not all(r[key] is value for r in rows):
            break
        n += 1
    return n


def shared_value(rows, key):
    """Whether ``key`` holds the same value in every row (:func:`same_value`)."""
    if not rows:
        return False
    first = rows[0][key]
    if _differ(first, rows[-1][key]):
        return False  # a star's own value: known at once
    return all(r[key] is first for r in rows) or same_value([r[key] for r in rows])


def same_value(values):
    """Whether every one of ``values`` is the first, as text and as JSON.

    The same object; or equal values of one type that are written alike: text,
    ints, bools, None, and floats that are finite and not zero (equal ones have
    the same bits: not so for 0.0 and -0.0, nor NaN). A light's shared values
    come from one object (:func:`reduxd.reduce.contract_rows`), but a worker's
    result is pickled, which keeps text shared and not floats.

    Examples
    --------
    >>> same_value([15.0, 15.0]), same_value([0.0, -0.0]), same_value([1, True])
    (True, False, False)
    """
    if not values:
        return False
    first = values[0]
    if _differ(first, values[-1]):
        return False  # a column of different values: known at once
    if all(map(is_, values, repeat(first))):  # the same object (stops at the first other)
        return True
    kind = type(first)
    plain = (math.isfinite(first) and first != 0.0) if kind is float else kind in _PLAIN
    return plain and values.count(first) == len(values) and set(map(type, values)) == {kind}


_PLAIN = (str, int, bool, type(None))  # compared by ==, written alike when equal


def _differ(a, b):
    """Whether ``a`` and ``b`` are surely not one value for :func:`same_value` (a quick test)."""
    if a is b:
        return False
    return type(a) is not type(b) or (type(a) in (*_PLAIN, float) and a != b)


def percent_template(pieces):
    """A ``%`` template from ``pieces``: text (written in, ``%`` escaped) or None (``%s``).

    Examples
    --------
    >>> percent_template(["{", '"a": ', None, ", 5%}"]) % ("1",)
    '{"a": 1, 5%}'
    """
    return "".join("%s" if p is None else p.replace("%", "%%") for p in pieces)


def json_rows(rows, dumps):
    """``[dumps(row) for row in rows]``, made a column at a time.

    ``dumps`` is the caller's ``json.dumps`` (with its options: ``allow_nan``,
    ``default``). When the rows have the same string keys in the same order, the
    shared leading values are written once and each other column's values at once
    (:func:`_json_column`: floats and ints by their ``repr``, as ``json`` writes
    them), then each row is put together by one ``%`` template. The first row is
    checked against ``dumps`` (options that change the text: the plain way). Rows
    with other keys, or a column of other values (text, None, mixed types), are
    dumped one by one.

    Examples
    --------
    >>> import json
    >>> night = "2024-07-01"
    >>> json_rows([{"night": night, "x": 1.5}, {"night": night, "x": float("nan")}], json.dumps)
    ['{"night": "2024-07-01", "x": 1.5}', '{"night": "2024-07-01", "x": NaN}']
    """
    if not rows:
        return []
    keys = list(rows[0])
    if not all(type(k) is str for k in keys) or any(list(r) != keys for r in rows):
        return [dumps(row) for row in rows]
    n = shared_prefix(rows)
    head, own = keys[:n], keys[n:]
    if not own:
        return [dumps(row) for row in rows]
    pieces = [dumps({k: rows[0][k] for k in head})[:-1] + ", " if head else "{"]
    for i, key in enumerate(own):
        pieces += [(", " if i else "") + dumps(key) + ": ", None]
    template = percent_template([*pieces, "}"])
    columns = []
    for key in own:
        column = _json_column([row[key] for row in rows], dumps)
        if column is None:  # rows of several lights, text values: the plain way
            return [dumps(row) for row in rows]
        columns.append(column)
    text = [template % values for values in zip(*columns, strict=True)]
    if text[0] != dumps(rows[0]):  # dumps writes otherwise (indent, sort_keys, ...)
        return [dumps(row) for row in rows]
    return text


_NOT_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_column(values, dumps):
    """The JSON text of each of ``values`` (one column), as ``dumps`` writes it, or None.

    A column of floats (as ``json``: ``float.__repr__``, NaN and infinities by
    name when ``dumps`` allows them), of ints, or of float lists of one length is
    written without ``dumps``; None for any other column (the rows are then
    dumped one by one, which costs less than dumping that column value by value).
    """
    kinds = {type(v) for v in values}
    if kinds == {float} and _floats_allowed(values, dumps):
        return _float_texts(values)
    if kinds == {int}:
        return list(map(int.__repr__, values))
    if kinds == {list} and len({len(v) for v in values}) == 1 and values[0]:
        flat = [x for v in values for x in v]
        if {type(x) for x in flat} == {float} and _floats_allowed(flat, dumps):
            k = len(values[0])
            template = "[" + ", ".join(["%s"] * k) + "]"
            texts = _float_texts(flat)
            return [template % tuple(texts[i : i + k]) for i in range(0, len(texts), k)]
    return None


def _floats_allowed(values, dumps):
    """Whether the floats are all finite, or ``dumps`` writes NaN and infinities as names."""
    if math.isfinite(sum(values)):
        return True
    try:
        return dumps([math.nan, math.inf, -math.inf]) == "[NaN, Infinity, -Infinity]"
    except ValueError:  # allow_nan=False: the plain way raises for the row
        return False


def _float_texts(values):
    """``json``'s text of each float: ``repr``, and NaN / Infinity / -Infinity."""
    texts = list(map(float.__repr__, values))
    if not math.isfinite(sum(values)):  # some are NaN or infinite (or the sum overflows)
        texts = [_NOT_FINITE.get(t, t) for t in texts]
    return texts
