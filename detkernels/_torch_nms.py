"""torch custom ops for the fixed-size NMS (detkernels/nms_ops.py): ``detkernels::nms_padded`` and
``detkernels::multi_image_nms``. Their outputs' shapes depend only on the inputs' shapes and
``max_output``, so the fake kernels need no dynamic sizes: torch.compile(fullgraph=True) and
torch.export trace through them. Eager calls skip the dispatcher (see detkernels/_torch.py).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import nms_ops as _nms
from ._torch import _check_tensors, _traced


@torch.library.custom_op("detkernels::nms_padded", mutates_args=())
def nms_padded_op(boxes: Tensor, scores: Tensor, iou_threshold: float,
                  max_output: int) -> tuple[Tensor, Tensor]:
    idx, count = _nms.padded_impl(boxes, scores, iou_threshold, max_output)
    return idx.clone(), count.clone()


@nms_padded_op.register_fake
def _(boxes, scores, iou_threshold, max_output):
    if boxes.ndim != 2 or scores.ndim != 1:
        raise RuntimeError(f"boxes must be [N, 4] and scores [N], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    return (boxes.new_empty((max_output,), dtype=torch.int64),
            boxes.new_empty((), dtype=torch.int64))


@torch.library.custom_op("detkernels::multi_image_nms", mutates_args=())
def multi_image_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], iou_threshold: float,
                       max_output: int, score_threshold: Optional[float]) -> tuple[Tensor, Tensor, Tensor]:
    idx, cls, counts = _nms.multi_impl(boxes, scores, idxs, iou_threshold, max_output, score_threshold)
    if cls is None:  # [B, N] scores: no class column; keep the schema's fixed arity
        cls = torch.full_like(idx, -1)
    return idx.clone(), cls.clone(), counts.clone()


@multi_image_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold, max_output, score_threshold):
    _nms.multi_check(boxes, scores, idxs, max_output, score_threshold)
    B = boxes.shape[0]
    return (boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B, max_output), dtype=torch.int64),
            boxes.new_empty((B,), dtype=torch.int64))


def nms_padded(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int,
               backend: str | None) -> tuple[Tensor, Tensor]:
    _check_tensors(scores=scores)
    if backend is None and _traced(boxes, scores):
        return torch.ops.detkernels.nms_padded(boxes, scores, float(iou_threshold), int(max_output))
    return _nms.padded_impl(boxes, scores, iou_threshold, max_output, backend)


def multi_image_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float,
                    max_output: int, score_threshold: float | None,
                    backend: str | None) -> tuple[Tensor, Tensor | None, Tensor]:
    _check_tensors(scores=scores)
    if idxs is not None:
        _check_tensors(idxs=idxs)
    if backend is None and _traced(boxes, scores, idxs):
        sthr = None if score_threshold is None else float(score_threshold)
        idx, cls, counts = torch.ops.detkernels.multi_image_nms(
            boxes, scores, idxs, float(iou_threshold), int(max_output), sthr)
        return idx, (cls if scores.ndim == 3 else None), counts
    return _nms.multi_impl(boxes, scores, idxs, iou_threshold, max_output, score_threshold, backend)
