"""numba.cuda kernels over the scalar maths of box_math.py.

NVVM contracts ``a * b + c`` into an FMA even with ``fastmath=False`` (docs/BUILD-NOTES.md), so
every float operation is a libdevice ``*_rn`` intrinsic (never fused; IEEE rounding, IEEE
division). libdevice has no ``dsub_rn``: ``a - b`` is ``dadd_rn(a, -b)``, the same IEEE result.
tests/gpu_logic/test_numba_ptx.py compiles these kernels to PTX without a GPU and checks for ``fma``,
``.f64`` in float32 kernels and approximate division.

In the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) there is no libdevice: the operations are the
plain operators on NumPy scalars of the working type, which are IEEE float32/float64 as well.

NMS: the boxes are visited in an order computed by the caller (class, score rank, index; for
multi_image_nms image, class, score rank, candidate), gathered into columns; the bitmask
(csrc/ops/nms/nms_bitmask.h's layout: W words per row from the row's own column block, built in
row tiles of at most MASK_BYTES) marks, for each box i and 64-wide column block, which later boxes
of i's class i suppresses; a scan keeps a box iff no kept box has marked it, one block per
independent range of boxes (an image), its ORs atomic because a word can straddle two ranges.
Column blocks whose first box's segment starts after a row block are dead: neither computed nor
read. diou_nms (issue 13) is the same path with DIoU-NMS's predicate (the mask kernel compiled a
second time with diou_suppress).

detect (issue 12): a thread per anchor for the per-anchor pass (box_math.detect_anchor, numba/cpu.py's
copy), multi_image_nms's suppression kernels, a thread per output slot for the padded outputs;
the candidate selection and visiting plan between them are host NumPy (numba/__init__.py).

matrix_nms (issue 13): three column kernels (compensation, denominator, decay), one thread per
box, each column's max and min taken in the reference's row order (numba/cpu.py's
matrix_nms_kernel, the same formulas from box_math.py); the plan and the finish are host NumPy.
"""
from __future__ import annotations

import types
import warnings

import numba
import numpy as np
from numba import cuda

from ..._constants import NMS_MASK_BYTES, nms_tile_rows
from . import box_math as M

SIM = bool(numba.config.ENABLE_CUDASIM)
_JIT = dict(fastmath=False)
WORD = 64  # boxes per mask word and per mask-kernel block
# The simulator runs threads ~2.7k/s: 2 scan threads still exercise the strided word loop.
SCAN_THREADS = 2 if SIM else 256
ONE64 = np.int64(1)
# Threads per block of the element kernels (a thread per box, anchor or output slot): the
# simulator runs every thread of a block, needed or not.
ELEMENT_THREADS = 32 if SIM else 128
# Threads of a Soft-NMS block (a power of two: the argmax is a tree reduction); the simulator's
# barriers are slow, 4 threads still exercise the strided loops and the reduction.
SOFT_THREADS = 4 if SIM else 256
# Bytes of one bitmask tile (rows x words): the native CUDA build's cap.
MASK_BYTES = NMS_MASK_BYTES


_add, _sub, _mul, _div = M.plain_add, M.plain_sub, M.plain_mul, M.plain_div


def _ops(dtype: np.dtype) -> dict:
    if SIM:
        return dict(ADD=_add, SUB=_sub, MUL=_mul, DIV=_div)
    from numba.cuda import libdevice as ld

    if dtype == np.float32:
        return dict(ADD=ld.fadd_rn, SUB=ld.fsub_rn, MUL=ld.fmul_rn, DIV=ld.fdiv_rn)
    dadd_rn = ld.dadd_rn

    def dsub_rn(a, b):
        return dadd_rn(a, -b)

    return dict(ADD=dadd_rn, SUB=cuda.jit(device=True, **_JIT)(dsub_rn), MUL=ld.dmul_rn, DIV=ld.ddiv_rn)


# ---- kernels (compiled per dtype by _box_math.specialise) ---------------------------------------

