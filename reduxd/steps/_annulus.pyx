# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Annulus sky kernel: per star, the sigma-clipped statistics of its annulus pixels.

The Python wrapper (checks, conversions, documentation) is ``sky.annulus_sky``.
"""

from libc.math cimport NAN, ceil, fabs, isfinite, rint, sqrt
from libc.stdlib cimport free, malloc

ctypedef fused pixel:
    float
    double

cdef enum:
    SMALL = 64  # fewer values than this: insertion sort
    SAMPLE = 32  # values sampled to place the buckets
    PER_BUCKET = 2  # values per bucket, on average
    BIG = 32  # buckets with more values than this: heap sort
    RECENTRE = 100  # sums cancelled by more than this: summed again (see clip)

cdef double WIDTH = 12.0  # width of the buckets' range, in interquartile ranges


def annulus_stats(const pixel[:, ::1] data, const unsigned char[:, ::1] mask,
                  const double[::1] x, const double[::1] y, double r_in, double r_out,
                  double sigma, int maxiters, double[::1] median, double[::1] std,
                  long long[::1] npix):
    """Per star: ``clipped_stats`` of the usable pixels with ``r_in <= r < r_out``.

    A pixel is usable when it is on the frame, finite and, with a ``mask``, zero
    there. Fills ``median``, ``std`` (NaN where no pixel is left) and ``npix``.
    """
    cdef Py_ssize_t ny = data.shape[0], nx = data.shape[1], k, n
    k = x.shape[0]
    if not (y.shape[0] == median.shape[0] == std.shape[0] == npix.shape[0] == k):
        raise ValueError("annulus_stats: x, y, median, std and npix differ in size")
    if mask is not None and (mask.shape[0] != ny or mask.shape[1] != nx):
        raise ValueError("annulus_stats: the mask's shape is not the image's")
    if not 0 <= r_in < r_out < 1e6:
        raise ValueError(f"annulus_stats: need 0 <= r_in < r_out < 1e6, got {r_in}, {r_out}")
    cdef int half = <int>ceil(r_out)
    cdef Py_ssize_t side = 2 * half + 1
    cdef const unsigned char* mask_ptr = NULL
    if mask is not None:
        mask_ptr = &mask[0, 0]
    cdef const pixel* image = &data[0, 0]
    cdef pixel* values = <pixel*>malloc(2 * side * side * sizeof(pixel))
    cdef Buckets b
    b.ends = <int*>malloc((side * side + 4) * sizeof(int))
    b.done = <unsigned char*>malloc(side * side + 4)
    b.of = <int*>malloc(side * side * sizeof(int))
    cdef double* squares = <double*>malloc(2 * side * sizeof(double))
    if (values == NULL or b.ends == NULL or b.done == NULL or b.of == NULL
            or squares == NULL):
        free(values)
        free(b.ends)
        free(b.done)
        free(b.of)
        free(squares)
        raise MemoryError("annulus sky: no memory for the scratch buffers")
    try:
        with nogil:
            for k in range(x.shape[0]):
                n = gather(image, mask_ptr, nx, ny, x[k], y[k], half, r_in * r_in,
                           r_out * r_out, squares, values)
                clip(place(values, values + side * side, &b, n), &b, n, sigma, maxiters,
                     &median[k], &std[k], &npix[k])
    finally:
        free(values)
        free(b.ends)
        free(b.done)
        free(b.of)
        free(squares)


cdef Py_ssize_t gather(const pixel* image, const unsigned char* mask, Py_ssize_t nx,
                       Py_ssize_t ny, double x, double y, int half, double r_in2,
                       double r_out2, double* squares, pixel* out) noexcept nogil:
    """Copy the usable annulus pixels of the star at ``(x, y)`` to ``out``; their number.

    A pixel ``(cx + i, cy + j)``, ``(cx, cy)`` the pixel nearest the star, is in
    the annulus when ``r_in2 <= (i - (x - cx))**2 + (j - (y - cy))**2 < r_out2``
    (each square once per stamp column and row). Along a row the sum grows
    away from ``i = 0``, so the pixels within each radius are one run of
    columns, whose ends ``reach`` finds from those of the row before.
    """
    if not (fabs(x) < 1e15 and fabs(y) < 1e15):  # NaN too
        return 0
    cdef Py_ssize_t cx = <Py_ssize_t>rint(x), cy = <Py_ssize_t>rint(y), i, j, row, m = 0
    cdef double fx = x - <double>cx, fy = y - <double>cy, d
    cdef double* dx2 = squares + half
    cdef double* dy2 = squares + 3 * half + 1
    cdef int out_lo = 0, out_hi = 0, in_lo = 0, in_hi = 0
    for i in range(-half, half + 1):
        d = <double>i - fx
        dx2[i] = d * d
        d = <double>i - fy
        dy2[i] = d * d
    cdef Py_ssize_t i0 = max(-half, -cx), i1 = min(half, nx - 1 - cx)
    cdef Py_ssize_t j0 = max(-half, -cy), j1 = min(half, ny - 1 - cy)
    for j in range(j0, j1 + 1):
        out_lo = reach(dx2, out_lo, -1, half, dy2[j], r_out2)
        out_hi = reach(dx2, out_hi, 1, half, dy2[j], r_out2)
        if out_lo > out_hi:  # no pixel within r_out
            continue
        in_lo = reach(dx2, in_lo, -1, half, dy2[j], r_in2)
        in_hi = reach(dx2, in_hi, 1, half, dy2[j], r_in2)
        row = (cy + j) * nx + cx
        if in_lo > in_hi:  # none within r_in: one run
            m = take(image, mask, row, max(out_lo, i0), min(out_hi, i1), out, m)
        else:
            m = take(image, mask, row, max(out_lo, i0), min(in_lo - 1, i1), out, m)
            m = take(image, mask, row, max(in_hi + 1, i0), min(out_hi, i1), out, m)
    return m


cdef inline int reach(const double* dx2, int guess, int step, int half, double dy2,
                      double limit) noexcept nogil:
    """The last column from 0 in direction ``step`` (+-1) with ``dx2 + dy2 < limit``.

    ``-step`` when column 0 is not within; found by moving from ``guess``.
    """
    cdef int i = guess
    while i != step * half and dx2[i + step] + dy2 < limit:
        i += step
    while i != -step and not (dx2[i] + dy2 < limit):
        i -= step
    return i


cdef inline Py_ssize_t take(const pixel* image, const unsigned char* mask, Py_ssize_t row,
                            Py_ssize_t first, Py_ssize_t last, pixel* out,
                            Py_ssize_t m) noexcept nogil:
    """Append the usable pixels ``image[row + first : row + last + 1]`` to ``out[m:]``."""
    cdef Py_ssize_t i
    cdef pixel v
    for i in range(row + first, row + last + 1):
        v = image[i]
        if isfinite(v) and (mask == NULL or mask[i] == 0):
            out[m] = v
            m += 1
    return m


cdef struct Buckets:
    Py_ssize_t count  # bucket k holds the values [ends[k - 1] (0 for k = 0), ends[k])
    int* ends
    unsigned char* done  # bucket k is sorted
    int* of  # scratch: each value's bucket
    double centre, s1, s2  # sums of (values - centre) and of their squares


cdef pixel* place(pixel* a, pixel* spare, Buckets* b, Py_ssize_t n) noexcept nogil:
    """Put ``a[:n]`` (finite values) in buckets of non-decreasing values; the array used.

    Buckets of equal width over the values' middle (placed by the quartiles of
    a sample, or its range when they are equal), one below and one above. A bucket is sorted only when a median
    or a clipping limit falls in it (``settle``). Also sums the values about
    a median (the sample's).
    """
    cdef pixel sample[SAMPLE]
    cdef Py_ssize_t i, k, nb
    cdef double width, low, scale
    b.count = 1
    b.ends[0] = n
    b.done[0] = n < SMALL
    if n < SMALL:
        insertion_sort(a, n)
        b.centre = a[n // 2] if n else 0.0
        centred_sums(a, 0, n, b.centre, &b.s1, &b.s2)
        return a
    for i in range(SAMPLE):
        sample[i] = a[i * n // SAMPLE]
    insertion_sort(sample, SAMPLE)
    b.centre = sample[SAMPLE // 2]
    width = <double>sample[3 * SAMPLE // 4] - <double>sample[SAMPLE // 4]
    if not width > 0:  # quantised values: a quarter of the sample's whole range
        width = (<double>sample[SAMPLE - 1] - <double>sample[0]) / 4
    width *= WIDTH
    if not (width > 0 and width < 1e300):  # one bucket
        centred_sums(a, 0, n, b.centre, &b.s1, &b.s2)
        return a
    nb = n // PER_BUCKET
    low = b.centre - width / 2
    scale = nb / width
    b.count = nb + 2
    for k in range(nb + 3):
        b.ends[k] = 0
        b.done[k] = 0
    for i in range(n):  # counts, shifted by one
        k = bucket(a[i], low, scale, nb)
        b.of[i] = k
        b.ends[k + 1] += 1
    centred_sums(a, 0, n, b.centre, &b.s1, &b.s2)
    for k in range(nb + 2):  # the buckets' starts
        b.ends[k + 1] += b.ends[k]
    for i in range(n):  # each start moves on to the bucket's end
        k = b.of[i]
        spare[b.ends[k]] = a[i]
        b.ends[k] += 1
    return spare


cdef inline Py_ssize_t bucket(double v, double low, double scale, Py_ssize_t nb) noexcept nogil:
    """Bucket of ``v``, from 0 to ``nb + 1``: ``1 + floor((v - low) * scale)``, within
    rounding, clamped; non-decreasing in ``v`` (each step is)."""
    cdef double t = (v - low) * scale
    t = t if t > -1.0 else -1.0
    t = t if t < nb + 0.5 else nb + 0.5
    return <Py_ssize_t>(t + 1.0)


cdef inline Py_ssize_t begin(Buckets* b, Py_ssize_t k) noexcept nogil:
    return b.ends[k - 1] if k else 0


cdef Py_ssize_t bucket_of(Buckets* b, Py_ssize_t r) noexcept nogil:
    """The bucket holding the value of rank ``r``."""
    cdef Py_ssize_t lo = 0, hi = b.count - 1, mid
    while lo < hi:
        mid = (lo + hi) // 2
        if b.ends[mid] > r:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef void settle(pixel* a, Buckets* b, Py_ssize_t k) noexcept nogil:
    """Sort bucket ``k`` (once)."""
    cdef Py_ssize_t start = begin(b, k), size = b.ends[k] - start
    if b.done[k]:
        return
    if size > BIG:
        if not one_value(a + start, size):  # a quantised sky: buckets of one value
            heap_sort(a + start, size)
    else:
        insertion_sort(a + start, size)
    b.done[k] = 1


cdef inline double value_at(pixel* a, Buckets* b, Py_ssize_t r) noexcept nogil:
    """The value of rank ``r``."""
    settle(a, b, bucket_of(b, r))
    return a[r]


cdef bint one_value(const pixel* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if a[i] != a[0]:
            return False
    return True


cdef void insertion_sort(pixel* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef pixel v
    for i in range(1, n):
        v = a[i]
        j = i
        while j > 0 and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


cdef void heap_sort(pixel* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef pixel v
    for i in range(n // 2 - 1, -1, -1):
        sift_down(a, i, n)
    for i in range(n - 1, 0, -1):
        v = a[0]
        a[0] = a[i]
        a[i] = v
        sift_down(a, 0, i)


cdef void sift_down(pixel* a, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t child
    cdef pixel v = a[i]
    while 2 * i + 1 < n:
        child = 2 * i + 1
        if child + 1 < n and a[child + 1] > a[child]:
            child += 1
        if not (a[child] > v):
            break
        a[i] = a[child]
        i = child
    a[i] = v


cdef inline double median_of(pixel* a, Buckets* b, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Median of the run of ranks ``[lo, hi)`` (``hi > lo``), as ``numpy.median``."""
    cdef Py_ssize_t n = hi - lo
    if n % 2:
        return value_at(a, b, lo + n // 2)
    return (value_at(a, b, lo + n // 2 - 1) + value_at(a, b, lo + n // 2)) / 2.0


cdef void centred_sums(const pixel* a, Py_ssize_t lo, Py_ssize_t hi, double c, double* s1,
                       double* s2) noexcept nogil:
    """Sums of ``a[lo:hi] - c`` and of its squares (float64, four partial sums)."""
    cdef double t[8]
    cdef double u
    cdef Py_ssize_t i, k
    for k in range(8):
        t[k] = 0.0
    i = lo
    while i + 4 <= hi:
        for k in range(4):
            u = a[i + k] - c
            t[k] += u
            t[4 + k] += u * u
        i += 4
    while i < hi:
        u = a[i] - c
        t[0] += u
        t[4] += u * u
        i += 1
    s1[0] = (t[0] + t[1]) + (t[2] + t[3])
    s2[0] = (t[4] + t[5]) + (t[6] + t[7])


cdef struct Run:  # the values of ranks [lo, hi), their sums about c
    Py_ssize_t lo, hi
    double c, s1, s2
    double summed  # s2 when last summed value by value
    bint stale  # s2 fell far below that (precision lost to the clipping): sum again


cdef void clip(pixel* a, Buckets* b, Py_ssize_t n, double sigma, int maxiters,
               double* median, double* std, long long* npix) noexcept nogil:
    """``clipped_stats`` of the bucketed values ``a[:n]``.

    Each clipped set ``|v - median| <= sigma * std`` is a run of ranks: the
    clipping moves its ends (``cut_low``, ``cut_high``). The std comes from the
    run's sums of ``v - c`` (``c`` a median: no precision lost on a high sky)
    less the values clipped off; they are summed again (about the run's
    median) when the squares' sum has fallen ``RECENTRE`` times below its last
    value-by-value sum, or the run's mean lies far from ``c``: the rounding
    errors stay ~``RECENTRE`` times those of one sum.
    """
    cdef Run run
    cdef Py_ssize_t lo, hi
    cdef double med, lim
    cdef int it
    if n == 0:
        median[0], std[0], npix[0] = NAN, NAN, 0
        return
    run.lo, run.hi, run.stale = 0, n, False
    run.c, run.s1, run.s2, run.summed = b.centre, b.s1, b.s2, b.s2
    for it in range(maxiters):
        if run.hi - run.lo < 3:
            break
        med = median_of(a, b, run.lo, run.hi)
        lim = sigma * spread(a, b, &run)
        lo = cut_low(a, b, &run, med, lim)
        hi = cut_high(a, b, &run, lo, med, lim)
        if lo == run.lo and hi == run.hi:
            break
        run.lo, run.hi = lo, hi
    if run.hi == run.lo:
        median[0], std[0], npix[0] = NAN, NAN, 0
        return
    median[0] = median_of(a, b, run.lo, run.hi)
    std[0] = spread(a, b, &run)
    npix[0] = run.hi - run.lo


cdef inline bint kept(double v, double med, double lim) noexcept nogil:
    return fabs(v - med) <= lim


cdef inline void drop(const pixel* a, Py_ssize_t start, Py_ssize_t stop, Run* run) noexcept nogil:
    """Take the values ``a[start:stop]`` out of the run's sums."""
    cdef double d1 = 0.0, d2 = 0.0, u
    cdef Py_ssize_t i
    for i in range(start, stop):
        u = a[i] - run.c
        d1 += u
        d2 += u * u
    run.s1 -= d1
    run.s2 -= d2
    run.stale = not (run.summed <= RECENTRE * run.s2)


cdef Py_ssize_t cut_low(pixel* a, Buckets* b, Run* run, double med, double lim) noexcept nogil:
    """The first rank of the run whose value is kept (``run.hi`` if none); drops those below.

    A bucket not yet sorted is dropped whole when its largest value is not
    kept; otherwise it is sorted and read value by value. (Such a bucket holds
    no median rank, as the median sorted its buckets: so either its values all
    lie below the median, where being kept grows with the value, or no value
    from ``lo`` to the median is kept and then none at all is.)
    """
    cdef Py_ssize_t lo = run.lo, k, stop, i
    cdef double top
    while lo < run.hi:
        k = bucket_of(b, lo)
        stop = min(<Py_ssize_t>b.ends[k], run.hi)
        if not b.done[k]:  # then the whole bucket is in the run
            top = a[lo]
            for i in range(lo + 1, stop):
                if a[i] > top:
                    top = a[i]
            if not kept(top, med, lim):
                drop(a, lo, stop, run)
                lo = stop
                continue
            settle(a, b, k)
        i = lo
        while i < stop and not kept(a[i], med, lim):
            i += 1
        drop(a, lo, i, run)
        lo = i
        if lo < stop:
            break
    return lo


cdef Py_ssize_t cut_high(pixel* a, Buckets* b, Run* run, Py_ssize_t lo, double med,
                         double lim) noexcept nogil:
    """The end of the kept values from rank ``lo`` on (``cut_low`` from the top)."""
    cdef Py_ssize_t hi = run.hi, k, start, i
    cdef double bottom
    while hi > lo:
        k = bucket_of(b, hi - 1)
        start = max(begin(b, k), lo)
        if not b.done[k]:
            bottom = a[start]
            for i in range(start + 1, hi):
                if a[i] < bottom:
                    bottom = a[i]
            if not kept(bottom, med, lim):
                drop(a, start, hi, run)
                hi = start
                continue
            settle(a, b, k)
        i = hi
        while i > start and not kept(a[i - 1], med, lim):
            i -= 1
        drop(a, i, hi, run)
        hi = i
        if hi > start:
            break
    return hi


cdef double spread(pixel* a, Buckets* b, Run* run) noexcept nogil:
    """Standard deviation (ddof 0) of the run's values, from their sums about ``c``.

    Summed again about the run's median when stale or when the mean lies far
    from ``c`` (so a run of one value, clipped to, gets exactly 0, as numpy).
    """
    cdef Py_ssize_t n = run.hi - run.lo
    cdef double mean, var
    mean = run.s1 / n
    var = run.s2 / n - mean * mean
    if run.stale or not (mean * mean <= RECENTRE * var):
        run.c = median_of(a, b, run.lo, run.hi)
        centred_sums(a, run.lo, run.hi, run.c, &run.s1, &run.s2)
        run.summed = run.s2
        run.stale = False
        mean = run.s1 / n
        var = run.s2 / n - mean * mean
    return sqrt(var) if var > 0 else 0.0
