"""From validated arguments to a backend: placement, the registry's choice, the working dtype
(widen half inputs, round the result once), contiguous buffers, empty shortcuts.

Inputs come from detkernels/_checks.py (normalised: Python scalars, [K, 5] rois, the working
dtype named, the placement of the IoU and NMS arrays checked); nothing here validates again, except
the RoI ops' placement (their checks leave it to this module and to the torch entry, whose errors
differ: RuntimeError as torchvision's for torch tensors). Arrays are of one kind (NumPy, torch, CuPy, Numba
device arrays) and results are of that kind, on the same device. No autograd here: the torch
integration (detkernels/_torch/) wraps these.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _arrays as A
from . import _registry
from ._checks import HALF, INTS, ROTATED, DetectNms
from .reference.rotated import to_cxcywhr

__all__ = ["iou", "probiou", "nms", "nms_rotated", "nms_probiou", "multi_image_nms_rotated", "soft_nms", "multi_image_soft_nms", "diou_nms", "multi_image_diou_nms", "matrix_nms", "multi_image_matrix_nms", "multi_image_nms", "nms_padded", "detect", "detect_select", "roi_align", "roi_align_backward",
           "roi_pool", "roi_pool_backward", "roi_align_rotated", "roi_align_rotated_backward"]


def _class_ids(idxs: Any) -> Any:
    """int64 class ids; equal values of `idxs` <-> equal ids (exact grouping, any numeric dtype)."""
    d = A.dtype_name(idxs)
    if d in INTS:
        return A.ascontig(A.astype(idxs, "int64"))
    if A.is_torch(idxs):
        return sys.modules["torch"].unique(idxs, return_inverse=True)[1].contiguous()
    return np.unique(np.asarray(idxs), return_inverse=True)[1].astype(np.int64).reshape(-1)


def _as(x: Any, w: str) -> Any:
    return A.ascontig(A.astype(x, w))


# ---- IoU family --------------------------------------------------------------------------------------

def iou(kind: str, b1: Any, b2: Any, fmt: str, eps: float, checked: tuple, backend: str | None) -> Any:
    """``checked`` = _checks.iou_check(b1, b2, kind, fmt): (batch, N, M, working dtype); the
    placement was checked there too."""
    if fmt in ROTATED:
        return _iou_rotated(b1, b2, fmt, checked, backend)
    dev = A.device(b1)
    batch, N, M, w = checked
    batch, N, M = tuple(int(x) for x in batch), int(N), int(M)
    B = int(np.prod(batch, dtype=np.int64))
    out_dtype = "float64" if w == "float64" else "float32"
    if B == 0 or N == 0 or M == 0:
        return A.empty(batch + (N, M), out_dtype, like=b1)
    _, fn = _registry.select("box_iou", dev, w, backend)
    x1 = A.ascontig(A.astype(A.broadcast_to(b1, batch + (N, 4)), w).reshape(B, N, 4))
    x2 = A.ascontig(A.astype(A.broadcast_to(b2, batch + (M, 4)), w).reshape(B, M, 4))
    return fn(x1, x2, kind, fmt, eps).reshape(batch + (N, M))


def _cxcywhr(x: Any, fmt: str, w: str) -> Any:
    """x in the working dtype, converted to cxcywhr by torchvision's formulas in x's own array
    library (torch tensors: torchvision's very ops; reference.rotated.to_cxcywhr)."""
    x = A.astype(x, w)
    m = sys.modules["torch"] if A.is_torch(x) else None
    return A.astype(to_cxcywhr(x, fmt, m), w)


def _iou_rotated(b1: Any, b2: Any, fmt: str, checked: tuple, backend: str | None) -> Any:
    """Rotated box_iou: [B, N, 5] cxcywhr boxes to the backend, float32 [..., N, M] out."""
    dev = A.device(b1)
    batch, N, M, w = checked
    batch, N, M = tuple(int(x) for x in batch), int(N), int(M)
    B = int(np.prod(batch, dtype=np.int64))
    if B == 0 or N == 0 or M == 0:
        return A.empty(batch + (N, M), "float32", like=b1)
    _, fn = _registry.select("box_iou_rotated", dev, w, backend)
    k = 8 if fmt == "xyxyxyxy" else 5
    x1 = A.ascontig(_cxcywhr(A.broadcast_to(b1, batch + (N, k)), fmt, w).reshape(B, N, 5))
    x2 = A.ascontig(_cxcywhr(A.broadcast_to(b2, batch + (M, k)), fmt, w).reshape(B, M, 5))
    return fn(x1, x2).reshape(batch + (N, M))


def probiou(b1: Any, b2: Any, eps: float, checked: tuple, backend: str | None) -> Any:
    """ProbIoU matrix [..., N, M] in the working dtype (checked = _checks.probiou_check)."""
    batch, N, M, w = checked
    batch, N, M = tuple(int(x) for x in batch), int(N), int(M)
    B = int(np.prod(batch, dtype=np.int64))
    if B == 0 or N == 0 or M == 0:
        return A.empty(batch + (N, M), w, like=b1)
    _, fn = _registry.select("probiou", A.device(b1), w, backend)
    x1 = A.ascontig(A.astype(A.broadcast_to(b1, batch + (N, 5)), w).reshape(B, N, 5))
    x2 = A.ascontig(A.astype(A.broadcast_to(b2, batch + (M, 5)), w).reshape(B, M, 5))
    return fn(x1, x2, eps).reshape(batch + (N, M))


# ---- NMS ---------------------------------------------------------------------------------------------

def nms_rotated(boxes: Any, scores: Any, idxs: Any, thr: float, fmt: str, w: str, backend: str | None) -> Any:
    """Rotated NMS (per class when ``idxs`` is given): int64 kept indices by descending score."""
    dev = A.device(boxes)  # placement: checked by _checks.nms_rotated_check
    if boxes.shape[0] == 0:
        return A.empty((0,), "int64", like=boxes)
    _, fn = _registry.select("nms_rotated", dev, w, backend)
    return fn(A.ascontig(_cxcywhr(boxes, fmt, w)), _as(scores, w), None if idxs is None else _class_ids(idxs), thr)


def nms_probiou(boxes: Any, scores: Any, idxs: Any, thr: float, fast: bool, eps: float, w: str,
                backend: str | None) -> Any:
    """NMS on ProbIoU (greedy or Fast-NMS): int64 kept indices by descending score."""
    if boxes.shape[0] == 0:
        return A.empty((0,), "int64", like=boxes)
    _, fn = _registry.select("nms_probiou", A.device(boxes), w, backend)
    return fn(_as(boxes, w), _as(scores, w), None if idxs is None else _class_ids(idxs), thr, fast, eps)


def multi_image_nms_rotated(boxes: Any, scores: Any, idxs: Any, thr: float, max_output: int,
                            score_threshold: float | None, metric: str, eps: float, fmt: str, w: str,
                            backend: str | None) -> tuple[Any, Any]:
    """Fixed-size rotated NMS of [B, N] boxes: (indices [B, K], counts [B]). metric 'iou' (boxes in
    ``fmt``, converted to cxcywhr here), 'probiou' or 'probiou_fast' (ultralytics xywhr boxes)."""
    dev = A.device(boxes)  # placement: checked by _checks.multi_rotated_check
    _, fn = _registry.select("multi_image_nms_rotated", dev, w, backend)
    b = A.ascontig(_cxcywhr(boxes, fmt, w)) if metric == "iou" else _as(boxes, w)
    c = None if idxs is None else _class_ids(idxs).reshape(idxs.shape)
    return fn(b, _as(scores, w), c, thr, max_output, score_threshold, metric, eps)


def nms(boxes: Any, scores: Any, idxs: Any, thr: float, w: str, backend: str | None) -> Any:
    """NMS (per class when ``idxs`` is given): int64 kept indices by descending score."""
    dev = A.device(boxes)  # placement: checked by _checks.nms_check
    if boxes.shape[0] == 0:
        return A.empty((0,), "int64", like=boxes)
    _, fn = _registry.select("nms", dev, w, backend)
    return fn(_as(boxes, w), _as(scores, w), None if idxs is None else _class_ids(idxs), thr)


def multi_image_nms(boxes: Any, scores: Any, idxs: Any, thr: float, max_output: int,
                    score_threshold: float | None, w: str, backend: str | None) -> tuple[Any, Any, Any]:
    """(indices [B, K], classes [B, K] or None, counts [B])."""
    dev = A.device(boxes)  # placement: checked by _checks.multi_check / padded_check
    _, fn = _registry.select("multi_image_nms", dev, w, backend)
    c = None if idxs is None else _class_ids(idxs).reshape(idxs.shape)
    return fn(_as(boxes, w), _as(scores, w), c, thr, max_output, score_threshold)


def nms_padded(boxes: Any, scores: Any, thr: float, max_output: int, w: str,
               backend: str | None) -> tuple[Any, Any]:
    """One image through the multi-image path: (indices [max_output], count 0-d)."""
    idx, _, counts = multi_image_nms(boxes[None], scores[None], None, thr, max_output, None, w, backend)
    return idx[0], counts.reshape(())


def soft_nms(boxes: Any, scores: Any, idxs: Any, thr: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None, w: str, backend: str | None) -> tuple[Any, Any]:
    """Soft-NMS (per class when ``idxs`` is given): (int64 indices, decayed scores in ``w``) in
    pick order; arguments from _checks.soft_nms_check."""
    dev = A.device(boxes)  # placement: checked by _checks.nms_check
    if boxes.shape[0] == 0 or max_output == 0:
        return A.empty((0,), "int64", like=boxes), A.empty((0,), w, like=boxes)
    _, fn = _registry.select("soft_nms", dev, w, backend)
    return fn(_as(boxes, w), _as(scores, w), None if idxs is None else _class_ids(idxs), thr, sigma,
              method, score_threshold, max_output)


def multi_image_soft_nms(boxes: Any, scores: Any, idxs: Any, max_output: int, thr: float, sigma: float,
                         method: str, score_threshold: float, w: str,
                         backend: str | None) -> tuple[Any, Any, Any]:
    """(indices [B, K] -1 padded, decayed scores [B, K] 0 padded, counts [B])."""
    dev = A.device(boxes)  # placement: checked by _checks.multi_soft_nms_check
    _, fn = _registry.select("multi_image_soft_nms", dev, w, backend)
    c = None if idxs is None else _class_ids(idxs).reshape(idxs.shape)
    return fn(_as(boxes, w), _as(scores, w), c, max_output, thr, sigma, method, score_threshold)


def diou_nms(boxes: Any, scores: Any, idxs: Any, thr: float, beta: float, w: str,
             backend: str | None) -> Any:
    """DIoU-NMS (per class when ``idxs`` is given): int64 kept indices by descending score."""
    dev = A.device(boxes)  # placement: checked by _checks.nms_check
    if boxes.shape[0] == 0:
        return A.empty((0,), "int64", like=boxes)
    _, fn = _registry.select("diou_nms", dev, w, backend)
    return fn(_as(boxes, w), _as(scores, w), None if idxs is None else _class_ids(idxs), thr, beta)


def matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None, pre_top_k: int | None, w: str,
               backend: str | None) -> tuple[Any, Any]:
    """Matrix NMS: (int64 indices, decayed scores in ``w``) by decayed score."""
    dev = A.device(boxes)  # placement: checked by _checks.nms_check
    if boxes.shape[0] == 0 or max_output == 0 or pre_top_k == 0:
        return A.empty((0,), "int64", like=boxes), A.empty((0,), w, like=boxes)
    _, fn = _registry.select("matrix_nms", dev, w, backend)
    return fn(_as(boxes, w), _as(scores, w), _class_ids(labels), kernel, sigma, score_threshold,
              max_output, pre_top_k)


