# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Compiled kernels of ``reduxd.steps.detect``: re-centring, local background, binning.

``refine`` is the kernel of ``detect.refine_stars`` (the wrapper checks and
converts the arguments, and documents the method). Each star iterates to
convergence on its own: windowed moments in its box (half size
``ceil(3 sigma_w) + 1`` around the rounded position, cut by the frame edges),
a step of twice the first moment, the window widened while the star fills it
and otherwise narrowed to the star's size, until the size and the position
settle. ``border_median`` is the kernel of ``detect.local_background``: the
median of the usable pixels on the border of a square around each star.
``bin_mean`` is the kernel of ``detect.bin_image`` (the peak search's binning),
``box_argmax`` that of ``detect.peak_position`` (the highest pixel near each peak).
The GIL is released in the loops.
"""

from libc.math cimport NAN, INFINITY, ceil, exp, fabs, hypot, isfinite, rint, sqrt
from libc.float cimport DBL_MAX, FLT_MAX
from libc.stdlib cimport free, malloc

ctypedef fused pixel:
    float
    double

cdef double DBL_BIG = 1.7976931348623157e308  # np.nan_to_num's stand-in for +inf
cdef double FAR = 1e15  # positions (and windows) beyond this are not measured


cdef int _window_moments(
    const pixel *image, const unsigned char *mask, Py_ssize_t ny, Py_ssize_t nx,
    unsigned char ignored, double x, double y, double sw, double bkg,
    Py_ssize_t side, double *buf, double *out,
) noexcept nogil:
    """Windowed moments (total, mx, my, mxx, myy, mxy) of ``image - bkg`` around (x, y).

    ``image`` and ``mask`` (NULL: none) are C-contiguous ``ny x nx`` arrays.
    Masked (``ignored`` bits), NaN and off-frame pixels count as 0, +-inf as
    +-DBL_MAX (``np.nan_to_num``). ``buf`` holds ``4 * side`` values.
    Returns 0 (``out`` untouched) when the total is not positive or the
    position or window is not usable.
    """
    cdef Py_ssize_t half, xc, yc, x0, x1, y0, y1, i, j, row
    cdef double sw2, d, v, r0, r1, r2, wj, dyj
    cdef double *wx = buf  # the window along x, times dx and dx^2; along y
    cdef double *wxd = buf + side
    cdef double *wxd2 = buf + 2 * side
    cdef double *wy = buf + 3 * side
    cdef double t = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, syy = 0.0, sxy = 0.0
    cdef double mx, my
    if not (fabs(x) < FAR and fabs(y) < FAR and 0 < sw < FAR):
        return 0
    half = <Py_ssize_t>ceil(3.0 * sw) + 1
    xc, yc = <Py_ssize_t>rint(x), <Py_ssize_t>rint(y)
    x0, x1 = max(xc - half, 0), min(xc + half + 1, nx)
    y0, y1 = max(yc - half, 0), min(yc + half + 1, ny)
    if x0 >= x1 or y0 >= y1 or x1 - x0 > side or y1 - y0 > side:
        return 0
    sw2 = sw * sw
    for i in range(x0, x1):  # the window is separable: a product of its x and y factors
        d = i - x
        wx[i - x0] = exp(-0.5 * d * d / sw2)
        wxd[i - x0] = wx[i - x0] * d
        wxd2[i - x0] = wxd[i - x0] * d
    for j in range(y0, y1):
        d = j - y
        wy[j - y0] = exp(-0.5 * d * d / sw2)
    for j in range(y0, y1):
        r0 = 0.0
        r1 = 0.0
        r2 = 0.0
        row = j * nx
        for i in range(x0, x1):
            if mask != NULL and (mask[row + i] & ignored):
                continue
            v = image[row + i] - bkg
            if not isfinite(v):
                if v != v:
                    continue
                v = DBL_BIG if v > 0 else -DBL_BIG
            r0 += wx[i - x0] * v
            r1 += wxd[i - x0] * v
            r2 += wxd2[i - x0] * v
        wj = wy[j - y0]
        dyj = j - y
        t += wj * r0
        sx += wj * r1
        sxx += wj * r2
        sy += wj * dyj * r0
        syy += wj * dyj * dyj * r0
        sxy += wj * dyj * r1
    if not t > 0:
        return 0
    mx, my = sx / t, sy / t
    out[0] = t
    out[1] = mx
    out[2] = my
    out[3] = sxx / t - mx * mx
    out[4] = syy / t - my * my
    out[5] = sxy / t - mx * my
    return 1


cdef void _refine_one(
    const pixel *image, const unsigned char *mask, Py_ssize_t ny, Py_ssize_t nx,
    unsigned char ignored, double x0, double y0, double fwhm, double bkg, double top,
    int iters, double fwhm_per_sigma, Py_ssize_t side, double *buf, double *res,
) noexcept nogil:
    """One star: ``res`` = x, y, fwhm, elongation, windowed flux (see ``refine_stars``)."""
    cdef double x = x0, y = y0, nxp, nyp, reach, sw2, m, new, new2, elong
    cdef double half_diff, mean2, lam1, lam2
    cdef double sigma_w = max(fwhm / fwhm_per_sigma, 0.6)
    cdef double sigma_max = max(top / fwhm_per_sigma, sigma_w)
    cdef double sigma_s = NAN
    cdef double mxx = NAN, myy = NAN, mxy = NAN, total = NAN  # of the last narrowing step
    cdef double mom[6]
    cdef bint has_result = False, failed = False, bad, widen, converged
    cdef int it
    for it in range(iters):
        bad = not _window_moments(
            image, mask, ny, nx, ignored, x, y, sigma_w, bkg, side, buf, mom
        )
        if not bad:
            nxp, nyp = x + 2 * mom[1], y + 2 * mom[2]
            reach = 6 * sigma_w + 3
            bad = fabs(nxp - x0) > reach or fabs(nyp - y0) > reach
        if bad:
            failed = True
            break
        x, y = nxp, nyp
        sw2 = sigma_w * sigma_w
        m = 0.5 * (mom[3] + mom[4])
        widen = m >= 0.9 * sw2 and sigma_w < sigma_max
        if widen:  # the star fills the window: widen it
            sigma_w = min(2 * sigma_w, sigma_max)
            continue
        if m > 0.9 * sw2:  # NaN stays NaN (np.minimum)
            m = 0.9 * sw2
        new = sqrt(m * sw2 / (sw2 - m)) if m > 0 else NAN
        new2 = new * new
        new = sqrt(new2 - 1.0 / 12) if new2 > 1.0 / 6 else NAN
        converged = fabs(new - sigma_s) < 0.01 * new and fabs(mom[1]) + fabs(mom[2]) < 0.01
        total, mxx, myy, mxy = mom[0], mom[3], mom[4], mom[5]
        has_result = True
        sigma_s = new
        sigma_w = new if not new < 0.6 else 0.6  # np.maximum: NaN stays NaN
        sigma_w = sigma_max if sigma_w > sigma_max else sigma_w
        if converged or not isfinite(new):
            break
    if failed or not has_result or not isfinite(sigma_s):
        res[0], res[1], res[2], res[3], res[4] = x0, y0, NAN, NAN, NAN
        return
    half_diff = hypot(0.5 * (mxx - myy), mxy)
    mean2 = 0.5 * (mxx + myy)
    lam1, lam2 = mean2 + half_diff, mean2 - half_diff
    elong = sqrt(lam1 / lam2) if lam2 > 0 else INFINITY
    res[0], res[1], res[2], res[3], res[4] = x, y, fwhm_per_sigma * sigma_s, elong, 2 * total


def refine(
    const pixel[:, ::1] image,
    const unsigned char[:, ::1] mask,
    unsigned char ignored,
    const double[::1] x,
    const double[::1] y,
    const double[::1] fwhm,
    const double[::1] background,
    const double[::1] top,
    const Py_ssize_t[::1] order,
    int iters,
    double fwhm_per_sigma,
    double[:, ::1] out,
):
    """Re-centre every star into ``out`` (5, n): x, y, fwhm, elongation, flux.

    ``mask`` is (0, 0) for no mask, else the image's shape; pixels with any
    ``ignored`` bit count as 0. Stars are measured in ``order`` (row order
    keeps the image in cache); each result goes to the star's own column.
    All arguments are checked by the caller (``detect.refine_stars``).
    """
    cdef Py_ssize_t n = x.shape[0], ny = image.shape[0], nx = image.shape[1], k, s, side
    cdef const pixel *pixels = _pixels(image)
    cdef const unsigned char *bits = _bits(mask)
    cdef double biggest = 0.6
    cdef double *buf
    cdef double res[5]
    for k in range(n):  # the largest window decides the buffer's size
        biggest = max(biggest, max(top[k], fwhm[k]) / fwhm_per_sigma)
    side = 2 * (<Py_ssize_t>ceil(3.0 * biggest) + 1) + 1
    buf = <double *>malloc(4 * side * sizeof(double))
    if buf == NULL:
        raise MemoryError("refine: no memory for the window buffer")
    with nogil:
        for k in range(n):
            s = order[k]
            _refine_one(pixels, bits, ny, nx, ignored, x[s], y[s], fwhm[s], background[s],
                        top[s], iters, fwhm_per_sigma, side, buf, res)
            out[0, s] = res[0]
            out[1, s] = res[1]
            out[2, s] = res[2]
            out[3, s] = res[3]
            out[4, s] = res[4]
    free(buf)


cdef const pixel *_pixels(const pixel[:, ::1] image) noexcept:
    """The first pixel of a C-contiguous image (NULL when it is empty)."""
    if image.shape[0] == 0 or image.shape[1] == 0:
        return NULL
    return &image[0, 0]


cdef const unsigned char *_bits(const unsigned char[:, ::1] mask) noexcept:
    """The first value of a C-contiguous mask (NULL for none: a (0, 0) mask)."""
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        return NULL
    return &mask[0, 0]


cdef Py_ssize_t _partition(double *v, Py_ssize_t lo, Py_ssize_t hi, double pivot,
                           bint or_equal) noexcept nogil:
    """Move the values of ``v[lo:hi]`` below ``pivot`` (or equal to it too, with
    ``or_equal``) to the front; returns where the others start. Branch-free: every
    value is swapped, the front grows by the comparison's result."""
    cdef Py_ssize_t store = lo, i
    cdef double value
    for i in range(lo, hi):
        value = v[i]
        v[i] = v[store]
        v[store] = value
        store += (value <= pivot) if or_equal else (value < pivot)
    return store


cdef double _select(double *v, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """The ``k``-th smallest of ``v[:n]`` (no NaN), partially reordering ``v``;
    afterwards ``v[:k]`` holds values not above it.

    Quickselect with a three-way split (below, equal to, above the pivot), each
    split a branch-free pass: border pixels are noise, on which the branches of
    the usual partition are mispredicted about half of the time.
    """
    cdef Py_ssize_t lo = 0, hi = n, below, upto
    cdef double pivot
    while True:
        pivot = v[lo + (hi - lo) // 2]
        below = _partition(v, lo, hi, pivot, False)
        if k < below:
            hi = below
            continue
        upto = _partition(v, below, hi, pivot, True)  # the pivot itself: upto > below
        if k < upto:
            return pivot
        lo = upto


cdef double _median(double *v, Py_ssize_t n) noexcept nogil:
    """Median of ``v[:n]`` as ``np.median``: the mean of the two middle values (NaN if n = 0)."""
    cdef Py_ssize_t k = n // 2, i
    cdef double high, low
    if n == 0:
        return NAN
    high = _select(v, n, k)
    low = high
    if n % 2 == 0:  # the lower middle value: the largest of those before the upper one
        low = v[0]
        for i in range(1, k):
            low = v[i] if v[i] > low else low
    return (low + high) / 2.0


cdef inline void _append_usable(
    const pixel *image, const unsigned char *mask, Py_ssize_t ny, Py_ssize_t nx,
    unsigned char ignored, Py_ssize_t i, Py_ssize_t j, double *values, Py_ssize_t *count,
) noexcept nogil:
    """Append pixel (i, j) to ``values`` if it is in the frame, finite and not ignored."""
    if i < 0 or j < 0 or j >= ny or i >= nx:
        return
    if mask != NULL and (mask[j * nx + i] & ignored):
        return
    if isfinite(image[j * nx + i]):
        values[count[0]] = image[j * nx + i]
        count[0] += 1


def border_median(
    const pixel[:, ::1] image,
    const unsigned char[:, ::1] mask,
    unsigned char ignored,
    const double[::1] x,
    const double[::1] y,
    Py_ssize_t half,
    double[::1] out,
):
    """Median of the usable pixels on the border of the square of half side ``half``
    around each rounded position into ``out`` (NaN where none is usable).

    Usable: inside the frame, finite, and (``mask`` not (0, 0)) without any
    ``ignored`` bit. Values are taken as float64. Arguments are checked by the
    caller (``detect.local_background``).
    """
    cdef Py_ssize_t n = x.shape[0], ny = image.shape[0], nx = image.shape[1], s, k, c, xc, yc
    cdef const pixel *pixels = _pixels(image)
    cdef const unsigned char *bits = _bits(mask)
    cdef double *values = <double *>malloc(max(8 * half, 1) * sizeof(double))
    if values == NULL:
        raise MemoryError("border_median: no memory for the border values")
    with nogil:
        for s in range(n):
            c = 0
            if fabs(x[s]) < FAR and fabs(y[s]) < FAR:
                xc, yc = <Py_ssize_t>rint(x[s]), <Py_ssize_t>rint(y[s])
                if half == 0:  # the border is the pixel itself
                    _append_usable(pixels, bits, ny, nx, ignored, xc, yc, values, &c)
                else:
                    for k in range(-half, half + 1):  # top and bottom rows
                        _append_usable(pixels, bits, ny, nx, ignored, xc + k, yc - half, values, &c)
                        _append_usable(pixels, bits, ny, nx, ignored, xc + k, yc + half, values, &c)
                    for k in range(-half + 1, half):  # left and right columns, corners done
                        _append_usable(pixels, bits, ny, nx, ignored, xc - half, yc + k, values, &c)
                        _append_usable(pixels, bits, ny, nx, ignored, xc + half, yc + k, values, &c)
            out[s] = _median(values, c)
    free(values)


def bin_mean(const pixel[:, ::1] image, Py_ssize_t factor, float[:, ::1] out):
    """Mean of each ``factor x factor`` block into ``out`` (float32, the ragged border
    dropped), with numpy's float32 arithmetic and order (``detect.bin_image``):
    the block's rows are summed first (each sum rounded to float32 after every
    addition, as ``rows += data[k::factor]``), then its columns, then divided by
    ``factor**2``. ``out`` has shape ``(ny // factor, nx // factor)``.
    """
    cdef Py_ssize_t nby = out.shape[0], nbx = out.shape[1], ncol = nbx * factor
    cdef Py_ssize_t b, k, c, row
    cdef const pixel *pixels = _pixels(image)
    cdef Py_ssize_t nx = image.shape[1]
    cdef float area = <float>(factor * factor)
    cdef float total
    cdef float *rows = <float *>malloc(max(ncol, 1) * sizeof(float))
    if rows == NULL:
        raise MemoryError("bin_mean: no memory for a row")
    with nogil:
        for b in range(nby):
            row = b * factor * nx
            for c in range(ncol):
                rows[c] = <float>pixels[row + c]
            for k in range(1, factor):
                row = (b * factor + k) * nx
                for c in range(ncol):
                    rows[c] = <float>(rows[c] + pixels[row + c])
            for c in range(nbx):
                total = rows[c * factor]
                for k in range(1, factor):
                    total = total + rows[c * factor + k]
                out[b, c] = total / area
    free(rows)


cdef inline pixel _peak_value(pixel v) noexcept nogil:
    """``np.nan_to_num(v, nan=-inf)``: NaN ranks lowest, +-inf as the type's largest finite."""
    cdef pixel big = FLT_MAX if pixel is float else DBL_MAX
    if v != v:
        return -INFINITY
    if v == INFINITY:
        return big
    if v == -INFINITY:
        return -big
    return v


def box_argmax(
    const pixel[:, ::1] image,
    const double[::1] x,
    const double[::1] y,
    Py_ssize_t half,
    Py_ssize_t[::1] px,
    Py_ssize_t[::1] py,
):
    """Column and row (``px``, ``py``) of the highest pixel of the square of half side
    ``half`` around each rounded position, cut by the frame; the first in row-major
    order among equal values (``np.argmax``), NaN ranked lowest. Returns the index
    of the first position whose box holds no pixel, or -1.
    """
    cdef Py_ssize_t n = x.shape[0], ny = image.shape[0], nx = image.shape[1]
    cdef Py_ssize_t s, i, j, xc, yc, x0, x1, y0, y1, empty = -1
    cdef const pixel *pixels = _pixels(image)
    cdef pixel best, v
    with nogil:
        for s in range(n):
            if not (fabs(x[s]) < FAR and fabs(y[s]) < FAR):
                empty = s
                break
            xc, yc = <Py_ssize_t>rint(x[s]), <Py_ssize_t>rint(y[s])
            x0, x1 = max(xc - half, 0), min(xc + half + 1, nx)
            y0, y1 = max(yc - half, 0), min(yc + half + 1, ny)
            if x0 >= x1 or y0 >= y1:
                empty = s
                break
            px[s], py[s] = x0, y0
            best = _peak_value(pixels[y0 * nx + x0])
            for j in range(y0, y1):
                for i in range(x0, x1):
                    v = _peak_value(pixels[j * nx + i])
                    if v > best:
                        best = v
                        px[s], py[s] = i, j
    return empty
