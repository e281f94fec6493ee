"""A light's photometry rows as columns: what a worker sends and the commit works from.

A light's rows (:func:`reduxd.reduce.contract_rows`) share most of their values
(night, file, exptime, MJD, calibration, radii: one object in every row) and
differ only in each star's measurements. :class:`LightRows` holds them so: the
shared values once, each star's values as one numpy column. Pickled to the
coordinator it is a few arrays instead of hundreds of dicts, and the commit's
consumers (the ledger's row record, the table lines, the star IDs, the kept
light-curve rows) read the columns. It is also a sequence of the very dicts the
rows were before (made once, on first use), for every other reader.

Only rows whose dicts every reader treats the same whether their shared values
are one object or equal copies (as a pickled list of dicts gives them) are made
into columns (:func:`columns_fit`): two rows or more, shared floats finite and
not zero (equal ones have the same bits), shared values of plain types or lists;
each star's values float64, int64 or float64 rows of one length.
"""

import math
from collections.abc import Sequence

import numpy as np

_SHARED = (str, int, bool, type(None), list)  # and floats finite and not zero
_COLUMNS = (("<f8", 1), ("<i8", 1), ("<f8", 2))  # (dtype, ndim) of a column


class LightRows(Sequence):
    """A light's rows: ``shared`` values and per-row ``columns``, keys in ``order``.

    Parameters
    ----------
    shared : dict
        ``key -> value`` the same in every row (one object, as in the dicts).
    columns : dict
        ``key -> numpy array``: a value per row, float64 or int64, 1-D, or float64
        2-D (a list of floats per row).
    order : sequence of str
        Every key of ``shared`` and ``columns``, in the rows' key order.

    Examples
    --------
    >>> import numpy as np
    >>> rows = LightRows({"night": "2024-07-01"}, {"x": np.array([1.5, 2.5])}, ["night", "x"])
    >>> len(rows), rows[1]
    (2, {'night': '2024-07-01', 'x': 2.5})
    """

    def __init__(self, shared, columns, order):
        self.shared = dict(shared)
        self.columns = dict(columns)
        self.order = tuple(order)
        self.n = len(next(iter(self.columns.values()))) if self.columns else 0
        self._dicts = None

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        if isinstance(index, int) and self._dicts is None:
            if not -self.n <= index < self.n:
                raise IndexError("row index out of range")
            row = self._template()
            row.update((k, v[index].tolist()) for k, v in self.columns.items())
            return row
        return self.dicts()[index]

    def __iter__(self):
        return iter(self.dicts())

    def __getstate__(self):
        return self.shared, self.columns, self.order

    def __setstate__(self, state):
        self.__init__(*state)

    def dicts(self):
        """The rows as dicts (made once; shared values one object in every row).

        The dicts are kept and handed out again: read them, do not change them.
        """
        if self._dicts is None:
            names = list(self.columns)
            values = [self.columns[k].tolist() for k in names]
            template, rows = self._template(), []
            for row_values in zip(*values, strict=True):
                row = template.copy()
                row.update(zip(names, row_values, strict=True))
                rows.append(row)
            self._dicts = rows
        return self._dicts

    def _template(self):
        """A row's dict with the shared values, the keys in order (columns' values None)."""
        return {k: self.shared.get(k) for k in self.order}

    def same(self, key):
        """Whether every row's ``key`` is one value, written alike as text and JSON
        (:func:`reduxd.rowtext.same_value` of the dicts' values)."""
        if key in self.shared:
            return True
        return same_column(self.columns[key])

    def values(self, key):
        """``[row[key] for row in rows]`` (a new list)."""
        if key in self.shared:
            return [self.shared[key]] * self.n
        return self.columns[key].tolist()

    def array(self, key, dtype):
        """Every row's ``key`` as one numpy array of ``dtype`` (1-D; 2-D for lists)."""
        if key in self.columns:
            return np.asarray(self.columns[key], dtype=dtype)
        value = np.asarray(self.shared[key], dtype=dtype)
        return np.broadcast_to(value, (self.n, *value.shape))

    def replaced(self, key, column):
        """These rows with column ``key`` replaced by ``column`` (same place in the order)."""
        shared = {k: v for k, v in self.shared.items() if k != key}
        return LightRows(shared, {**self.columns, key: np.asarray(column)}, self.order)

    def stamped(self, **values):
        """These rows with ``values`` shared by every row, set after the others (a key
        already there keeps its place, as ``row[key] = value`` in each dict)."""
        columns = {k: v for k, v in self.columns.items() if k not in values}
        order = (*self.order, *(k for k in values if k not in self.order))
        return LightRows({**self.shared, **values}, columns, order)


def same_column(column):
    """Whether every value of ``column`` (numpy, 2 rows or more) would be one value for
    :func:`reduxd.rowtext.same_value` once turned into Python values: ints all equal;
    floats all equal, finite and not zero (0.0 and -0.0, NaN: not one); lists never.

    Examples
    --------
    >>> import numpy as np
    >>> same_column(np.array([2, 2])), same_column(np.array([0.0, 0.0]))
    (True, False)
    """
    if column.ndim != 1 or len(column) < 2:
        return column.ndim == 1 and len(column) == 1
    first = column[0]
    if column.dtype.kind == "f" and not (math.isfinite(first) and first != 0.0):
        return False
    return bool((column == first).all())


def columns_fit(shared, columns):
    """Whether rows of ``shared`` values and ``columns`` can be a :class:`LightRows`
    (see the module's text): two rows or more, and every value of a kind the
    readers treat alike as one object or as copies."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) != 1 or lengths.pop() < 2:
        return False
    for value in shared.values():
        if type(value) is float:
            if not (math.isfinite(value) and value != 0.0):
                return False
        elif type(value) not in _SHARED:  # numpy scalars, tuples...: as dicts
            return False
    for column in columns.values():
        kind = (column.dtype.str, column.ndim)
        if kind not in _COLUMNS or (column.ndim == 2 and not column.shape[1]):
            return False
    return True


def stamped(rows, version):
    """A committed light's rows (dicts, changed in place, or a :class:`LightRows`) with
    their ``version`` and ``current`` (1), as the tables and the light curves read them."""
    if isinstance(rows, LightRows):
        return rows.stamped(version=version, current=1)
    for r in rows:
        r["version"], r["current"] = version, 1
    return rows
