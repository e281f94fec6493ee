# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Kernel of reduxd.steps.stack: one frame's good pixels added to a running sum."""

from libc.math cimport isfinite

ctypedef fused pixel:
    float
    double


def add_good(double[:, :] total, int[:, :] count, const pixel[:, :] src,
             const unsigned char[:, :] bad=None):
    """``total += src`` (in float64) where ``src`` is finite and ``bad`` is 0 (or None);
    ``count -= 1`` at the other pixels. Returns the number of pixels added."""
    cdef Py_ssize_t i, j, used = 0
    cdef double v
    cdef bint masked = bad is not None
    with nogil:
        for i in range(src.shape[0]):
            for j in range(src.shape[1]):
                v = src[i, j]
                if isfinite(v) and not (masked and bad[i, j]):
                    total[i, j] += v
                    used += 1
                else:
                    count[i, j] -= 1
    return used