def multi_image_diou_nms(boxes: Any, scores: Any, idxs: Any, thr: float, max_output: int, beta: float,
                         w: str, backend: str | None) -> tuple[Any, Any]:
    """(indices [B, K] -1 padded, counts [B]); arguments from _checks.multi_diou_nms_check."""
    dev = A.device(boxes)  # placement: checked by _checks.multi_diou_nms_check
    _, fn = _registry.select("multi_image_diou_nms", dev, w, backend)
    c = None if idxs is None else _class_ids(idxs).reshape(idxs.shape)
    return fn(_as(boxes, w), _as(scores, w), c, thr, max_output, beta)


def multi_image_matrix_nms(boxes: Any, scores: Any, labels: Any, max_output: int, kernel: str,
                           sigma: float, score_threshold: float | None, pre_top_k: int | None, w: str,
                           backend: str | None) -> tuple[Any, Any, Any]:
    """(indices [B, K] -1 padded, decayed scores [B, K] 0 padded, counts [B]); arguments from
    _checks.multi_matrix_nms_check."""
    dev = A.device(boxes)  # placement: checked by _checks.multi_matrix_nms_check
    _, fn = _registry.select("multi_image_matrix_nms", dev, w, backend)
    return fn(_as(boxes, w), _as(scores, w), _class_ids(labels).reshape(labels.shape), max_output,
              kernel, sigma, score_threshold, pre_top_k)


