"""NumPy reference (the specification) of Matrix NMS (SOLOv2, Wang et al. 2020; mmdetection's
``mask_matrix_nms``, applied to boxes): every box's score is decayed at once by its IoUs with the
higher-scored boxes of its class, compensated by how much those boxes are themselves suppressed --
one parallel step instead of a sequential loop.

In the working type T (float32 or float64; float16/bfloat16 in float32); every comparison with a
Python threshold in float64:

1. Order the boxes by ``score_order`` (descending, NaN first, ties by ascending index); keep the
   first ``pre_top_k`` if given (mmdetection's ``nms_pre``). Ranks below are positions in it.
2. For each box j, with i ranging over the boxes of j's class ranked before j and
   ``iou(i, j) = nms_iou(i, j)`` (nms's arithmetic, higher-ranked box first):

   * compensation ``c_j = max(0, max_i iou(i, j))``, the max with NaN skipped
     (``c = iou if iou > c else c`` from ``c = 0``);
   * ``decay_j = min(1, min_i w(iou(i, j), c_i))``, the min with NaN skipped
     (``m = w if w < m else m`` from ``m = 1``), where
     gaussian: ``w(d, c) = dk_exp(T(-sigma) * (d * d)) / dk_exp(T(-sigma) * (c * c))``,
     linear:   ``w(d, c) = (T(1) - d) / (T(1) - c)``.

3. ``decayed_j = score_j * decay_j``; keep ``(double)decayed_j >= score_threshold`` (all if None);
   order by decayed score (NaN first), ties by ascending input index; keep the first
   ``max_output``. Returns ``(indices int64, decayed scores T)``.

Against mmdetection's ``mask_matrix_nms`` (and SOLOv2's code) with box IoUs: the same formulas
(``exp(-sigma * iou**2)`` ratios, ``(1 - iou) / (1 - c)``; sigma multiplies, SOLOv2's convention,
unlike soft-NMS's ``/ sigma``), the same ``>=`` filter and ``max_num``. Where IoUs lie in [0, 1]
(finite boxes with x1 <= x2, y1 <= y2) its column minimum over the whole N x N matrix equals
step 2's ``min(1, ...)``: its other entries are ``f(0) / f(c_i) >= 1``, and row 0 gives 1. The
differences: detkernels' ``dk_exp`` (reference/soft_nms.py) instead of torch.exp (last-ulp
differences); NaN IoUs are skipped (mmdetection's NaN propagates through ``max``/``min`` and,
multiplied by the 0 of its label mask, into every column); ties sorted by index (torch.sort is not
stable); ``score_threshold`` applies whenever given (mmdetection: only when > 0); Paddle's
box ``matrix_nms`` computes the Gaussian ratio as one ``exp((c**2 - d**2) * sigma)`` and filters
with ``>``.
"""
from __future__ import annotations

import numpy as np

from .nms import _std_max, _std_min, _working, score_order
from .soft_nms import dk_exp

__all__ = ["KERNELS", "matrix_nms", "multi_image_matrix_nms"]

KERNELS = ("gaussian", "linear")


def matrix_nms(boxes, scores, labels, kernel: str = "gaussian", sigma: float = 2.0,
               score_threshold: float | None = None, max_output: int | None = None,
               pre_top_k: int | None = None):
    """Matrix NMS of ``boxes`` ``[N, 4]`` with ``scores`` ``[N]`` and class ``labels`` ``[N]``
    (any numeric dtype; equal values = one class). Returns ``(indices int64, decayed scores)``."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    b, s = _working(boxes, scores)
    lab = np.asarray(labels)
    if lab.shape != s.shape:
        raise ValueError(f"labels must have shape [{s.shape[0]}], got {tuple(lab.shape)}")
    T = b.dtype.type
    order = score_order(s)
    if pre_top_k is not None:
        order = order[:int(pre_top_k)]
    n = order.size
    x1, y1, x2, y2 = (b[order, k] for k in range(4))
    ss, ll = s[order], lab[order]
    with np.errstate(all="ignore"):
        area = (x2 - x1) * (y2 - y1)
    neg = T(-float(sigma))

    def term(x):  # num(d) and den(c): matrix_nms.h's matrix_nms_term
        return dk_exp(neg * (x * x)) if kernel == "gaussian" else (T(1) - x)

    # Row by row in rank order (O(N) memory): when row i is reached, c_i is final (only rows
    # k < i update it), so its weights num(iou(i, j)) / den(c_i) for the later j of its class can
    # enter the running min, and its IoUs the running max. Pairs outside (j <= i, other classes)
    # get NaN, which the NaN-skipping max (c = d if d > c) and min (m = w if w < m) ignore.
    comp = np.zeros(n, b.dtype)
    decay = np.ones(n, b.dtype)
    ranks = np.arange(n)
    for i in range(n):
        with np.errstate(all="ignore"):
            w = _std_max(T(0), _std_min(x2[i], x2) - _std_max(x1[i], x1))
            h = _std_max(T(0), _std_min(y2[i], y2) - _std_max(y1[i], y1))
            inter = w * h
            iou = inter / ((area[i] + area) - inter)
            iou = np.where((ranks > i) & (ll == ll[i]), iou, T(np.nan)).astype(b.dtype)
            wgt = (term(iou) / term(comp[i])).astype(b.dtype)
        decay = np.where(wgt < decay, wgt, decay)
        comp = np.where(iou > comp, iou, comp)
    with np.errstate(all="ignore"):
        dec = (ss * decay).astype(b.dtype)
    sel = np.arange(n)
    if score_threshold is not None:
        sel = sel[dec.astype(np.float64) >= float(score_threshold)]
    idx, val = order[sel], dec[sel]
    by_index = np.argsort(idx, kind="stable")
    idx, val = idx[by_index], val[by_index]
    o = score_order(val)
    if max_output is not None:
        o = o[:int(max_output)]
    return idx[o].astype(np.int64), val[o]


def multi_image_matrix_nms(boxes, scores, labels, max_output: int, kernel: str = "gaussian",
                           sigma: float = 2.0, score_threshold: float | None = None,
                           pre_top_k: int | None = None):
    """Matrix NMS of a batch, fixed-size outputs: ``boxes`` ``[B, N, 4]``, ``scores`` and
    ``labels`` ``[B, N]``. Per image, ``matrix_nms`` with ``max_output``. Returns ``(indices
    [B, K] int64 padded with -1, decayed scores [B, K] padded with 0, counts [B] int64)``, as
    ``multi_image_soft_nms`` (reference/soft_nms.py)."""
    b, s, lab = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    if b.ndim != 3 or b.shape[2] != 4 or s.shape != b.shape[:2] or lab.shape != s.shape:
        raise ValueError(f"boxes must be [B, N, 4], scores and labels [B, N], got {b.shape}, "
                         f"{s.shape} and {lab.shape}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    K = int(max_output)
    if K < 0:
        raise ValueError(f"max_output must be >= 0, got {max_output}")
    B = b.shape[0]
    out = np.full((B, K), -1, np.int64)
    vals = np.zeros((B, K), dt)
    counts = np.zeros(B, np.int64)
    for i in range(B):
        k, v = matrix_nms(b[i], s[i], lab[i], kernel, sigma, score_threshold, K, pre_top_k)
        counts[i] = k.size
        out[i, :k.size], vals[i, :k.size] = k, v
    return out, vals, counts
