"""Validation and normalisation of every public argument, in one place.

Each public entry (the functions of detkernels/api/, the torch custom ops and their fake kernels)
calls these once; what comes out is normalised (Python floats and ints, [K, 5] rois, the working
dtype named) and everything below (detkernels/_dispatch.py, the backends) assumes it. Error types
follow torchvision where it raises (RuntimeError for NMS shapes, AssertionError for RoI box shapes,
RuntimeError for an ``int`` schema argument given a float); other bad arguments get a ValueError
or TypeError naming the argument, its value and what is allowed.
"""
from __future__ import annotations

import numbers
import sys
from typing import Any, NamedTuple

import numpy as np

from . import _arrays as A
from .reference.box_iou import FORMATS
from .reference.roi_align import check_sampling_ratio
from .reference.roi_pool import check_plane

__all__ = [
    "FLOATS", "INTS", "ROTATED", "iou_check", "rotated_iou_check", "nms_rotated_check", "multi_rotated_check", "probiou_check", "nms_check", "multi_check", "padded_check", "detect_check", "threshold_value",
    "non_negative_int", "score_threshold_value", "pair", "rois_from_boxes", "roi_check",
    "roi_grad_check", "roi_pool_index_check", "roi_rotated_check", "roi_rotated_grad_check", "check_sampling_ratio", "check_plane",
    "soft_nms_check", "diou_nms_check", "matrix_nms_check", "multi_soft_nms_check",
    "multi_diou_nms_check", "multi_matrix_nms_check",
    "DetectNms", "detect_nms_check",
]

ROTATED = ("cxcywhr", "xywhr", "xyxyxyxy")
FLOATS = ("float16", "bfloat16", "float32", "float64")
INTS = ("bool", "uint8", "int8", "int16", "int32", "int64")
HALF = ("float16", "bfloat16")


# ---- scalars -----------------------------------------------------------------------------------------

def threshold_value(v: Any, name: str = "iou_threshold") -> float:
    """A real number as a Python float; TypeError naming the argument otherwise (a string, None)."""
    if isinstance(v, (str, bytes)) or not hasattr(v, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    return float(v)


def score_threshold_value(v: Any) -> float | None:
    """None (no score filter) or a real number as a float."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"score_threshold must be a float or None, got {type(v).__name__}")
    return float(v)


def non_negative_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or int(v) < 0:
        raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    return int(v)


def _float_dtypes(**named: Any) -> str:
    """The working float dtype of float arrays: float64 if any is, else float32."""
    ds = []
    for name, x in named.items():
        d = A.dtype_name(x)
        if d not in FLOATS:
            raise TypeError(f"{name} must be a floating point array (float16/bfloat16/float32/float64), got {d}")
        ds.append(d)
    return "float64" if "float64" in ds else "float32"


def _numeric_ids(idxs: Any) -> None:
    if A.dtype_name(idxs) not in FLOATS + INTS:
        raise TypeError(f"idxs must be a numeric array, got {A.dtype_name(idxs)}")


# ---- IoU family --------------------------------------------------------------------------------------

def _iou_dtype(d1: str, d2: str, kind: str) -> str:
    """Working dtype: float64 if either is; other floats -> float32 (docs/SPEC.md §1.5); integer pairs
    keep torchvision's integer arithmetic (8/16-bit -> int32) for iou/giou, else float32."""
    for name, d in (("boxes1", d1), ("boxes2", d2)):
        if d not in FLOATS and d not in INTS:
            raise TypeError(f"{name} must be a float or integer array, got {d}")
    if "float64" in (d1, d2):
        return "float64"
    if d1 in FLOATS or d2 in FLOATS or kind in ("diou", "ciou"):
        return "float32"
    return "int64" if "int64" in (d1, d2) else "int32"


def iou_check(b1: Any, b2: Any, kind: str, fmt: str) -> tuple[tuple, Any, Any, str]:
    """Validate; return (batch shape, N, M, working dtype). Sizes may be symbolic (torch.compile)."""
    A.same_placement(boxes1=b1, boxes2=b2)
    if fmt in ROTATED:
        return rotated_iou_check(b1, b2, kind, fmt)
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
    batch = _broadcast_batch(b1, b2)
    return batch, b1.shape[-2], b2.shape[-2], _iou_dtype(A.dtype_name(b1), A.dtype_name(b2), kind)


def _broadcast_batch(b1: Any, b2: Any) -> tuple:
    """The broadcast leading dimensions of [..., N, K] boxes (sizes may be symbolic)."""
    s1, s2 = tuple(b1.shape[:-2]), tuple(b2.shape[:-2])
    n = max(len(s1), len(s2))
    s1, s2 = (1,) * (n - len(s1)) + s1, (1,) * (n - len(s2)) + s2
    batch = []
    for x, y in zip(s1, s2):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"the leading dimensions of boxes1 {tuple(b1.shape)} and boxes2 "
                             f"{tuple(b2.shape)} do not broadcast")
        batch.append(y if x == 1 else x)
    return tuple(batch)


