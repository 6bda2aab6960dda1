"""The RoI nn.Modules with torchvision.ops' constructors, reprs and behaviour: ``RoIAlign``,
``RoIPool``, ``PSRoIAlign``, ``PSRoIPool``, ``MultiScaleRoIAlign`` (torchvision's level mapping
and scale inference); ``RoIAlignRotated`` with mmcv's constructor and repr. Need torch; loaded on first access of ``detkernels.RoIAlign`` & co."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from .._checks import rois_from_boxes
from .._torch.common import traced
from .roi import ps_roi_align, ps_roi_pool, roi_align, roi_align_rotated, roi_pool

__all__ = ["RoIAlign", "RoIPool", "PSRoIAlign", "PSRoIPool", "MultiScaleRoIAlign", "RoIAlignRotated"]


class RoIAlign(nn.Module):
    """``torchvision.ops.RoIAlign`` on detkernels' roi_align."""

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})")


class RoIPool(nn.Module):
    """``torchvision.ops.RoIPool`` on detkernels' roi_pool."""

    def __init__(self, output_size: Any, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


class PSRoIAlign(nn.Module):
    """``torchvision.ops.PSRoIAlign`` on detkernels' ps_roi_align."""

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio})")


class PSRoIPool(nn.Module):
    """``torchvision.ops.PSRoIPool`` on detkernels' ps_roi_pool."""

    def __init__(self, output_size: Any, spatial_scale: float):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"


def _box_area(b: Tensor) -> Tensor:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


class _LevelMapper:
    """FPN level of each box (FPN paper eq. 1), torchvision's LevelMapper arithmetic:
    ``floor(lvl0 + log2(sqrt(area) / s0) + eps)`` clamped to [k_min, k_max], minus k_min."""

    def __init__(self, k_min: int, k_max: int, canonical_scale: int = 224, canonical_level: int = 4,
                 eps: float = 1e-6):
        self.k_min, self.k_max = k_min, k_max
        self.s0, self.lvl0, self.eps = canonical_scale, canonical_level, eps

    def __call__(self, boxlists: list[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([_box_area(b) for b in boxlists]))
        lvl = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        lvl = torch.clamp(lvl, min=self.k_min, max=self.k_max)
        return (lvl.to(torch.int64) - self.k_min).to(torch.int64)


def _infer_scale(feature: Tensor, original_size: list[int]) -> float:
    # Scales are powers of two, 2 ** round(log2(feature / image)); the height decides (torchvision).
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def _setup_scales(features: list[Tensor], image_shapes: list[tuple[int, int]], canonical_scale: int,
                  canonical_level: int) -> tuple[list[float], _LevelMapper]:
    if len(image_shapes) == 0:
        raise ValueError("images list should not be empty")
    h, w = 0, 0
    for s in image_shapes:
        h, w = max(h, s[0]), max(w, s[1])
    scales = [_infer_scale(f, [h, w]) for f in features]
    lvl_min = -torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item()
    lvl_max = -torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item()
    return scales, _LevelMapper(int(lvl_min), int(lvl_max), canonical_scale, canonical_level)


def _rois_scripted(boxes: list[Tensor]) -> Tensor:
    """rois_from_boxes for TorchScript (which cannot compile _checks)."""
    ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids, 0), torch.cat(boxes, 0)], 1)


@torch.jit.unused
def _rois_eager(feat: Tensor, boxes: list[Tensor]) -> tuple[Tensor, bool]:
    """Validated rois, and whether to pool masked (GPU, tracing)."""
    rois = rois_from_boxes(boxes)
    return rois, feat.device.type != "cpu" or traced(feat, rois)


def _pool_levels(feats: list[Tensor], scales: list[float], rois: Tensor, levels: Tensor,
                 output_size: list[int], sampling_ratio: int, masked: bool) -> Tensor:
    """RoIAlign of each RoI on its level. ``masked=False`` (torchvision's way): gather each level's
    RoIs (``torch.where`` -> a host sync and data-dependent shapes). ``masked=True`` (GPU, tracing):
    every level pools all RoIs, those of other levels with batch index -1, which reads nothing (no
    output, no gradient), and ``torch.where`` picks each RoI's level -- no host sync, static shapes,
    the same bytes, forward and backward."""
    shape = [rois.shape[0], feats[0].shape[1], output_size[0], output_size[1]]
    result = torch.zeros(shape, dtype=feats[0].dtype, device=feats[0].device)
    for level, feat in enumerate(feats):
        scale = scales[level]
        on = levels == level
        if masked:
            r = torch.cat([torch.where(on, rois[:, 0], -1.0)[:, None], rois[:, 1:]], 1)
            out = roi_align(feat, r, output_size, scale, sampling_ratio)
            result = torch.where(on[:, None, None, None], out.to(result.dtype), result)
        else:
            idx = torch.where(on)[0]
            out = roi_align(feat, rois[idx], output_size, scale, sampling_ratio)
            result[idx] = out.to(result.dtype)
    return result


class MultiScaleRoIAlign(nn.Module):
    """``torchvision.ops.MultiScaleRoIAlign``: RoIAlign over FPN levels, each box pooled from the
    level chosen by its size. Scales are inferred on the first forward (from the largest image
    size) and cached; ``aligned=False`` as in torchvision. Scriptable (``torch.jit.script``).

    Args:
        featmap_names: the keys of the feature dict to pool from (dict order is used).
        output_size: ``(PH, PW)`` or an int.
        sampling_ratio: as in roi_align.
        canonical_scale, canonical_level: the LevelMapper's ``s0`` and ``lvl0``.
    """

    # Evaluated at runtime by TorchScript, which reads typing.Optional.
    __annotations__ = {"scales": Optional[list[float]], "map_levels": Optional[_LevelMapper]}  # noqa: UP045

    def __init__(self, featmap_names: list[str], output_size: Any, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales = None
        self.map_levels = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats: list[Tensor] = []
        for k, v in x.items():
            if k in self.featmap_names:
                feats.append(v)
        scales, mapper = self.scales, self.map_levels
        if scales is None or mapper is None:
            scales, mapper = _setup_scales(feats, image_shapes, self.canonical_scale, self.canonical_level)
            self.scales, self.map_levels = scales, mapper
        if torch.jit.is_scripting():
            rois, masked = _rois_scripted(boxes), feats[0].device.type != "cpu"
        else:
            rois, masked = _rois_eager(feats[0], boxes)
        output_size = [self.output_size[0], self.output_size[1]]
        if len(feats) == 1:
            return roi_align(feats[0], rois, output_size, scales[0], self.sampling_ratio)
        levels = mapper(boxes)
        return _pool_levels(feats, scales, rois, levels, output_size, self.sampling_ratio, masked)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")


class RoIAlignRotated(nn.Module):
    """mmcv's ``RoIAlignRotated`` (detectron2's ``ROIAlignRotated`` is
    ``RoIAlignRotated(output_size, spatial_scale, sampling_ratio)``: aligned, counter-clockwise) on
    detkernels' roi_align_rotated. rois ``[K, 6]`` = ``(batch_index, cx, cy, w, h, angle)``, the
    angle in degrees (mmcv's are radians: multiply by 180 / pi)."""

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
                 clockwise: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = aligned
        self.clockwise = clockwise

    def forward(self, input: Tensor, rois: Tensor) -> Tensor:
        return roi_align_rotated(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                                 self.aligned, self.clockwise)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, clockwise={self.clockwise})")
