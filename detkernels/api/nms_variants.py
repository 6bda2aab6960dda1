"""NMS for crowded scenes (issue 13), what torchvision does not offer (pytorch/vision#8849):
``soft_nms`` (Bodla et al. 2017: decay the scores of the boxes that overlap a kept box instead of
removing them), ``diou_nms`` (Zheng et al. 2020: suppress by IoU minus the normalised centre
distance) and ``matrix_nms`` (SOLOv2: every decay from the IoUs at once). Semantics and float
order: ``detkernels/reference/soft_nms.py``, ``diou_nms.py``, ``matrix_nms.py``; differences from
mmcv, ensemble-boxes, mmdetection and the papers' code: there and in docs/SPEC.md §6.2-6.4.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["soft_nms", "multi_image_soft_nms", "diou_nms", "multi_image_diou_nms", "matrix_nms",
           "multi_image_matrix_nms"]


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
def multi_image_soft_nms(boxes: Any, scores: Any, max_output: int, iou_threshold: float = 0.3, *,
                         sigma: float = 0.5, method: str = "linear", score_threshold: float = 0.001,
                         idxs: Any = None, backend: str | None = None) -> tuple[Any, Any, Any]:
    """``soft_nms`` of each image of a batch in one call, with fixed-size outputs (shapes set by
    the inputs and ``max_output``: traceable by torch.export without data-dependent sizes).

    Args:
        boxes: ``[B, N, 4]`` boxes per image.
        scores: ``[B, N]`` scores.
        max_output: output slots per image.
        iou_threshold, sigma, method, score_threshold: as ``soft_nms``.
        idxs: optional ``[B, N]`` class ids (per-class Soft-NMS within each image).

    Returns:
        ``(indices, scores, counts)``: ``indices`` ``[B, max_output]`` int64 (per image, the first
        ``counts[b]`` equal ``soft_nms(boxes[b], scores[b], ...)`` capped at max_output, then -1),
        ``scores`` ``[B, max_output]`` their decayed scores (then 0), ``counts`` ``[B]`` int64.
    """
    w, k, thr, sig, meth, sthr = _checks.multi_soft_nms_check(boxes, scores, idxs, max_output,
                                                              iou_threshold, sigma, method,
                                                              score_threshold)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.multi_image_soft_nms(boxes, scores, idxs, k, thr, sig, meth, sthr, w, backend)
    return _dispatch.multi_image_soft_nms(boxes, scores, idxs, k, thr, sig, meth, sthr, w, backend)


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


@public
def multi_image_diou_nms(boxes: Any, scores: Any, iou_threshold: float, max_output: int, *,
                         beta: float = 1.0, idxs: Any = None, backend: str | None = None) -> tuple[Any, Any]:
    """``diou_nms`` of each image of a batch in one call, with fixed-size outputs (as
    ``multi_image_nms``: shapes set by the inputs and ``max_output``, traceable by torch.export
    without data-dependent sizes).

    Args:
        boxes: ``[B, N, 4]`` boxes per image.
        scores: ``[B, N]`` scores.
        iou_threshold, beta: as ``diou_nms``.
        max_output: output slots per image.
        idxs: optional ``[B, N]`` class ids (per-class DIoU-NMS within each image).

    Returns:
        ``(indices, counts)``: ``indices`` ``[B, max_output]`` int64 (per image, the first
        ``counts[b]`` equal ``diou_nms(boxes[b], scores[b], ...)[:max_output]``, then -1),
        ``counts`` ``[B]`` int64.
    """
    w, thr, k, b = _checks.multi_diou_nms_check(boxes, scores, idxs, iou_threshold, max_output, beta)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.multi_image_diou_nms(boxes, scores, idxs, thr, k, b, w, backend)
    return _dispatch.multi_image_diou_nms(boxes, scores, idxs, thr, k, b, w, backend)


@public
def matrix_nms(boxes: Any, scores: Any, labels: Any, *, kernel: str = "gaussian", sigma: float = 2.0,
               score_threshold: float | None = None, max_output: int | None = None,
               pre_top_k: int | None = None, backend: str | None = None) -> tuple[Any, Any]:
    """Matrix NMS (SOLOv2; mmdetection's ``mask_matrix_nms`` on boxes): each box's score is
    multiplied at once by ``min(1, min_i f(iou_i) / f(c_i))`` over the higher-scored boxes ``i``
    of its class, ``c_i`` being box i's own largest IoU with a box above it.

    Args:
        boxes: ``[N, 4]`` boxes ``(x1, y1, x2, y2)``; float16/bfloat16 are computed in float32.
        scores: ``[N]`` scores.
        labels: ``[N]`` class ids (any numeric dtype); boxes of different classes never decay
            each other.
        kernel: ``"gaussian"`` (``f(x) = exp(-sigma * x**2)``, mmdetection's default) or
            ``"linear"`` (``f(x) = 1 - x``).
        sigma: the Gaussian's sigma (> 0; SOLOv2's 2.0). Unused by the linear kernel.
        score_threshold: keep decayed scores ``>= score_threshold`` (mmdetection's ``filter_thr``;
            None: keep all).
        max_output: keep at most this many (mmdetection's ``max_num``; None: all).
        pre_top_k: only the ``pre_top_k`` highest scores take part (``nms_pre``; None: all).

    Returns:
        ``(indices, scores)``: int64 indices and decayed scores (working dtype), by decreasing
        decayed score, ties by ascending index. The native CPU kernel holds no N x N matrix.
    """
    w, kern, sig, sthr, k, pre = _checks.matrix_nms_check(boxes, scores, labels, kernel, sigma,
                                                          score_threshold, max_output, pre_top_k)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.matrix_nms(boxes, scores, labels, kern, sig, sthr, k, pre, w, backend)
    return _dispatch.matrix_nms(boxes, scores, labels, kern, sig, sthr, k, pre, w, backend)


@public
def multi_image_matrix_nms(boxes: Any, scores: Any, labels: Any, max_output: int, *,
                           kernel: str = "gaussian", sigma: float = 2.0,
                           score_threshold: float | None = None, pre_top_k: int | None = None,
                           backend: str | None = None) -> tuple[Any, Any, Any]:
    """``matrix_nms`` of each image of a batch in one call, with fixed-size outputs (as
    ``multi_image_soft_nms``: traceable by torch.export without data-dependent sizes).

    Args:
        boxes: ``[B, N, 4]`` boxes per image.
        scores: ``[B, N]`` scores.
        labels: ``[B, N]`` class ids.
        max_output: output slots per image (``matrix_nms``'s max_output).
        kernel, sigma, score_threshold, pre_top_k: as ``matrix_nms`` (pre_top_k per image).

    Returns:
        ``(indices, scores, counts)``: ``indices`` ``[B, max_output]`` int64 (per image, the first
        ``counts[b]`` equal ``matrix_nms(boxes[b], scores[b], labels[b], ...,
        max_output=max_output)``, then -1), ``scores`` ``[B, max_output]`` their decayed scores
        (then 0), ``counts`` ``[B]`` int64.
    """
    w, k, kern, sig, sthr, pre = _checks.multi_matrix_nms_check(boxes, scores, labels, max_output,
                                                                kernel, sigma, score_threshold,
                                                                pre_top_k)
    if A.is_torch(boxes):
        from .._torch import nms as T

        return T.multi_image_matrix_nms(boxes, scores, labels, k, kern, sig, sthr, pre, w, backend)
    return _dispatch.multi_image_matrix_nms(boxes, scores, labels, k, kern, sig, sthr, pre, w, backend)
