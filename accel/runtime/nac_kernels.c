/* NAC portable C99 kernels (see nac_kernels.h). Float math follows the engine's definitions in
 * format/SPEC.md: GELU x*Phi(x) with erf (or the tanh form), softmax with max subtraction,
 * layer norm with the biased variance, round half to even. */
#include "nac_kernels.h"

#include <math.h>
#include <string.h>

int nac_error = 0;
int nac_current_step = 0;

/* -- fast paths (host builds: make FAST=1, the default there) ----------------------------------
 * NAC_FAST: register-tiled products in GCC's generic vector type (16 floats: one zmm on AVX-512,
 * two ymm on AVX2, whatever -march gives), per-thread padded planes, simd reductions. _OPENMP
 * (make OPENMP=1): steps split over threads (OMP_NUM_THREADS). Without either, every kernel is
 * the plain loop above its fast twin, as on the bare-metal cores. */
#if defined(_OPENMP)
#define NAC_OMP(directive) _Pragma(directive)
#else
#define NAC_OMP(directive)
#endif
#if defined(NAC_FAST)
#define NAC_SIMD(directive) _Pragma(directive)
typedef float nac_v16 __attribute__((vector_size(64)));
typedef float nac_v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define NAC_LOAD16(p) (*(const nac_v16u *)(p))
#define NAC_STORE16(p, v) (*(nac_v16u *)(p) = (v))
#else
#define NAC_SIMD(directive)
#endif

/* -- iteration over an N-d shape with per-operand element strides ------------------------------ */
#define NAC_ITER_BEGIN(rank, shape)                                            \
    int64_t idx_[NAC_MAX_RANK] = {0};                                          \
    int64_t total_ = 1;                                                        \
    for (int d_ = 0; d_ < (rank); ++d_) total_ *= (shape)[d_];                 \
    for (int64_t i_ = 0; i_ < total_; ++i_) {

#define NAC_ITER_END(rank, shape)                                              \
        for (int d_ = (rank) - 1; d_ >= 0; --d_) {                             \
            if (++idx_[d_] < (shape)[d_]) break;                               \
            idx_[d_] = 0;                                                      \
        }                                                                      \
    }

static int64_t nac_offset(int rank, const int64_t *idx, const int64_t *stride) {
    int64_t o = 0;
    for (int d = 0; d < rank; ++d) o += idx[d] * stride[d];
    return o;
}

/* -- elementwise ------------------------------------------------------------------------------- */
static float nac_relu6(float x) { return x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x); }

float nac_act(int op, float x, float p0, float p1) {
    switch (op) {
    case NAC_IDENTITY: return x;
    case NAC_RELU: return x > 0.0f ? x : 0.0f;
    case NAC_RELU6: return nac_relu6(x);
    case NAC_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case NAC_TANH: return tanhf(x);
    case NAC_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case NAC_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case NAC_SILU: return x / (1.0f + expf(-x));
    case NAC_HARDSWISH: return x * nac_relu6(x + 3.0f) / 6.0f;
    case NAC_HARDSIGMOID: return nac_relu6(x + 3.0f) / 6.0f;
    case NAC_LEAKY_RELU: return x > 0.0f ? x : p0 * x;
    case NAC_ELU: return x > 0.0f ? x : p0 * (expf(x) - 1.0f);
    case NAC_CLAMP: return x < p0 ? p0 : (x > p1 ? p1 : x);
    case NAC_EXP: return expf(x);
    case NAC_LOG: return logf(x);
    case NAC_SQRT: return sqrtf(x);
    case NAC_RSQRT: return 1.0f / sqrtf(x);
    case NAC_NEG: return -x;
    case NAC_ABS: return fabsf(x);
    case NAC_ERF: return erff(x);
    case NAC_RECIPROCAL: return 1.0f / x;
    case NAC_COS: return cosf(x);
    case NAC_SIN: return sinf(x);
    case NAC_FLOOR: return floorf(x);
    case NAC_CEIL: return ceilf(x);
    case NAC_ROUND: return nearbyintf(x); /* default rounding mode: half to even */
    case NAC_SIGN: return (float)((x > 0.0f) - (x < 0.0f)); /* NaN and -0 give 0, as ATen */
    default: return x;
    }
}

void nac_unary_f32(int op, int64_t n, const float *x, float *out, float p0, float p1) {
    NAC_OMP("omp parallel for schedule(static) if (n > 65536)")
    for (int64_t i = 0; i < n; ++i) out[i] = nac_act(op, x[i], p0, p1);
}

void nac_unary_i64(int op, int64_t n, const int64_t *x, int64_t *out) {
    for (int64_t i = 0; i < n; ++i)
        out[i] = op == NAC_NEG ? -x[i] : op == NAC_SIGN ? (x[i] > 0) - (x[i] < 0) : (op == NAC_ABS && x[i] < 0 ? -x[i] : x[i]);
}

void nac_not_u8(int64_t n, const uint8_t *x, uint8_t *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = !x[i];
}

static float nac_bin_f(int op, float a, float b) {
    switch (op) {
    case NAC_ADD: return a + b;
    case NAC_SUB: return a - b;
    case NAC_MUL: return a * b;
    case NAC_DIV: return a / b;
    case NAC_MAXIMUM: return (a != a || b != b) ? NAN : (a > b ? a : b);
    case NAC_MINIMUM: return (a != a || b != b) ? NAN : (a < b ? a : b);
    case NAC_POW: return powf(a, b);
    case NAC_REMAINDER: { float r = fmodf(a, b); return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r; }
    default: return 0.0f;
    }
}

/* 1 when element strides st are row-major for shape (size-1 axes ignored) */
static int nac_dense(int rank, const int64_t *shape, const int64_t *st) {
    int64_t acc = 1;
    for (int d = rank - 1; d >= 0; --d) {
        if (shape[d] != 1 && st[d] != acc) return 0;
        acc *= shape[d];
    }
    return 1;
}

