"""AVX-512 kernels for Numba written as LLVM IR (`numba.extending.intrinsic`): VNNI byte dot
products and a 16-row ternary table lookup.

LLVM does not turn Numba's byte loops into ``vpdpbusd`` (Numba widens integer arithmetic to 64
bits; even with the accumulator truncated to int32, LLVM 22 picks ``vpdpwssd`` on 32-bit lanes,
16 multiply-adds per instruction). `dot_u8s8` and `dot_ternary_codes_s8` call
``llvm.x86.avx512.vpdpbusd.512`` directly: 64 unsigned x signed byte products summed into 16
int32 lanes per instruction (Intel SDM, VPDPBUSD). They are the intrinsics where the CPU has
AVX512-VNNI and Numba compiles for the host (`VNNI`), else plain Numba loops with the same
result. Both read whole 64-byte blocks and assume the arrays hold ``nblk * 64`` bytes; the caller
handles the remainder. Sums wrap modulo 2**32 like the instruction (no saturation).

On AVX2 without VNNI the twins are ``vpmaddubsw`` + ``vpmaddwd`` (`AVX2`): `dot_s8s8` (signed
activations times |w|, exact for activations in [-127, 127]) and the ternary codes product
(codes of at most 3 never saturate); measured here at 41 and 25 G multiply-adds/s per core
against 19 and 13 for the plain loops (VNNI: 160 and 124).

`lut16_ternary_rows` (``vpermps``, `AVX512` only; callers keep a plain kernel for the rest) is
the T-MAC table lookup for ternary weights times float activations.

`panel_tile_fast` (8 x 32, 6 x 16 or one-row tiles, chosen at run time) and `panel_tile_4x32`,
`panel_tile_3x32` and `panel_tile_2x32` (the rows left over) are the register
tiles of the float32 GEMM on prepacked weight panels (`nac.engine.kernels.linalg.gemm_panels`):
8 rows x 32 columns in 16 zmm accumulators for AVX-512, 6 rows x 16 columns in 12 ymm for AVX2
(the same generic code, lowered for each); `loop_panel_tile` is their plain twin.

`mm_tile_4x16` is a 4 x 16 float32 register tile of a matrix product in LLVM's generic vector
type, lowered for whatever the CPU has (the tiled attention's two products); `dw_tile_4x16` is
the same kind of tile for a channels-last depthwise convolution (4 output pixels x 16 channels),
`dw_run` a run of 4- or 8-pixel tiles along a row for a 3 x 3 or 5 x 5 kernel (`dw_run_rows`
where neighbouring pixels share input vectors),
and `dw_tile_1x16` its one-pixel form over a list of taps (pixels at the plane's border).
"""
from __future__ import annotations

import os

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils, config
from numba.extending import intrinsic

_I8X64 = ir.VectorType(ir.IntType(8), 64)
_I8X16 = ir.VectorType(ir.IntType(8), 16)
_I32X16 = ir.VectorType(ir.IntType(32), 16)
_F32X16 = ir.VectorType(ir.FloatType(), 16)
_I8X32 = ir.VectorType(ir.IntType(8), 32)
_I16X16 = ir.VectorType(ir.IntType(16), 16)
_I32X8 = ir.VectorType(ir.IntType(32), 8)


def _host_has(*features: str) -> bool:
    if config.CPU_NAME not in (None, "host"):  # compiling for another CPU (e.g. a portable cache)
        return False
    import llvmlite.binding as ll

    host = ll.get_host_cpu_features()
    return all(host.get(f, False) for f in features)


VNNI: bool = _host_has("avx512f", "avx512bw", "avx512vnni")
"""True when the VNNI intrinsics below can be compiled on this machine."""
AVX2: bool = _host_has("avx2")
"""True when the AVX2 byte products (`dot_s8s8`'s and `dot_ternary_codes_s8`'s twins) can be compiled here."""
AVX512: bool = _host_has("avx512f")
"""True when `lut16_ternary_rows` (``vpermps`` on 16 floats) can be compiled on this machine."""


#: bytes to which `aligned_empty` aligns: one cache line, one 16-float vector
VECTOR_ALIGN = 64


