"""torch integration: ``torch.ops.detkernels.*`` custom ops (with fake kernels for torch.compile /
torch.export and autograd for the IoU family), the eager fast path, TorchScript builtins, and
``patch_torchvision``. Imported on first use with a torch tensor (or at ``import detkernels`` when
torch is already imported); never imported by a NumPy-only user.

Eager calls go straight to the backend: torch.library dispatch costs 20-35 us per call
(shared/BUILD-NOTES.md), more than a small NMS. Under torch.compile/export, jit tracing, or with
tensors that have no storage (fake/meta), calls go through the custom op instead.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import Tensor

from . import _registry
from . import ops as _ops
from .backends import native as _native
from .reference import box_iou as _ref_iou

_KIND_OP = {"iou": "box_iou", "giou": "generalized_box_iou", "diou": "distance_box_iou",
            "ciou": "complete_box_iou"}


def _traced(*tensors: Tensor) -> bool:
    """True where the custom op must be used: compiling/exporting, jit tracing, fake/meta tensors."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    for t in tensors:
        # FakeTensor, FunctionalTensor and other subclasses have no usable storage.
        if t is not None and (t.device.type not in ("cpu", "cuda")
                              or type(t) is not Tensor and not isinstance(t, torch.nn.Parameter)):
            return True
    return False


# ---- the differentiable path of the IoU family: the reference formulas on torch ops ----------------

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


def _iou_formula(kind: str, b1: Tensor, b2: Tensor, fmt: str, eps: float) -> Tensor:
    batch, N, M, w = _ops.iou_check(b1, b2, kind, fmt)
    if w not in ("float32", "float64"):  # integers cannot require grad; keep the exact path
        return _ops.iou_impl(kind, b1, b2, fmt, eps)
    dt = getattr(torch, w)
    b1, b2 = b1.to(dt), b2.to(dt)
    a = tuple(b1[..., :, None, k] for k in range(4))
    b = tuple(b2[..., None, :, k] for k in range(4))
    return _ref_iou.pairwise(_TorchOps(b1), a, b, kind, fmt, eps).expand(batch + (N, M))


def iou(kind: str, b1: Tensor, b2: Tensor, fmt: str, eps: float, backend: str | None) -> Tensor:
    if not isinstance(b1, Tensor) or not isinstance(b2, Tensor):
        raise TypeError(f"boxes1 and boxes2 must both be tensors, got {type(b1).__name__} and {type(b2).__name__}")
    if torch.is_grad_enabled() and (b1.requires_grad or b2.requires_grad):
        return _iou_formula(kind, b1, b2, fmt, eps)
    if backend is None and _traced(b1, b2):
        op = getattr(torch.ops.detkernels, _KIND_OP[kind])
        if kind == "iou":
            return op(b1, b2, fmt)
        return op(b1, b2) if kind == "giou" else op(b1, b2, eps)
    return _ops.iou_impl(kind, b1, b2, fmt, eps, backend)


def box_area(boxes: Tensor, fmt: str) -> Tensor:
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    elif boxes.dtype in (torch.int8, torch.int16, torch.uint8, torch.bool):
        boxes = boxes.int()
    if fmt == "xyxy":
        return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return boxes[..., 2] * boxes[..., 3]


def _iou_fake(kind: str, b1: Tensor, b2: Tensor, fmt: str = "xyxy") -> Tensor:
    batch, N, M, w = _ops.iou_check(b1, b2, kind, fmt)
    return b1.new_empty(batch + (N, M), dtype=torch.float64 if w == "float64" else torch.float32)


@torch.library.custom_op("detkernels::box_iou", mutates_args=())
def box_iou_op(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    return _ops.iou_impl("iou", boxes1, boxes2, fmt).clone()


@torch.library.custom_op("detkernels::generalized_box_iou", mutates_args=())
def generalized_box_iou_op(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    return _ops.iou_impl("giou", boxes1, boxes2).clone()


@torch.library.custom_op("detkernels::distance_box_iou", mutates_args=())
def distance_box_iou_op(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return _ops.iou_impl("diou", boxes1, boxes2, eps=eps).clone()


@torch.library.custom_op("detkernels::complete_box_iou", mutates_args=())
def complete_box_iou_op(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    return _ops.iou_impl("ciou", boxes1, boxes2, eps=eps).clone()


def _register_iou_extras(op: Any, kind: str) -> None:
    """Fake kernel and autograd for one IoU custom op (the third input, if any, is fmt or eps)."""

    def fmt_eps(extra: tuple) -> tuple[str, float]:
        if kind == "iou":
            return (extra[0] if extra else "xyxy"), 1e-7
        return "xyxy", (extra[0] if extra else 1e-7)

    @op.register_fake
    def _(boxes1, boxes2, *extra):
        return _iou_fake(kind, boxes1, boxes2, fmt_eps(extra)[0])

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.extra = tuple(inputs[2:])

    def backward(ctx, grad):
        # Vector-Jacobian product of the same formulas on torch ops (detkernels/reference).
        b1, b2 = ctx.saved_tensors
        fmt, eps = fmt_eps(ctx.extra)
        need = ctx.needs_input_grad[:2]
        with torch.enable_grad():
            x1 = b1.detach().requires_grad_(need[0])
            x2 = b2.detach().requires_grad_(need[1])
            out = _iou_formula(kind, x1, x2, fmt, eps)
            wrt = [x for x, n in zip((x1, x2), need) if n]
            gs = iter(torch.autograd.grad(out, wrt, grad) if wrt else ())
        grads = tuple(next(gs) if n else None for n in need)
        return grads + (None,) * len(ctx.extra)

    op.register_autograd(backward, setup_context=setup)


for _op, _kind in ((box_iou_op, "iou"), (generalized_box_iou_op, "giou"),
                   (distance_box_iou_op, "diou"), (complete_box_iou_op, "ciou")):
    _register_iou_extras(_op, _kind)


# ---- NMS -------------------------------------------------------------------------------------------

@torch.library.custom_op("detkernels::nms", mutates_args=())
def nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    return _ops.nms_impl(boxes, scores, None, iou_threshold).clone()


@nms_op.register_fake
def _(boxes, scores, iou_threshold):
    _ops.nms_check(boxes, scores)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


@torch.library.custom_op("detkernels::batched_nms", mutates_args=())
def batched_nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    if boxes.numel() == 0:
        return boxes.new_empty((0,), dtype=torch.int64)
    return _ops.nms_impl(boxes, scores, idxs, iou_threshold).clone()


@batched_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold):
    _ops.nms_check(boxes, scores, idxs)
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),), dtype=torch.int64)


