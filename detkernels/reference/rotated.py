"""NumPy reference (the specification) of rotated boxes: the format conversions to cxcywhr,
``box_iou_rotated``, greedy ``nms_rotated`` / ``batched_nms_rotated``, ultralytics' ProbIoU and
``nms_probiou``, and the fixed-size multi-image forms of both NMS (defined per image through them).

Semantics: torchvision 0.29.1 (``box_iou(..., fmt='cxcywhr' | 'xywhr' | 'xyxyxyxy')``, the CPU
kernel of ``torchvision::box_iou_rotated``), every float operation in the order and precision of
``csrc/ops/box_iou/box_iou_rotated.h`` (its top comment has the formulas). In short, for boxes
``(cx, cy, w, h, a)``, ``a`` in degrees, counter-clockwise in the image plane (y down):

* the pair is shifted by its mid-point (in float64), the corners computed from
  ``T(cos(a * 0.01745329251)) / 2`` (libm cos/sin in float64: :func:`math.cos`, the same libm as
  the C++ kernel) in the working type T;
* the intersection polygon's candidate vertices are the edge crossings (parameters within
  ``(-1e-5, 1 + 1e-5)``) and the corners of each box inside the other (tolerance ``1e-5``), in a
  fixed order; with fewer than 3 the intersection is 0, else torchvision's Graham scan (its swap
  sort with ``1e-6`` tolerances is part of the semantics) and the fan area in T;
* either area below ``1e-14`` gives 0; ``iou = inter / ((area1 + area2) - inter)``, clamped to
  ``[0, 1]`` (NaN passes), returned as float32 -- also for float64 boxes, as torchvision. The
  point tolerances are absolute, so a box of area just above 1e-14 far inside a big one gets 1.

Divergences from torchvision (docs/SPEC.md "Rotated boxes"): float16/bfloat16 and integer boxes
are computed in float32 (torchvision raises), mixed float32/float64 inputs are promoted (it
raises), and leading batch dimensions broadcast (it takes [N, 5] only). The conversions from
'xywhr' and 'xyxyxyxy' are torchvision's formulas run in the caller's array library
(:func:`to_cxcywhr`): on torch tensors they are torchvision's very ops, so results equal
torchvision's bit for bit. NumPy arrays go through the same torch ops when torch is installed
(zero-copy); without torch, through NumPy's cos/sin/atan2/sqrt, which may differ from torch's in
the last bit (and so may the IoU).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ROTATED_FORMATS", "box_dim", "to_cxcywhr", "half_cos_sin", "pair_iou", "box_iou_rotated",
           "nms_rotated", "batched_nms_rotated", "probiou_pair", "probiou", "nms_probiou",
           "multi_image_nms_rotated", "multi_image_nms_probiou"]

ROTATED_FORMATS = ("cxcywhr", "xywhr", "xyxyxyxy")
_EPS = 1e-5  # torchvision's tolerance of the point tests (a double)


def box_dim(fmt: str) -> int:
    """Coordinates per box: 5 for 'cxcywhr'/'xywhr', 8 for 'xyxyxyxy'."""
    return 8 if fmt == "xyxyxyxy" else 5


class _Np:
    """The array namespace of the conversions for NumPy (torch: the torch module itself)."""
    pi = math.pi
    cos, sin, sqrt = staticmethod(np.cos), staticmethod(np.sin), staticmethod(np.sqrt)
    atan2 = staticmethod(np.arctan2)

    @staticmethod
    def stack(xs, dim):
        return np.stack(xs, axis=dim)


def _xywhr_to_cxcywhr(m, b):
    # torchvision ops/_box_convert.py _box_xywhr_to_cxcywhr, operation for operation.
    x1, y1, w, h, r = (b[..., k] for k in range(5))
    r_rad = r * m.pi / 180.0
    cos, sin = m.cos(r_rad), m.sin(r_rad)
    cx = x1 + w / 2 * cos + h / 2 * sin
    cy = y1 - w / 2 * sin + h / 2 * cos
    return m.stack((cx, cy, w, h, r), -1)


def _xyxyxyxy_to_xywhr(m, b):
    # torchvision ops/_box_convert.py _box_xyxyxyxy_to_xywhr.
    x1, y1, x2, y2, x3, y3 = (b[..., k] for k in range(6))
    r_rad = m.atan2(y1 - y2, x2 - x1)
    r = r_rad * 180 / m.pi
    w = m.sqrt((x2 - x1) ** 2 + (y1 - y2) ** 2)
    h = m.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
    return m.stack((x1, y1, w, h, r), -1)


def to_cxcywhr(boxes, fmt: str, m=None):
    """``[..., 5]`` cxcywhr boxes from ``[..., 5 or 8]`` float boxes in ``fmt``, by torchvision's
    ``box_convert`` formulas in the boxes' own dtype. ``m``: the array namespace (the torch module
    for tensors; None for NumPy arrays: torch's ops on a zero-copy view if torch is installed, else
    NumPy's)."""
    if fmt not in ROTATED_FORMATS:
        raise ValueError(f"fmt must be one of {ROTATED_FORMATS}, got {fmt!r}")
    if fmt == "cxcywhr":
        return boxes
    if m is None:
        try:  # torch's elementwise cos/sin/atan2 (SLEEF) are torchvision's: agree bit for bit
            import torch
        except ImportError:
            m = _Np
        else:
            x = np.require(boxes, requirements=["C", "W"])  # torch wants a writable buffer
            return to_cxcywhr(torch.from_numpy(x), fmt, torch).numpy()
    with np.errstate(all="ignore"):
        if fmt == "xyxyxyxy":
            boxes = _xyxyxyxy_to_xywhr(m, boxes)
        return _xywhr_to_cxcywhr(m, boxes)