def aligned_empty(shape, dtype=np.float32, align: int = VECTOR_ALIGN) -> np.ndarray:
    """An uninitialised C-contiguous array whose first element lies on an ``align``-byte
    boundary (numpy aligns to 16 bytes only).

    The plan's arena and the repacked weights are allocated so: with every row of 16 floats on
    one cache line, no vector load is split across two. A depthwise register tile ran 1.6x
    slower on arrays 16 or 48 bytes off (45.7 against 72.0 ns for 25 taps x 4 pixels x 16
    channels, AVX-512)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def _is_array(ty, dtype, ndim: int) -> bool:
    """A C-contiguous Numba array type of ``dtype`` and ``ndim`` (the intrinsics read raw memory)."""
    return isinstance(ty, types.Array) and ty.dtype == dtype and ty.ndim == ndim and ty.layout == "C"


def _function(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _load_block(builder, base, offset):
    """<64 x i8> at ``base + offset`` bytes (unaligned)."""
    p = builder.gep(builder.bitcast(base, ir.IntType(8).as_pointer()), [offset])
    return builder.load(builder.bitcast(p, _I8X64.as_pointer()), align=1)


def _dot_loop(context, builder, sig, args, fields, unroll):
    """sum over blocks b < args[-1] of vpdpbusd(fields(block b of args[0])[f], block b of args[1 + f]).

    ``unroll`` blocks go through separate accumulators per loop trip, so that consecutive
    ``vpdpbusd`` do not wait on each other's result (5 cycles of latency on Zen 4); the blocks left
    over run one at a time.
    """
    ptrs = [context.make_array(sig.args[i])(context, builder, args[i]).data for i in range(len(args) - 1)]
    dpbusd = _function(builder, "llvm.x86.avx512.vpdpbusd.512", _I32X16, [_I32X16] * 3)
    nsigned = len(ptrs) - 1
    accs = [cgutils.alloca_once_value(builder, ir.Constant(_I32X16, None)) for _ in range(nsigned * unroll)]
    nblk = args[-1]
    ity = nblk.type

    def blocks(first_block, count):
        for u in range(count):
            offset = builder.mul(builder.add(first_block, ir.Constant(ity, u)), ir.Constant(ity, 64))
            unsigned = fields(builder, _load_block(builder, ptrs[0], offset))
            for f in range(nsigned):
                acc = accs[u * nsigned + f]
                signed = _load_block(builder, ptrs[1 + f], offset)
                total = builder.call(dpbusd, [builder.load(acc), builder.bitcast(unsigned[f], _I32X16),
                                              builder.bitcast(signed, _I32X16)])
                builder.store(total, acc)

    trips = builder.udiv(nblk, ir.Constant(ity, unroll))
    with cgutils.for_range(builder, trips) as loop:
        blocks(builder.mul(loop.index, ir.Constant(ity, unroll)), unroll)
    done = builder.mul(trips, ir.Constant(ity, unroll))
    with cgutils.for_range(builder, builder.sub(nblk, done)) as loop:
        blocks(builder.add(done, loop.index), 1)
    total = builder.load(accs[0])
    for acc in accs[1:]:
        total = builder.add(total, builder.load(acc))
    reduce = _function(builder, "llvm.vector.reduce.add.v16i32", ir.IntType(32), [_I32X16])
    return builder.call(reduce, [total])


@intrinsic
def _vnni_dot_u8s8(typingctx, u, s, nblk):
    """int32 sum_{k < 64 nblk} uint8(u[k]) * int8(s[k]); u: uint8 [>= 64 nblk], s: int8 [>= 64 nblk]."""
    if not (_is_array(u, types.uint8, 1) and _is_array(s, types.int8, 1) and isinstance(nblk, types.Integer)):
        return None  # a typing error names the argument types
    sig = types.int32(u, s, nblk)

    def codegen(context, builder, signature, args):
        return _dot_loop(context, builder, signature, args, lambda b, v: [v], unroll=4)

    return sig, codegen


def _ternary_codes_signature(packed, a0, a1, a2, a3, nblk):
    """``int32(packed, a0..a3, nblk)`` for the ternary-codes dot products' argument types (uint8
    and four int8 1-D arrays, an integer block count), or None for any other types."""
    if not (_is_array(packed, types.uint8, 1) and all(_is_array(a, types.int8, 1) for a in (a0, a1, a2, a3))
            and isinstance(nblk, types.Integer)):
        return None
    return types.int32(packed, a0, a1, a2, a3, nblk)


@intrinsic
def _vnni_dot_ternary_codes_s8(typingctx, packed, a0, a1, a2, a3, nblk):
    """int32 sum_{j < 64 nblk} sum_f code_f(packed[j]) * a_f[j], with code_f(b) = (b >> 2f) & 3
    the four 2-bit fields of a packed ternary byte (`nac.format.quant`) and ``a_f`` int8."""
    sig = _ternary_codes_signature(packed, a0, a1, a2, a3, nblk)
    if sig is None:
        return None
    three = ir.Constant(_I8X64, [3] * 64)

    def fields(builder, v):
        return [builder.and_(v, three)] + [
            builder.and_(builder.lshr(v, ir.Constant(_I8X64, [2 * f] * 64)), three) for f in (1, 2)
        ] + [builder.lshr(v, ir.Constant(_I8X64, [6] * 64))]

    def codegen(context, builder, signature, args):
        return _dot_loop(context, builder, signature, args, fields, unroll=1)

    return sig, codegen


@intrinsic
def lut16_ternary_rows(typingctx, tables, block, out):
    """Sixteen ternary rows times one float vector by table lookup (T-MAC, Wei et al. 2024,
    "T-MAC: CPU Renaissance via Table Lookup for Low-Bit LLM Deployment on Edge").

    tables: float32 [2 KB, 16], tables[g, c0 + 4 c1] = (c0 - 1) x[2g] + (c1 - 1) x[2g + 1] for the
    2-bit codes c of one activation pair; block: uint8 [KB, 16], block[j, r] = packed byte j of row
    r; out: float32 [>= 16] receives the 16 dot products. The low nibble of a packed byte holds the
    codes of pair 2j, the high nibble those of pair 2j + 1, so each byte column costs two
    ``vpermps`` (16 lanes = 16 rows) and two adds. Needs `AVX512`.
    """
    if not (_is_array(tables, types.float32, 2) and _is_array(block, types.uint8, 2)
            and _is_array(out, types.float32, 1)):
        return None
    sig = types.void(tables, block, out)

    def codegen(context, builder, signature, args):
        tab, blk, dst = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in range(3))
        kb = context.make_array(signature.args[1])(context, builder, args[1]).shape
        kb = builder.extract_value(kb, 0)
        ity = kb.type
        permute = _function(builder, "llvm.x86.avx512.permvar.sf.512", _F32X16, [_F32X16, _I32X16])
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_F32X16, None)) for _ in range(2)]
        tab8 = builder.bitcast(tab, ir.IntType(8).as_pointer())
        blk8 = builder.bitcast(blk, ir.IntType(8).as_pointer())
        low = ir.Constant(_I32X16, [15] * 16)
        with cgutils.for_range(builder, kb) as loop:
            j = loop.index
            p = builder.bitcast(builder.gep(blk8, [builder.mul(j, ir.Constant(ity, 16))]), _I8X16.as_pointer())
            codes = builder.zext(builder.load(p, align=1), _I32X16)
            nibbles = (builder.and_(codes, low), builder.lshr(codes, ir.Constant(_I32X16, [4] * 16)))
            for half, idx in enumerate(nibbles):
                row = builder.add(builder.mul(j, ir.Constant(ity, 2 * 64)), ir.Constant(ity, 64 * half))
                t = builder.load(builder.bitcast(builder.gep(tab8, [row]), _F32X16.as_pointer()), align=4)
                acc = accs[half]
                builder.store(builder.fadd(builder.load(acc), builder.call(permute, [t, idx])), acc)
        total = builder.fadd(builder.load(accs[0]), builder.load(accs[1]))
        builder.store(total, builder.bitcast(dst, _F32X16.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _avx2_blocks(context, builder, signature, args, products):
    """sum over 32-byte halves h of the 64-byte blocks b < args[-1] of
    vpmaddwd(products(builder, half pointers' <32 x i8> loads), 1): int32, no saturation as long as
    each ``products`` pair sum fits int16 (the callers' contracts)."""
    ptrs = [context.make_array(signature.args[i])(context, builder, args[i]).data for i in range(len(args) - 1)]
    maddwd = _function(builder, "llvm.x86.avx2.pmadd.wd", _I32X8, [_I16X16, _I16X16])
    ones = ir.Constant(_I16X16, [1] * 16)
    acc = cgutils.alloca_once_value(builder, ir.Constant(_I32X8, [0] * 8))
    nblk = args[-1]
    with cgutils.for_range(builder, builder.mul(nblk, ir.Constant(nblk.type, 2))) as loop:
        off = builder.mul(loop.index, ir.Constant(nblk.type, 32))
        loads = [builder.load(builder.bitcast(builder.gep(builder.bitcast(p, ir.IntType(8).as_pointer()), [off]),
                                              _I8X32.as_pointer()), align=1) for p in ptrs]
        total = builder.load(acc)
        for pairs in products(builder, loads):
            total = builder.add(total, builder.call(maddwd, [pairs, ones]))
        builder.store(total, acc)
    reduce = _function(builder, "llvm.vector.reduce.add.v8i32", ir.IntType(32), [_I32X8])
    return builder.call(reduce, [builder.load(acc)])


def _maddubs(builder, unsigned, signed):
    fn = _function(builder, "llvm.x86.avx2.pmadd.ub.sw", _I16X16, [_I8X32, _I8X32])
    return builder.call(fn, [unsigned, signed])


@intrinsic
def _avx2_dot_s8s8(typingctx, x, w, nblk):
    """int32 sum_{k < 64 nblk} int8(x[k]) * int8(w[k]) with AVX2 ``vpmaddubsw`` on |w| and x
    signed by w (``vpabsb``/``vpsignb``, written as selects), then ``vpmaddwd`` into int32. Exact
    when no x[k] is -128 (`quantize_rows` clips activations to [-127, 127]): every pair sum is
    then at most 2 * 128 * 127 < 2**15, whatever the weights."""
    if not (_is_array(x, types.int8, 1) and _is_array(w, types.int8, 1) and isinstance(nblk, types.Integer)):
        return None
    sig = types.int32(x, w, nblk)
    zero = ir.Constant(_I8X32, [0] * 32)

    def products(builder, loads):
        xv, wv = loads
        negative = builder.icmp_signed("<", wv, zero)
        absw = builder.select(negative, builder.sub(zero, wv), wv)  # -128 -> 0x80, read as unsigned 128
        signed_x = builder.select(negative, builder.sub(zero, xv), xv)
        return [_maddubs(builder, absw, signed_x)]

    def codegen(context, builder, signature, args):
        return _avx2_blocks(context, builder, signature, args, products)

    return sig, codegen


@intrinsic
def _avx2_dot_ternary_codes_s8(typingctx, packed, a0, a1, a2, a3, nblk):
    """`_vnni_dot_ternary_codes_s8` with AVX2 ``vpmaddubsw`` (2-bit codes, at most 3, times int8:
    pair sums of at most 768 never saturate) and ``vpmaddwd``."""
    sig = _ternary_codes_signature(packed, a0, a1, a2, a3, nblk)
    if sig is None:
        return None
    three = ir.Constant(_I8X32, [3] * 32)

    def products(builder, loads):
        v, acts = loads[0], loads[1:]
        codes = [builder.and_(v, three)] + [builder.and_(builder.lshr(v, ir.Constant(_I8X32, [2 * f] * 32)), three)
                                            for f in (1, 2, 3)]
        return [_maddubs(builder, c, a) for c, a in zip(codes, acts)]

    def codegen(context, builder, signature, args):
        return _avx2_blocks(context, builder, signature, args, products)

    return sig, codegen


@njit(cache=True, nogil=True)
def _loop_dot_s8s8(x, w, nblk):
    acc = np.int32(0)
    for k in range(64 * nblk):
        acc = np.int32(acc + np.int32(x[k]) * np.int32(w[k]))
    return acc


@njit(cache=True, nogil=True)
def _loop_dot_u8s8(u, s, nblk):
    acc = np.int32(0)
    for k in range(64 * nblk):
        acc = np.int32(acc + np.int32(u[k]) * np.int32(s[k]))
    return acc


@njit(cache=True, nogil=True)
def _loop_dot_ternary_codes_s8(packed, a0, a1, a2, a3, nblk):
    acc = np.int32(0)
    for j in range(64 * nblk):
        b = packed[j]
        acc = np.int32(acc + np.int32(b & 3) * np.int32(a0[j]) + np.int32((b >> 2) & 3) * np.int32(a1[j])
                       + np.int32((b >> 4) & 3) * np.int32(a2[j]) + np.int32(b >> 6) * np.int32(a3[j]))
    return acc


dot_u8s8 = _vnni_dot_u8s8 if VNNI else _loop_dot_u8s8
dot_s8s8 = _avx2_dot_s8s8 if AVX2 else _loop_dot_s8s8
dot_ternary_codes_s8 = (_vnni_dot_ternary_codes_s8 if VNNI else
                        _avx2_dot_ternary_codes_s8 if AVX2 else _loop_dot_ternary_codes_s8)
def _vnni_tile(rows: int):
    """The intrinsic for a ``rows`` x 32 int8 tile (see `int8_tile`)."""

    @intrinsic
    def tile(typingctx, a, a_off, lda, b, b_off, k4, c):
        if not (_is_array(a, types.uint8, 1) and _is_array(b, types.int8, 1) and _is_array(c, types.int32, 1)
                and all(isinstance(x, types.Integer) for x in (a_off, lda, b_off, k4))):
            return None
        sig = types.void(a, a_off, lda, b, b_off, k4, c)

        def codegen(context, builder, signature, args):
            pa, pb, pc = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 6))
            i64, i32 = ir.IntType(64), ir.IntType(32)
            a_off_, lda_, b_off_, k4_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                         for i in (1, 2, 4, 5))
            dpbusd = _function(builder, "llvm.x86.avx512.vpdpbusd.512", _I32X16, [_I32X16] * 3)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(_I32X16, [0] * 16)) for _ in range(2)]
                    for _ in range(rows)]
            rows_at = [builder.add(a_off_, builder.mul(ir.Constant(i64, r), lda_)) for r in range(rows)]
            zero_mask = ir.Constant(ir.VectorType(i32, 16), [0] * 16)
            undef = ir.Constant(_I32X16, ir.Undefined)
            with cgutils.for_range(builder, k4_) as loop:
                j = loop.index
                at = builder.add(b_off_, builder.mul(j, ir.Constant(i64, 128)))
                bv = [builder.bitcast(_load_block(builder, pb, builder.add(at, ir.Constant(i64, 64 * v))), _I32X16)
                      for v in range(2)]
                for r in range(rows):
                    ap = builder.gep(pa, [builder.add(rows_at[r], builder.mul(j, ir.Constant(i64, 4)))])
                    word = builder.load(builder.bitcast(ap, i32.as_pointer()), align=1)
                    splat = builder.shuffle_vector(builder.insert_element(undef, word, ir.Constant(i32, 0)), undef,
                                                   zero_mask)
                    for v in range(2):
                        builder.store(builder.call(dpbusd, [builder.load(accs[r][v]), splat, bv[v]]), accs[r][v])
            for r in range(rows):
                for v in range(2):
                    cp = builder.gep(pc, [ir.Constant(i64, 32 * r + 16 * v)])
                    builder.store(builder.load(accs[r][v]), builder.bitcast(cp, _I32X16.as_pointer()), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


@njit(cache=True, nogil=True)
def loop_int8_tile(rows, a, a_off, lda, b, b_off, k4, c):
    """The plain-loop twin of `int8_tile` (same arguments and result)."""
    for r in range(rows):
        for t in range(32):
            acc = np.int32(0)
            for j in range(k4):
                for i in range(4):
                    x = np.int32(a[a_off + r * lda + 4 * j + i])
                    acc = np.int32(acc + x * np.int32(b[b_off + j * 128 + 4 * t + i]))
            c[32 * r + t] = acc


if VNNI:
    _vnni_tile_8, _vnni_tile_4, _vnni_tile_1 = _vnni_tile(8), _vnni_tile(4), _vnni_tile(1)

    @njit(cache=True, nogil=True)
    def int8_tile(rows, a, a_off, lda, b, b_off, k4, c):
        """A tile of an int8 GEMM, unsigned activations times a weight panel packed four k at a
        time per column (`nac.engine.kernels.quant.QTensor.int8_panels`): for r < rows (8, 4 or
        1), t < 32, int32
        c[32 r + t] = sum_{q < 4 k4} uint8 a[a_off + r lda + q] * int8 b[b_off + 128 (q // 4) + 4 t + q % 4].

        a: uint8 1-D; b: int8 1-D; c: int32 [>= 32 rows], overwritten. With AVX512-VNNI one
        ``vpdpbusd`` per 16 columns and row adds 64 byte products (Intel SDM, VPDPBUSD): 16 zmm
        accumulators for 8 rows, each 4-byte broadcast of a feeding two. Elsewhere this is
        `loop_int8_tile`. No bounds checks: the caller keeps every index inside its arrays."""
        if rows == 8:
            _vnni_tile_8(a, a_off, lda, b, b_off, k4, c)
        elif rows == 4:
            _vnni_tile_4(a, a_off, lda, b, b_off, k4, c)
        else:
            _vnni_tile_1(a, a_off, lda, b, b_off, k4, c)
else:
    int8_tile = loop_int8_tile


#: int8 x int8 products go through `dot_s8s8` (AVX2) where VNNI is missing, else `dot_u8s8` (a
#: run-time argument of the GEMM, so one compiled kernel serves both); NAC_INT8_DOT=signed /
#: unsigned forces one (read at import; the tests run both)
SIGNED_INT8_DOT: bool = {"signed": True, "unsigned": False}.get(os.environ.get("NAC_INT8_DOT", ""), AVX2 and not VNNI)


@intrinsic
def mm_tile_4x16(typingctx, a, a_off, lda, b, b_off, ldb, c, c_off, ldc, k):
    """A 4 x 16 block of a matrix product, accumulated in registers:
    c[c_off + r ldc + t] = sum_{q < k} a[a_off + r lda + q] * b[b_off + q ldb + t], r < 4, t < 16.

    a, b, c: 1-D C-contiguous float32 arrays (flat views of row-major matrices); the offsets and
    leading dimensions are in elements; c is overwritten. Written with LLVM's generic vector type
    <16 x float> and ``llvm.fmuladd``, which LLVM lowers to one zmm register per row with AVX-512,
    two ymm with AVX2 and four xmm with SSE2, fused multiply-adds where the CPU has them: each
    16-wide load of b feeds four multiply-adds. The caller keeps every index inside its arrays
    (no bounds checks). `loop_mm_tile_4x16` is the plain twin it is tested against.
    """
    f32 = types.float32
    if not (all(_is_array(x, f32, 1) for x in (a, b, c))
            and all(isinstance(x, types.Integer) for x in (a_off, lda, b_off, ldb, c_off, ldc, k))):
        return None
    sig = types.void(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, k)

    def codegen(context, builder, signature, args):
        pa, pb, pc = (context.make_array(signature.args[i])(context, builder, args[i]).data for i in (0, 3, 6))
        i64 = ir.IntType(64)
        a_off_, lda_, b_off_, ldb_, c_off_, ldc_, k_ = (
            context.cast(builder, args[i], signature.args[i], types.int64) for i in (1, 2, 4, 5, 7, 8, 9))
        fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)
        accs = [cgutils.alloca_once_value(builder, ir.Constant(_F32X16, None)) for _ in range(4)]
        for acc in accs:
            builder.store(ir.Constant(_F32X16, [0.0] * 16), acc)
        zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)
        undef = ir.Constant(_F32X16, ir.Undefined)
        with cgutils.for_range(builder, k_) as loop:
            q = loop.index
            bp = builder.gep(pb, [builder.add(b_off_, builder.mul(q, ldb_))])
            bv = builder.load(builder.bitcast(bp, _F32X16.as_pointer()), align=4)
            for r in range(4):
                ap = builder.gep(pa, [builder.add(builder.add(a_off_, builder.mul(ir.Constant(i64, r), lda_)), q)])
                splat = builder.shuffle_vector(builder.insert_element(undef, builder.load(ap), ir.Constant(ir.IntType(32), 0)),
                                               undef, zero_mask)
                builder.store(builder.call(fmuladd, [splat, bv, builder.load(accs[r])]), accs[r])
        for r in range(4):
            cp = builder.gep(pc, [builder.add(c_off_, builder.mul(ir.Constant(i64, r), ldc_))])
            builder.store(builder.load(accs[r]), builder.bitcast(cp, _F32X16.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


def _emit_panel_tile(builder, rows, vectors, chains, pa, pb, pbias, pc, a_off_, lda_, b_off_, ldb_, bias_off_,
                     c_off_, ldc_, k_, width_=None, pf_=None):
    """Emit, at ``builder``, the IR of a ``rows`` x ``16 vectors`` tile of a product with a packed
    B (see `panel_tile_fast`): pointers to float, offsets, strides and k as i64. With ``chains``
    > 1, consecutive k go to separate accumulators, summed at the end, so that a tile with few
    accumulators does not wait on each multiply-add's latency. With ``width_`` (an i64), only
    each row's first ``width_`` columns are stored (``llvm.masked.store``: a masked ``vmovups``
    on AVX-512, ``vmaskmovps`` on AVX2); the whole tile is still computed and read, so the
    panel and bias must hold all ``16 vectors`` columns (zeros past the product's last). With
    ``pf_`` (an i64 offset into ``pb``), step q also prefetches into L2 the ``16 vectors`` floats
    at ``pf_ + q ldb`` (``llvm.prefetch``: ``prefetcht1``): the next panel, read while this tile
    computes."""
    i64 = ir.IntType(64)
    fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)
    i32 = ir.IntType(32)
    i8p = ir.IntType(8).as_pointer()
    prefetch = _function(builder, "llvm.prefetch.p0", ir.VoidType(), [i8p, i32, i32, i32]) if pf_ is not None else None

    def vec(base, offset):
        return builder.bitcast(builder.gep(base, [offset]), _F32X16.as_pointer())

    def const(v):
        return ir.Constant(i64, v)

    biases = [builder.load(vec(pbias, builder.add(bias_off_, const(16 * v))), align=4) for v in range(vectors)]
    zero = ir.Constant(_F32X16, [0.0] * 16)
    accs = [[[cgutils.alloca_once_value(builder, biases[v] if ch == 0 else zero) for v in range(vectors)]
             for _ in range(rows)] for ch in range(chains)]
    row_at = [builder.add(a_off_, builder.mul(const(r), lda_)) for r in range(rows)]
    zero_mask = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)
    undef = ir.Constant(_F32X16, ir.Undefined)

    def step(q, acc):
        at = builder.add(b_off_, builder.mul(q, ldb_))
        bv = [builder.load(vec(pb, builder.add(at, const(16 * v))), align=4) for v in range(vectors)]
        if prefetch is not None:
            ahead = builder.add(pf_, builder.mul(q, ldb_))
            for v in range(vectors):
                ptr = builder.bitcast(builder.gep(pb, [builder.add(ahead, const(16 * v))]), i8p)
                builder.call(prefetch, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        for r in range(rows):
            av = builder.load(builder.gep(pa, [builder.add(row_at[r], q)]))
            splat = builder.shuffle_vector(builder.insert_element(undef, av, ir.Constant(ir.IntType(32), 0)),
                                           undef, zero_mask)
            for v in range(vectors):
                builder.store(builder.call(fmuladd, [splat, bv[v], builder.load(acc[r][v])]), acc[r][v])

    trips = builder.udiv(k_, const(chains)) if chains > 1 else k_
    with cgutils.for_range(builder, trips) as loop:
        for ch in range(chains):
            step(builder.add(builder.mul(loop.index, const(chains)), const(ch)), accs[ch])
    if chains > 1:  # the k left over after the last whole trip
        done = builder.mul(trips, const(chains))
        with cgutils.for_range(builder, builder.sub(k_, done)) as loop:
            step(builder.add(done, loop.index), accs[0])
    masks = None
    if width_ is not None:
        i1x16 = ir.VectorType(ir.IntType(1), 16)
        masked_store = _function(builder, "llvm.masked.store.v16f32.p0", ir.VoidType(),
                                 [_F32X16, _F32X16.as_pointer(), ir.IntType(32), i1x16])
        limit = builder.shuffle_vector(
            builder.insert_element(ir.Constant(ir.VectorType(i64, 16), ir.Undefined), width_, ir.Constant(ir.IntType(32), 0)),
            ir.Constant(ir.VectorType(i64, 16), ir.Undefined), ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))
        masks = [builder.icmp_signed("<", ir.Constant(ir.VectorType(i64, 16), [16 * v + t for t in range(16)]), limit)
                 for v in range(vectors)]
    for r in range(rows):
        row = builder.add(c_off_, builder.mul(const(r), ldc_))
        for v in range(vectors):
            total = builder.load(accs[0][r][v])
            for ch in range(1, chains):
                total = builder.fadd(total, builder.load(accs[ch][r][v]))
            at = vec(pc, builder.add(row, const(16 * v)))
            if masks is None:
                builder.store(total, at, align=4)
            else:
                builder.call(masked_store, [total, at, ir.Constant(ir.IntType(32), 4), masks[v]])


