"""torch integration of the RoI ops: ``torch.ops.detkernels.{roi_align, roi_pool, ps_roi_align,
ps_roi_pool}`` and their ``_*_backward`` ops (torchvision's schemas), with fake kernels
(torch.compile with dynamic shapes, torch.export, opcheck) and autograd; the nn.Modules
``RoIAlign``, ``RoIPool``, ``PSRoIAlign``, ``PSRoIPool``, ``MultiScaleRoIAlign``; and the
torchvision attributes ``patch_torchvision`` reroutes. Loaded by detkernels/_torch.py.

Eager calls run the kernel outside torch's dispatcher (``_EagerRoi`` records the same backward
when the input requires grad); under torch.compile/export, jit tracing or with fake/meta tensors
they go through the custom op. Not (only) for speed: the dispatcher's Python-kernel call releases
the GIL with pybind11's ``gil_scoped_release``, whose destructor is noexcept, so a daemon thread
inside it when the interpreter exits is ended by a forced unwind that becomes std::terminate
(issue 19.2); the compiled core's own GIL guard lets that unwind through. An explicit ``backend=``
reaches the op's kernel (and the backward recorded with it) through a context variable.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from . import roi_ops as R
from ._torch import _traced
from .reference.roi_align import check_sampling_ratio
from .reference.roi_pool import check_plane

_BACKEND: contextvars.ContextVar = contextvars.ContextVar("detkernels_roi_backend", default=None)


@contextlib.contextmanager
def _use_backend(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    tok = _BACKEND.set(name)
    try:
        yield
    finally:
        _BACKEND.reset(tok)


_lib = torch.library.Library("detkernels", "FRAGMENT")
_lib.define("roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor")
_lib.define("_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
            "int sampling_ratio, bool aligned) -> Tensor")
_lib.define("ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)")
_lib.define("_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
            "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, "
            "SymInt channels, SymInt height, SymInt width) -> Tensor")
_lib.define("roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width) -> (Tensor, Tensor)")
_lib.define("_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
            "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
            "SymInt height, SymInt width) -> Tensor")
_lib.define("ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
            "SymInt pooled_width) -> (Tensor, Tensor)")
_lib.define("_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
            "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
            "SymInt height, SymInt width) -> Tensor")


def _impl(name: str):
    def deco(fn):
        _lib.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return deco


# ---- kernels (real tensors) ------------------------------------------------------------------------

@_impl("roi_align")
def _roi_align_k(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned):
    return R.roi_align_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, False, _BACKEND.get())


@_impl("_roi_align_backward")
def _roi_align_bk(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned):
    return R.roi_align_backward_impl(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                     aligned, False, _BACKEND.get())


def _channel_map(input: Tensor, k: int, ph: int, pw: int) -> Tensor:
    co = input.shape[1] // (ph * pw)
    cin = torch.arange(co * ph * pw, dtype=torch.int32, device=input.device).reshape(1, co, ph, pw)
    return cin.expand(k, co, ph, pw).contiguous()


@_impl("ps_roi_align")
def _ps_roi_align_k(input, rois, spatial_scale, ph, pw, sampling_ratio):
    out = R.roi_align_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, True, True, _BACKEND.get())
    return out, _channel_map(input, rois.shape[0], ph, pw)


@_impl("_ps_roi_align_backward")
def _ps_roi_align_bk(grad, rois, channel_mapping, spatial_scale, ph, pw, sampling_ratio, n, c, h, w):
    return R.roi_align_backward_impl(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                     True, True, _BACKEND.get())


@_impl("roi_pool")
def _roi_pool_k(input, rois, spatial_scale, ph, pw):
    return R.roi_pool_impl(input, rois, spatial_scale, ph, pw, False, _BACKEND.get())


@_impl("_roi_pool_backward")
def _roi_pool_bk(grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w):
    return R.roi_pool_backward_impl(grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w, False,
                                    _BACKEND.get())


@_impl("ps_roi_pool")
def _ps_roi_pool_k(input, rois, spatial_scale, ph, pw):
    return R.roi_pool_impl(input, rois, spatial_scale, ph, pw, True, _BACKEND.get())


@_impl("_ps_roi_pool_backward")
def _ps_roi_pool_bk(grad, rois, channel_mapping, spatial_scale, ph, pw, n, c, h, w):
    return R.roi_pool_backward_impl(grad, rois, channel_mapping, spatial_scale, ph, pw, n, c, h, w,
                                    True, _BACKEND.get())


# ---- fake kernels ----------------------------------------------------------------------------------

def _fake_check(input: Tensor, rois: Tensor, ph, pw, ps: bool) -> int:
    torch._check(rois.dim() == 2 and rois.shape[1] == 5,
                 lambda: f"The boxes tensor shape is not correct as Tensor[K, 5], got {tuple(rois.shape)}")
    torch._check(input.dtype == rois.dtype or (input.dtype in (torch.float16, torch.bfloat16)
                                               and rois.dtype == torch.float32),
                 lambda: "input should have the same type as rois")
    c = input.shape[1]
    if ps:
        torch._check(c % (ph * pw) == 0,
                     lambda: "input channels must be a multiple of pooling height * pooling width")
        return c // (ph * pw)
    return c


@torch.library.register_fake("detkernels::roi_align")
def _(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned):
    check_sampling_ratio(sampling_ratio)
    c = _fake_check(input, rois, ph, pw, False)
    return input.new_empty((rois.shape[0], c, ph, pw))


@torch.library.register_fake("detkernels::ps_roi_align")
def _(input, rois, spatial_scale, ph, pw, sampling_ratio):
    check_sampling_ratio(sampling_ratio)
    c = _fake_check(input, rois, ph, pw, True)
    shape = (rois.shape[0], c, ph, pw)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("detkernels::roi_pool")
def _(input, rois, spatial_scale, ph, pw):
    c = _fake_check(input, rois, ph, pw, False)
    if isinstance(input.shape[2] * input.shape[3], int):  # static sizes (a symbolic one is checked at run time)
        check_plane(input.shape[2], input.shape[3])
    shape = (rois.shape[0], c, ph, pw)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("detkernels::ps_roi_pool")
def _(input, rois, spatial_scale, ph, pw):
    c = _fake_check(input, rois, ph, pw, True)
    shape = (rois.shape[0], c, ph, pw)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _fake_grad_input(grad: Tensor, n, c, h, w) -> Tensor:
    return grad.new_empty((n, c, h, w))


@torch.library.register_fake("detkernels::_roi_align_backward")
def _(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned):
    return _fake_grad_input(grad, n, c, h, w)


@torch.library.register_fake("detkernels::_ps_roi_align_backward")
def _(grad, rois, channel_mapping, spatial_scale, ph, pw, sampling_ratio, n, c, h, w):
    return _fake_grad_input(grad, n, c, h, w)


@torch.library.register_fake("detkernels::_roi_pool_backward")
def _(grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w):
    return _fake_grad_input(grad, n, c, h, w)


@torch.library.register_fake("detkernels::_ps_roi_pool_backward")
def _(grad, rois, channel_mapping, spatial_scale, ph, pw, n, c, h, w):
    return _fake_grad_input(grad, n, c, h, w)


# ---- autograd ----------------------------------------------------------------------------------------
# Gradients w.r.t. the features only (none w.r.t. the boxes, as torchvision). The backward ops
# themselves are not differentiable: double backward raises, as torchvision's does.

def _setup(ctx, inputs, output):
    input, rois = inputs[0], inputs[1]
    ctx.save_for_backward(rois, output[1] if isinstance(output, (tuple, list)) else None)
    ctx.input_shape = tuple(input.shape)
    ctx.args = tuple(inputs[2:])
    ctx.backend = _BACKEND.get()


def _roi_align_bw(ctx, grad):
    rois, _ = ctx.saved_tensors
    ss, ph, pw, sr, aligned = ctx.args
    with _use_backend(ctx.backend):
        gi = torch.ops.detkernels._roi_align_backward(grad, rois, ss, ph, pw, *ctx.input_shape, sr, aligned)
    return gi, None, None, None, None, None, None


def _ps_roi_align_bw(ctx, grad, _grad_map):
    rois, cmap = ctx.saved_tensors
    ss, ph, pw, sr = ctx.args
    with _use_backend(ctx.backend):
        gi = torch.ops.detkernels._ps_roi_align_backward(grad, rois, cmap, ss, ph, pw, sr, *ctx.input_shape)
    return gi, None, None, None, None, None


def _roi_pool_bw(ctx, grad, _grad_idx):
    rois, argmax = ctx.saved_tensors
    ss, ph, pw = ctx.args
    with _use_backend(ctx.backend):
        gi = torch.ops.detkernels._roi_pool_backward(grad, rois, argmax, ss, ph, pw, *ctx.input_shape)
    return gi, None, None, None, None


def _ps_roi_pool_bw(ctx, grad, _grad_idx):
    rois, cmap = ctx.saved_tensors
    ss, ph, pw = ctx.args
    with _use_backend(ctx.backend):
        gi = torch.ops.detkernels._ps_roi_pool_backward(grad, rois, cmap, ss, ph, pw, *ctx.input_shape)
    return gi, None, None, None, None


torch.library.register_autograd("detkernels::roi_align", _roi_align_bw, setup_context=_setup)
torch.library.register_autograd("detkernels::ps_roi_align", _ps_roi_align_bw, setup_context=_setup)
torch.library.register_autograd("detkernels::roi_pool", _roi_pool_bw, setup_context=_setup)
torch.library.register_autograd("detkernels::ps_roi_pool", _ps_roi_pool_bw, setup_context=_setup)


def _no_double_backward(op: str):
    def bw(ctx, *grads):
        raise RuntimeError(f"double backwards on {op} not supported")

    return bw


for _name in ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool"):
    torch.library.register_autograd(f"detkernels::_{_name}_backward", _no_double_backward(_name),
                                    setup_context=lambda ctx, inputs, output: None)


# ---- the torch side of the public functions (detkernels/roi_ops.py) --------------------------------

def _check_torch(input: Any, rois: Any, ph: int, pw: int, ps: bool) -> None:
    if not isinstance(rois, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor like the input, got {type(rois).__name__}")
    R.check_args(input, rois, ph, pw, ps)
    if input.device != rois.device:
        raise RuntimeError(f"input is on {input.device} but rois are on {rois.device}; move them to one device")


# name -> (kernel, backward formula): the custom op's own pair, for the eager path.
_EAGER = {"roi_align": (_roi_align_k, _roi_align_bw), "ps_roi_align": (_ps_roi_align_k, _ps_roi_align_bw),
          "roi_pool": (_roi_pool_k, _roi_pool_bw), "ps_roi_pool": (_ps_roi_pool_k, _ps_roi_pool_bw)}


class _EagerRoi(torch.autograd.Function):
    """An eager RoI op with autograd: the custom op's kernel, setup_context and backward, called
    without the dispatcher (see the module docstring)."""

    @staticmethod
    def forward(ctx, name: str, input: Tensor, rois: Tensor, *args: Any) -> Any:
        out = _EAGER[name][0](input, rois, *args)
        _setup(ctx, (input, rois, *args), out)
        ctx.name = name
        if isinstance(out, tuple):
            ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple:
        gi = _EAGER[ctx.name][1](ctx, *grads)[0]
        return (None, gi, None) + (None,) * len(ctx.args)


def _call(name: str, input: Tensor, rois: Tensor, args: tuple, backend: str | None) -> Any:
    with _use_backend(backend):
        if _traced(input, rois):
            return getattr(torch.ops.detkernels, name)(input, rois, *args)
        if torch.is_grad_enabled() and input.requires_grad:
            return _EagerRoi.apply(name, input, rois, *args)
        return _EAGER[name][0](input, rois, *args)


def roi_align(input: Tensor, rois: Tensor, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, backend: str | None) -> Tensor:
    _check_torch(input, rois, ph, pw, False)
    sr = check_sampling_ratio(sampling_ratio)
    return _call("roi_align", input, rois, (float(spatial_scale), ph, pw, sr, bool(aligned)), backend)


def ps_roi_align(input: Tensor, rois: Tensor, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                 backend: str | None) -> Tensor:
    _check_torch(input, rois, ph, pw, True)
    sr = check_sampling_ratio(sampling_ratio)
    return _call("ps_roi_align", input, rois, (float(spatial_scale), ph, pw, sr), backend)[0]


def roi_pool(input: Tensor, rois: Tensor, spatial_scale: float, ph: int, pw: int, backend: str | None) -> Tensor:
    _check_torch(input, rois, ph, pw, False)
    return _call("roi_pool", input, rois, (float(spatial_scale), ph, pw), backend)[0]


def ps_roi_pool(input: Tensor, rois: Tensor, spatial_scale: float, ph: int, pw: int, backend: str | None) -> Tensor:
    _check_torch(input, rois, ph, pw, True)
    return _call("ps_roi_pool", input, rois, (float(spatial_scale), ph, pw), backend)[0]


# ---- TorchScript: calls to the public functions compile to these ops ---------------------------------
# Same signatures as the public functions (boxes as Tensor[K, 5] or List[Tensor[L, 4]], output_size
# an int or a pair); torch.jit.script resolves detkernels.roi_align & co. to them.

for _name, _extra in (("roi_align", ", int sampling_ratio=-1, bool aligned=False"),
                      ("ps_roi_align", ", int sampling_ratio=-1"), ("roi_pool", ""), ("ps_roi_pool", "")):
    for _overload, _boxes in (("", "Tensor boxes"), (".boxes_list", "Tensor[] boxes")):
        _lib.define(f"{_name}_script{_overload}(Tensor input, {_boxes}, SymInt[2] output_size, "
                    f"float spatial_scale=1.0{_extra}) -> Tensor")


def _script_impl(name: str):
    fn = getattr(R, name)

    def impl(input, boxes, output_size, *args):
        return fn(input, R.rois_from_boxes(boxes), tuple(output_size), *args)

    for overload in ("", ".boxes_list"):
        _lib.impl(f"{name}_script{overload}", impl, "CompositeImplicitAutograd")


def _register_jit_builtins() -> None:
    from torch.jit import _builtins

    for name in ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool"):
        _script_impl(name)
        _builtins._register_builtin(getattr(R, name), f"detkernels::{name}_script")


_register_jit_builtins()


# ---- modules -------------------------------------------------------------------------------------------

class RoIAlign(nn.Module):
    """``torchvision.ops.RoIAlign`` on detkernels' roi_align."""

    def __init__(self, output_size: Any, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Tensor | list[Tensor]) -> Tensor:
        return R.roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

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
        return R.roi_pool(input, rois, self.output_size, self.spatial_scale)

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
        return R.ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

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
        return R.ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

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


