/* A software model of the ACALSim compute device, for checking the offload path on the host
 * (compiled only into host builds with -DNAC_MMIO_SIMULATE). It implements the protocol of
 * accel/ACALSIM.md for the selected register layout; it is a test double, not ACALSim. */
#include <stdint.h>
#include <string.h>

#include "nac_acalsim.h"
#include "nac_acalsim_map.h"

uint64_t nac_mmio_accesses = 0;

static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

#if defined(ACALSIM_STYLE_SCALAR)
static uint32_t reg_a, reg_b, reg_op, reg_result;

void nac_mmio_write(uint32_t addr, uint32_t value) {
    ++nac_mmio_accesses;
    switch (addr - ACALSIM_BASE) {
    case ACALSIM_REG_OPERAND_A: reg_a = value; break;
    case ACALSIM_REG_OPERAND_B: reg_b = value; break;
    case ACALSIM_REG_OPERATION: reg_op = value; break;
    case ACALSIM_REG_CONTROL: {
        const float a = u2f(reg_a), b = u2f(reg_b);
        reg_result = f2u(reg_op == ACALSIM_OP_MUL ? a * b : reg_op == ACALSIM_OP_ADD ? a + b
                         : reg_op == ACALSIM_OP_SUB ? a - b : a / b);
        break;
    }
    default: break;
    }
}

uint32_t nac_mmio_read(uint32_t addr) {
    ++nac_mmio_accesses;
    if (addr - ACALSIM_BASE == ACALSIM_REG_STATUS) return ACALSIM_STATUS_DONE;
    if (addr - ACALSIM_BASE == ACALSIM_REG_RESULT) return reg_result;
    return 0;
}
#else
#define MAXN (1 << 22)
static float buf_in[MAXN], buf_out[MAXN];
static int64_t sizes[3], nsize = 0, nin = 0, nout = 0;

void nac_mmio_write(uint32_t addr, uint32_t value) {
    ++nac_mmio_accesses;
    switch (addr - ACALSIM_BASE) {
    case ACALSIM_REG_SIZE: sizes[nsize++ % 3] = value; nin = nout = 0; break;
    case ACALSIM_REG_DATA_IN: if (nin < MAXN) buf_in[nin++] = u2f(value); break;
    case ACALSIM_REG_CMD:
        if (value == ACALSIM_CMD_MATMUL) {
            const int64_t m = sizes[0], k = sizes[1], n = sizes[2];
            const float *a = buf_in, *b = buf_in + m * k;
            for (int64_t i = 0; i < m; ++i)
                for (int64_t j = 0; j < n; ++j) {
                    float acc = 0.0f;
                    for (int64_t t = 0; t < k; ++t) acc += a[i * k + t] * b[t * n + j];
                    buf_out[i * n + j] = acc;
                }
            nsize = 0;
        }
        break;
    default: break;
    }
}

uint32_t nac_mmio_read(uint32_t addr) {
    ++nac_mmio_accesses;
    if (addr - ACALSIM_BASE == ACALSIM_REG_STATUS) return ACALSIM_STATUS_READY;
    if (addr - ACALSIM_BASE == ACALSIM_REG_DATA_OUT) return f2u(buf_out[nout++]);
    return 0;
}
#endif