def _panel_operands(context, builder, signature, args, first: int):
    """The four array data pointers and eight i64 integers of a panel tile's arguments
    ``(a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k)``, which start at
    argument ``first``."""
    arrays = [context.make_array(signature.args[first + i])(context, builder, args[first + i]).data
              for i in (0, 3, 6, 8)]
    ints = [context.cast(builder, args[first + i], signature.args[first + i], types.int64)
            for i in (1, 2, 4, 5, 7, 9, 10, 11)]
    return arrays, ints


def _panel_signature_ok(a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k) -> bool:
    return (all(_is_array(x, types.float32, 1) for x in (a, b, bias, c))
            and all(isinstance(x, types.Integer) for x in (a_off, lda, b_off, ldb, bias_off, c_off, ldc, k)))


def _panel_tile(rows: int, vectors: int, chains: int = 1):
    """The intrinsic for a ``rows`` x ``16 vectors`` tile of a product with a packed B
    (`_emit_panel_tile`; see `panel_tile_fast`)."""

    @intrinsic
    def tile(typingctx, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k):
        if not _panel_signature_ok(a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k):
            return None
        sig = types.void(a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k)

        def codegen(context, builder, signature, args):
            (pa, pb, pbias, pc), (a_off_, lda_, b_off_, ldb_, bias_off_, c_off_, ldc_, k_) = _panel_operands(
                context, builder, signature, args, 0)
            _emit_panel_tile(builder, rows, vectors, chains, pa, pb, pbias, pc, a_off_, lda_, b_off_, ldb_,
                             bias_off_, c_off_, ldc_, k_)
            return context.get_dummy_value()

        return sig, codegen

    tile.__name__ = tile.__qualname__ = f"panel_tile_{rows}x{16 * vectors}"
    return tile


