"""``detect``: the fused post-process of a one-stage detector head -- score threshold, pre-NMS
top-k, exact per-class (or class-agnostic) NMS, ``max_det`` -- in one call, with fixed-size
outputs (no host synchronisation, static shapes: traceable under torch.compile(fullgraph=True)
and torch.export). Semantics: ``detkernels/reference/detect.py``; parameter mapping to TensorRT
EfficientNMS, ultralytics and torchvision: docs/SPEC.md §7.
"""
from __future__ import annotations

from typing import Any, NamedTuple

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["detect", "Detections"]


class Detections(NamedTuple):
    """Fixed-size detections of ``B`` images, ``max_det`` slots each; slot ``j < counts[b]`` is
    valid, later slots hold 0 (boxes, scores) and -1 (classes, indices)."""
    boxes: Any     #: ``[B, max_det, 4]`` xyxy, working dtype (float32, or float64)
    scores: Any    #: ``[B, max_det]`` (times objectness when given), by descending score
    classes: Any   #: ``[B, max_det]`` int64 class (score column, or idxs value)
    indices: Any   #: ``[B, max_det]`` int64 anchor index within the image
    counts: Any    #: ``[B]`` int64 valid slots per image


@public
def detect(boxes: Any, scores: Any, iou_threshold: float, max_det: int, *,
           score_threshold: float | None = None, pre_nms_top_k: int | None = None,
           fmt: str = "xyxy", objectness: Any = None, multi_label: bool = False,
           class_agnostic: bool = False, idxs: Any = None, nms: str = "iou",
           beta: float | None = None, decay: str | None = None, sigma: float | None = None,
           min_score: float | None = None, backend: str | None = None) -> Detections:
    """Detection post-process of a batch of images in one call.

    Per image: scores (times ``objectness``) -> candidates (each anchor's best class, ties -> lowest
    class; or every (anchor, class) pair with ``multi_label``) -> ``score > score_threshold`` ->
    the ``pre_nms_top_k`` best by score (ties by candidate index) -> NMS per class (exact: no
    coordinate offsets) or over all with ``class_agnostic`` -> the ``max_det`` best by (decayed)
    score. The NMS is greedy IoU NMS (IoU > ``iou_threshold`` suppresses) unless ``nms`` names
    another: ``"diou"`` (``diou_nms``), ``"soft"`` (``soft_nms``) or ``"matrix"``
    (``matrix_nms``), each the single-image op on the image's candidates, whose parameters are
    explicit keywords below (None: that op's default; a keyword the mode does not use must stay
    None). ``"soft"`` and ``"matrix"`` output the decayed scores.

    Args:
        boxes: ``[B, A, 4]`` boxes in ``fmt``.
        scores: ``[B, A, C]`` class scores, or ``[B, A]`` with optional ``idxs``.
        iou_threshold: suppress candidates with IoU > iou_threshold (float64 compare).
        max_det: output slots per image.
        score_threshold: keep candidates with ``score > score_threshold`` (None: all, NaN too).
        pre_nms_top_k: at most this many candidates per image enter NMS (None: all).
        fmt: ``"xyxy"``, ``"xywh"`` or ``"cxcywh"`` (as the IoU functions); outputs are xyxy.
        objectness: ``[B, A]``, multiplied into the scores first (YOLOv5-style).
        multi_label: every (anchor, class) pair above the threshold is a candidate.
        class_agnostic: one NMS over all classes of an image.
        idxs: ``[B, A]`` integer class ids for ``[B, A]`` scores.
        nms: ``"iou"`` (greedy NMS), ``"diou"``, ``"soft"`` or ``"matrix"``. ``iou_threshold`` is
            DIoU-NMS's threshold, the linear Soft-NMS decay's threshold (unused by the Gaussian
            decay), and unused by Matrix NMS.
        beta: ``"diou"``: the penalty exponent (``diou_nms``'s beta; default 1.0).
        decay: ``"soft"``: ``"linear"`` (default) or ``"gaussian"`` (``soft_nms``'s method);
            ``"matrix"``: ``"gaussian"`` (default) or ``"linear"`` (``matrix_nms``'s kernel).
        sigma: the Gaussian decay's sigma: ``"soft"`` ``exp(-iou**2 / sigma)`` (default 0.5),
            ``"matrix"`` ``exp(-sigma * iou**2)`` (default 2.0), as the two ops define it.
        min_score: the decayed-score floor: ``"soft"`` drops candidates whose score falls below it
            (``soft_nms``'s score_threshold; default 0.001), ``"matrix"`` keeps decayed scores
            ``>= min_score`` (``matrix_nms``'s score_threshold; default None: all).

    Returns:
        ``Detections(boxes, scores, classes, indices, counts)``, arrays of the input's kind on its
        device: NumPy in, NumPy out; torch in, torch out. Modes other than ``"iou"`` run on the
        CPU (native, numpy); elsewhere (CUDA, numba) a NotImplementedError names the mode.
    """
    thr = _checks.threshold_value(iou_threshold)
    sthr = _checks.score_threshold_value(score_threshold)
    w, max_det, k, multi_label, class_agnostic = _checks.detect_check(
        boxes, scores, objectness, idxs, max_det, pre_nms_top_k, fmt, multi_label, class_agnostic)
    mode = _checks.detect_nms_check(nms, beta, decay, sigma, min_score)
    if A.is_torch(boxes):
        from .._torch import detect as T

        out = T.detect(boxes, scores, objectness, idxs, thr, max_det, sthr, k, fmt, multi_label,
                       class_agnostic, w, backend, mode)
    else:
        out = _dispatch.detect(boxes, scores, objectness, idxs, thr, max_det, sthr, k, fmt,
                               multi_label, class_agnostic, w, backend, mode)
    return Detections(*out)
