"""What ``torch.jit.script(f)`` compiles for each public function ``f`` that patch_torchvision()
installs: a twin with torchvision's signature (no ``backend=``: TorchScript compiles no
keyword-only arguments) calling the same ``torch.ops.detkernels`` builtin that a call to ``f``
inside scripted code compiles to (detkernels/_torch/script.py registers both). Eager calls of the
public functions keep ``backend=``.

No ``from __future__ import annotations`` here: TorchScript reads these annotations.
"""

import torch
from torch import Tensor
from torch.jit.annotations import BroadcastingList2


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return torch.ops.detkernels.nms(boxes, scores, iou_threshold)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return torch.ops.detkernels.batched_nms(boxes, scores, idxs, iou_threshold)


def torchvision_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return torch.ops.detkernels.torchvision_batched_nms(boxes, scores, idxs, iou_threshold)


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    return torch.ops.detkernels.box_area_script(boxes, fmt)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    return torch.ops.detkernels.box_iou(boxes1, boxes2, fmt)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return torch.ops.detkernels.generalized_box_iou(boxes1, boxes2)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return torch.ops.detkernels.distance_box_iou(boxes1, boxes2, eps)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return torch.ops.detkernels.complete_box_iou(boxes1, boxes2, eps)


def roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: BroadcastingList2[int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    if isinstance(boxes, Tensor):
        return torch.ops.detkernels.roi_align_script(input, boxes, output_size, spatial_scale, sampling_ratio,
                                                     aligned)
    return torch.ops.detkernels.roi_align_script(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


def ps_roi_align(input: Tensor, boxes: Tensor | list[Tensor], output_size: BroadcastingList2[int],
                 spatial_scale: float = 1.0, sampling_ratio: int = -1) -> Tensor:
    if isinstance(boxes, Tensor):
        return torch.ops.detkernels.ps_roi_align_script(input, boxes, output_size, spatial_scale, sampling_ratio)
    return torch.ops.detkernels.ps_roi_align_script(input, boxes, output_size, spatial_scale, sampling_ratio)


def roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size: BroadcastingList2[int],
             spatial_scale: float = 1.0) -> Tensor:
    if isinstance(boxes, Tensor):
        return torch.ops.detkernels.roi_pool_script(input, boxes, output_size, spatial_scale)
    return torch.ops.detkernels.roi_pool_script(input, boxes, output_size, spatial_scale)


def ps_roi_pool(input: Tensor, boxes: Tensor | list[Tensor], output_size: BroadcastingList2[int],
                spatial_scale: float = 1.0) -> Tensor:
    if isinstance(boxes, Tensor):
        return torch.ops.detkernels.ps_roi_pool_script(input, boxes, output_size, spatial_scale)
    return torch.ops.detkernels.ps_roi_pool_script(input, boxes, output_size, spatial_scale)


# The crowded-scene and rotated NMS functions: the public signature with its keyword-only part
# as ordinary parameters (same names and defaults).
def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             method: str = "linear", score_threshold: float = 0.001, max_output: int | None = None,
             idxs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return torch.ops.detkernels.soft_nms_script(boxes, scores, iou_threshold, sigma=sigma, method=method,
                                                score_threshold=score_threshold, max_output=max_output,
                                                idxs=idxs)


def multi_image_soft_nms(boxes: Tensor, scores: Tensor, max_output: int, iou_threshold: float = 0.3,
                         sigma: float = 0.5, method: str = "linear", score_threshold: float = 0.001,
                         idxs: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.detkernels.multi_image_soft_nms_script(boxes, scores, max_output, iou_threshold,
                                                            sigma=sigma, method=method,
                                                            score_threshold=score_threshold, idxs=idxs)


def diou_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, beta: float = 1.0,
             idxs: Tensor | None = None) -> Tensor:
    return torch.ops.detkernels.diou_nms_script(boxes, scores, iou_threshold, beta=beta, idxs=idxs)


def matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, kernel: str = "gaussian", sigma: float = 2.0,
               score_threshold: float | None = None, max_output: int | None = None,
               pre_top_k: int | None = None) -> tuple[Tensor, Tensor]:
    return torch.ops.detkernels.matrix_nms_script(boxes, scores, labels, kernel=kernel, sigma=sigma,
                                                  score_threshold=score_threshold, max_output=max_output,
                                                  pre_top_k=pre_top_k)


def multi_image_diou_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int,
                         beta: float = 1.0, idxs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return torch.ops.detkernels.multi_image_diou_nms_script(boxes, scores, iou_threshold, max_output,
                                                            beta=beta, idxs=idxs)


def multi_image_matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, max_output: int,
                           kernel: str = "gaussian", sigma: float = 2.0,
                           score_threshold: float | None = None,
                           pre_top_k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.detkernels.multi_image_matrix_nms_script(boxes, scores, labels, max_output,
                                                              kernel=kernel, sigma=sigma,
                                                              score_threshold=score_threshold,
                                                              pre_top_k=pre_top_k)


def nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float, fmt: str = "cxcywhr") -> Tensor:
    return torch.ops.detkernels.nms_rotated_script(boxes, scores, iou_threshold, fmt)


def batched_nms_rotated(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                        fmt: str = "cxcywhr") -> Tensor:
    return torch.ops.detkernels.batched_nms_rotated_script(boxes, scores, idxs, iou_threshold, fmt)


def probiou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return torch.ops.detkernels.probiou(boxes1, boxes2, eps)


def nms_probiou(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None,
                fast: bool = False, eps: float = 1e-7) -> Tensor:
    return torch.ops.detkernels.nms_probiou_script(boxes, scores, iou_threshold, idxs, fast=fast, eps=eps)


def multi_image_nms_rotated(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int,
                            fmt: str = "cxcywhr", idxs: Tensor | None = None,
                            score_threshold: float | None = None) -> tuple[Tensor, Tensor]:
    return torch.ops.detkernels.multi_image_nms_rotated_script(boxes, scores, iou_threshold, max_output, fmt,
                                                               idxs=idxs, score_threshold=score_threshold)


def multi_image_nms_probiou(boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int,
                            idxs: Tensor | None = None, fast: bool = False, eps: float = 1e-7,
                            score_threshold: float | None = None) -> tuple[Tensor, Tensor]:
    return torch.ops.detkernels.multi_image_nms_probiou_script(boxes, scores, iou_threshold, max_output,
                                                               idxs=idxs, fast=fast, eps=eps,
                                                               score_threshold=score_threshold)


def roi_align_rotated(input: Tensor, rois: Tensor, output_size: BroadcastingList2[int], spatial_scale: float = 1.0,
                      sampling_ratio: int = 0, aligned: bool = True, clockwise: bool = False) -> Tensor:
    return torch.ops.detkernels.roi_align_rotated_script(input, rois, output_size, spatial_scale, sampling_ratio,
                                                         aligned, clockwise)
