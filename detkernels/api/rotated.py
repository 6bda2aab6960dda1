"""Rotated NMS: ``nms_rotated`` and ``batched_nms_rotated`` (detectron2's / mmcv's names;
torchvision's rotated NMS is still an open pull request); ultralytics' OBB metric ``probiou``
and ``nms_probiou`` (greedy, or ultralytics' Fast-NMS); their fixed-size multi-image forms
``multi_image_nms_rotated`` and ``multi_image_nms_probiou`` (as ``multi_image_nms``). The rotated IoU itself is
``box_iou(..., fmt='cxcywhr' | 'xywhr' | 'xyxyxyxy')`` (detkernels/api/boxes.py).
Semantics: ``detkernels/reference/rotated.py``.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["nms_rotated", "batched_nms_rotated", "probiou", "nms_probiou", "multi_image_nms_rotated",
           "multi_image_nms_probiou"]


def _nms_rotated(boxes: Any, scores: Any, idxs: Any, thr: float, fmt: str, w: str, backend: str | None) -> Any:
    if A.is_torch(boxes):  # custom op under torch.compile / export
        from .._torch import rotated as T

        return T.nms_rotated(boxes, scores, idxs, thr, fmt, w, backend)
    return _dispatch.nms_rotated(boxes, scores, idxs, thr, fmt, w, backend)


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
    return _nms_rotated(boxes, scores, None, thr, fmt, w, backend)


@public
def batched_nms_rotated(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, fmt: str = "cxcywhr", *,
                        backend: str | None = None) -> Any:
    """Exact per-class ``nms_rotated``: boxes of different ``idxs`` never suppress each other (no
    coordinate offsets, unlike detectron2's). Returns int64 indices by descending score, ties by
    ascending index."""
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.nms_rotated_check(boxes, scores, idxs, fmt)
    return _nms_rotated(boxes, scores, idxs, thr, fmt, w, backend)


@public
def probiou(boxes1: Any, boxes2: Any, eps: float = 1e-7, *, backend: str | None = None) -> Any:
    """Pairwise ProbIoU (ultralytics' OBB similarity, ``ultralytics.utils.metrics.batch_probiou``)
    of ``[..., N, 5]`` and ``[..., M, 5]`` boxes ``(cx, cy, w, h, angle in radians)`` ->
    ``[..., N, M]``, float64 if either input is, else float32. Same formula and operation order;
    exp/log/cos/sin are libm's (identical on every detkernels backend; within a few ulp of
    ultralytics' torch ops). CPU (native, numpy) and CUDA (native; the device's libm there,
    docs/SPEC.md §8); not differentiable."""
    checked = _checks.probiou_check(boxes1, boxes2)
    e = _checks.threshold_value(eps, "eps")
    if A.is_torch(boxes1):  # custom op under torch.compile / export, elementwise ops in ONNX
        from .._torch import rotated as T

        return T.probiou(boxes1, boxes2, e, checked, backend)
    return _dispatch.probiou(boxes1, boxes2, e, checked, backend)


@public
def nms_probiou(boxes: Any, scores: Any, iou_threshold: float, idxs: Any = None, *, fast: bool = False,
                eps: float = 1e-7, backend: str | None = None) -> Any:
    """NMS on ProbIoU of ``[N, 5]`` boxes ``(cx, cy, w, h, radians)`` (ultralytics' OBB format),
    within the classes of ``idxs`` if given. Score order: descending, NaN first, ties by ascending
    index. ``fast=False``: greedy (``nms_rotated``'s rule, a kept box suppresses later boxes with
    ``probiou(kept, other) > iou_threshold``); ``fast=True``: Fast-NMS, any earlier box suppresses
    whether or not it was itself suppressed -- what ultralytics' OBB post-process runs
    (``TorchNMS.fast_nms(boxes, scores, thr, iou_func=batch_probiou)``), without its N x N matrix.
    Returns int64 kept indices by descending score."""
    thr = _checks.threshold_value(iou_threshold)
    e = _checks.threshold_value(eps, "eps")
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    if boxes.ndim != 2 or boxes.shape[-1] != 5:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, 5], got {tuple(boxes.shape)}")
    w = _checks.nms_rotated_check(boxes, scores, idxs, "cxcywhr")
    if A.is_torch(boxes):  # custom op under torch.compile / export
        from .._torch import rotated as T

        return T.nms_probiou(boxes, scores, idxs, thr, bool(fast), e, w, backend)
    return _dispatch.nms_probiou(boxes, scores, idxs, thr, bool(fast), e, w, backend)


@public
def multi_image_nms_rotated(boxes: Any, scores: Any, iou_threshold: float, max_output: int,
                            fmt: str = "cxcywhr", *, idxs: Any = None, score_threshold: float | None = None,
                            backend: str | None = None) -> tuple:
    """Rotated NMS of a batch of images in one call, with fixed-size outputs (``multi_image_nms``'s
    contract): per image, ``nms_rotated`` (``batched_nms_rotated`` with ``idxs``) of its boxes with
    ``score > score_threshold`` (compared in float64; all boxes if None).

    Args:
        boxes: ``[B, N, 5]`` ('cxcywhr', 'xywhr': degrees) or ``[B, N, 8]`` ('xyxyxyxy') boxes.
        scores: ``[B, N]`` scores.
        iou_threshold: discard boxes with rotated IoU > iou_threshold against a kept one of the
            same image (and class).
        max_output: output slots per image.
        fmt: the box format, as ``box_iou``'s.
        idxs: optional ``[B, N]`` class ids (per-class NMS).
        score_threshold: if given, only boxes with ``score > score_threshold`` take part.

    Returns:
        ``(indices, counts)``: ``indices`` ``[B, max_output]`` int64 box indices within each image
        by descending score (ties by ascending index), padded with -1; ``counts`` ``[B]`` int64.
        Static shapes: torch.compile(fullgraph=True) / torch.export trace it without
        data-dependent sizes.
    """
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.multi_rotated_check(boxes, scores, idxs, max_output, fmt)
    sthr = _checks.score_threshold_value(score_threshold)
    max_output = int(max_output)
    if A.is_torch(boxes):  # custom op under torch.compile / export
        from .._torch import rotated as T

        return T.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output, sthr, fmt, w, backend)
    return _dispatch.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output, sthr, "iou", 0.0, fmt, w,
                                             backend)


@public
def multi_image_nms_probiou(boxes: Any, scores: Any, iou_threshold: float, max_output: int, *,
                            idxs: Any = None, fast: bool = False, eps: float = 1e-7,
                            score_threshold: float | None = None, backend: str | None = None) -> tuple:
    """``nms_probiou`` of a batch of images in one call, with fixed-size outputs: per image, on its
    boxes with ``score > score_threshold`` (float64 compare; all if None), within the classes of
    ``idxs`` ``[B, N]`` if given; greedy, or Fast-NMS with ``fast=True`` (ultralytics' OBB NMS).
    ``boxes`` ``[B, N, 5]`` ``(cx, cy, w, h, radians)``, ``scores`` ``[B, N]``. Returns
    ``(indices [B, max_output] int64 padded with -1, counts [B] int64)`` as
    ``multi_image_nms_rotated``."""
    thr = _checks.threshold_value(iou_threshold)
    e = _checks.threshold_value(eps, "eps")
    w = _checks.multi_rotated_check(boxes, scores, idxs, max_output, None)
    sthr = _checks.score_threshold_value(score_threshold)
    max_output = int(max_output)
    if A.is_torch(boxes):  # custom op under torch.compile / export
        from .._torch import rotated as T

        return T.multi_image_nms_probiou(boxes, scores, idxs, thr, max_output, sthr, bool(fast), e, w, backend)
    return _dispatch.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output, sthr,
                                             "probiou_fast" if fast else "probiou", e, "xywhr", w, backend)