/* 1 when element strides st broadcast one element (all zero) */
static int nac_single(int rank, const int64_t *st) {
    for (int d = 0; d < rank; ++d)
        if (st[d]) return 0;
    return 1;
}

void nac_binary_f32(int op, int rank, const int64_t *shape, const float *a, const int64_t *as,
                    const float *b, const int64_t *bs, void *out) {
    float *of = (float *)out;
    uint8_t *ob = (uint8_t *)out;
    if (op <= NAC_DIV && nac_dense(rank, shape, as) && (nac_dense(rank, shape, bs) || nac_single(rank, bs))) {
        /* the common cases (same layout, or a scalar operand) as one flat loop */
        int64_t n = 1;
        for (int d = 0; d < rank; ++d) n *= shape[d];
        const int64_t sb = nac_single(rank, bs) ? 0 : 1;
        switch (op) {
        case NAC_ADD: for (int64_t i = 0; i < n; ++i) of[i] = a[i] + b[i * sb]; break;
        case NAC_SUB: for (int64_t i = 0; i < n; ++i) of[i] = a[i] - b[i * sb]; break;
        case NAC_MUL: for (int64_t i = 0; i < n; ++i) of[i] = a[i] * b[i * sb]; break;
        default: for (int64_t i = 0; i < n; ++i) of[i] = a[i] / b[i * sb]; break;
        }
        return;
    }
    NAC_ITER_BEGIN(rank, shape)
        float x = a[nac_offset(rank, idx_, as)], y = b[nac_offset(rank, idx_, bs)];
        switch (op) {
        case NAC_EQ: ob[i_] = x == y; break;
        case NAC_NE: ob[i_] = x != y; break;
        case NAC_LT: ob[i_] = x < y; break;
        case NAC_LE: ob[i_] = x <= y; break;
        case NAC_GT: ob[i_] = x > y; break;
        case NAC_GE: ob[i_] = x >= y; break;
        default: of[i_] = nac_bin_f(op, x, y);
        }
    NAC_ITER_END(rank, shape)
}

void nac_binary_i64(int op, int rank, const int64_t *shape, const int64_t *a, const int64_t *as,
                    const int64_t *b, const int64_t *bs, void *out) {
    int64_t *oi = (int64_t *)out;
    uint8_t *ob = (uint8_t *)out;
    NAC_ITER_BEGIN(rank, shape)
        int64_t x = a[nac_offset(rank, idx_, as)], y = b[nac_offset(rank, idx_, bs)];
        switch (op) {
        case NAC_ADD: oi[i_] = x + y; break;
        case NAC_SUB: oi[i_] = x - y; break;
        case NAC_MUL: oi[i_] = x * y; break;
        case NAC_MAXIMUM: oi[i_] = x > y ? x : y; break;
        case NAC_MINIMUM: oi[i_] = x < y ? x : y; break;
        case NAC_REMAINDER: { int64_t r = y ? x % y : 0; oi[i_] = (r != 0 && ((r < 0) != (y < 0))) ? r + y : r; break; }
        case NAC_AND: oi[i_] = x & y; break;
        case NAC_OR: oi[i_] = x | y; break;
        case NAC_EQ: ob[i_] = x == y; break;
        case NAC_NE: ob[i_] = x != y; break;
        case NAC_LT: ob[i_] = x < y; break;
        case NAC_LE: ob[i_] = x <= y; break;
        case NAC_GT: ob[i_] = x > y; break;
        case NAC_GE: ob[i_] = x >= y; break;
        default: oi[i_] = 0;
        }
    NAC_ITER_END(rank, shape)
}

void nac_binary_u8(int op, int rank, const int64_t *shape, const uint8_t *a, const int64_t *as,
                   const uint8_t *b, const int64_t *bs, uint8_t *out) {
    NAC_ITER_BEGIN(rank, shape)
        uint8_t x = a[nac_offset(rank, idx_, as)] != 0, y = b[nac_offset(rank, idx_, bs)] != 0;
        out[i_] = op == NAC_AND ? (x && y) : op == NAC_OR ? (x || y) : op == NAC_EQ ? x == y : x != y;
    NAC_ITER_END(rank, shape)
}

void nac_where(size_t elem, int rank, const int64_t *shape, const uint8_t *c, const int64_t *cs,
               const void *a, const int64_t *as, const void *b, const int64_t *bs, void *out) {
    NAC_ITER_BEGIN(rank, shape)
        const char *src = c[nac_offset(rank, idx_, cs)] ? (const char *)a + nac_offset(rank, idx_, as) * (int64_t)elem
                                                         : (const char *)b + nac_offset(rank, idx_, bs) * (int64_t)elem;
        memcpy((char *)out + i_ * (int64_t)elem, src, elem);
    NAC_ITER_END(rank, shape)
}

static double nac_load(int dt, const void *x, int64_t i) {
    switch (dt) {
    case NAC_F32: return ((const float *)x)[i];
    case NAC_I64: return (double)((const int64_t *)x)[i];
    case NAC_I32: return ((const int32_t *)x)[i];
    case NAC_I8: return ((const int8_t *)x)[i];
    default: return ((const uint8_t *)x)[i];
    }
}

void nac_cast(int from, int to, int64_t n, const void *x, void *out) {
    for (int64_t i = 0; i < n; ++i) {
        double v = nac_load(from, x, i);
        switch (to) {
        case NAC_F32: ((float *)out)[i] = (float)v; break;
        case NAC_I64: ((int64_t *)out)[i] = (int64_t)v; break;
        case NAC_I32: ((int32_t *)out)[i] = (int32_t)v; break;
        case NAC_I8: ((int8_t *)out)[i] = (int8_t)v; break;
        case NAC_BOOL: ((uint8_t *)out)[i] = v != 0.0; break;
        default: ((uint8_t *)out)[i] = (uint8_t)v;
        }
    }
}

