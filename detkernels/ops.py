"""Public API: torchvision.ops' names, signatures, defaults, output dtypes/shapes and error types.

Every function takes NumPy arrays or torch tensors (CuPy arrays where a GPU backend serves them)
and returns the same kind, on the same device. Each also takes a keyword-only ``backend=``
('native', 'cupy', 'numba', 'numpy'; see detkernels/_registry.py for the dispatch rule).

With torch tensors the functions are also torch.library custom ops (``torch.ops.detkernels.*``,
see detkernels/_torch.py) so that torch.compile / torch.export see them; an eager call skips the
dispatcher and calls the backend directly. They are leaf functions under torch.fx tracing.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import numpy as np

from . import _arrays as A
from . import _registry
from .reference.box_iou import FORMATS

__all__ = [
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "nms",
    "batched_nms",
]

_ROTATED = ("cxcywhr", "xywhr", "xyxyxyxy")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
_INTS = ("bool", "uint8", "int8", "int16", "int32", "int64")


def _torch():
    """detkernels._torch (custom ops, autograd, fx/jit glue), imported on first torch use."""
    from . import _torch as T

    return T


def _public(fn: Callable) -> Callable:
    """Make ``fn`` a leaf under torch.fx symbolic tracing: a Proxy argument records one
    call_function node instead of tracing into the array-library code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        fx = sys.modules.get("torch.fx")
        if fx is not None:
            for a in (*args, *kwargs.values()):
                if isinstance(a, fx.Proxy):
                    return a.tracer.create_proxy("call_function", wrapper, args, kwargs)
        return fn(*args, **kwargs)

    return wrapper


# ---- IoU family ------------------------------------------------------------------------------------

def _iou_dtype(d1: str, d2: str, kind: str) -> str:
    """Working dtype: float64 if either is; other floats -> float32 (SPEC.md §1.5); integer pairs
    keep torchvision's integer arithmetic (8/16-bit -> int32) for iou/giou, else float32."""
    for name, d in (("boxes1", d1), ("boxes2", d2)):
        if d not in _FLOATS and d not in _INTS:
            raise TypeError(f"{name} must be a float or integer array, got {d}")
    if "float64" in (d1, d2):
        return "float64"
    if d1 in _FLOATS or d2 in _FLOATS or kind in ("diou", "ciou"):
        return "float32"
    return "int64" if "int64" in (d1, d2) else "int32"


def iou_check(b1: Any, b2: Any, kind: str, fmt: str) -> tuple[tuple, int, int, str]:
    """Validate; return (batch shape, N, M, working dtype)."""
    if fmt in _ROTATED:
        raise NotImplementedError(f"fmt={fmt!r}: rotated boxes are not supported by detkernels yet")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if kind != "iou" and fmt != "xyxy":
        raise ValueError(f"{kind} takes xyxy boxes")
    for name, b in (("boxes1", b1), ("boxes2", b2)):
        if b.ndim < 2:
            raise IndexError(f"{name} must have shape [..., N, 4], got {tuple(b.shape)}")
        if b.shape[-1] != 4:
            raise ValueError(f"{name} must have shape [..., N, 4], got {tuple(b.shape)}")
    # Broadcast the leading dimensions by hand: sizes may be symbolic under torch.compile.
    s1, s2 = tuple(b1.shape[:-2]), tuple(b2.shape[:-2])
    n = max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + s1, (1,) * (n - len(s2)) + s2
    batch = []
    for x, y in zip(s1, s2):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"the leading dimensions of boxes1 {tuple(b1.shape)} and boxes2 "
                             f"{tuple(b2.shape)} do not broadcast")
        batch.append(y if x == 1 else x)
    return tuple(batch), b1.shape[-2], b2.shape[-2], _iou_dtype(A.dtype_name(b1), A.dtype_name(b2), kind)


