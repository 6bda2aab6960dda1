"""The RoI ops on torch tensors: ``torch.ops.detkernels.{roi_align, roi_pool, ps_roi_align,
ps_roi_pool, roi_align_rotated}`` and their ``_*_backward`` ops (torchvision's argument lists), with fake kernels
(torch.compile with dynamic shapes, torch.export, opcheck) and autograd; and the eager entries of
detkernels/api/roi.py (arguments validated there).

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
from typing import Any, Iterator

import torch
from torch import Tensor

from .. import _checks, _dispatch
from .common import traced

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


def _channel_map(input: Tensor, k: int, ph: int, pw: int) -> Tensor:
    co = input.shape[1] // (ph * pw)
    cin = torch.arange(co * ph * pw, dtype=torch.int32, device=input.device).reshape(1, co, ph, pw)
    return cin.expand(k, co, ph, pw).contiguous()


# ---- kernels (real tensors): each op is a public entry, so it validates ------------------------------

def _align(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, ps):
    w = _checks.roi_check(input, rois, ph, pw, ps, pool=False)
    sr = _checks.check_sampling_ratio(sampling_ratio)
    return _dispatch.roi_align(input, rois, float(spatial_scale), int(ph), int(pw), sr, bool(aligned), ps,
                               w, _BACKEND.get())


def _align_bw(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned, ps):
    wd = _checks.roi_grad_check(grad, rois, ph, pw, c, h, w, ps, pool=False)
    sr = _checks.check_sampling_ratio(sampling_ratio)
    return _dispatch.roi_align_backward(grad, rois, float(spatial_scale), int(ph), int(pw), int(n), int(c),
                                        int(h), int(w), sr, bool(aligned), ps, wd, _BACKEND.get())


def _pool(input, rois, spatial_scale, ph, pw, ps):
    w = _checks.roi_check(input, rois, ph, pw, ps, pool=True)
    return _dispatch.roi_pool(input, rois, float(spatial_scale), int(ph), int(pw), ps, w, _BACKEND.get())


def _pool_bw(grad, rois, idx, spatial_scale, ph, pw, n, c, h, w, ps):
    wd = _checks.roi_grad_check(grad, rois, ph, pw, c, h, w, ps, pool=True)
    _checks.roi_pool_index_check(idx, grad)
    return _dispatch.roi_pool_backward(grad, rois, idx, float(spatial_scale), int(ph), int(pw), int(n),
                                       int(c), int(h), int(w), ps, wd, _BACKEND.get())


@torch.library.custom_op("detkernels::roi_align", mutates_args=())
def roi_align_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                 pooled_width: int, sampling_ratio: int, aligned: bool) -> Tensor:
    return _align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, False)


@torch.library.custom_op("detkernels::_roi_align_backward", mutates_args=())
def roi_align_backward_op(grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                          pooled_width: int, batch_size: int, channels: int, height: int, width: int,
                          sampling_ratio: int, aligned: bool) -> Tensor:
    return _align_bw(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                     width, sampling_ratio, aligned, False)


@torch.library.custom_op("detkernels::ps_roi_align", mutates_args=())
def ps_roi_align_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                    pooled_width: int, sampling_ratio: int) -> tuple[Tensor, Tensor]:
    out = _align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, True)
    return out, _channel_map(input, rois.shape[0], pooled_height, pooled_width)


@torch.library.custom_op("detkernels::_ps_roi_align_backward", mutates_args=())
def ps_roi_align_backward_op(grad: Tensor, rois: Tensor, channel_mapping: Tensor, spatial_scale: float,
                             pooled_height: int, pooled_width: int, sampling_ratio: int, batch_size: int,
                             channels: int, height: int, width: int) -> Tensor:
    return _align_bw(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height,
                     width, sampling_ratio, True, True)


@torch.library.custom_op("detkernels::roi_pool", mutates_args=())
def roi_pool_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                pooled_width: int) -> tuple[Tensor, Tensor]:
    return _pool(input, rois, spatial_scale, pooled_height, pooled_width, False)


@torch.library.custom_op("detkernels::_roi_pool_backward", mutates_args=())
def roi_pool_backward_op(grad: Tensor, rois: Tensor, argmax: Tensor, spatial_scale: float,
                         pooled_height: int, pooled_width: int, batch_size: int, channels: int,
                         height: int, width: int) -> Tensor:
    return _pool_bw(grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                    height, width, False)


@torch.library.custom_op("detkernels::ps_roi_pool", mutates_args=())
def ps_roi_pool_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                   pooled_width: int) -> tuple[Tensor, Tensor]:
    return _pool(input, rois, spatial_scale, pooled_height, pooled_width, True)


@torch.library.custom_op("detkernels::_ps_roi_pool_backward", mutates_args=())
def ps_roi_pool_backward_op(grad: Tensor, rois: Tensor, channel_mapping: Tensor, spatial_scale: float,
                            pooled_height: int, pooled_width: int, batch_size: int, channels: int,
                            height: int, width: int) -> Tensor:
    return _pool_bw(grad, rois, channel_mapping, spatial_scale, pooled_height, pooled_width, batch_size,
                    channels, height, width, True)


# ---- fake kernels: the same checks, then empty outputs ----------------------------------------------

def _fake_out(input: Tensor, rois: Tensor, ph, pw, ps: bool) -> tuple:
    c = input.shape[1] // (ph * pw) if ps else input.shape[1]
    return (rois.shape[0], c, ph, pw)


@roi_align_op.register_fake
def _(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned):
    _checks.roi_check(input, rois, ph, pw, False, pool=False)
    _checks.check_sampling_ratio(sampling_ratio)
    return input.new_empty(_fake_out(input, rois, ph, pw, False))


@ps_roi_align_op.register_fake
def _(input, rois, spatial_scale, ph, pw, sampling_ratio):
    _checks.roi_check(input, rois, ph, pw, True, pool=False)
    _checks.check_sampling_ratio(sampling_ratio)
    shape = _fake_out(input, rois, ph, pw, True)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@roi_pool_op.register_fake
def _(input, rois, spatial_scale, ph, pw):
    _checks.roi_check(input, rois, ph, pw, False, pool=True)
    shape = _fake_out(input, rois, ph, pw, False)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@ps_roi_pool_op.register_fake
def _(input, rois, spatial_scale, ph, pw):
    _checks.roi_check(input, rois, ph, pw, True, pool=True)
    shape = _fake_out(input, rois, ph, pw, True)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _fake_grad_input(grad: Tensor, n, c, h, w) -> Tensor:
    return grad.new_empty((n, c, h, w))


@roi_align_backward_op.register_fake
def _(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned):
    _checks.check_sampling_ratio(sampling_ratio)
    return _fake_grad_input(grad, n, c, h, w)


@ps_roi_align_backward_op.register_fake
def _(grad, rois, channel_mapping, spatial_scale, ph, pw, sampling_ratio, n, c, h, w):
    _checks.check_sampling_ratio(sampling_ratio)
    return _fake_grad_input(grad, n, c, h, w)


@roi_pool_backward_op.register_fake
def _(grad, rois, argmax, spatial_scale, ph, pw, n, c, h, w):
    return _fake_grad_input(grad, n, c, h, w)


@ps_roi_pool_backward_op.register_fake
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


roi_align_op.register_autograd(_roi_align_bw, setup_context=_setup)
ps_roi_align_op.register_autograd(_ps_roi_align_bw, setup_context=_setup)
roi_pool_op.register_autograd(_roi_pool_bw, setup_context=_setup)
ps_roi_pool_op.register_autograd(_ps_roi_pool_bw, setup_context=_setup)


def _no_double_backward(op: str):
    def bw(ctx, *grads):
        raise RuntimeError(f"double backwards on {op} not supported")

    return bw


for _name, _op in (("roi_align", roi_align_backward_op), ("ps_roi_align", ps_roi_align_backward_op),
                   ("roi_pool", roi_pool_backward_op), ("ps_roi_pool", ps_roi_pool_backward_op)):
    _op.register_autograd(_no_double_backward(_name), setup_context=lambda ctx, inputs, output: None)


# ---- eager entries -----------------------------------------------------------------------------------
# The kernels' own dispatch (validated arguments: no second check) and backward formulas.

def _align_k(input, rois, ss, ph, pw, sr, aligned, w):
    return _dispatch.roi_align(input, rois, ss, ph, pw, sr, aligned, False, w, _BACKEND.get())


def _ps_align_k(input, rois, ss, ph, pw, sr, w):
    out = _dispatch.roi_align(input, rois, ss, ph, pw, sr, True, True, w, _BACKEND.get())
    return out, _channel_map(input, rois.shape[0], ph, pw)


def _pool_k(input, rois, ss, ph, pw, w):
    return _dispatch.roi_pool(input, rois, ss, ph, pw, False, w, _BACKEND.get())


def _ps_pool_k(input, rois, ss, ph, pw, w):
    return _dispatch.roi_pool(input, rois, ss, ph, pw, True, w, _BACKEND.get())


# name -> (kernel, backward formula)
_EAGER = {"roi_align": (_align_k, _roi_align_bw), "ps_roi_align": (_ps_align_k, _ps_roi_align_bw),
          "roi_pool": (_pool_k, _roi_pool_bw), "ps_roi_pool": (_ps_pool_k, _ps_roi_pool_bw)}


# ---- roi_align_rotated (rois [K, 6], angle in degrees) ----------------------------------------------

@torch.library.custom_op("detkernels::roi_align_rotated", mutates_args=())
def roi_align_rotated_op(input: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                         pooled_width: int, sampling_ratio: int, aligned: bool, clockwise: bool) -> Tensor:
    w = _checks.roi_rotated_check(input, rois, pooled_height, pooled_width)
    sr = _checks.check_sampling_ratio(sampling_ratio)
    return _dispatch.roi_align_rotated(input, rois, float(spatial_scale), int(pooled_height),
                                       int(pooled_width), sr, bool(aligned), bool(clockwise), w, _BACKEND.get())


@torch.library.custom_op("detkernels::_roi_align_rotated_backward", mutates_args=())
def roi_align_rotated_backward_op(grad: Tensor, rois: Tensor, spatial_scale: float, pooled_height: int,
                                  pooled_width: int, batch_size: int, channels: int, height: int,
                                  width: int, sampling_ratio: int, aligned: bool, clockwise: bool) -> Tensor:
    wd = _checks.roi_rotated_grad_check(grad, rois, pooled_height, pooled_width, channels)
    sr = _checks.check_sampling_ratio(sampling_ratio)
    return _dispatch.roi_align_rotated_backward(grad, rois, float(spatial_scale), int(pooled_height),
                                                int(pooled_width), int(batch_size), int(channels), int(height),
                                                int(width), sr, bool(aligned), bool(clockwise), wd,
                                                _BACKEND.get())


@roi_align_rotated_op.register_fake
def _(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, clockwise):
    _checks.roi_rotated_check(input, rois, ph, pw)
    _checks.check_sampling_ratio(sampling_ratio)
    return input.new_empty((rois.shape[0], input.shape[1], ph, pw))


@roi_align_rotated_backward_op.register_fake
def _(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned, clockwise):
    _checks.check_sampling_ratio(sampling_ratio)
    return _fake_grad_input(grad, n, c, h, w)


def _roi_align_rotated_bw(ctx, grad):
    rois, _ = ctx.saved_tensors
    ss, ph, pw, sr, aligned, clockwise = ctx.args
    with _use_backend(ctx.backend):
        gi = torch.ops.detkernels._roi_align_rotated_backward(grad, rois, ss, ph, pw, *ctx.input_shape, sr,
                                                              aligned, clockwise)
    return gi, None, None, None, None, None, None, None


roi_align_rotated_op.register_autograd(_roi_align_rotated_bw, setup_context=_setup)
roi_align_rotated_backward_op.register_autograd(_no_double_backward("roi_align_rotated"),
                                                setup_context=lambda ctx, inputs, output: None)


def _rot_align_k(input, rois, ss, ph, pw, sr, aligned, clockwise, w):
    return _dispatch.roi_align_rotated(input, rois, ss, ph, pw, sr, aligned, clockwise, w, _BACKEND.get())


_EAGER["roi_align_rotated"] = (_rot_align_k, _roi_align_rotated_bw)


class _EagerRoi(torch.autograd.Function):
    """An eager RoI op with autograd: the custom op's kernel, setup_context and backward, called
    without the dispatcher (see the module docstring)."""

    @staticmethod
    def forward(ctx, name: str, w: str, input: Tensor, rois: Tensor, *args: Any) -> Any:
        out = _EAGER[name][0](input, rois, *args, w)
        _setup(ctx, (input, rois, *args), out)
        ctx.name = name
        if isinstance(out, tuple):
            ctx.mark_non_differentiable(out[1])
        return out

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple:
        gi = _EAGER[ctx.name][1](ctx, *grads)[0]
        return (None, None, gi, None) + (None,) * len(ctx.args)


def call(name: str, input: Tensor, rois: Tensor, args: tuple, w: str, backend: str | None) -> Any:
    """Eager entry of one RoI forward: ``args`` are the op's arguments after (input, rois),
    normalised; ``w`` the working dtype from _checks.roi_check."""
    if not isinstance(rois, Tensor):
        raise TypeError(f"boxes must be a torch.Tensor like the input, got {type(rois).__name__}")
    if input.device != rois.device:
        raise RuntimeError(f"input is on {input.device} but rois are on {rois.device}; move them to one device")
    with _use_backend(backend):
        if traced(input, rois):
            return getattr(torch.ops.detkernels, name)(input, rois, *args)
        if torch.is_grad_enabled() and input.requires_grad:
            return _EagerRoi.apply(name, w, input, rois, *args)
        return _EAGER[name][0](input, rois, *args, w)