def box_iou_kernel(b1, b2, out, fmt, kind, eps):
    """out[b, i, j] = metric(b1[b, i], b2[b, j]); grid x over j, y over i, z over b."""
    j, i = cuda.grid(2)
    b = cuda.blockIdx.z
    if i < out.shape[1] and j < out.shape[2]:
        a0, a1, a2, a3 = b1[b, i, 0], b1[b, i, 1], b1[b, i, 2], b1[b, i, 3]
        c0, c1, c2, c3 = b2[b, j, 0], b2[b, j, 1], b2[b, j, 2], b2[b, j, 3]
        out[b, i, j] = pair_iou(a0, a1, a2, a3, c0, c1, c2, c3, box_area(a0, a1, a2, a3, fmt),
                                box_area(c0, c1, c2, c3, fmt), fmt, kind, eps)


def nms_gather_column(boxes, q, cols, p):
    """cols[:, p] = (x1, y1, x2, y2, area) of box q: the column layout of the NMS kernels
    (nms_gather_kernel, soft_nms_kernel)."""
    x1, y1, x2, y2 = boxes[q, 0], boxes[q, 1], boxes[q, 2], boxes[q, 3]
    cols[0, p] = x1
    cols[1, p] = y1
    cols[2, p] = x2
    cols[3, p] = y2
    cols[4, p] = nms_area(x1, y1, x2, y2)


def nms_gather_kernel(boxes, order, cls, has_cls, cols, scls):
    """cols[:, p] = (x1, y1, x2, y2, area) of box order[p]; scls[p] its class (0 without)."""
    p = cuda.grid(1)
    if p < order.shape[0]:
        q = order[p]
        nms_gather_column(boxes, q, cols, p)
        scls[p] = cls[q] if has_cls else 0


def iou_suppress(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, thr, beta):
    """nms's predicate (nms.h NmsIouSuppress); beta unused."""
    return nms_suppresses(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, thr)


def diou_suppress(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, thr, beta):
    """diou_nms's predicate (diou_nms.h DiouNmsSuppress): ``(double)measure > thr`` is
    ``measure > thr`` with thr = nms_threshold(iou_threshold) in T (NaN fails both)."""
    return diou_nms_measure(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, beta) > thr


def nms_mask_kernel(cols, scls, seg, thr, beta, mask, row0):
    """One tile of the bitmask: rows row0 .. row0 + 64 * gridDim.y - 1, each storing W =
    mask.shape[1] words, word cb of row i (row block rb) at mask[i - row0, cb - rb]
    (csrc/ops/nms/nms_bitmask.h's layout). Block (x, y), thread t: row i = 64 rb + t,
    rb = row0 / 64 + y, over column blocks cb = rb + x, rb + x + gridDim.x, ... (cb - rb < W),
    stopping at the first dead one -- whose first box's segment starts after the block's last row
    (``seg`` is non-decreasing) -- as the scan stops there too. Bit c of the word is set iff box i
    suppresses box j = 64 cb + c, j > i, of i's class (equal ``scls``): SUPPRESS, iou_suppress
    (nms_mask_kernel) or diou_suppress (diou_nms_mask_kernel, the same code compiled with it)."""
    n = cols.shape[1]
    ncb = (n + WORD - 1) // WORD
    W = mask.shape[1]
    rb = row0 // WORD + cuda.blockIdx.y
    if rb >= ncb:  # uniform over the block
        return
    t = cuda.threadIdx.x
    sh = cuda.shared.array((5, 64), SHARED_T)
    shc = cuda.shared.array(64, numba.int64)
    i = rb * WORD + t
    row_ok = i < n
    r = i if row_ok else n - 1  # rows past n load a valid box and store nothing
    ax1, ay1, ax2, ay2, aa, ci = cols[0, r], cols[1, r], cols[2, r], cols[3, r], cols[4, r], scls[r]
    last = rb * WORD + WORD - 1
    if last > n - 1:
        last = n - 1
    cb = rb + cuda.blockIdx.x
    while cb < ncb and cb - rb < W and seg[cb * WORD] <= last:  # uniform over the block
        j0 = cb * WORD
        cuda.syncthreads()  # the previous column block is no longer read
        if j0 + t < n:
            for k in range(5):
                sh[k, t] = cols[k, j0 + t]
            shc[t] = scls[j0 + t]
        cuda.syncthreads()
        if row_ok:
            bits = np.int64(0)
            start = t + 1 if cb == rb else 0
            stop = n - j0 if n - j0 < WORD else WORD
            for c in range(start, stop):
                if shc[c] == ci and SUPPRESS(ax1, ay1, ax2, ay2, aa, sh[0, c], sh[1, c], sh[2, c],
                                             sh[3, c], sh[4, c], thr, beta):
                    bits |= ONE64 << c
            mask[i - row0, cb - rb] = bits
        cb += cuda.gridDim.x


