"""NumPy reference (the specification) of Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object
Detection With One Line of Code", ICCV 2017): ``soft_nms`` and the per-class ``batched_soft_nms``.

Instead of discarding the boxes that overlap a kept box, Soft-NMS multiplies their scores by a
decay weight and goes on; a box leaves when its score falls below ``score_threshold``.

The algorithm, in the working type T (float32 or float64; float16/bfloat16 are computed in float32,
docs/SPEC.md §1.5). ``s`` is a copy of the scores in T; every comparison with a Python threshold is
made in float64 (``(double)x``), as ``nms`` does:

1. Boxes with ``(double)s < score_threshold`` are dropped up front (NaN scores stay: NaN < t is
   false).
2. Repeat while boxes remain and fewer than ``max_output`` are kept:

   a. pick the remaining box ``i`` with the highest current score -- NaN ranks above +inf, equal
      scores (+0 == -0) go to the lowest input index -- and output ``(i, s[i])``;
   b. for every other remaining box ``j`` (in any order: the updates are independent):
      ``iou = nms_iou(i, j)`` (detkernels/reference/nms.py: kept box first, std::max/min, in T) and

      * linear:   ``w = T(1) - iou`` if ``(double)iou > iou_threshold`` else ``T(1)``
      * gaussian: ``w = dk_exp(-(iou * iou) / T(sigma))``, or ``T(1)`` when iou is NaN

      ``s[j] = s[j] * w`` (one rounding in T), and ``j`` is dropped if ``(double)s[j] < score_threshold``.

The output is the pick order: ``(indices int64, scores T)``. Weights are <= 1 whenever the IoU is
in [0, 1] (every pair of finite boxes with x1 <= x2, y1 <= y2), so the scores are then
non-increasing; inverted or non-finite boxes can give IoUs outside [0, 1], and the pick rule still
defines the order.

``dk_exp`` is detkernels' own exponential (below; the C++ twin is in csrc/ops/nms/soft_nms.h): the
Cephes exp/expf algorithm written with + - * / floor ldexp only, each operation rounded in T, so
that the NumPy reference, the C++ kernels and any later backend give the same bits. np.exp cannot
be the specification: NumPy dispatches float32/float64 exp to SIMD code chosen at run time (AVX2,
AVX512F or libm), whose results differ in the last ulp between machines and from glibc's exp.
dk_exp is within 1 ulp (float32) / 2 ulp (float64) of the correctly rounded exp
(tests/ops/test_soft_nms.py pins the bound against math.exp); weight(0) is exactly 1.

Differences from the common implementations (each pinned by tests/ops/test_soft_nms.py):

* mmcv ``soft_nms`` decays linearly when ``iou >= iou_threshold``; the paper's code, ensemble-boxes
  and detkernels use ``iou > iou_threshold`` (as ``nms``: an IoU equal to the threshold is kept
  at full score).
* The paper's code and mmcv never test the first picked box against the score threshold and swap
  removed boxes with the last one (which changes the order among equal scores); ensemble-boxes
  keeps ``score > thresh`` (strict) at the end. detkernels drops ``score < score_threshold`` (as the
  paper and mmcv) everywhere, the first box included, and breaks ties by input index.
* ensemble-boxes computes the IoU and the weights in float64 for float32 inputs (its boxes are
  concatenated with an int64 index column) and rounds the decayed score to float32; detkernels
  computes in the working type. For float64 inputs without ties the two agree exactly with the
  linear method; with the Gaussian, up to dk_exp's last-ulp difference from np.exp.
* A NaN IoU (identical zero-area boxes: 0/0, NaN coordinates) never decays, as it never
  suppresses in ``nms``; ensemble-boxes and mmcv turn the score into NaN (Gaussian).
* mmcv's ``offset`` (+1 in widths) is not offered (torchvision's and nms's arithmetic).
"""
from __future__ import annotations

import numpy as np

from .nms import _std_max, _std_min, _working, score_order

__all__ = ["METHODS", "dk_exp", "soft_nms", "batched_soft_nms", "multi_image_soft_nms"]

METHODS = ("linear", "gaussian")