def iou_impl(kind: str, b1: Any, b2: Any, fmt: str = "xyxy", eps: float = 1e-7,
             backend: str | None = None) -> Any:
    """The IoU family on arrays of one kind, without autograd: validate, broadcast, dispatch."""
    dev = A.same_placement(boxes1=b1, boxes2=b2)
    batch, N, M, w = iou_check(b1, b2, kind, fmt)
    batch, N, M = tuple(int(x) for x in batch), int(N), int(M)
    B = int(np.prod(batch, dtype=np.int64))
    out_dtype = "float64" if w == "float64" else "float32"
    if B == 0 or N == 0 or M == 0:
        return A.empty(batch + (N, M), out_dtype, like=b1)
    name, fn = _registry.select("box_iou", dev, w, backend)
    x1 = A.ascontig(A.astype(A.broadcast_to(b1, batch + (N, 4)), w).reshape(B, N, 4))
    x2 = A.ascontig(A.astype(A.broadcast_to(b2, batch + (M, 4)), w).reshape(B, M, 4))
    return fn(x1, x2, kind, fmt, float(eps)).reshape(batch + (N, M))


def _iou_entry(kind: str, boxes1: Any, boxes2: Any, fmt: str, eps: float, backend: str | None) -> Any:
    if A.is_torch(boxes1) or A.is_torch(boxes2):
        return _torch().iou(kind, boxes1, boxes2, fmt, eps, backend)
    return iou_impl(kind, boxes1, boxes2, fmt, eps, backend)


@_public
def box_area(boxes: Any, fmt: str = "xyxy") -> Any:
    """Area of ``[..., 4]`` boxes: ``(x2 - x1) * (y2 - y1)`` for xyxy, ``w * h`` for xywh/cxcywh.

    Same as ``torchvision.ops.box_area``; float16/bfloat16 are computed in float32 and 8/16-bit
    integers in int32. Differentiable for torch tensors.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")
    if A.is_torch(boxes):
        return _torch().box_area(boxes, fmt)
    from .reference.box_iou import box_area as ref

    return A.from_numpy(ref(boxes, fmt), like=boxes)


@_public
def box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy", *, backend: str | None = None) -> Any:
    """Pairwise IoU of ``[..., N, 4]`` and ``[..., M, 4]`` boxes -> ``[..., N, M]``.

    ``inter / ((area1 + area2) - inter)`` with no epsilon (0/0 = NaN for identical zero-area
    boxes), exactly as ``torchvision.ops.box_iou``; ``fmt`` is 'xyxy', 'xywh' or 'cxcywh'. Leading
    dimensions broadcast (one call for a batch). Output float64 for float64 input, else float32.
    Integer boxes follow torchvision: integer arithmetic wrapping on overflow (8/16-bit upcast to
    int32 first), float32 divisions; on CPU and CUDA. Differentiable for torch tensors.
    """
    return _iou_entry("iou", boxes1, boxes2, fmt, 1e-7, backend)


@_public
def generalized_box_iou(boxes1: Any, boxes2: Any, *, backend: str | None = None) -> Any:
    """Pairwise generalized IoU of xyxy boxes (``torchvision.ops.generalized_box_iou``):
    ``iou - (area_c - union) / area_c`` with c the smallest enclosing box; ``[..., N, M]``."""
    return _iou_entry("giou", boxes1, boxes2, "xyxy", 1e-7, backend)


@_public
def distance_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7, *, backend: str | None = None) -> Any:
    """Pairwise distance IoU of xyxy boxes (``torchvision.ops.distance_box_iou``):
    ``iou - |c1 - c2|^2 / (diag_c^2 + eps)``; ``[..., N, M]``."""
    return _iou_entry("diou", boxes1, boxes2, "xyxy", eps, backend)


@_public
def complete_box_iou(boxes1: Any, boxes2: Any, eps: float = 1e-7, *, backend: str | None = None) -> Any:
    """Pairwise complete IoU of xyxy boxes (``torchvision.ops.complete_box_iou``):
    ``diou - alpha * v``. Uses detkernels' own atan (identical on every backend, within 2 ulp);
    torchvision's platform atan can differ in the last bit."""
    return _iou_entry("ciou", boxes1, boxes2, "xyxy", eps, backend)


