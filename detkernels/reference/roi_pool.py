"""NumPy reference (the specification) of ``roi_pool`` and ``ps_roi_pool``, forward and backward.

Semantics: torchvision 0.29.1's CPU kernels (``docs/torchvision-semantics.md`` §5, §7), with
the fixes of docs/SPEC.md §1.3-1.5. Working type T: float64 for float64 features, float32 otherwise
(float16/bfloat16 widened, result rounded once).

Geometry of RoI ``n`` (``ss = T(spatial_scale)``; ``round`` is C's: half away from zero)::

    sw = round(x1*ss) ; sh = round(y1*ss) ; ew = round(x2*ss) ; eh = round(y2*ss)   # product in T
    roi_pool:    roi_w = max(ew - sw + 1, 1) ; roi_h = max(eh - sh + 1, 1)
    ps_roi_pool: roi_w = max(ew - sw, 1)     ; roi_h = max(eh - sh, 1)
    bin_h = T(roi_h) / T(PH) ; bin_w = T(roi_w) / T(PW)
    hstart = floor(T(ph)*bin_h) + sh ; hend = ceil(T(ph+1)*bin_h) + sh       (w likewise)
    roi_pool:    clamp both to [0, H]     (w: [0, W])
    ps_roi_pool: clamp both to [0, H-1]   (w: [0, W-1]; torchvision's forward never reads the last
                 row/column, kept for parity)
    empty = hend <= hstart or wend <= wstart

``roi_pool``: ``out = 0, argmax = -1`` if empty; else ``maxval = T(-FLT_MAX)``, ``argmax = -1``
and, row-major over the bin, ``if v > maxval: maxval, argmax = v, h*W + w`` (ties: first; NaN never
wins; all-NaN gives -FLT_MAX with argmax -1). Backward: ``grad_input[b, c, argmax] += grad`` where
argmax != -1, summed in the order (n, ph, pw).

``ps_roi_pool``: output ``[n, c, ph, pw]`` averages input channel ``(c*PH + ph)*PW + pw``:
``out = 0`` if empty, else ``(T(0) + v + v + ...) / T(area)`` row-major, ``area =
(hend-hstart)*(wend-wstart)``. Backward sends ``grad / T(area)`` to every pixel of **the same**
region (docs/SPEC.md §1.4: torchvision's backward clips to [0, H] instead, so its gradient does not
match its forward), summed in the order (n, h, w).

Divergences where torchvision has undefined behaviour: the batch index rule of
``reference.roi_align.batch_index`` (NaN/inf/out of range: output 0, argmax -1, no gradient); a
NaN rounded coordinate makes every bin empty; rounded coordinates are clamped to [-2**31, 2**31]
(torchvision converts them to ``int``); ``roi_pool`` refuses maps of more than ``MAX_PLANE =
2**31 - 1`` pixels with ValueError, since its int32 argmax ``h*W + w`` would wrap (torchvision's
does, and its backward then drops or misplaces the gradient).
"""
from __future__ import annotations

import numpy as np

from .._constants import MAX_PLANE
from .roi_align import batch_index, working_dtype

__all__ = ["roi_pool", "roi_pool_backward", "ps_roi_pool", "ps_roi_pool_backward", "c_round",
           "MAX_PLANE", "check_plane"]

FLT_MAX = np.float32(np.finfo(np.float32).max)
_LIM = float(2**31)


def check_plane(height: int, width: int) -> None:
    """ValueError when roi_pool's int32 argmax cannot index an ``height x width`` map."""
    if height * width > MAX_PLANE:
        raise ValueError(f"roi_pool: input height * width = {height} * {width} = {height * width} "
                         f"exceeds {MAX_PLANE}, the largest int32 argmax index")


def c_round(v):
    """C ``round``: half away from zero (``np.round`` rounds half to even)."""
    t = np.trunc(v)
    return t + np.copysign(np.where(np.abs(v - t) >= 0.5, 1, 0), v).astype(t.dtype)


def _coord(v) -> int | None:
    r = c_round(v)
    if np.isnan(r):
        return None
    return int(min(max(float(r), -_LIM), _LIM))


def _bins(roi, T, spatial_scale, PH, PW, H, W, ps):
    """[(hstart, hend)] * PH, [(wstart, wend)] * PW, or None when the RoI has no pixels."""
    ss = T(spatial_scale)
    with np.errstate(all="ignore"):
        c = [_coord(roi[k] * ss) for k in range(1, 5)]
    if any(v is None for v in c):
        return None
    sw, sh, ew, eh = c
    extra = 0 if ps else 1
    roi_w, roi_h = max(ew - sw + extra, 1), max(eh - sh + extra, 1)
    bin_h, bin_w = T(roi_h) / T(PH), T(roi_w) / T(PW)
    hi_h, hi_w = (H - 1, W - 1) if ps else (H, W)

    def clamp(v, hi):
        return min(max(v, 0), hi)

    hs = [(clamp(int(np.floor(T(p) * bin_h)) + sh, hi_h), clamp(int(np.ceil(T(p + 1) * bin_h)) + sh, hi_h))
          for p in range(PH)]
    ws = [(clamp(int(np.floor(T(p) * bin_w)) + sw, hi_w), clamp(int(np.ceil(T(p + 1) * bin_w)) + sw, hi_w))
          for p in range(PW)]
    return hs, ws


