"""Rotated NMS: ``nms_rotated`` and ``batched_nms_rotated`` (detectron2's / mmcv's names;
torchvision's rotated NMS is still an open pull request). The rotated IoU itself is
``box_iou(..., fmt='cxcywhr' | 'xywhr' | 'xyxyxyxy')`` (detkernels/api/boxes.py).
Semantics: ``detkernels/reference/rotated.py``.
"""
from __future__ import annotations

from typing import Any

from .. import _checks, _dispatch
from . import public

__all__ = ["nms_rotated", "batched_nms_rotated"]


@public
def nms_rotated(boxes: Any, scores: Any, iou_threshold: float, fmt: str = "cxcywhr", *,
                backend: str | None = None) -> Any:
    """Greedy NMS of rotated boxes, on ``nms``'s rules: boxes visited by descending score (NaN
    first, ties by ascending index); a kept box discards every later box whose rotated IoU with
    it (the kept box first, torchvision's ``box_iou`` rotated kernel, in the working dtype) is
    strictly greater than ``iou_threshold`` (compared in float64). Returns int64 indices of the
    kept boxes by descending score.

    Args:
        boxes: ``[N, 5]`` ('cxcywhr', 'xywhr': angle in degrees, counter-clockwise) or ``[N, 8]``
            ('xyxyxyxy') boxes; float16/bfloat16 are computed in float32.
        scores: ``[N]`` scores.
        iou_threshold: discard boxes with IoU > iou_threshold.
        fmt: the box format, as ``box_iou``'s.
    """
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.nms_rotated_check(boxes, scores, None, fmt)
    return _dispatch.nms_rotated(boxes, scores, None, thr, fmt, w, backend)


@public
def batched_nms_rotated(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, fmt: str = "cxcywhr", *,
                        backend: str | None = None) -> Any:
    """Exact per-class ``nms_rotated``: boxes of different ``idxs`` never suppress each other (no
    coordinate offsets, unlike detectron2's). Returns int64 indices by descending score, ties by
    ascending index."""
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.nms_rotated_check(boxes, scores, idxs, fmt)
    return _dispatch.nms_rotated(boxes, scores, idxs, thr, fmt, w, backend)