# ---- NMS -------------------------------------------------------------------------------------------

def nms_check(boxes: Any, scores: Any, idxs: Any = None) -> str:
    """Validate (RuntimeError for shapes, as torchvision); return the working float dtype."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, 4], got {tuple(boxes.shape)}")
    if scores.ndim != 1:
        raise RuntimeError(f"scores should be a 1d tensor, got {scores.ndim}d of shape {tuple(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise RuntimeError(f"boxes and scores should have the same number of elements in dimension 0, "
                           f"got {boxes.shape[0]} and {scores.shape[0]}")
    if idxs is not None and (idxs.ndim != 1 or idxs.shape[0] != boxes.shape[0]):
        raise RuntimeError(f"idxs should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(idxs.shape)}")
    d1, d2 = A.dtype_name(boxes), A.dtype_name(scores)
    for name, d in (("boxes", d1), ("scores", d2)):
        if d not in _FLOATS:
            raise TypeError(f"{name} must be a floating point array (float16/bfloat16/float32/float64), got {d}")
    if idxs is not None and A.dtype_name(idxs) not in _FLOATS + _INTS:
        raise TypeError(f"idxs must be a numeric array, got {A.dtype_name(idxs)}")
    return "float64" if "float64" in (d1, d2) else "float32"


def threshold_value(iou_threshold: Any) -> float:
    """The threshold as a Python float (a TypeError naming it otherwise)."""
    if isinstance(iou_threshold, (str, bytes)) or not hasattr(iou_threshold, "__float__"):
        raise TypeError(f"iou_threshold must be a real number, got {type(iou_threshold).__name__}")
    return float(iou_threshold)


def _class_ids(idxs: Any) -> Any:
    """int64 class ids; equal values of `idxs` <-> equal ids (exact grouping, any numeric dtype)."""
    d = A.dtype_name(idxs)
    if d in _INTS:
        return A.ascontig(A.astype(idxs, "int64"))
    if A.is_torch(idxs):
        return sys.modules["torch"].unique(idxs, return_inverse=True)[1].contiguous()
    return np.unique(np.asarray(idxs), return_inverse=True)[1].astype(np.int64).reshape(-1)


def nms_impl(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, backend: str | None = None) -> Any:
    """NMS (per class when ``idxs`` is given) on arrays of one kind: validate, dispatch."""
    dev = A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    w = nms_check(boxes, scores, idxs)
    thr = threshold_value(iou_threshold)
    if boxes.shape[0] == 0:
        return A.empty((0,), "int64", like=boxes)
    name, fn = _registry.select("nms", dev, w, backend)
    b = A.ascontig(A.astype(boxes, w))
    s = A.ascontig(A.astype(scores, w))
    c = None if idxs is None else _class_ids(idxs)
    return fn(b, s, c, thr)


@_public
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
    if A.is_torch(boxes):
        return _torch().nms(boxes, scores, iou_threshold, backend)
    return nms_impl(boxes, scores, None, iou_threshold, backend)


@_public
def batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float, *,
                backend: str | None = None) -> Any:
    """Exact per-class NMS (``torchvision.ops.batched_nms``): boxes of different ``idxs`` never
    suppress each other. One native call, no coordinate offsets (which lose precision for large
    coordinates/class ids and leak across classes for coordinates < -1). Returns int64 indices by
    descending score, ties by ascending index."""
    if A.is_torch(boxes):
        return _torch().batched_nms(boxes, scores, idxs, iou_threshold, backend)
    if boxes.size == 0:  # before touching scores/idxs, as torchvision
        return A.empty((0,), "int64", like=boxes)
    return nms_impl(boxes, scores, idxs, iou_threshold, backend)