@intrinsic
def panel_tile_fast(typingctx, kind, rows, width, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k, pf):
    """The full-height register tile of the packed GEMM, chosen at run time, or nothing:
    computes an 8 x 32 block (``kind`` 0, AVX-512, ``rows`` 8) or a 6 x 32 block as two 6 x 16
    tiles (``kind`` 1, AVX2, ``rows`` 6: 12 ymm accumulators, two ymm for the weight row and one
    broadcast, 15 of 16 registers, no spill) or a 1 x 32 block (``kind`` 0 or 1, ``rows`` 1: a
    decode step's product: four chains of two accumulators over consecutive k, summed at the
    end; with one chain it waited on each multiply-add's latency, 133 against 65-84 us for a
    cached 768 x 2304 weight) of a float32 product with
    a packed B plus a bias, accumulated in registers, and returns True: for r < rows, t < 32,
    c[c_off + r ldc + t] = bias[bias_off + t] + sum_{q < k} a[a_off + r lda + q] * b[b_off + q ldb + t],
    storing only the first ``width`` columns (the columns of c left from ``c_off``'s, at most
    32) when ``width`` < 32: a masked store, or the 16-column tile alone when ``width`` <= 16.
    Returns False, with nothing written, for every other kind, row count, or ``width`` <= 0
    (the caller's remainder path). The panel and the bias must hold 32 columns from their
    offsets (`linalg.pack_panels` pads them with zeros). While it computes, a full-height tile
    prefetches into L2 the k rows of 32 floats ``ldb`` apart from ``b[pf]`` (another panel: the
    next one a sweep reads; ``pf = b_off`` for none), which changes no value; the one-row tile
    (decode, where a prefetch of the next panel measured 20 % slower) issues none.

    a, b, bias, c: 1-D C-contiguous float32 arrays (flat views); offsets and strides in elements;
    c is overwritten. b is a weight panel, 32 columns of each of k rows, ``ldb`` apart. LLVM's
    generic ``<16 x float>`` and ``llvm.fmuladd``: with AVX-512, 16 zmm accumulators, each
    32-column row of the panel feeding 16 multiply-adds, each element of a broadcast to two (an
    8 x 32 tile measured 1.9x faster than 4 x 64 once the panel no longer fits L1: half the
    panel bytes per multiply-add). The caller keeps every index inside its arrays (no bounds
    checks). `loop_panel_tile` is the plain twin it is tested against.

    One intrinsic rather than an njit function choosing among the tiles: Numba's reference
    counting of the arrays such a function takes (inlined or called) cost ten atomic updates a
    tile, which made the tiles of shallow convolution products 2-2.6x slower (1,568 x 16 x 96 on
    AVX-512: 150 against 64 us). The masked last panel spares a scratch tile and its copy
    (EfficientNet's 24 and 40 channels). The one-row tile streams the panel (K x 128
    contiguous bytes), so a one-row product reads its weight at memory speed, split by panels
    over the thread team."""
    ints = (kind, rows, width, pf)
    if not (all(isinstance(x, types.Integer) for x in ints)
            and _panel_signature_ok(a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k)):
        return None
    sig = types.boolean(kind, rows, width, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k, pf)

    def codegen(context, builder, signature, args):
        kind_, rows_, width_ = (context.cast(builder, args[i], signature.args[i], types.int64) for i in range(3))
        pf_ = context.cast(builder, args[15], signature.args[15], types.int64)
        (pa, pb, pbias, pc), (a_off_, lda_, b_off_, ldb_, bias_off_, c_off_, ldc_, k_) = _panel_operands(
            context, builder, signature, args, 3)
        i64 = ir.IntType(64)

        def const(v):
            return ir.Constant(i64, v)

        def both(x, y):
            return builder.and_(x, y)

        done = cgutils.alloca_once_value(builder, cgutils.false_bit)
        operands = (pa, pb, pbias, pc, a_off_, lda_, b_off_, ldb_, bias_off_, c_off_, ldc_, k_)
        vector_kind = builder.icmp_signed("<", kind_, const(2))
        single = both(both(vector_kind, builder.icmp_signed("==", rows_, const(1))),
                      builder.icmp_signed(">", width_, const(0)))
        with builder.if_then(single):  # one row (a decode step's product): four chains, 32 columns
            with builder.if_else(builder.icmp_signed(">=", width_, const(32))) as (whole, part):
                with whole:
                    _emit_panel_tile(builder, 1, 2, 4, *operands)
                with part:
                    _emit_panel_tile(builder, 1, 2, 4, *operands, width_=width_)
            builder.store(cgutils.true_bit, done)
        avx512 = both(builder.icmp_signed("==", kind_, const(0)), builder.icmp_signed("==", rows_, const(8)))
        avx2 = both(builder.icmp_signed("==", kind_, const(1)), builder.icmp_signed("==", rows_, const(6)))
        full = builder.icmp_signed(">=", width_, const(32))
        upper = both(builder.icmp_signed(">", width_, const(16)), builder.icmp_signed("<", width_, const(32)))
        half = builder.icmp_signed("==", width_, const(16))
        lower = both(builder.icmp_signed(">", width_, const(0)), builder.icmp_signed("<", width_, const(16)))

        def shifted(h):  # the operands of the panel's columns from h on
            return (pa, pb, pbias, pc, a_off_, lda_, builder.add(b_off_, const(h)), ldb_,
                    builder.add(bias_off_, const(h)), builder.add(c_off_, const(h)), ldc_, k_)

        for when, rows, vectors, width in ((full, 8, 2, None), (upper, 8, 2, width_), (half, 8, 1, None),
                                           (lower, 8, 1, width_)):
            with builder.if_then(both(avx512, when)):
                _emit_panel_tile(builder, rows, vectors, 1, *operands, width_=width, pf_=pf_)
                builder.store(cgutils.true_bit, done)
        with builder.if_then(both(avx2, builder.icmp_signed(">", width_, const(0)))):
            first = builder.icmp_signed(">=", width_, const(16))
            pf16 = builder.add(pf_, const(16))
            with builder.if_else(first) as (whole, part):
                with whole:
                    _emit_panel_tile(builder, 6, 1, 1, *operands, pf_=pf_)
                with part:
                    _emit_panel_tile(builder, 6, 1, 1, *operands, width_=width_, pf_=pf_)
            with builder.if_then(full):
                _emit_panel_tile(builder, 6, 1, 1, *shifted(16), pf_=pf16)
            with builder.if_then(upper):
                _emit_panel_tile(builder, 6, 1, 1, *shifted(16), width_=builder.sub(width_, const(16)), pf_=pf16)
            builder.store(cgutils.true_bit, done)
        return builder.load(done)

    return sig, codegen