def rotated_iou_check(b1: Any, b2: Any, kind: str, fmt: str) -> tuple[tuple, Any, Any, str]:
    """box_iou of rotated boxes ([..., N, 5] cxcywhr/xywhr, [..., N, 8] xyxyxyxy): (batch shape,
    N, M, working dtype float32/float64; the output is float32 either way, as torchvision's)."""
    if kind != "iou":
        raise ValueError(f"{kind} takes xyxy boxes")
    k = 8 if fmt == "xyxyxyxy" else 5
    for name, b in (("boxes1", b1), ("boxes2", b2)):
        if b.ndim < 2 or b.shape[-1] != k:
            raise ValueError(f"{name} must have shape [..., N, {k}] for fmt={fmt!r}, got {tuple(b.shape)}")
        if A.dtype_name(b) not in FLOATS + INTS:
            raise TypeError(f"{name} must be a float or integer array, got {A.dtype_name(b)}")
    w = "float64" if "float64" in (A.dtype_name(b1), A.dtype_name(b2)) else "float32"
    return _broadcast_batch(b1, b2), b1.shape[-2], b2.shape[-2], w


def probiou_check(b1: Any, b2: Any) -> tuple[tuple, Any, Any, str]:
    """probiou: [..., N, 5] x [..., M, 5] ultralytics-xywhr boxes -> (batch, N, M, working dtype)."""
    A.same_placement(boxes1=b1, boxes2=b2)
    for name, b in (("boxes1", b1), ("boxes2", b2)):
        if b.ndim < 2 or b.shape[-1] != 5:
            raise ValueError(f"{name} must have shape [..., N, 5] (cx, cy, w, h, radians), got {tuple(b.shape)}")
        if A.dtype_name(b) not in FLOATS + INTS:
            raise TypeError(f"{name} must be a float or integer array, got {A.dtype_name(b)}")
    w = "float64" if "float64" in (A.dtype_name(b1), A.dtype_name(b2)) else "float32"
    return _broadcast_batch(b1, b2), b1.shape[-2], b2.shape[-2], w


def box_area_check(boxes: Any, fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {tuple(boxes.shape)}")


# ---- NMS ---------------------------------------------------------------------------------------------

def nms_rotated_check(boxes: Any, scores: Any, idxs: Any, fmt: str) -> str:
    """nms_rotated / batched_nms_rotated: [N, 5] (cxcywhr, xywhr) or [N, 8] (xyxyxyxy) boxes,
    [N] scores, [N] idxs (or None); returns the working dtype (float32, or float64 if either is)."""
    if fmt not in ROTATED:
        raise ValueError(f"fmt must be one of {ROTATED}, got {fmt!r}")
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    k = 8 if fmt == "xyxyxyxy" else 5
    if boxes.ndim != 2 or boxes.shape[-1] != k:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, {k}] for fmt={fmt!r}, got {tuple(boxes.shape)}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise RuntimeError(f"scores should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(scores.shape)}")
    if idxs is not None:
        if idxs.ndim != 1 or idxs.shape[0] != boxes.shape[0]:
            raise RuntimeError(f"idxs should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(idxs.shape)}")
        _numeric_ids(idxs)
    return _float_dtypes(boxes=boxes, scores=scores)


