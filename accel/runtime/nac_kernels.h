/* NAC portable C99 kernels: the ops of format/SPEC.md for emitted firmware and host programs.
 *
 * Shapes and strides are in elements (int64_t), row-major; a stride of 0 broadcasts. Every
 * output is contiguous. Kernels never allocate; the emitted program passes pointers into its
 * static arena, its input buffers and the read-only weight blob. A kernel that meets bad data
 * (an index out of range) sets nac_error and returns; the program checks it after each step.
 * Host builds compile with NAC_FAST (register-tiled products, vectorised loops) and OpenMP (steps
 * split over OMP_NUM_THREADS threads); without them each kernel is a plain portable loop.
 * Copied unchanged into every emitted project by nac.accel.emit. */
#ifndef NAC_KERNELS_H
#define NAC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define NAC_MAX_RANK 8

extern int nac_error;          /* 0, or the 1-based step that failed */
extern int nac_current_step;   /* set by the emitted program before each step */

enum nac_unary {
    NAC_IDENTITY, NAC_RELU, NAC_RELU6, NAC_SIGMOID, NAC_TANH, NAC_GELU, NAC_GELU_TANH, NAC_SILU,
    NAC_HARDSWISH, NAC_HARDSIGMOID, NAC_LEAKY_RELU, NAC_ELU, NAC_CLAMP, NAC_EXP, NAC_LOG, NAC_SQRT,
    NAC_RSQRT, NAC_NEG, NAC_ABS, NAC_ERF, NAC_RECIPROCAL, NAC_COS, NAC_SIN, NAC_FLOOR, NAC_CEIL,
    NAC_ROUND, NAC_SIGN
};
enum nac_binary {
    NAC_ADD, NAC_SUB, NAC_MUL, NAC_DIV, NAC_MAXIMUM, NAC_MINIMUM, NAC_POW, NAC_REMAINDER,
    NAC_EQ, NAC_NE, NAC_LT, NAC_LE, NAC_GT, NAC_GE, NAC_AND, NAC_OR
};
enum nac_reduce { NAC_SUM, NAC_MEAN, NAC_PROD, NAC_AMAX, NAC_AMIN, NAC_ANY, NAC_ALL };
enum nac_dtype { NAC_F32, NAC_I64, NAC_I32, NAC_I8, NAC_U8, NAC_BOOL };

/* elementwise */
float nac_act(int op, float x, float p0, float p1);
void nac_unary_f32(int op, int64_t n, const float *x, float *out, float p0, float p1);
void nac_unary_i64(int op, int64_t n, const int64_t *x, int64_t *out);
void nac_not_u8(int64_t n, const uint8_t *x, uint8_t *out);
void nac_binary_f32(int op, int rank, const int64_t *shape, const float *a, const int64_t *as,
                    const float *b, const int64_t *bs, void *out);
void nac_binary_i64(int op, int rank, const int64_t *shape, const int64_t *a, const int64_t *as,
                    const int64_t *b, const int64_t *bs, void *out);
void nac_binary_u8(int op, int rank, const int64_t *shape, const uint8_t *a, const int64_t *as,
                   const uint8_t *b, const int64_t *bs, uint8_t *out);
void nac_where(size_t elem, int rank, const int64_t *shape, const uint8_t *c, const int64_t *cs,
               const void *a, const int64_t *as, const void *b, const int64_t *bs, void *out);
void nac_cast(int from, int to, int64_t n, const void *x, void *out);

/* data movement */
void nac_copy(size_t elem, int rank, const int64_t *shape, const void *src, const int64_t *ss,
              void *dst, const int64_t *ds);
void nac_fill(size_t elem, int64_t n, const void *value, void *out);
void nac_arange_f32(int64_t n, double start, double step, float *out);
void nac_arange_i64(int64_t n, int64_t start, int64_t step, int64_t *out);

/* linear algebra */
/* w: [k, n] row-major (w_io, as nac emit packs constant weights) or [n, k] */
void nac_linear(int64_t m, int64_t k, int64_t n, const float *x, const float *w, int w_io,
                const float *bias, int act, float p0, float p1, float *out);
/* linear with a quantised weight [n, k] (format/SPEC.md "Quantised tensors"): scheme 0 int8
 * (q: int8 [n, k]), 1 ternary (q: uint8 [n, ceil(k/4)], value t+1 in bits 2f..2f+1 of byte k/4);
 * scale [n] (per_row) or [1]. a8: each x row quantised to int8 (scale amax/127, round half to
 * even) with int32 accumulation (W8A8 / W1.58A8), else float activations (W8A32 / W1.58A32).
 * xq: m*k bytes of scratch for a8. */
void nac_linear_q(int scheme, int a8, int64_t m, int64_t k, int64_t n, const float *x, const void *q,
                  const float *scale, int per_row, const float *bias, int act, float p0, float p1, int8_t *xq,
                  float *out);
