"""NumPy reference (the specification) of ``detect``: the fused detection post-process of a
one-stage head -- score threshold, pre-NMS top-k, exact per-class (or class-agnostic) NMS,
``max_det`` -- with fixed-size outputs. It composes the NMS reference (``nms``,
``batched_nms``, ``score_order``; with ``nms="diou"|"soft"|"matrix"`` the DIoU-, Soft- and
Matrix-NMS references instead of greedy NMS) and the IoU functions' box formats (``to_xyxy``).

Inputs: ``boxes [B, A, 4]`` in ``fmt``; ``scores [B, A, C]`` (a class column per anchor) or
``[B, A]`` (one score per anchor, classes from ``idxs [B, A]`` integer ids, else one class);
``objectness [B, A]`` optional. The working type T is float64 if any of boxes, scores,
objectness is float64, else float32 (float16/bfloat16 are computed in float32, docs/SPEC.md §1.5).

Per image, in this order (docs/SPEC.md §7):

1. Scores in T; with objectness, ``s = score * objectness`` (one product in T, before anything
   else: YOLOv5's ``conf = obj * cls``).
2. Candidates. ``[B, A, C]`` single-label: one per anchor ``a``, its best class ``c``: the first
   NaN column if the row has one (NaN ranks above +inf, as ``torch.max``), else the lowest
   column holding the row's maximum (a strict ``>`` scan: ties -> lowest class; -0.0 == +0.0);
   candidate index ``q = a``. ``[B, A, C]`` multi-label: every (anchor, class) pair, candidate index
   ``q = a * C + c``. ``[B, A]``: one per anchor, ``q = a``, class ``idxs[b, a]`` (0 without idxs).
3. Score filter (when ``score_threshold`` is given): keep candidates with
   ``(double)s > score_threshold`` -- strictly greater; NaN fails (so a single-label row holding a
   NaN never passes). Without a threshold every candidate (NaN included) stays.
4. Pre-NMS top-k (when ``pre_nms_top_k`` is given): the ``k`` first candidates by descending
   score, NaN first, ties by ascending candidate index (``score_order``); all if fewer.
5. NMS on the selected candidates in ascending candidate index, boxes converted to xyxy in T:
   per class, or over all candidates with ``class_agnostic`` (or ``[B, A]`` scores without idxs).
   ``nms`` chooses the single-image op, called as is (no maths of its own here; positions in the
   candidate list are the ops' input indices, so their "ties by ascending index" is "by ascending
   candidate index"):

   * ``"iou"`` (default): exact greedy NMS (``batched_nms`` rules): IoU ``>`` iou_threshold
     suppresses, compared in float64.
   * ``"diou"``: DIoU-NMS (reference/diou_nms.py ``diou_nms`` / ``batched_diou_nms``, ``beta``).
   * ``"soft"``: Soft-NMS (reference/soft_nms.py ``batched_soft_nms``, one class when
     class-agnostic: ``method = decay``, ``sigma``, ``score_threshold = min_score``, ``max_output
     = max_det``; ``iou_threshold`` is the linear decay's threshold, unused by the Gaussian).
   * ``"matrix"``: Matrix NMS (reference/matrix_nms.py ``matrix_nms``, labels = the classes, or
     one class when class-agnostic: ``kernel = decay``, ``sigma``, ``score_threshold =
     min_score``, ``max_output = max_det``; ``iou_threshold`` is unused).

   ``"soft"`` and ``"matrix"`` return decayed scores: those are the output scores and the order.
6. The kept candidates by descending (decayed) score (NaN first), ties by ascending candidate
   index, the first ``max_det`` of them fill the outputs.

Outputs (fixed shapes): ``boxes [B, max_det, 4]`` xyxy in T, ``scores [B, max_det]`` in T (the
product with objectness; decayed by ``"soft"`` / ``"matrix"``), ``classes [B, max_det]`` int64, ``indices [B, max_det]`` int64 (anchor
index), ``counts [B]`` int64. Slots past ``counts[b]`` hold 0 (boxes, scores) and -1 (classes,
indices).
"""
from __future__ import annotations

import numpy as np

from .box_iou import FORMATS, to_xyxy
from .diou_nms import batched_diou_nms, diou_nms
from .matrix_nms import matrix_nms
from .nms import batched_nms, score_order
from .nms import nms as iou_nms
from .soft_nms import batched_soft_nms

__all__ = ["detect", "best_class", "NMS_MODES", "NMS_PARAMETERS", "nms_parameters"]

#: ``detect``'s NMS modes.
NMS_MODES = ("iou", "diou", "soft", "matrix")
#: The parameters of each mode and their defaults (those of diou_nms, soft_nms, matrix_nms);
#: a parameter left None takes its mode's default, and must be None for a mode that has no use
#: for it.
NMS_PARAMETERS = {
    "iou": {},
    "diou": {"beta": 1.0},
    "soft": {"decay": "linear", "sigma": 0.5, "min_score": 0.001},
    "matrix": {"decay": "gaussian", "sigma": 2.0, "min_score": None},
}


def nms_parameters(nms: str = "iou", beta=None, decay=None, sigma=None, min_score=None) -> dict:
    """``{beta, decay, sigma, min_score}`` of mode ``nms``: the given values over the mode's
    defaults (NMS_PARAMETERS); the parameters the mode does not use are None."""
    if nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
    given = dict(beta=beta, decay=decay, sigma=sigma, min_score=min_score)
    used = NMS_PARAMETERS[nms]
    for name, v in given.items():
        if v is not None and name not in used:
            modes = [m for m in NMS_MODES if name in NMS_PARAMETERS[m]]
            raise ValueError(f"{name} applies to nms={' or '.join(map(repr, modes))}, not nms={nms!r}")
    return {name: (v if v is not None else used.get(name)) for name, v in given.items()}