def multi_rotated_check(boxes: Any, scores: Any, idxs: Any, max_output: Any, fmt: str | None) -> str:
    """multi_image_nms_rotated (``fmt`` its box format) / multi_image_nms_probiou (``fmt`` None:
    ``(cx, cy, w, h, radians)`` boxes): boxes [B, N, 5] or [B, N, 8] ('xyxyxyxy'), scores [B, N],
    idxs [B, N] or None, max_output; returns the working dtype (float32, or float64 if either is)."""
    if fmt is not None and fmt not in ROTATED:
        raise ValueError(f"fmt must be one of {ROTATED}, got {fmt!r}")
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    k = 8 if fmt == "xyxyxyxy" else 5
    what = "(cx, cy, w, h, radians)" if fmt is None else f"for fmt={fmt!r}"
    if boxes.ndim != 3 or boxes.shape[-1] != k:
        raise ValueError(f"boxes must have shape [B, N, {k}] {what}, got {tuple(boxes.shape)}")
    B, N = boxes.shape[0], boxes.shape[1]
    if scores.ndim != 2 or tuple(scores.shape) != (B, N):
        raise ValueError(f"scores must have shape [{B}, {N}], got {tuple(scores.shape)}")
    if idxs is not None:
        if tuple(idxs.shape) != (B, N):
            raise ValueError(f"idxs must have shape [{B}, {N}], got {tuple(idxs.shape)}")
        _numeric_ids(idxs)
    non_negative_int("max_output", max_output)
    return _float_dtypes(boxes=boxes, scores=scores)


def nms_check(boxes: Any, scores: Any, idxs: Any = None) -> str:
    """Validate nms/batched_nms (RuntimeError for shapes, as torchvision); return the working dtype."""
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, 4], got {tuple(boxes.shape)}")
    if scores.ndim != 1:
        raise RuntimeError(f"scores should be a 1d tensor, got {scores.ndim}d of shape {tuple(scores.shape)}")
    if boxes.shape[0] != scores.shape[0]:
        raise RuntimeError(f"boxes and scores should have the same number of elements in dimension 0, "
                           f"got {boxes.shape[0]} and {scores.shape[0]}")
    if idxs is not None and (idxs.ndim != 1 or idxs.shape[0] != boxes.shape[0]):
        raise RuntimeError(f"idxs should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(idxs.shape)}")
    w = _float_dtypes(boxes=boxes, scores=scores)
    if idxs is not None:
        _numeric_ids(idxs)
    return w


