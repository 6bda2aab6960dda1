"""Numba CPU kernels (``@njit``): loops over the scalar maths of box_math.py.

``fastmath=False`` (no contraction, IEEE division) and ``error_model="numpy"`` (0/0 is NaN, not a
ZeroDivisionError) make them bit-exact with the NumPy reference. Imported (and so numba imported)
on the first call of a Numba CPU kernel; compiled per dtype on first use.
"""
from __future__ import annotations

import types

import numba
import numpy as np
from numba import prange

from . import box_math as M

_JIT = dict(fastmath=False, error_model="numpy", nogil=True)


_add, _sub, _mul, _div = M.plain_add, M.plain_sub, M.plain_mul, M.plain_div


def box_iou_kernel(b1, b2, out, eps):
    """b1 [B, N, 4], b2 [B, M, 4] -> out [B, N, M]; rows in parallel (each element is computed by
    one thread: results do not depend on the thread count). FMT and KIND are compile-time
    constants (one kernel per pair, see iou_kernel), so the inner loop has no format/kind
    branches: 2-4x faster than passing them at run time."""
    B, N, M = out.shape
    for r in prange(B * N):
        b = r // N
        i = r - b * N
        a0, a1, a2, a3 = b1[b, i, 0], b1[b, i, 1], b1[b, i, 2], b1[b, i, 3]
        area_a = box_area(a0, a1, a2, a3, FMT)
        for j in range(M):
            c0, c1, c2, c3 = b2[b, j, 0], b2[b, j, 1], b2[b, j, 2], b2[b, j, 3]
            out[b, i, j] = pair_iou(a0, a1, a2, a3, c0, c1, c2, c3, area_a,
                                    box_area(c0, c1, c2, c3, FMT), FMT, KIND, eps)


def nms_gather(boxes, order, x1, y1, x2, y2, ar):
    """Coordinates and area of box order[p] at position p."""
    for p in range(order.shape[0]):
        q = order[p]
        x1[p], y1[p], x2[p], y2[p] = boxes[q, 0], boxes[q, 1], boxes[q, 2], boxes[q, 3]
        ar[p] = nms_area(x1[p], y1[p], x2[p], y2[p])


# ---- pruned NMS of large sparse segments (issue 16) ----------------------------------------------
# The numba twin of csrc/ops/nms/nms_sparse.cpp, with ONE level of cells instead of its 16 (and
# a dense grid, coarsened until it has about as many cells as boxes, instead of hashed levels).
#
# Why it is exact: the argument of nms_sparse.cpp's header, unchanged. Greedy NMS keeps candidate
# j iff no KEPT box before it suppresses it; here only the kept boxes that can suppress j are
# tested, with the same nms_suppresses call, so every keep decision (and so the kept set and its
# order) is the plain loop's. With thr >= 0 (thr already rounded to T by nms_threshold), a pair
# with w = 0 or h = 0 never suppresses: its IoU is +0, -0 or NaN, never > thr. Boxes are classed
# by their own four coordinates:
#  * inert (finite, x1 >= x2 or y1 >= y2): w = 0 or h = 0 against any partner, in either role;
#    kept, never indexed, never tested;
#  * regular (finite, x1 < x2, y1 < y2): for two regular boxes w > 0 iff a.x1 < b.x2 and
#    b.x1 < a.x2 (finite IEEE subtraction is exact in sign), h likewise; a kept regular box a
#    can suppress b only if b.x1 - W < a.x1 < b.x2 and b.y1 - H < a.y1 < b.y2, W and H bounding
#    every exact width and height in the grid (the double widths inflated by 2^-40);
#  * wide: any NaN/inf coordinate (wild), or regular but larger than a cell: no shortcut, a kept
#    wide box is tested against every later non-inert candidate, a non-finite candidate against
#    every kept box.
# A kept regular box sits in the cell of its corner (x1, y1); sparse_cell is monotone (rounded
# subtraction, a positive scale, clamping to the grid), so a.x1's cell lies between the cells of
# the rounded b.x1 - W and of b.x2 whatever the rounding: the window holds every candidate
# suppressor. The fallbacks to the plain loop (return False): path PLAIN; !(thr >= 0) (negative
# thresholds suppress through IoU 0; NaN left to the plain loop as natively); fewer than 2 boxes;
# and with the automatic rule, nms_sparse.cpp's rule: below S_MIN_BOXES boxes, more than
# 1/S_WILD_SHARE of a sample wild, or a sampled query share above S_QUERY_SHARE (see the
# measurements in nms_sparse.cpp; this port's own are in docs/SPEC.md §6.1).

