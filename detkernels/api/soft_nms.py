"""Soft-NMS (Bodla et al. 2017): decay the scores of the boxes that overlap a kept box instead of
removing them -- what crowded scenes need and torchvision does not offer (pytorch/vision#8849).
Semantics and the float order: ``detkernels/reference/soft_nms.py``; differences from mmcv's and
ensemble-boxes' soft_nms are listed there and in docs/SPEC.md §6.2.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["soft_nms"]


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