/* -- data movement ----------------------------------------------------------------------------- */
void nac_copy(size_t elem, int rank, const int64_t *shape, const void *src, const int64_t *ss,
              void *dst, const int64_t *ds) {
    if (rank == 0) {
        memcpy(dst, src, elem);
        return;
    }
    NAC_ITER_BEGIN(rank, shape)
        memcpy((char *)dst + nac_offset(rank, idx_, ds) * (int64_t)elem,
               (const char *)src + nac_offset(rank, idx_, ss) * (int64_t)elem, elem);
    NAC_ITER_END(rank, shape)
}

void nac_fill(size_t elem, int64_t n, const void *value, void *out) {
    for (int64_t i = 0; i < n; ++i) memcpy((char *)out + i * (int64_t)elem, value, elem);
}

void nac_arange_f32(int64_t n, double start, double step, float *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = (float)(start + step * (double)i);
}

void nac_arange_i64(int64_t n, int64_t start, int64_t step, int64_t *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = start + step * i;
}

/* -- linear algebra ---------------------------------------------------------------------------- */
#if defined(NAC_FAST)
/* One 6 x 16 tile of C = A @ B: rows [i0, i0 + rows) (rows <= 6; missing rows repeat the last, are
 * computed and not stored), columns [j0, j0 + 16); bias per column (bias_rows 0) or per row (1);
 * activation on store. Six vector accumulators stay in registers across the whole k loop; each
 * step loads one 16-float row of B and broadcasts six scalars of A. */
static void nac_tile6x16(int64_t rows, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                         const float *bias, int bias_rows, int act, float p0, float p1, float *c, int64_t ldc) {
    const float *a0 = a, *a1 = a + (rows > 1 ? 1 : 0) * lda, *a2 = a + (rows > 2 ? 2 : rows - 1) * lda;
    const float *a3 = a + (rows > 3 ? 3 : rows - 1) * lda, *a4 = a + (rows > 4 ? 4 : rows - 1) * lda;
    const float *a5 = a + (rows > 5 ? 5 : rows - 1) * lda;
    nac_v16 c0 = {0}, c1 = {0}, c2 = {0}, c3 = {0}, c4 = {0}, c5 = {0};
    for (int64_t t = 0; t < k; ++t) {
        const nac_v16 bv = NAC_LOAD16(b + t * ldb);
        c0 += a0[t] * bv;
        c1 += a1[t] * bv;
        c2 += a2[t] * bv;
        c3 += a3[t] * bv;
        c4 += a4[t] * bv;
        c5 += a5[t] * bv;
    }
    const nac_v16 acc[6] = {c0, c1, c2, c3, c4, c5};
    for (int64_t r = 0; r < rows; ++r) {
        nac_v16 v = acc[r];
        if (bias && !bias_rows) v += NAC_LOAD16(bias);
        else if (bias) v += bias[r];
        float *cr = c + r * ldc;
        if (act == NAC_IDENTITY) {
            NAC_STORE16(cr, v);
        } else {
            float tmp[16];
            NAC_STORE16(tmp, v);
            for (int j = 0; j < 16; ++j) cr[j] = nac_act(act, tmp[j], p0, p1);
        }
    }
}
#endif

/* C[m, n] (row stride ldc) = act(A[m, k] (lda) @ B[k, n] (ldb) + bias): bias per column
 * (bias_rows 0, length n) or per row (1, length m), or NULL. */
static void nac_gemm(int64_t m, int64_t k, int64_t n, const float *a, int64_t lda, const float *b, int64_t ldb,
                     const float *bias, int bias_rows, int act, float p0, float p1, float *c, int64_t ldc) {
    int64_t j_done = 0;
#if defined(NAC_FAST)
    const int64_t mt = (m + 5) / 6, nt = n / 16;
    /* row tiles vary fastest: a thread's consecutive tiles reuse one 16-column panel of B */
    NAC_OMP("omp parallel for schedule(static) if (m * n * k > 65536)")
    for (int64_t p = 0; p < mt * nt; ++p) {
        const int64_t i0 = (p % mt) * 6, j0 = (p / mt) * 16, rows = m - i0 < 6 ? m - i0 : 6;
        nac_tile6x16(rows, k, a + i0 * lda, lda, b + j0, ldb,
                     bias ? (bias_rows ? bias + i0 : bias + j0) : 0, bias_rows, act, p0, p1, c + i0 * ldc + j0, ldc);
    }
    j_done = nt * 16;
#endif
    if (j_done == n) return;
    NAC_OMP("omp parallel for schedule(static) if (m * (n - j_done) * k > 65536)")
    for (int64_t i = 0; i < m; ++i) {
        float *ci = c + i * ldc;
        for (int64_t j = j_done; j < n; ++j) ci[j] = 0.0f;
        for (int64_t t = 0; t < k; ++t) {
            const float av = a[i * lda + t];
            const float *br = b + t * ldb;
            for (int64_t j = j_done; j < n; ++j) ci[j] += av * br[j];
        }
        for (int64_t j = j_done; j < n; ++j)
            ci[j] = nac_act(act, ci[j] + (bias ? bias[bias_rows ? i : j] : 0.0f), p0, p1);
    }
}

void nac_linear(int64_t m, int64_t k, int64_t n, const float *x, const float *w, int w_io,
                const float *bias, int act, float p0, float p1, float *out) {
    if (w_io) { /* w [k, n]: a row-major product, tiled where the build is fast */
        nac_gemm(m, k, n, x, k, w, n, bias, 0, act, p0, p1, out, n);
        return;
    }
    NAC_OMP("omp parallel for schedule(static) if (m * n * k > 65536)")
    for (int64_t i = 0; i < m; ++i) { /* w [n, k]: dot products */
        const float *xi = x + i * k;
        float *oi = out + i * n;
        for (int64_t j = 0; j < n; ++j) {
            const float *wr = w + j * k;
            float acc = 0.0f;
            NAC_SIMD("omp simd reduction(+:acc)")
            for (int64_t t = 0; t < k; ++t) acc += xi[t] * wr[t];
            oi[j] = nac_act(act, acc + (bias ? bias[j] : 0.0f), p0, p1);
        }
    }
}