panel_tile_4x32 = _panel_tile(4, 2)
panel_tile_4x32.__doc__ = "`panel_tile_fast`'s AVX-512 tile for four rows (8 zmm accumulators)."
panel_tile_2x32 = _panel_tile(2, 2, chains=2)
panel_tile_2x32.__doc__ = "`panel_tile_fast`'s AVX-512 tile for two rows (two chains of four accumulators over consecutive k)."
panel_tile_3x32 = _panel_tile(3, 2)
panel_tile_3x32.__doc__ = """Three rows of `panel_tile_fast`'s AVX-512 tile (AVX2's remainder tile: 12 ymm accumulators, two ymm
per ``<16 x float>``)."""


@njit(cache=True, nogil=True)
def loop_panel_tile(rows, width, a, a_off, lda, b, b_off, ldb, bias, bias_off, c, c_off, ldc, k):
    """The plain-loop twin of the panel tiles: ``rows`` x ``width`` (same arguments and result as
    `panel_tile_fast` with those sizes; summed in the same order as the tiles without accumulator
    chains, equal within float32 rounding to the chained one- and two-row tiles)."""
    for r in range(rows):
        for t in range(width):
            acc = bias[bias_off + t]
            for q in range(k):
                acc += a[a_off + r * lda + q] * b[b_off + q * ldb + t]
            c[c_off + r * ldc + t] = acc