def padded_check(boxes: Any, scores: Any, max_output: Any) -> str:
    """Validate nms_padded (one image: nms's shapes and errors, plus max_output)."""
    A.same_placement(boxes=boxes, scores=scores)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise RuntimeError(f"boxes should be a 2d tensor of shape [N, 4], got {tuple(boxes.shape)}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise RuntimeError(f"scores should be a 1d tensor of shape [{boxes.shape[0]}], got {tuple(scores.shape)}")
    non_negative_int("max_output", max_output)
    return _float_dtypes(boxes=boxes, scores=scores)


def _batch_shapes(boxes: Any, scores: Any, idxs: Any, n: str) -> tuple[int, int]:
    """The shapes shared by multi_image_nms and detect: boxes [B, n, 4], scores [B, n] or
    [B, n, C], idxs [B, n] only with [B, n] scores. Returns (B, n)."""
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [B, {n}, 4], got {tuple(boxes.shape)}")
    B, N = boxes.shape[0], boxes.shape[1]
    if scores.ndim not in (2, 3) or tuple(scores.shape[:2]) != (B, N):
        raise ValueError(f"scores must have shape [{B}, {N}] or [{B}, {N}, C], got {tuple(scores.shape)}")
    if idxs is not None:
        if scores.ndim == 3:
            raise ValueError(f"idxs cannot be combined with [B, {n}, C] scores (the class is the score column)")
        if tuple(idxs.shape) != (B, N):
            raise ValueError(f"idxs must have shape [{B}, {N}], got {tuple(idxs.shape)}")
    return B, N


def multi_check(boxes: Any, scores: Any, idxs: Any, max_output: Any) -> str:
    """Validate multi_image_nms's arrays and max_output; return the working float dtype."""
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    _batch_shapes(boxes, scores, idxs, "N")
    if idxs is not None:
        _numeric_ids(idxs)
    non_negative_int("max_output", max_output)
    return _float_dtypes(boxes=boxes, scores=scores)


def _soft_nms_scalars(iou_threshold: Any, sigma: Any, method: Any, score_threshold: Any,
                      max_output: Any) -> tuple:
    from .reference.soft_nms import METHODS

    thr = threshold_value(iou_threshold)
    sig = threshold_value(sigma, "sigma")
    if not sig > 0:  # NaN too
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    sthr = threshold_value(score_threshold, "score_threshold")
    k = None if max_output is None else non_negative_int("max_output", max_output)
    return thr, sig, method, sthr, k


def soft_nms_check(boxes: Any, scores: Any, idxs: Any, iou_threshold: Any, sigma: Any, method: Any,
                   score_threshold: Any, max_output: Any) -> tuple:
    """Validate soft_nms (arrays as nms/batched_nms, RuntimeError for their shapes); return
    ``(working dtype, iou_threshold, sigma, method, score_threshold, max_output or None)``."""
    thr, sig, meth, sthr, k = _soft_nms_scalars(iou_threshold, sigma, method, score_threshold, max_output)
    return nms_check(boxes, scores, idxs), thr, sig, meth, sthr, k


def multi_soft_nms_check(boxes: Any, scores: Any, idxs: Any, max_output: Any, iou_threshold: Any,
                         sigma: Any, method: Any, score_threshold: Any) -> tuple:
    """Validate multi_image_soft_nms (boxes [B, N, 4], scores [B, N], idxs [B, N] or None);
    return ``(working dtype, max_output, iou_threshold, sigma, method, score_threshold)``."""
    A.same_placement(boxes=boxes, scores=scores, idxs=idxs)
    B, N = _batch_shapes(boxes, scores, idxs, "N")
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape [{B}, {N}] (one class per box; use idxs), "
                         f"got {tuple(scores.shape)}")
    if idxs is not None:
        _numeric_ids(idxs)
    k = non_negative_int("max_output", max_output)
    w = _float_dtypes(boxes=boxes, scores=scores)
    thr, sig, meth, sthr, _ = _soft_nms_scalars(iou_threshold, sigma, method, score_threshold, None)
    return w, k, thr, sig, meth, sthr


def diou_nms_check(boxes: Any, scores: Any, idxs: Any, iou_threshold: Any, beta: Any) -> tuple:
    """Validate diou_nms (arrays as nms/batched_nms); return ``(working dtype, iou_threshold, beta)``."""
    thr = threshold_value(iou_threshold)
    b = _beta_value(beta)
    return nms_check(boxes, scores, idxs), thr, b


def _beta_value(beta: Any) -> float:
    b = threshold_value(beta, "beta")
    if not (b > 0 and b < float("inf")):  # NaN too
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    return b


def matrix_nms_check(boxes: Any, scores: Any, labels: Any, kernel: Any, sigma: Any,
                     score_threshold: Any, max_output: Any, pre_top_k: Any) -> tuple:
    """Validate matrix_nms (arrays as batched_nms, ``labels`` in the role of idxs); return
    ``(working dtype, kernel, sigma, score_threshold or None, max_output or None, pre_top_k or None)``."""
    kernel, sig, sthr, k, pre = _matrix_nms_scalars(labels, kernel, sigma, score_threshold,
                                                    max_output, pre_top_k)
    try:
        w = nms_check(boxes, scores, labels)
    except RuntimeError as e:  # name the argument as this function calls it
        raise RuntimeError(str(e).replace("idxs", "labels")) from None
    except TypeError as e:
        raise TypeError(str(e).replace("idxs", "labels")) from None
    return w, kernel, sig, sthr, k, pre