def _infer_scale(feature: Tensor, original_size: tuple[int, int]) -> float:
    # Scales are powers of two, 2 ** round(log2(feature / image)); the height decides (torchvision).
    approx = float(feature.shape[-2]) / float(original_size[0])
    return 2 ** float(torch.tensor(approx).log2().round())


def _pool_levels(feats: list[Tensor], scales: list[float], rois: Tensor, levels: Tensor,
                 output_size: tuple[int, int], sampling_ratio: int, masked: bool) -> Tensor:
    """RoIAlign of each RoI on its level. ``masked=False`` (torchvision's way): gather each level's
    RoIs (``torch.where`` -> a host sync and data-dependent shapes). ``masked=True`` (GPU, tracing):
    every level pools all RoIs, those of other levels with batch index -1, which reads nothing (no
    output, no gradient), and ``torch.where`` picks each RoI's level -- no host sync, static shapes,
    the same bytes, forward and backward."""
    shape = (rois.shape[0], feats[0].shape[1]) + tuple(output_size)
    result = torch.zeros(shape, dtype=feats[0].dtype, device=feats[0].device)
    for level, (feat, scale) in enumerate(zip(feats, scales)):
        on = levels == level
        if masked:
            r = torch.cat([torch.where(on, rois[:, 0], -1.0)[:, None], rois[:, 1:]], 1)
            out = R.roi_align(feat, r, output_size, scale, sampling_ratio)
            result = torch.where(on[:, None, None, None], out.to(result.dtype), result)
        else:
            idx = torch.where(on)[0]
            out = R.roi_align(feat, rois[idx], output_size, scale, sampling_ratio)
            result[idx] = out.to(result.dtype)
    return result


