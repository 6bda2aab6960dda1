"""The IoU family and box_area on torch tensors: custom ops (fake kernel, autograd through the
reference formulas on torch ops) and the eager entry of detkernels/api/boxes.py.

Eager calls go straight to the backend: torch.library dispatch costs 20-35 us per call
(docs/BUILD-NOTES.md), more than a small IoU matrix. Under torch.compile/export, jit tracing, or
with tensors that have no storage (fake/meta), calls go through the custom op instead.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import _checks, _dispatch
from ..reference import box_iou as _ref_iou
from .common import traced
from .onnx import exporting

KIND_OP = {"iou": "box_iou", "giou": "generalized_box_iou", "diou": "distance_box_iou",
           "ciou": "complete_box_iou"}


class _TorchOps:
    """torch counterpart of reference.box_iou._Ops. maximum/minimum/clamp keep torchvision's
    gradients (ties split between operands); values equal the reference's (signed zeros aside)."""

    def __init__(self, like: Tensor) -> None:
        self.dtype, self.device = like.dtype, like.device
        self.is_f32 = like.dtype == torch.float32

    def scalar(self, v: float) -> Tensor:
        # A 0-d tensor of the working dtype: rounds v like a wrapped Python scalar, and keeps
        # torch.where(cond, c1, c2) in the working dtype. torch.full: no host->device copy.
        return torch.full((), v, dtype=self.dtype, device=self.device)

    @staticmethod
    def where(c, a, b):
        return torch.where(c, a, b)

    @staticmethod
    def nan_max(a, b):
        return torch.maximum(a, b)

    @staticmethod
    def nan_min(a, b):
        return torch.minimum(a, b)

    @staticmethod
    def clamp_min0(x):
        return x.clamp(min=0)

    @staticmethod
    def stop_gradient(x):
        return x.detach()


def _formula(kind: str, b1: Tensor, b2: Tensor, fmt: str, eps: float, checked: tuple) -> Tensor:
    """The differentiable path: the reference formulas on torch ops."""
    batch, N, M, w = checked
    if w not in ("float32", "float64"):  # integers cannot require grad; keep the exact path
        return _dispatch.iou(kind, b1, b2, fmt, eps, checked, None)
    dt = getattr(torch, w)
    b1, b2 = b1.to(dt), b2.to(dt)
    a = tuple(b1[..., :, None, k] for k in range(4))
    b = tuple(b2[..., None, :, k] for k in range(4))
    return _ref_iou.pairwise(_TorchOps(b1), a, b, kind, fmt, eps).expand(batch + (N, M))


def iou(kind: str, b1: Tensor, b2: Tensor, fmt: str, eps: float, checked: tuple,
        backend: str | None) -> Tensor:
    """Eager entry (arguments validated by detkernels/api/boxes.py)."""
    # Rotated boxes: no differentiable formula (torchvision's op has no autograd either) and no
    # ONNX form; eager calls go to the backend, traced ones through the custom op.
    if fmt in _checks.ROTATED:
        if backend is None and traced(b1, b2):
            return torch.ops.detkernels.box_iou(b1, b2, fmt)
        return _dispatch.iou(kind, b1, b2, fmt, eps, checked, backend)
    # ONNX export: the formulas on torch ops export as elementwise ONNX operators.
    if torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad) or backend is None and exporting():
        return _formula(kind, b1, b2, fmt, eps, checked)
    if backend is None and traced(b1, b2):
        op = getattr(torch.ops.detkernels, KIND_OP[kind])
        if kind == "iou":
            return op(b1, b2, fmt)
        return op(b1, b2) if kind == "giou" else op(b1, b2, eps)
    return _dispatch.iou(kind, b1, b2, fmt, eps, checked, backend)


def box_area(boxes: Tensor, fmt: str) -> Tensor:
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    elif boxes.dtype in (torch.int8, torch.int16, torch.uint8, torch.bool):
        boxes = boxes.int()
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


# ---- custom ops --------------------------------------------------------------------------------------

def _kernel(kind: str, b1: Tensor, b2: Tensor, fmt: str = "xyxy", eps: float = 1e-7) -> Tensor:
    eps = _checks.threshold_value(eps, "eps")
    return _dispatch.iou(kind, b1, b2, fmt, eps, _checks.iou_check(b1, b2, kind, fmt), None).clone()


@torch.library.custom_op("detkernels::box_iou", mutates_args=())
def box_iou_op(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    return _kernel("iou", boxes1, boxes2, fmt)


@torch.library.custom_op("detkernels::generalized_box_iou", mutates_args=())
def generalized_box_iou_op(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return _kernel("giou", boxes1, boxes2)


@torch.library.custom_op("detkernels::distance_box_iou", mutates_args=())
def distance_box_iou_op(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return _kernel("diou", boxes1, boxes2, eps=eps)


@torch.library.custom_op("detkernels::complete_box_iou", mutates_args=())
def complete_box_iou_op(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return _kernel("ciou", boxes1, boxes2, eps=eps)


def _register_extras(op: Any, kind: str) -> None:
    """Fake kernel and autograd for one IoU custom op (the third input, if any, is fmt or eps)."""

    def fmt_eps(extra: tuple) -> tuple[str, float]:
        if kind == "iou":
            return (extra[0] if extra else "xyxy"), 1e-7
        return "xyxy", (extra[0] if extra else 1e-7)

    @op.register_fake
    def _(boxes1, boxes2, *extra):
        fmt = fmt_eps(extra)[0]
        batch, N, M, w = _checks.iou_check(boxes1, boxes2, kind, fmt)
        wide = w == "float64" and fmt not in _checks.ROTATED  # rotated: float32 out, as torchvision
        return boxes1.new_empty(batch + (N, M), dtype=torch.float64 if wide else torch.float32)

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.extra = tuple(inputs[2:])

    def backward(ctx, grad):
        # Vector-Jacobian product of the same formulas on torch ops (detkernels/reference).
        b1, b2 = ctx.saved_tensors
        fmt, eps = fmt_eps(ctx.extra)
        if fmt in _checks.ROTATED:
            raise RuntimeError(f"box_iou with fmt={fmt!r} (rotated boxes) is not differentiable "
                               "(neither is torchvision's)")
        need = ctx.needs_input_grad[:2]
        with torch.enable_grad():
            x1 = b1.detach().requires_grad_(need[0])
            x2 = b2.detach().requires_grad_(need[1])
            out = _formula(kind, x1, x2, fmt, eps, _checks.iou_check(x1, x2, kind, fmt))
            wrt = [x for x, n in zip((x1, x2), need) if n]
            gs = iter(torch.autograd.grad(out, wrt, grad) if wrt else ())
        grads = tuple(next(gs) if n else None for n in need)
        return grads + (None,) * len(ctx.extra)

    op.register_autograd(backward, setup_context=setup)


for _op, _kind in ((box_iou_op, "iou"), (generalized_box_iou_op, "giou"),
                   (distance_box_iou_op, "diou"), (complete_box_iou_op, "ciou")):
    _register_extras(_op, _kind)
