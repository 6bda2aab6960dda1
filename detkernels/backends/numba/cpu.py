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


def nms_segment(x1, y1, x2, y2, ar, lo, hi, thr, kx1, ky1, kx2, ky2, ka, keep):
    """Greedy NMS over positions lo..hi-1 (one class segment, visited in order): position j is
    kept iff no position kept before it suppresses it (torchvision's rule, visiting the same
    pairs). The kept boxes are copied to the columns kx1..ka (scratch of at least hi - lo
    slots), so the inner loop reads memory in order."""
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


def nms_kernel(boxes, order, seg, thr, keep):
    """Greedy NMS over boxes visited in ``order`` (class, then score rank); ``seg`` holds the
    start of each class segment in ``order`` plus a final n. Sets keep[p] = 1 for kept
    positions p of ``order``."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    kx1, ky1, kx2, ky2, ka = columns(n, boxes.dtype)  # kept boxes of the current segment
    for s in range(seg.shape[0] - 1):
        nms_segment(x1, y1, x2, y2, ar, seg[s], seg[s + 1], thr, kx1, ky1, kx2, ky2, ka, keep)


def nms_parallel_kernel(boxes, order, seg, thr, keep):
    """nms_kernel with the segments (independent: classes, images) spread over threads; each
    segment is run by one thread, so the result does not depend on the thread count."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    for s in prange(seg.shape[0] - 1):
        kx1, ky1, kx2, ky2, ka = columns(seg[s + 1] - seg[s], boxes.dtype)  # per-thread scratch
        nms_segment(x1, y1, x2, y2, ar, seg[s], seg[s + 1], thr, kx1, ky1, kx2, ky2, ka, keep)


def detect_candidates(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls):
    """detect's per-anchor pass (reference/detect.py steps 1-2), anchors in parallel (each
    anchor's outputs are written by one thread). boxes [B, A, 4] in ``fmt`` -> xyxy [B, A, 4]
    (box_corners); scores [B, A, C] times obj [B, A] (one MUL in T, before anything else) ->
    candidate scores cs: multi-label cs[b, a * C + c], else cs[b, a] the best class cls[b, a] --
    the first NaN column, else the lowest column holding the row maximum (a strict ``>`` scan:
    ties and -0.0 == +0.0 keep the lower column)."""
    B, A, C = scores.shape
    for r in prange(B * A):
        b = r // A
        a = r - b * A
        x1, y1, x2, y2 = box_corners(boxes[b, a, 0], boxes[b, a, 1], boxes[b, a, 2], boxes[b, a, 3], fmt)
        xyxy[b, a, 0], xyxy[b, a, 1], xyxy[b, a, 2], xyxy[b, a, 3] = x1, y1, x2, y2
        if multi_label:
            for c in range(C):
                v = scores[b, a, c]
                cs[b, a * C + c] = MUL(v, obj[b, a]) if has_obj else v
        elif C > 0:
            best = -1
            m = ZERO
            for c in range(C):
                v = scores[b, a, c]
                if has_obj:
                    v = MUL(v, obj[b, a])
                if v != v:  # NaN ranks above everything: the first one wins
                    best = c
                    m = v
                    break
                if best < 0 or v > m:
                    best = c
                    m = v
            cs[b, a] = m
            cls[b, a] = best


_OPS = dict(ADD=numba.njit(**_JIT)(_add), SUB=numba.njit(**_JIT)(_sub),
            MUL=numba.njit(**_JIT)(_mul), DIV=numba.njit(**_JIT)(_div))
_SPECS: dict = {}
_IOU: dict = {}


def _build(dt: np.dtype):
    jit = numba.njit(**_JIT)
    extra = (("columns", _columns, jit), ("nms_gather", nms_gather, jit),
             ("nms_segment", nms_segment, jit),
             ("nms_kernel", nms_kernel, jit),
             ("nms_parallel_kernel", nms_parallel_kernel, numba.njit(parallel=True, **_JIT)),
             ("detect_candidates", detect_candidates, numba.njit(parallel=True, **_JIT)))
    return M.specialise(dt, _OPS, jit, extra, env=dict(np=np, prange=prange))


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
    fn(boxes, order, seg, M.nms_threshold(thr, boxes.dtype), keep)
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


