# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Exact circular-aperture sums of many stars at many radii, one pass over each star's box.

The Python wrapper (checks, dtypes, order) is ``reduxd.steps.measure.circle_pass``.

The overlap of a circle with a pixel square is exact (photutils' ``method="exact"``,
sep's ``subpix=0``). ``_core`` and the split of a square into quadrants in
``_overlap`` follow photutils' ``photutils/geometry/circular_overlap.pyx`` and
``core.pyx`` (``circular_overlap_core``, ``area_arc``, ``area_triangle``; Thomas
Robitaille; BSD-3-Clause, Copyright (c) Photutils Developers); the segment area
uses one ``asin`` and ``sin(theta) = 2 s sqrt(1 - s^2)``.
"""

from libc.math cimport asin, ceil, fabs, floor, isfinite, sqrt
from libc.stdlib cimport free, malloc

ctypedef fused pixel:
    float
    double


cdef inline double _segment(double x1, double y1, double x2, double y2, double r) noexcept nogil:
    """Area of the circular segment (radius ``r``) cut off by the chord between two points
    of the circle."""
    cdef double s = 0.5 * sqrt((x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1)) / r
    if s > 1.0:
        s = 1.0
    return r * r * (asin(s) - s * sqrt(1.0 - s * s))  # 0.5 r^2 (theta - sin theta)


cdef inline double _triangle(double x1, double y1, double x2, double y2,
                             double x3, double y3) noexcept nogil:
    return 0.5 * fabs(x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))


cdef double _core(double xmin, double ymin, double xmax, double ymax, double r) noexcept nogil:
    """Overlap of the circle (centre 0, 0) with a rectangle in the first quadrant
    (``0 <= xmin <= xmax``, ``0 <= ymin <= ymax``)."""
    cdef double r2 = r * r
    cdef double d1, d2, x1, y1, x2, y2
    if xmin * xmin + ymin * ymin > r2:
        return 0.0
    if xmax * xmax + ymax * ymax < r2:
        return (xmax - xmin) * (ymax - ymin)
    d1 = xmax * xmax + ymin * ymin
    d2 = xmin * xmin + ymax * ymax
    if d1 < r2 and d2 < r2:  # the circle cuts the top and right sides
        x1, y1 = sqrt(r2 - ymax * ymax), ymax
        x2, y2 = xmax, sqrt(r2 - xmax * xmax)
        return ((xmax - xmin) * (ymax - ymin) - _triangle(x1, y1, x2, y2, xmax, ymax)
                + _segment(x1, y1, x2, y2, r))
    if d1 < r2:  # the left and right sides
        x1, y1 = xmin, sqrt(r2 - xmin * xmin)
        x2, y2 = xmax, sqrt(r2 - xmax * xmax)
        return (_segment(x1, y1, x2, y2, r) + _triangle(x1, y1, x1, ymin, xmax, ymin)
                + _triangle(x1, y1, x2, ymin, x2, y2))
    if d2 < r2:  # the bottom and top sides
        x1, y1 = sqrt(r2 - ymin * ymin), ymin
        x2, y2 = sqrt(r2 - ymax * ymax), ymax
        return (_segment(x1, y1, x2, y2, r) + _triangle(x1, y1, xmin, y1, xmin, ymax)
                + _triangle(x1, y1, xmin, y2, x2, y2))
    x1, y1 = sqrt(r2 - ymin * ymin), ymin  # the bottom and left sides
    x2, y2 = xmin, sqrt(r2 - xmin * xmin)
    return _segment(x1, y1, x2, y2, r) + _triangle(x1, y1, x2, y2, xmin, ymin)


cdef inline double _band(double xmin, double xmax, double ymin, double ymax,
                         double r) noexcept nogil:
    """Overlap with a rectangle whose x range lies on one side of 0 (``0 <= xmin``),
    split along y = 0 into first-quadrant rectangles."""
    if ymin >= 0.0:
        return _core(xmin, ymin, xmax, ymax, r)
    if ymax <= 0.0:
        return _core(xmin, -ymax, xmax, -ymin, r)
    return _core(xmin, 0.0, xmax, -ymin, r) + _core(xmin, 0.0, xmax, ymax, r)


cdef inline double _overlap(double xmin, double xmax, double ymin, double ymax,
                            double r) noexcept nogil:
    """Exact area of overlap of the circle of radius ``r`` centred on 0, 0 with a rectangle."""
    if xmin >= 0.0:
        return _band(xmin, xmax, ymin, ymax, r)
    if xmax <= 0.0:
        return _band(-xmax, -xmin, ymin, ymax, r)
    return _band(0.0, -xmin, ymin, ymax, r) + _band(0.0, xmax, ymin, ymax, r)


cdef inline double _nearest2(double lo, double hi) noexcept nogil:
    """Squared distance from 0 to the interval [lo, hi]."""
    if lo > 0.0:
        return lo * lo
    if hi < 0.0:
        return hi * hi
    return 0.0


cdef inline Py_ssize_t _index(double v, double last) noexcept nogil:
    """``v`` (a whole number) clipped to [-1, last + 1] as an index (no overflow)."""
    return <Py_ssize_t> min(max(v, -1.0), last + 1.0)


cdef inline int _add_run(const pixel *row, Py_ssize_t a, Py_ssize_t b, double *total,
                         double *count) noexcept nogil:
    """Add the finite values of ``row[a..b]`` to ``total`` and their number to ``count``;
    returns 1 if a value there is not finite."""
    cdef Py_ssize_t i
    cdef double v, s = 0.0
    cdef int found = 0
    for i in range(a, b + 1):
        v = row[i]
        if isfinite(v):
            s += v
        else:
            found = 1
            count[0] -= 1.0
    total[0] += s
    count[0] += b - a + 1 if b >= a else 0
    return found


cdef inline int _add_crossing(const pixel *row, Py_ssize_t a, Py_ssize_t b, double cx,
                              double dy0, double dy1, double near_y2, double r,
                              double *total, double *area) noexcept nogil:
    """Add value times exact overlap (radius ``r``) of the pixels ``row[a..b]`` to
    ``total`` and the overlaps to ``area``; returns 1 if a non-finite pixel there
    overlaps the circle (it is left out)."""
    cdef Py_ssize_t i
    cdef double v, w, dx0, dx1
    cdef int found = 0
    for i in range(a, b + 1):
        dx0 = i - 0.5 - cx
        dx1 = i + 0.5 - cx
        v = row[i]
        if not isfinite(v):
            if near_y2 + _nearest2(dx0, dx1) < r * r:
                found = 1
            continue
        w = _overlap(dx0, dx1, dy0, dy1, r)
        total[0] += v * w
        area[0] += w
    return found


cdef void _one_star(const pixel[:, ::1] data, double cx, double cy, const double[::1] radii,
                    double *full, double *full_area, double *part,
                    double *part_area, double *sums, double *areas,
                    unsigned char *bad) noexcept nogil:
    """One star at every radius (ascending): ``sums``, ``areas`` and ``bad`` (length m).

    Row by row, for each radius k the pixels wholly inside circle k form one run
    of columns (nested in k), and the pixels the circle reaches a wider run: the
    pixels newly inside at radius k are added to ``full[k]`` (cumulated over k at
    the end), the others of the reach get their exact overlap with circle k.
    """
    cdef Py_ssize_t m = radii.shape[0], ny = data.shape[0], nx = data.shape[1]
    cdef Py_ssize_t j, k, j0, j1, ra, rb, fa, fb, pa, pb, first_bad = m
    cdef int found
    cdef double rmax = radii[m - 1], last = nx - 1.0
    cdef double dy0, dy1, near_y2, far_y2, r, rk2, g, h, v, w
    cdef const pixel *row
    for k in range(m):
        full[k] = 0.0
        full_area[k] = 0.0
        part[k] = 0.0
        part_area[k] = 0.0
    if isfinite(cx) and isfinite(cy):
        # rows j with j + 0.5 > cy - rmax and j - 0.5 < cy + rmax, on the frame
        j0 = <Py_ssize_t> max(floor(cy - rmax - 0.5) + 1.0, 0.0)
        j1 = <Py_ssize_t> min(ceil(cy + rmax + 0.5) - 1.0, ny - 1.0)
        for j in range(j0, j1 + 1):
            row = &data[j, 0]
            dy0 = j - 0.5 - cy
            dy1 = j + 0.5 - cy
            near_y2 = _nearest2(dy0, dy1)
            far_y2 = max(dy0 * dy0, dy1 * dy1)
            pa, pb = 0, -1  # the run wholly inside the previous radius (none yet)
            for k in range(m):
                r = radii[k]
                rk2 = r * r
                if rk2 <= near_y2:
                    continue  # circle k does not reach this row
                g = sqrt(rk2 - near_y2)  # reach: |i - cx| - 0.5 < g
                ra = max(_index(floor(cx - g - 0.5) + 1.0, last), 0)
                rb = min(_index(ceil(cx + g + 0.5) - 1.0, last), nx - 1)
                fa, fb = 0, -1
                if rk2 > far_y2:
                    h = sqrt(rk2 - far_y2)  # wholly inside: |i - cx| + 0.5 <= h
                    fa = max(_index(ceil(cx - h + 0.5), last), ra)
                    fb = min(_index(floor(cx + h - 0.5), last), rb)
                if fa > fb:  # no pixel of this row wholly inside: all crossing
                    if _add_crossing(row, ra, rb, cx, dy0, dy1, near_y2, r,
                                     &part[k], &part_area[k]):
                        first_bad = min(first_bad, k)
                    continue
                if (_add_crossing(row, ra, fa - 1, cx, dy0, dy1, near_y2, r,
                                  &part[k], &part_area[k])
                        | _add_crossing(row, fb + 1, rb, cx, dy0, dy1, near_y2, r,
                                        &part[k], &part_area[k])):
                    first_bad = min(first_bad, k)
                if pa > pb:  # newly inside at radius k: the run minus the previous one
                    found = _add_run(row, fa, fb, &full[k], &full_area[k])
                else:
                    found = (_add_run(row, fa, pa - 1, &full[k], &full_area[k])
                             | _add_run(row, pb + 1, fb, &full[k], &full_area[k]))
                if found:
                    first_bad = min(first_bad, k)
                pa, pb = fa, fb
    v = 0.0
    w = 0.0
    for k in range(m):
        v += full[k]
        w += full_area[k]
        sums[k] = v + part[k]
        areas[k] = w + part_area[k]
        bad[k] = k >= first_bad


def circle_pass(const pixel[:, ::1] data, const double[::1] x, const double[::1] y,
                const double[::1] radii, double[:, ::1] sums, double[:, ::1] areas,
                unsigned char[:, ::1] bad, const Py_ssize_t[::1] order):
    """Fill ``sums``, ``areas`` (finite pixels only) and ``bad`` (a non-finite pixel
    overlaps the aperture), ``(n, m)``, for the stars in ``order`` at the ascending
    ``radii``. No checks: see ``reduxd.steps.measure.circle_pass``."""
    cdef Py_ssize_t m = radii.shape[0], n = order.shape[0], t, s
    cdef double *work
    if m == 0 or n == 0:
        return
    work = <double *> malloc(4 * m * sizeof(double))
    if work == NULL:
        raise MemoryError("circle_pass: no memory for the work arrays")
    try:
        with nogil:
            for t in range(n):
                s = order[t]
                _one_star(data, x[s], y[s], radii, work, work + m, work + 2 * m,
                          work + 3 * m, &sums[s, 0], &areas[s, 0], &bad[s, 0])
    finally:
        free(work)
