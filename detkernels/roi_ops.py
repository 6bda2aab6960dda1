"""Public RoI ops: ``roi_align``, ``roi_pool``, ``ps_roi_align``, ``ps_roi_pool`` with
torchvision.ops' names, signatures, defaults and error types, and (with torch) the modules
``RoIAlign``, ``RoIPool``, ``PSRoIAlign``, ``PSRoIPool``, ``MultiScaleRoIAlign``.

The functions take NumPy arrays or torch tensors and return the same kind. With torch tensors they
go through the ``torch.ops.detkernels.*`` custom ops (detkernels/_torch_roi.py), which carry the
autograd formulas, fake kernels for torch.compile/export, and pass ``torch.library.opcheck``.

Numerics: the NumPy reference (detkernels/reference/roi_align.py, roi_pool.py) is the
specification; every backend returns its bytes. float32/float64 equal torchvision's CPU kernels
except where torchvision crashes or reads out of bounds (see the reference docstrings and
SPEC.md §1.3-1.5); float16/bfloat16 are computed in float32 and rounded once.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

from . import _arrays as A
from . import _registry
from .ops import _public
from .reference.roi_align import check_sampling_ratio
from .reference.roi_pool import check_plane

__all__ = ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"]

_HALF = ("float16", "bfloat16")
_FLOATS = ("float16", "bfloat16", "float32", "float64")


def pair(output_size: Any) -> tuple[int, int]:
    """``output_size`` as (PH, PW): an int, or a pair of ints (torchvision's ``_pair``)."""
    if isinstance(output_size, (list, tuple)):
        if len(output_size) != 2:
            raise ValueError(f"output_size must be an int or a pair of ints, got {output_size!r}")
        ph, pw = output_size
    else:
        ph = pw = output_size
    return ph, pw


def _working(di: str, dr: str) -> str:
    if di not in _FLOATS:
        raise RuntimeError(f"input must be a floating point tensor (float16/bfloat16/float32/float64), got {di}")
    # rois may stay float32 for half features (SPEC.md §1.5); otherwise no implicit cast.
    if dr != di and not (di in _HALF and dr == "float32"):
        raise RuntimeError(f"input should have the same type as rois: input is {di}, rois are {dr}")
    return "float64" if di == "float64" else "float32"


def check_args(input: Any, rois: Any, ph: Any, pw: Any, ps: bool) -> str:
    """Validate the converted call; return the working dtype name.

    Errors as torchvision raises them: AssertionError for the RoI box shape, RuntimeError for
    dtypes and channel counts; ValueError for other shapes and sizes.
    """
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
    return w


def _check_grad(grad: Any, rois: Any, ph: int, pw: int, c: int, ps: bool) -> None:
    """The backward ops are public (torch.ops.detkernels._*_backward): shapes must agree."""
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise AssertionError(f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(rois.shape)}")
    if ph <= 0 or pw <= 0 or (ps and c % (ph * pw) != 0):
        raise ValueError(f"bad pooled size ({ph}, {pw}) for {c} channels")
    want = (rois.shape[0], c // (ph * pw) if ps else c, ph, pw)
    if tuple(grad.shape) != tuple(want):
        raise ValueError(f"grad must have shape {want}, got {tuple(grad.shape)}")


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


def _widen(x: Any, w: str) -> Any:
    return A.astype(x, w)


def _narrow(x: Any, dtype: str) -> Any:
    """One rounding of the float32 result to the caller's half dtype (round to nearest even)."""
    if dtype in _HALF and A.kind(x) == "numpy":
        with np.errstate(over="ignore"):
            return x.astype(dtype)
    return A.astype(x, dtype)


def _prep(input: Any, rois: Any, w: str, backend: str | None, op: str) -> tuple:
    dev = A.same_placement(input=input, rois=rois)
    _, fn = _registry.select(op, dev, w, backend)
    return fn, _widen(input, w), A.ascontig(_widen(rois, w))


def roi_align_impl(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                   aligned: bool, ps: bool, backend: str | None = None) -> Any:
    """RoIAlign / PSRoIAlign forward on arrays of one kind (no autograd): [K, Co, PH, PW]."""
    w = check_args(input, rois, ph, pw, ps)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    fn, x, r = _prep(input, rois, w, backend, "roi_align")
    out = fn(x, r, float(spatial_scale), int(ph), int(pw), sampling_ratio, bool(aligned), ps)
    return _narrow(out, A.dtype_name(input))


def roi_align_backward_impl(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                            h: int, w_: int, sampling_ratio: int, aligned: bool, ps: bool,
                            backend: str | None = None) -> Any:
    """Gradient w.r.t. the features: [N, C, H, W] in grad's dtype, contiguous."""
    dg = A.dtype_name(grad)
    w = _working(dg, A.dtype_name(rois))
    _check_grad(grad, rois, ph, pw, c, ps)
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    dev = A.same_placement(grad=grad, rois=rois)
    _, fn = _registry.select("roi_align_backward", dev, w, backend)
    gi = fn(_widen(grad, w), A.ascontig(_widen(rois, w)), float(spatial_scale), int(ph), int(pw),
            int(n), int(c), int(h), int(w_), sampling_ratio, bool(aligned), ps)
    return _narrow(gi, dg)


def roi_pool_impl(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool,
                  backend: str | None = None) -> tuple:
    """RoIPool / PSRoIPool forward on arrays of one kind: (out, argmax or channel map, int32)."""
    w = check_args(input, rois, ph, pw, ps)
    if not ps:
        check_plane(int(input.shape[2]), int(input.shape[3]))
    fn, x, r = _prep(input, rois, w, backend, "roi_pool")
    out, idx = fn(x, r, float(spatial_scale), int(ph), int(pw), ps)
    return _narrow(out, A.dtype_name(input)), idx


def roi_pool_backward_impl(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int,
                           n: int, c: int, h: int, w_: int, ps: bool, backend: str | None = None) -> Any:
    dg = A.dtype_name(grad)
    w = _working(dg, A.dtype_name(rois))
    _check_grad(grad, rois, ph, pw, c, ps)
    if not ps:
        check_plane(int(h), int(w_))
    dev = A.same_placement(grad=grad, rois=rois, idx=idx)
    if A.dtype_name(idx) != "int32" or tuple(idx.shape) != tuple(grad.shape):
        raise ValueError(f"argmax/channel_mapping must be int32 of shape {tuple(grad.shape)}, got "
                         f"{A.dtype_name(idx)} {tuple(idx.shape)}")
    _, fn = _registry.select("roi_pool_backward", dev, w, backend)
    gi = fn(_widen(grad, w), A.ascontig(_widen(rois, w)), A.ascontig(idx), float(spatial_scale),
            int(ph), int(pw), int(n), int(c), int(h), int(w_), ps)
    return _narrow(gi, dg)


def _torch():
    from . import _torch_roi

    return _torch_roi


@_public
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
        or a batch index outside ``[0, N)`` never read out of bounds (a bad batch index gives 0).
    """
    ph, pw = pair(output_size)
    rois = rois_from_boxes(boxes)
    if A.is_torch(input):
        return _torch().roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, backend)
    return roi_align_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, False, backend)


@_public
def ps_roi_align(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0,
                 sampling_ratio: int = -1, *, backend: str | None = None) -> Any:
    """Position-sensitive RoIAlign (R-FCN), as ``torchvision.ops.ps_roi_align``:
    ``[N, C, H, W]`` -> ``[K, C/(PH*PW), PH, PW]``; output ``[k, c, ph, pw]`` samples input channel
    ``(c*PH + ph)*PW + pw`` (always pixel-aligned). A RoI with no samples gives 0 (torchvision: NaN)."""
    ph, pw = pair(output_size)
    rois = rois_from_boxes(boxes)
    if A.is_torch(input):
        return _torch().ps_roi_align(input, rois, spatial_scale, ph, pw, sampling_ratio, backend)
    return roi_align_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, True, True, backend)


@_public
def roi_pool(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0, *,
             backend: str | None = None) -> Any:
    """RoIPool (Fast R-CNN), as ``torchvision.ops.roi_pool``: max over integer bins of the rounded
    box; empty bins give 0. ``[K, C, PH, PW]``; differentiable w.r.t. ``input`` for torch tensors."""
    ph, pw = pair(output_size)
    rois = rois_from_boxes(boxes)
    if A.is_torch(input):
        return _torch().roi_pool(input, rois, spatial_scale, ph, pw, backend)
    return roi_pool_impl(input, rois, spatial_scale, ph, pw, False, backend)[0]


@_public
def ps_roi_pool(input: Any, boxes: Any, output_size: Any, spatial_scale: float = 1.0, *,
                backend: str | None = None) -> Any:
    """Position-sensitive RoIPool (average), as ``torchvision.ops.ps_roi_pool``:
    ``[K, C/(PH*PW), PH, PW]``. Its gradient covers exactly the pixels the forward averaged
    (torchvision's does not at the bottom/right border)."""
    ph, pw = pair(output_size)
    rois = rois_from_boxes(boxes)
    if A.is_torch(input):
        return _torch().ps_roi_pool(input, rois, spatial_scale, ph, pw, backend)
    return roi_pool_impl(input, rois, spatial_scale, ph, pw, True, backend)[0]


def __getattr__(name: str) -> Any:
    # The nn.Module classes need torch: built on first access, never at `import detkernels`.
    if name in ("RoIAlign", "RoIPool", "PSRoIAlign", "PSRoIPool", "MultiScaleRoIAlign"):
        return getattr(_torch(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

