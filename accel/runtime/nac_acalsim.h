/* NAC on the ACALSim compute device: matrix products over memory-mapped registers.
 * The register map comes from nac_acalsim_map.h (generated from accel/acalsim.py or a user JSON);
 * the protocol per layout is in accel/ACALSIM.md. With NAC_MMIO_SIMULATE defined, register
 * accesses call nac_mmio_read/nac_mmio_write (a software model of the device, for host checks). */
#ifndef NAC_ACALSIM_H
#define NAC_ACALSIM_H
#include <stdint.h>

/* out[m, n] = a[m, k] @ B, B = b[k, n] if b_io else b[n, k]^T */
void nac_acalsim_gemm(int64_t m, int64_t k, int64_t n, const float *a, const float *b, int b_io, float *out);
void nac_acalsim_linear(int64_t m, int64_t k, int64_t n, const float *x, const float *w, int w_io,
                        const float *bias, int act, float p0, float p1, float *out);
void nac_acalsim_matmul(int64_t batch, const int64_t *a_off, const int64_t *b_off, int64_t m, int64_t k,
                        int64_t n, const float *a, const float *b, float *out);
/* conv2d as im2col (into col, cin/groups*kh*kw*oh*ow floats) + one device product per image and group */
void nac_acalsim_conv2d(int64_t n, int64_t c, int64_t h, int64_t w, const float *x, int64_t cout, int64_t kh,
                        int64_t kw, const float *wt, const float *bias, int64_t sh, int64_t sw, int64_t pt,
                        int64_t pl, int64_t dh, int64_t dw, int64_t groups, int64_t oh, int64_t ow, int act,
                        float p0, float p1, float *col, float *out);
#ifdef NAC_MMIO_SIMULATE
uint32_t nac_mmio_read(uint32_t addr);
void nac_mmio_write(uint32_t addr, uint32_t value);
#endif
#endif