def _matrix_nms_scalars(labels: Any, kernel: Any, sigma: Any, score_threshold: Any,
                        max_output: Any, pre_top_k: Any) -> tuple:
    from .reference.matrix_nms import KERNELS

    if labels is None:
        raise TypeError("labels must be an array of class ids, got None")
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    sig = threshold_value(sigma, "sigma")
    if not (sig > 0 and sig < float("inf")):  # NaN too
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    sthr = None if score_threshold is None else threshold_value(score_threshold, "score_threshold")
    k = None if max_output is None else non_negative_int("max_output", max_output)
    pre = None if pre_top_k is None else non_negative_int("pre_top_k", pre_top_k)
    return kernel, sig, sthr, k, pre


def _multi_boxes_scores(boxes: Any, scores: Any, ids: Any, name: str) -> None:
    """boxes [B, N, 4], scores [B, N], ``ids`` (named ``name``: idxs / labels) [B, N] or None."""
    A.same_placement(**{"boxes": boxes, "scores": scores, name: ids})
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [B, N, 4], got {tuple(boxes.shape)}")
    B, N = boxes.shape[0], boxes.shape[1]
    if scores.ndim != 2 or tuple(scores.shape) != (B, N):
        raise ValueError(f"scores must have shape [{B}, {N}] (one class per box; use {name}), "
                         f"got {tuple(scores.shape)}")
    if ids is not None:
        if tuple(ids.shape) != (B, N):
            raise ValueError(f"{name} must have shape [{B}, {N}], got {tuple(ids.shape)}")
        if A.dtype_name(ids) not in FLOATS + INTS:
            raise TypeError(f"{name} must be a numeric array, got {A.dtype_name(ids)}")


def multi_diou_nms_check(boxes: Any, scores: Any, idxs: Any, iou_threshold: Any, max_output: Any,
                         beta: Any) -> tuple:
    """Validate multi_image_diou_nms (boxes [B, N, 4], scores [B, N], idxs [B, N] or None);
    return ``(working dtype, iou_threshold, max_output, beta)``."""
    thr = threshold_value(iou_threshold)
    _multi_boxes_scores(boxes, scores, idxs, "idxs")
    k = non_negative_int("max_output", max_output)
    return _float_dtypes(boxes=boxes, scores=scores), thr, k, _beta_value(beta)


def multi_matrix_nms_check(boxes: Any, scores: Any, labels: Any, max_output: Any, kernel: Any,
                           sigma: Any, score_threshold: Any, pre_top_k: Any) -> tuple:
    """Validate multi_image_matrix_nms (boxes [B, N, 4], scores and labels [B, N]); return
    ``(working dtype, max_output, kernel, sigma, score_threshold or None, pre_top_k or None)``."""
    kern, sig, sthr, _, pre = _matrix_nms_scalars(labels, kernel, sigma, score_threshold, None,
                                                  pre_top_k)
    _multi_boxes_scores(boxes, scores, labels, "labels")
    k = non_negative_int("max_output", max_output)
    return _float_dtypes(boxes=boxes, scores=scores), k, kern, sig, sthr, pre


# ---- detect ------------------------------------------------------------------------------------------

