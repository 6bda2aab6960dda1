"""The RoI ops ``roi_align``, ``roi_pool``, ``ps_roi_align``, ``ps_roi_pool`` with torchvision.ops'
names, signatures, defaults and error types (their nn.Modules: detkernels/api/roi_modules.py).

With torch tensors they go through detkernels/_torch/roi.py: the eager kernel call with autograd,
or under tracing the ``torch.ops.detkernels.*`` custom ops (fake kernels for torch.compile/export,
``torch.library.opcheck``).

Numerics: the NumPy reference (detkernels/reference/roi_align.py, roi_pool.py) is the
specification; every backend returns its bytes. float32/float64 equal torchvision's CPU kernels
except where torchvision crashes or reads out of bounds (see the reference docstrings and
docs/SPEC.md §1.3-1.5); float16/bfloat16 are computed in float32 and rounded once.
"""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from .. import _checks, _dispatch
from . import public

__all__ = ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "roi_align_rotated"]


def _torch():
    from .._torch import roi as T

    return T


def _align(input: Any, boxes: Any, output_size: Any, spatial_scale: Any, sampling_ratio: Any,
           aligned: bool, ps: bool, backend: str | None) -> Any:
    ph, pw = _checks.pair(output_size)
    rois = _checks.rois_from_boxes(boxes)
    w = _checks.roi_check(input, rois, ph, pw, ps, pool=False)
    ss, sr = float(spatial_scale), _checks.check_sampling_ratio(sampling_ratio)
    if A.is_torch(input):
        name, args = ("ps_roi_align", (ss, ph, pw, sr)) if ps else ("roi_align", (ss, ph, pw, sr, bool(aligned)))
        out = _torch().call(name, input, rois, args, w, backend)
        return out[0] if ps else out
    return _dispatch.roi_align(input, rois, ss, int(ph), int(pw), sr, bool(aligned), ps, w, backend)


def _pool(input: Any, boxes: Any, output_size: Any, spatial_scale: Any, ps: bool,
          backend: str | None) -> Any:
    ph, pw = _checks.pair(output_size)
    rois = _checks.rois_from_boxes(boxes)
    w = _checks.roi_check(input, rois, ph, pw, ps, pool=True)
    ss = float(spatial_scale)
    if A.is_torch(input):
        return _torch().call("ps_roi_pool" if ps else "roi_pool", input, rois, (ss, ph, pw), w, backend)[0]
    return _dispatch.roi_pool(input, rois, ss, int(ph), int(pw), ps, w, backend)[0]


@public
def roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False, *, backend: str | None = None) -> Any:
    """RoIAlign (Mask R-CNN), as ``torchvision.ops.roi_align``.

    Args:
        input: ``[N, C, H, W]`` features (NCHW or channels-last; float16/bfloat16/float32/float64).
        boxes: ``[K, 5]`` rois ``(batch_index, x1, y1, x2, y2)``, or a list of ``[L, 4]`` boxes per
            image. Same dtype as ``input`` (float32 rois are also accepted for half features).
        output_size: ``(PH, PW)`` or an int.
        spatial_scale: factor from box coordinates to feature coordinates (e.g. 1/16).
        sampling_ratio: samples per bin and axis (an int, at most 256); <= 0 means
            ``ceil(roi_size / output_size)`` (capped at 65536).
        aligned: shift the box by -0.5 pixel (pixel-centre alignment).

    Returns:
        ``[K, C, PH, PW]`` in the input's dtype. Differentiable w.r.t. ``input`` for torch tensors
        (deterministic backward). Out-of-range samples contribute 0; RoIs with a NaN/inf coordinate
        or a batch index that names no image (``trunc(b)`` outside ``[0, N)``, NaN, inf) never read
        out of bounds and give 0.
    """
    return _align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, False, backend)


@public
def ps_roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
                 sampling_ratio: int = -1, *, backend: str | None = None) -> Any:
    """Position-sensitive RoIAlign (R-FCN), as ``torchvision.ops.ps_roi_align``:
    ``[N, C, H, W]`` -> ``[K, C/(PH*PW), PH, PW]``; output ``[k, c, ph, pw]`` samples input channel
    ``(c*PH + ph)*PW + pw`` (always pixel-aligned). A RoI with no samples gives 0 (torchvision: NaN)."""
    return _align(input, boxes, output_size, spatial_scale, sampling_ratio, True, True, backend)


@public
def roi_pool(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0, *,
             backend: str | None = None) -> Any:
    """RoIPool (Fast R-CNN), as ``torchvision.ops.roi_pool``: max over integer bins of the rounded
    box; empty bins give 0. ``[K, C, PH, PW]``; differentiable w.r.t. ``input`` for torch tensors.
    Maps of more than 2**31 - 1 pixels are refused (the argmax is int32)."""
    return _pool(input, boxes, output_size, spatial_scale, False, backend)


@public
def ps_roi_pool(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0, *,
                backend: str | None = None) -> Any:
    """Position-sensitive RoIPool (average), as ``torchvision.ops.ps_roi_pool``:
    ``[K, C/(PH*PW), PH, PW]``. Its gradient covers exactly the pixels the forward averaged
    (torchvision's does not at the bottom/right border)."""
    return _pool(input, boxes, output_size, spatial_scale, True, backend)


@public
def roi_align_rotated(input: Any, rois: Any, output_size: Any, spatial_scale: float = 1.0,
                      sampling_ratio: int = 0, aligned: bool = True, clockwise: bool = False, *,
                      backend: str | None = None) -> Any:
    """Rotated RoIAlign, as mmcv's ``roi_align_rotated`` (and detectron2's ``ROIAlignRotated``:
    ``aligned=True, clockwise=False``). Reference: detkernels/reference/roi_align_rotated.py.

    Args:
        input: ``[N, C, H, W]`` features (NCHW or channels-last; float16/bfloat16/float32/float64).
        rois: ``[K, 6]`` = ``(batch_index, cx, cy, w, h, angle)``, the angle in **degrees**,
            counter-clockwise positive (detectron2; mmcv's rois carry radians: pass
            ``angle * 180 / pi``). Same dtype as ``input`` (float32 also for half features).
        output_size: ``(PH, PW)`` or an int.
        spatial_scale: factor from box coordinates to feature coordinates.
        sampling_ratio: samples per bin and axis (an int, at most 256); <= 0 means
            ``ceil(roi_size / output_size)`` (capped at 256).
        aligned: shift the centre by -0.5 pixel; ``False`` is the legacy mode (w, h clamped to >= 1).
        clockwise: the angle is clockwise positive (exactly the negated angle).

    Returns:
        ``[K, C, PH, PW]`` in the input's dtype; differentiable w.r.t. ``input`` for torch tensors
        (deterministic backward). sin/cos are computed by one IEEE formula (not libm), so every
        backend gives the same bits. Out-of-range samples contribute 0; RoIs whose batch index
        names no image give 0.
    """
    ph, pw = _checks.pair(output_size)
    w = _checks.roi_rotated_check(input, rois, ph, pw)
    ss, sr = float(spatial_scale), _checks.check_sampling_ratio(sampling_ratio)
    args = (ss, int(ph), int(pw), sr, bool(aligned), bool(clockwise))
    if A.is_torch(input):
        return _torch().call("roi_align_rotated", input, rois, args, w, backend)
    return _dispatch.roi_align_rotated(input, rois, *args, w, backend)
