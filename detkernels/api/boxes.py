"""The IoU family and box_area (``torchvision.ops.box_iou`` & co.)."""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["box_area", "box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]


def _iou(kind: str, boxes1: Any, boxes2: Any, fmt: str, eps: Any, backend: str | None) -> Any:
    checked = _checks.iou_check(boxes1, boxes2, kind, fmt)
    eps = _checks.threshold_value(eps, "eps")
    if A.is_torch(boxes1) or A.is_torch(boxes2):
        from .._torch import iou as T

        return T.iou(kind, boxes1, boxes2, fmt, eps, checked, backend)
    return _dispatch.iou(kind, boxes1, boxes2, fmt, eps, checked, backend)


@public
def box_area(boxes: Any, fmt: str = "xyxy") -> Any:
    """Area of ``[..., 4]`` boxes: ``(x2 - x1) * (y2 - y1)`` for xyxy, ``w * h`` for xywh/cxcywh.

    Same as ``torchvision.ops.box_area``; float16/bfloat16 are computed in float32 and 8/16-bit
    integers in int32. Differentiable for torch tensors.
    """
    _checks.box_area_check(boxes, fmt)
    if A.is_torch(boxes):
        from .._torch import iou as T

        return T.box_area(boxes, fmt)
    from ..reference.box_iou import box_area as ref

    return A.from_numpy(ref(boxes, fmt), like=boxes)


@public
def box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy", *, backend: str | None = None) -> Any:
    """Pairwise IoU of ``[..., N, 4]`` and ``[..., M, 4]`` boxes -> ``[..., N, M]``.

    ``inter / ((area1 + area2) - inter)`` with no epsilon (0/0 = NaN for identical zero-area
    boxes), exactly as ``torchvision.ops.box_iou``; ``fmt`` is 'xyxy', 'xywh' or 'cxcywh'. Leading
    dimensions broadcast (one call for a batch). Output float64 for float64 input, else float32.
    Integer boxes follow torchvision: integer arithmetic wrapping on overflow (8/16-bit upcast to
    int32 first), float32 divisions; on CPU and CUDA. Differentiable for torch tensors.

    Rotated boxes, as ``torchvision.ops.box_iou``: ``fmt`` 'cxcywhr' or 'xywhr' (``[..., N, 5]``,
    angle in degrees, counter-clockwise) or 'xyxyxyxy' (``[..., N, 8]``); the output is float32
    (also for float64 boxes), equal bit for bit to torchvision's CPU kernel; CPU (backends
    native and numpy) and CUDA (native, with the device's cos/sin), not differentiable, leading dimensions broadcast; other float and integer
    dtypes are computed in float32 (docs/SPEC.md "Rotated boxes").
    """
    return _iou("iou", boxes1, boxes2, fmt, 1e-7, backend)


@public
def generalized_box_iou(boxes1: Any, boxes2: Any, *, backend: str | None = None) -> Any:
    """Pairwise generalized IoU of xyxy boxes (``torchvision.ops.generalized_box_iou``):
    ``iou - (area_c - union) / area_c`` with c the smallest enclosing box; ``[..., N, M]``."""
    return _iou("giou", boxes1, boxes2, "xyxy", 1e-7, backend)


@public
def distance_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7, *, backend: str | None = None) -> Any:
    """Pairwise distance IoU of xyxy boxes (``torchvision.ops.distance_box_iou``):
    ``iou - |c1 - c2|^2 / (diag_c^2 + eps)``; ``[..., N, M]``."""
    return _iou("diou", boxes1, boxes2, "xyxy", eps, backend)


@public
def complete_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7, *, backend: str | None = None) -> Any:
    """Pairwise complete IoU of xyxy boxes (``torchvision.ops.complete_box_iou``):
    ``diou - alpha * v``. Uses detkernels' own atan (identical on every backend, within 3 ulp in
    float32); torchvision's platform atan can differ in the last bits."""
    return _iou("ciou", boxes1, boxes2, "xyxy", eps, backend)