/* embedding rows of a quantised table, dequantised */
void nac_embedding_q(int scheme, int64_t rows, int64_t d, const void *q, const float *scale, int per_row,
                     int64_t count, const int64_t *index, float *out);
void nac_matmul(int64_t batch, const int64_t *a_off, const int64_t *b_off, int64_t m, int64_t k,
                int64_t n, const float *a, const float *b, float *out);
/* cols: scratch of (c / groups) * kh * kw * oh * ow floats for the fast build's im2col, or NULL
 * (the plain direct loops; depthwise convolutions never use it) */
void nac_conv2d(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t cout, int64_t kh,
                int64_t kw, const float *wt, const float *bias, int64_t sh, int64_t sw, int64_t pt,
                int64_t pl, int64_t dh, int64_t dw, int64_t groups, int64_t oh, int64_t ow, int act,
                float p0, float p1, float *cols, float *out);

/* pooling and normalisation */
void nac_max_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t oh, int64_t ow,
                    float *out);
void nac_avg_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, int64_t oh, int64_t ow, int count_pad,
                    int64_t divisor, float *out);
void nac_adaptive_avg_pool2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t oh, int64_t ow,
                             float *out);
void nac_layer_norm(int64_t rows, int64_t cols, const float *x, const float *w, const float *b,
                    float eps, float *out);
void nac_rms_norm(int64_t rows, int64_t cols, const float *x, const float *w, float eps, float *out);
void nac_batch_norm(int64_t n, int64_t c, int64_t hw, const float *x, const float *w, const float *b,
                    const float *mean, const float *var, float eps, float *out);
void nac_softmax(int64_t outer, int64_t n, int64_t inner, const float *x, int log, float *out);
/* rotary position embedding, half-split layout: out = x * c + cat(-x[.., D/2:], x[.., :D/2]) * s over rows
   of D = shape[rank - 1] (even); x, c, s strided (c and s broadcast to x: stride 0), out contiguous */
void nac_rotary_f32(int rank, const int64_t *shape, const float *x, const int64_t *xs, const float *c,
                    const int64_t *cs, const float *s, const int64_t *ss, float *out);

/* reductions and scans */
void nac_reduce_f32(int op, int rank, const int64_t *shape, const uint8_t *reduced, const float *x,
                    float *out);
void nac_reduce_u8(int op, int rank, const int64_t *shape, const uint8_t *reduced, const uint8_t *x,
                   uint8_t *out);
/* variance over the reduced axes with a Bessel-style correction; mean: scratch of the output's size */
void nac_var_f32(int rank, const int64_t *shape, const uint8_t *reduced, double correction, const float *x,
                 float *mean, float *out);
void nac_argreduce(int is_max, int64_t outer, int64_t n, int64_t inner, const float *x, int64_t *out);
void nac_cumsum_f32(int64_t outer, int64_t n, int64_t inner, const float *x, float *out);
void nac_clamp_i64(int64_t n, const int64_t *x, int64_t *out, int has_lo, int64_t lo, int has_hi, int64_t hi);
void nac_cumsum_i64(int64_t outer, int64_t n, int64_t inner, const int64_t *x, int64_t *out);
void nac_sort_f32(int64_t outer, int64_t n, int64_t inner, const float *x, int descending, int64_t k, float *values,
                  int64_t *indices, int64_t *scratch);
void nac_upsample2d(int64_t nc, int64_t h, int64_t w, const float *x, int64_t oh, int64_t ow, int bilinear,
                    int align_corners, float step_h, float step_w, float *out);

/* indexing */
void nac_take(size_t elem, int64_t outer, int64_t n, int64_t inner, const void *x, int64_t count,
              const int64_t *index, void *out);
void nac_gather(size_t elem, int rank, const int64_t *xshape, const int64_t *ishape, int dim,
                const void *x, const int64_t *index, void *out);

/* x[i0, i1, ..., i(ni-1)] with index tensors for the leading ni axes, broadcast to bshape
 * (istr: ni rows of br element strides); each picks a block of the remaining axes */
void nac_index(size_t elem, int xr, const int64_t *xshape, int ni, const int64_t *const *idx,
               const int64_t *istr, int br, const int64_t *bshape, const void *x, void *out);

/* attention: q [B, Hq, L, E], k [B, Hkv, S, E], v [B, Hkv, S, Ev] -> out [B, Hq, L, Ev];
 * mask_kind 0: none, 1: bool (keep nonzero), 2: float (added); ms: mask strides for (B, H, L, S) */
void nac_sdpa(int64_t b, int64_t hq, int64_t hkv, int64_t l, int64_t s, int64_t e, int64_t ev,
              const float *q, const float *k, const float *v, int mask_kind, const void *mask,
              const int64_t *ms, float scale, int causal, float *scratch, float *out);

#endif
