# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Multi-threshold deblending of one region, compiled: the search of ``detect._split``.

The Python wrapper (levels, contrast, the region's own peak) is ``detect._segment_peaks``.
At each level the region's pixels above it are labelled as ``scipy.ndimage.label`` labels
them with 8-connectivity (in the raster order of each part's first pixel), and each part's
size and flux are summed in raster order, as ``scipy.ndimage.sum_labels`` sums them: the
same parts, the same sums, the same leaves in the same order.
"""

import numpy as np

from libc.math cimport NAN
from libc.stdlib cimport free, malloc

ctypedef fused pixel:
    float
    double


def split(const pixel[:, ::1] det, const unsigned char[:, ::1] region, const double[::1] levels,
          Py_ssize_t start, double min_flux, double min_pixels,
          const unsigned char[:, ::1] maxima):
    """The leaves ``[(y, x), ...]`` of ``region``: its parts at the first level (from
    ``levels[start]``) where two or more are strong (``min_pixels`` pixels and
    ``min_flux`` flux), each split again above it; the region's highest pixel if none is.

    A level with fewer than two of the region's ``maxima`` above it, and every level
    above that one, has fewer than two parts: the search stops there.
    """
    cdef Py_ssize_t ny = det.shape[0], nx = det.shape[1]
    if region.shape[0] != ny or region.shape[1] != nx or maxima.shape[0] != ny \
            or maxima.shape[1] != nx:
        raise ValueError("split: det, region and maxima differ in shape")
    cdef int[:, ::1] labels = np.zeros((ny, nx), dtype=np.intc)
    cdef Py_ssize_t* stack = <Py_ssize_t*>malloc((ny * nx + 1) * sizeof(Py_ssize_t))
    if stack == NULL:
        raise MemoryError("split: no memory for the flood fill")
    try:
        return _split(det, region, levels, start, min_flux, min_pixels, maxima, labels, stack)
    finally:
        free(stack)


cdef list _split(const pixel[:, ::1] det, const unsigned char[:, ::1] region,
                 const double[::1] levels, Py_ssize_t start, double min_flux, double min_pixels,
                 const unsigned char[:, ::1] maxima, int[:, ::1] labels, Py_ssize_t* stack):
    cdef Py_ssize_t ny = det.shape[0], nx = det.shape[1], k, n, lab, i, j
    cdef double second = _second_top(det, region, maxima)  # NaN: fewer than two
    cdef double* sums
    cdef double* counts
    cdef list leaves, strong
    cdef unsigned char[:, ::1] part
    for k in range(start, levels.shape[0]):
        if not second > levels[k]:
            break
        n = _label(det, region, levels[k], labels, stack)
        if n < 2:
            continue
        sums = <double*>malloc((n + 1) * sizeof(double))
        counts = <double*>malloc((n + 1) * sizeof(double))
        if sums == NULL or counts == NULL:
            free(sums)
            free(counts)
            raise MemoryError("split: no memory for the parts' sums")
        strong = []
        try:
            _sums(det, labels, n, sums, counts)
            for lab in range(1, n + 1):
                if counts[lab] >= min_pixels and sums[lab] >= min_flux:
                    strong.append(lab)
        finally:
            free(sums)
            free(counts)
        if len(strong) >= 2:
            parts = np.asarray(labels).copy()  # the next labelling overwrites ``labels``
            leaves = []
            for lab in strong:
                part = (parts == lab).view(np.uint8)
                leaves += _split(det, part, levels, k + 1, min_flux, min_pixels, maxima,
                                 labels, stack)
            return leaves
    return [_highest(det, region)]


cdef double _second_top(const pixel[:, ::1] det, const unsigned char[:, ::1] region,
                        const unsigned char[:, ::1] maxima) noexcept nogil:
    """The second largest value of ``det`` at the region's maxima (ties count twice);
    NaN when it has fewer than two."""
    cdef Py_ssize_t i, j, found = 0
    cdef double v, first = 0.0, second = 0.0
    for i in range(det.shape[0]):
        for j in range(det.shape[1]):
            if region[i, j] and maxima[i, j]:
                v = det[i, j]
                if found == 0:
                    first = v
                elif found == 1:
                    if v > first:
                        second = first
                        first = v
                    else:
                        second = v
                elif v > first:
                    second = first
                    first = v
                elif v > second:
                    second = v
                found += 1
    return second if found >= 2 else NAN


cdef Py_ssize_t _label(const pixel[:, ::1] det, const unsigned char[:, ::1] region,
                       double level, int[:, ::1] labels, Py_ssize_t* stack) noexcept nogil:
    """Label the region's pixels above ``level`` (8-connected), parts numbered in the
    raster order of their first pixel; return how many."""
    cdef Py_ssize_t ny = det.shape[0], nx = det.shape[1], i, j, y, x, yy, xx, top, n = 0
    for i in range(ny):
        for j in range(nx):
            labels[i, j] = 0
    for i in range(ny):
        for j in range(nx):
            if labels[i, j] != 0 or not region[i, j] or not det[i, j] > level:
                continue
            n += 1
            labels[i, j] = n
            stack[0] = i * nx + j
            top = 1
            while top > 0:
                top -= 1
                y = stack[top] // nx
                x = stack[top] % nx
                for yy in range(max(y - 1, 0), min(y + 2, ny)):
                    for xx in range(max(x - 1, 0), min(x + 2, nx)):
                        if labels[yy, xx] == 0 and region[yy, xx] and det[yy, xx] > level:
                            labels[yy, xx] = n
                            stack[top] = yy * nx + xx
                            top += 1
    return n


cdef void _sums(const pixel[:, ::1] det, const int[:, ::1] labels, Py_ssize_t n,
                double* sums, double* counts) noexcept nogil:
    """Each part's flux and pixel count, summed in raster order."""
    cdef Py_ssize_t i, j, lab
    for lab in range(n + 1):
        sums[lab] = 0.0
        counts[lab] = 0.0
    for i in range(det.shape[0]):
        for j in range(det.shape[1]):
            lab = labels[i, j]
            if lab:
                sums[lab] += <double>det[i, j]
                counts[lab] += 1.0


cdef tuple _highest(const pixel[:, ::1] det, const unsigned char[:, ::1] region):
    """``(y, x)`` of the region's highest pixel (the first in raster order)."""
    cdef Py_ssize_t i, j, by = -1, bx = -1
    cdef pixel best = 0
    for i in range(det.shape[0]):
        for j in range(det.shape[1]):
            if region[i, j] and (by < 0 or det[i, j] > best):
                best = det[i, j]
                by, bx = i, j
    return (by, bx)
