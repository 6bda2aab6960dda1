"""NMS: ``nms`` and ``batched_nms`` (torchvision's), and the fixed-size forms for deployment,
``nms_padded`` (one image) and ``multi_image_nms`` (a batch of images, optionally per class) --
what torchvision does not offer (pytorch/vision#392, #8593).

The fixed-size outputs have shapes fixed by the inputs and ``max_output`` (padded with -1, plus
counts), so their CUDA path never synchronises with the host, can be captured in a CUDA graph,
and traces under torch.compile(fullgraph=True) / torch.export without data-dependent shapes.
Semantics: ``detkernels/reference/nms.py``.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["nms", "batched_nms", "nms_padded", "multi_image_nms"]


def _torch():
    from .._torch import nms as T

    return T


@public
def nms(boxes: Any, scores: Any, iou_threshold: float, *, backend: str | None = None) -> Any:
    """Greedy non-maximum suppression (``torchvision.ops.nms``).

    Visits boxes by descending score (NaN first, ties by ascending index) and discards every later
    box whose IoU with a kept box is strictly greater than ``iou_threshold`` (compared in float64 on
    every backend). Returns int64 indices of the kept boxes, by descending score.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``; float16/bfloat16 are computed in float32.
        scores: ``[N]`` scores.
        iou_threshold: discard boxes with IoU > iou_threshold.
    """
    thr = _checks.threshold_value(iou_threshold)
    torch_in = A.is_torch(boxes)
    if torch_in:
        keep = _torch().fast_cpu_nms(boxes, scores, thr, None, backend)
        if keep is not None:
            return keep
    w = _checks.nms_check(boxes, scores)
    if torch_in:
        return _torch().nms(boxes, scores, None, thr, w, backend)
    return _dispatch.nms(boxes, scores, None, thr, w, backend)


@public
def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, *,
                backend: str | None = None) -> Any:
    """Exact per-class NMS (``torchvision.ops.batched_nms``): boxes of different ``idxs`` never
    suppress each other. One native call, no coordinate offsets (which lose precision for large
    coordinates/class ids and leak across classes for coordinates < -1). Returns int64 indices by
    descending score, ties by ascending index."""
    torch_in = A.is_torch(boxes)
    # No boxes: an empty result before scores/idxs are looked at, as torchvision (a traced call
    # keeps the custom op, whose sizes are symbolic).
    empty = not _torch_traced(boxes) and boxes.numel() == 0 if torch_in else boxes.size == 0
    if empty:
        return A.empty((0,), "int64", like=boxes)
    thr = _checks.threshold_value(iou_threshold)
    if torch_in:
        keep = _torch().fast_cpu_nms(boxes, scores, thr, idxs, backend)
        if keep is not None:
            return keep
    w = _checks.nms_check(boxes, scores, idxs)
    if torch_in:
        return _torch().nms(boxes, scores, idxs, thr, w, backend)
    return _dispatch.nms(boxes, scores, idxs, thr, w, backend)


def _torch_traced(boxes: Any) -> bool:
    from .._torch.common import traced

    return traced(boxes)


@public
def nms_padded(boxes: Any, scores: Any, iou_threshold: float, max_output: int, *,
               backend: str | None = None) -> tuple[Any, Any]:
    """``nms`` with a fixed-size result, for deployment (CUDA graphs, torch.export).

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``.
        scores: ``[N]`` scores.
        iou_threshold: discard boxes with IoU > iou_threshold (float64 compare, as ``nms``).
        max_output: number of output slots.

    Returns:
        ``(indices, count)``: ``indices`` ``[max_output]`` int64, the first ``count`` equal to
        ``nms(boxes, scores, iou_threshold)[:max_output]``, the rest -1; ``count`` a 0-d int64
        array. On CUDA nothing synchronises with the host.
    """
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.padded_check(boxes, scores, max_output)
    max_output = int(max_output)
    if A.is_torch(boxes):
        return _torch().nms_padded(boxes, scores, thr, max_output, w, backend)
    return _dispatch.nms_padded(boxes, scores, thr, max_output, w, backend)


@public
def multi_image_nms(boxes: Any, scores: Any, iou_threshold: float, max_output: int, *,
                    idxs: Any = None, score_threshold: float | None = None,
                    backend: str | None = None) -> tuple:
    """NMS of a batch of images in one call (one launch sequence on CUDA, no host sync).

    Args:
        boxes: ``[B, N, 4]`` boxes per image.
        scores: ``[B, N]`` (one candidate per box) or ``[B, N, C]`` (one candidate per
            (box, class) pair, as from a YOLO/RetinaNet head; NMS then runs per class).
        iou_threshold: discard candidates with IoU > iou_threshold against a kept one of the same
            image (and class).
        max_output: output slots per image.
        idxs: optional ``[B, N]`` class ids for ``[B, N]`` scores (per-class NMS, like
            ``batched_nms``).
        score_threshold: if given, only candidates with ``score > score_threshold`` take part.

    Returns:
        ``(indices, counts)`` for ``[B, N]`` scores, ``(indices, classes, counts)`` for
        ``[B, N, C]`` scores. ``indices`` ``[B, max_output]`` int64 box indices within each image
        by descending score (ties: ascending candidate index ``n * C + c``), padded with -1;
        ``classes`` the matching class columns (-1 padded); ``counts`` ``[B]`` int64.
    """
    thr = _checks.threshold_value(iou_threshold)
    w = _checks.multi_check(boxes, scores, idxs, max_output)
    sthr = _checks.score_threshold_value(score_threshold)
    max_output = int(max_output)
    if A.is_torch(boxes):
        idx, cls, counts = _torch().multi_image_nms(boxes, scores, idxs, thr, max_output, sthr, w, backend)
    else:
        idx, cls, counts = _dispatch.multi_image_nms(boxes, scores, idxs, thr, max_output, sthr, w, backend)
    return (idx, cls, counts) if scores.ndim == 3 else (idx, counts)