def _check_tensors(**named: Any) -> None:
    for n, t in named.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{n} must be a torch.Tensor like the boxes, got {type(t).__name__}")


_FAST_CODES = {torch.float32: 0, torch.float64: 1}


def _fast_cpu_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor | None:
    """The common eager call (CPU float32/float64 tensors of one dtype, valid shapes, automatic
    backend) straight to the native kernel: a deployment NMS of a few hundred boxes takes a few
    microseconds, so per-call Python work matters. None: take the general path (which also raises
    the errors)."""
    code = _FAST_CODES.get(boxes.dtype)
    if (code is None or type(boxes) is not Tensor or type(scores) is not Tensor
            or scores.dtype != boxes.dtype or boxes.device.type != "cpu" or scores.device.type != "cpu"
            or boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1
            or scores.shape[0] != boxes.shape[0] or _native._C is None
            or _registry.get_backend() is not None or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return None
    thr = _ops.threshold_value(iou_threshold)
    b, s = boxes.contiguous(), scores.contiguous()
    n = b.shape[0]
    keep = torch.empty(n, dtype=torch.int64)
    return keep[: _native._C.nms_cpu(code, b.data_ptr(), s.data_ptr(), 0, n, thr, keep.data_ptr())]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str | None) -> Tensor:
    if backend is None:
        keep = _fast_cpu_nms(boxes, scores, iou_threshold)
        if keep is not None:
            return keep
    _check_tensors(scores=scores)
    if backend is None and _traced(boxes, scores):
        return torch.ops.detkernels.nms(boxes, scores, float(iou_threshold))
    return _ops.nms_impl(boxes, scores, None, iou_threshold, backend)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                backend: str | None) -> Tensor:
    if not _traced(boxes) and boxes.numel() == 0:  # before touching scores/idxs, as torchvision
        return boxes.new_empty((0,), dtype=torch.int64)
    _check_tensors(scores=scores, idxs=idxs)
    if backend is None and _traced(boxes, scores, idxs):
        return torch.ops.detkernels.batched_nms(boxes, scores, idxs, float(iou_threshold))
    return _ops.nms_impl(boxes, scores, idxs, iou_threshold, backend)


# ---- TorchScript: calls to the public functions compile to the custom ops --------------------------

def _register_jit_builtins() -> None:
    from torch.jit import _builtins

    for name in ("nms", "batched_nms", "box_iou", "generalized_box_iou", "distance_box_iou",
                 "complete_box_iou"):
        _builtins._register_builtin(getattr(_ops, name), f"detkernels::{name}")


_register_jit_builtins()


# ---- torchvision patching --------------------------------------------------------------------------

PATCHED = ("nms", "batched_nms", "box_area", "box_iou", "generalized_box_iou", "distance_box_iou",
           "complete_box_iou")


class patch_torchvision(contextlib.AbstractContextManager):
    """Route ``torchvision.ops`` functions to detkernels, so an existing torchvision model uses it
    without code changes. Patches at construction; as a context manager, restores on exit::

        detkernels.patch_torchvision()            # for the rest of the process
        with detkernels.patch_torchvision(): ...  # for a block

    Patched: nms, batched_nms, box_area, box_iou, generalized/distance/complete_box_iou in
    ``torchvision.ops`` and ``torchvision.ops.boxes`` (which the detection models call); the RoI
    ops, their modules, and the globals torchvision's RoI modules and detection heads call
    (``detkernels._torch_roi.patch_targets``).
    """

    def __init__(self) -> None:
        import torchvision.ops
        import torchvision.ops.boxes

        self._saved: list[tuple[Any, str, Any]] = []
        for mod in (torchvision.ops, torchvision.ops.boxes):
            for name in PATCHED:
                if hasattr(mod, name):
                    self._saved.append((mod, name, getattr(mod, name)))
                    setattr(mod, name, getattr(_ops, name))
        for mod, name, new in _torch_roi.patch_targets():
            self._saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, new)

    def restore(self) -> None:
        """Put torchvision's own functions back."""
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)
        self._saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self.restore()

from . import _torch_nms  # noqa: E402,F401  (fixed-size NMS custom ops)

from . import _torch_roi  # noqa: E402  (RoI custom ops, modules, patch targets)