# ---- detect ------------------------------------------------------------------------------------------

_DEFAULT_NMS = DetectNms()


def detect_select(device: str, w: str, nms: Any, backend: str | None) -> Any:
    """The detect implementation for ``device`` and ``w`` that serves the NMS mode ``nms``
    (_checks.DetectNms). A backend lists the modes other than "iou" it serves per device type
    in its detect's ``nms_modes`` ({device type: modes}; none: "iou" only); the registry's choice
    serving another mode is a NotImplementedError naming the mode, never greedy NMS instead."""
    name, fn = _registry.select("detect", device, w, backend)
    dev = device.split(":")[0]
    if nms.mode != "iou" and nms.mode not in getattr(fn, "nms_modes", {}).get(dev, ()):
        serving = [b for b, t in _registry._TABLE.items() if t.available and "detect" in t.impls
                   and nms.mode in getattr(t.impls["detect"][0], "nms_modes", {}).get(dev, ())]
        hint = (f"; backend= {' or '.join(map(repr, serving))} does" if serving
                else f"; no backend serves it on {dev}")
        raise NotImplementedError(f"detect(nms={nms.mode!r}) is not implemented on {dev} by backend "
                                  f"{name!r} (it runs nms='iou' only there){hint}")
    return fn


def detect(boxes: Any, scores: Any, objectness: Any, idxs: Any, thr: float, max_det: int,
           score_threshold: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool, w: str, backend: str | None, nms: Any = None) -> tuple:
    """(boxes [B, K, 4] w, scores [B, K] w, classes [B, K], indices [B, K], counts [B]);
    ``checked`` by _checks.detect_check (placement included) and _checks.detect_nms_check
    (``nms``; None: greedy IoU NMS)."""
    fn = detect_select(A.device(boxes), w, nms or _DEFAULT_NMS, backend)
    # The NMS mode goes to the backend only when it is not the default, so backends serving
    # "iou" alone keep their signature.
    extra = {} if nms is None or nms.mode == "iou" else {"nms": nms}
    # Float inputs keep their layout (a sliced or transposed head output is read in place: the
    # backends take strides); the small idxs are made contiguous int64.
    return fn(A.astype(boxes, w), A.astype(scores, w),
              None if objectness is None else A.astype(objectness, w),
              None if idxs is None else _as(idxs, "int64"), thr, max_det, score_threshold, top_k,
              fmt, multi_label, class_agnostic, **extra)


