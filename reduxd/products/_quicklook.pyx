# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Kernels of reduxd.products.quicklook: a float32 frame to palette grey levels, stamps
(circles and glyphs) drawn into the chart, where each glyph of a label goes."""

from libc.math cimport isinf, isnan, rint


def stretch_levels(const float[:, ::1] image, float lo, float scale,
                   const unsigned char[::1] lut, unsigned char[:, ::1] out):
    """``out = lut[clip((image - lo) * scale, 0, len(lut) - 1)]``, NaN as 0, in float32 (as
    numpy: the difference, then the product, each rounded to float32; truncated)."""
    cdef Py_ssize_t i, j
    cdef float v, top = lut.shape[0] - 1
    with nogil:
        for i in range(image.shape[0]):
            for j in range(image.shape[1]):
                v = (image[i, j] - lo) * scale
                if v != v:  # NaN
                    v = 0
                elif v < 0:
                    v = 0
                elif v > top:
                    v = top
                out[i, j] = lut[<unsigned short> v]


def stamp(unsigned char[:, ::1] canvas, const long long[::1] x0, const long long[::1] y0,
          const long long[::1] shape, const long long[::1] starts, const long long[::1] dy,
          const long long[::1] dx, const unsigned char[::1] values):
    """For each stamp ``p`` in order, set the pixels ``(y0[p] + dy[q], x0[p] + dx[q])``,
    ``q`` in ``starts[shape[p]]:starts[shape[p] + 1]``, that lie on ``canvas`` to
    ``values[p]`` (a later stamp over an earlier one)."""
    cdef Py_ssize_t p, q, s, y, x, ny = canvas.shape[0], nx = canvas.shape[1]
    with nogil:
        for p in range(x0.shape[0]):
            s = shape[p]
            for q in range(starts[s], starts[s + 1]):
                y = y0[p] + dy[q]
                x = x0[p] + dx[q]
                if 0 <= y < ny and 0 <= x < nx:
                    canvas[y, x] = values[p]


def glyph_origins(const long long[::1] codes, const long long[::1] start, const double[::1] x,
                  const double[::1] y, const long long[::1] left, const long long[::1] top,
                  const double[::1] advance, long long[::1] x0, long long[::1] y0):
    """Where each character of each text goes: text ``t`` is ``codes[start[t]:start[t + 1]]``
    from pen ``(x[t], y[t])``; character ``q`` of code ``c`` at ``x0[q] = round(pen) +
    left[c]``, ``y0[q] = round(y[t]) + top[c]`` (rounded half to even, as Python's
    ``round``), then the pen moves on by ``advance[c]``."""
    cdef Py_ssize_t t, q
    cdef double pen
    cdef long long row
    with nogil:
        for t in range(x.shape[0]):
            pen = x[t]
            row = <long long> rint(y[t])
            for q in range(start[t], start[t + 1]):
                x0[q] = <long long> rint(pen) + left[codes[q]]
                y0[q] = row + top[codes[q]]
                pen = pen + advance[codes[q]]


def block_sums(const float[:, ::1] data, Py_ssize_t factor, float scale, float[:, ::1] out):
    """``out[y, x]``: the ``factor`` x ``factor`` block at ``(y, x)`` summed in float32 in
    row order (its first pixel, then each next one added), times ``scale``; returns
    whether every ``out`` value is finite."""
    cdef Py_ssize_t y, x, i, j
    cdef float acc
    cdef bint finite = True
    with nogil:
        for y in range(out.shape[0]):
            for x in range(out.shape[1]):
                acc = data[y * factor, x * factor]
                for i in range(factor):
                    for j in range(factor):
                        if i or j:
                            acc = acc + data[y * factor + i, x * factor + j]
                acc = acc * scale
                out[y, x] = acc
                if isnan(acc) or isinf(acc):
                    finite = False
    return finite

