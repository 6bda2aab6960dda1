"""Fixed-size NMS for deployment: ``nms_padded`` (one image) and ``multi_image_nms`` (a batch of
images, optionally per class) -- what torchvision does not offer (pytorch/vision#392, #8593).

Outputs have shapes fixed by the inputs and ``max_output`` (padded with -1, plus counts), so the
CUDA path never synchronises with the host, can be captured in a CUDA graph, and traces under
torch.compile(fullgraph=True) / torch.export without data-dependent shapes. Semantics:
``detkernels/reference/nms.py`` (``multi_image_nms``, ``nms_padded``).
"""
from __future__ import annotations

import numbers
from typing import Any

from . import _arrays as A
from . import _registry
from .ops import _FLOATS, _INTS, _class_ids, _public

__all__ = ["nms_padded", "multi_image_nms"]


def _torch():
    """detkernels._torch_nms (custom ops), imported on first torch use."""
    from . import _torch  # noqa: F401  (registers the base ops, then imports _torch_nms)
    from . import _torch_nms

    return _torch_nms


def _check_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)


def multi_check(boxes: Any, scores: Any, idxs: Any, max_output: Any, score_threshold: Any) -> str:
    """Validate multi_image_nms's inputs; return the working float dtype."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [B, N, 4], got {tuple(boxes.shape)}")
    B, N = int(boxes.shape[0]), int(boxes.shape[1])
    if scores.ndim not in (2, 3) or tuple(scores.shape[:2]) != (B, N):
        raise ValueError(f"scores must have shape [{B}, {N}] or [{B}, {N}, C], got {tuple(scores.shape)}")
    if idxs is not None:
        if scores.ndim == 3:
            raise ValueError("idxs cannot be combined with [B, N, C] scores (the class is the score column)")
        if tuple(idxs.shape) != (B, N):
            raise ValueError(f"idxs must have shape [{B}, {N}], got {tuple(idxs.shape)}")
        if A.dtype_name(idxs) not in _FLOATS + _INTS:
            raise TypeError(f"idxs must be a numeric array, got {A.dtype_name(idxs)}")
    _check_int("max_output", max_output)
    if score_threshold is not None and not isinstance(score_threshold, numbers.Real):
        raise TypeError(f"score_threshold must be a float or None, got {type(score_threshold).__name__}")
    d1, d2 = A.dtype_name(boxes), A.dtype_name(scores)
    for name, d in (("boxes", d1), ("scores", d2)):
        if d not in _FLOATS:
            raise TypeError(f"{name} must be a floating point array (float16/bfloat16/float32/float64), got {d}")
    return "float64" if "float64" in (d1, d2) else "float32"


def multi_impl(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, max_output: int,
               score_threshold: float | None, backend: str | None = None) -> tuple[Any, Any, Any]:
    """(indices [B, K], classes [B, K] or None, counts [B]) on arrays of one kind."""
    dev = A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    w = multi_check(boxes, scores, idxs, max_output, score_threshold)
    _, fn = _registry.select("multi_image_nms", dev, w, backend)
    b = A.ascontig(A.astype(boxes, w))
    s = A.ascontig(A.astype(scores, w))
    c = None if idxs is None else _class_ids(idxs).reshape(idxs.shape)
    sthr = None if score_threshold is None else float(score_threshold)
    return fn(b, s, c, float(iou_threshold), int(max_output), sthr)


def padded_impl(boxes: Any, scores: Any, iou_threshold: float, max_output: int,
                backend: str | None = None) -> tuple[Any, Any]:
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, 4], got {tuple(boxes.shape)}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise RuntimeError(f"scores should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(scores.shape)}")
    idx, _, counts = multi_impl(boxes[None], scores[None], None, iou_threshold, max_output, None, backend)
    return idx[0], counts.reshape(())


@_public
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
    if A.is_torch(boxes):
        return _torch().nms_padded(boxes, scores, iou_threshold, max_output, backend)
    return padded_impl(boxes, scores, iou_threshold, max_output, backend)


@_public
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
    if A.is_torch(boxes):
        idx, cls, counts = _torch().multi_image_nms(boxes, scores, idxs, iou_threshold, max_output,
                                                    score_threshold, backend)
    else:
        idx, cls, counts = multi_impl(boxes, scores, idxs, iou_threshold, max_output,
                                      score_threshold, backend)
    return (idx, cls, counts) if scores.ndim == 3 else (idx, counts)