def nms_scan_kernel(mask, row0, row1, ranges, seg, removed, keep):
    """Block b scans rows max(row0, ranges[b, 0]) .. min(row1, ranges[b, 1]) - 1 of the tile in
    order (rows of different blocks never share a segment; rows outside every range are never
    kept): keep[i] = 1 iff bit i of ``removed``
    (zero-initialised, persisting over tiles) is clear when row i is reached; a kept row ORs its
    live mask words into ``removed`` -- atomically, as a word may straddle two blocks' rows."""
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    b = cuda.blockIdx.x
    W = mask.shape[1]
    n = seg.shape[0]
    ncb = (n + WORD - 1) // WORD
    lo = row0 if row0 > ranges[b, 0] else ranges[b, 0]
    hi = row1 if row1 < ranges[b, 1] else ranges[b, 1]
    for i in range(lo, hi):
        w = i // WORD
        alive = ((removed[w] >> (i % WORD)) & 1) == 0
        cuda.syncthreads()  # every thread has read word w before any writes it
        if alive:
            if t == 0:
                keep[i] = 1
            stop = w + W if w + W < ncb else ncb
            x = w + t
            while x < stop and seg[x * WORD] <= i:  # later words are dead (not even written)
                cuda.atomic.or_(removed, x, mask[i - row0, x - w])
                x += nt
        cuda.syncthreads()  # the ORs are visible before the next row is read


# ---- matrix_nms (issue 13): numba/cpu.py's matrix_nms_kernel, one thread per column ----------------

def matrix_nms_comp_kernel(cols, seg_of, comp):
    """comp[p] = the NaN-skipping max (from 0) of nms_iou(i, p) over the earlier positions i of
    p's class segment (seg_of[p]: its first position), i ascending."""
    p = cuda.grid(1)
    if p < comp.shape[0]:
        c = ZERO
        for i in range(seg_of[p], p):
            d = nms_iou(cols[0, i], cols[1, i], cols[2, i], cols[3, i], cols[4, i], cols[0, p],
                        cols[1, p], cols[2, p], cols[3, p], cols[4, p])
            if d > c:
                c = d
        comp[p] = c


def matrix_nms_den_kernel(comp, kernel, neg_sigma, den):
    p = cuda.grid(1)
    if p < den.shape[0]:
        den[p] = matrix_nms_term(comp[p], kernel, neg_sigma)


def matrix_nms_decay_kernel(cols, seg_of, den, kernel, neg_sigma, decay):
    """decay[p] = the NaN-skipping min (from 1) of num(iou(i, p)) / den[i], i ascending."""
    p = cuda.grid(1)
    if p < decay.shape[0]:
        m = ONE
        for i in range(seg_of[p], p):
            d = nms_iou(cols[0, i], cols[1, i], cols[2, i], cols[3, i], cols[4, i], cols[0, p],
                        cols[1, p], cols[2, p], cols[3, p], cols[4, p])
            w = DIV(matrix_nms_term(d, kernel, neg_sigma), den[i])
            if w < m:
                m = w
        decay[p] = m


# ---- detect (issue 12): the per-anchor pass and the fixed-size outputs ------------------------------

def detect_candidates_kernel(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls):
    """A thread per anchor r = b * A + a: box_math.detect_anchor (numba/cpu.py's, one copy)."""
    r = cuda.grid(1)
    A = scores.shape[1]
    if r < scores.shape[0] * A:
        b = r // A
        detect_anchor(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls, b, r - b * A)