# ---- RoI ops -----------------------------------------------------------------------------------------

def _narrow(x: Any, dtype: str) -> Any:
    """One rounding of the float32 result to the caller's half dtype (round to nearest even)."""
    if dtype in HALF and A.kind(x) == "numpy":
        with np.errstate(over="ignore"):
            return x.astype(dtype)
    return A.astype(x, dtype)


def roi_align(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool, w: str, backend: str | None) -> Any:
    """RoIAlign / PSRoIAlign forward: [K, Co, PH, PW] in the input's dtype."""
    dev = A.same_placement(input=input, rois=rois)
    _, fn = _registry.select("roi_align", dev, w, backend)
    out = fn(A.astype(input, w), _as(rois, w), spatial_scale, ph, pw, sampling_ratio, aligned, ps)
    return _narrow(out, A.dtype_name(input))


def roi_align_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                       h: int, w_: int, sampling_ratio: int, aligned: bool, ps: bool, w: str,
                       backend: str | None) -> Any:
    """Gradient w.r.t. the features: [N, C, H, W] in grad's dtype, contiguous."""
    dev = A.same_placement(grad=grad, rois=rois)
    _, fn = _registry.select("roi_align_backward", dev, w, backend)
    gi = fn(A.astype(grad, w), _as(rois, w), spatial_scale, ph, pw, n, c, h, w_, sampling_ratio,
            aligned, ps)
    return _narrow(gi, A.dtype_name(grad))


