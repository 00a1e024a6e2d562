"""Matrix products and convolution.

Products with a weight of a loaded model (linear, and the 1x1 and im2col convolutions) run
`gemm_panels`: the weight is repacked once into panels of 32 output columns (`pack_panels`), and
register tiles (`simd.panel_tile_fast`: 8 x 32 on AVX-512, 6 x 16 elsewhere) stream
them with the bias added in registers and the activation applied while the tile is in cache.
The panels are split over NAC's thread team. Against numpy's OpenBLAS, which packs the weight
again on every call, MiniLM's 36 encoder products at 16 rows took 3.4-4.7 instead of 6.9-7.5 ms
(``bench/bench_kernels.py``, two runs), and 2-16 rows on a cached weight run 2.5-4x faster; at hundreds of
rows the two were within ~10 % on an AMD EPYC, and OpenBLAS 1.1-1.4x ahead on an Intel Xeon, until
the tiles shed Numba's reference counting (`simd.panel_tile_fast`): on that Xeon the panels then
took 0.73-0.92x OpenBLAS's time at 128-1,024 rows of MiniLM's shapes (one thread), and 1.10x at
512 x 768 x 2304. Int8
weights with float activations take the same tiles, one converted panel at a time
(`gemm_dequant_panels`). Single rows (a decode step) take a one-row tile that streams each
panel's contiguous K x 128 bytes. Products of two activations and weights that can change
between calls go to BLAS through
``numpy.matmul``, with bias and activation applied after it in one fused Numba pass.
``NAC_GEMM=avx512|avx2|plain|blas`` forces one path (read at import).

Convolutions run channels-last (NHWC memory) whenever the plan stores their output so
(`nac.engine.plan.channels_last_values`: every convolution whose output only convolutions,
element-wise ops and pools read): depthwise as a direct stencil vectorised over channels (in
4-pixel x 16-channel register tiles, `simd.dw_tile_4x16`, and one-pixel tiles over the taps
inside the plane at its border, `simd.dw_tile_1x16`, from 16 channels on), 1x1 as
one GEMM over all pixels with a repacked [Cin, Cout] weight, an NCHW image of few channels (a
stem) one output row of patches at a time in the GEMM's tiles (`conv2d_patches`), the rest as
NHWC im2col + GEMM, each with bias and activation applied to the product's rows. A contiguous
(NCHW) output, as in the plans `nac emit` compiles, takes the NCHW kernels: a per-plane
depthwise stencil, im2col + BLAS, and 1x1 stride-1 as a batched GEMM.
"""
from __future__ import annotations

import functools
import os
import threading
import weakref

import numpy as np
from numba import carray, njit

from nac.engine import threads as T
from nac.engine.kernels import activation as A
from nac.engine.kernels import quant as Q
from nac.engine.kernels import simd
from nac.engine.kernels import vmath as vm
from nac.engine.kernels.registry import binder, kernel, pair_binder

_EMPTY = np.zeros(1, np.float32)


@kernel("matmul")
def matmul(ins, outs, attrs):
    """ATen matmul/mm/bmm: a [*, M, K] @ b [*, K, N] -> [*, M, N] with broadcast batch dims."""
    np.matmul(ins[0], ins[1], out=outs[0])


@kernel("linear")
def linear(ins, outs, attrs):
    """act(x [*, K] @ weight[N, K].T + bias[N]) -> [*, N] (ATen addmm/linear, fused activation);
    weight is [K, N] when attrs weight_layout is 'io'."""
    x, w, b = ins
    out = outs[0]
    code = A.CODES[attrs.get("activation", "none")]
    if isinstance(w, Q.QTensor):
        K, N = w.shape[1], w.shape[0]
        y, x2 = out.reshape(-1, N), x.reshape(-1, K)
        aq = attrs.get("activation_quant", "none")
        if (w.scheme == "int8" and aq == "none" and x2.shape[0] > Q.SMALL_M and GEMM != "blas"
                and y.flags.c_contiguous and y.size):
            gemm_dequant(x2, w, y, GEMM_KINDS[GEMM])
        else:
            Q.quant_matmul(x2, w, y, aq)
        _bias_act_rows(y, b, code)
        return
    io = attrs.get("weight_layout", "oi") == "io"
    (K, N), wmat = (w.shape, w) if io else (w.shape[::-1], w.T)
    x2, y = x.reshape(-1, K), out.reshape(-1, N)
    if _gemm_weight(x2, w, y, b, code, "panels_io" if io else "panels"):
        return
    np.matmul(x2, wmat, out=y)
    _bias_act_rows(y, b, code)


@binder("linear")
def bind_linear(ins, outs, attrs):
    """A plan's linear step on the packed panels (`gemm`) with its job worked out once: the
    weight's panels, the bias, the flat views and the work split (a quantised weight:
    `_bind_quantised`); None (the plan calls `linear`) for a strided input or output, or where
    `_gemm_weight` would decline.
    The call falls back to `linear` if `GEMM` changes after binding. Saves ~3 us of a one-row
    product's ~6 us of Python (151 products a SmolLM2 token)."""
    x, w, b = ins
    out = outs[0]
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return None
    if isinstance(w, Q.QTensor):
        return _bind_quantised(x, w, b, out, attrs)
    io = attrs.get("weight_layout", "oi") == "io"
    K, N = w.shape if io else w.shape[::-1]
    x2, y2 = x.reshape(-1, K), out.reshape(-1, N)
    packed = _panel_operands(x2, w, y2, b, "panels_io" if io else "panels")
    if packed is None:
        return None
    job = _gemm_job(x2, *packed, y2, A.CODES[attrs.get("activation", "none")], GEMM_KINDS[GEMM])
    return _while_gemm_holds(T.parallel_native, job, x2.size * N, functools.partial(linear, ins, outs, attrs))


def _while_gemm_holds(fn, job: tuple, work: int, kernel):
    """A bound step: ``fn(*job, work=work)`` while `GEMM` is what it was at binding (the job was
    built for its tiles), else ``kernel()`` (the step's kernel call, which reads `GEMM` anew)."""
    bound = GEMM

    def call():
        if GEMM != bound:
            return kernel()
        fn(*job, work=work)

    return call


def _bind_quantised(x, w, b, out, attrs):
    """`bind_linear` for a quantised weight with int8 activations over up to `quant.SMALL_M`
    rows (W8A8 and W1.58A8 decode: `quant.bind_a8`), the bias and activation pass bound too;
    None otherwise."""
    if attrs.get("activation_quant", "none") != "int8" or (b is not None and b.dtype != np.float32):
        return None
    K, N = w.shape[1], w.shape[0]
    y = out.reshape(-1, N)
    product = Q.bind_a8(x.reshape(-1, K), w, y)
    if product is None:
        return None
    code = A.CODES[attrs.get("activation", "none")]
    if b is None and not code:
        return product
    epilogue = functools.partial(T.parallel_range, A.bias_act_rows, y.shape[0], y, _EMPTY if b is None else b,
                                 b is not None, code, work=y.size * (4 if code else 1))

    def call():
        product()
        epilogue()

    return call


#: columns of a packed weight panel (`pack_panels`): two 16-float vectors
PANEL = 32
#: rows of the left operand per block of `gemm_panels`' work (192 KiB at K = 384 stays in L2
#: while a thread sweeps its panels)
GEMM_ROW_BLOCK = 128
#: a thread's panels of one row block up to this many bytes are swept by each row tile in turn
#: (they stay in L2); larger ones are swept row tile by row tile, one panel at a time
GEMM_L2_PANELS = 256 * 1024
#: products with fewer rows than this stay on BLAS (see `_gemm_weight`); one-row products (a
#: decode step's) take the panels' one-row tile
GEMM_MIN_ROWS = 1
#: the panel tiles `gemm_panels` runs: one per run-time ``kind`` argument (one compiled kernel
#: serves every machine and the tests force each); "blas" sends every product to numpy
GEMM_KINDS = {"avx512": 0, "avx2": 1, "plain": 2, "blas": -1}
GEMM: str = os.environ.get("NAC_GEMM", "") if os.environ.get("NAC_GEMM", "") in GEMM_KINDS else (
    "avx512" if simd.AVX512 else "avx2")


def pack_panels(wt: np.ndarray) -> np.ndarray:
    """A weight matrix ``wt`` [K, N] as float32 panels [ceil(N / 32), K, 32]: panel g holds
    columns 32 g .. 32 g + 31 row after row, so a tile streams one contiguous run; the last panel
    is padded with zero columns."""
    K, N = wt.shape
    full, rest = divmod(N, PANEL)
    out = simd.aligned_empty((full + (rest > 0), K, PANEL))
    out[full:] = 0.0
    out[:full] = wt[:, :full * PANEL].reshape(K, full, PANEL).transpose(1, 0, 2)
    if rest:
        out[full, :, :rest] = wt[:, full * PANEL:]
    return out


@njit(cache=True, nogil=True)
def _panel_rows(kind, rows, a, a_off, lda, bp, b_off, bias, n0, c, c_off, ldc, k):
    """``rows`` rows (8, 6, 4, 3, 2 or 1, `_tile_rows`) x one whole panel through ``kind``'s tiles
    (the full-height and one-row ones through `simd.panel_tile_fast`)."""
    if kind == 2:
        simd.loop_panel_tile(rows, PANEL, a, a_off, lda, bp, b_off, PANEL, bias, n0, c, c_off, ldc, k)
    elif simd.panel_tile_fast(kind, rows, PANEL, a, a_off, lda, bp, b_off, PANEL, bias, n0, c, c_off, ldc, k, b_off):
        pass
    elif rows == 4:
        simd.panel_tile_4x32(a, a_off, lda, bp, b_off, PANEL, bias, n0, c, c_off, ldc, k)
    elif rows == 3:
        simd.panel_tile_3x32(a, a_off, lda, bp, b_off, PANEL, bias, n0, c, c_off, ldc, k)
    else:  # two rows (one went to panel_tile_fast)
        simd.panel_tile_2x32(a, a_off, lda, bp, b_off, PANEL, bias, n0, c, c_off, ldc, k)