def detect_output_kernel(xyxy, cs, cls, picks, Cc, multi_label, ob, os_, oc, oi):
    """A thread per output slot (b, k) (detect_gpu.h's detect_gpu_output): picks[b, k] is the
    k-th kept candidate q of image b (-1 past its count) -> its xyxy corners (anchor q // Cc),
    score cs[b, q], class (q % Cc multi-label, else cls[b, anchor]) and anchor; 0 / -1 padding."""
    r = cuda.grid(1)
    K = picks.shape[1]
    if r < picks.shape[0] * K:
        b = r // K
        k = r - b * K
        q = picks[b, k]
        if q < 0:
            for d in range(4):
                ob[b, k, d] = ZERO
            os_[b, k] = ZERO
            oc[b, k] = -1
            oi[b, k] = -1
        else:
            a = q // Cc
            for d in range(4):
                ob[b, k, d] = xyxy[b, a, d]
            os_[b, k] = cs[b, q]
            oc[b, k] = q - a * Cc if multi_label else cls[b, a]
            oi[b, k] = a


DETECT_KERNELS = ("detect_candidates_kernel", "detect_output_kernel")


# ---- soft_nms, multi_image_soft_nms (issue 13): one block per (image, class) segment ---------------

def soft_nms_kernel(boxes, scores, order, seg, method, thr, sigma, sthr, limit, cols, s, alive,
                    out_idx, out_s, counts):
    """Block g runs Soft-NMS on segment g: positions seg[g] .. seg[g + 1] - 1 of ``order`` (input
    indices, ascending in the segment), numba/cpu.py's soft_nms_segment in parallel. Each
    position is owned by one thread (strided), which gathers its box into cols and its score into
    s (alive unless below sthr). Per pick: each thread's best alive position under ranks_before,
    then a tree reduction (the same pick in any order: a strict total order); the pick is
    written at out_*[seg[g] + kept]; every other alive position is rescaled by its owner
    (soft_nms_weight of nms_iou, the pick first) and dies below sthr. thr (linear decay) and sthr
    are T-rounded so that the compares in T are the reference's double ones. counts[g] = picks."""
    g = cuda.blockIdx.x
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    lo, hi = seg[g], seg[g + 1]
    red_s = cuda.shared.array(SOFT_THREADS, SHARED_T)
    red_p = cuda.shared.array(SOFT_THREADS, numba.int64)
    for p in range(lo + t, hi, nt):
        q = order[p]
        nms_gather_column(boxes, q, cols, p)
        v = scores[q]
        s[p] = v
        alive[p] = 0 if v < sthr else 1
    kept = 0
    while kept < limit:  # uniform over the block (kept and the pick come from shared memory)
        cuda.syncthreads()  # rescales and kills of the previous pick are visible
        a = -1
        sa = ZERO
        for p in range(lo + t, hi, nt):
            if alive[p] and (a < 0 or ranks_before(s[p], order[p], sa, order[a])):
                a = p
                sa = s[p]
        red_p[t] = a
        red_s[t] = sa
        step = nt // 2
        while step > 0:
            cuda.syncthreads()
            if t < step:
                b = red_p[t + step]
                if b >= 0 and (red_p[t] < 0 or ranks_before(red_s[t + step], order[b], red_s[t],
                                                            order[red_p[t]])):
                    red_p[t] = b
                    red_s[t] = red_s[t + step]
            step //= 2
        cuda.syncthreads()
        a = red_p[0]
        if a < 0:
            break
        if t == 0:
            out_idx[lo + kept] = order[a]
            out_s[lo + kept] = s[a]
        ax1, ay1, ax2, ay2, aa = cols[0, a], cols[1, a], cols[2, a], cols[3, a], cols[4, a]
        for q in range(lo + t, hi, nt):
            if q == a:
                alive[q] = 0
            elif alive[q]:
                iou = nms_iou(ax1, ay1, ax2, ay2, aa, cols[0, q], cols[1, q], cols[2, q], cols[3, q],
                              cols[4, q])
                ns = MUL(s[q], soft_nms_weight(iou, method, thr, sigma))
                s[q] = ns
                if ns < sthr:
                    alive[q] = 0
        kept += 1
        cuda.syncthreads()  # red_p[0] is read by all before the next pick overwrites it
    if t == 0:
        counts[g] = kept


SOFT_KERNELS = ("soft_nms_kernel",)
MATRIX_KERNELS = ("matrix_nms_comp_kernel", "matrix_nms_den_kernel", "matrix_nms_decay_kernel")
KERNELS = (("box_iou_kernel", "nms_gather_kernel", "nms_mask_kernel", "diou_nms_mask_kernel",
            "nms_scan_kernel") + MATRIX_KERNELS + DETECT_KERNELS + SOFT_KERNELS)
