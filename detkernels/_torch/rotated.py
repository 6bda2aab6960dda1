"""Rotated NMS on torch tensors: the custom ops ``detkernels::nms_rotated`` and
``detkernels::nms_probiou`` (data-dependent output size, as ``detkernels::nms``) and
``detkernels::probiou``, the fixed-size ``detkernels::multi_image_nms_rotated`` /
``detkernels::multi_image_nms_probiou`` (static output shapes) with their fake kernels, and the eager entries of detkernels/api/rotated.py (arguments validated there). The
rotated box_iou goes through ``detkernels::box_iou`` (detkernels/_torch/iou.py)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _checks, _dispatch
from . import onnx as _onnx
from .common import traced


@torch.library.custom_op("detkernels::nms_rotated", mutates_args=())
def nms_rotated_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                   fmt: str = "cxcywhr") -> Tensor:
    w = _checks.nms_rotated_check(boxes, scores, idxs, fmt)
    return _dispatch.nms_rotated(boxes, scores, idxs, iou_threshold, fmt, w, None).clone()


@nms_rotated_op.register_fake
def _(boxes, scores, idxs, iou_threshold, fmt="cxcywhr"):
    _checks.nms_rotated_check(boxes, scores, idxs, fmt)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::nms_probiou", mutates_args=())
def nms_probiou_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                   fast: bool = False, eps: float = 1e-7) -> Tensor:
    w = _checks.nms_rotated_check(boxes, scores, idxs, "cxcywhr")
    return _dispatch.nms_probiou(boxes, scores, idxs, iou_threshold, fast, eps, w, None).clone()


@nms_probiou_op.register_fake
def _(boxes, scores, idxs, iou_threshold, fast=False, eps=1e-7):
    _checks.nms_rotated_check(boxes, scores, idxs, "cxcywhr")
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::probiou", mutates_args=())
def probiou_op(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    checked = _checks.probiou_check(boxes1, boxes2)
    return _dispatch.probiou(boxes1, boxes2, _checks.threshold_value(eps, "eps"), checked, None).clone()


@probiou_op.register_fake
def _(boxes1, boxes2, eps=1e-7):
    batch, N, M, w = _checks.probiou_check(boxes1, boxes2)
    return boxes1.new_empty(tuple(batch) + (N, M), dtype=getattr(torch, w))


@torch.library.custom_op("detkernels::multi_image_nms_rotated", mutates_args=())
def multi_image_nms_rotated_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                               max_output: int, score_threshold: Optional[float],
                               fmt: str = "cxcywhr") -> tuple[Tensor, Tensor]:
    w = _checks.multi_rotated_check(boxes, scores, idxs, max_output, fmt)
    idx, counts = _dispatch.multi_image_nms_rotated(boxes, scores, idxs, iou_threshold, max_output,
                                                    score_threshold, "iou", 0.0, fmt, w, None)
    return idx.clone(), counts.clone()


@multi_image_nms_rotated_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_output, score_threshold, fmt="cxcywhr"):
    _checks.multi_rotated_check(boxes, scores, idxs, max_output, fmt)
    return (boxes.new_empty((boxes.shape[0], max_output), dtype=torch.int64),
            boxes.new_empty((boxes.shape[0],), dtype=torch.int64))


@torch.library.custom_op("detkernels::multi_image_nms_probiou", mutates_args=())
def multi_image_nms_probiou_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                               max_output: int, score_threshold: Optional[float], fast: bool = False,
                               eps: float = 1e-7) -> tuple[Tensor, Tensor]:
    w = _checks.multi_rotated_check(boxes, scores, idxs, max_output, None)
    idx, counts = _dispatch.multi_image_nms_rotated(boxes, scores, idxs, iou_threshold, max_output,
                                                    score_threshold, "probiou_fast" if fast else "probiou",
                                                    eps, "xywhr", w, None)
    return idx.clone(), counts.clone()


@multi_image_nms_probiou_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_output, score_threshold, fast=False, eps=1e-7):
    _checks.multi_rotated_check(boxes, scores, idxs, max_output, None)
    return (boxes.new_empty((boxes.shape[0], max_output), dtype=torch.int64),
            boxes.new_empty((boxes.shape[0],), dtype=torch.int64))


def probiou(b1: Tensor, b2: Tensor, eps: float, checked: tuple, backend: str | None) -> Tensor:
    if backend is None and _onnx.exporting():
        return _onnx.probiou(b1, b2, eps, checked)
    if backend is None and traced(b1, b2):
        return torch.ops.detkernels.probiou(b1, b2, eps)
    return _dispatch.probiou(b1, b2, eps, checked, backend)


def nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, fmt: str, w: str,
                backend: str | None) -> Tensor:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.nms_rotated(boxes, scores, idxs, thr, fmt)
    return _dispatch.nms_rotated(boxes, scores, idxs, thr, fmt, w, backend)


def nms_probiou(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, fast: bool, eps: float,
                w: str, backend: str | None) -> Tensor:
    if backend is None and fast and _onnx.exporting():  # Fast-NMS only: the greedy form has no graph
        return _onnx.nms_probiou_fast(boxes, scores, idxs, thr, eps, w)
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.nms_probiou(boxes, scores, idxs, thr, fast, eps)
    return _dispatch.nms_probiou(boxes, scores, idxs, thr, fast, eps, w, backend)


def multi_image_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, max_output: int,
                            score_threshold: float | None, fmt: str, w: str,
                            backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output,
                                                            score_threshold, fmt)
    return _dispatch.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output, score_threshold, "iou", 0.0,
                                             fmt, w, backend)


def multi_image_nms_probiou(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, max_output: int,
                            score_threshold: float | None, fast: bool, eps: float, w: str,
                            backend: str | None) -> tuple[Tensor, Tensor]:
    if backend is None and traced(boxes, scores, idxs):
        return torch.ops.detkernels.multi_image_nms_probiou(boxes, scores, idxs, thr, max_output,
                                                            score_threshold, fast, eps)
    return _dispatch.multi_image_nms_rotated(boxes, scores, idxs, thr, max_output, score_threshold,
                                             "probiou_fast" if fast else "probiou", eps, "xywhr", w, backend)
