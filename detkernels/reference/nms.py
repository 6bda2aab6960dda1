"""NumPy reference (the specification) of greedy non-maximum suppression: ``nms`` and the exact
per-class ``batched_nms``.

Semantics (torchvision 0.29.1's CPU kernel, ``docs/torchvision-semantics.md`` §1-2):

* Boxes are visited by descending score; NaN ranks above +inf; equal scores keep ascending index
  order (a stable sort). A visited box that is not suppressed is kept, and suppresses every later
  box ``j`` with ``(double)iou > (double)iou_threshold`` -- strictly greater: an IoU equal to the
  threshold is kept.
* The IoU is computed in the working type T (float32 or float64; float16/bfloat16 are computed in
  float32, docs/SPEC.md §1.5) with the kept box first::

      area  = (x2 - x1) * (y2 - y1)
      w     = std::max(0, std::min(a.x2, b.x2) - std::max(a.x1, b.x1))     h likewise
      inter = w * h ;  iou = inter / ((area_a + area_b) - inter)

  where ``std::max(x, y) = y if x < y else x`` (so NaN handling follows the operand order).
  0/0 = NaN never suppresses; a negative threshold suppresses every later box.
* The comparison is in float64 on every backend (docs/SPEC.md divergence 1: torchvision's CUDA kernel
  narrows the threshold to float32).
* ``batched_nms`` runs that rule within each class only (docs/SPEC.md divergence 2: no coordinate
  offsets); the result is ordered by descending score, ties by ascending index.

Returns int64 indices into the input.
"""
from __future__ import annotations

import numpy as np

__all__ = ["score_order", "nms", "batched_nms", "multi_image_nms", "nms_padded"]


def score_order(scores) -> np.ndarray:
    """Stable descending order of ``scores`` with NaN first: ``torch.sort(descending=True, stable=True)``."""
    s = np.asarray(scores)
    # lexsort: last key is primary. NaN first (isnan -> key 0), then descending value, then index.
    return np.lexsort((-s, ~np.isnan(s))).astype(np.int64)


def _std_max(a, b):
    return np.where(a < b, b, a)


def _std_min(a, b):
    return np.where(b < a, b, a)


