# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Kernel of reduxd.products.quicklook: a float32 frame to palette grey levels."""


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
