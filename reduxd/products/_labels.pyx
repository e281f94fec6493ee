# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Kernel of reduxd.products.labels: which label places lie over a star's circle."""


def mark_over_circle(const double[:, :, ::1] boxes, const double[::1] cx, const double[::1] cy,
                     const long long[::1] a, const long long[::1] b, double r2,
                     unsigned char[:, ::1] blocked):
    """Set ``blocked[a[p], k]`` where box ``boxes[a[p], k]`` comes within ``sqrt(r2)`` of
    star ``b[p]`` (finite values only; a place already blocked is not tested again)."""
    cdef Py_ssize_t p, k, i, j, n_places = boxes.shape[1]
    cdef double x, y, nx, ny, ex, ey
    with nogil:
        for p in range(a.shape[0]):
            i = a[p]
            j = b[p]
            x = cx[j]
            y = cy[j]
            for k in range(n_places):
                if blocked[i, k]:
                    continue
                # the box's nearest point to the star, then its squared distance
                nx = x if x > boxes[i, k, 0] else boxes[i, k, 0]
                nx = nx if nx < boxes[i, k, 2] else boxes[i, k, 2]
                ny = y if y > boxes[i, k, 1] else boxes[i, k, 1]
                ny = ny if ny < boxes[i, k, 3] else boxes[i, k, 3]
                ex = nx - x
                ey = ny - y
                if ex * ex + ey * ey < r2:
                    blocked[i, k] = 1
