# cython: boundscheck=False, wraparound=False, initializedcheck=False, language_level=3
"""Kernel of reduxd.products.tables: numeric columns as text, as ``%`` writes them."""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdio cimport snprintf
from libc.string cimport memcpy, strlen

cdef extern from "Python.h":
    # what ``"%.3f" % x`` and ``"%.6g" % x`` call (flags 0: no sign, no alt form)
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL


def format_rows(list columns, bytes codes, list precisions, str delimiter):
    """The lines ``delimiter.join(specs) % row`` of the rows of ``columns``, joined by
    ``"\\n"`` (none after the last).

    ``columns``: 1-D C-contiguous arrays of one length, int64 where ``codes[j]`` is
    ``d`` (``%d``), float64 otherwise, ``codes[j]`` being the conversion (``f``, ``g``,
    ``e``) and ``precisions[j]`` its precision. Floats go through the function
    Python's ``%`` uses (``PyOS_double_to_string``): the same text, ``nan`` and
    ``inf`` included.
    """
    cdef Py_ssize_t m = len(columns), n = len(columns[0]) if columns else 0
    cdef Py_ssize_t i, j, k, pos = 0
    if m == 0 or n == 0:
        return ""
    if len(codes) != m or len(precisions) != m or len(delimiter) != 1:
        raise ValueError("format_rows: one code and precision per column, a 1-character delimiter")
    cdef const char* code = codes
    cdef char sep = ord(delimiter)
    cdef const void** data = <const void**>PyMem_Malloc(m * sizeof(void*))
    cdef int* prec = <int*>PyMem_Malloc(m * sizeof(int))
    cdef const long long[::1] ints
    cdef const double[::1] floats
    cdef char* text
    cdef char number[32]
    cdef bytearray out
    cdef char* buf
    if data == NULL or prec == NULL:
        PyMem_Free(data)
        PyMem_Free(prec)
        raise MemoryError("format_rows: no memory")
    try:
        for j in range(m):
            if len(columns[j]) != n:
                raise ValueError("format_rows: the columns differ in length")
            if code[j] == b"d":
                ints = columns[j]
                data[j] = &ints[0]  # alive: ``columns`` holds the arrays
            else:
                floats = columns[j]
                data[j] = &floats[0]
            prec[j] = precisions[j]
        # ~10 characters a number; a row gets room for its longest (%.8f of 1e308: 318)
        out = bytearray(n * m * 32)
        buf = out
        for i in range(n):
            if pos + m * 400 > len(out):  # room for the longest row
                out.extend(bytearray(len(out) + m * 400))
                buf = out
            for j in range(m):
                if code[j] == b"d":
                    k = snprintf(number, 32, "%lld", (<const long long*>data[j])[i])
                    memcpy(buf + pos, number, k)
                else:
                    text = PyOS_double_to_string((<const double*>data[j])[i], code[j],
                                                 prec[j], 0, NULL)
                    k = strlen(text)
                    memcpy(buf + pos, text, k)
                    PyMem_Free(text)
                pos += k
                buf[pos] = sep if j < m - 1 else 10
                pos += 1
    finally:
        PyMem_Free(data)
        PyMem_Free(prec)
    return out[: pos - 1].decode("ascii")