static int nac_qweight(int scheme, const void *q, int64_t row, int64_t k, int64_t t) {
    if (scheme == 0) return ((const int8_t *)q)[row * k + t];
    const uint8_t b = ((const uint8_t *)q)[row * ((k + 3) / 4) + t / 4];
    return (int)((b >> (2 * (t % 4))) & 3) - 1;
}

void nac_linear_q(int scheme, int a8, int64_t m, int64_t k, int64_t n, const float *x, const void *q,
                  const float *scale, int per_row, const float *bias, int act, float p0, float p1, int8_t *xq,
                  float *out) {
    for (int64_t i = 0; i < m; ++i) {
        const float *xi = x + i * k;
        float xs = 1.0f;
        if (a8) {
            float amax = 0.0f;
            for (int64_t t = 0; t < k; ++t) amax = fabsf(xi[t]) > amax ? fabsf(xi[t]) : amax;
            xs = amax > 0.0f ? (float)((double)amax / 127.0) : 1.0f;
            for (int64_t t = 0; t < k; ++t) {
                float r = nearbyintf(xi[t] / xs);
                xq[i * k + t] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
            }
        }
        for (int64_t j = 0; j < n; ++j) {
            const float s = scale[per_row ? j : 0];
            float y;
            if (a8) {
                int32_t acc = 0;
                for (int64_t t = 0; t < k; ++t) acc += (int32_t)xq[i * k + t] * nac_qweight(scheme, q, j, k, t);
                y = (float)acc * xs * s;
            } else {
                float acc = 0.0f;
                for (int64_t t = 0; t < k; ++t) acc += xi[t] * (float)nac_qweight(scheme, q, j, k, t);
                y = acc * s;
            }
            out[i * n + j] = nac_act(act, y + (bias ? bias[j] : 0.0f), p0, p1);
        }
    }
}

void nac_embedding_q(int scheme, int64_t rows, int64_t d, const void *q, const float *scale, int per_row,
                     int64_t count, const int64_t *index, float *out) {
    for (int64_t i = 0; i < count; ++i) {
        const int64_t r = index[i];
        if (r < 0 || r >= rows) {
            nac_error = nac_current_step;
            return;
        }
        const float s = scale[per_row ? r : 0];
        for (int64_t t = 0; t < d; ++t) out[i * d + t] = (float)nac_qweight(scheme, q, r, d, t) * s;
    }
}

void nac_matmul(int64_t batch, const int64_t *a_off, const int64_t *b_off, int64_t m, int64_t k,
                int64_t n, const float *a, const float *b, float *out) {
    for (int64_t p = 0; p < batch; ++p)
        nac_gemm(m, k, n, a + a_off[p], k, b + b_off[p], n, 0, 0, NAC_IDENTITY, 0.0f, 0.0f, out + p * m * n, n);
}

#if defined(NAC_FAST)
/* Depthwise convolution of one plane, zero padding: for each output row and tap, only the output
 * columns whose input column is inside the plane, a plain run the compiler vectorises. */
static void nac_depthwise_plane(int64_t h, int64_t w, const float *x, int64_t kh, int64_t kw, const float *wt,
                                float bias, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                                int64_t oh, int64_t ow, int act, float p0, float p1, float *out) {
    for (int64_t i = 0; i < oh; ++i) {
        float *o = out + i * ow;
        for (int64_t j = 0; j < ow; ++j) o[j] = bias;
        for (int64_t u = 0; u < kh; ++u) {
            const int64_t yy = i * sh - pt + u * dh;
            if (yy < 0 || yy >= h) continue;
            for (int64_t v = 0; v < kw; ++v) {
                const float wv = wt[u * kw + v];
                const int64_t off = v * dw - pl; /* input column of output column j: j * sw + off */
                int64_t j0 = off >= 0 ? 0 : (-off + sw - 1) / sw;
                int64_t j1 = w - 1 - off < 0 ? 0 : (w - 1 - off) / sw + 1;
                if (j1 > ow) j1 = ow;
                const float *xr = x + yy * w + off;
                if (sw == 1)
                    for (int64_t j = j0; j < j1; ++j) o[j] += wv * xr[j];
                else
                    for (int64_t j = j0; j < j1; ++j) o[j] += wv * xr[j * sw];
            }
        }
        if (act != NAC_IDENTITY)
            for (int64_t j = 0; j < ow; ++j) o[j] = nac_act(act, o[j], p0, p1);
    }
}
#endif

