# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False, language_level=3
"""Median across frames of a frame-major stack with a comparator network (compiled kernel).

The stack is ``(nframes, npixels)``: each frame's pixels are contiguous, so a
comparator ``(i, j)`` is one pass of element-wise min/max over two rows, which
the C compiler turns into SIMD code. Pixels are taken in blocks that stay in the
CPU cache while the whole network runs over them. The network and its checks
are built by the Python wrapper, :func:`reduxd.steps.combine.plane_median`.
"""

ctypedef fused real:
    float
    double

cdef extern from *:
    """
    /* a[p], b[p] = min, max: x < y ? x : y and x < y ? y : x, as MINPS/MAXPS give them */
    #define RDX_CMPSWAP_LOOP(a, b, p, n) \
        for (; p < n; p++) { \
            __typeof__(a[0]) x = a[p], y = b[p]; \
            a[p] = x < y ? x : y; \
            b[p] = x < y ? y : x; \
        }
    #if defined(__GNUC__) && defined(__x86_64__)
    #include <immintrin.h>
    __attribute__((target("avx")))
    static void rdx_cmpswap_f_avx(float *a, float *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        for (; p + 8 <= n; p += 8) {
            __m256 x = _mm256_loadu_ps(a + p), y = _mm256_loadu_ps(b + p);
            _mm256_storeu_ps(a + p, _mm256_min_ps(x, y));
            _mm256_storeu_ps(b + p, _mm256_max_ps(y, x));
        }
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    __attribute__((target("avx")))
    static void rdx_cmpswap_d_avx(double *a, double *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        for (; p + 4 <= n; p += 4) {
            __m256d x = _mm256_loadu_pd(a + p), y = _mm256_loadu_pd(b + p);
            _mm256_storeu_pd(a + p, _mm256_min_pd(x, y));
            _mm256_storeu_pd(b + p, _mm256_max_pd(y, x));
        }
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    static void rdx_cmpswap_f_sse(float *a, float *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        for (; p + 4 <= n; p += 4) {
            __m128 x = _mm_loadu_ps(a + p), y = _mm_loadu_ps(b + p);
            _mm_storeu_ps(a + p, _mm_min_ps(x, y));
            _mm_storeu_ps(b + p, _mm_max_ps(y, x));
        }
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    static void rdx_cmpswap_d_sse(double *a, double *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        for (; p + 2 <= n; p += 2) {
            __m128d x = _mm_loadu_pd(a + p), y = _mm_loadu_pd(b + p);
            _mm_storeu_pd(a + p, _mm_min_pd(x, y));
            _mm_storeu_pd(b + p, _mm_max_pd(y, x));
        }
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    static int rdx_avx = -1;
    static int rdx_has_avx(void) {
        if (rdx_avx < 0) rdx_avx = __builtin_cpu_supports("avx") ? 1 : 0;
        return rdx_avx;
    }
    static void rdx_cmpswap_f(float *a, float *b, Py_ssize_t n) {
        if (rdx_has_avx()) rdx_cmpswap_f_avx(a, b, n); else rdx_cmpswap_f_sse(a, b, n);
    }
    static void rdx_cmpswap_d(double *a, double *b, Py_ssize_t n) {
        if (rdx_has_avx()) rdx_cmpswap_d_avx(a, b, n); else rdx_cmpswap_d_sse(a, b, n);
    }
    #else
    static void rdx_cmpswap_f(float *a, float *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    static void rdx_cmpswap_d(double *a, double *b, Py_ssize_t n) {
        Py_ssize_t p = 0;
        RDX_CMPSWAP_LOOP(a, b, p, n)
    }
    #endif
    """
    void rdx_cmpswap_f(float *a, float *b, Py_ssize_t n) nogil
    void rdx_cmpswap_d(double *a, double *b, Py_ssize_t n) nogil

cdef enum:
    BLOCK = 256  # pixels per block: 40 frames x 256 x 4 bytes stay in L1/L2


def network_median(real[:, ::1] stack, real[::1] out, const int[:, ::1] network, real nan):
    """Run ``network`` over ``stack`` in place, then write each pixel's median to ``out``.

    ``network`` holds comparators ``(i, j)``, ``i < j``, that leave the middle
    rank(s) of every column sorted. A column with a NaN gets ``nan``.
    """
    cdef Py_ssize_t n = stack.shape[0], npix = stack.shape[1], m = network.shape[0]
    cdef Py_ssize_t k = n // 2, b0, bn, c, i, p
    cdef bint even = n % 2 == 0
    cdef unsigned char hasnan[BLOCK]
    cdef real x
    with nogil:
        b0 = 0
        while b0 < npix:
            bn = min(BLOCK, npix - b0)
            for p in range(bn):
                hasnan[p] = 0
            for i in range(n):
                for p in range(bn):
                    x = stack[i, b0 + p]
                    hasnan[p] |= x != x
            for c in range(m):
                if real is float:
                    rdx_cmpswap_f(&stack[network[c, 0], b0], &stack[network[c, 1], b0], bn)
                else:
                    rdx_cmpswap_d(&stack[network[c, 0], b0], &stack[network[c, 1], b0], bn)
            for p in range(bn):
                if hasnan[p]:
                    out[b0 + p] = nan
                elif even:
                    out[b0 + p] = (stack[k - 1, b0 + p] + stack[k, b0 + p]) * <real>0.5
                else:
                    out[b0 + p] = stack[k, b0 + p]
            b0 += bn
