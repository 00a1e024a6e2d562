/* See nac_acalsim.h. */
#include "nac_acalsim.h"

#include <string.h>

#include "nac_acalsim_map.h"
#include "nac_kernels.h"

#ifdef NAC_MMIO_SIMULATE
#define REG_W(r, v) nac_mmio_write(ACALSIM_BASE + (r), (uint32_t)(v))
#define REG_R(r) nac_mmio_read(ACALSIM_BASE + (r))
#else
#define REG_W(r, v) (*(volatile uint32_t *)(uintptr_t)(ACALSIM_BASE + (r)) = (uint32_t)(v))
#define REG_R(r) (*(volatile uint32_t *)(uintptr_t)(ACALSIM_BASE + (r)))
#endif

static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

void nac_acalsim_gemm(int64_t m, int64_t k, int64_t n, const float *a, const float *b, int b_io, float *out) {
#if defined(ACALSIM_STYLE_SCALAR)
    /* one device multiply per product; the CPU accumulates */
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j) {
            float acc = 0.0f;
            for (int64_t t = 0; t < k; ++t) {
                REG_W(ACALSIM_REG_OPERAND_A, f2u(a[i * k + t]));
                REG_W(ACALSIM_REG_OPERAND_B, f2u(b_io ? b[t * n + j] : b[j * k + t]));
                REG_W(ACALSIM_REG_OPERATION, ACALSIM_OP_MUL);
                REG_W(ACALSIM_REG_CONTROL, ACALSIM_CONTROL_START);
                while (!(REG_R(ACALSIM_REG_STATUS) & ACALSIM_STATUS_DONE)) {
                }
                acc += u2f(REG_R(ACALSIM_REG_RESULT));
            }
            out[i * n + j] = acc;
        }
#else
    /* command interface: sizes, A then B (as [k, n]) streamed in, MATMUL, C streamed out */
    while (REG_R(ACALSIM_REG_STATUS) != ACALSIM_STATUS_READY) {
    }
    REG_W(ACALSIM_REG_SIZE, m);
    REG_W(ACALSIM_REG_SIZE, k);
    REG_W(ACALSIM_REG_SIZE, n);
    for (int64_t i = 0; i < m * k; ++i) REG_W(ACALSIM_REG_DATA_IN, f2u(a[i]));
    for (int64_t t = 0; t < k; ++t)
        for (int64_t j = 0; j < n; ++j) REG_W(ACALSIM_REG_DATA_IN, f2u(b_io ? b[t * n + j] : b[j * k + t]));
    REG_W(ACALSIM_REG_CMD, ACALSIM_CMD_MATMUL);
    while (REG_R(ACALSIM_REG_STATUS) != ACALSIM_STATUS_READY) {
    }
    for (int64_t i = 0; i < m * n; ++i) out[i] = u2f(REG_R(ACALSIM_REG_DATA_OUT));
#endif
}

void nac_acalsim_linear(int64_t m, int64_t k, int64_t n, const float *x, const float *w, int w_io,
                        const float *bias, int act, float p0, float p1, float *out) {
    nac_acalsim_gemm(m, k, n, x, w, w_io, out);
    for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
            out[i * n + j] = nac_act(act, out[i * n + j] + (bias ? bias[j] : 0.0f), p0, p1);
}

void nac_acalsim_matmul(int64_t batch, const int64_t *a_off, const int64_t *b_off, int64_t m, int64_t k,
                        int64_t n, const float *a, const float *b, float *out) {
    for (int64_t p = 0; p < batch; ++p) nac_acalsim_gemm(m, k, n, a + a_off[p], b + b_off[p], 1, out + p * m * n);
}

void nac_acalsim_conv2d(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t cout, int64_t kh,
                        int64_t kw, const float *wt, const float *bias, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pl, int64_t dh, int64_t dw, int64_t groups, int64_t oh, int64_t ow, int act,
                        float p0, float p1, float *col, float *out) {
    const int64_t cin_g = c / groups, cout_g = cout / groups, kk = cin_g * kh * kw, hw = oh * ow;
    for (int64_t b = 0; b < n; ++b)
        for (int64_t g = 0; g < groups; ++g) {
            for (int64_t ci = 0; ci < cin_g; ++ci)
                for (int64_t u = 0; u < kh; ++u)
                    for (int64_t v = 0; v < kw; ++v) {
                        float *row = col + ((ci * kh + u) * kw + v) * hw;
                        const float *xc = x + (b * c + g * cin_g + ci) * h * w;
                        for (int64_t i = 0; i < oh; ++i)
                            for (int64_t j = 0; j < ow; ++j) {
                                const int64_t yy = i * sh - pt + u * dh, xx = j * sw - pl + v * dw;
                                row[i * ow + j] = (yy < 0 || yy >= h || xx < 0 || xx >= w) ? 0.0f : xc[yy * w + xx];
                            }
                    }
            float *y = out + (b * cout + g * cout_g) * hw;
            nac_acalsim_gemm(cout_g, kk, hw, wt + g * cout_g * kk, col, 1, y);
            for (int64_t o = 0; o < cout_g; ++o)
                for (int64_t i = 0; i < hw; ++i)
                    y[o * hw + i] = nac_act(act, y[o * hw + i] + (bias ? bias[g * cout_g + o] : 0.0f), p0, p1);
        }
}