def roi_align_rotated(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                      aligned: bool, clockwise: bool, w: str, backend: str | None) -> Any:
    """Rotated RoIAlign forward: [K, C, PH, PW] in the input's dtype."""
    dev = A.same_placement(input=input, rois=rois)
    _, fn = _registry.select("roi_align_rotated", dev, w, backend)
    out = fn(A.astype(input, w), _as(rois, w), spatial_scale, ph, pw, sampling_ratio, aligned, clockwise)
    return _narrow(out, A.dtype_name(input))


def roi_align_rotated_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                               h: int, w_: int, sampling_ratio: int, aligned: bool, clockwise: bool, w: str,
                               backend: str | None) -> Any:
    """Gradient w.r.t. the features: [N, C, H, W] in grad's dtype, contiguous."""
    dev = A.same_placement(grad=grad, rois=rois)
    _, fn = _registry.select("roi_align_rotated_backward", dev, w, backend)
    gi = fn(A.astype(grad, w), _as(rois, w), spatial_scale, ph, pw, n, c, h, w_, sampling_ratio, aligned,
            clockwise)
    return _narrow(gi, A.dtype_name(grad))


def roi_pool(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool, w: str,
             backend: str | None) -> tuple:
    """RoIPool / PSRoIPool forward: (out, argmax or channel map, int32)."""
    dev = A.same_placement(input=input, rois=rois)
    _, fn = _registry.select("roi_pool", dev, w, backend)
    out, idx = fn(A.astype(input, w), _as(rois, w), spatial_scale, ph, pw, ps)
    return _narrow(out, A.dtype_name(input)), idx


def roi_pool_backward(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int, n: int,
                      c: int, h: int, w_: int, ps: bool, w: str, backend: str | None) -> Any:
    dev = A.same_placement(grad=grad, rois=rois, idx=idx)
    _, fn = _registry.select("roi_pool_backward", dev, w, backend)
    gi = fn(A.astype(grad, w), _as(rois, w), A.ascontig(idx), spatial_scale, ph, pw, n, c, h, w_, ps)
    return _narrow(gi, A.dtype_name(grad))