@njit(cache=True, nogil=True)
def _tile_rows(kind, left):
    """How many rows the next tile of ``kind`` takes when ``left`` rows remain: AVX-512 (and the
    plain loop) 8, then 4, 2 and 1; AVX2 6, then 3, 2 and 1."""
    if kind == 1:
        return 6 if left >= 6 else (3 if left >= 3 else left)
    return 8 if left >= 8 else (4 if left >= 4 else left if left < 3 else 2)


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def gemm_panels(a, M, K, bp, bias, N, c, code, res, has_res, kind, rb, lo, hi):
    """c = act(a @ W + bias [+ res]) for a packed weight, work items ``lo..hi``: (block of ``rb``
    rows, panel) pairs, row block major (`row_block` picks ``rb``).

    a: [M, K] float32, flat C-contiguous; bp: `pack_panels` of W [K, N], flat; bias: float32,
    ceil(N / 32) * 32 long (zeros past N, or for no bias); c: [M, N] float32, flat C-contiguous,
    overwritten; code: fusable activation (`activation.CODES`); res: [M, N] float32, flat
    C-contiguous, added before the activation when ``has_res`` (a residual connection; read
    while the rows are in cache); kind: 0 (8 x 32 tiles), 1 (6 x 16 tiles, two per panel) or 2
    (the plain loop), `GEMM_KINDS`. Callers check the sizes (the tiles do not bounds-check).

    Within a row block, when this range's panels fit in `GEMM_L2_PANELS` bytes (a small weight,
    as in most convolutions) each row tile sweeps them all, so the tile's rows of c are written
    in one run and the panels stay in cache; otherwise each panel sweeps the row tiles, so it is
    read from memory once per block. Rows past the last full tile take smaller tiles; a panel
    that ends past N is computed into a scratch tile and its first columns copied. The
    activation runs over the range's columns of each row tile (or block) just computed, while
    they are in cache."""
    G = (N + PANEL - 1) // PANEL
    scratch = np.empty(8 * PANEL, np.float32)
    item = lo
    while item < hi:
        blk = item // G
        g0 = item % G
        g1 = min(G, g0 + hi - item)
        m0 = blk * rb
        m1 = min(M, m0 + rb)
        if (g1 - g0) * K * PANEL * 4 <= GEMM_L2_PANELS:
            m = m0
            while m < m1:
                rows = _tile_rows(kind, m1 - m)
                for g in range(g0, g1):
                    if not simd.panel_tile_fast(kind, rows, N - g * PANEL, a, m * K, K, bp, g * K * PANEL, PANEL, bias,
                                                g * PANEL, c, m * N + g * PANEL, N, K, g * K * PANEL):
                        _panel_edge(kind, rows, a, m * K, K, bp, g * K * PANEL, bias, g * PANEL, g * PANEL, N, c, m,
                                    scratch)
                if code != 0 or has_res:
                    _act_rows(c, N, m, m + rows, g0, g1, code, res, has_res)
                m += rows
        else:
            for g in range(g0, g1):
                _panel_sweep(kind, a, m0, m1, K, bp, g * K * PANEL, bias, g * PANEL, g * PANEL, N, c, scratch,
                             (g + 1 if g + 1 < g1 else g) * K * PANEL)
            if code != 0 or has_res:
                _act_rows(c, N, m0, m1, g0, g1, code, res, has_res)
        item += g1 - g0


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def _act_rows(c, N, m0, m1, g0, g1, code, res, has_res):
    """The residual (``res``, flat [M, N], when ``has_res``) and then the activation over rows
    ``m0..m1`` x panels ``g0..g1`` of c (flat [M, N])."""
    n0, n1 = g0 * PANEL, min(N, g1 * PANEL)
    if n0 == 0 and n1 == N:  # whole rows: one run (a slice per row costs reference counting)
        if has_res:
            for i in range(m0 * N, m1 * N):
                c[i] += res[i]
        A.bias_act_scalar(c[m0 * N:m1 * N], np.float32(0.0), code)
        return
    for m in range(m0, m1):
        if has_res:
            for i in range(m * N + n0, m * N + n1):
                c[i] += res[i]
        A.bias_act_scalar(c[m * N + n0:m * N + n1], np.float32(0.0), code)


@njit(cache=True, nogil=True)
def _panel_sweep(kind, a, m0, m1, K, bp, b_off, bias, bias_off, n0, N, c, scratch, pf):
    """Rows ``m0 .. m1`` x one panel (`_panel_edge`'s arguments), in ``kind``'s row tiles. Every
    full-height tile after the first prefetches the panel at ``bp[pf:]`` into L2 (the next one
    the caller sweeps; ``pf = b_off`` for none): the first tile waits on memory for this panel
    and the others read it from L2, so memory would otherwise idle while they compute.
    16 x 384 x 1,536 (MiniLM's FFN at 16 tokens) from a weight not in cache, one thread:
    256-361 -> 213-239 us (two runs, alternating processes); 16 x 1,536 x 384: 260-271 -> 241 us;
    with the weight in cache, and for a single tile (a decode step's one row, where prefetching
    the next panel measured 20 % slower), nothing changes."""
    m = m0
    while m < m1:
        rows = _tile_rows(kind, m1 - m)
        if not simd.panel_tile_fast(kind, rows, N - n0, a, m * K, K, bp, b_off, PANEL, bias, bias_off, c, m * N + n0,
                                    N, K, pf if m > m0 else b_off):
            _panel_edge(kind, rows, a, m * K, K, bp, b_off, bias, bias_off, n0, N, c, m, scratch)
        m += rows


@njit(cache=True, nogil=True)
def _panel_edge(kind, rows, a, a_off, K, bp, b_off, bias, bias_off, n0, N, c, m, scratch):
    """Rows ``m .. m + rows`` of c (flat [M, N]) x the panel at ``bp[b_off:]`` (output columns
    ``n0 ..``, bias from ``bias[bias_off:]``) of c = a @ W + bias, the rows of a from
    ``a[a_off:]``, K apart, where `simd.panel_tile_fast` declines: fewer rows than ``kind``'s
    full tile, and the plain loop. Through `_panel_rows`; a panel that ends past N is computed
    into ``scratch`` (8 x 32 floats) and its first columns copied.

    Called, not inlined: only the last rows of a product and the plain loop come here."""
    width = min(PANEL, N - n0)
    if width == PANEL:
        _panel_rows(kind, rows, a, a_off, K, bp, b_off, bias, bias_off, c, m * N + n0, N, K)
        return
    _panel_rows(kind, rows, a, a_off, K, bp, b_off, bias, bias_off, scratch, 0, PANEL, K)
    for r in range(rows):
        c[(m + r) * N + n0:(m + r) * N + n0 + width] = scratch[r * PANEL:r * PANEL + width]


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def gemm_dequant_panels(a, M, K, panels, scale, N, c, kind, lo, hi):
    """c = a @ dequant(W).T for an int8 weight, panels of 32 output columns ``lo..hi``: each
    panel is converted into a [K, 32] float32 buffer (in L2) and swept by the row tiles of
    ``kind`` (`gemm_panels`), so the weight is read once, compressed, and never written out
    whole as float32.

    a: [M, K] float32, flat C-contiguous; panels: `quant.QTensor.column_panels` [G, K, 32] int8;
    scale: float32 [N]; c: [M, N] float32, flat C-contiguous, overwritten. The panel is
    converted to float32 codes and each output column scaled after its sum (sum_k x q, times
    scale[n]: a float rounding order that differs from dequantise-then-multiply by float32
    rounding only)."""
    buf = np.empty(K * PANEL, np.float32)
    zero = np.zeros(PANEL, np.float32)
    scratch = np.empty(8 * PANEL, np.float32)
    for g in range(lo, hi):
        n0 = g * PANEL
        width = min(PANEL, N - n0)
        codes = panels[g].reshape(-1)
        for i in range(K * PANEL):  # indices from 0 over a slice: no wrap-around check, so it vectorises
            buf[i] = np.float32(codes[i])
        _panel_sweep(kind, a, 0, M, K, buf, 0, zero, 0, n0, N, c, scratch, 0)
        s = scale[n0:n0 + width]
        for m in range(M):
            out = c[m * N + n0:m * N + n0 + width]
            for t in range(width):
                out[t] *= s[t]


def gemm(x2: np.ndarray, panels: np.ndarray, bias: np.ndarray, y2: np.ndarray, code: int, kind: int,
         res2: np.ndarray | None = None) -> None:
    """y2 = act(x2 @ W + bias [+ res2]) over the thread team, W given as its `pack_panels`
    [G, K, 32].

    x2: [M, K] float32 C-contiguous; bias: float32 [G * 32]; y2: [M, N] float32 C-contiguous,
    N <= G * 32; res2: None or [M, N] float32 C-contiguous (a residual added before the
    activation). Raises ValueError if the shapes or layouts disagree (the tiles trust them)."""
    T.parallel_native(*_gemm_job(x2, panels, bias, y2, code, kind, res2), work=x2.size * y2.shape[1])