class MultiScaleRoIAlign(nn.Module):
    """``torchvision.ops.MultiScaleRoIAlign``: RoIAlign over FPN levels, each box pooled from the
    level chosen by its size. Scales are inferred on the first forward (from the largest image
    size) and cached; ``aligned=False`` as in torchvision.

    Args:
        featmap_names: the keys of the feature dict to pool from (dict order is used).
        output_size: ``(PH, PW)`` or an int.
        sampling_ratio: as in roi_align.
        canonical_scale, canonical_level: the LevelMapper's ``s0`` and ``lvl0``.
    """

    def __init__(self, featmap_names: list[str], output_size: Any, sampling_ratio: int, *,
                 canonical_scale: int = 224, canonical_level: int = 4):
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.featmap_names = featmap_names
        self.sampling_ratio = sampling_ratio
        self.output_size = tuple(output_size)
        self.scales: list[float] | None = None
        self.map_levels: _LevelMapper | None = None
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def _setup_scales(self, features: list[Tensor], image_shapes: list[tuple[int, int]]) -> None:
        if not image_shapes:
            raise ValueError("images list should not be empty")
        size = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
        scales = [_infer_scale(f, size) for f in features]
        lvl_min = -torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item()
        lvl_max = -torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item()
        self.scales = scales
        self.map_levels = _LevelMapper(int(lvl_min), int(lvl_max), self.canonical_scale, self.canonical_level)

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feats = [v for k, v in x.items() if k in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            self._setup_scales(feats, image_shapes)
        scales, mapper = self.scales, self.map_levels
        rois = R.rois_from_boxes(boxes)
        if len(feats) == 1:
            return R.roi_align(feats[0], rois, self.output_size, scales[0], self.sampling_ratio)
        levels = mapper(boxes)
        masked = feats[0].device.type != "cpu" or _traced(feats[0], rois)
        return _pool_levels(feats, scales, rois, levels, self.output_size, self.sampling_ratio, masked)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(featmap_names={self.featmap_names}, "
                f"output_size={self.output_size}, sampling_ratio={self.sampling_ratio})")


# ---- torchvision patching (used by detkernels._torch.patch_torchvision) ---------------------------

def patch_targets() -> list[tuple[Any, str, Any]]:
    """(module, attribute, replacement) for every place torchvision looks the RoI ops up: the
    ``torchvision.ops`` namespace, the globals the torchvision module classes call (so existing
    RoIAlign/MultiScaleRoIAlign instances, e.g. inside a built detection model, reroute too), and
    the roi_align used by the Mask R-CNN loss."""
    fns = {"roi_align": R.roi_align, "roi_pool": R.roi_pool, "ps_roi_align": R.ps_roi_align,
           "ps_roi_pool": R.ps_roi_pool}
    classes = {"RoIAlign": RoIAlign, "RoIPool": RoIPool, "PSRoIAlign": PSRoIAlign, "PSRoIPool": PSRoIPool,
               "MultiScaleRoIAlign": MultiScaleRoIAlign}
    out: list[tuple[Any, str, Any]] = []
    tv_ops = importlib.import_module("torchvision.ops")
    for name, new in {**fns, **classes}.items():
        if hasattr(tv_ops, name):
            out.append((tv_ops, name, new))
    for modname, name in (("torchvision.ops.roi_align", "roi_align"), ("torchvision.ops.roi_pool", "roi_pool"),
                          ("torchvision.ops.ps_roi_align", "ps_roi_align"),
                          ("torchvision.ops.ps_roi_pool", "ps_roi_pool"), ("torchvision.ops.poolers", "roi_align"),
                          ("torchvision.models.detection.roi_heads", "roi_align")):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(mod, name):
            out.append((mod, name, fns[name]))
    return out

