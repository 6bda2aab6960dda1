"""NumPy reference (the specification) of DIoU-NMS (Zheng et al., "Distance-IoU Loss", AAAI 2020):
greedy NMS with the IoU replaced by ``iou - R**beta``, R the squared distance of the centres over
the squared diagonal of the enclosing box -- a box far from the kept one's centre survives an
overlap that plain NMS would suppress (occlusion, crowds).

Semantics: ``nms``'s (detkernels/reference/nms.py) with the measure, for kept box a and later box b
in the working type T,

    iou  = nms_iou(a, b)                          (std::max/min, kept box first: nms's)
    R    = diou_penalty_of(a, b, eps=0)           (reference/box_iou.py, box_iou.h: the one DIoU
                                                   distance term, as distance_box_iou's)
    diou = iou - R                                if beta == 1
    diou = iou - dk_exp(beta * dk_log(R))         otherwise (R == 0 -> 0)

b is suppressed iff ``(double)diou > iou_threshold`` (a NaN never suppresses). The output: kept
indices (int64) by descending score (NaN first), ties by ascending index; per class with ``idxs``
(exact, no coordinate offsets), as ``batched_nms``.

Differences from the paper's code (and YOLOv4's darknet DIoU-NMS): no epsilon in R (two identical
zero-area boxes give 0/0 = NaN: never suppressed, as nms's NaN IoU); R**beta through detkernels'
own exp/log (``dk_log`` below, ``dk_exp`` of reference/soft_nms.py) instead of libm's pow, which
differs between platforms in the last ulp; beta = 1 is exact (no pow at all).
"""
from __future__ import annotations

import numpy as np

from .box_iou import _Ops, diou_penalty_of
from .nms import _std_max, _std_min, _working, per_class, score_order
from .soft_nms import dk_exp

__all__ = ["dk_log", "dk_pow", "diou_nms", "batched_diou_nms", "multi_image_diou_nms"]

_SQRT_HALF = 0.70710678118654752440
_LN2 = 0.69314718055994530942
_ATANH = tuple(1.0 / k for k in (23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3))  # Horner order


def dk_log(x) -> np.ndarray:
    """log(x) elementwise in x's float dtype, operation for operation as diou_nms.h's dk_log:
    frexp, then the atanh series of z = (m - 1) / (m + 1). 0 -> -inf, < 0 -> NaN, 1 -> 0."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"dk_log takes float32 or float64, got {x.dtype}")
    T = x.dtype.type
    with np.errstate(all="ignore"):
        m, e = np.frexp(x)
        m = m.astype(x.dtype)
        low = m < T(_SQRT_HALF)
        m = np.where(low, m + m, m)
        e = np.where(low, e - 1, e)
        z = (m - T(1)) / (m + T(1))
        z2 = z * z
        p = np.full_like(z, T(_ATANH[0]))
        for c in _ATANH[1:]:
            p = p * z2 + T(c)
        tz = z + z
        y = (tz + (tz * z2) * p) + e.astype(x.dtype) * T(_LN2)
    y = np.where(x == np.inf, x, y)
    y = np.where(x == 0, T(-np.inf), y)
    y = np.where(x < 0, T(np.nan), y)
    return np.where(np.isnan(x), x, y).astype(x.dtype)


def dk_pow(r, beta) -> np.ndarray:
    """r**beta for r >= 0 (or NaN) and beta > 0, as diou_nms.h's dk_pow (beta rounded to r's
    dtype; beta == 1 returns r itself)."""
    r = np.asarray(r)
    T = r.dtype.type
    b = T(beta)
    if b == T(1):
        return r
    with np.errstate(all="ignore"):
        out = dk_exp(b * dk_log(r))
    return np.where(r == 0, T(0), out).astype(r.dtype)


def diou_nms(boxes, scores, iou_threshold: float, beta: float = 1.0) -> np.ndarray:
    """DIoU-NMS of ``boxes`` ``[N, 4]`` (x1, y1, x2, y2) by ``scores`` ``[N]``: kept indices
    (int64) by descending score, ties by ascending index."""
    b, s = _working(boxes, scores)
    T = b.dtype.type
    ops = _Ops(b.dtype)
    thr = float(iou_threshold)
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    with np.errstate(all="ignore"):
        area = (x2 - x1) * (y2 - y1)
    alive = score_order(s)
    keep = []
    while alive.size:
        i, rest = alive[0], alive[1:]
        keep.append(i)
        with np.errstate(all="ignore"):
            w = _std_max(T(0), _std_min(x2[i], x2[rest]) - _std_max(x1[i], x1[rest]))
            h = _std_max(T(0), _std_min(y2[i], y2[rest]) - _std_max(y1[i], y1[rest]))
            inter = w * h
            iou = inter / ((area[i] + area[rest]) - inter)
            r = diou_penalty_of(ops, tuple(b[i, k] for k in range(4)),
                                tuple(b[rest, k] for k in range(4)), T(0))
            d = iou - dk_pow(np.asarray(r, b.dtype), beta)
        alive = rest[~(d.astype(np.float64) > thr)]
    return np.asarray(keep, dtype=np.int64)


def batched_diou_nms(boxes, scores, idxs, iou_threshold: float, beta: float = 1.0) -> np.ndarray:
    """DIoU-NMS within each class of ``idxs`` (``[N]``); kept indices by descending score (NaN
    first), ties by ascending index."""
    b, s = _working(boxes, scores)
    return per_class(lambda bb, ss, thr: diou_nms(bb, ss, thr, beta), b, s, idxs, iou_threshold)


def multi_image_diou_nms(boxes, scores, iou_threshold: float, max_output: int, beta: float = 1.0,
                         idxs=None):
    """DIoU-NMS of a batch, fixed-size outputs: ``boxes`` ``[B, N, 4]``, ``scores`` ``[B, N]``,
    ``idxs`` ``[B, N]`` or None. Per image, ``diou_nms`` (``batched_diou_nms`` with idxs)
    truncated to ``max_output``. Returns ``(indices [B, K] int64 padded with -1, counts [B]
    int64)``, as ``multi_image_nms`` (reference/nms.py) with ``[B, N]`` scores."""
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 3 or b.shape[2] != 4 or s.shape != b.shape[:2]:
        raise ValueError(f"boxes must be [B, N, 4] and scores [B, N], got {b.shape} and {s.shape}")
    K = int(max_output)
    if K < 0:
        raise ValueError(f"max_output must be >= 0, got {max_output}")
    B = b.shape[0]
    out = np.full((B, K), -1, np.int64)
    counts = np.zeros(B, np.int64)
    for i in range(B):
        if idxs is None:
            k = diou_nms(b[i], s[i], iou_threshold, beta)
        else:
            k = batched_diou_nms(b[i], s[i], np.asarray(idxs)[i], iou_threshold, beta)
        k = k[:K]
        counts[i] = k.size
        out[i, :k.size] = k
    return out, counts