void nac_conv2d(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t cout, int64_t kh,
                int64_t kw, const float *wt, const float *bias, int64_t sh, int64_t sw, int64_t pt,
                int64_t pl, int64_t dh, int64_t dw, int64_t groups, int64_t oh, int64_t ow, int act,
                float p0, float p1, float *cols, float *out) {
    const int64_t cin_g = c / groups, cout_g = cout / groups;
#if defined(NAC_FAST)
    if (groups == c && cout == c) { /* depthwise: planes over the threads */
        NAC_OMP("omp parallel for schedule(static) if (n * c * oh * ow * kh * kw > 65536)")
        for (int64_t p = 0; p < n * c; ++p)
            nac_depthwise_plane(h, w, x + p * h * w, kh, kw, wt + (p % c) * kh * kw, bias ? bias[p % c] : 0.0f,
                                sh, sw, pt, pl, dh, dw, oh, ow, act, p0, p1, out + p * oh * ow);
        return;
    }
    if (cols) { /* im2col (rows (ci, u, v), columns (i, j)) then a tiled product per image and group */
        const int64_t kk = cin_g * kh * kw, pix = oh * ow;
        const int direct = kh == 1 && kw == 1 && sh == 1 && sw == 1 && pt == 0 && pl == 0 && oh == h && ow == w;
        for (int64_t b = 0; b < n; ++b)
            for (int64_t g = 0; g < groups; ++g) {
                const float *xg = x + (b * c + g * cin_g) * h * w;
                if (!direct) {
                    NAC_OMP("omp parallel for schedule(static) if (kk * pix > 65536)")
                    for (int64_t r = 0; r < kk; ++r) {
                        const int64_t ci = r / (kh * kw), u = (r / kw) % kh, v = r % kw;
                        float *cr = cols + r * pix;
                        for (int64_t i = 0; i < oh; ++i) {
                            const int64_t yy = i * sh - pt + u * dh;
                            for (int64_t j = 0; j < ow; ++j) {
                                const int64_t xx = j * sw - pl + v * dw;
                                cr[i * ow + j] = (yy < 0 || yy >= h || xx < 0 || xx >= w) ? 0.0f
                                                 : xg[(ci * h + yy) * w + xx];
                            }
                        }
                    }
                }
                nac_gemm(cout_g, kk, pix, wt + g * cout_g * kk, kk, direct ? xg : cols, pix,
                         bias ? bias + g * cout_g : 0, 1, act, p0, p1, out + (b * cout + g * cout_g) * pix, pix);
            }
        return;
    }
#else
    (void)cols;
#endif
    for (int64_t b = 0; b < n; ++b)
        for (int64_t o = 0; o < cout; ++o) {
            const int64_t g = o / cout_g;
            const float *wo = wt + o * cin_g * kh * kw;
            float *y = out + (b * cout + o) * oh * ow;
            for (int64_t i = 0; i < oh; ++i)
                for (int64_t j = 0; j < ow; ++j) {
                    float acc = bias ? bias[o] : 0.0f;
                    for (int64_t ci = 0; ci < cin_g; ++ci) {
                        const float *xc = x + (b * c + g * cin_g + ci) * h * w;
                        const float *wc = wo + ci * kh * kw;
                        for (int64_t u = 0; u < kh; ++u) {
                            const int64_t yy = i * sh - pt + u * dh;
                            if (yy < 0 || yy >= h) continue;
                            for (int64_t v = 0; v < kw; ++v) {
                                const int64_t xx = j * sw - pl + v * dw;
                                if (xx < 0 || xx >= w) continue;
                                acc += xc[yy * w + xx] * wc[u * kw + v];
                            }
                        }
                    }
                    y[i * ow + j] = nac_act(act, acc, p0, p1);
                }
        }
}

/* -- pooling and normalisation ----------------------------------------------------------------- */
void nac_max_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
                    float *out) {
    for (int64_t p = 0; p < nc; ++p)
        for (int64_t i = 0; i < oh; ++i)
            for (int64_t j = 0; j < ow; ++j) {
                float m = -INFINITY;
                for (int64_t u = 0; u < kh; ++u) {
                    const int64_t yy = i * sh - ph + u * dh;
                    if (yy < 0 || yy >= h) continue;
                    for (int64_t v = 0; v < kw; ++v) {
                        const int64_t xx = j * sw - pw + v * dw;
                        if (xx < 0 || xx >= w) continue;
                        const float t = x[(p * h + yy) * w + xx];
                        if (t > m || t != t) m = t;
                    }
                }
                out[(p * oh + i) * ow + j] = m;
            }
}

void nac_avg_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, int64_t oh, int64_t ow, int count_pad,
                    int64_t divisor, float *out) {
    for (int64_t p = 0; p < nc; ++p)
        for (int64_t i = 0; i < oh; ++i)
            for (int64_t j = 0; j < ow; ++j) {
                const int64_t y0 = i * sh - ph, x0 = j * sw - pw;
                int64_t y1 = y0 + kh, x1 = x0 + kw;
                if (y1 > h + ph) y1 = h + ph;
                if (x1 > w + pw) x1 = w + pw;
                const int64_t pool = (y1 - y0) * (x1 - x0);
                float acc = 0.0f;
                int64_t cnt = 0;
                for (int64_t yy = y0 < 0 ? 0 : y0; yy < (y1 < h ? y1 : h); ++yy)
                    for (int64_t xx = x0 < 0 ? 0 : x0; xx < (x1 < w ? x1 : w); ++xx) {
                        acc += x[(p * h + yy) * w + xx];
                        ++cnt;
                    }
                const int64_t div = divisor > 0 ? divisor : (count_pad ? pool : cnt);
                out[(p * oh + i) * ow + j] = div > 0 ? acc / (float)div : 0.0f;
            }
}

void nac_adaptive_avg_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t oh, int64_t ow,
                             float *out) {
    for (int64_t p = 0; p < nc; ++p)
        for (int64_t i = 0; i < oh; ++i) {
            const int64_t y0 = (i * h) / oh, y1 = ((i + 1) * h + oh - 1) / oh;
            for (int64_t j = 0; j < ow; ++j) {
                const int64_t x0 = (j * w) / ow, x1 = ((j + 1) * w + ow - 1) / ow;
                float acc = 0.0f;
                for (int64_t yy = y0; yy < y1; ++yy)
                    for (int64_t xx = x0; xx < x1; ++xx) acc += x[(p * h + yy) * w + xx];
                out[(p * oh + i) * ow + j] = acc / (float)((y1 - y0) * (x1 - x0));
            }
        }
}

void nac_layer_norm(int64_t rows, int64_t cols, const float *x, const float *w, const float *b,
                    float eps, float *out) {
    NAC_OMP("omp parallel for schedule(static) if (rows * cols > 16384)")
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * cols;
        float *o = out + r * cols;
        double mean = 0.0, var = 0.0;
        for (int64_t j = 0; j < cols; ++j) mean += xr[j];
        mean /= (double)cols;
        for (int64_t j = 0; j < cols; ++j) var += ((double)xr[j] - mean) * ((double)xr[j] - mean);
        var /= (double)cols;
        const float inv = (float)(1.0 / sqrt(var + (double)eps));
        for (int64_t j = 0; j < cols; ++j) {
            float y = ((float)((double)xr[j] - mean)) * inv;
            if (w) y *= w[j];
            if (b) y += b[j];
            o[j] = y;
        }
    }
}