def _regions(r, T, spatial_scale, PH, PW, N, H, W, ps):
    """Yield (n, b, ph, pw, h0, h1, w0, w1) for every non-empty bin of every RoI that reads an
    image, in the order (n, ph, pw) -- the order all four kernels visit (and sum) in."""
    for n in range(r.shape[0]):
        b = batch_index(r[n, 0], N)
        bins = _bins(r[n], T, spatial_scale, PH, PW, H, W, ps)
        if b is None or bins is None:
            continue
        hs, ws = bins
        for ph, (h0, h1) in enumerate(hs):
            for pw, (w0, w1) in enumerate(ws):
                if h1 > h0 and w1 > w0:
                    yield n, b, ph, pw, h0, h1, w0, w1


def _prep(input, rois):
    x = np.asarray(input)
    r = np.asarray(rois)
    if x.ndim != 4 or r.ndim != 2 or r.shape[1] != 5:
        raise ValueError(f"need input [N, C, H, W] and rois [K, 5], got {x.shape} and {r.shape}")
    T = working_dtype(x.dtype).type
    return x.astype(T, copy=False), r.astype(T, copy=False), T


def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """``input`` [N, C, H, W], ``rois`` [K, 5] -> (out [K, C, PH, PW], argmax int32 [K, C, PH, PW])."""
    out_dtype = np.asarray(input).dtype
    x, r, T = _prep(input, rois)
    N, C, H, W = x.shape
    check_plane(H, W)
    PH, PW = pooled_height, pooled_width
    out = np.zeros((r.shape[0], C, PH, PW), T)
    arg = np.full((r.shape[0], C, PH, PW), -1, np.int32)
    for n, b, ph, pw, h0, h1, w0, w1 in _regions(r, T, spatial_scale, PH, PW, N, H, W, False):
        m = np.full(C, -FLT_MAX, T)
        a = np.full(C, -1, np.int32)
        for h in range(h0, h1):
            for w in range(w0, w1):
                v = x[b, :, h, w]
                up = v > m
                m = np.where(up, v, m)
                a = np.where(up, np.int32(h * W + w), a)
        out[n, :, ph, pw] = m
        arg[n, :, ph, pw] = a
    if out_dtype == np.float16:
        with np.errstate(over="ignore"):
            out = out.astype(np.float16)
    return out, arg


def roi_pool_backward(grad, rois, argmax, spatial_scale: float, pooled_height: int, pooled_width: int,
                      batch_size: int, channels: int, height: int, width: int) -> np.ndarray:
    """``grad`` [K, C, PH, PW] -> grad_input [N, C, H, W] (``rois`` only give the batch index)."""
    check_plane(height, width)
    out_dtype = np.asarray(grad).dtype
    T = working_dtype(out_dtype).type
    g = np.asarray(grad).astype(T, copy=False)
    r = np.asarray(rois).astype(T, copy=False)
    am = np.asarray(argmax)
    gi = np.zeros((batch_size, channels, height * width), T)
    cs = np.arange(channels)
    for n in range(r.shape[0]):
        b = batch_index(r[n, 0], batch_size)
        if b is None:
            continue
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                a = am[n, :, ph, pw].astype(np.int64)
                ok = a >= 0
                gi[b, cs[ok], a[ok]] += g[n, ok, ph, pw]
    gi = gi.reshape(batch_size, channels, height, width)
    return gi.astype(out_dtype) if out_dtype == np.float16 else gi


def ps_roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
    """Position-sensitive RoIPool: [N, C, H, W] -> (out [K, C/(PH*PW), PH, PW], channel_mapping int32)."""
    out_dtype = np.asarray(input).dtype
    x, r, T = _prep(input, rois)
    N, C, H, W = x.shape
    PH, PW = pooled_height, pooled_width
    Co = C // (PH * PW)
    out = np.zeros((r.shape[0], Co, PH, PW), T)
    cin = (np.arange(Co)[:, None, None] * PH + np.arange(PH)[None, :, None]) * PW + np.arange(PW)
    mapping = np.broadcast_to(cin.astype(np.int32), out.shape).copy()
    for n, b, ph, pw, h0, h1, w0, w1 in _regions(r, T, spatial_scale, PH, PW, N, H, W, True):
        s = np.zeros(Co, T)
        for h in range(h0, h1):
            for w in range(w0, w1):
                s = s + x[b, cin[:, ph, pw], h, w]
        out[n, :, ph, pw] = s / T((h1 - h0) * (w1 - w0))
    return (out.astype(out_dtype) if out_dtype == np.float16 else out), mapping


def ps_roi_pool_backward(grad, rois, channel_mapping, spatial_scale: float, pooled_height: int,
                         pooled_width: int, batch_size: int, channels: int, height: int,
                         width: int) -> np.ndarray:
    """``grad`` [K, C/(PH*PW), PH, PW] -> grad_input [N, C, H, W] over the forward's regions."""
    out_dtype = np.asarray(grad).dtype
    T = working_dtype(out_dtype).type
    g = np.asarray(grad).astype(T, copy=False)
    r = np.asarray(rois).astype(T, copy=False)
    PH, PW, H, W = pooled_height, pooled_width, height, width
    Co = channels // (PH * PW)
    gi = np.zeros((batch_size, channels, H, W), T)
    for n, b, ph, pw, h0, h1, w0, w1 in _regions(r, T, spatial_scale, PH, PW, batch_size, H, W, True):
        cin = (np.arange(Co) * PH + ph) * PW + pw
        d = g[n, :, ph, pw] / T((h1 - h0) * (w1 - w0))
        for h in range(h0, h1):
            for w in range(w0, w1):
                gi[b, cin, h, w] += d
    return gi.astype(out_dtype) if out_dtype == np.float16 else gi