NMS_PATH = 0  # 0: the automatic rule, 1: plain, 2: pruned wherever exact (NmsPath; tests set it)

_SPARSE_ENV = dict(S_MIN_BOXES=4096, S_WILD_SHARE=16, S_SAMPLE=128, S_RULE_SAMPLE=64,
                   S_QUERY_SHARE=0.05, S_CELL_SCALE=2.0, S_LEVELS=16, S_CELL_CAP=1 << 40,
                   S_INFLATE=1.0 + 2.0 ** -40)


def sparse_cell(v, origin, inv, g):
    """Cell of coordinate v (float64) on an axis of g cells: monotone in v, in [0, g - 1]
    (NaN, only from 0 * inf, maps to 0)."""
    t = (v - origin) * inv
    if not (t > 0.0):
        return 0
    if t >= float(g - 1):
        return g - 1
    return int(t)


def sparse_query_share(sidx, nsamp, kind, level, lo, x1, y1, x2, y2, ox, oy, lix, liy, lgx, lgy,
                       lwq, lhq):
    """The rule's estimate of the pruned loop's work: of sampled ordered pairs (a, b), the share
    whose a is wide (every query tests it) or in a cell b's window visits at a's level."""
    step = max(1, nsamp // S_RULE_SAMPLE)
    m = (nsamp + step - 1) // step
    if m < 2:
        return 0.0
    hits = 0
    for jj in range(m):
        j = sidx[jj * step]
        for ii in range(m):
            if ii == jj:
                continue
            i = sidx[ii * step]
            if kind[i - lo] == 2:
                hits += 1
                continue
            k = level[i - lo]
            cx = sparse_cell(float(x1[i]), ox, lix[k], lgx[k])
            cy = sparse_cell(float(y1[i]), oy, liy[k], lgy[k])
            if (sparse_cell(float(x1[j]) - lwq[k], ox, lix[k], lgx[k]) <= cx
                    and cx <= sparse_cell(float(x2[j]), ox, lix[k], lgx[k])
                    and sparse_cell(float(y1[j]) - lhq[k], oy, liy[k], lgy[k]) <= cy
                    and cy <= sparse_cell(float(y2[j]), oy, liy[k], lgy[k])):
                hits += 1
    return hits / (m * (m - 1.0))


def nms_sparse_segment(x1, y1, x2, y2, ar, lo, hi, thr, keep, path):
    """Greedy NMS of positions lo..hi-1 pruned by grids of the kept boxes (the exactness
    argument is above). Sets keep[j] = 1 for kept j and returns True, or returns False with keep
    untouched when the path or the rule picks the plain loop (the caller runs it)."""
    n = hi - lo
    if path == 1 or not (thr >= ZERO) or n < 2:
        return False
    rule = path == 0
    if rule and n < S_MIN_BOXES:
        return False
    # Classes; a strided sample of the regular boxes sets the cell size and feeds the rule.
    kind = np.empty(n, np.uint8)
    stride = max(1, n // S_SAMPLE)
    sidx = np.empty(n // stride + 1, np.int64)
    nsamp = 0
    sampled = 0
    swild = 0
    ox = np.inf
    oy = np.inf
    for p in range(lo, hi):
        a, b, c, d = x1[p], y1[p], x2[p], y2[p]
        fin = np.isfinite(a) and np.isfinite(b) and np.isfinite(c) and np.isfinite(d)
        k = 2 if not fin else (1 if (a < c and b < d) else 0)
        kind[p - lo] = k
        if (p - lo) % stride == 0:
            sampled += 1
            swild += k == 2
            if k == 1:
                sidx[nsamp] = p
                nsamp += 1
        if k == 1:
            ox = min(ox, float(a))
            oy = min(oy, float(b))
    if rule and swild * S_WILD_SHARE > sampled:
        return False
    cw = 1.0
    ch = 1.0
    if nsamp > 0:
        sw = np.empty(nsamp, np.float64)
        sh = np.empty(nsamp, np.float64)
        for i in range(nsamp):
            p = sidx[i]
            sw[i] = float(x2[p]) - float(x1[p])
            sh[i] = float(y2[p]) - float(y1[p])
        cw = S_CELL_SCALE * np.sort(sw)[nsamp // 2]
        ch = S_CELL_SCALE * np.sort(sh)[nsamp // 2]
    # Levels: a regular box goes to the first level k whose nominal cell cw * 2^k by ch * 2^k
    # holds its width and height; larger than the last level: wide.
    L = S_LEVELS
    level = np.full(n, -1, np.int8)
    lcount = np.zeros(L, np.int64)
    lmx = np.full(L, -np.inf)
    lmy = np.full(L, -np.inf)
    lwq = np.zeros(L)
    lhq = np.zeros(L)
    for p in range(lo, hi):
        if kind[p - lo] != 1:
            continue
        w = float(x2[p]) - float(x1[p])
        h = float(y2[p]) - float(y1[p])
        k = 0
        while k < L and (w > cw * 2.0 ** k or h > ch * 2.0 ** k):
            k += 1
        if k == L:
            kind[p - lo] = 2
            continue
        level[p - lo] = k
        lcount[k] += 1
        lwq[k] = max(lwq[k], w)
        lhq[k] = max(lhq[k], h)
        lmx[k] = max(lmx[k], float(x1[p]))
        lmy[k] = max(lmy[k], float(y1[p]))
    # Each level's grid: cells from the nominal size, doubled until the grid has about as many
    # cells as the level's boxes; past the loop's bound (extents near the float64 range) the axes
    # are clamped instead -- still monotone, so still a superset, just slower. Rounded double
    # widths are within 2^-53 (relative) of the exact ones: the inflation makes lwq, lhq bounds
    # of every exact width and height of the level.
    lix = np.ones(L)
    liy = np.ones(L)
    lgx = np.ones(L, np.int64)
    lgy = np.ones(L, np.int64)
    lbase = np.zeros(L + 1, np.int64)
    for k in range(L):
        lwq[k] *= S_INFLATE
        lhq[k] *= S_INFLATE
        gx = 1
        gy = 1
        if lcount[k] > 0:
            limit = 4 * lcount[k] + 16
            gw = cw * 2.0 ** k
            gh = ch * 2.0 ** k
            for _ in range(4400):
                gx = sparse_cell(lmx[k], ox, 1.0 / gw, S_CELL_CAP) + 1
                gy = sparse_cell(lmy[k], oy, 1.0 / gh, S_CELL_CAP) + 1
                if gx <= limit and gy <= limit and gx * gy <= limit:
                    break
                gw *= 2.0
                gh *= 2.0
            gx = min(gx, limit)
            gy = min(gy, max(1, limit // gx))
            lix[k] = 1.0 / gw
            liy[k] = 1.0 / gh
        lgx[k] = gx
        lgy[k] = gy
        lbase[k + 1] = lbase[k] + (gx * gy if lcount[k] > 0 else 0)
    if rule and sparse_query_share(sidx, nsamp, kind, level, lo, x1, y1, x2, y2, ox, oy, lix, liy,
                                   lgx, lgy, lwq, lhq) > S_QUERY_SHARE:
        return False
    ng = lbase[L]
    start = np.zeros(ng + 1, np.int64)
    bucket = np.empty(n, np.int64)
    for p in range(lo, hi):
        k = level[p - lo]
        if k < 0 or kind[p - lo] != 1:
            continue
        bb = (lbase[k] + sparse_cell(float(y1[p]), oy, liy[k], lgy[k]) * lgx[k]
              + sparse_cell(float(x1[p]), ox, lix[k], lgx[k]))
        bucket[p - lo] = bb
        start[bb + 1] += 1
    for b in range(ng):
        start[b + 1] += start[b]
    m = start[ng]
    fill = np.zeros(ng, np.int64)
    sx1, sy1, sx2, sy2, sa = columns(m, x1.dtype)  # kept grid boxes, by bucket
    wx1, wy1, wx2, wy2, wa = columns(n - m, x1.dtype)  # kept wide boxes, in order
    nwide = 0
    for j in range(lo, hi):
        kd = kind[j - lo]
        if kd == 0:  # inert: never suppresses, never suppressed
            keep[j] = 1
            continue
        cx1, cy1, cx2, cy2, ca = x1[j], y1[j], x2[j], y2[j], ar[j]
        sup = False
        for t in range(nwide):
            if nms_suppresses(wx1[t], wy1[t], wx2[t], wy2[t], wa[t], cx1, cy1, cx2, cy2, ca, thr):
                sup = True
                break
        finite = np.isfinite(cx1) and np.isfinite(cy1) and np.isfinite(cx2) and np.isfinite(cy2)
        for k in range(L):
            if sup:
                break
            if lcount[k] == 0:
                continue
            gx = lgx[k]
            if finite:  # regular (inert ones left above): the window and the overlap test
                qx0 = sparse_cell(float(cx1) - lwq[k], ox, lix[k], gx)
                qx1 = sparse_cell(float(cx2), ox, lix[k], gx)
                qy0 = sparse_cell(float(cy1) - lhq[k], oy, liy[k], lgy[k])
                qy1 = sparse_cell(float(cy2), oy, liy[k], lgy[k])
                for gyy in range(qy0, qy1 + 1):
                    for gxx in range(qx0, qx1 + 1):
                        b = lbase[k] + gyy * gx + gxx
                        for t in range(start[b], start[b] + fill[b]):
                            # both regular: no strict overlap means w = 0 or h = 0 (above)
                            if not (sx1[t] < cx2 and cx1 < sx2[t] and sy1[t] < cy2
                                    and cy1 < sy2[t]):
                                continue
                            if nms_suppresses(sx1[t], sy1[t], sx2[t], sy2[t], sa[t], cx1, cy1,
                                              cx2, cy2, ca, thr):
                                sup = True
                                break
                        if sup:
                            break
                    if sup:
                        break
            else:  # wild candidate: every kept box of the level
                for b in range(lbase[k], lbase[k + 1]):
                    for t in range(start[b], start[b] + fill[b]):
                        if nms_suppresses(sx1[t], sy1[t], sx2[t], sy2[t], sa[t], cx1, cy1, cx2,
                                          cy2, ca, thr):
                            sup = True
                            break
                    if sup:
                        break
        if sup:
            continue
        keep[j] = 1
        if kd == 1:
            b = bucket[j - lo]
            t = start[b] + fill[b]
            sx1[t], sy1[t], sx2[t], sy2[t], sa[t] = cx1, cy1, cx2, cy2, ca
            fill[b] += 1
        else:
            wx1[nwide], wy1[nwide], wx2[nwide], wy2[nwide], wa[nwide] = cx1, cy1, cx2, cy2, ca
            nwide += 1
    return True


def nms_segment(x1, y1, x2, y2, ar, lo, hi, thr, kx1, ky1, kx2, ky2, ka, keep, path):
    """Greedy NMS over positions lo..hi-1 (one class segment, visited in order): position j is
    kept iff no position kept before it suppresses it (torchvision's rule, visiting the same
    pairs). The kept boxes are copied to the columns kx1..ka (scratch of at least hi - lo
    slots), so the inner loop reads memory in order. ``path`` (NMS_PATH) may hand the segment to
    nms_sparse_segment (the grid of kept boxes below), which decides the same keep flags."""
    if nms_sparse_segment(x1, y1, x2, y2, ar, lo, hi, thr, keep, path):
        return
    nk = 0
    for j in range(lo, hi):
        cx1, cy1, cx2, cy2, ca = x1[j], y1[j], x2[j], y2[j], ar[j]
        alive = True
        for t in range(nk):
            if nms_suppresses(kx1[t], ky1[t], kx2[t], ky2[t], ka[t], cx1, cy1, cx2, cy2, ca, thr):
                alive = False
                break
        if alive:
            keep[j] = 1
            kx1[nk], ky1[nk], kx2[nk], ky2[nk], ka[nk] = cx1, cy1, cx2, cy2, ca
            nk += 1


def _columns(n, dtype):
    return (np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype),
            np.empty(n, dtype))


def nms_kernel(boxes, order, seg, thr, keep, path):
    """Greedy NMS over boxes visited in ``order`` (class, then score rank); ``seg`` holds the
    start of each class segment in ``order`` plus a final n. Sets keep[p] = 1 for kept
    positions p of ``order``."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    kx1, ky1, kx2, ky2, ka = columns(n, boxes.dtype)  # kept boxes of the current segment
    for s in range(seg.shape[0] - 1):
        nms_segment(x1, y1, x2, y2, ar, seg[s], seg[s + 1], thr, kx1, ky1, kx2, ky2, ka, keep, path)


def nms_parallel_kernel(boxes, order, seg, thr, keep, path):
    """nms_kernel with the segments (independent: classes, images) spread over threads; each
    segment is run by one thread, so the result does not depend on the thread count."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    for s in prange(seg.shape[0] - 1):
        kx1, ky1, kx2, ky2, ka = columns(seg[s + 1] - seg[s], boxes.dtype)  # per-thread scratch
        nms_segment(x1, y1, x2, y2, ar, seg[s], seg[s + 1], thr, kx1, ky1, kx2, ky2, ka, keep, path)


def detect_candidates(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls):
    """detect's per-anchor pass (box_math.detect_anchor), anchors in parallel (each anchor's
    outputs are written by one thread)."""
    B, A = scores.shape[0], scores.shape[1]
    for r in prange(B * A):
        b = r // A
        detect_anchor(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls, b, r - b * A)


_OPS = dict(ADD=numba.njit(**_JIT)(_add), SUB=numba.njit(**_JIT)(_sub),
            MUL=numba.njit(**_JIT)(_mul), DIV=numba.njit(**_JIT)(_div))
_SPECS: dict = {}
_IOU: dict = {}


def _build(dt: np.dtype):
    jit = numba.njit(**_JIT)
    extra = (("columns", _columns, jit), ("nms_gather", nms_gather, jit),
             ("sparse_cell", sparse_cell, jit), ("sparse_query_share", sparse_query_share, jit),
             ("nms_sparse_segment", nms_sparse_segment, jit), ("nms_segment", nms_segment, jit),
             ("nms_kernel", nms_kernel, jit),
             ("nms_parallel_kernel", nms_parallel_kernel, numba.njit(parallel=True, **_JIT)),
             ("detect_candidates", detect_candidates, numba.njit(parallel=True, **_JIT)))
    return M.specialise(dt, _OPS, jit, extra, env=dict(np=np, prange=prange, **_SPARSE_ENV))


def kernels(dtype: str):
    """The compiled scalar functions and NMS kernel for ``dtype`` ('float32' or 'float64')."""
    return M.per_dtype(_SPECS, _build, dtype)


def iou_kernel(dtype: str, kind: int, fmt: int):
    """box_iou_kernel for one (dtype, kind, fmt), compiled on first use (~2 s). It calls the
    dtype's shared scalar functions, which LLVM inlines, so the constants fold through them."""
    key = (dtype, kind, fmt)
    fn = _IOU.get(key)
    if fn is None:
        ns = dict(kernels(dtype).ns, FMT=fmt, KIND=kind)
        g = types.FunctionType(box_iou_kernel.__code__, ns, "box_iou_kernel")
        fn = _IOU[key] = numba.njit(parallel=True, **_JIT)(g)
    return fn


def box_iou(b1: np.ndarray, b2: np.ndarray, kind: int, fmt: int, eps: float) -> np.ndarray:
    B, N, M_ = b1.shape[0], b1.shape[1], b2.shape[1]
    out = np.empty((B, N, M_), dtype=b1.dtype)
    iou_kernel(b1.dtype.name, kind, fmt)(b1, b2, out, b1.dtype.type(eps))
    return out


def nms_keep(boxes: np.ndarray, order: np.ndarray, seg: np.ndarray, thr: float,
             parallel: bool = False) -> np.ndarray:
    """uint8 flags over positions of ``order``: 1 where that box is kept. ``parallel`` runs the
    segments on numba's threads (worth it for many segments: classes x images)."""
    keep = np.zeros(order.shape[0], np.uint8)
    k = kernels(boxes.dtype.name)
    fn = k.nms_parallel_kernel if parallel and seg.shape[0] > 2 else k.nms_kernel
    fn(boxes, order, seg, M.nms_threshold(thr, boxes.dtype), keep, NMS_PATH)
    return keep


def detect_pass(boxes: np.ndarray, scores: np.ndarray, obj: np.ndarray | None, fmt: int,
                multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyxy [B, A, 4], candidate scores [B, A * C] or [B, A], best class [B, A]) of contiguous
    boxes [B, A, 4], scores [B, A, C], obj [B, A] or None (one float dtype)."""
    B, A, C = scores.shape
    dt = boxes.dtype
    xyxy = np.empty((B, A, 4), dt)
    cs = np.empty((B, A * C if multi_label else A), dt)
    cls = np.zeros((B, A), np.int64)
    if B * A:
        o = np.empty((0, 0), dt) if obj is None else obj
        kernels(dt.name).detect_candidates(boxes, scores, o, obj is not None, fmt, bool(multi_label),
                                           xyxy, cs, cls)
    return xyxy, cs, cls


# ---- soft_nms, diou_nms, matrix_nms (issue 13): the kernels over dk_exp ----------------------------
# Each is compiled twice from one function: plain @njit (prange runs as range) and parallel=True,
# where the independent segments (classes, images) -- or matrix_nms's columns -- are spread over
# numba's threads. Every output element is written by one thread, in the reference's order, so the
# bytes do not depend on the thread count.

def soft_nms_segment(x1, y1, x2, y2, ar, s, gid, alive, lo, hi, method, thr, sigma, sthr, limit,
                     out_idx, out_s, nout):
    """Soft-NMS of positions lo..hi-1 (one class; gid = input index): pick the remaining box with
    the highest score (NaN first, -0 == +0, ties by the lower gid), rescale every other remaining
    box (soft_nms_weight of nms's IoU, kept box first), drop it below sthr. Appends the picks at
    out_*[nout:]; returns their number (at most limit)."""
    kept = 0
    while kept < limit:
        a = -1
        for p in range(lo, hi):
            if alive[p]:
                if a < 0:
                    a = p
                elif ranks_before(s[p], gid[p], s[a], gid[a]):
                    a = p
        if a < 0:
            break
        alive[a] = 0
        out_idx[nout + kept] = gid[a]
        out_s[nout + kept] = s[a]
        kept += 1
        for q in range(lo, hi):
            if alive[q]:
                iou = nms_iou(x1[a], y1[a], x2[a], y2[a], ar[a], x1[q], y1[q], x2[q], y2[q], ar[q])
                ns = MUL(s[q], soft_nms_weight(iou, method, thr, sigma))
                s[q] = ns
                if float(ns) < sthr:
                    alive[q] = 0
    return kept


def soft_nms_kernel(boxes, scores, order, seg, method, thr, sigma, sthr, limit, out_idx, out_s,
                    counts):
    """Soft-NMS of boxes visited in ``order`` (class-grouped, input index ascending within one),
    ``seg`` the segment starts plus n. Segment g's picks (pick order) are written at
    out_*[seg[g]:seg[g] + counts[g]]."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    s = np.empty(n, boxes.dtype)
    alive = np.empty(n, np.uint8)
    for p in range(n):
        s[p] = scores[order[p]]
        alive[p] = 0 if float(s[p]) < sthr else 1
    for g in prange(seg.shape[0] - 1):
        counts[g] = soft_nms_segment(x1, y1, x2, y2, ar, s, order, alive, seg[g], seg[g + 1], method,
                                     thr, sigma, sthr, limit, out_idx, out_s, seg[g])


def soft_nms(boxes: np.ndarray, scores: np.ndarray, order: np.ndarray, seg: np.ndarray, method: int,
             thr: float, sigma: float, sthr: float, limit: int,
             parallel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input indices, decayed scores, picks per segment): the segments' picks one after the
    other, each in pick order."""
    k = exp_kernels(boxes.dtype.name)
    n = order.shape[0]
    out_idx = np.empty(n, np.int64)
    out_s = np.empty(n, boxes.dtype)
    counts = np.zeros(seg.shape[0] - 1, np.int64)
    fn = k.soft_nms_parallel_kernel if parallel and seg.shape[0] > 2 else k.soft_nms_kernel
    fn(boxes, scores, order, seg, method, float(thr), boxes.dtype.type(sigma), float(sthr), limit,
       out_idx, out_s, counts)
    return segment_picks(out_idx, out_s, seg, counts)


def segment_picks(out_idx: np.ndarray, out_s: np.ndarray, seg: np.ndarray,
                  counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, scores, counts): segment g's counts[g] picks, written at out_*[seg[g]:], one
    segment after the other (soft_nms's kernels' output, CPU and numba.cuda)."""
    lengths = np.diff(seg)
    rel = np.arange(out_idx.shape[0], dtype=np.int64) - np.repeat(seg[:-1], lengths)
    picked = rel < np.repeat(counts, lengths)
    return out_idx[picked], out_s[picked], counts


def diou_nms_kernel(boxes, order, seg, thr, beta, keep):
    """Greedy DIoU-NMS over boxes visited in ``order`` (class, then score rank), ``seg`` the
    class segment starts plus n: position j is kept iff no position kept before it in its
    segment has ``(double)diou_nms_measure > thr`` against it. Sets keep[j] = 1."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    for g in prange(seg.shape[0] - 1):
        lo, hi = seg[g], seg[g + 1]
        kx1, ky1, kx2, ky2, ka = columns(hi - lo, boxes.dtype)  # kept boxes of the segment
        nk = 0
        for j in range(lo, hi):
            cx1, cy1, cx2, cy2, ca = x1[j], y1[j], x2[j], y2[j], ar[j]
            alive = True
            for t in range(nk):
                if float(diou_nms_measure(kx1[t], ky1[t], kx2[t], ky2[t], ka[t], cx1, cy1, cx2, cy2,
                                          ca, beta)) > thr:
                    alive = False
                    break
            if alive:
                keep[j] = 1
                kx1[nk], ky1[nk], kx2[nk], ky2[nk], ka[nk] = cx1, cy1, cx2, cy2, ca
                nk += 1


def diou_nms_keep(boxes: np.ndarray, order: np.ndarray, seg: np.ndarray, thr: float,
                  beta: float) -> np.ndarray:
    """uint8 flags over positions of ``order``: 1 where that box is kept (beta rounded to T)."""
    keep = np.zeros(order.shape[0], np.uint8)
    k = exp_kernels(boxes.dtype.name)
    fn = k.diou_nms_parallel_kernel if seg.shape[0] > 2 else k.diou_nms_kernel
    fn(boxes, order, seg, float(thr), boxes.dtype.type(beta), keep)
    return keep


def matrix_nms_kernel(boxes, order, seg_of, kernel, neg_sigma, comp, den, decay):
    """Matrix NMS's decays over boxes visited in ``order`` (class, then score rank); seg_of[p]
    the first position of p's class segment. Column by column (in parallel): comp[p] = the
    NaN-skipping max of nms_iou(i, p) over the earlier positions i of the segment (from 0), then
    decay[p] = the NaN-skipping min (from 1) of num(iou(i, p)) / den(comp[i]) over i ascending --
    the reference's updates of column p, in its order."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    for p in prange(n):
        c = ZERO
        for i in range(seg_of[p], p):
            d = nms_iou(x1[i], y1[i], x2[i], y2[i], ar[i], x1[p], y1[p], x2[p], y2[p], ar[p])
            if d > c:
                c = d
        comp[p] = c
    for p in prange(n):
        den[p] = matrix_nms_term(comp[p], kernel, neg_sigma)
    for p in prange(n):
        m = ONE
        for i in range(seg_of[p], p):
            d = nms_iou(x1[i], y1[i], x2[i], y2[i], ar[i], x1[p], y1[p], x2[p], y2[p], ar[p])
            w = DIV(matrix_nms_term(d, kernel, neg_sigma), den[i])
            if w < m:
                m = w
        decay[p] = m


def matrix_nms_decay(boxes: np.ndarray, order: np.ndarray, seg: np.ndarray, kernel: int,
                     sigma: float) -> np.ndarray:
    """decay (T) over positions of ``order``; ``seg`` the class segment starts plus n."""
    n = order.shape[0]
    dt = boxes.dtype
    comp, den, decay = np.empty(n, dt), np.empty(n, dt), np.empty(n, dt)
    seg_of = np.repeat(seg[:-1], np.diff(seg))
    exp_kernels(dt.name).matrix_nms_kernel(boxes, order, seg_of, kernel, dt.type(-float(sigma)),
                                           comp, den, decay)
    return decay


_EXP: dict = {}


def _build_exp(dt: np.dtype):
    jit, pjit = numba.njit(**_JIT), numba.njit(parallel=True, **_JIT)
    exp_src = M.exp_eval_f32 if dt == np.float32 else M.exp_eval_f64
    extra = (("columns", _columns, jit), ("nms_gather", nms_gather, jit), ("EXP_EVAL", exp_src, jit),
             *((f.__name__, f, jit) for f in M.SOFT_NMS_FUNCS + M.DIOU_MATRIX_FUNCS),
             ("soft_nms_segment", soft_nms_segment, jit), ("soft_nms_kernel", soft_nms_kernel, jit),
             ("soft_nms_parallel_kernel", soft_nms_kernel, pjit),
             ("diou_nms_kernel", diou_nms_kernel, jit),
             ("diou_nms_parallel_kernel", diou_nms_kernel, pjit),
             ("matrix_nms_kernel", matrix_nms_kernel, pjit))
    return M.specialise(dt, _OPS, jit, extra, env=dict(np=np, prange=prange, **M.soft_nms_constants(dt)))


def exp_kernels(dtype: str):
    """The compiled soft_nms / diou_nms / matrix_nms kernels (and their scalar functions, dk_exp
    among them) for ``dtype``."""
    return M.per_dtype(_EXP, _build_exp, dtype)
