# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Kernel of reduxd.products.labels: the first free place of each label, star by star."""

from libc.math cimport floor


cdef inline Py_ssize_t _cell(double v, double origin, double size, Py_ssize_t n) noexcept nogil:
    """The grid cell of coordinate ``v``, clamped to ``0 .. n - 1``."""
    cdef double c = floor((v - origin) / size)
    if c < 0:
        return 0
    if c > n - 1:
        return n - 1
    return <Py_ssize_t> c


def first_fit(const double[:, :, ::1] boxes, const double[::1] cx, const double[::1] cy,
              double r2, double reach_x, double reach_y, double x_origin, double y_origin,
              double size, Py_ssize_t ncx, Py_ssize_t ncy, const long long[::1] by_cell,
              const long long[::1] cell_start, long long[::1] chosen):
    """``chosen[i]``: the first place ``k`` of star ``i`` (``boxes[i, k]``, ``(x0, y0, x1,
    y1)``) that comes within ``sqrt(r2)`` of no star and overlaps no box chosen for an
    earlier star; -1 if none. Stars are looked up on a grid: star ``by_cell[q]`` for ``q``
    in ``cell_start[c]:cell_start[c + 1]`` lies in cell ``c = row * ncx + column`` of
    ``size`` x ``size`` cells from ``(x_origin, y_origin)``; a chosen box lies within
    ``reach_x``, ``reach_y`` of its star."""
    cdef Py_ssize_t i, k, j, q, gx, gy, gx0, gx1, gy0, gy1, c, n = boxes.shape[0]
    cdef double x0, y0, x1, y1, x, y, nx, ny, ex, ey, r = r2 ** 0.5 + 1e-6 * size
    cdef double slack = 1e-6 * size
    cdef bint bad
    with nogil:
        for i in range(n):
            chosen[i] = -1
            for k in range(boxes.shape[1]):
                x0 = boxes[i, k, 0]
                y0 = boxes[i, k, 1]
                x1 = boxes[i, k, 2]
                y1 = boxes[i, k, 3]
                bad = False
                # over a star's circle? (``slack``: a star's cell as numpy rounds it)
                gx0 = _cell(x0 - r - slack, x_origin, size, ncx)
                gx1 = _cell(x1 + r + slack, x_origin, size, ncx)
                gy0 = _cell(y0 - r - slack, y_origin, size, ncy)
                gy1 = _cell(y1 + r + slack, y_origin, size, ncy)
                for gy in range(gy0 if gy0 > 0 else 0, (gy1 if gy1 < ncy - 1 else ncy - 1) + 1):
                    for gx in range(gx0 if gx0 > 0 else 0, (gx1 if gx1 < ncx - 1 else ncx - 1) + 1):
                        c = gy * ncx + gx
                        for q in range(cell_start[c], cell_start[c + 1]):
                            j = by_cell[q]
                            x = cx[j]
                            y = cy[j]
                            # the box's nearest point to the star, then its squared distance
                            nx = x if x > x0 else x0
                            nx = nx if nx < x1 else x1
                            ny = y if y > y0 else y0
                            ny = ny if ny < y1 else y1
                            ex = nx - x
                            ey = ny - y
                            if ex * ex + ey * ey < r2:
                                bad = True
                                break
                        if bad:
                            break
                    if bad:
                        break
                if bad:
                    continue
                # over the label of an earlier star?
                gx0 = _cell(x0 - reach_x - slack, x_origin, size, ncx)
                gx1 = _cell(x1 + reach_x + slack, x_origin, size, ncx)
                gy0 = _cell(y0 - reach_y - slack, y_origin, size, ncy)
                gy1 = _cell(y1 + reach_y + slack, y_origin, size, ncy)
                for gy in range(gy0 if gy0 > 0 else 0, (gy1 if gy1 < ncy - 1 else ncy - 1) + 1):
                    for gx in range(gx0 if gx0 > 0 else 0, (gx1 if gx1 < ncx - 1 else ncx - 1) + 1):
                        c = gy * ncx + gx
                        for q in range(cell_start[c], cell_start[c + 1]):
                            j = by_cell[q]
                            if j >= i or chosen[j] < 0:
                                continue
                            if (boxes[j, chosen[j], 0] < x1 and x0 < boxes[j, chosen[j], 2]
                                    and boxes[j, chosen[j], 1] < y1 and y0 < boxes[j, chosen[j], 3]):
                                bad = True
                                break
                        if bad:
                            break
                    if bad:
                        break
                if not bad:
                    chosen[i] = k
                    break