# ---- soft_nms (issue 13): the reference's sequential loop, per class segment ----------------------

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
                else:
                    sp, sa = s[p], s[a]
                    if ((sp != sp and sa == sa) or sp > sa) or (
                            not ((sa != sa and sp == sp) or sa > sp) and gid[p] < gid[a]):
                        a = p
        if a < 0:
            break
        alive[a] = 0
        out_idx[nout + kept] = gid[a]
        out_s[nout + kept] = s[a]
        kept += 1
        for q in range(lo, hi):
            if alive[q]:
                w = std_max(ZERO, SUB(std_min(x2[a], x2[q]), std_max(x1[a], x1[q])))
                h = std_max(ZERO, SUB(std_min(y2[a], y2[q]), std_max(y1[a], y1[q])))
                inter = MUL(w, h)
                iou = DIV(inter, SUB(ADD(ar[a], ar[q]), inter))
                ns = MUL(s[q], soft_nms_weight(iou, method, thr, sigma))
                s[q] = ns
                if float(ns) < sthr:
                    alive[q] = 0
    return kept


def soft_nms_kernel(boxes, scores, order, seg, method, thr, sigma, sthr, limit, out_idx, out_s):
    """Soft-NMS of boxes visited in ``order`` (class-grouped, input index ascending within one),
    ``seg`` the class segment starts plus n. Returns the number of picks written to out_*
    (segment by segment, each in pick order)."""
    n = order.shape[0]
    x1, y1, x2, y2, ar = columns(n, boxes.dtype)
    nms_gather(boxes, order, x1, y1, x2, y2, ar)
    s = np.empty(n, boxes.dtype)
    alive = np.empty(n, np.uint8)
    for p in range(n):
        s[p] = scores[order[p]]
        alive[p] = 0 if float(s[p]) < sthr else 1
    nout = 0
    for g in range(seg.shape[0] - 1):
        nout += soft_nms_segment(x1, y1, x2, y2, ar, s, order, alive, seg[g], seg[g + 1], method, thr,
                                 sigma, sthr, limit, out_idx, out_s, nout)
    return nout


def soft_nms(boxes: np.ndarray, scores: np.ndarray, order: np.ndarray, seg: np.ndarray, method: int,
             thr: float, sigma: float, sthr: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """(input indices, decayed scores), segment by segment in pick order."""
    k = soft_kernels(boxes.dtype.name)
    n = order.shape[0]
    out_idx = np.empty(n, np.int64)
    out_s = np.empty(n, boxes.dtype)
    c = k.soft_nms_kernel(boxes, scores, order, seg, method, float(thr), boxes.dtype.type(sigma),
                          float(sthr), limit, out_idx, out_s)
    return out_idx[:c], out_s[:c]


_SOFT: dict = {}


def _build_soft(dt: np.dtype):
    jit = numba.njit(**_JIT)
    exp_src = M.exp_eval_f32 if dt == np.float32 else M.exp_eval_f64
    extra = (("columns", _columns, jit), ("nms_gather", nms_gather, jit), ("EXP_EVAL", exp_src, jit),
             *((f.__name__, f, jit) for f in M.SOFT_NMS_FUNCS),
             ("soft_nms_segment", soft_nms_segment, jit), ("soft_nms_kernel", soft_nms_kernel, jit))
    return M.specialise(dt, _OPS, jit, extra, env=dict(np=np, prange=prange, **M.soft_nms_constants(dt)))


def soft_kernels(dtype: str):
    """The compiled soft-NMS kernel (and its scalar functions) for ``dtype``."""
    return M.per_dtype(_SOFT, _build_soft, dtype)