@njit(cache=True, nogil=True)
def loop_mm_tile_4x16(a, a_off, lda, b, b_off, ldb, c, c_off, ldc, k):
    """The plain-loop twin of `mm_tile_4x16` (same arguments and result, summed in the same order)."""
    for r in range(4):
        for t in range(16):
            acc = np.float32(0.0)
            for q in range(k):
                acc += a[a_off + r * lda + q] * b[b_off + q * ldb + t]
            c[c_off + r * ldc + t] = acc


@intrinsic
def dw_tile_4x16(typingctx, x, xo, px, taps, w, wo, ldw, b, bo, y, yo, py):
    """Four output pixels x 16 channels of a channels-last depthwise convolution, accumulated in
    registers over every tap:
    y[yo + r py + t] = b[bo + t] + sum_q w[wo + q ldw + t] * x[xo + r px + taps[q] + t], r < 4, t < 16.

    x, w, b, y: 1-D C-contiguous float32 arrays (flat NHWC input, [taps, C] weights, bias,
    flat NHWC output); taps: int64 element offsets of the kernel's taps from a pixel's first
    input element; px, py: element strides between the four pixels. Generic LLVM
    ``<16 x float>`` and ``llvm.fmuladd`` as `mm_tile_4x16`: each 16-wide weight load feeds four
    multiply-adds, and the accumulators never leave registers. The caller keeps every index
    inside its arrays (interior pixels only; no bounds checks). `loop_dw_tile_4x16` is its plain
    twin.
    """
    f32 = types.float32
    if not (all(_is_array(t, f32, 1) for t in (x, w, b, y)) and _is_array(taps, types.int64, 1)
            and all(isinstance(t, types.Integer) for t in (xo, px, wo, ldw, bo, yo, py))):
        return None
    sig = types.void(x, xo, px, taps, w, wo, ldw, b, bo, y, yo, py)

    def codegen(context, builder, signature, args):
        arr = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3, 4, 7, 9)}
        i64 = ir.IntType(64)
        xo_, px_, wo_, ldw_, bo_, yo_, py_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                              for i in (1, 2, 5, 6, 8, 10, 11))
        fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)

        def vec(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), _F32X16.as_pointer())

        bias = builder.load(vec(arr[7].data, bo_), align=4)
        accs = [cgutils.alloca_once_value(builder, bias) for _ in range(4)]
        with cgutils.for_range(builder, arr[3].nitems) as loop:
            q = loop.index
            wv = builder.load(vec(arr[4].data, builder.add(wo_, builder.mul(q, ldw_))), align=4)
            base = builder.add(xo_, builder.load(builder.gep(arr[3].data, [q])))
            for r in range(4):
                xv = builder.load(vec(arr[0].data, builder.add(base, builder.mul(ir.Constant(i64, r), px_))), align=4)
                builder.store(builder.call(fmuladd, [xv, wv, builder.load(accs[r])]), accs[r])
        for r in range(4):
            builder.store(builder.load(accs[r]), vec(arr[9].data, builder.add(yo_, builder.mul(ir.Constant(i64, r), py_))),
                          align=4)
        return context.get_dummy_value()

    return sig, codegen


#: tap counts `dw_run` is compiled for (3 x 3 and 5 x 5 kernels); others take `dw_tile_4x16`
DW_RUN_TAPS = (9, 25)
#: pixels per tile of `dw_run`, each an independent chain of multiply-adds. Interior rows of
#: EfficientNet-Lite0-sized planes, one thread, against `dw_tile_4x16` (AMD EPYC VM): 3 x 3
#: kernels 0.76-0.81x the time with 4 pixels and their weights in registers (8 pixels: 0.71-0.84x);
#: 5 x 5 kernels, whose weights do not fit beside the accumulators, 0.88-0.90x with 8 pixels and
#: 1.13-1.23x with 4
DW_RUN_PIXELS = (4, 8)


@intrinsic(prefer_literal=True)
def dw_run(typingctx, x, xo, px, taps, ntaps, pixels, w, wo, ldw, b, bo, y, yo, py, groups):
    """``groups`` consecutive tiles of ``pixels`` output pixels x 16 channels along an output
    row of a channels-last depthwise convolution: for g < groups and r < pixels,
    y[yo + (g P + r) py + t] = b[bo + t] + sum_q w[wo + q ldw + t] * x[xo + (g P + r) px + taps[q] + t]
    (P = ``pixels``), each sum the bias then the taps in order as one chain of multiply-adds,
    so ``pixels=4`` gives `dw_tile_4x16`'s results bit for bit, and ``pixels=8`` the same sums.

    ``ntaps`` (one of `DW_RUN_TAPS`, equal to taps.size) and ``pixels`` (one of
    `DW_RUN_PIXELS`) must be compile-time constants (literals in the caller): the tap loop is
    unrolled, the tap offsets and the bias are loaded once for the whole run, and so are the
    weight vectors where they fit in registers beside the accumulators (a 3 x 3 kernel: 9 + 8 of
    AVX-512's 32 zmm registers; a 5 x 5 kernel's 25 reload theirs for each tile). Lowered for
    the CPU like `dw_tile_4x16` (on AVX2, 16 ymm registers, LLVM keeps what fits and reloads the
    rest). The caller keeps every index inside its arrays (no bounds checks). `loop_dw_run` is
    its plain twin.
    """
    f32 = types.float32
    if not (all(_is_array(t, f32, 1) for t in (x, w, b, y)) and _is_array(taps, types.int64, 1)
            and isinstance(ntaps, types.IntegerLiteral) and ntaps.literal_value in DW_RUN_TAPS
            and isinstance(pixels, types.IntegerLiteral) and pixels.literal_value in DW_RUN_PIXELS
            and all(isinstance(t, types.Integer) for t in (xo, px, wo, ldw, bo, yo, py, groups))):
        return None
    sig = types.void(x, xo, px, taps, ntaps, pixels, w, wo, ldw, b, bo, y, yo, py, groups)
    return sig, _dw_run_codegen(False, ntaps.literal_value, pixels.literal_value)


