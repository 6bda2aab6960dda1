"""A torch implementation of Matrix NMS, the peer of the ``matrix_nms`` scenarios (issue 13):
mmdetection's ``mask_matrix_nms`` (itself SOLOv2's code) written for boxes, as users run it --
dense N x N matrices (IoU, label mask, decays), ``torch.exp``, column min/max. It holds several
N x N float matrices, so the harness runs it only up to MATRIX_NMS_PEER_MAX_N boxes
(open-mmlab/mmdetection#6908: hundreds of GiB at large N). detkernels' reference/matrix_nms.py
lists where its semantics differ (NaN propagation, torch.exp, unstable sort)."""
from __future__ import annotations

from typing import Any

__all__ = ["MATRIX_NMS_PEER_MAX_N", "torch_matrix_nms"]

MATRIX_NMS_PEER_MAX_N = 10000  # ~6 N x N float32 matrices: 2.4 GB at 10 000


def torch_matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str = "gaussian", sigma: float = 2.0,
                     filter_thr: float = -1.0, max_num: int = -1) -> tuple[Any, Any]:
    """(kept indices, decayed scores) by decayed score, as mmdetection's mask_matrix_nms with box
    IoUs (``filter_thr > 0`` keeps scores >= filter_thr; ``max_num > 0`` truncates)."""
    import torch

    n = labels.numel()
    if n == 0:
        return labels.new_empty((0,), dtype=torch.int64), scores.new_empty((0,))
    scores, order = torch.sort(scores, descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    del lt, rb, wh
    iou_matrix = (inter / (area[:, None] + area[None, :] - inter)).triu(diagonal=1)
    del inter
    label_matrix = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    decay_iou = iou_matrix * label_matrix
    del iou_matrix, label_matrix
    compensate_iou, _ = decay_iou.max(0)
    compensate_iou = compensate_iou.expand(n, n).transpose(1, 0)
    if kernel == "gaussian":
        decay_matrix = torch.exp(-1 * sigma * (decay_iou ** 2))
        compensate_matrix = torch.exp(-1 * sigma * (compensate_iou ** 2))
        decay_coefficient, _ = (decay_matrix / compensate_matrix).min(0)
    elif kernel == "linear":
        decay_coefficient, _ = ((1 - decay_iou) / (1 - compensate_iou)).min(0)
    else:
        raise ValueError(f"kernel must be 'gaussian' or 'linear', got {kernel!r}")
    scores = scores * decay_coefficient
    keep_inds = order
    if filter_thr > 0:
        keep = scores >= filter_thr
        keep_inds, scores = keep_inds[keep], scores[keep]
    scores, sort_inds = torch.sort(scores, descending=True, stable=True)
    keep_inds = keep_inds[sort_inds]
    if max_num > 0:
        keep_inds, scores = keep_inds[:max_num], scores[:max_num]
    return keep_inds, scores