# Cephes exp (double): x = n ln2 + r, |r| <= ln2 / 2, exp(r) = 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)).
_LOG2E = 1.4426950408889634073599
_C1, _C2 = 6.93145751953125e-1, 1.42860682030941723212e-6  # ln2 = C1 + C2, C1 exact in 11 bits
_P = (1.26177193074810590878e-4, 3.02994407707441961300e-2, 9.99999999999999999910e-1)
_Q = (3.00198505138664455042e-6, 2.52448340349684104192e-3, 2.27265548208155028766e-1,
      2.00000000000000000009e0)
_MINLOG, _MAXLOG = -7.451332191019412076235e2, 7.09782712893383996843e2
# Cephes expf (float32): constants as their exact float32 values (hex), so that the C++ literal
# and the NumPy scalar are the same number (a decimal read as double, then narrowed, could round
# differently from a decimal read as float).
_F = {k: np.float32(float.fromhex(v)) for k, v in dict(
    log2e="0x1.715476p+0", c1="0x1.63p-1", c2="-0x1.bd0106p-13", p0="0x1.a0d2cep-13",
    p1="0x1.6e879cp-10", p2="0x1.111210p-7", p3="0x1.555382p-5", p4="0x1.555554p-3",
    p5="0x1p-1", minlog="-0x1.9d1da0p+6", maxlog="0x1.62e430p+6").items()}


def dk_exp(x) -> np.ndarray:
    """exp(x) elementwise in x's float dtype (float32 or float64), operation for operation as
    csrc/ops/nms/soft_nms.h's dk_exp. NaN -> NaN, -inf -> 0, +inf -> +inf."""
    x = np.asarray(x)
    if x.dtype == np.float64:
        return _exp64(x)
    if x.dtype == np.float32:
        return _exp32(x)
    raise TypeError(f"dk_exp takes float32 or float64, got {x.dtype}")