@intrinsic(prefer_literal=True)
def dw_run_rows(typingctx, x, xo, px, taps, side, pixels, w, wo, ldw, b, bo, y, yo, py, groups):
    """`dw_run` for a square ``side`` x ``side`` kernel whose taps along a row step by the pixel
    stride (taps[i side + j] == taps[i side] + j ``px``: stride equal to dilation, as in every
    stride-1 3 x 3 or 5 x 5 depthwise layer), so that neighbouring pixels read the same input
    vectors: each tile loads a row's ``pixels + side - 1`` input vectors once and feeds them to
    all its pixels (a 3 x 3 kernel over 4 pixels: 18 loads for 36 multiply-adds, where `dw_run`
    loads 36). The sums and their order are `dw_run`'s (the bias, then the taps row by row), so
    the results are identical bit for bit. ``side`` (3 or 5) and ``pixels`` (one of
    `DW_RUN_PIXELS`) must be literals; weights stay in registers where they fit (3 x 3). The
    caller checks the tap layout and keeps every index inside its arrays; `loop_dw_run` (with
    ntaps = side ** 2) is its plain twin."""
    f32 = types.float32
    if not (all(_is_array(t, f32, 1) for t in (x, w, b, y)) and _is_array(taps, types.int64, 1)
            and isinstance(side, types.IntegerLiteral) and side.literal_value in (3, 5)
            and isinstance(pixels, types.IntegerLiteral) and pixels.literal_value in DW_RUN_PIXELS
            and all(isinstance(t, types.Integer) for t in (xo, px, wo, ldw, bo, yo, py, groups))):
        return None
    sig = types.void(x, xo, px, taps, side, pixels, w, wo, ldw, b, bo, y, yo, py, groups)
    return sig, _dw_run_codegen(True, side.literal_value, pixels.literal_value)


def _dw_run_codegen(rows: bool, k: int, npx: int):
    """The LLVM of `dw_run` (``k`` taps, each pixel's input vector loaded per tap) or, with
    ``rows``, of `dw_run_rows` (a ``k`` x ``k`` kernel: a row's ``npx + k - 1`` input vectors
    loaded once for the tile's ``npx`` pixels). Both sum the bias, then the taps in order, per
    pixel; the weight vectors stay in registers where they fit beside the accumulators (and the
    row's input vectors)."""
    ntaps = k * k if rows else k
    hoist = ntaps + 2 * npx + k - 1 <= 30 if rows else ntaps + npx <= 24

    def codegen(context, builder, signature, args):
        arr = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3, 6, 9, 11)}
        i64 = ir.IntType(64)
        xo_, px_, wo_, ldw_, bo_, yo_, py_, g_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                                  for i in (1, 2, 7, 8, 10, 12, 13, 14))
        fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)

        def vec(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), _F32X16.as_pointer())

        def const(v):
            return ir.Constant(i64, v)

        def weight(q):
            return builder.load(vec(arr[6].data, builder.add(wo_, builder.mul(const(q), ldw_))), align=4)

        def tap(q):
            return builder.load(builder.gep(arr[3].data, [const(q)]))

        bias = builder.load(vec(arr[9].data, bo_), align=4)
        weights = [weight(q) for q in range(ntaps)] if hoist else None
        offsets = [tap(i * k) for i in range(k)] if rows else [tap(q) for q in range(k)]
        xcols = [builder.mul(const(c), px_) for c in range(npx + k - 1 if rows else npx)]
        yrows = [builder.mul(const(r), py_) for r in range(npx)]
        step_x, step_y = builder.mul(const(npx), px_), builder.mul(const(npx), py_)
        with cgutils.for_range(builder, g_) as loop:
            x0 = builder.add(xo_, builder.mul(loop.index, step_x))
            y0 = builder.add(yo_, builder.mul(loop.index, step_y))
            accs = [bias] * npx
            for i in range(k):
                at = builder.add(x0, offsets[i])
                if rows:  # the row's input vectors, each feeding up to k pixels
                    xv = [builder.load(vec(arr[0].data, builder.add(at, xcols[c])), align=4) for c in range(npx + k - 1)]
                    for j in range(k):
                        wv = weights[i * k + j] if hoist else weight(i * k + j)
                        for r in range(npx):
                            accs[r] = builder.call(fmuladd, [xv[r + j], wv, accs[r]])
                else:  # tap i: one input vector per pixel
                    wv = weights[i] if hoist else weight(i)
                    for r in range(npx):
                        xv = builder.load(vec(arr[0].data, builder.add(at, xcols[r])), align=4)
                        accs[r] = builder.call(fmuladd, [xv, wv, accs[r]])
            for r in range(npx):
                builder.store(accs[r], vec(arr[11].data, builder.add(y0, yrows[r])), align=4)
        return context.get_dummy_value()

    return codegen


@njit(cache=True, nogil=True)
def loop_dw_run(x, xo, px, taps, ntaps, pixels, w, wo, ldw, b, bo, y, yo, py, groups):
    """The plain-loop twin of `dw_run` (same arguments and sums, in the same order, though
    multiply then add: no fused multiply-add; ``ntaps`` and ``pixels`` may be any values here)."""
    for p in range(groups * pixels):
        for t in range(16):
            acc = b[bo + t]
            for q in range(ntaps):
                acc += w[wo + q * ldw + t] * x[xo + p * px + taps[q] + t]
            y[yo + p * py + t] = acc


#: accumulator chains of `dw_tile_1x16`: a border pixel's taps go to four registers in turn, so
#: that each multiply-add does not wait on the one before (one chain: latency-bound)
_DW_CHAINS = 4