def _working(boxes, scores):
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(b.shape)}")
    if s.ndim != 1 or s.shape[0] != b.shape[0]:
        raise ValueError(f"scores must have shape [{b.shape[0]}], got {tuple(s.shape)}")
    if b.dtype.kind != "f" or s.dtype.kind != "f":
        raise TypeError(f"boxes and scores must be floating point, got {b.dtype} and {s.dtype}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    return b.astype(dt, copy=False), s.astype(dt, copy=False)


def nms(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Greedy NMS. ``boxes`` ``[N, 4]`` (x1, y1, x2, y2), ``scores`` ``[N]``; returns the kept
    indices (int64) by descending score, ties by ascending index."""
    b, s = _working(boxes, scores)
    T = b.dtype.type
    thr = float(iou_threshold)
    x1, y1, x2, y2 = (b[:, k] for k in range(4))
    with np.errstate(all="ignore"):
        area = (x2 - x1) * (y2 - y1)
        order = score_order(s)
        alive = order  # candidates not yet suppressed, in visiting order
        keep = []
        while alive.size:
            i, rest = alive[0], alive[1:]
            keep.append(i)
            xx1 = _std_max(x1[i], x1[rest])
            yy1 = _std_max(y1[i], y1[rest])
            xx2 = _std_min(x2[i], x2[rest])
            yy2 = _std_min(y2[i], y2[rest])
            w = _std_max(T(0), xx2 - xx1)
            h = _std_max(T(0), yy2 - yy1)
            inter = w * h
            iou = inter / ((area[i] + area[rest]) - inter)
            alive = rest[~(iou.astype(np.float64) > thr)]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes, scores, idxs, iou_threshold: float) -> np.ndarray:
    """NMS within each class of ``idxs`` (``[N]``, any numeric dtype; equal values = one class).
    Returns kept indices (int64) by descending score (NaN first), ties by ascending index."""
    b, s = _working(boxes, scores)
    return per_class(nms, b, s, idxs, iou_threshold)


def per_class(nms_fn, b: np.ndarray, s: np.ndarray, idxs, iou_threshold: float) -> np.ndarray:
    """``nms_fn(boxes, scores, iou_threshold)`` within each class of ``idxs`` (exact: no coordinate
    offsets), the classes' kept indices merged by descending score (NaN first), ties by ascending
    index: the per-class rule of every greedy NMS form (axis-aligned and rotated)."""
    c = np.asarray(idxs)
    if c.shape != s.shape:
        raise ValueError(f"idxs must have shape [{s.shape[0]}], got {tuple(c.shape)}")
    kept = [np.empty(0, np.int64)]
    for cls in np.unique(c):
        members = np.flatnonzero(c == cls)
        kept.append(members[nms_fn(b[members], s[members], iou_threshold)])
    keep = np.sort(np.concatenate(kept))
    return keep[score_order(s[keep])]


def multi_image_nms(boxes, scores, iou_threshold: float, max_output: int, idxs=None,
                    score_threshold: float | None = None):
    """NMS of a batch of images in one call, with fixed-size outputs.

    ``boxes`` ``[B, N, 4]``; ``scores`` ``[B, N]`` (one candidate per box) or ``[B, N, C]`` (one
    candidate per (box, class) pair: candidate ``n * C + c`` of the image, class ``c``);
    ``idxs`` ``[B, N]`` class ids (only with ``[B, N]`` scores). Per image:

    1. candidates with ``(double)score > score_threshold`` are kept (all if None; NaN scores
       then fail the filter);
    2. greedy NMS runs within each class (``nms`` rules: NaN first, strict ``>``, IoU in the working
       type, compared in float64); without classes, over all candidates;
    3. the kept candidates, by descending score (NaN first), ties by ascending candidate index,
       are truncated to ``max_output``.

    Returns ``(indices, classes, counts)``: ``indices`` ``[B, max_output]`` int64 box indices
    within each image, padded with -1; ``classes`` the same for the class column (None unless the
    scores are ``[B, N, C]``); ``counts`` ``[B]`` int64, the number of valid slots.
    """
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 3 or b.shape[2] != 4:
        raise ValueError(f"boxes must have shape [B, N, 4], got {tuple(b.shape)}")
    if s.ndim not in (2, 3) or s.shape[:2] != b.shape[:2]:
        raise ValueError(f"scores must have shape [{b.shape[0]}, {b.shape[1]}] or "
                         f"[{b.shape[0]}, {b.shape[1]}, C], got {tuple(s.shape)}")
    per_class = s.ndim == 3
    if idxs is not None:
        if per_class:
            raise ValueError("idxs cannot be combined with [B, N, C] scores (the class is the score column)")
        idxs = np.asarray(idxs)
        if idxs.shape != s.shape:
            raise ValueError(f"idxs must have shape {tuple(s.shape)}, got {tuple(idxs.shape)}")
    K = int(max_output)
    if K < 0:
        raise ValueError(f"max_output must be >= 0, got {max_output}")
    dt = np.result_type(b.dtype, s.dtype, np.float32)
    b, s = b.astype(dt, copy=False), s.astype(dt, copy=False)
    B, N = b.shape[:2]
    C = s.shape[2] if per_class else 1
    out = np.full((B, K), -1, np.int64)
    out_cls = np.full((B, K), -1, np.int64) if per_class else None
    counts = np.zeros(B, np.int64)
    cand_box = np.repeat(np.arange(N, dtype=np.int64), C)     # [N*C]
    cand_cls = np.tile(np.arange(C, dtype=np.int64), N)       # [N*C]
    for i in range(B):
        cs = s[i].reshape(-1)                                 # [N*C], candidate n*C + c
        sel = np.arange(N * C, dtype=np.int64)
        if score_threshold is not None:
            sel = sel[cs.astype(np.float64) > float(score_threshold)]
        if sel.size == 0:
            continue
        if per_class:
            keep = batched_nms(b[i][cand_box[sel]], cs[sel], cand_cls[sel], iou_threshold)
        elif idxs is not None:
            keep = batched_nms(b[i][sel], cs[sel], idxs[i][sel], iou_threshold)
        else:
            keep = nms(b[i][sel], cs[sel], iou_threshold)
        q = sel[keep][:K]
        counts[i] = q.size
        out[i, :q.size] = cand_box[q]
        if per_class:
            out_cls[i, :q.size] = cand_cls[q]
    return out, out_cls, counts


def nms_padded(boxes, scores, iou_threshold: float, max_output: int):
    """``nms`` with a fixed-size result: ``(indices [max_output] int64 padded with -1, count)``
    where ``count`` is a 0-d int64 array (the first ``count`` indices equal ``nms(...)[:max_output]``)."""
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(b.shape)}")
    if s.ndim != 1 or s.shape[0] != b.shape[0]:
        raise ValueError(f"scores must have shape [{b.shape[0]}], got {tuple(s.shape)}")
    idx, _, counts = multi_image_nms(b[None], s[None], iou_threshold, max_output)
    return idx[0], np.asarray(counts[0], dtype=np.int64)