_MASK_KERNELS = ("nms_mask_kernel", "diou_nms_mask_kernel")  # nms_mask_kernel per predicate
_SPECS: dict = {}


def _specialise(dt: np.dtype, ops: dict | None = None) -> object:
    kern = cuda.jit(**_JIT)
    dev = cuda.jit(device=True, **_JIT)
    exp_src = M.exp_eval_f32 if dt == np.float32 else M.exp_eval_f64
    # dk_exp, dk_log, dk_pow, diou_nms_measure, matrix_nms_term (box_math's soft_nms / diou_nms /
    # matrix_nms sections) for matrix_nms and diou_nms
    extra = (("EXP_EVAL", exp_src, dev), *((f.__name__, f, dev) for f in M.SOFT_NMS_FUNCS + M.DIOU_MATRIX_FUNCS),
             ("iou_suppress", iou_suppress, dev), ("diou_suppress", diou_suppress, dev),
             ("nms_gather_column", nms_gather_column, dev),
             *((name, globals()[name], kern) for name in KERNELS if name not in _MASK_KERNELS))
    env = dict(np=np, numba=numba, cuda=cuda, WORD=WORD, ONE64=ONE64, SOFT_THREADS=SOFT_THREADS,
               SHARED_T=numba.float32 if dt == np.float32 else numba.float64, **M.soft_nms_constants(dt))
    env["SUPPRESS"] = None  # bound below, per mask kernel
    k = M.specialise(dt, ops or _ops(dt), dev, extra, env)
    # The one mask kernel, compiled once per predicate: its SUPPRESS global is the predicate.
    for name, pred in zip(_MASK_KERNELS, (k.iou_suppress, k.diou_suppress)):
        g = types.FunctionType(nms_mask_kernel.__code__, dict(k.ns, SUPPRESS=pred), name)
        k.py[name] = g
        setattr(k, name, kern(g))
    return k


def kernels(dtype) -> object:
    """The compiled (lazily, on first launch) kernels for float32 or float64."""
    return M.per_dtype(_SPECS, _specialise, dtype)


def signatures(dtype) -> dict:
    """Explicit signatures of the kernels (for compile_ptx)."""
    T = numba.from_dtype(np.dtype(dtype))
    i64 = numba.int64
    return {
        "box_iou_kernel": (T[:, :, ::1], T[:, :, ::1], T[:, :, ::1], i64, i64, T),
        "nms_gather_kernel": (T[:, ::1], i64[::1], i64[::1], numba.boolean, T[:, ::1], i64[::1]),
        "nms_mask_kernel": (T[:, ::1], i64[::1], i64[::1], T, T, i64[:, ::1], i64),
        "diou_nms_mask_kernel": (T[:, ::1], i64[::1], i64[::1], T, T, i64[:, ::1], i64),
        "nms_scan_kernel": (i64[:, ::1], i64, i64, i64[:, ::1], i64[::1], i64[::1], numba.uint8[::1]),
        "matrix_nms_comp_kernel": (T[:, ::1], i64[::1], T[::1]),
        "matrix_nms_den_kernel": (T[::1], i64, T, T[::1]),
        "matrix_nms_decay_kernel": (T[:, ::1], i64[::1], T[::1], i64, T, T[::1]),
        "soft_nms_kernel": (T[:, ::1], T[::1], i64[::1], i64[::1], i64, T, T, T, i64, T[:, ::1], T[::1],
                            numba.uint8[::1], i64[::1], T[::1], i64[::1]),
        "detect_candidates_kernel": (T[:, :, ::1], T[:, :, ::1], T[:, ::1], numba.boolean, i64,
                                     numba.boolean, T[:, :, ::1], T[:, ::1], i64[:, ::1]),
        "detect_output_kernel": (T[:, :, ::1], T[:, ::1], i64[:, ::1], i64[:, ::1], i64, numba.boolean,
                                 T[:, :, ::1], T[:, ::1], i64[:, ::1], i64[:, ::1]),
    }


