"""NMS on torch tensors: the custom ops ``nms``, ``batched_nms`` (data-dependent output size),
``nms_padded`` and ``multi_image_nms`` (fixed-size outputs: traceable with static shapes) with
their fake kernels, and the eager entries of detkernels/api/nms.py (arguments validated there)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _checks, _dispatch, _registry
from . import onnx as _onnx
from .common import traced

# ---- custom ops --------------------------------------------------------------------------------------


@torch.library.custom_op("detkernels::nms", mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    w = _checks.nms_check(boxes, scores)
    return _dispatch.nms(boxes, scores, None, iou_threshold, w, None).clone()


@nms_op.register_fake
def _(boxes, scores, iou_threshold):
    _checks.nms_check(boxes, scores)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::batched_nms", mutates_args=())
def batched_nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    if boxes.numel() == 0:
        return boxes.new_empty((0,), dtype=torch.int64)
    w = _checks.nms_check(boxes, scores, idxs)
    return _dispatch.nms(boxes, scores, idxs, iou_threshold, w, None).clone()


@batched_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold):
    _checks.nms_check(boxes, scores, idxs)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::nms_padded", mutates_args=())
def nms_padded_op(boxes: Tensor, scores: Tensor, iou_threshold: float,
                  max_output: int) -> tuple[Tensor, Tensor]:
    w = _checks.padded_check(boxes, scores, max_output)
    idx, count = _dispatch.nms_padded(boxes, scores, iou_threshold, max_output, w, None)
    return idx.clone(), count.clone()


@nms_padded_op.register_fake
def _(boxes, scores, iou_threshold, max_output):
    _checks.padded_check(boxes, scores, max_output)
    return (boxes.new_empty((max_output,), dtype=torch.int64),
            boxes.new_empty((), dtype=torch.int64))


@torch.library.custom_op("detkernels::multi_image_nms", mutates_args=())
def multi_image_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                       max_output: int, score_threshold: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    w = _checks.multi_check(boxes, scores, idxs, max_output)
    idx, cls, counts = _dispatch.multi_image_nms(boxes, scores, idxs, iou_threshold, max_output,
                                                 score_threshold, w, None)
    if cls is None:  # [B, N] scores: no class column; keep the schema's fixed arity
        cls = torch.full_like(idx, -1)
    return idx.clone(), cls.clone(), counts.clone()


@multi_image_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_output, score_threshold):
    _checks.multi_check(boxes, scores, idxs, max_output)
    B = boxes.shape[0]
    return (boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B,), dtype=torch.int64))


@torch.library.custom_op("detkernels::soft_nms", mutates_args=())
def soft_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float, sigma: float,
                method: str, score_threshold: float, max_output: Optional[int]) -> tuple[Tensor, Tensor]:
    w, *_ = _checks.soft_nms_check(boxes, scores, idxs, iou_threshold, sigma, method, score_threshold,
                                   max_output)
    keep, kept = _dispatch.soft_nms(boxes, scores, idxs, iou_threshold, sigma, method, score_threshold,
                                    max_output, w, None)
    return keep.clone(), kept.clone()


@soft_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, sigma, method, score_threshold, max_output):
    w, *_ = _checks.soft_nms_check(boxes, scores, idxs, iou_threshold, sigma, method, score_threshold,
                                   max_output)
    k = torch.library.get_ctx().new_dynamic_size()
    return (boxes.new_empty((k,), dtype=torch.int64),
            boxes.new_empty((k,), dtype=getattr(torch, w)))


@torch.library.custom_op("detkernels::multi_image_soft_nms", mutates_args=())
def multi_image_soft_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], max_output: int,
                            iou_threshold: float, sigma: float, method: str,
                            score_threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    w, *_ = _checks.multi_soft_nms_check(boxes, scores, idxs, max_output, iou_threshold, sigma,
                                         method, score_threshold)
    out = _dispatch.multi_image_soft_nms(boxes, scores, idxs, max_output, iou_threshold, sigma,
                                         method, score_threshold, w, None)
    return tuple(x.clone() for x in out)


@multi_image_soft_nms_op.register_fake
def _(boxes, scores, idxs, max_output, iou_threshold, sigma, method, score_threshold):
    w, *_ = _checks.multi_soft_nms_check(boxes, scores, idxs, max_output, iou_threshold, sigma,
                                         method, score_threshold)
    B = boxes.shape[0]
    return (boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B, max_output), dtype=getattr(torch, w)),
            boxes.new_empty((B,), dtype=torch.int64))


@torch.library.custom_op("detkernels::diou_nms", mutates_args=())
def diou_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                beta: float) -> Tensor:
    w, *_ = _checks.diou_nms_check(boxes, scores, idxs, iou_threshold, beta)
    return _dispatch.diou_nms(boxes, scores, idxs, iou_threshold, beta, w, None).clone()


@diou_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, beta):
    _checks.diou_nms_check(boxes, scores, idxs, iou_threshold, beta)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::matrix_nms", mutates_args=())
def matrix_nms_op(boxes: Tensor, scores: Tensor, labels: Tensor, kernel: str, sigma: float,
                  score_threshold: Optional[float], max_output: Optional[int],
                  pre_top_k: Optional[int]) -> tuple[Tensor, Tensor]:
    w, *_ = _checks.matrix_nms_check(boxes, scores, labels, kernel, sigma, score_threshold,
                                     max_output, pre_top_k)
    keep, kept = _dispatch.matrix_nms(boxes, scores, labels, kernel, sigma, score_threshold,
                                      max_output, pre_top_k, w, None)
    return keep.clone(), kept.clone()


@matrix_nms_op.register_fake
def _(boxes, scores, labels, kernel, sigma, score_threshold, max_output, pre_top_k):
    w, *_ = _checks.matrix_nms_check(boxes, scores, labels, kernel, sigma, score_threshold,
                                     max_output, pre_top_k)
    k = torch.library.get_ctx().new_dynamic_size()
    return (boxes.new_empty((k,), dtype=torch.int64),
            boxes.new_empty((k,), dtype=getattr(torch, w)))


@torch.library.custom_op("detkernels::multi_image_diou_nms", mutates_args=())
def multi_image_diou_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                            max_output: int, beta: float) -> tuple[Tensor, Tensor]:
    w, *_ = _checks.multi_diou_nms_check(boxes, scores, idxs, iou_threshold, max_output, beta)
    out = _dispatch.multi_image_diou_nms(boxes, scores, idxs, iou_threshold, max_output, beta, w, None)
    return tuple(x.clone() for x in out)


@multi_image_diou_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_output, beta):
    _checks.multi_diou_nms_check(boxes, scores, idxs, iou_threshold, max_output, beta)
    B = boxes.shape[0]
    return (boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B,), dtype=torch.int64))


@torch.library.custom_op("detkernels::multi_image_matrix_nms", mutates_args=())
def multi_image_matrix_nms_op(boxes: Tensor, scores: Tensor, labels: Tensor, max_output: int,
                              kernel: str, sigma: float, score_threshold: Optional[float],
                              pre_top_k: Optional[int]) -> tuple[Tensor, Tensor, Tensor]:
    w, *_ = _checks.multi_matrix_nms_check(boxes, scores, labels, max_output, kernel, sigma,
                                           score_threshold, pre_top_k)
    out = _dispatch.multi_image_matrix_nms(boxes, scores, labels, max_output, kernel, sigma,
                                           score_threshold, pre_top_k, w, None)
    return tuple(x.clone() for x in out)


@multi_image_matrix_nms_op.register_fake
def _(boxes, scores, labels, max_output, kernel, sigma, score_threshold, pre_top_k):
    w, *_ = _checks.multi_matrix_nms_check(boxes, scores, labels, max_output, kernel, sigma,
                                           score_threshold, pre_top_k)
    B = boxes.shape[0]
    return (boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B, max_output), dtype=getattr(torch, w)),
            boxes.new_empty((B,), dtype=torch.int64))


# ---- eager entries -----------------------------------------------------------------------------------

_FAST = {torch.float32: "float32", torch.float64: "float64"}


def fast_cpu_nms(boxes: Tensor, scores: Tensor, thr: float, idxs: Tensor | None = None,
                 backend: str | None = None) -> Tensor | None:
    """The common eager call (plain CPU float32/float64 tensors of one dtype, valid shapes, int64
    ``idxs`` for batched_nms, no tracing) with the least Python work -- a deployment NMS of a few
    hundred boxes takes a few microseconds, and the general path's checks and conversions cost
    about 20 us (measured, issue 21): the registry's choice called on the tensors as they are (the
    checks they would pass, the conversions they do not need, skipped). None: take the general
    path, which also raises the errors."""
    w = _FAST.get(boxes.dtype)
    if (w is None or type(boxes) is not Tensor or type(scores) is not Tensor
            or scores.dtype != boxes.dtype or boxes.device.type != "cpu" or scores.device.type != "cpu"
            or boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1
            or scores.shape[0] != boxes.shape[0] or boxes.shape[0] == 0
            or torch.compiler.is_compiling() or torch.jit.is_tracing()):
        return None
    if idxs is not None and (type(idxs) is not Tensor or idxs.dtype != torch.int64
                             or idxs.device.type != "cpu" or idxs.dim() != 1
                             or idxs.shape[0] != boxes.shape[0]):
        return None
    _, fn = _registry.select("nms", "cpu", w, backend)
    return fn(boxes.contiguous(), scores.contiguous(), None if idxs is None else idxs.contiguous(), thr)


def nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, w: str,
        backend: str | None) -> Tensor:
    if backend is None and _onnx.exporting():
        return _onnx.nms(boxes, scores, thr) if idxs is None else _onnx.batched_nms(boxes, scores, idxs, thr)
    if backend is None and traced(boxes, scores, idxs):
        if idxs is None:
            return torch.ops.detkernels.nms(boxes, scores, thr)
        return torch.ops.detkernels.batched_nms(boxes, scores, idxs, thr)
    return _dispatch.nms(boxes, scores, idxs, thr, w, backend)


def nms_padded(boxes: Tensor, scores: Tensor, thr: float, max_output: int, w: str,
               backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and _onnx.exporting():
        return _onnx.nms_padded(boxes, scores, thr, max_output)
    if backend is None and traced(boxes, scores):
        return torch.ops.detkernels.nms_padded(boxes, scores, thr, max_output)
    return _dispatch.nms_padded(boxes, scores, thr, max_output, w, backend)


def multi_image_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, max_output: int,
                    score_threshold: float | None, w: str,
                    backend: str | None) -> tuple[Tensor, Tensor | None, Tensor]:
    if backend is None and _onnx.exporting():
        return _onnx.multi_image_nms(boxes, scores, idxs, thr, max_output, score_threshold)
    if backend is None and traced(boxes, scores, idxs):
        idx, cls, counts = torch.ops.detkernels.multi_image_nms(boxes, scores, idxs, thr, max_output,
                                                                score_threshold)
        return idx, (cls if scores.ndim == 3 else None), counts
    return _dispatch.multi_image_nms(boxes, scores, idxs, thr, max_output, score_threshold, w, backend)


def soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None, w: str,
             backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.soft_nms(boxes, scores, idxs, thr, sigma, method, score_threshold,
                                             max_output)
    return _dispatch.soft_nms(boxes, scores, idxs, thr, sigma, method, score_threshold, max_output, w,
                              backend)


def diou_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, beta: float, w: str,
             backend: str | None) -> Tensor:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.diou_nms(boxes, scores, idxs, thr, beta)
    return _dispatch.diou_nms(boxes, scores, idxs, thr, beta, w, backend)


def matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None, pre_top_k: int | None, w: str,
               backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and _onnx.exporting():
        return _onnx.matrix_nms(boxes, scores, labels, kernel, sigma, score_threshold, max_output, pre_top_k, w)
    if backend is None and traced(boxes, scores, labels):
        return torch.ops.detkernels.matrix_nms(boxes, scores, labels, kernel, sigma, score_threshold,
                                               max_output, pre_top_k)
    return _dispatch.matrix_nms(boxes, scores, labels, kernel, sigma, score_threshold, max_output,
                                pre_top_k, w, backend)


def multi_image_soft_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, max_output: int, thr: float,
                         sigma: float, method: str, score_threshold: float, w: str,
                         backend: str | None) -> tuple[Tensor, Tensor, Tensor]:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.multi_image_soft_nms(boxes, scores, idxs, max_output, thr, sigma,
                                                         method, score_threshold)
    return _dispatch.multi_image_soft_nms(boxes, scores, idxs, max_output, thr, sigma, method,
                                          score_threshold, w, backend)


def multi_image_diou_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, max_output: int,
                         beta: float, w: str, backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.multi_image_diou_nms(boxes, scores, idxs, thr, max_output, beta)
    return _dispatch.multi_image_diou_nms(boxes, scores, idxs, thr, max_output, beta, w, backend)


def multi_image_matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, max_output: int, kernel: str,
                           sigma: float, score_threshold: float | None, pre_top_k: int | None, w: str,
                           backend: str | None) -> tuple[Tensor, Tensor, Tensor]:
    if backend is None and traced(boxes, scores, labels):
        return torch.ops.detkernels.multi_image_matrix_nms(boxes, scores, labels, max_output, kernel,
                                                           sigma, score_threshold, pre_top_k)
    return _dispatch.multi_image_matrix_nms(boxes, scores, labels, max_output, kernel, sigma,
                                            score_threshold, pre_top_k, w, backend)