@intrinsic
def dw_tile_1x16(typingctx, x, xo, toff, tw, ntaps, w, wo, ldw, b, bo, y, yo):
    """One output pixel x 16 channels of a channels-last depthwise convolution over a list of
    taps, accumulated in one register:
    y[yo + t] = b[bo + t] + sum_{q < ntaps} w[wo + tw[q] ldw + t] * x[xo + toff[q] + t], t < 16.

    The border pixels' form of `dw_tile_4x16`: the caller lists only the taps inside the plane
    (toff: their int64 element offsets from ``xo``; tw: their int64 weight rows). Tap q goes to
    accumulator q mod 4 (`_DW_CHAINS`; the first holds the bias), summed at the end, so the
    multiply-adds do not wait on each other (with one chain each waited on the last's latency;
    EfficientNet-Lite0's depthwise layers went from 4.51 to 3.77 ms on one thread, separate runs
    on a noisy VM), and equal to the sequential sum within float32 rounding. The caller keeps every index inside its
    arrays (no bounds checks). `loop_dw_tile_1x16` is its plain twin.
    """
    f32 = types.float32
    if not (all(_is_array(t, f32, 1) for t in (x, w, b, y)) and all(_is_array(t, types.int64, 1) for t in (toff, tw))
            and all(isinstance(t, types.Integer) for t in (xo, ntaps, wo, ldw, bo, yo))):
        return None
    sig = types.void(x, xo, toff, tw, ntaps, w, wo, ldw, b, bo, y, yo)

    def codegen(context, builder, signature, args):
        arr = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 2, 3, 5, 8, 10)}
        xo_, n_, wo_, ldw_, bo_, yo_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                        for i in (1, 4, 6, 7, 9, 11))
        fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)

        def vec(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), _F32X16.as_pointer())

        i64 = ir.IntType(64)
        zero = ir.Constant(_F32X16, [0.0] * 16)
        accs = [cgutils.alloca_once_value(builder, builder.load(vec(arr[8].data, bo_), align=4) if ch == 0 else zero)
                for ch in range(_DW_CHAINS)]

        def tap(q, acc):
            row = builder.load(builder.gep(arr[3].data, [q]))
            wv = builder.load(vec(arr[5].data, builder.add(wo_, builder.mul(row, ldw_))), align=4)
            xv = builder.load(vec(arr[0].data, builder.add(xo_, builder.load(builder.gep(arr[2].data, [q])))), align=4)
            builder.store(builder.call(fmuladd, [xv, wv, builder.load(acc)]), acc)

        trips = builder.udiv(n_, ir.Constant(i64, _DW_CHAINS))
        with cgutils.for_range(builder, trips) as loop:
            for ch in range(_DW_CHAINS):
                tap(builder.add(builder.mul(loop.index, ir.Constant(i64, _DW_CHAINS)), ir.Constant(i64, ch)), accs[ch])
        done = builder.mul(trips, ir.Constant(i64, _DW_CHAINS))
        with cgutils.for_range(builder, builder.sub(n_, done)) as loop:
            tap(builder.add(done, loop.index), accs[0])
        total = builder.fadd(builder.fadd(builder.load(accs[0]), builder.load(accs[1])),
                             builder.fadd(builder.load(accs[2]), builder.load(accs[3])))
        builder.store(total, vec(arr[10].data, yo_), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def loop_dw_tile_1x16(x, xo, toff, tw, ntaps, w, wo, ldw, b, bo, y, yo):
    """The plain-loop twin of `dw_tile_1x16` (same arguments and result; summed in tap order,
    so equal to the tile's four chains within float32 rounding)."""
    for t in range(16):
        acc = b[bo + t]
        for q in range(ntaps):
            acc += w[wo + tw[q] * ldw + t] * x[xo + toff[q] + t]
        y[yo + t] = acc


@njit(cache=True, nogil=True)
def loop_dw_tile_4x16(x, xo, px, taps, w, wo, ldw, b, bo, y, yo, py):
    """The plain-loop twin of `dw_tile_4x16` (same arguments and result, summed in the same order)."""
    for r in range(4):
        for t in range(16):
            acc = b[bo + t]
            for q in range(taps.size):
                acc += w[wo + q * ldw + t] * x[xo + r * px + taps[q] + t]
            y[yo + r * py + t] = acc


#: (pixels, vectors) tiles `patch_run` is compiled for: 8 x 32 channels in 16 zmm accumulators
#: (AVX-512), 4 x 16 (AVX2: 8 ymm, with the weight and the broadcast beside them), and one pixel
#: (a border pixel's gathered patch)
PATCH_RUN_TILES = ((8, 2), (8, 1), (4, 1), (1, 2), (1, 1))


@intrinsic(prefer_literal=True)
def patch_run(typingctx, x, xo, px, taps, pixels, vectors, w, wo, ldw, b, bo, y, yo, py, groups):
    """``groups`` consecutive tiles of ``pixels`` output pixels x 16 ``vectors`` channels of a
    convolution over an input of few channels (an image stem), each input value broadcast
    against a row of weights: for g < groups, r < P, v < V and t < 16 (P = ``pixels``, V = ``vectors``),
    y[yo + (g P + r) py + 16 v + t] = b[bo + 16 v + t] + sum_q w[wo + q ldw + 16 v + t] * x[xo + (g P + r) px + taps[q]]
    over q < taps.size, each sum the bias then the taps in order as one chain of multiply-adds.

    x, w, b, y: 1-D C-contiguous float32 arrays (the NCHW image, the [Cin kh kw, Cout] weight
    in the row order of an OIHW weight, the bias, the flat NHWC output); taps: int64 element
    offsets of the kernel's taps (c, i, j) from a pixel's first input element; px, py: element
    strides between consecutive pixels. ``(pixels, vectors)`` must be one of `PATCH_RUN_TILES`,
    as literals in the caller. Where `dw_run` loads a vector of 16 channels per tap and pixel,
    this loads one value and broadcasts it: the image's few channels are far apart (NCHW), and no
    patch is gathered. The accumulators never leave registers; the caller keeps every index
    inside its arrays (no bounds checks). `loop_patch_run` is its plain twin."""
    f32 = types.float32
    if not (all(_is_array(t, f32, 1) for t in (x, w, b, y)) and _is_array(taps, types.int64, 1)
            and isinstance(pixels, types.IntegerLiteral) and isinstance(vectors, types.IntegerLiteral)
            and (pixels.literal_value, vectors.literal_value) in PATCH_RUN_TILES
            and all(isinstance(t, types.Integer) for t in (xo, px, wo, ldw, bo, yo, py, groups))):
        return None
    npx, nv = pixels.literal_value, vectors.literal_value
    sig = types.void(x, xo, px, taps, pixels, vectors, w, wo, ldw, b, bo, y, yo, py, groups)

    def codegen(context, builder, signature, args):
        arr = {i: context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3, 6, 9, 11)}
        i64 = ir.IntType(64)
        xo_, px_, wo_, ldw_, bo_, yo_, py_, g_ = (context.cast(builder, args[i], signature.args[i], types.int64)
                                                  for i in (1, 2, 7, 8, 10, 12, 13, 14))
        fmuladd = _function(builder, "llvm.fmuladd.v16f32", _F32X16, [_F32X16] * 3)
        undef = ir.Constant(_F32X16, ir.Undefined)
        zero_mask = ir.Constant(_I32X16, [0] * 16)

        def vec(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), _F32X16.as_pointer())

        def const(v):
            return ir.Constant(i64, v)

        biases = [builder.load(vec(arr[9].data, builder.add(bo_, const(16 * v))), align=4) for v in range(nv)]
        accs = [cgutils.alloca_once(builder, _F32X16) for _ in range(npx * nv)]
        xrows = [builder.mul(const(r), px_) for r in range(npx)]
        yrows = [builder.mul(const(r), py_) for r in range(npx)]
        step_x, step_y = builder.mul(const(npx), px_), builder.mul(const(npx), py_)
        with cgutils.for_range(builder, g_) as group:
            x0 = builder.add(xo_, builder.mul(group.index, step_x))
            y0 = builder.add(yo_, builder.mul(group.index, step_y))
            for r in range(npx):
                for v in range(nv):
                    builder.store(biases[v], accs[r * nv + v])
            with cgutils.for_range(builder, arr[3].nitems) as tap:
                q = tap.index
                wrow = builder.add(wo_, builder.mul(q, ldw_))
                wvs = [builder.load(vec(arr[6].data, builder.add(wrow, const(16 * v))), align=4) for v in range(nv)]
                at = builder.add(x0, builder.load(builder.gep(arr[3].data, [q])))
                for r in range(npx):
                    xs = builder.load(builder.gep(arr[0].data, [builder.add(at, xrows[r])]))
                    splat = builder.shuffle_vector(builder.insert_element(undef, xs, ir.Constant(ir.IntType(32), 0)),
                                                   undef, zero_mask)
                    for v in range(nv):
                        acc = accs[r * nv + v]
                        builder.store(builder.call(fmuladd, [splat, wvs[v], builder.load(acc)]), acc)
            for r in range(npx):
                for v in range(nv):
                    builder.store(builder.load(accs[r * nv + v]),
                                  vec(arr[11].data, builder.add(builder.add(y0, yrows[r]), const(16 * v))), align=4)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, nogil=True)
def loop_patch_run(x, xo, px, taps, pixels, vectors, w, wo, ldw, b, bo, y, yo, py, groups):
    """The plain-loop twin of `patch_run` (same arguments and sums, in the same order, though
    multiply then add: no fused multiply-add; ``pixels`` and ``vectors`` may be any values here)."""
    for p in range(groups * pixels):
        for t in range(16 * vectors):
            acc = b[bo + t]
            for q in range(taps.size):
                acc += w[wo + q * ldw + t] * x[xo + p * px + taps[q]]
            y[yo + p * py + t] = acc