def _exp64(x: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        xc = np.clip(x, _MINLOG, _MAXLOG)  # keeps n finite; the ends are replaced below
        px = np.floor(_LOG2E * xc + 0.5)
        r = xc - px * _C1
        r = r - px * _C2
        xx = r * r
        p = r * ((_P[0] * xx + _P[1]) * xx + _P[2])
        q = ((_Q[0] * xx + _Q[1]) * xx + _Q[2]) * xx + _Q[3]
        r = p / (q - p)
        r = 1.0 + 2.0 * r
        y = np.ldexp(r, px.astype(np.int32))
    y = np.where(x < _MINLOG, 0.0, y)
    y = np.where(x > _MAXLOG, np.inf, y)
    return np.where(np.isnan(x), x, y)


def _exp32(x: np.ndarray) -> np.ndarray:
    f = _F
    with np.errstate(all="ignore"):
        xc = np.clip(x, f["minlog"], f["maxlog"])
        z = np.floor(f["log2e"] * xc + np.float32(0.5))
        r = xc - z * f["c1"]
        r = r - z * f["c2"]
        zz = r * r
        p = (((((f["p0"] * r + f["p1"]) * r + f["p2"]) * r + f["p3"]) * r + f["p4"]) * r + f["p5"])
        y = ((p * zz) + r) + np.float32(1)
        y = np.ldexp(y, z.astype(np.int32)).astype(np.float32)
    y = np.where(x < f["minlog"], np.float32(0), y)
    y = np.where(x > f["maxlog"], np.float32(np.inf), y)
    return np.where(np.isnan(x), x, y).astype(np.float32)


def _weights(iou: np.ndarray, method: str, iou_threshold: float, sigma) -> np.ndarray:
    """The decay weight of each IoU (T), as soft_nms.h's soft_nms_weight."""
    T = iou.dtype.type
    with np.errstate(all="ignore"):
        if method == "linear":
            return np.where(iou.astype(np.float64) > iou_threshold, T(1) - iou, T(1)).astype(iou.dtype)
        w = dk_exp(-(iou * iou) / T(sigma))
    return np.where(np.isnan(iou), T(1), w).astype(iou.dtype)


def soft_nms(boxes, scores, iou_threshold: float = 0.3, sigma: float = 0.5, method: str = "linear",
             score_threshold: float = 0.001, max_output: int | None = None):
    """Soft-NMS of ``boxes`` ``[N, 4]`` (x1, y1, x2, y2) with ``scores`` ``[N]``.

    Returns ``(indices int64 [K], scores [K])`` in pick order (the module docstring), K <= N and
    K <= max_output when given; the scores are the decayed ones, in the working type."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    b, s = _working(boxes, scores)
    T = b.dtype.type
    thr, sthr = float(iou_threshold), float(score_threshold)
    limit = b.shape[0] if max_output is None else int(max_output)
    s = s.copy()
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    with np.errstate(all="ignore"):
        area = (x2 - x1) * (y2 - y1)
    # Remaining boxes in input order; picking from them by score_order gives NaN first, then the
    # highest score, ties to the lowest index (the first of the stable order).
    alive = np.flatnonzero(~(s.astype(np.float64) < sthr))
    keep, kept = [], []
    while alive.size and len(keep) < limit:
        p = score_order(s[alive])[0]
        i = alive[p]
        keep.append(i)
        kept.append(s[i])
        rest = np.delete(alive, p)
        with np.errstate(all="ignore"):
            w = _std_max(T(0), _std_min(x2[i], x2[rest]) - _std_max(x1[i], x1[rest]))
            h = _std_max(T(0), _std_min(y2[i], y2[rest]) - _std_max(y1[i], y1[rest]))
            inter = w * h
            iou = inter / ((area[i] + area[rest]) - inter)
            s[rest] = s[rest] * _weights(iou, method, thr, sigma)
        alive = rest[~(s[rest].astype(np.float64) < sthr)]
    return np.asarray(keep, dtype=np.int64), np.asarray(kept, dtype=b.dtype)


def batched_soft_nms(boxes, scores, idxs, iou_threshold: float = 0.3, sigma: float = 0.5,
                     method: str = "linear", score_threshold: float = 0.001,
                     max_output: int | None = None):
    """Soft-NMS within each class of ``idxs`` (``[N]``, any numeric dtype; equal values = one
    class; boxes of different classes never decay each other). The kept boxes of all classes are
    ordered by decreasing decayed score (NaN first), ties by ascending input index, then truncated
    to ``max_output``. Returns ``(indices int64, scores)``."""
    b, s = _working(boxes, scores)
    c = np.asarray(idxs)
    if c.shape != s.shape:
        raise ValueError(f"idxs must have shape [{s.shape[0]}], got {tuple(c.shape)}")
    ks, ss = [np.empty(0, np.int64)], [np.empty(0, b.dtype)]
    for cls in np.unique(c):
        members = np.flatnonzero(c == cls)
        k, v = soft_nms(b[members], s[members], iou_threshold, sigma, method, score_threshold, max_output)
        ks.append(members[k])
        ss.append(v)
    k, v = np.concatenate(ks), np.concatenate(ss)
    by_index = np.argsort(k, kind="stable")
    k, v = k[by_index], v[by_index]
    o = score_order(v)
    if max_output is not None:
        o = o[:int(max_output)]
    return k[o], v[o]


def multi_image_soft_nms(boxes, scores, max_output: int, iou_threshold: float = 0.3, sigma: float = 0.5,
                         method: str = "linear", score_threshold: float = 0.001, idxs=None):
    """Soft-NMS of a batch, fixed-size outputs: ``boxes`` ``[B, N, 4]``, ``scores`` ``[B, N]``,
    ``idxs`` ``[B, N]`` or None. Per image, ``soft_nms`` (``batched_soft_nms`` with idxs) capped at
    ``max_output``. Returns ``(indices [B, K] int64 padded with -1, scores [B, K] padded with 0,
    counts [B] int64)``."""
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 3 or b.shape[2] != 4 or s.shape != b.shape[:2]:
        raise ValueError(f"boxes must be [B, N, 4] and scores [B, N], got {b.shape} and {s.shape}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    K = int(max_output)
    B = b.shape[0]
    out = np.full((B, K), -1, np.int64)
    vals = np.zeros((B, K), dt)
    counts = np.zeros(B, np.int64)
    for i in range(B):
        args = (iou_threshold, sigma, method, score_threshold, K)
        if idxs is None:
            k, v = soft_nms(b[i], s[i], *args)
        else:
            k, v = batched_soft_nms(b[i], s[i], np.asarray(idxs)[i], *args)
        counts[i] = k.size
        out[i, :k.size], vals[i, :k.size] = k, v
    return out, vals, counts