void nac_rms_norm(int64_t rows, int64_t cols, const float *x, const float *w, float eps, float *out) {
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * cols;
        double ss = 0.0;
        for (int64_t j = 0; j < cols; ++j) ss += (double)xr[j] * xr[j];
        const float inv = (float)(1.0 / sqrt(ss / (double)cols + (double)eps));
        for (int64_t j = 0; j < cols; ++j) out[r * cols + j] = xr[j] * inv * (w ? w[j] : 1.0f);
    }
}

void nac_batch_norm(int64_t n, int64_t c, int64_t hw, const float *x, const float *w, const float *b,
                    const float *mean, const float *var, float eps, float *out) {
    for (int64_t p = 0; p < n; ++p)
        for (int64_t ch = 0; ch < c; ++ch) {
            const float sc = (w ? w[ch] : 1.0f) / sqrtf(var[ch] + eps);
            const float sh = (b ? b[ch] : 0.0f) - mean[ch] * sc;
            const float *xi = x + (p * c + ch) * hw;
            float *o = out + (p * c + ch) * hw;
            for (int64_t i = 0; i < hw; ++i) o[i] = xi[i] * sc + sh;
        }
}

void nac_rotary_f32(int rank, const int64_t *shape, const float *x, const int64_t *xs, const float *c,
                    const int64_t *cs, const float *s, const int64_t *ss, float *out) {
    const int lead = rank - 1;
    const int64_t d = shape[lead], h = d / 2, xj = xs[lead], cj = cs[lead], sj = ss[lead];
    NAC_ITER_BEGIN(lead, shape)
        const float *xr = x + nac_offset(lead, idx_, xs), *cr = c + nac_offset(lead, idx_, cs);
        const float *sr = s + nac_offset(lead, idx_, ss);
        float *o = out + i_ * d;
        for (int64_t j = 0; j < h; ++j) {
            const float x1 = xr[j * xj], x2 = xr[(j + h) * xj];
            o[j] = x1 * cr[j * cj] + (-x2) * sr[j * sj];
            o[j + h] = x2 * cr[(j + h) * cj] + x1 * sr[(j + h) * sj];
        }
    NAC_ITER_END(lead, shape)
}

void nac_softmax(int64_t outer, int64_t n, int64_t inner, const float *x, int log, float *out) {
    NAC_OMP("omp parallel for schedule(static) if (outer * n * inner > 16384)")
    for (int64_t p = 0; p < outer; ++p)
        for (int64_t q = 0; q < inner; ++q) {
            const float *xi = x + p * n * inner + q;
            float *o = out + p * n * inner + q;
            float m = -INFINITY;
            for (int64_t j = 0; j < n; ++j) if (xi[j * inner] > m) m = xi[j * inner];
            double s = 0.0;
            for (int64_t j = 0; j < n; ++j) s += exp((double)(xi[j * inner] - m));
            for (int64_t j = 0; j < n; ++j)
                o[j * inner] = log ? (float)((double)(xi[j * inner] - m) - log1p(s - 1.0))
                                   : (float)(exp((double)(xi[j * inner] - m)) / s);
        }
}

/* -- reductions -------------------------------------------------------------------------------- */
static void nac_reduce_shape(int rank, const int64_t *shape, const uint8_t *reduced, int64_t *ostride,
                             int64_t *count, int64_t *osize) {
    int64_t acc = 1;
    *count = 1;
    for (int d = rank - 1; d >= 0; --d) {
        if (reduced[d]) {
            ostride[d] = 0;
            *count *= shape[d];
        } else {
            ostride[d] = acc;
            acc *= shape[d];
        }
    }
    *osize = acc;
}

void nac_reduce_f32(int op, int rank, const int64_t *shape, const uint8_t *reduced, const float *x,
                    float *out) {
    int64_t os[NAC_MAX_RANK], count, osize;
    nac_reduce_shape(rank, shape, reduced, os, &count, &osize);
    const float init = op == NAC_PROD ? 1.0f : op == NAC_AMAX ? -INFINITY : op == NAC_AMIN ? INFINITY : 0.0f;
    for (int64_t i = 0; i < osize; ++i) out[i] = init;
    NAC_ITER_BEGIN(rank, shape)
        float *o = out + nac_offset(rank, idx_, os);
        const float v = x[i_];
        switch (op) {
        case NAC_PROD: *o *= v; break;
        case NAC_AMAX: if (v > *o || v != v) *o = v; break;
        case NAC_AMIN: if (v < *o || v != v) *o = v; break;
        default: *o += v;
        }
    NAC_ITER_END(rank, shape)
    if (op == NAC_MEAN)
        for (int64_t i = 0; i < osize; ++i) out[i] /= (float)count;
}

void nac_reduce_u8(int op, int rank, const int64_t *shape, const uint8_t *reduced, const uint8_t *x,
                   uint8_t *out) {
    int64_t os[NAC_MAX_RANK], count, osize;
    nac_reduce_shape(rank, shape, reduced, os, &count, &osize);
    for (int64_t i = 0; i < osize; ++i) out[i] = op == NAC_ALL;
    NAC_ITER_BEGIN(rank, shape)
        uint8_t *o = out + nac_offset(rank, idx_, os);
        *o = op == NAC_ALL ? (*o && x[i_]) : (*o || x[i_]);
    NAC_ITER_END(rank, shape)
}

void nac_var_f32(int rank, const int64_t *shape, const uint8_t *reduced, double correction, const float *x,
                 float *mean, float *out) {
    int64_t os[NAC_MAX_RANK], count, osize;
    nac_reduce_shape(rank, shape, reduced, os, &count, &osize);
    nac_reduce_f32(NAC_MEAN, rank, shape, reduced, x, mean);
    for (int64_t i = 0; i < osize; ++i) out[i] = 0.0f;
    NAC_ITER_BEGIN(rank, shape)
        const int64_t o = nac_offset(rank, idx_, os);
        const float d = x[i_] - mean[o];
        out[o] += d * d;
    NAC_ITER_END(rank, shape)
    const double dof = (double)count - correction;
    for (int64_t i = 0; i < osize; ++i) out[i] = dof > 0.0 ? (float)(out[i] / dof) : NAN;
}