def _flag(name: str, v: Any) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def detect_check(boxes: Any, scores: Any, objectness: Any, idxs: Any, max_det: Any,
                 pre_nms_top_k: Any, fmt: Any, multi_label: Any, class_agnostic: Any) -> tuple:
    """Validate detect's arrays and options (reference: detkernels/reference/detect.py); return
    ``(working dtype, max_det, pre_nms_top_k or None, multi_label, class_agnostic)``."""
    A.same_placement(boxes=boxes, scores=scores, objectness=objectness, idxs=idxs)
    B, N = _batch_shapes(boxes, scores, idxs, "A")
    if objectness is not None and tuple(objectness.shape) != (B, N):
        raise ValueError(f"objectness must have shape [{B}, {N}], got {tuple(objectness.shape)}")
    multi_label, class_agnostic = _flag("multi_label", multi_label), _flag("class_agnostic", class_agnostic)
    if multi_label and scores.ndim != 3:
        raise ValueError(f"multi_label=True needs scores of shape [B, A, C], got {tuple(scores.shape)}")
    if idxs is not None:
        if A.dtype_name(idxs) not in INTS:
            raise TypeError(f"idxs must be an integer array (class ids), got {A.dtype_name(idxs)}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    k = None if pre_nms_top_k is None else non_negative_int("pre_nms_top_k", pre_nms_top_k)
    named = {"boxes": boxes, "scores": scores}
    if objectness is not None:
        named["objectness"] = objectness
    return _float_dtypes(**named), non_negative_int("max_det", max_det), k, multi_label, class_agnostic


class DetectNms(NamedTuple):
    """detect's NMS mode and the parameters it uses (the others None): detect_nms_check's result,
    which detect_nms_check takes back unchanged (the torch op re-checks it)."""
    mode: str = "iou"
    beta: float | None = None
    decay: str | None = None
    sigma: float | None = None
    min_score: float | None = None


def detect_nms_check(nms: Any, beta: Any, decay: Any, sigma: Any, min_score: Any) -> DetectNms:
    """Validate detect's ``nms`` mode and its parameters (reference/detect.py NMS_PARAMETERS:
    None takes the mode's default; one the mode does not use must be None) as diou_nms,
    soft_nms and matrix_nms validate theirs."""
    from .reference.detect import NMS_MODES, nms_parameters
    from .reference.matrix_nms import KERNELS
    from .reference.soft_nms import METHODS

    if not isinstance(nms, str) or nms not in NMS_MODES:
        raise ValueError(f"nms must be one of {NMS_MODES}, got {nms!r}")
    p = nms_parameters(nms, beta, decay, sigma, min_score)
    if p["beta"] is not None:
        b = threshold_value(p["beta"], "beta")
        if not (b > 0 and b < float("inf")):  # NaN too
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        p["beta"] = b
    if p["decay"] is not None:
        allowed = METHODS if nms == "soft" else KERNELS
        if not isinstance(p["decay"], str) or p["decay"] not in allowed:
            raise ValueError(f"decay must be one of {allowed} for nms={nms!r}, got {decay!r}")
    if p["sigma"] is not None:
        sig = threshold_value(p["sigma"], "sigma")
        finite = nms == "matrix"  # as matrix_nms; soft_nms takes sigma = inf (weight 1)
        if not (sig > 0 and (sig < float("inf") or not finite)):  # NaN too
            raise ValueError(f"sigma must be a positive{' finite' if finite else ''} number, got {sigma!r}")
        p["sigma"] = sig
    if p["min_score"] is not None:
        p["min_score"] = threshold_value(p["min_score"], "min_score")
    return DetectNms(nms, p["beta"], p["decay"], p["sigma"], p["min_score"])


# ---- RoI ops -----------------------------------------------------------------------------------------

def pair(output_size: Any) -> tuple[int, int]:
    """``output_size`` as (PH, PW): an int, or a pair of ints (torchvision's ``_pair``)."""
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}")
        ph, pw = output_size
    else:
        ph = pw = output_size
    return ph, pw


def rois_from_boxes(boxes: Any) -> Any:
    """``Tensor[K, 5]`` as given, or a list of ``Tensor[L, 4]`` (one per image) -> ``[K, 5]`` with
    the image index (in the boxes' dtype) as first column (torchvision's convert_boxes_to_roi_format)."""
    if isinstance(boxes, (list, tuple)):
        for b in boxes:
            if b.ndim != 2 or b.shape[1] != 4:
                raise AssertionError("The shape of the tensor in the boxes list is not correct as "
                                     f"List[Tensor[L, 4]], got {tuple(b.shape)}")
        if boxes and A.is_torch(boxes[0]):
            torch = sys.modules["torch"]
            ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
            return torch.cat([torch.cat(ids, 0), torch.cat(list(boxes), 0)], 1)
        if not boxes:
            return np.zeros((0, 5), np.float32)
        arrs = [np.asarray(b) for b in boxes]
        ids = [np.full((a.shape[0], 1), i, a.dtype) for i, a in enumerate(arrs)]
        return np.concatenate([np.concatenate(ids, 0), np.concatenate(arrs, 0)], 1)
    if boxes.ndim != 2 or boxes.shape[1] != 5:
        raise AssertionError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(boxes.shape)}")
    return boxes