def half_cos_sin(angle_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``T(cos(double(a) * 0.01745329251)) * T(0.5)`` and the sine, per box (libm in float64)."""
    a = np.asarray(angle_deg)
    T = a.dtype.type
    theta = a.astype(np.float64).ravel() * 0.01745329251
    nan = float("nan")  # libm: cos(+-inf) = cos(NaN) = NaN (math.cos raises on inf)
    c = np.array([math.cos(t) if math.isfinite(t) else nan for t in theta], np.float64)
    s = np.array([math.sin(t) if math.isfinite(t) else nan for t in theta], np.float64)
    c, s = c.astype(a.dtype).reshape(a.shape), s.astype(a.dtype).reshape(a.shape)
    return c * T(0.5), s * T(0.5)


def _corners(x, y, w, h, c, s):
    """[4, P] x and y of the corners (rotated_corners)."""
    two = x.dtype.type(2)
    x0, y0 = (x + s * h) + c * w, (y + c * h) - s * w
    x1, y1 = (x - s * h) + c * w, (y - c * h) - s * w
    return np.stack([x0, x1, two * x - x0, two * x - x1]), np.stack([y0, y1, two * y - y0, two * y - y1])


def _cross(ax, ay, bx, by):
    return ax * by - bx * ay


def _inside(px, py, qx, qy, ex, ey):
    """[4, P] mask: corners p inside the box with corners q and edges e (rotated_corners_inside)."""
    abx, aby, dax, day = ex[0], ey[0], ex[3], ey[3]
    ab2 = (abx * abx + aby * aby).astype(np.float64) + _EPS
    ad2 = (dax * dax + day * day).astype(np.float64) + _EPS
    apx, apy = px - qx[0], py - qy[0]
    u = (apx * abx + apy * aby).astype(np.float64)
    v = (-(apx * dax + apy * day)).astype(np.float64)
    return (u > -_EPS) & (v > -_EPS) & (u < ab2) & (v < ad2)


def _candidates(p1x, p1y, p2x, p2y):
    """The 24 candidate vertices [24, P] (x, y) and their validity, in the kernel's order."""
    e1x, e1y = np.roll(p1x, -1, axis=0) - p1x, np.roll(p1y, -1, axis=0) - p1y
    e2x, e2y = np.roll(p2x, -1, axis=0) - p2x, np.roll(p2y, -1, axis=0) - p2y
    xs, ys, ok = [], [], []
    for i in range(4):
        for j in range(4):
            det = _cross(e2x[j], e2y[j], e1x[i], e1y[i])
            dx, dy = p2x[j] - p1x[i], p2y[j] - p1y[i]
            t1 = _cross(e2x[j], e2y[j], dx, dy) / det
            t2 = _cross(e1x[i], e1y[i], dx, dy) / det
            d1, d2 = t1.astype(np.float64), t2.astype(np.float64)
            hi = 1.0 + _EPS
            ok.append(~(np.abs(det).astype(np.float64) <= 1e-14)
                      & (d1 > -_EPS) & (d1 < hi) & (d2 > -_EPS) & (d2 < hi))
            xs.append(p1x[i] + e1x[i] * t1)
            ys.append(p1y[i] + e1y[i] * t1)
    xs, ys, ok = np.stack(xs), np.stack(ys), np.stack(ok)
    in1 = _inside(p1x, p1y, p2x, p2y, e2x, e2y)
    in2 = _inside(p2x, p2y, p1x, p1y, e1x, e1y)
    return (np.concatenate([xs, p1x, p2x]), np.concatenate([ys, p1y, p2y]),
            np.concatenate([ok, in1, in2]))


def _hull_area(px, py, num):
    """convex_hull_area of the first num[p] points of each column p ([P, 24] arrays, num >= 3)."""
    P, K = px.shape
    T = px.dtype.type
    rows = np.arange(P)
    t = np.zeros(P, np.int64)
    for i in range(1, K):
        lower = (py[:, i] < py[rows, t]) | ((py[:, i] == py[rows, t]) & (px[:, i] < px[rows, t]))
        t = np.where((i < num) & lower, i, t)
    sx, sy = px[rows, t], py[rows, t]
    qx, qy = px - sx[:, None], py - sy[:, None]
    q0x, q0y = qx[:, 0].copy(), qy[:, 0].copy()  # swap q[0] and q[t]
    qx[:, 0], qy[:, 0] = qx[rows, t], qy[rows, t]
    qx[rows, t], qy[rows, t] = q0x, q0y
    dist = qx * qx + qy * qy
    for i in range(1, K - 1):
        for j in range(i + 1, K):
            live = j < num
            if not live.any():
                break
            cp = _cross(qx[:, i], qy[:, i], qx[:, j], qy[:, j]).astype(np.float64)
            sw = live & ((cp < -1e-6) | ((np.abs(cp) < 1e-6) & (dist[:, i] > dist[:, j])))
            for a in (qx, qy, dist):
                ai, aj = a[:, i].copy(), a[:, j]
                a[:, i] = np.where(sw, aj, ai)
                a[:, j] = np.where(sw, ai, aj)
    far = dist.astype(np.float64) > 1e-8
    far[:, 0] = False
    far &= np.arange(K)[None, :] < num[:, None]
    k = np.where(far.any(axis=1), np.argmax(far, axis=1), num)
    single = k == num
    kk = np.minimum(k, K - 1)
    qx[:, 1], qy[:, 1] = qx[rows, kk], qy[rows, kk]
    m = np.full(P, 2, np.int64)
    for i in range(2, K):
        act = (i > k) & (i < num)
        if not act.any():
            continue
        popping = act.copy()
        while True:
            popping &= m > 1
            if not popping.any():
                break
            a, b = np.maximum(m - 2, 0), np.maximum(m - 1, 0)
            q1x, q1y = qx[:, i] - qx[rows, a], qy[:, i] - qy[rows, a]
            q2x, q2y = qx[rows, b] - qx[rows, a], qy[rows, b] - qy[rows, a]
            pop = popping & (q1x * q2y >= q2x * q1y)
            m = np.where(pop, m - 1, m)
            popping = pop
        mi = np.minimum(m, K - 1)
        qx[rows, mi] = np.where(act, qx[:, i], qx[rows, mi])
        qy[rows, mi] = np.where(act, qy[:, i], qy[rows, mi])
        m = np.where(act, m + 1, m)
    area = np.zeros(P, px.dtype)
    for i in range(1, K - 1):
        use = i < m - 1
        if not use.any():
            break
        c = np.abs(_cross(qx[:, i] - qx[:, 0], qy[:, i] - qy[:, 0],
                          qx[:, i + 1] - qx[:, 0], qy[:, i + 1] - qy[:, 0]))
        area = np.where(use, area + c, area)
    area = (area.astype(np.float64) / 2.0).astype(px.dtype)
    return np.where(single | (m <= 2), T(0), area)


def pair_iou(a, b, ca=None, sa=None, cb=None, sb=None) -> np.ndarray:
    """IoU in the working type T (rotated_pair_iou_t) of cxcywhr boxes ``a[..., 5]`` and
    ``b[..., 5]`` taken pairwise (same shape, same float dtype); ``ca, sa, cb, sb``: their
    :func:`half_cos_sin` (computed here if omitted)."""
    a, b = np.asarray(a), np.asarray(b)
    shape = a.shape[:-1]
    a, b = a.reshape(-1, 5), b.reshape(-1, 5)
    T = a.dtype.type
    if ca is None:
        ca, sa = half_cos_sin(a[:, 4])
        cb, sb = half_cos_sin(b[:, 4])
    ca, sa, cb, sb = (np.asarray(v).reshape(-1) for v in (ca, sa, cb, sb))
    out = np.zeros(a.shape[0], a.dtype)
    with np.errstate(all="ignore"):
        sx = (a[:, 0] + b[:, 0]).astype(np.float64) / 2.0
        sy = (a[:, 1] + b[:, 1]).astype(np.float64) / 2.0
        area1, area2 = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
        live = ~((area1.astype(np.float64) < 1e-14) | (area2.astype(np.float64) < 1e-14))
        ax = (a[:, 0].astype(np.float64) - sx).astype(a.dtype)
        ay = (a[:, 1].astype(np.float64) - sy).astype(a.dtype)
        bx = (b[:, 0].astype(np.float64) - sx).astype(a.dtype)
        by = (b[:, 1].astype(np.float64) - sy).astype(a.dtype)
        p1x, p1y = _corners(ax, ay, a[:, 2], a[:, 3], ca, sa)
        p2x, p2y = _corners(bx, by, b[:, 2], b[:, 3], cb, sb)
        cx, cy, ok = _candidates(p1x, p1y, p2x, p2y)
        num = ok.sum(axis=0)
        inter = np.zeros(a.shape[0], a.dtype)
        poly = live & (num > 2)
        if poly.any():
            # Compact each pair's valid candidates in order (a stable sort of "not valid").
            sel = np.argsort(~ok[:, poly], axis=0, kind="stable")
            hx = np.take_along_axis(cx[:, poly], sel, axis=0).T.copy()
            hy = np.take_along_axis(cy[:, poly], sel, axis=0).T.copy()
            inter[poly] = _hull_area(hx, hy, num[poly])
        iou = inter / ((area1 + area2) - inter)
        iou = np.where(iou < 0, T(0), iou)
        iou = np.where(iou > 1, T(1), iou)
        out = np.where(live, iou, T(0)).astype(a.dtype)
    return out.reshape(shape)


def _working(name: str, b) -> np.ndarray:
    b = np.asarray(b)
    if b.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a float or integer array, got {b.dtype}")
    return b


def box_iou_rotated(boxes1, boxes2, fmt: str = "cxcywhr") -> np.ndarray:
    """Pairwise IoU of rotated boxes ``[..., N, K] x [..., M, K] -> [..., N, M]`` float32
    (K = 5 for 'cxcywhr'/'xywhr', 8 for 'xyxyxyxy'); leading dimensions broadcast. Working dtype:
    float64 if either input is, else float32."""
    if fmt not in ROTATED_FORMATS:
        raise ValueError(f"fmt must be one of {ROTATED_FORMATS}, got {fmt!r}")
    b1, b2 = _working("boxes1", boxes1), _working("boxes2", boxes2)
    K = box_dim(fmt)
    for name, b in (("boxes1", b1), ("boxes2", b2)):
        if b.ndim < 2 or b.shape[-1] != K:
            raise ValueError(f"{name} must have shape [..., N, {K}] for fmt={fmt!r}, got {tuple(b.shape)}")
    dt = np.float64 if np.float64 in (b1.dtype, b2.dtype) else np.float32
    b1 = to_cxcywhr(b1.astype(dt, copy=False), fmt).astype(dt, copy=False)
    b2 = to_cxcywhr(b2.astype(dt, copy=False), fmt).astype(dt, copy=False)
    batch = np.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    N, M = b1.shape[-2], b2.shape[-2]
    if int(np.prod(batch + (N, M))) == 0:
        return np.zeros(batch + (N, M), np.float32)
    shape = batch + (N, M)
    (c1, s1), (c2, s2) = half_cos_sin(b1[..., 4]), half_cos_sin(b2[..., 4])  # per box, once
    a, b = np.broadcast_to(b1[..., :, None, :], shape + (5,)), np.broadcast_to(b2[..., None, :, :], shape + (5,))
    c1, s1 = np.broadcast_to(c1[..., :, None], shape), np.broadcast_to(s1[..., :, None], shape)
    c2, s2 = np.broadcast_to(c2[..., None, :], shape), np.broadcast_to(s2[..., None, :], shape)
    return pair_iou(a, b, c1, s1, c2, s2).astype(np.float32)


# ---- NMS ---------------------------------------------------------------------------------------

def _nms_working(boxes, scores, fmt: str):
    b, s = np.asarray(boxes), np.asarray(scores)
    K = box_dim(fmt)
    if b.ndim != 2 or b.shape[1] != K:
        raise ValueError(f"boxes must have shape [N, {K}], got {tuple(b.shape)}")
    if s.ndim != 1 or s.shape[0] != b.shape[0]:
        raise ValueError(f"scores must have shape [{b.shape[0]}], got {tuple(s.shape)}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    if dt.kind != "f":
        raise TypeError(f"boxes and scores must be floating point, got {b.dtype} and {s.dtype}")
    return to_cxcywhr(b.astype(dt, copy=False), fmt).astype(dt, copy=False), s.astype(dt, copy=False)


def nms_rotated(boxes, scores, iou_threshold: float, fmt: str = "cxcywhr") -> np.ndarray:
    """Greedy NMS of rotated boxes, the rules of :func:`detkernels.reference.nms.nms` (descending
    score, NaN first, ties by ascending index; a kept box suppresses every later one with
    ``double(iou(kept, other)) > iou_threshold``), the IoU of :func:`pair_iou` in the working type
    (the kept box first, as detectron2's nms_rotated). Returns int64 kept indices."""
    from .nms import score_order

    b, s = _nms_working(boxes, scores, fmt)
    c, sn = half_cos_sin(b[:, 4])
    thr = float(iou_threshold)
    alive = score_order(s)
    keep = []
    while alive.size:
        i, rest = alive[0], alive[1:]
        keep.append(i)
        if rest.size:
            n = rest.size
            iou = pair_iou(np.broadcast_to(b[i], (n, 5)), b[rest], np.full(n, c[i]), np.full(n, sn[i]),
                           c[rest], sn[rest])
            alive = rest[~(iou.astype(np.float64) > thr)]
        else:
            alive = rest
    return np.asarray(keep, dtype=np.int64)


def batched_nms_rotated(boxes, scores, idxs, iou_threshold: float, fmt: str = "cxcywhr") -> np.ndarray:
    """:func:`nms_rotated` within each class of ``idxs`` (exact: no coordinate offsets); kept
    indices by descending score (NaN first), ties by ascending index."""
    from .nms import per_class

    b, s = _nms_working(boxes, scores, fmt)
    return per_class(nms_rotated, b, s, idxs, iou_threshold)


# ---- ProbIoU (ultralytics' OBB metric) ----------------------------------------------------------------

def _libm(name: str, x: np.ndarray) -> np.ndarray:
    """C's double ``name`` (cos, sin, exp, log) elementwise on x's values, rounded to x's dtype:
    Python's math module is the same libm as the C++ kernels (math raises where C returns
    inf/NaN; those cases are mapped back)."""
    f = getattr(math, name)

    def one(v: float) -> float:
        try:
            return f(v)
        except OverflowError:
            return math.inf
        except ValueError:
            return -math.inf if (name == "log" and v == 0) else math.nan

    x = np.asarray(x)
    flat = x.astype(np.float64).ravel()
    return np.array([one(v) for v in flat], np.float64).astype(x.dtype).reshape(x.shape)


def _cov(b):
    """probiou_cov: (a, b, c) of ultralytics' Gaussian of each (cx, cy, w, h, radians) box."""
    T = b.dtype.type
    with np.errstate(all="ignore"):
        A, B = (b[..., 2] * b[..., 2]) / T(12), (b[..., 3] * b[..., 3]) / T(12)
        cs, sn = _libm("cos", b[..., 4]), _libm("sin", b[..., 4])
        cos2, sin2 = cs * cs, sn * sn
        return A * cos2 + B * sin2, A * sin2 + B * cos2, ((A - B) * cs) * sn


def probiou_pair(p, q, cp, cq, eps: float = 1e-7) -> np.ndarray:
    """ProbIoU of boxes p (ultralytics' obb1) and q, elementwise over broadcast arrays, in their
    dtype T; cp, cq: their :func:`_cov`. The formula of csrc/ops/box_iou/box_iou_rotated.h."""
    T = p.dtype.type
    e = T(eps)
    (a1, b1, c1), (a2, b2, c2) = cp, cq
    with np.errstate(all="ignore"):
        sa, sb, sc = a1 + a2, b1 + b2, c1 + c2
        dy, dx = p[..., 1] - q[..., 1], p[..., 0] - q[..., 0]
        S = sa * sb - sc * sc
        t1 = ((sa * (dy * dy) + sb * (dx * dx)) / (S + e)) * T(0.25)
        t2 = (((sc * (q[..., 0] - p[..., 0])) * dy) / (S + e)) * T(0.5)
        d1, d2 = a1 * b1 - c1 * c1, a2 * b2 - c2 * c2
        d1, d2 = np.where(d1 < 0, T(0), d1), np.where(d2 < 0, T(0), d2)
        root = np.sqrt((d1 * d2).astype(np.float64)).astype(p.dtype)
        arg = S / (T(4) * root + e) + e
        bd = (t1 + t2) + _libm("log", arg) * T(0.5)
        bd = np.where(bd < e, e, bd)
        bd = np.where(bd > T(100), T(100), bd)
        hd = np.sqrt(((T(1) - _libm("exp", -bd)) + e).astype(np.float64)).astype(p.dtype)
        return (T(1) - hd).astype(p.dtype)


def _probiou_working(name: str, b) -> np.ndarray:
    b = _working(name, b)
    if b.ndim < 2 or b.shape[-1] != 5:
        raise ValueError(f"{name} must have shape [..., N, 5], got {tuple(b.shape)}")
    return b


def probiou(boxes1, boxes2, eps: float = 1e-7) -> np.ndarray:
    """Pairwise ProbIoU ``[..., N, 5] x [..., M, 5] -> [..., N, M]`` of ultralytics-xywhr boxes
    ``(cx, cy, w, h, angle in radians)``: ``ultralytics.utils.metrics.batch_probiou``'s formula and
    operation order, with libm's exp/log/cos/sin (ultralytics' torch ops agree to a few ulp).
    Working and output dtype: float64 if either input is, else float32."""
    b1, b2 = _probiou_working("boxes1", boxes1), _probiou_working("boxes2", boxes2)
    dt = np.float64 if np.float64 in (b1.dtype, b2.dtype) else np.float32
    b1, b2 = b1.astype(dt, copy=False), b2.astype(dt, copy=False)
    batch = np.broadcast_shapes(b1.shape[:-2], b2.shape[:-2])
    shape = batch + (b1.shape[-2], b2.shape[-2])
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dt)
    c1 = tuple(np.broadcast_to(v[..., :, None], shape) for v in _cov(b1))
    c2 = tuple(np.broadcast_to(v[..., None, :], shape) for v in _cov(b2))
    return probiou_pair(np.broadcast_to(b1[..., :, None, :], shape + (5,)),
                        np.broadcast_to(b2[..., None, :, :], shape + (5,)), c1, c2, eps)


def nms_probiou(boxes, scores, iou_threshold: float, idxs=None, fast: bool = False,
                eps: float = 1e-7) -> np.ndarray:
    """NMS on ProbIoU of ``[N, 5]`` ultralytics-xywhr boxes, in score order (descending, NaN first,
    ties by ascending index), suppressing when ``double(probiou(earlier, later)) > iou_threshold``
    within a class of ``idxs`` (all one class if None). ``fast=False``: greedy (only kept boxes
    suppress, :func:`nms_rotated`'s rule); ``fast=True``: Fast-NMS (any earlier box suppresses,
    suppressed or not: ultralytics' ``TorchNMS.fast_nms``). Returns int64 kept indices."""
    from .nms import score_order

    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 2 or b.shape[1] != 5:
        raise ValueError(f"boxes must have shape [N, 5], got {tuple(b.shape)}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    b, s = b.astype(dt, copy=False), s.astype(dt, copy=False)
    order = score_order(s)
    bo = b[order]
    cls = np.zeros(len(order), np.int64) if idxs is None else np.asarray(idxs)[order]
    cv = _cov(bo)
    n, thr = len(order), float(iou_threshold)
    dead = np.zeros(n, bool)
    for a in range(n):
        if dead[a] and not fast:
            continue
        rest = np.arange(a + 1, n)
        if not rest.size:
            break
        v = probiou_pair(np.broadcast_to(bo[a], (rest.size, 5)), bo[rest],
                         tuple(np.full(rest.size, x[a]) for x in cv), tuple(x[rest] for x in cv), eps)
        dead[rest] |= (v.astype(np.float64) > thr) & (cls[rest] == cls[a])
    return order[~dead].astype(np.int64)


# ---- fixed-size multi-image forms (issue 17) ------------------------------------------------------------

def _multi_working(boxes, scores, idxs, max_output: int, k: int):
    """boxes [B, N, k], scores [B, N], idxs [B, N] or None -> (boxes, scores in the working dtype,
    idxs, max_output)."""
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 3 or b.shape[2] != k:
        raise ValueError(f"boxes must have shape [B, N, {k}], got {tuple(b.shape)}")
    if s.shape != b.shape[:2]:
        raise ValueError(f"scores must have shape [{b.shape[0]}, {b.shape[1]}], got {tuple(s.shape)}")
    if idxs is not None:
        idxs = np.asarray(idxs)
        if idxs.shape != s.shape:
            raise ValueError(f"idxs must have shape {tuple(s.shape)}, got {tuple(idxs.shape)}")
    K = int(max_output)
    if K < 0:
        raise ValueError(f"max_output must be >= 0, got {max_output}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    if dt.kind != "f":
        raise TypeError(f"boxes and scores must be floating point, got {b.dtype} and {s.dtype}")
    return b.astype(dt, copy=False), s.astype(dt, copy=False), idxs, K


def _per_image(b, s, idxs, K: int, score_threshold, nms_one):
    """The fixed-size rule of :func:`detkernels.reference.nms.multi_image_nms`, per image: the
    candidates with ``double(score) > score_threshold`` (all if None; NaN scores then fail),
    ``nms_one(boxes, scores, classes or None)`` on them, the kept indices (into the image's N
    boxes, by descending score) truncated to K. Returns (indices [B, K] -1 padded, counts [B])."""
    B, N = s.shape
    out = np.full((B, K), -1, np.int64)
    counts = np.zeros(B, np.int64)
    for i in range(B):
        sel = np.arange(N, dtype=np.int64)
        if score_threshold is not None:
            sel = sel[s[i].astype(np.float64) > float(score_threshold)]
        if sel.size == 0:
            continue
        q = sel[nms_one(b[i][sel], s[i][sel], None if idxs is None else idxs[i][sel])][:K]
        counts[i] = q.size
        out[i, :q.size] = q
    return out, counts


def multi_image_nms_rotated(boxes, scores, iou_threshold: float, max_output: int, fmt: str = "cxcywhr",
                            idxs=None, score_threshold: float | None = None):
    """:func:`nms_rotated` (:func:`batched_nms_rotated` with ``idxs`` ``[B, N]``) of each image of
    ``boxes`` ``[B, N, 5 or 8]`` / ``scores`` ``[B, N]`` on its boxes with ``double(score) >
    score_threshold``, with fixed-size outputs: ``(indices [B, max_output] int64 padded with -1,
    counts [B] int64)``, the indices into the image's N boxes by descending score."""
    if fmt not in ROTATED_FORMATS:
        raise ValueError(f"fmt must be one of {ROTATED_FORMATS}, got {fmt!r}")
    b, s, c, K = _multi_working(boxes, scores, idxs, max_output, box_dim(fmt))
    b = to_cxcywhr(b, fmt).astype(b.dtype, copy=False)
    thr = float(iou_threshold)

    def one(bb, ss, cc):
        return nms_rotated(bb, ss, thr) if cc is None else batched_nms_rotated(bb, ss, cc, thr)

    return _per_image(b, s, c, K, score_threshold, one)


def multi_image_nms_probiou(boxes, scores, iou_threshold: float, max_output: int, idxs=None,
                            fast: bool = False, eps: float = 1e-7, score_threshold: float | None = None):
    """:func:`nms_probiou` of each image of ultralytics-xywhr ``boxes`` ``[B, N, 5]`` / ``scores``
    ``[B, N]`` (classes ``idxs`` ``[B, N]``) on its boxes with ``double(score) > score_threshold``;
    outputs as :func:`multi_image_nms_rotated`'s."""
    b, s, c, K = _multi_working(boxes, scores, idxs, max_output, 5)
    thr = float(iou_threshold)
    return _per_image(b, s, c, K, score_threshold, lambda bb, ss, cc: nms_probiou(bb, ss, thr, cc, fast, eps))