def ptx(dtype, cc: tuple = (9, 0), plain_operators: bool = False, names: tuple | None = None) -> dict:
    """PTX of every kernel (or of the kernels ``names``) for ``dtype``, compiled without a GPU
    (needs NVVM and libdevice, e.g. a CUDA toolkit under CUDA_HOME or /usr/local/cuda). For a
    lint: uses its own, fresh specialisation, never the one that launches kernels.
    ``plain_operators`` compiles with + - * / instead of the *_rn intrinsics (the lint's control:
    NVVM then emits FMAs)."""
    import numba.cuda.dispatcher as D

    plain = {n: cuda.jit(device=True, **_JIT)(f)
             for n, f in (("ADD", _add), ("SUB", _sub), ("MUL", _mul), ("DIV", _div))}
    k = _specialise(np.dtype(dtype), plain if plain_operators else None)
    # numba compiles a device function for the *current device's* compute capability even under
    # compile_ptx(cc=...), which fails without a driver: tell it the target instead.
    saved = D.get_current_device
    D.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        return {name: cuda.compile_ptx(k.py[name], sig, cc=cc)[0]
                for name, sig in signatures(dtype).items() if names is None or name in names}
    finally:
        D.get_current_device = saved


# ---- launches ------------------------------------------------------------------------------------

def _configure(kernel, grid, block, stream):
    """kernel[grid, block, stream] without numba's low-occupancy NumbaPerformanceWarning, which it
    raises for every grid under 128 blocks (small inputs; the one-block NMS scan by design)."""
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return kernel[grid, block, stream]


