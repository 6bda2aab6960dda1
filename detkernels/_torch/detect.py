"""detect on torch tensors: the custom op ``detkernels::detect`` (fixed-size outputs, so its fake
kernel has static shapes: torch.compile(fullgraph=True), torch.export) and the eager entry of
detkernels/api/detect.py (arguments validated there)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import _checks, _dispatch
from . import onnx as _onnx
from .common import traced


@torch.library.custom_op("detkernels::detect", mutates_args=())
def detect_op(boxes: Tensor, scores: Tensor, objectness: Optional[Tensor], idxs: Optional[Tensor],
              iou_threshold: float, max_det: int, score_threshold: Optional[float],
              pre_nms_top_k: Optional[int], fmt: str, multi_label: bool,
              class_agnostic: bool, nms: str = "iou", beta: Optional[float] = None,
              decay: Optional[str] = None, sigma: Optional[float] = None,
              min_score: Optional[float] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    w, max_det, k, multi_label, class_agnostic = _checks.detect_check(
        boxes, scores, objectness, idxs, max_det, pre_nms_top_k, fmt, multi_label, class_agnostic)
    mode = _checks.detect_nms_check(nms, beta, decay, sigma, min_score)
    out = _dispatch.detect(boxes, scores, objectness, idxs, iou_threshold, max_det, score_threshold,
                           k, fmt, multi_label, class_agnostic, w, None, mode)
    return tuple(x.clone() for x in out)


@detect_op.register_fake
def _(boxes, scores, objectness, idxs, iou_threshold, max_det, score_threshold, pre_nms_top_k,
      fmt, multi_label, class_agnostic, nms="iou", beta=None, decay=None, sigma=None,
      min_score=None):
    w, K, _, _, _ = _checks.detect_check(boxes, scores, objectness, idxs, max_det, pre_nms_top_k,
                                         fmt, multi_label, class_agnostic)
    _checks.detect_nms_check(nms, beta, decay, sigma, min_score)
    if _onnx.exporting():  # the ONNX exporter's strict fallback traces past detect's own check
        _onnx.refuse_detect_nms(nms)
    B, dt = boxes.shape[0], getattr(torch, w)
    return (boxes.new_empty((B, K, 4), dtype=dt), boxes.new_empty((B, K), dtype=dt),
            boxes.new_empty((B, K), dtype=torch.int64), boxes.new_empty((B, K), dtype=torch.int64),
            boxes.new_empty((B,), dtype=torch.int64))


def detect(boxes: Tensor, scores: Tensor, objectness: Tensor | None, idxs: Tensor | None, thr: float,
           max_det: int, score_threshold: float | None, top_k: int | None, fmt: str,
           multi_label: bool, class_agnostic: bool, w: str, backend: str | None,
           nms: _checks.DetectNms = _checks.DetectNms()) -> tuple:
    if backend is None and _onnx.exporting():  # standard ONNX operators (detkernels/_torch/onnx.py)
        return _onnx.detect(boxes, scores, objectness, idxs, thr, max_det, score_threshold, top_k, fmt,
                            multi_label, class_agnostic, w, nms.mode)
    if backend is None and traced(boxes, scores, objectness, idxs):
        if nms.mode != "iou":  # refused while tracing, not at the first run of the graph
            _dispatch.detect_select(str(boxes.device), w, nms, None)
            return torch.ops.detkernels.detect(boxes, scores, objectness, idxs, thr, max_det,
                                               score_threshold, top_k, fmt, multi_label,
                                               class_agnostic, *nms)
        return torch.ops.detkernels.detect(boxes, scores, objectness, idxs, thr, max_det,
                                           score_threshold, top_k, fmt, multi_label, class_agnostic)
    return _dispatch.detect(boxes, scores, objectness, idxs, thr, max_det, score_threshold, top_k,
                            fmt, multi_label, class_agnostic, w, backend, nms)