def best_class(scores) -> np.ndarray:
    """``[..., C]`` -> ``[...]`` int64: the first NaN column of each row if it has one, else the
    lowest column holding the row's maximum (``torch.max(dim=-1)``'s index for untied rows; ties
    -> lowest class). ``C`` must be > 0."""
    s = np.asarray(scores)
    isnan = np.isnan(s)
    first_nan = np.argmax(isnan, axis=-1)
    # With NaN masked to -inf, the first maximum: argmax returns the first occurrence.
    first_max = np.argmax(np.where(isnan, -np.inf, s), axis=-1)
    return np.where(isnan.any(axis=-1), first_nan, first_max).astype(np.int64)


def detect(boxes, scores, iou_threshold: float, max_det: int, *, score_threshold: float | None = None,
           pre_nms_top_k: int | None = None, fmt: str = "xyxy", objectness=None,
           multi_label: bool = False, class_agnostic: bool = False, idxs=None, nms: str = "iou",
           beta: float | None = None, decay: str | None = None, sigma: float | None = None,
           min_score: float | None = None):
    """The fused post-process (module docstring). Returns ``(boxes, scores, classes, indices,
    counts)`` as NumPy arrays."""
    mode, prm = nms, nms_parameters(nms, beta, decay, sigma, min_score)
    b, s = np.asarray(boxes), np.asarray(scores)
    if b.ndim != 3 or b.shape[2] != 4:
        raise ValueError(f"boxes must have shape [B, A, 4], got {tuple(b.shape)}")
    if s.ndim not in (2, 3) or s.shape[:2] != b.shape[:2]:
        raise ValueError(f"scores must have shape [B, A] or [B, A, C] with [B, A] = "
                         f"{list(b.shape[:2])}, got {tuple(s.shape)}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    per_column = s.ndim == 3
    if multi_label and not per_column:
        raise ValueError("multi_label needs [B, A, C] scores")
    if idxs is not None and per_column:
        raise ValueError("idxs cannot be combined with [B, A, C] scores (the class is the score column)")
    arrays = [b, s] + ([] if objectness is None else [np.asarray(objectness)])
    dt = np.result_type(*(x.dtype for x in arrays), np.float32)
    b, s = b.astype(dt, copy=False), s.astype(dt, copy=False)
    B, A = b.shape[:2]
    C = s.shape[2] if per_column else 1
    K = int(max_det)
    with np.errstate(all="ignore"):
        if objectness is not None:  # [B, A]: one product in T per score
            o = np.asarray(objectness).astype(dt, copy=False)
            s = s * (o[:, :, None] if per_column else o)
        xyxy = to_xyxy(b, fmt)                                          # [B, A, 4] in T
    out_b = np.zeros((B, K, 4), dt)
    out_s = np.zeros((B, K), dt)
    out_c = np.full((B, K), -1, np.int64)
    out_i = np.full((B, K), -1, np.int64)
    counts = np.zeros(B, np.int64)
    for i in range(B):
        # Candidates in ascending candidate index q: anchor, class, score.
        if per_column and multi_label:
            anchor = np.repeat(np.arange(A, dtype=np.int64), C)          # [A*C], q = a*C + c
            cls = np.tile(np.arange(C, dtype=np.int64), A)
            cs = s[i].reshape(-1)
        elif per_column:
            anchor = np.arange(A if C > 0 else 0, dtype=np.int64)        # [A], q = a (C = 0: none)
            cls = best_class(s[i]) if C > 0 else anchor
            cs = s[i][anchor, cls]
        else:
            anchor = np.arange(A, dtype=np.int64)
            cls = np.zeros(A, np.int64) if idxs is None else np.asarray(idxs)[i].astype(np.int64)
            cs = s[i]
        sel = np.arange(anchor.size, dtype=np.int64)
        if score_threshold is not None:
            sel = sel[cs.astype(np.float64) > float(score_threshold)]
        if pre_nms_top_k is not None and sel.size > int(pre_nms_top_k):
            sel = np.sort(sel[score_order(cs[sel])[:int(pre_nms_top_k)]])
        if sel.size == 0:
            continue
        bb, ss = xyxy[i][anchor[sel]], cs[sel]
        agnostic = class_agnostic or (not per_column and idxs is None)
        labels = np.zeros(sel.size, np.int64) if agnostic else cls[sel]
        decayed = None
        if mode == "iou":
            keep = iou_nms(bb, ss, iou_threshold) if agnostic else batched_nms(bb, ss, labels, iou_threshold)
        elif mode == "diou":
            keep = (diou_nms(bb, ss, iou_threshold, prm["beta"]) if agnostic
                    else batched_diou_nms(bb, ss, labels, iou_threshold, prm["beta"]))
        elif mode == "soft":
            keep, decayed = batched_soft_nms(bb, ss, labels, iou_threshold, prm["sigma"], prm["decay"],
                                             prm["min_score"], K)
        else:
            keep, decayed = matrix_nms(bb, ss, labels, prm["decay"], prm["sigma"], prm["min_score"], K)
        q = sel[keep[:K]]
        n = q.size
        counts[i] = n
        out_b[i, :n] = xyxy[i][anchor[q]]
        out_s[i, :n] = cs[q] if decayed is None else decayed[:K]
        out_c[i, :n] = cls[q]
        out_i[i, :n] = anchor[q]
    return out_b, out_s, out_c, out_i, counts