void nac_argreduce(int is_max, int64_t outer, int64_t n, int64_t inner, const float *x, int64_t *out) {
    for (int64_t p = 0; p < outer; ++p)
        for (int64_t q = 0; q < inner; ++q) {
            const float *xi = x + p * n * inner + q;
            int64_t best = 0;
            for (int64_t j = 1; j < n; ++j) {
                const float a = xi[j * inner], b = xi[best * inner];
                if (b != b) break;
                if (a != a || (is_max ? a > b : a < b)) best = j;
            }
            out[p * inner + q] = best;
        }
}

/* Inclusive prefix sum along the middle axis of [outer, n, inner], one definition per dtype. */
#define NAC_CUMSUM(name, T)                                                            \
    void name(int64_t outer, int64_t n, int64_t inner, const T *x, T *out) {           \
        for (int64_t p = 0; p < outer; ++p)                                            \
            for (int64_t q = 0; q < inner; ++q) {                                      \
                T acc = 0;                                                             \
                for (int64_t j = 0; j < n; ++j) {                                      \
                    acc += x[(p * n + j) * inner + q];                                 \
                    out[(p * n + j) * inner + q] = acc;                                \
                }                                                                      \
            }                                                                          \
    }
NAC_CUMSUM(nac_cumsum_f32, float)
NAC_CUMSUM(nac_cumsum_i64, int64_t)

/* Stable sort along an axis (ATen sort/topk): NaN above every number; ties keep index order.
   A bottom-up merge sort of the line's indices; scratch holds 2 * n int64. */
static int nac_before(float a, float b, int descending) {
    if (descending) { float t = a; a = b; b = t; }
    return !isnan(a) && (isnan(b) || a < b);
}

void nac_sort_f32(int64_t outer, int64_t n, int64_t inner, const float *x, int descending, int64_t k, float *values,
                  int64_t *indices, int64_t *scratch) {
    int64_t *a = scratch, *b = scratch + n;
    for (int64_t p = 0; p < outer; ++p)
        for (int64_t q = 0; q < inner; ++q) {
            const float *line = x + p * n * inner + q;
            int64_t *src = a, *dst = b;
            for (int64_t j = 0; j < n; ++j) src[j] = j;
            for (int64_t width = 1; width < n; width *= 2) {
                for (int64_t lo = 0; lo < n; lo += 2 * width) {
                    int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
                    int64_t i = lo, j = mid, o = lo;
                    while (i < mid && j < hi)
                        dst[o++] = nac_before(line[src[j] * inner], line[src[i] * inner], descending) ? src[j++] : src[i++];
                    while (i < mid) dst[o++] = src[i++];
                    while (j < hi) dst[o++] = src[j++];
                }
                int64_t *t = src; src = dst; dst = t;
            }
            for (int64_t j = 0; j < k; ++j) {
                values[(p * k + j) * inner + q] = line[src[j] * inner];
                indices[(p * k + j) * inner + q] = src[j];
            }
        }
}

/* -- resampling -------------------------------------------------------------------------------- */
/* ATen's source index along one axis (UpSample.h); step is 1 / the user's scale factor (rounded
   to float from double, as ATen), or 0 for none (then n_in / n_out). */
static void nac_upsample_tap(int64_t n_in, int64_t n_out, int64_t dst, int bilinear, int align, float step,
                             int64_t *i0, int64_t *i1, float *w1) {
    if (!bilinear) {
        float s = step > 0.0f ? step : (float)n_in / (float)n_out;
        int64_t i = n_out == n_in ? dst : n_out == 2 * n_in ? dst >> 1 : (int64_t)floorf((float)dst * s);
        *i0 = *i1 = i < n_in - 1 ? i : n_in - 1;
        *w1 = 0.0f;
        return;
    }
    float src;
    if (align) {
        src = n_out > 1 ? (float)dst * ((float)(n_in - 1) / (float)(n_out - 1)) : 0.0f;
    } else {
        float s = step > 0.0f ? step : (float)n_in / (float)n_out;
        src = s * ((float)dst + 0.5f) - 0.5f;
        if (src < 0.0f) src = 0.0f;
    }
    int64_t i = (int64_t)floorf(src);
    if (i > n_in - 1) i = n_in - 1;
    float l = src - (float)i;
    *i0 = i;
    *i1 = i < n_in - 1 ? i + 1 : n_in - 1;
    *w1 = l < 0.0f ? 0.0f : (l > 1.0f ? 1.0f : l);
}

void nac_upsample2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t oh, int64_t ow, int bilinear,
                    int align_corners, float step_h, float step_w, float *out) {
    for (int64_t i = 0; i < oh; ++i) {
        int64_t a, b;
        float lh;
        nac_upsample_tap(h, oh, i, bilinear, align_corners, step_h, &a, &b, &lh);
        for (int64_t j = 0; j < ow; ++j) {
            int64_t c0, c1;
            float lw;
            nac_upsample_tap(w, ow, j, bilinear, align_corners, step_w, &c0, &c1, &lw);
            for (int64_t p = 0; p < nc; ++p) {
                const float *xp = x + p * h * w;
                float top = (1.0f - lw) * xp[a * w + c0] + lw * xp[a * w + c1];
                float bottom = (1.0f - lw) * xp[b * w + c0] + lw * xp[b * w + c1];
                out[(p * oh + i) * ow + j] = bilinear ? (1.0f - lh) * top + lh * bottom : xp[a * w + c0];
            }
        }
    }
}

void nac_clamp_i64(int64_t n, const int64_t *x, int64_t *out, int has_lo, int64_t lo, int has_hi, int64_t hi) {
    for (int64_t i = 0; i < n; ++i) {
        int64_t v = x[i];
        if (has_lo && v < lo) v = lo;
        if (has_hi && v > hi) v = hi;
        out[i] = v;
    }
}

