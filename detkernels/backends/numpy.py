"""The NumPy reference as a backend: the specification itself, for CPU arrays. Slow; it exists for
checking and as the last resort on a machine without the compiled core."""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .._registry import declare, register
from ..reference import box_iou as ref_iou
from ..reference import nms as ref_nms

declare("numpy", True)

_ALL = ("float32", "float64", "int32", "int64")


@register("box_iou", "numpy", dtypes=_ALL)
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    out = ref_iou._matrix(A.to_numpy_view(b1), A.to_numpy_view(b2), kind, fmt, eps)
    return A.from_numpy(out, like=b1)


@register("nms", "numpy")
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    if classes is None:
        keep = ref_nms.nms(b, s, iou_threshold)
    else:
        keep = ref_nms.batched_nms(b, s, A.to_numpy_view(classes), iou_threshold)
    return A.from_numpy(keep, like=boxes)


@register("multi_image_nms", "numpy")
def multi_image_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                    score_threshold: float | None) -> tuple[Any, Any, Any]:
    idx, cls, counts = ref_nms.multi_image_nms(
        A.to_numpy_view(boxes), A.to_numpy_view(scores), iou_threshold, max_output,
        idxs=None if classes is None else A.to_numpy_view(classes), score_threshold=score_threshold)
    return (A.from_numpy(idx, like=boxes), None if cls is None else A.from_numpy(cls, like=boxes),
            A.from_numpy(counts, like=boxes))