def _gemm_job(x2, panels, bias, y2, code: int, kind: int, res2=None) -> tuple:
    """`gemm`'s arguments checked, as the positional arguments of its `threads.parallel_native`
    call (the flat views share the operands' memory). Raises ValueError as `gemm`."""
    M, K = x2.shape
    N = y2.shape[1]
    G = panels.shape[0]
    if not (x2.dtype == y2.dtype == panels.dtype == bias.dtype == np.float32 and x2.flags.c_contiguous
            and y2.flags.c_contiguous and y2.shape[0] == M and panels.shape[1:] == (K, PANEL)
            and (N + PANEL - 1) // PANEL == G and bias.shape == (G * PANEL,) and kind in (0, 1, 2)
            and (res2 is None or (res2.shape == y2.shape and res2.dtype == np.float32 and res2.flags.c_contiguous))):
        raise ValueError(f"gemm: operands [{M}, {K}] x panels {panels.shape} -> {y2.shape} do not agree")
    rb = row_block(M)
    return (gemm_panels, _pack_gemm, -(-M // rb) * G, x2.reshape(-1), M, K, panels.reshape(-1), bias, N,
            y2.reshape(-1), code, _EMPTY if res2 is None else res2.reshape(-1), res2 is not None, kind, rb)


@njit(cache=True, nogil=True)
def _pack_gemm(words, a, M, K, bp, bias, N, c, code, res, has_res, kind, rb):
    """Publish `gemm_panels`' arguments in the team's words (`threads.Team.run`'s ``pack``):
    the arrays as addresses and lengths, the rest as integers, from ``threads.WORD_ARGS`` on."""
    w = T.WORD_ARGS
    words[w + 0], words[w + 1] = T.data_address(a), a.size
    words[w + 2], words[w + 3] = T.data_address(bp), bp.size
    words[w + 4], words[w + 5] = T.data_address(bias), bias.size
    words[w + 6], words[w + 7] = T.data_address(c), c.size
    words[w + 8], words[w + 9] = T.data_address(res), res.size
    words[w + 10], words[w + 11], words[w + 12], words[w + 13] = M, K, N, code
    words[w + 14], words[w + 15], words[w + 16] = has_res, kind, rb


@njit(cache=True, nogil=True)
def _words_array(words, i):
    """The float32 array `_pack_gemm` published at word ``i`` (address) and ``i + 1`` (length)."""
    return carray(T.float32_at(words[T.WORD_ARGS + i]), words[T.WORD_ARGS + i + 1])


@njit(cache=True, nogil=True)
def gemm_member_wait(flags, words, done, seen, spins, settle_spins):
    """A team member's wait (`threads.publish_and_spin`'s contract) that also runs native jobs:
    the ranges of a `gemm_panels` job it can claim (`threads.claim_native`), with the arguments
    `_pack_gemm` published, each marked finished in ``flags`` as it ends, all without the GIL,
    so that neither the hand-off nor the return waits for the caller's Python. Returns for a
    Python job (its epoch) or after ``spins`` idle reads (``seen``)."""
    if done >= 0:
        T._atomic_store(flags, done, seen)
    while True:
        epoch = T.spin(flags, 0, seen, False, spins)
        if epoch == seen:
            return seen
        seen = epoch
        w = T._atomic_load(words, 0)
        if (w >> T.CLAIM_SHIFT) != epoch:
            continue  # a newer job is being posted: flags[0] shows it next
        if not (w & T.NATIVE_JOB):
            T.settle(settle_spins)
            return epoch
        while True:
            k = T.claim_native(words, epoch)
            if k < 0:
                break
            n, total = words[1], words[2]
            a, bp, bias = _words_array(words, 0), _words_array(words, 2), _words_array(words, 4)
            c, res = _words_array(words, 6), _words_array(words, 8)
            v = T.WORD_ARGS + 10
            gemm_panels(a, words[v], words[v + 1], bp, bias, words[v + 2], c, words[v + 3], res, words[v + 4] != 0,
                        words[v + 5], words[v + 6], total * k // n, total * (k + 1) // n)
            T._atomic_store(flags, 1 + k, epoch)


T.member_wait = gemm_member_wait


@njit(cache=True, nogil=True)
def gemm_team_run(flags, words, epoch, ranges, total, a, M, K, bp, bias, N, c, code, res, has_res, kind, rb):
    """The caller's side of a `gemm_panels` job over the thread team, in one call without the
    GIL (`threads.NATIVE_RUNNERS`): publish the arguments (`_pack_gemm`), post job ``epoch``
    split into ``ranges`` contiguous ranges of ``total`` items, run every range it can claim
    (`threads.claim_native`), then wait until each range a member claimed is finished (flags[1
    + k] == ``epoch``). Returns how many ranges it ran. The members' side is
    `gemm_member_wait`; the arguments are `gemm_panels`' (checked by `_gemm_job`)."""
    _pack_gemm(words, a, M, K, bp, bias, N, c, code, res, has_res, kind, rb)
    words[1], words[2] = ranges, total
    T._atomic_store(words, 0, epoch << T.CLAIM_SHIFT | T.NATIVE_JOB)
    T._atomic_store(flags, 0, epoch)  # after the words: a member that sees the epoch reads this job's
    mine = np.zeros(ranges, np.bool_)
    ran = 0
    while True:
        k = T.claim_native(words, epoch)
        if k < 0:
            break
        mine[k] = True
        ran += 1
        gemm_panels(a, M, K, bp, bias, N, c, code, res, has_res, kind, rb, total * k // ranges,
                    total * (k + 1) // ranges)
    for k in range(ranges):
        if not mine[k]:
            while T._atomic_load(flags, 1 + k) != epoch:
                T._pause()
    return ran


T.NATIVE_RUNNERS[gemm_panels] = gemm_team_run


def row_block(M: int) -> int:
    """Rows per block of `gemm_panels` for an M-row product: blocks of equal size (any height;
    the tiles take the rows left at a block's end), as few as keep each at most
    `GEMM_ROW_BLOCK`. The thread team splits the (block, panel) items evenly by count, so
    equal blocks give each thread equal work. Blocks of 128 rows and a last one of the rest
    gave one thread two thirds of the work at 392 rows (a batch of 8 over a 7 x 7 plane); equal
    blocks of 98 ran 1.28-1.31x faster on two threads (226 against 171 GF/s at 392 x 1152 x
    192, AMD EPYC VM), and blocks rounded up to a multiple of 8 (104, the tile height) only
    1.2x. At 784 and 1,568 rows (blocks of 112 and 121): 1.03-1.05x."""
    blocks = max(1, -(-M // GEMM_ROW_BLOCK))
    return -(-M // blocks)


def gemm_dequant(x2: np.ndarray, w: Q.QTensor, y2: np.ndarray, kind: int) -> None:
    """y2 = x2 @ dequant(w).T for an int8 `quant.QTensor` [N, K] over the thread team
    (`gemm_dequant_panels`; no bias or activation).

    x2: [M, K] float32 (copied if strided); y2: [M, N] float32 C-contiguous. Raises ValueError if
    the shapes or layouts disagree (the tiles trust them)."""
    N, K = w.shape
    panels = w.column_panels
    if not (w.scheme == "int8" and x2.ndim == 2 and x2.shape[1] == K and y2.shape == (x2.shape[0], N)
            and y2.dtype == np.float32 and y2.flags.c_contiguous and panels.shape == (-(-N // PANEL), K, PANEL)
            and w.scale.shape == (N,) and kind in (0, 1, 2)):
        raise ValueError(f"gemm_dequant: operands {x2.shape} x {w.scheme} {w.shape} -> {y2.shape} do not agree")
    T.parallel_range(gemm_dequant_panels, panels.shape[0], np.ascontiguousarray(x2, np.float32).reshape(-1),
                     x2.shape[0], K, panels, np.ascontiguousarray(w.scale, np.float32), N, y2.reshape(-1), kind,
                     work=y2.size * K)


def _gemm_weight(x2, w, y2, b, code: int, how: str, res2=None) -> bool:
    """act(x2 @ W + b [+ res2]) into y2 through `gemm` when W (the weight ``w``, packed as ``how``) is a
    loaded model's (read-only, so packed once) and the operands are float32; False (nothing
    written) otherwise, for empty products, and for fewer than `GEMM_MIN_ROWS` rows.

    One-row products (decode) come here too since the one-row tile no longer pays Numba's
    reference counting per panel (`simd.panel_tile_fast`): SmolLM2's decode step, one thread,
    took 30.4 ms on the panels against 38.9 ms through OpenBLAS's matrix-vector kernel (AMD EPYC
    VM, 8 alternating rounds); on two threads the two were within this VM's noise (27.9-29.6 ms),
    its memory giving two cores little more bandwidth than one (24 against 29 GB/s). At 2-16
    rows the panels are 2.5-4x faster than OpenBLAS on a transposed weight."""
    packed = _panel_operands(x2, w, y2, b, how)
    if packed is None:
        return False
    gemm(np.ascontiguousarray(x2), *packed, y2, code, GEMM_KINDS[GEMM], res2)
    return True


def _panel_operands(x2, w, y2, b, how: str) -> tuple | None:
    """(panels, bias) of ``w`` packed as ``how`` and of ``b``, when `gemm` takes this product (see
    `_gemm_weight`: a read-only weight, float32 operands, a contiguous output, at least
    `GEMM_MIN_ROWS` rows, `GEMM` not "blas"); None otherwise."""
    if (GEMM == "blas" or x2.shape[0] < GEMM_MIN_ROWS or w.flags.writeable or x2.dtype != np.float32 or y2.dtype != np.float32
            or y2.size == 0 or not y2.flags.c_contiguous or x2.shape[1] == 0):
        return None
    if b is not None and (b.flags.writeable or b.dtype != np.float32):
        return None
    panels = _packed(w, how)
    return panels, (_zero_bias(panels.shape[0]) if b is None else _packed(b, "bias"))


@functools.lru_cache(maxsize=None)
def _zero_bias(groups: int) -> np.ndarray:
    """The zero bias of a product without one, ``groups`` panels wide (read-only, made once)."""
    z = simd.aligned_empty(groups * PANEL)
    z[:] = 0.0
    z.flags.writeable = False
    return z


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def depthwise_conv2d(x, w, b, has_bias, sh, sw, pt, pb, pl, pr, dh, dw, code, out, lo, hi):
    """Depthwise 2-D cross-correlation (groups == C_in == C_out), NCHW, fused bias + activation,
    for planes ``lo..hi`` of N*C.

    x: [N, C, H, W] float32; w: [C, 1, kh, kw]; out: [N, C, OH, OW]; zero padding
    (top, bottom, left, right). Each plane is copied into a zero-padded scratch plane split into
    ``sw`` column phases (column k*sw + p goes to phase p, column k), so every tap reads a
    contiguous run of columns and the loop over output columns vectorises at any stride. Matches
    ATen convolution with groups = C.
    """
    N, C, H, W = x.shape
    kh, kw = w.shape[2], w.shape[3]
    OH, OW = out.shape[2], out.shape[3]
    Hp = max(H + pt + pb, (OH - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl + pr, (OW - 1) * sw + (kw - 1) * dw + 1)
    Wq = (Wp + sw - 1) // sw
    xp = np.zeros((Hp, Wp), np.float32)  # the padding border stays zero; the interior is rewritten per plane
    xq = np.zeros((sw, Hp, Wq), np.float32)
    for nc in range(lo, hi):
        n = nc // C
        c = nc % C
        xp[pt:pt + H, pl:pl + W] = x[n, c]
        if sw > 1:
            for ph in range(sw):
                for col in range(Wq):
                    src = col * sw + ph
                    if src < Wp:
                        for row in range(Hp):
                            xq[ph, row, col] = xp[row, src]
        wc = w[c, 0]
        plane = out[n, c]
        bias = b[c] if has_bias else np.float32(0.0)
        for oh in range(OH):
            acc = plane[oh]
            for ow in range(OW):
                acc[ow] = 0.0
            for i in range(kh):
                row = oh * sh + i * dh
                for j in range(kw):
                    wv = wc[i, j]
                    o = j * dw
                    if sw == 1:
                        r = xp[row, o:o + OW]
                    else:
                        r = xq[o % sw, row, o // sw:o // sw + OW]
                    for ow in range(OW):
                        acc[ow] += wv * r[ow]
            A.bias_act_scalar(acc, bias, code)


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def _depthwise_pixel(xt, wt, b, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, c0, c1):
    """One output pixel, channels ``c0..c1``, of a channels-last depthwise convolution, bias
    included, taps outside the plane skipped (the stencil's step, and the tiled kernel's border)."""
    H, W = xt.shape[1], xt.shape[2]
    acc = yt[n, oh, ow, c0:c1]
    acc[:] = b[c0:c1]
    for i in range(wt.shape[0]):
        ih = oh * sh - pt + i * dh
        if ih < 0 or ih >= H:
            continue
        for j in range(wt.shape[1]):
            iw = ow * sw - pl + j * dw
            if iw < 0 or iw >= W:
                continue
            xv = xt[n, ih, iw, c0:c1]
            wv = wt[i, j, c0:c1]
            for c in range(c1 - c0):
                acc[c] += wv[c] * xv[c]


@njit(cache=True, nogil=True, fastmath=A.FASTMATH)
def depthwise_conv2d_nhwc(xt, wt, b, has_bias, sh, sw, pt, pl, dh, dw, code, yt, cblk, lo, hi):
    """Depthwise 2-D cross-correlation in channels-last layout, fused bias + activation.

    xt: [N, H, W, C] float32; wt: [kh, kw, C]; yt: [N, OH, OW, C]; work items ``lo..hi`` of
    N * OH * ceil(C / cblk): one output row of one block of ``cblk`` channels each (channel
    blocks let few rows, as at 7x7, still split over every core). The innermost loop runs over
    the channels of a block, which are adjacent in memory, so it fills the vector units at any
    stride; the block's accumulator row stays in L1. Zero padding (top ``pt``, left ``pl``;
    bottom and right follow from the shapes). Matches ATen convolution with groups = C.
    """
    C = xt.shape[3]
    OH, OW = yt.shape[1], yt.shape[2]
    bias = b if has_bias else np.zeros(C, np.float32)
    nb = (C + cblk - 1) // cblk
    for r in range(lo, hi):
        row = r // nb
        c0 = (r % nb) * cblk
        c1 = min(c0 + cblk, C)
        n = row // OH
        oh = row % OH
        for ow in range(OW):
            _depthwise_pixel(xt, wt, bias, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, c0, c1)
            A.bias_act_scalar(yt[n, oh, ow, c0:c1], np.float32(0.0), code)


@njit(cache=True, nogil=True)
def shared_rows(taps, kh, kw, px):
    """The side (3 or 5) of a square kernel whose taps along each row step by the pixel stride
    ``px`` (taps[i kw + j] == taps[i kw] + j px: stride equal to dilation), so that
    `simd.dw_run_rows` can share input vectors between neighbouring pixels; 0 otherwise."""
    if kh != kw or (kh != 3 and kh != 5):
        return 0
    for i in range(kh):
        for j in range(kw):
            if taps[i * kw + j] != taps[i * kw] + j * px:
                return 0
    return kh


@njit(inline="always")
def _dw_interior(x, xo, px, taps, kk, side, w, b, c0, c1, y, yo, ldc, groups, run):
    """``groups`` consecutive groups of 4 output pixels whose taps all lie inside ``x`` (flat,
    channels-last; the first pixel's first input element at ``xo``, ``px`` elements between
    pixels), channels ``c0..c1`` (whole 16-channel tiles), into flat ``y`` from ``yo`` (``ldc``
    elements between pixels, the weight's row length too): stretches of ``run`` groups, each
    16-channel tile sweeping a stretch before the next takes it, in `simd.dw_run_rows` where
    neighbouring pixels share input vectors (``side``, `shared_rows`, 3 or 5) and `simd.dw_run`
    otherwise, for a 3 x 3 (4-pixel tiles, its 9 weight vectors in registers) or 5 x 5 kernel
    (8-pixel tiles: 8 chains of multiply-adds), and `simd.dw_tile_4x16` for the groups left
    over and other kernel sizes; every path sums the same taps in the same order. The interior
    of `depthwise_conv2d_nhwc_tiled` and `expand_depthwise`; inlined at Numba's level, so the
    array arguments cost no reference counting per call."""
    for s0 in range(0, groups, run):
        ng = min(run, groups - s0)
        xs, ys = xo + 4 * s0 * px, yo + 4 * s0 * ldc
        for t in range(c0, c1, 16):
            done = 0  # 4-pixel groups of this channel tile done
            if side == 3:
                simd.dw_run_rows(x, xs + t, px, taps, 3, 4, w, t, ldc, b, t, y, ys + t, ldc, ng)
                done = ng
            elif side == 5:
                simd.dw_run_rows(x, xs + t, px, taps, 5, 8, w, t, ldc, b, t, y, ys + t, ldc, ng // 2)
                done = ng - ng % 2
            elif kk == 9:
                simd.dw_run(x, xs + t, px, taps, 9, 4, w, t, ldc, b, t, y, ys + t, ldc, ng)
                done = ng
            elif kk == 25:
                simd.dw_run(x, xs + t, px, taps, 25, 8, w, t, ldc, b, t, y, ys + t, ldc, ng // 2)
                done = ng - ng % 2
            for g in range(done, ng):
                simd.dw_tile_4x16(x, xs + t + 4 * g * px, px, taps, w, t, ldc, b, t, y, ys + t + 4 * g * ldc, ldc)


@njit(cache=True, nogil=True, fastmath=A.FASTMATH, error_model="numpy")
def depthwise_conv2d_nhwc_tiled(xt, wt, b, sh, sw, pt, pl, dh, dw, code, yt, taps, cblock, run, lo, hi):
    """Depthwise 2-D cross-correlation in channels-last layout in register tiles, fused bias +
    activation: runs of 4 interior pixels in `simd.dw_tile_4x16` (4 pixels x 16 channels, every
    tap accumulated in registers; a row's interior runs of a 3 x 3 or 5 x 5 kernel in one
    `simd.dw_run`, the same sums with the taps unrolled), every other pixel in
    `simd.dw_tile_1x16` over the taps that fall inside the plane, and the channels past the
    last full 16 one pixel at a time (`_depthwise_pixel`). Work items ``lo..hi`` of
    N * OH * ceil(C / cblock), rows major: one output row of one block of ``cblock`` channels (a
    multiple of 16, `DEPTHWISE_BLOCK`) each, so a block's weights stay in L1 while it sweeps the
    row, and a split of few rows can still be even (7 rows of 9 blocks: 31 and 32 items, not 3
    and 4 rows). Along the row, each 16-channel tile sweeps ``run`` groups of 4 interior pixels
    (`DEPTHWISE_RUN`) before the next tile takes them.

    xt: [N, H, W, C] float32; wt: [kh, kw, C]; b: [C] or longer (zeros for no bias); yt:
    [N, OH, OW, C]; taps: int64 [kh * kw], tap (i, j)'s offset ``(i dh W + j dw) C`` in xt's
    elements. Matches `depthwise_conv2d_nhwc` exactly at interior pixels (the same taps summed in
    the same order per channel) and within float32 rounding at the border (`simd.dw_tile_1x16`
    sums in four chains)."""
    N, H, W, C = xt.shape
    kh, kw = wt.shape[0], wt.shape[1]
    kk = kh * kw
    OH, OW = yt.shape[1], yt.shape[2]
    xf, wf, yf = xt.reshape(-1), wt.reshape(-1), yt.reshape(-1)
    c16 = C - C % 16
    ow_lo = min(OW, (pl + sw - 1) // sw)  # first output column whose taps are all inside
    last = W - 1 - (kw - 1) * dw + pl
    ow_hi = max(ow_lo, min(OW, last // sw + 1)) if last >= 0 else ow_lo
    toff = np.empty(kh * kw, np.int64)  # a border pixel's taps inside the plane: offsets, weight rows
    trow = np.empty(kh * kw, np.int64)
    side = shared_rows(taps, kh, kw, sw * C)
    rows = N * OH
    nb = (C + cblock - 1) // cblock
    for item in range(lo, hi):
        r, blk = item // nb, item % nb
        n = r // OH
        oh = r % OH
        ih0 = oh * sh - pt
        rows_inside = ih0 >= 0 and ih0 + (kh - 1) * dh < H
        cb0 = blk * cblock  # a block of channels across the whole row
        cb1 = min(C, cb0 + cblock)
        t1 = min(cb1, c16)  # the block's full 16-channel tiles end here; the tail, one pixel at a time
        ow = 0
        while ow < OW:
            iw0 = ow * sw - pl
            xo = ((n * H + ih0) * W + iw0) * C  # may lie outside xt: only the listed taps are read
            yo = ((n * OH + oh) * OW + ow) * C
            if rows_inside and ow >= ow_lo and ow + 4 <= ow_hi:  # every run of 4 interior pixels
                groups = (ow_hi - ow) // 4
                _dw_interior(xf, xo, sw * C, taps, kk, side, wf, b, cb0, t1, yf, yo, C, groups, run)
                for k in range(4 * groups if t1 < cb1 else 0):
                    _depthwise_pixel(xt, wt, b, n, oh, ow + k, sh, sw, pt, pl, dh, dw, yt, t1, cb1)
                ow += 4 * groups
                continue
            cnt = 0
            for i in range(kh):
                if 0 <= ih0 + i * dh < H:
                    for j in range(kw):
                        if 0 <= iw0 + j * dw < W:
                            toff[cnt] = taps[i * kw + j]
                            trow[cnt] = i * kw + j
                            cnt += 1
            for c0 in range(cb0, t1, 16):
                simd.dw_tile_1x16(xf, xo + c0, toff, trow, cnt, wf, c0, C, b, c0, yf, yo + c0)
            if t1 < cb1:
                _depthwise_pixel(xt, wt, b, n, oh, ow, sh, sw, pt, pl, dh, dw, yt, t1, cb1)
            ow += 1
        if code == 0:
            continue
        row0 = (n * OH + oh) * OW * C
        if nb == 1:  # the whole row: one run
            A.bias_act_scalar(yf[row0:row0 + OW * C], np.float32(0.0), code)
        else:
            for ow in range(OW):
                A.bias_act_scalar(yf[row0 + ow * C + cb0:row0 + ow * C + cb1], np.float32(0.0), code)


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def expand_depthwise(x, bp, be, code1, kind, rb, wd, bd, kh, kw, sh, sw, pt, pl, dh, dw, code2, y, OH, OW, run,
                     lo, hi):
    """An inverted-residual block's first two convolutions in one pass, output rows ``lo..hi``
    of N * OH: e = act1(x @ We + be) (a 1x1 expansion) and y = act2(depthwise(e, Wd) + bd),
    without ever holding more of e than the rows one output row reads.

    The expanded rows live in a ring of (kh - 1) dh + 1 rows, each padded with zero columns
    left and right as far as the taps reach, plus one row of zeros that stands for the rows in
    the padding above and below. Each output row first expands the image rows it needs that
    the ring lacks (`gemm_panels` over the row's W pixels, bias and act1 in its epilogue, into
    the ring row's interior), then runs the depthwise taps over the ring as
    `depthwise_conv2d_nhwc_tiled` runs them over a plane: `simd.dw_run` over 4-pixel groups
    (``run`` of them a stretch), `simd.dw_tile_4x16` for other kernel sizes, `simd.dw_tile_1x16`
    for the last pixels, every tap of every pixel read (the padding is zeros in the ring). So
    e makes no round trip through memory: at 112 x 112 x 96 (MobileNetV2's second block) it
    is 4.8 MB per image, written and read back once each without the fusion.

    x: [N, H, W, Cin] float32, C-contiguous; bp: `pack_panels` of We [Cin, C], flat; be: [G 32]
    float32 (zeros past C, or for no bias); kind, rb: `gemm_panels`'s tile kind and row block
    for W rows; wd: [kh, kw, C] float32 (the depthwise weight, taps major); bd: [C] float32 or
    longer (zeros for no bias); y: [N, OH, OW, C] float32, flat C-contiguous; C a multiple of
    16; zero padding (top ``pt``, left ``pl``). Matches ATen's two convolutions within float32
    rounding (the same products; a border pixel's taps are summed in four chains)."""
    N, H, W, Cin = x.shape
    C = wd.shape[2]
    kk = kh * kw
    G = (C + PANEL - 1) // PANEL
    items = ((W + rb - 1) // rb) * G
    Wp = max(pl + W, (OW - 1) * sw + (kw - 1) * dw + 1)  # a ring row's pixels, padding included
    row = Wp * C
    R = (kh - 1) * dh + 1
    raw = np.empty((R + 1) * row + 16, np.float32)
    skip = (-T.data_address(raw) % 64) // 4  # rows start on cache lines (`simd.aligned_empty`)
    ring = raw[skip:skip + (R + 1) * row]
    for slot in range(R):  # the padding columns (never written after this)
        ring[slot * row:slot * row + pl * C] = 0.0
        ring[slot * row + (pl + W) * C:(slot + 1) * row] = 0.0
    ring[R * row:] = 0.0  # the zero row
    xf, wf = x.reshape(-1), wd.reshape(-1)
    res = np.empty(0, np.float32)
    taps = np.empty(kk, np.int64)
    trow = np.arange(kk).astype(np.int64)
    image = -1
    nxt = 0  # the next image row to expand
    groups = OW // 4
    for r in range(lo, hi):
        n = r // OH
        oh = r % OH
        if n != image:
            image, nxt = n, 0
        first = oh * sh - pt
        nxt = max(nxt, first)  # rows above the first this output row reads are no longer needed
        for i in range(kh):
            ih = first + i * dh
            if 0 <= ih < H:
                while nxt <= ih:
                    base = (nxt % R) * row + pl * C
                    gemm_panels(xf[(n * H + nxt) * W * Cin:(n * H + nxt + 1) * W * Cin], W, Cin, bp, be, C,
                                ring[base:base + W * C], code1, res, False, kind, rb, 0, items)
                    nxt += 1
                slot = ih % R
            else:
                slot = R
            for j in range(kw):
                taps[i * kw + j] = slot * row + j * dw * C
        yo = r * OW * C
        _dw_interior(ring, 0, sw * C, taps, kk, shared_rows(taps, kh, kw, sw * C), wf, bd, 0, C, y, yo, C, groups,
                     run)
        for ow in range(4 * groups, OW):
            for c0 in range(0, C, 16):
                simd.dw_tile_1x16(ring, ow * sw * C + c0, taps, trow, kk, wf, c0, C, bd, c0, y,
                                  yo + ow * C + c0)
        if code2 != 0:
            A.bias_act_scalar(y[yo:yo + OW * C], np.float32(0.0), code2)


#: channels of `depthwise_conv2d_nhwc_tiled`'s blocks: a block sweeps a whole output row, so its
#: weights (128 channels x 25 taps: 12.5 KiB) stay in L1, where one pixel over all channels read
#: them from L2 (EfficientNet-Lite0's 5x5 at 1,152 channels: 115 KiB). Over EfficientNet-Lite0's
#: 16 depthwise convolutions, one thread: 3.72 ms, against 4.06 with 64 and 3.91 unblocked
DEPTHWISE_BLOCK = 128
#: 4-pixel groups one channel tile of `depthwise_conv2d_nhwc_tiled` sweeps before the next tile
#: takes the same pixels (`simd.dw_run` holds a tile's weights over its stretch). EfficientNet-
#: Lite0's 16 depthwise layers (AMD EPYC VM, one process, results identical): b1 on one thread
#: 1.72 ms with 1 group (the tile-at-a-time order before `dw_run`), 1.52 with 8, 1.49 with whole
#: rows; on two threads 1.04, 0.87, 0.87; b8 on two threads 11.3, 10.1, 10.5
DEPTHWISE_RUN = 8

#: depthwise convolutions with at least this many channels take the register-tiled kernel at any
#: plane size (one 16-channel tile); fewer channels take the stencil over channel blocks
TILED_DEPTHWISE_MIN_CHANNELS = 16


@njit(cache=True, nogil=True)
def im2col_nhwc(xt, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, p0, cols, lo, hi):
    """cols[p - p0, c*kh*kw + i*kw + j] = xt[n, oh*sh - pt + i*dh, ow*sw - pl + j*dw, c] (0 outside)
    for output pixels p = (n*OH + oh)*OW + ow in ``p0 + lo .. p0 + hi``.

    xt: [N, H, W, C] float32; cols: [rows, C*kh*kw]. The column order is that of an OIHW
    weight's rows, so the product needs no repacked weight.
    """
    H, W, C = xt.shape[1], xt.shape[2], xt.shape[3]
    kk = kh * kw
    for q in range(lo, hi):
        p = p0 + q
        n = p // (OH * OW)
        oh = (p // OW) % OH
        ow = p % OW
        out = cols[q]
        for i in range(kh):
            ih = oh * sh - pt + i * dh
            for j in range(kw):
                iw = ow * sw - pl + j * dw
                t = i * kw + j
                if ih < 0 or ih >= H or iw < 0 or iw >= W:
                    for c in range(C):
                        out[c * kk + t] = 0.0
                else:
                    src = xt[n, ih, iw]
                    for c in range(C):
                        out[c * kk + t] = src[c]


#: ungrouped convolutions of an NCHW input whose patch (Cin * kh * kw) is at most this long take
#: `conv2d_patches` (an image stem: 3 x 3 x 3 = 27); deeper ones, im2col + BLAS
PATCH_MAX_DEPTH = 256


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def conv2d_patches(x, kh, kw, sh, sw, pt, pl, dh, dw, bp, bias, code, kind, y, cout, OH, OW, lo, hi):
    """act(conv(x, W) + bias) into a channels-last output, output rows ``lo..hi`` of N * OH, for
    an input of few channels in any memory layout (the graph's NCHW image): each output row's
    patches are gathered into a scratch ([OW, Cin * kh * kw], the column order of an OIHW
    weight's rows; 12 KiB for a 112-pixel row of 3 x 3 x 3 patches), multiplied by the weight's
    panels in `gemm_panels`' register tiles of ``kind`` with the bias, and the activation applied
    to the row while it is in cache: one pass over the output, where im2col + BLAS + a bias pass
    made three.

    x: [N, C, H, W] float32 (any strides); bp: `pack_panels` of W [C * kh * kw, cout], flat;
    bias: float32, whole panels (zeros past cout); y: [N, OH, OW, cout] float32, flat
    C-contiguous. Zero padding (top ``pt``, left ``pl``; bottom and right follow from the
    shapes). Matches ATen convolution with groups = 1."""
    N, C, H, W = x.shape
    K = C * kh * kw
    G = (cout + PANEL - 1) // PANEL
    a = np.empty(OW * K, np.float32)  # one output row's patches
    scratch = np.empty(8 * PANEL, np.float32)
    for r in range(lo, hi):
        n = r // OH
        oh = r % OH
        for c in range(C):
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                for j in range(kw):
                    col = (c * kh + i) * kw + j
                    if ih < 0 or ih >= H:
                        for ow in range(OW):
                            a[ow * K + col] = 0.0
                        continue
                    xrow = x[n, c, ih]
                    first = min(OW, max(0, -(-(pl - j * dw) // sw)))  # output columns whose tap is inside
                    end = max(first, min(OW, (W - 1 + pl - j * dw) // sw + 1)) if W - 1 + pl - j * dw >= 0 else first
                    for ow in range(first):
                        a[ow * K + col] = 0.0
                    for ow in range(first, end):
                        a[ow * K + col] = xrow[ow * sw - pl + j * dw]
                    for ow in range(end, OW):
                        a[ow * K + col] = 0.0
        ow = 0
        while ow < OW:
            rows = _tile_rows(kind, OW - ow)
            m = (n * OH + oh) * OW + ow
            for g in range(G):
                if not simd.panel_tile_fast(kind, rows, cout - g * PANEL, a, ow * K, K, bp, g * K * PANEL, PANEL, bias,
                                            g * PANEL, y, m * cout + g * PANEL, cout, K, g * K * PANEL):
                    _panel_edge(kind, rows, a, ow * K, K, bp, g * K * PANEL, bias, g * PANEL, g * PANEL, cout, y, m,
                                scratch)
            ow += rows
        if code != 0:  # the row's pixels are adjacent: one pass while they are in cache
            A.bias_act_scalar(y[r * OW * cout:(r + 1) * OW * cout], np.float32(0.0), code)


@njit(cache=True, nogil=True)
def _patch_tiles(kind, wide, x, xo, px, taps, w, ldw, b, y, yo, py, pixels):
    """``pixels`` consecutive output pixels x every channel through `simd.patch_run`'s tiles of
    ``kind`` (0: 8 pixels x 32 channels where ``wide``, else x 16; 1: 4 x 16, for AVX2's 16
    registers; 2: the plain twin), the pixels past the last whole tile one at a time. Channels
    ``ldw`` (a multiple of 16) with the weight [taps, ldw] and bias [ldw]."""
    if kind == 2:
        simd.loop_patch_run(x, xo, px, taps, 1, ldw // 16, w, 0, ldw, b, 0, y, yo, py, pixels)
        return
    done = 0
    if kind == 0 and wide:
        done = pixels - pixels % 8
        for c0 in range(0, ldw, 32):
            simd.patch_run(x, xo, px, taps, 8, 2, w, c0, ldw, b, c0, y, yo + c0, py, done // 8)
    elif kind == 0:
        done = pixels - pixels % 8
        for c0 in range(0, ldw, 16):
            simd.patch_run(x, xo, px, taps, 8, 1, w, c0, ldw, b, c0, y, yo + c0, py, done // 8)
    else:
        done = pixels - pixels % 4
        for c0 in range(0, ldw, 16):
            simd.patch_run(x, xo, px, taps, 4, 1, w, c0, ldw, b, c0, y, yo + c0, py, done // 4)
    for c0 in range(0, ldw, 32 if wide else 16):
        if wide:
            simd.patch_run(x, xo + done * px, px, taps, 1, 2, w, c0, ldw, b, c0, y, yo + c0 + done * py, py,
                           pixels - done)
        else:
            simd.patch_run(x, xo + done * px, px, taps, 1, 1, w, c0, ldw, b, c0, y, yo + c0 + done * py, py,
                           pixels - done)


@njit(cache=True, nogil=True, fastmath=vm.EXP_FLAGS, error_model=vm.NUMPY_ERRORS)
def conv2d_direct(x, kh, kw, sh, sw, pt, pl, dh, dw, wt, bias, code, kind, y, OH, OW, lo, hi):
    """act(conv(x, W) + bias) into a channels-last output, output rows ``lo..hi`` of N * OH, for
    an NCHW input of few channels (an image stem) and a multiple of 16 output channels, without
    gathering patches: each interior output pixel's taps are read where they lie and broadcast
    against the weight rows in `simd.patch_run`'s register tiles (`_patch_tiles`); a pixel whose
    taps reach into the padding has its patch gathered (zeros outside) and takes the one-pixel
    tile, so every sum is the bias then the taps in the same order. The row's activation runs
    while it is in cache.

    x: [N, C, H, W] float32, C-contiguous; wt: [C kh kw, Cout] float32, C-contiguous (the rows
    in an OIHW weight's order); bias: [Cout] float32 (zeros for none); y: [N, OH, OW, Cout]
    float32, flat C-contiguous; kind: `GEMM_KINDS` (0 AVX-512, 1 AVX2, 2 plain). Zero padding
    (top ``pt``, left ``pl``; bottom and right follow from the shapes). Matches ATen convolution
    with groups = 1."""
    N, C, H, W = x.shape
    cout = wt.shape[1]
    K = C * kh * kw
    xf, wf = x.reshape(-1), wt.reshape(-1)
    wide = cout % 32 == 0
    taps = np.empty(K, np.int64)
    for c in range(C):
        for i in range(kh):
            for j in range(kw):
                taps[(c * kh + i) * kw + j] = (c * H + i * dh) * W + j * dw
    seq = np.arange(K).astype(np.int64)  # a gathered patch's taps
    patch = np.empty(K, np.float32)
    ow_lo = min(OW, (pl + sw - 1) // sw)  # first output column whose taps are all inside
    last = W - 1 - (kw - 1) * dw + pl
    ow_hi = max(ow_lo, min(OW, last // sw + 1)) if last >= 0 else ow_lo
    for r in range(lo, hi):
        n = r // OH
        oh = r % OH
        ih0 = oh * sh - pt
        yrow = r * OW * cout
        inside = ih0 >= 0 and ih0 + (kh - 1) * dh < H
        a, e = (ow_lo, ow_hi) if inside else (0, 0)
        if e > a:
            _patch_tiles(kind, wide, xf, (n * C * H + ih0) * W + a * sw - pl, sw, taps, wf, cout, bias, y,
                         yrow + a * cout, cout, e - a)
        for ow in range(OW):
            if a <= ow < e:
                continue
            iw0 = ow * sw - pl
            for c in range(C):
                for i in range(kh):
                    ih = ih0 + i * dh
                    for j in range(kw):
                        iw = iw0 + j * dw
                        inb = 0 <= ih < H and 0 <= iw < W
                        patch[(c * kh + i) * kw + j] = x[n, c, ih, iw] if inb else np.float32(0.0)
            _patch_tiles(kind, wide, patch, 0, 0, seq, wf, cout, bias, y, yrow + ow * cout, cout, 1)
        if code != 0:
            A.bias_act_scalar(y[yrow:yrow + OW * cout], np.float32(0.0), code)


#: im2col scratch per block of output pixels, in float32 elements (bounds the scratch of a large
#: convolution: 4 MiB)
IM2COL_BLOCK = 1 << 20

_PACKED: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}
_PACKED_LOCK = threading.Lock()


def _packed(w: np.ndarray, how: str) -> np.ndarray:
    """A weight (convolution [Cout, Cin/groups, kh, kw], linear, or a bias) repacked for a
    kernel, once per array of a loaded model (read-only arrays; others are repacked per call):
    ``"taps"``: a depthwise weight as [kh, kw, C]; ``"io"``: as [Cin*kh*kw, Cout] (the GEMM's B
    operand in row-major order, which BLAS streams without a transposed pack); ``"panels"``: a
    [Cout, ...] (or linear [N, K]) weight as `pack_panels` of its [K, N] transpose;
    ``"panels_io"``: a linear [K, N] weight as its `pack_panels`; ``"bias"``: a bias [N] padded
    with zeros to whole panels. An entry lives as
    long as its original (a weak reference; unloading the model frees it); the mapped
    original's pages are then no longer read."""
    key = (id(w), how)
    hit = _PACKED.get(key)
    if hit is not None and hit[0]() is w:
        return hit[1]
    if how == "panels":
        packed = pack_panels(w.reshape(w.shape[0], -1).T)
    elif how == "panels_io":
        packed = pack_panels(w)
    elif how == "bias":
        packed = simd.aligned_empty(-(-w.shape[0] // PANEL) * PANEL)
        packed[:w.shape[0]] = w
        packed[w.shape[0]:] = 0.0
    else:
        src = w[:, 0].transpose(1, 2, 0) if how == "taps" else w.reshape(w.shape[0], -1).T
        packed = simd.aligned_empty(src.shape)
        packed[...] = src
    if not w.flags.writeable:
        with _PACKED_LOCK:
            _PACKED[key] = (weakref.ref(w), packed)
        weakref.finalize(w, _PACKED.pop, key, None)
    return packed


def is_channels_last(a: np.ndarray) -> bool:
    """True when 4-D ``a`` [N, C, H, W] is stored channels-last: ``a.transpose(0, 2, 3, 1)``
    is C-contiguous (PyTorch's ``torch.channels_last`` memory format)."""
    return a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def _geometry(attrs) -> tuple:
    """A conv2d node's ``(stride, padding [top, bottom, left, right], dilation, groups)``."""
    return tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]), attrs["groups"]


def _conv2d_nhwc(x, w, b, code, attrs, yt, res_t=None) -> bool:
    """Convolution into the channels-last output ``yt`` [N, OH, OW, Cout] (contiguous), fused
    bias + activation. Depthwise: a direct kernel; 1x1: one GEMM over all pixels; other
    ungrouped kernels: NHWC im2col in blocks of pixels + GEMM. Returns False (nothing written)
    for grouped convolutions that are not depthwise, and for empty inputs or outputs.

    ``res_t``: a residual [N, OH, OW, Cout] float32 (contiguous), added before the activation
    in the GEMM's epilogue of an unpadded 1x1 convolution; for any other (a one-channel 1x1
    convolution is depthwise) returns False with nothing written."""
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), groups = _geometry(attrs)
    OH, OW = yt.shape[1], yt.shape[2]
    depthwise = groups == C and cout == C and cg == 1
    if (groups != 1 and not depthwise) or yt.size == 0 or C * kh * kw == 0:  # the NCHW kernels handle the rest
        return False
    if res_t is not None and (depthwise or not (kh == kw == 1 and pt == pb == pl == pr == 0)):
        return False  # only the 1x1 product adds a residual (one channel in, one out is "depthwise" too)
    bias = _EMPTY if b is None else b
    if (not depthwise and not (kh == kw == 1) and not is_channels_last(x) and C * kh * kw <= PATCH_MAX_DEPTH
            and GEMM != "blas" and x.dtype == np.float32 and (b is None or b.dtype == np.float32)):
        # an NCHW input with few channels (the graph's image, as in a stem): each block of output
        # pixels gathered and multiplied in registers, bias and activation applied in cache
        if cout % 16 == 0:  # no patch gathered: interior pixels read the image in place
            T.parallel_range(*_direct_job(np.ascontiguousarray(x), w, b, attrs, code, yt), work=yt.size * C * kh * kw)
            return True
        K = C * kh * kw
        panels = _packed(w, "panels")
        bvec = _zero_bias(panels.shape[0]) if b is None else _packed(b, "bias")
        T.parallel_range(conv2d_patches, N * OH, x, kh, kw, sh, sw, pt, pl, dh, dw, panels.reshape(-1), bvec, code,
                         GEMM_KINDS[GEMM], yt.reshape(-1), cout, OH, OW, work=yt.size * K)
        return True
    if not depthwise and not (kh == kw == 1) and not is_channels_last(x):
        # an NCHW input (the graph's image): NCHW im2col per image, the product transposed
        x = np.ascontiguousarray(x, dtype=np.float32)
        y3 = yt.reshape(N, OH * OW, cout)
        cols = np.empty((C * kh * kw, OH * OW), np.float32)
        wmat = _packed(w, "io")
        for n in range(N):
            T.parallel_range(im2col, C * kh * kw, x[n], 0, C, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols,
                             work=cols.size)
            np.matmul(cols.T, wmat, out=y3[n])
        _bias_act_rows(yt.reshape(N * OH * OW, cout), b, code)
        return True
    xt = x.transpose(0, 2, 3, 1)
    if not xt.flags.c_contiguous or xt.dtype != np.float32:
        xt = np.ascontiguousarray(xt, dtype=np.float32)
    if depthwise and C >= TILED_DEPTHWISE_MIN_CHANNELS:
        T.parallel_range(*_depthwise_tiled_job(xt, w, b, attrs, code, yt), work=yt.size * kh * kw)
        return True
    if depthwise:
        rows = N * OH
        cblk = C if rows >= 8 * T.num_threads() or C <= 64 else max(64, -(-C // (8 * T.num_threads() // rows + 1)))
        cblk = -(-cblk // 16) * 16
        nb = -(-C // cblk)
        T.parallel_range(depthwise_conv2d_nhwc, rows * nb, xt, _packed(w, "taps"), bias, b is not None, sh, sw, pt, pl,
                         dh, dw, code, yt, cblk, work=yt.size * kh * kw)
        return True
    y2 = yt.reshape(N * OH * OW, cout)
    if kh == kw == 1 and pt == pb == pl == pr == 0:
        src = xt if sh == sw == 1 else np.ascontiguousarray(xt[:, ::sh, ::sw][:, :OH, :OW])
        _product(src.reshape(-1, C), w, b, code, y2, None if res_t is None else res_t.reshape(-1, cout))
        return True
    pixels = N * OH * OW
    step = max(1, min(pixels, IM2COL_BLOCK // (C * kh * kw)))
    cols = np.empty((step, C * kh * kw), np.float32)
    for p0 in range(0, pixels, step):
        n = min(step, pixels - p0)
        T.parallel_range(im2col_nhwc, n, xt, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, p0, cols, work=n * C * kh * kw)
        _product(cols[:n], w, b, code, y2[p0:p0 + n])
    return True


@binder("conv2d")
def bind_conv2d(ins, outs, attrs):
    """A plan's convolution step with its job worked out once, for the three kinds that make up
    a MobileNet-style network, channels-last out (float32, a loaded model's weights): an
    unpadded stride-1 1x1 convolution of a channels-last input (`gemm` on the panels, bias,
    residual and activation in the epilogue), a depthwise one of at least
    `TILED_DEPTHWISE_MIN_CHANNELS` channels (`depthwise_conv2d_nhwc_tiled`), and the image stem:
    an NCHW (C-contiguous) input of few channels into a multiple of 16 (`conv2d_direct`); None
    for the rest (the plan calls `conv2d`). The call falls back to `conv2d` if `GEMM` changes
    after binding."""
    x, w, b, res = ins
    out = outs[0]
    C = x.shape[1]
    cout, cg, kh, kw = w.shape
    # an image stem (`conv2d_direct`): an NCHW input of few channels, as `_conv2d_nhwc` takes it
    stem = (x.flags.c_contiguous and x.ndim == 4 and attrs["groups"] == 1 and res is None and not kh == kw == 1
            and cout % 16 == 0 and 0 < C * kh * kw <= PATCH_MAX_DEPTH)
    if (GEMM == "blas" or not ((stem or is_channels_last(x)) and is_channels_last(out)) or out.size == 0
            or x.dtype != np.float32
            or w.dtype != np.float32 or w.flags.writeable or 0 in w.shape
            or (b is not None and (b.dtype != np.float32 or b.flags.writeable))):
        return None
    (sh, sw), (pt, pb, pl, pr), _, groups = _geometry(attrs)
    code = A.CODES[attrs.get("activation", "none")]
    xt, yt = x.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1)
    depthwise = groups == C == cout and cg == 1  # first, as in `_conv2d_nhwc` (1 channel in and out is depthwise)
    if not depthwise and groups == 1 and kh == kw == 1 and sh == sw == 1 and not any((pt, pb, pl, pr)):
        rt = None if res is None else res.transpose(0, 2, 3, 1)
        if rt is not None and not (rt.flags.c_contiguous and res.dtype == np.float32):
            return None
        x2, y2 = xt.reshape(-1, C), yt.reshape(-1, cout)
        packed = _panel_operands(x2, w, y2, b, "panels")
        if packed is None:
            return None
        job = _gemm_job(x2, *packed, y2, code, GEMM_KINDS[GEMM], None if rt is None else rt.reshape(-1, cout))
        fn, work = T.parallel_native, yt.size * C
    elif depthwise and C >= TILED_DEPTHWISE_MIN_CHANNELS and res is None:
        job, fn, work = _depthwise_tiled_job(xt, w, b, attrs, code, yt), T.parallel_range, yt.size * kh * kw
    elif stem:
        job, fn, work = _direct_job(x, w, b, attrs, code, yt), T.parallel_range, yt.size * C * kh * kw
    else:
        return None
    return _while_gemm_holds(fn, job, work, functools.partial(conv2d, ins, outs, attrs))


#: `bind_expand_depthwise` fuses an expansion into its depthwise convolution when the expanded
#: tensor takes at least this many bytes (a few times a core's L2; smaller ones mostly stay in
#: cache between the two steps)...
EXPAND_DEPTHWISE_MIN_BYTES = 4 << 20
#: ... and when the expansion's input channels are at most this many times the plane's width:
#: `expand_depthwise` multiplies one image row (W pixels) at a time, so it reads the whole
#: weight (Cin x C) for every W x C expanded values it keeps out of memory. Fused / unfused
#: time of EfficientNet-Lite0's pairs in one process (AMD EPYC VM, 2 threads): at b8, 0.51-0.79
#: at 112 and 56 pixels, 0.71-0.72 at 28 (Cin 40), 0.85-1.04 at 14 (Cin 80-112), 1.22-1.30 at 7
#: (Cin 192); at b1, 0.51-0.83 for the 4.8 MB pair at 112, but 1.26-1.54 for the 1.8 MB one at 56
EXPAND_DEPTHWISE_DEPTH_PER_PIXEL = 2


@pair_binder("conv2d", "conv2d")
def bind_expand_depthwise(ins, outs, attrs, ins2, outs2, attrs2):
    """An inverted-residual block's 1x1 expansion and the depthwise convolution that reads it,
    as one call (`expand_depthwise`): float32, a loaded model's weights, channels-last
    throughout, an unpadded stride-1 1x1 convolution without a residual into a multiple of 16
    channels, a depthwise one without a residual, an expanded tensor of at least
    `EXPAND_DEPTHWISE_MIN_BYTES` and at most `EXPAND_DEPTHWISE_DEPTH_PER_PIXEL` input channels
    per pixel of a row; None otherwise. The call runs the two kernels instead if `GEMM` changes
    after binding."""
    x, w1, b1, res1 = ins
    e, w2, b2, res2 = ins2
    y = outs2[0]
    if (GEMM == "blas" or res1 is not None or res2 is not None or e is not outs[0]
            or e.nbytes < EXPAND_DEPTHWISE_MIN_BYTES
            or not all(is_channels_last(a) and a.dtype == np.float32 for a in (x, e, y))
            or not all(w.dtype == np.float32 and not w.flags.writeable for w in (w1, w2))
            or not all(b is None or (b.dtype == np.float32 and not b.flags.writeable) for b in (b1, b2))):
        return None
    C, cin, kh1, kw1 = w1.shape
    (sh1, sw1), pad1, _, groups1 = _geometry(attrs)
    if (groups1 != 1 or (kh1, kw1, sh1, sw1) != (1, 1, 1, 1) or any(pad1) or C % 16 or cin != x.shape[1]
            or cin > EXPAND_DEPTHWISE_DEPTH_PER_PIXEL * x.shape[3]):
        return None
    if attrs2["groups"] != C or w2.shape[:2] != (C, 1) or e.shape[1] != C or y.shape[1] != C or y.size == 0:
        return None
    code1, code2 = A.CODES[attrs.get("activation", "none")], A.CODES[attrs2.get("activation", "none")]
    yt = y.transpose(0, 2, 3, 1)
    job = _expand_depthwise_job(x.transpose(0, 2, 3, 1), w1, b1, code1, w2, b2, attrs2, code2, yt)

    def unfused():
        conv2d(ins, outs, attrs)
        conv2d(ins2, outs2, attrs2)

    return _while_gemm_holds(T.parallel_range, job, e.size * cin + y.size * w2.shape[2] * w2.shape[3], unfused)


def _direct_job(x, w, b, attrs, code: int, yt) -> tuple:
    """`conv2d_direct`'s `parallel_range` arguments: x [N, C, H, W] C-contiguous float32, w
    [Cout, C, kh, kw] float32 with Cout a multiple of 16, b [Cout] float32 or None, yt
    [N, OH, OW, Cout] contiguous float32."""
    kh, kw = w.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw), _ = _geometry(attrs)
    bias = _zero_bias(-(-w.shape[0] // PANEL)) if b is None else np.ascontiguousarray(b)
    return (conv2d_direct, x.shape[0] * yt.shape[1], x, kh, kw, sh, sw, pt, pl, dh, dw, _packed(w, "io"), bias, code,
            GEMM_KINDS[GEMM], yt.reshape(-1), yt.shape[1], yt.shape[2])


def _expand_depthwise_job(xt, w1, b1, code1: int, w2, b2, attrs2, code2: int, yt) -> tuple:
    """`expand_depthwise`'s `parallel_range` arguments: xt [N, H, W, Cin] and yt [N, OH, OW, C]
    contiguous float32, w1 [C, Cin, 1, 1] and w2 [C, 1, kh, kw] float32 (a loaded model's), b1,
    b2 [C] float32 or None."""
    kh, kw = w2.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw), _ = _geometry(attrs2)
    panels = _packed(w1, "panels")
    groups = panels.shape[0]
    be = _zero_bias(groups) if b1 is None else _packed(b1, "bias")
    bd = _zero_bias(groups) if b2 is None else _packed(b2, "bias")
    return (expand_depthwise, xt.shape[0] * yt.shape[1], xt, panels.reshape(-1), be, code1, GEMM_KINDS[GEMM],
            row_block(xt.shape[2]), _packed(w2, "taps"), bd, kh, kw, sh, sw, pt, pl, dh, dw, code2, yt.reshape(-1),
            yt.shape[1], yt.shape[2], DEPTHWISE_RUN)


def _depthwise_tiled_job(xt, w, b, attrs, code: int, yt) -> tuple:
    """`depthwise_conv2d_nhwc_tiled`'s `parallel_range` arguments: xt [N, H, W, C] and yt
    [N, OH, OW, C] contiguous float32, w [C, 1, kh, kw], b [C] or None."""
    N, _, W, C = xt.shape
    kh, kw = w.shape[2:]
    (sh, sw), (pt, _, pl, _), (dh, dw), _ = _geometry(attrs)
    taps = np.array([(i * dh * W + j * dw) * C for i in range(kh) for j in range(kw)], np.int64)
    bias = _zero_bias(-(-C // PANEL)) if b is None else _packed(b, "bias")
    return (depthwise_conv2d_nhwc_tiled, N * yt.shape[1] * -(-C // DEPTHWISE_BLOCK), xt, _packed(w, "taps"), bias,
            sh, sw, pt, pl, dh, dw, code, yt, taps, DEPTHWISE_BLOCK, DEPTHWISE_RUN)


def _product(x2, w, b, code: int, y2, res2=None) -> None:
    """y2 [M, Cout] = act(x2 [M, Cin*kh*kw] @ w.reshape(Cout, -1).T + b [+ res2 [M, Cout]]):
    `gemm` on the weight's panels, bias, residual and activation in the tiles' epilogue; BLAS +
    the fused bias/activation pass where `_gemm_weight` declines (a weight that may change,
    ``NAC_GEMM=blas``).

    The panels at every depth and pixel count: once the tiles were free of reference counting
    (`simd.panel_tile_fast`), they beat OpenBLAS + the pass on all of EfficientNet-Lite0's 1x1
    shapes taken together (one thread, Intel Xeon: 11.6 against 14.2 ms over the 32; 0.36-0.67x
    the time at 12,544 and 3,136 pixels of depth 16-32), and at depths 3-16 (0.33-0.62x)."""
    if not _gemm_weight(x2, w, y2, b, code, "panels", res2):
        np.matmul(x2, _packed(w, "io"), out=y2)
        if res2 is not None:
            y2 += res2
        _bias_act_rows(y2, b, code)


def _bias_act_rows(y2: np.ndarray, b, code: int) -> None:
    """In place over a contiguous [rows, N] float32 product: act(y + bias[N]), over the cores."""
    if b is not None or code:
        T.parallel_range(A.bias_act_rows, y2.shape[0], y2, _EMPTY if b is None else b, b is not None, code,
                         work=y2.size * (4 if code else 1))


@njit(cache=True, nogil=True)
def im2col(x, c0, cg, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols, lo, hi):
    """cols[(c, i, j), (oh, ow)] = x[c0 + c, oh*sh - pt + i*dh, ow*sw - pl + j*dw] (0 outside).

    x: [C, H, W] float32 (one image); cols: [cg*kh*kw, OH*OW].
    """
    H, W = x.shape[1], x.shape[2]
    for r in range(lo, hi):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oh in range(OH):
            ih = oh * sh - pt + i * dh
            base = oh * OW
            if ih < 0 or ih >= H:
                for ow in range(OW):
                    cols[r, base + ow] = 0.0
                continue
            for ow in range(OW):
                iw = ow * sw - pl + j * dw
                cols[r, base + ow] = x[c0 + c, ih, iw] if 0 <= iw < W else 0.0


@kernel("conv2d")
def conv2d(ins, outs, attrs):
    """ATen convolution (2-D, NCHW): act(conv(x, weight, stride, padding, dilation, groups) + bias
    + residual).

    x [N, Cin, H, W], weight [Cout, Cin/groups, kh, kw], bias [Cout] or None, residual
    [N, Cout, OH, OW] or None (any memory layout; a skip connection, `fuse_residual_add`),
    padding [top, bottom, left, right]; out [N, Cout, OH, OW]. An unpadded 1x1 convolution into
    a channels-last output adds a channels-last residual in its GEMM's epilogue; the others add
    it after the convolution, then apply the activation.
    """
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    res = ins[3] if len(ins) > 3 else None
    out = outs[0]
    channels_last = is_channels_last(out)
    if not out.flags.c_contiguous and not channels_last:
        raise ValueError("conv2d writes a contiguous or channels-last output")
    if res is not None:
        code = A.CODES[attrs.get("activation", "none")]
        rt = res.transpose(0, 2, 3, 1)
        if (channels_last and rt.flags.c_contiguous and res.dtype == np.float32 and w.shape[2:] == (1, 1)
                and attrs["groups"] == 1 and not any(attrs["padding"])
                and _conv2d_nhwc(x, w, b, code, attrs, out.transpose(0, 2, 3, 1), rt)):
            return
        conv2d([x, w, b], outs, {**attrs, "activation": "none"})
        np.add(out, res, out=out)
        if code:
            flat = out.transpose(0, 2, 3, 1) if channels_last else out
            _bias_act_rows(flat.reshape(-1, flat.shape[-1]), None, code)
        return
    if channels_last and _conv2d_nhwc(x, w, b, A.CODES[attrs.get("activation", "none")], attrs,
                                      out.transpose(0, 2, 3, 1)):
        return
    if not out.flags.c_contiguous:  # a grouped convolution: computed in NCHW, then stored channels-last
        tmp = np.empty(out.shape, np.float32)
        conv2d([x, w, b], [tmp], attrs)
        out[...] = tmp
        return
    x = np.ascontiguousarray(x, dtype=np.float32)
    N, C, H, W = x.shape
    cout, cg, kh, kw = w.shape
    (sh, sw), (pt, pb, pl, pr), (dh, dw), groups = _geometry(attrs)
    code = A.CODES[attrs.get("activation", "none")]
    OH, OW = out.shape[2], out.shape[3]
    bias = _EMPTY if b is None else b
    if groups == C and cout == C and cg == 1:
        T.parallel_range(depthwise_conv2d, N * C, x, w, bias, b is not None, sh, sw, pt, pb, pl, pr, dh, dw, code, out,
                         work=out.size * kh * kw)
        return
    y = out.reshape(N, cout, OH * OW)
    if groups == 1 and kh == kw == 1 and sh == sw == 1 and pt == pb == pl == pr == 0:
        np.matmul(w.reshape(cout, C), x.reshape(N, C, H * W), out=y)
    else:
        cog = cout // groups
        cols = np.empty((cg * kh * kw, OH * OW), np.float32)
        for n in range(N):
            for g in range(groups):
                T.parallel_range(im2col, cg * kh * kw, x[n], g * cg, cg, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, cols,
                                 work=cols.size)
                np.matmul(w[g * cog:(g + 1) * cog].reshape(cog, -1), cols, out=y[n, g * cog:(g + 1) * cog])
    if b is not None or code:
        T.parallel_range(A.bias_act_channels, N * cout, y, bias, b is not None, code, work=y.size)
