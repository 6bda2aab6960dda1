"""NMS for crowded scenes (issue 13), what torchvision does not offer (pytorch/vision#8849):
``soft_nms`` (Bodla et al. 2017: decay the scores of the boxes that overlap a kept box instead of
removing them) and ``diou_nms`` (Zheng et al. 2020: suppress by IoU minus the normalised centre
distance). Semantics and float order: ``detkernels/reference/soft_nms.py``, ``diou_nms.py``;
differences from mmcv, ensemble-boxes and the papers' code: there and in docs/SPEC.md §6.2-6.3.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["soft_nms", "diou_nms"]


@public
def soft_nms(boxes: Any, scores: Any, iou_threshold: float = 0.3, *, sigma: float = 0.5,
             method: str = "linear", score_threshold: float = 0.001, max_output: int | None = None,
             idxs: Any = None, backend: str | None = None) -> tuple[Any, Any]:
    """Soft-NMS: repeatedly keep the box with the highest current score (NaN first, ties by
    ascending index) and multiply the score of every other remaining box by a decay weight of its
    IoU with it; boxes whose score falls below ``score_threshold`` are dropped.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``; float16/bfloat16 are computed in float32.
        scores: ``[N]`` scores.
        iou_threshold: linear method only: the weight is ``1 - iou`` where ``iou > iou_threshold``
            (compared in float64), else 1 (mmcv's default 0.3).
        sigma: gaussian method only: the weight is ``exp(-iou**2 / sigma)``; must be > 0.
        method: ``"linear"`` (mmcv's default) or ``"gaussian"``.
        score_threshold: boxes with a (decayed) score ``< score_threshold`` are dropped.
        max_output: keep at most this many (None: no limit).
        idxs: optional ``[N]`` class ids: Soft-NMS within each class (boxes of different classes
            never decay each other), the classes' kept boxes merged by decayed score.

    Returns:
        ``(indices, scores)``: int64 indices of the kept boxes and their decayed scores (in the
        working dtype: float64 if boxes or scores are, else float32), by decreasing decayed score
        (the pick order; ties by ascending index). Arrays of the input's kind and device.
    """
    w, thr, sig, meth, sthr, k = _checks.soft_nms_check(boxes, scores, idxs, iou_threshold, sigma,
                                                        method, score_threshold, max_output)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.soft_nms(boxes, scores, idxs, thr, sig, meth, sthr, k, w, backend)
    return _dispatch.soft_nms(boxes, scores, idxs, thr, sig, meth, sthr, k, w, backend)


@public
def diou_nms(boxes: Any, scores: Any, iou_threshold: float, *, beta: float = 1.0, idxs: Any = None,
             backend: str | None = None) -> Any:
    """DIoU-NMS: greedy NMS (``nms``'s contract: visit by descending score, NaN first, ties by
    ascending index) that discards a later box when ``iou - (d^2 / c^2)^beta`` with a kept box is
    strictly greater than ``iou_threshold`` (compared in float64); ``d`` is the distance of the
    centres, ``c`` the diagonal of the smallest enclosing box (distance_box_iou's term, without its
    epsilon).

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``; float16/bfloat16 are computed in float32.
        scores: ``[N]`` scores.
        iou_threshold: discard boxes whose DIoU with a kept box is > iou_threshold.
        beta: the penalty exponent (> 0; the paper's 1.0, YOLOv4's darknet uses 0.6).
        idxs: optional ``[N]`` class ids: exact per-class DIoU-NMS (as ``batched_nms``).

    Returns:
        int64 indices of the kept boxes, by descending score (ties by ascending index).
    """
    w, thr, b = _checks.diou_nms_check(boxes, scores, idxs, iou_threshold, beta)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.diou_nms(boxes, scores, idxs, thr, b, w, backend)
    return _dispatch.diou_nms(boxes, scores, idxs, thr, b, w, backend)