/* -- indexing ---------------------------------------------------------------------------------- */
void nac_take(size_t elem, int64_t outer, int64_t n, int64_t inner, const void *x, int64_t count,
              const int64_t *index, void *out) {
    const int64_t row = inner * (int64_t)elem;
    for (int64_t p = 0; p < outer; ++p)
        for (int64_t i = 0; i < count; ++i) {
            int64_t j = index[i] < 0 ? index[i] + n : index[i];
            if (j < 0 || j >= n) {
                nac_error = nac_current_step;
                return;
            }
            memcpy((char *)out + (p * count + i) * row, (const char *)x + (p * n + j) * row, (size_t)row);
        }
}

void nac_gather(size_t elem, int rank, const int64_t *xshape, const int64_t *ishape, int dim,
                const void *x, const int64_t *index, void *out) {
    int64_t xs[NAC_MAX_RANK], acc = 1;
    for (int d = rank - 1; d >= 0; --d) {
        xs[d] = acc;
        acc *= xshape[d];
    }
    NAC_ITER_BEGIN(rank, ishape)
        int64_t j = index[i_] < 0 ? index[i_] + xshape[dim] : index[i_];
        if (j < 0 || j >= xshape[dim]) {
            nac_error = nac_current_step;
            return;
        }
        int64_t o = 0;
        for (int d = 0; d < rank; ++d) o += (d == dim ? j : idx_[d]) * xs[d];
        memcpy((char *)out + i_ * (int64_t)elem, (const char *)x + o * (int64_t)elem, elem);
    NAC_ITER_END(rank, ishape)
}

void nac_index(size_t elem, int xr, const int64_t *xshape, int ni, const int64_t *const *idx,
               const int64_t *istr, int br, const int64_t *bshape, const void *x, void *out) {
    int64_t inner = 1, xs[NAC_MAX_RANK], acc = 1;
    for (int d = ni; d < xr; ++d) inner *= xshape[d];
    for (int d = xr - 1; d >= 0; --d) {
        xs[d] = acc;
        acc *= xshape[d];
    }
    const int64_t block = inner * (int64_t)elem;
    NAC_ITER_BEGIN(br, bshape)
        int64_t o = 0;
        for (int k = 0; k < ni; ++k) {
            int64_t j = idx[k][nac_offset(br, idx_, istr + k * br)];
            if (j < 0) j += xshape[k];
            if (j < 0 || j >= xshape[k]) {
                nac_error = nac_current_step;
                return;
            }
            o += j * xs[k];
        }
        memcpy((char *)out + i_ * block, (const char *)x + o * (int64_t)elem, (size_t)block);
    NAC_ITER_END(br, bshape)
}

/* -- attention --------------------------------------------------------------------------------- */
/* One (batch, head) of nac_sdpa; scratch: s floats. */
static void nac_sdpa_head(int64_t bi, int64_t h, int64_t hq, int64_t hkv, int64_t l, int64_t s, int64_t e,
                          int64_t ev, const float *q, const float *k, const float *v, int mask_kind,
                          const void *mask, const int64_t *ms, float scale, int causal, float *scratch,
                          float *out) {
    const int64_t group = hq / hkv;
    const int64_t hk = h / group;
    const float *qh = q + (bi * hq + h) * l * e;
    const float *kh = k + (bi * hkv + hk) * s * e;
    const float *vh = v + (bi * hkv + hk) * s * ev;
    float *oh = out + (bi * hq + h) * l * ev;
    for (int64_t i = 0; i < l; ++i) {
        float m = -INFINITY;
        for (int64_t j = 0; j < s; ++j) {
            float acc = 0.0f;
            const float *qi = qh + i * e, *kj = kh + j * e;
            NAC_SIMD("omp simd reduction(+:acc)")
            for (int64_t t = 0; t < e; ++t) acc += qi[t] * kj[t];
            acc *= scale;
            int keep = !(causal && j > i + (s - l));
            if (mask_kind) {
                const int64_t mo = bi * ms[0] + h * ms[1] + i * ms[2] + j * ms[3];
                if (mask_kind == 1) keep = keep && ((const uint8_t *)mask)[mo];
                else acc += ((const float *)mask)[mo];
            }
            scratch[j] = keep ? acc : -INFINITY;
            if (scratch[j] > m) m = scratch[j];
        }
        float *o = oh + i * ev;
        for (int64_t t = 0; t < ev; ++t) o[t] = 0.0f;
        if (m == -INFINITY) continue; /* every position masked: zeros */
        double sum = 0.0;
        for (int64_t j = 0; j < s; ++j) {
            scratch[j] = expf(scratch[j] - m);
            sum += scratch[j];
        }
        for (int64_t j = 0; j < s; ++j) {
            const float p = (float)(scratch[j] / sum);
            if (p == 0.0f) continue;
            const float *vj = vh + j * ev;
            for (int64_t t = 0; t < ev; ++t) o[t] += p * vj[t];
        }
    }
}

void nac_sdpa(int64_t b, int64_t hq, int64_t hkv, int64_t l, int64_t s, int64_t e, int64_t ev,
              const float *q, const float *k, const float *v, int mask_kind, const void *mask,
              const int64_t *ms, float scale, int causal, float *scratch, float *out) {
#if defined(_OPENMP)
    (void)scratch;
    NAC_OMP("omp parallel if (b * hq * l * s * e > 65536)")
    {
        float own[s > 0 ? s : 1]; /* each thread's row of scores */
        NAC_OMP("omp for schedule(static)")
        for (int64_t p = 0; p < b * hq; ++p)
            nac_sdpa_head(p / hq, p % hq, hq, hkv, l, s, e, ev, q, k, v, mask_kind, mask, ms, scale, causal, own, out);
    }
#else
    for (int64_t p = 0; p < b * hq; ++p)
        nac_sdpa_head(p / hq, p % hq, hq, hkv, l, s, e, ev, q, k, v, mask_kind, mask, ms, scale, causal, scratch, out);
#endif
}