def _working(di: str, dr: str) -> str:
    if di not in FLOATS:
        raise RuntimeError(f"input must be a floating point tensor (float16/bfloat16/float32/float64), got {di}")
    # rois may stay float32 for half features (docs/SPEC.md §1.5); otherwise no implicit cast.
    if dr != di and not (di in HALF and dr == "float32"):
        raise RuntimeError(f"input should have the same type as rois: input is {di}, rois are {dr}")
    return "float64" if di == "float64" else "float32"


def roi_check(input: Any, rois: Any, ph: Any, pw: Any, ps: bool, pool: bool) -> str:
    """Validate a RoI forward (rois already [K, 5]); return the working dtype name. Errors as
    torchvision raises them: AssertionError for the RoI box shape, RuntimeError for dtypes and
    channel counts; ValueError for other shapes and sizes."""
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise AssertionError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(rois.shape)}")
    if input.ndim != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {tuple(input.shape)}")
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got ({ph}, {pw})")
    w = _working(A.dtype_name(input), A.dtype_name(rois))
    if ps and input.shape[1] % (ph * pw) != 0:
        raise RuntimeError("input channels must be a multiple of pooling height * pooling width, "
                           f"got {input.shape[1]} channels for output size ({ph}, {pw})")
    if pool and not ps and isinstance(input.shape[2] * input.shape[3], int):  # symbolic: at run time
        check_plane(input.shape[2], input.shape[3])
    return w


def roi_grad_check(grad: Any, rois: Any, ph: int, pw: int, c: int, h: int, w: int, ps: bool,
                   pool: bool) -> str:
    """The backward ops are public (torch.ops.detkernels._*_backward): shapes must agree."""
    wd = _working(A.dtype_name(grad), A.dtype_name(rois))
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise AssertionError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(rois.shape)}")
    if ph <= 0 or pw <= 0 or (ps and c % (ph * pw) != 0):
        raise ValueError(f"bad pooled size ({ph}, {pw}) for {c} channels")
    want = (rois.shape[0], c // (ph * pw) if ps else c, ph, pw)
    if tuple(grad.shape) != tuple(want):
        raise ValueError(f"grad must have shape {want}, got {tuple(grad.shape)}")
    if pool and not ps:
        check_plane(int(h), int(w))
    return wd


def _rotated_rois(rois: Any) -> None:
    if rois.ndim != 2 or rois.shape[1] != 6:
        raise AssertionError("The rois tensor shape is not correct as Tensor[K, 6] "
                             f"(batch_index, cx, cy, w, h, angle), got {tuple(rois.shape)}")


def roi_rotated_check(input: Any, rois: Any, ph: Any, pw: Any) -> str:
    """Validate a roi_align_rotated forward; return the working dtype name (errors as roi_check)."""
    _rotated_rois(rois)
    if input.ndim != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {tuple(input.shape)}")
    if ph <= 0 or pw <= 0:
        raise ValueError(f"output_size must be positive, got ({ph}, {pw})")
    return _working(A.dtype_name(input), A.dtype_name(rois))


def roi_rotated_grad_check(grad: Any, rois: Any, ph: int, pw: int, c: int) -> str:
    """The rotated backward op is public (torch.ops.detkernels._roi_align_rotated_backward)."""
    wd = _working(A.dtype_name(grad), A.dtype_name(rois))
    _rotated_rois(rois)
    if ph <= 0 or pw <= 0:
        raise ValueError(f"bad pooled size ({ph}, {pw})")
    want = (rois.shape[0], c, ph, pw)
    if tuple(grad.shape) != tuple(want):
        raise ValueError(f"grad must have shape {want}, got {tuple(grad.shape)}")
    return wd


def roi_pool_index_check(idx: Any, grad: Any) -> None:
    if A.dtype_name(idx) != "int32" or tuple(idx.shape) != tuple(grad.shape):
        raise ValueError(f"argmax/channel_mapping must be int32 of shape {tuple(grad.shape)}, got "
                         f"{A.dtype_name(idx)} {tuple(idx.shape)}")