def box_iou(b1, b2, out, kind: int, fmt: int, eps: float, stream) -> None:
    """b1 [B, N, 4], b2 [B, M, 4], out [B, N, M]: numba device arrays of one float dtype."""
    B, N, M_ = out.shape
    if B == 0 or N == 0 or M_ == 0:
        return
    if (N + 7) // 8 > 65535 or B > 65535:
        raise ValueError("box_iou (numba.cuda): N/8 and the batch size must be <= 65535")
    block = (32, 8)
    grid = ((M_ + 31) // 32, (N + 7) // 8, B)
    dt = np.dtype(out.dtype)
    _configure(kernels(dt).box_iou_kernel, grid, block, stream)(b1, b2, out, fmt, kind, dt.type(eps))


def numba_alloc(stream):
    """Scratch allocator of numba device arrays: alloc(shape, dtype, zero)."""
    def alloc(shape, dtype, zero: bool):
        if zero:
            return cuda.to_device(np.zeros(shape, dtype), stream=stream)
        return cuda.device_array(shape, dtype=dtype, stream=stream)

    return alloc


def _gather(k, boxes, order, cls, stream, alloc):
    n = order.shape[0]
    dt = np.dtype(boxes.dtype)
    cols = alloc((5, n), dt, False)
    scls = alloc((n,), np.dtype(np.int64), False)
    has_cls = cls is not None
    if not has_cls:
        cls = alloc((1,), np.dtype(np.int64), False)
    _configure(k.nms_gather_kernel, (n + ELEMENT_THREADS - 1) // ELEMENT_THREADS, ELEMENT_THREADS, stream)(
        boxes, order, cls, has_cls, cols, scls)
    return cols, scls


def _suppress(k, cols, scls, seg, ranges, width: int, thr, stream, alloc, beta=None):
    """Keep flags (uint8 [n]) by the tiled bitmask and the per-block scan (see the kernels);
    ``beta`` (in T) selects DIoU-NMS's predicate, None nms's."""
    mask_kernel = k.nms_mask_kernel if beta is None else k.diou_nms_mask_kernel
    beta = cols.dtype.type(1) if beta is None else beta
    n = cols.shape[1]
    ncb = (n + WORD - 1) // WORD
    width = max(1, min(width, ncb))
    R = max(nms_tile_rows(n, width, MASK_BYTES), WORD)  # one row block even for n = 0
    try:
        mask = alloc((R, width), np.dtype(np.int64), False)
    except Exception as e:  # numba raises CudaAPIError for an out-of-memory allocation
        raise MemoryError(f"nms (numba.cuda): a {R}x{width} suppression bitmask tile needs "
                          f"{R * width * 8 / 2**30:.2f} GiB of GPU memory (lower "
                          f"DETKERNELS_NMS_MASK_BYTES): {e}") from e
    removed = alloc((ncb,), np.dtype(np.int64), True)
    keep = alloc((n,), np.dtype(np.uint8), True)
    nblocks = ranges.shape[0]
    for row0 in range(0, n, R):
        rb0 = row0 // WORD
        nrb = min(ncb, (row0 + R) // WORD) - rb0
        gx = max(1, min(width, ncb - rb0, 16384 // nrb))
        _configure(mask_kernel, (gx, nrb), WORD, stream)(cols, scls, seg, thr, beta, mask, row0)
        _configure(k.nms_scan_kernel, nblocks, SCAN_THREADS, stream)(
            mask, row0, min(n, row0 + R), ranges, seg, removed, keep)
    return keep


def nms_keep(boxes, order, cls, thr: float, stream, beta: float | None = None):
    """Flags (uint8 device array) over positions of ``order``: 1 where that box is kept.
    boxes [n, 4], order int64 [n] (visiting order: class, then score rank), cls int64 [n] or None;
    ``beta``: DIoU-NMS (diou_nms's predicate, beta rounded to T) instead of nms."""
    n = order.shape[0]
    if n == 0:
        return cuda.device_array(0, dtype=np.uint8, stream=stream)
    dt = np.dtype(boxes.dtype)
    k = kernels(dt)
    alloc = numba_alloc(stream)
    cols, scls = _gather(k, boxes, order, cls, stream, alloc)
    # One scan block; every column block is live (seg all 0): full-width rows, as classes are
    # told apart by scls alone.
    seg = cuda.to_device(np.zeros(n, np.int64), stream=stream)
    ranges = cuda.to_device(np.array([[0, n]], np.int64), stream=stream)
    return _suppress(k, cols, scls, seg, ranges, (n + WORD - 1) // WORD, M.nms_threshold(thr, dt),
                     stream, alloc, None if beta is None else dt.type(beta))


def nms_keep_segments(boxes, rows, seg, ranges, width: int, thr: float, stream, alloc=None):
    """Flags (uint8 device array [n]) over positions p: 1 where the box visited at p is kept.
    boxes [R, 4]; rows int64 [n]: box row visited at p; seg int64 [n]: start of p's segment
    (non-decreasing; positions outside any segment are segments of their own, seg[p] = p);
    ranges int64 [nb, 2]: the [start, end) position ranges scanned by separate blocks (images;
    positions outside every range, such as an image's score-filtered tail, are never kept), no
    segment straddling two; width: mask words per row, at least ceil(longest segment / 64) + 1.
    alloc(shape, dtype, zero) makes the scratch arrays (default: numba's allocator; the torch
    path passes torch's stream-ordered caching allocator, so nothing synchronises)."""
    n = rows.shape[0]
    alloc = alloc or numba_alloc(stream)
    if n == 0:
        return alloc((0,), np.dtype(np.uint8), True)
    dt = np.dtype(boxes.dtype)
    k = kernels(dt)
    cols, _ = _gather(k, boxes, rows, None, stream, alloc)
    return _suppress(k, cols, seg, seg, ranges, width, M.nms_threshold(thr, dt), stream, alloc)


def matrix_nms_decay(boxes, order: np.ndarray, seg: np.ndarray, kernel: int, sigma: float, stream):
    """decay (host, T) over positions of ``order`` (host int64; class then score rank), ``seg``
    the class segment starts plus n: the three column kernels on ``boxes`` (numba device array
    [N, 4]) on ``stream``, one copy back."""
    n = order.shape[0]
    dt = np.dtype(boxes.dtype)
    k = kernels(dt)
    if n == 0:
        return np.empty(0, dt)
    threads = 128
    grid = (n + threads - 1) // threads
    cols = cuda.device_array((5, n), dt, stream=stream)
    d_order = cuda.to_device(order, stream=stream)
    scls = cuda.device_array(n, np.int64, stream=stream)  # no classes: the gather writes 0s
    _configure(k.nms_gather_kernel, grid, threads, stream)(boxes, d_order, d_order, False, cols, scls)
    seg_of = cuda.to_device(np.repeat(seg[:-1], np.diff(seg)), stream=stream)
    comp = cuda.device_array(n, dt, stream=stream)
    den = cuda.device_array(n, dt, stream=stream)
    decay = cuda.device_array(n, dt, stream=stream)
    neg = dt.type(-float(sigma))
    _configure(k.matrix_nms_comp_kernel, grid, threads, stream)(cols, seg_of, comp)
    _configure(k.matrix_nms_den_kernel, grid, threads, stream)(comp, kernel, neg, den)
    _configure(k.matrix_nms_decay_kernel, grid, threads, stream)(cols, seg_of, den, kernel, neg, decay)
    out = decay.copy_to_host(stream=stream)
    stream.synchronize()
    return out


def detect_candidates(boxes, scores, obj, fmt: int, multi_label: bool, xyxy, cs, cls, stream) -> None:
    """detect's per-anchor pass on ``stream``: boxes [B, A, 4], scores [B, A, C], obj [B, A] or
    None (numba device arrays, C-contiguous, one float dtype) -> xyxy [B, A, 4], cs [B, A * C]
    (multi-label) or [B, A], cls int64 [B, A] (see detect_candidates_kernel)."""
    B, A = scores.shape[0], scores.shape[1]
    if B * A == 0:
        return
    dt = np.dtype(boxes.dtype)
    has_obj = obj is not None
    if not has_obj:  # never read (has_obj is False): a typed placeholder
        obj = cuda.device_array((1, 1), dt, stream=stream)
    threads = ELEMENT_THREADS
    _configure(kernels(dt).detect_candidates_kernel, (B * A + threads - 1) // threads, threads, stream)(
        boxes, scores, obj, has_obj, fmt, bool(multi_label), xyxy, cs, cls)


def detect_outputs(xyxy, cs, cls, picks, Cc: int, multi_label: bool, ob, os_, oc, oi, stream) -> None:
    """detect's fixed-size outputs ob [B, K, 4], os_ [B, K], oc, oi int64 [B, K] on ``stream``
    from picks int64 [B, K] (the kept candidates, -1 padded; see detect_output_kernel)."""
    B, K = picks.shape
    if B * K == 0:
        return
    threads = ELEMENT_THREADS
    _configure(kernels(np.dtype(xyxy.dtype)).detect_output_kernel, (B * K + threads - 1) // threads,
               threads, stream)(xyxy, cs, cls, picks, Cc, bool(multi_label), ob, os_, oc, oi)


def _at_least(x: float, dt: np.dtype) -> np.generic:
    """Smallest value of ``dt`` >= x: for v of that dtype, ``v < result`` iff ``float(v) < x``."""
    t = dt.type(x)
    if float(t) < x:
        t = np.nextafter(t, dt.type(np.inf))
    return t


def soft_nms(boxes, scores, order: np.ndarray, seg: np.ndarray, method: int, thr: float, sigma: float,
             sthr: float, limit: int, stream) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numba/cpu.py soft_nms's contract (host order / seg in, host picks out) on the device:
    boxes [R, 4] and scores [R] numba device arrays, one block per segment (soft_nms_kernel) on
    ``stream``; the picks are copied back (a host sync)."""
    from .cpu import segment_picks

    dt = np.dtype(boxes.dtype)
    n, nseg = order.shape[0], seg.shape[0] - 1
    out_idx = np.empty(n, np.int64)
    out_s = np.empty(n, dt)
    if n == 0 or nseg == 0 or limit <= 0:
        return segment_picks(out_idx, out_s, seg, np.zeros(nseg, np.int64))
    cols = cuda.device_array((5, n), dt, stream=stream)
    s = cuda.device_array(n, dt, stream=stream)
    alive = cuda.device_array(n, np.uint8, stream=stream)
    d_idx = cuda.device_array(n, np.int64, stream=stream)
    d_s = cuda.device_array(n, dt, stream=stream)
    d_counts = cuda.device_array(nseg, np.int64, stream=stream)
    _configure(kernels(dt).soft_nms_kernel, nseg, SOFT_THREADS, stream)(
        boxes, scores, cuda.to_device(order, stream=stream), cuda.to_device(seg, stream=stream), method,
        M.nms_threshold(thr, dt), dt.type(sigma), _at_least(float(sthr), dt), int(limit), cols, s, alive,
        d_idx, d_s, d_counts)
    d_idx.copy_to_host(out_idx, stream=stream)
    d_s.copy_to_host(out_s, stream=stream)
    counts = d_counts.copy_to_host(stream=stream)
    stream.synchronize()
    return segment_picks(out_idx, out_s, seg, counts)
