"""NumPy reference (the specification) of ``roi_align`` and ``ps_roi_align``, forward and backward.

Semantics: torchvision 0.29.1's CPU kernels (``docs/torchvision-semantics.md`` §4, §6),
operation for operation, with the fixes of docs/SPEC.md §1.3/§1.5. Everything is computed in the
working type T: float64 for float64 features, float32 otherwise (float16/bfloat16 features are
widened to float32 and the result is rounded once, at the output).

Geometry of RoI ``n`` (rois ``[K, 5]`` = ``(batch, x1, y1, x2, y2)``), ``ss = T(spatial_scale)``::

    off   = T(0.5) if aligned else T(0)            # ps_roi_align: always T(0.5)
    x1s   = x1*ss - off ;  y1s, x2s, y2s likewise
    roi_w = x2s - x1s ;  roi_h = y2s - y1s
    roi_align, not aligned: roi_w = std::max(roi_w, T(1)) ; roi_h likewise   (NaN stays NaN)
    bin_w = roi_w / T(PW) ;  bin_h = roi_h / T(PH)
    gw = sampling_ratio if sampling_ratio > 0 else grid(ceil(bin_w))          gh likewise
    grid(v) = 0 if not v > 0 (NaN, <= 0) ; min(v, MAX_GRID) otherwise
    y(ph, iy) = (y1s + T(ph)*bin_h) + (T(float32(iy) + 0.5f) * bin_h) / T(gh)   x likewise

A sample is *in range* iff ``-1 <= y <= H`` and ``-1 <= x <= W`` (NaN is never in range) and the map
is not empty. An in-range sample is the bilinear value::

    y = 0 if y <= 0 ; yl = trunc(y) ; if yl >= H-1: yl = yh = H-1, y = T(yl) else yh = yl+1
    ly = y - T(yl) ; hy = T(1) - ly            (x likewise)
    w1 = hy*hx ; w2 = hy*lx ; w3 = ly*hx ; w4 = ly*lx
    sample = ((w1*v[yl,xl] + w2*v[yl,xh]) + w3*v[yh,xl]) + w4*v[yh,xh]

``out[n, c, ph, pw] = acc / T(gh*gw)`` where ``acc = T(0) + sample + sample + ...`` over the
in-range samples, ``iy`` outer, ``ix`` inner. An out-of-range sample contributes exactly 0 (it is
skipped: ``acc`` starts at +0 and can never be -0, so ``acc + 0 == acc``); torchvision's CPU kernel
adds ``0 * v[0, 0]`` instead, which is NaN when that element is not finite (docs/SPEC.md §1.3).

Divergences from torchvision, all where torchvision crashes, reads out of bounds or never finishes:

* batch index: ``b = trunc(rois[n, 0])`` when ``N > 0`` and ``-1 < rois[n, 0] < N``; otherwise (NaN,
  inf, out of range, empty batch) RoI ``n`` reads nothing: output 0 and no gradient. Same on every backend.
* zero samples (``gh == 0`` or ``gw == 0``: NaN or non-positive size with adaptive sampling, or an
  empty map) give 0 (torchvision's ps_roi_align gives 0/0 = NaN).
* adaptive grids are capped at ``MAX_GRID = 65536`` samples per axis and bin (torchvision would
  need > 4e9 samples per bin there, and overflows its ``int`` sample count from 46341 on).
* an explicit ``sampling_ratio`` above ``MAX_SAMPLING_RATIO = 256`` (over 65536 = MAX_GRID samples
  per bin, all of them possibly in range) raises ValueError before any work (torchvision runs
  ``sampling_ratio**2`` samples per bin and output element, for minutes or until memory runs out).

Channels: ``roi_align`` output channel ``c`` reads input channel ``c``; ``ps_roi_align`` output
``[n, c, ph, pw]`` reads input channel ``(c*PH + ph)*PW + pw`` (C must be a multiple of PH*PW).

Backward: each in-range sample (n, ph, pw, iy, ix) sends, for each of its four taps k = 1..4 in that
order, ``(grad[n, c, ph, pw] * w_k) / T(gh*gw)`` to ``grad_input[b, c_in, y_k, x_k]``. The
contributions to one element of ``grad_input`` are summed left to right, starting from +0, in the
order **(n, ph, pw, iy, ix, k)** -- torchvision CPU's order. Their targets do not depend on the
channel, so a parallel implementation can sort the contributions by target once (stably, keeping
that order) and then reduce every channel's contributions sequentially in the sorted order; this
reference does exactly that (``_scatter_in_order``).
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from .._constants import MAX_GRID, MAX_SAMPLING_RATIO

__all__ = [
    "MAX_GRID",
    "MAX_SAMPLING_RATIO",
    "check_sampling_ratio",
    "roi_align",
    "roi_align_backward",
    "ps_roi_align",
    "ps_roi_align_backward",
    "working_dtype",
    "batch_index",
]



def check_sampling_ratio(sampling_ratio) -> int:
    """``sampling_ratio`` as an int (<= 0: adaptive). RuntimeError for a non-integer, as
    torchvision's ``int`` schema raises (2.7 is refused, not truncated); ValueError above
    MAX_SAMPLING_RATIO."""
    try:
        v = operator.index(sampling_ratio)
    except TypeError:
        raise RuntimeError(f"sampling_ratio must be an int, got {type(sampling_ratio).__name__} "
                           f"{sampling_ratio!r}") from None
    if v > MAX_SAMPLING_RATIO:
        raise ValueError(f"sampling_ratio must be <= {MAX_SAMPLING_RATIO} (samples per bin and axis; "
                         f"<= 0 samples adaptively), got {v}")
    return v


def working_dtype(dtype) -> np.dtype:
    """T: float64 for float64 features, float32 for every other float (docs/SPEC.md §1.5)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def batch_index(v, n_images: int) -> int | None:
    """``trunc(v)`` if ``N > 0`` and ``-1 < v < N``, else None (NaN, inf, out-of-range indices and
    every index of an empty batch read nothing: ``v`` in (-1, 0) would truncate to image 0)."""
    if not (n_images > 0 and v > -1 and v < n_images):
        return None
    return int(v)


def _grid(bin_size, sampling_ratio: int) -> int:
    if sampling_ratio > 0:
        return int(sampling_ratio)
    v = np.ceil(bin_size)
    if not v > 0:
        return 0
    return int(min(v, MAX_GRID))


class _Axis(NamedTuple):
    """Samples of one axis: arrays [P, G] (bin p, sample i)."""

    valid: np.ndarray  # in range
    lo: np.ndarray  # yl (0 where not valid)
    hi: np.ndarray  # yh
    l: np.ndarray  # ly
    h: np.ndarray  # hy


def _coords(start, bin_size, P: int, grid: int, T) -> np.ndarray:
    """``(start + T(p)*bin) + (T(float32(i) + 0.5f)*bin) / T(grid)`` as an array [P, G]."""
    p = np.arange(P).astype(T)[:, None]  # [P, 1]
    f = (np.arange(grid).astype(np.float32) + np.float32(0.5)).astype(T)[None, :]  # T(i + 0.5f)
    with np.errstate(all="ignore"):
        return (start + p * bin_size) + (f * bin_size) / T(grid)


def _taps(c: np.ndarray, size: int, T) -> _Axis:
    """The bilinear taps of coordinates ``c`` (any shape) on an axis of ``size`` pixels: in range
    iff ``-1 <= c <= size`` (NaN never is), clamped as documented above. Shared with
    roi_align_rotated (detkernels/reference/roi_align_rotated.py)."""
    with np.errstate(all="ignore"):
        valid = (c >= T(-1)) & (c <= T(size)) & (size > 0)
        c = np.where(valid, c, T(0))
        c = np.where(c <= T(0), T(0), c)
        lo = c.astype(np.int64)
        top = lo >= size - 1
        lo = np.where(top, size - 1, lo)
        hi = np.where(top, size - 1, lo + 1)
        c = np.where(top, lo.astype(T), c)
        l = c - lo.astype(T)
        h = T(1) - l
    lo = np.where(valid, lo, 0)
    hi = np.where(valid, hi, 0)
    return _Axis(valid, lo, hi, l.astype(T), h.astype(T))


def _axis(start, bin_size, P: int, grid: int, size: int, T) -> _Axis:
    return _taps(_coords(start, bin_size, P, grid, T), size, T)


class _Roi(NamedTuple):
    batch: int | None
    ys: _Axis
    xs: _Axis
    count: object  # T(gh * gw)
    gh: int
    gw: int


def _geometry(roi, T, n_images, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, ps) -> _Roi:
    ss = T(spatial_scale)
    off = T(0.5) if (aligned or ps) else T(0)
    with np.errstate(all="ignore"):
        x1s = roi[1] * ss - off
        y1s = roi[2] * ss - off
        x2s = roi[3] * ss - off
        y2s = roi[4] * ss - off
        roi_w = x2s - x1s
        roi_h = y2s - y1s
        if not ps and not aligned:
            roi_w = T(1) if roi_w < T(1) else roi_w  # std::max(roi_w, 1): NaN stays NaN
            roi_h = T(1) if roi_h < T(1) else roi_h
        bin_w = roi_w / T(PW)
        bin_h = roi_h / T(PH)
    gh, gw = _grid(bin_h, sampling_ratio), _grid(bin_w, sampling_ratio)
    b = batch_index(roi[0], n_images)
    ys = _axis(y1s, bin_h, PH, gh, H, T)
    xs = _axis(x1s, bin_w, PW, gw, W, T)
    return _Roi(b, ys, xs, T(gh * gw), gh, gw)


def _channels(C_out: int, PH: int, PW: int, ps: bool) -> np.ndarray:
    """Input channel read by output [c, ph, pw], broadcastable to [C_out, PH, PW]."""
    c = np.arange(C_out)[:, None, None]
    if not ps:
        return c
    return (c * PH + np.arange(PH)[None, :, None]) * PW + np.arange(PW)[None, None, :]


def _prepare(input, rois, roi_cols: int = 5):
    """(input, rois, T) in the working dtype T; rois [K, roi_cols] (roi_align_rotated: 6)."""
    x = np.asarray(input)
    r = np.asarray(rois)
    if x.ndim != 4:
        raise ValueError(f"input must have shape [N, C, H, W], got {x.shape}")
    if r.ndim != 2 or r.shape[1] != roi_cols:
        raise ValueError(f"rois must have shape [K, {roi_cols}], got {r.shape}")
    T = working_dtype(x.dtype).type
    return x.astype(T, copy=False), r.astype(T, copy=False), T


def _forward(input, rois, spatial_scale, PH, PW, sampling_ratio, aligned, ps):
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    out_dtype = np.asarray(input).dtype
    x, r, T = _prepare(input, rois)
    N, C, H, W = x.shape
    C_out = C // (PH * PW) if ps else C
    chan = _channels(C_out, PH, PW, ps)
    out = np.zeros((r.shape[0], C_out, PH, PW), T)
    for n in range(r.shape[0]):
        g = _geometry(r[n], T, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, ps)
        if g.batch is None or g.gh == 0 or g.gw == 0:
            continue
        v = x[g.batch]
        acc = np.zeros((C_out, PH, PW), T)
        ys, xs = g.ys, g.xs
        for iy in np.flatnonzero(ys.valid.any(axis=0)):
            yl, yh = ys.lo[:, iy, None], ys.hi[:, iy, None]  # [PH, 1]
            ly, hy = ys.l[:, iy, None], ys.h[:, iy, None]
            for ix in np.flatnonzero(xs.valid.any(axis=0)):
                xl, xh = xs.lo[None, :, ix], xs.hi[None, :, ix]  # [1, PW]
                lx, hx = xs.l[None, :, ix], xs.h[None, :, ix]
                w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx  # [PH, PW]
                s = ((w1 * v[chan, yl, xl] + w2 * v[chan, yl, xh]) + w3 * v[chan, yh, xl]) + w4 * v[chan, yh, xh]
                m = ys.valid[:, iy, None] & xs.valid[None, :, ix]
                acc = np.where(m, acc + s, acc)  # [C_out, PH, PW]
        out[n] = acc / g.count
    return out.astype(out_dtype) if out_dtype == np.float16 else out


def _scatter_in_order(keys: np.ndarray, values: np.ndarray, n_keys: int) -> np.ndarray:
    """``acc[k] = ((+0 + v_a) + v_b) + ...`` over the rows with key k, in row order.

    keys [M] int64, values [M, C] -> acc [n_keys, C]. Rows are stably sorted by key once; then the
    r-th contribution of every key is added in round r (rows of one round have distinct keys).
    """
    acc = np.zeros((n_keys, values.shape[1]), values.dtype)
    if keys.size == 0:
        return acc
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    seg_len = np.diff(np.r_[start, k.size])
    rank = np.arange(k.size) - np.repeat(start, seg_len)
    for r in range(int(seg_len.max())):
        sel = rank == r
        acc[k[sel]] += values[order[sel]]
    return acc


def _backward(grad, rois, spatial_scale, PH, PW, batch_size, channels, height, width,
              sampling_ratio, aligned, ps):
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    out_dtype = np.asarray(grad).dtype
    T = working_dtype(out_dtype).type
    gr = np.asarray(grad).astype(T, copy=False)
    r = np.asarray(rois).astype(T, copy=False)
    N, C, H, W = batch_size, channels, height, width
    nb = PH * PW if ps else 1  # input channel = c_out * nb + bin id (bin id = ph*PW + pw for ps)
    C_out = C // nb
    keys, vals = [], []
    for n in range(r.shape[0]):
        g = _geometry(r[n], T, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, ps)
        if g.batch is None or g.gh == 0 or g.gw == 0:
            continue
        # Only sample columns with an in-range sample in some bin (order kept: ascending).
        ys = _Axis(*(a[:, np.flatnonzero(g.ys.valid.any(axis=0))] for a in g.ys))
        xs = _Axis(*(a[:, np.flatnonzero(g.xs.valid.any(axis=0))] for a in g.xs))
        GY, GX = ys.valid.shape[1], xs.valid.shape[1]
        # Rows in the order (ph, pw, iy, ix, k): index arrays of shape [PH, PW, GY, GX, 4].
        vy = ys.valid[:, None, :, None]
        vx = xs.valid[None, :, None, :]
        m = np.broadcast_to(vy & vx, (PH, PW, GY, GX))
        yl, yh, ly, hy = (a[:, None, :, None] for a in (ys.lo, ys.hi, ys.l, ys.h))
        xl, xh, lx, hx = (a[None, :, None, :] for a in (xs.lo, xs.hi, xs.l, xs.h))
        shape = (PH, PW, GY, GX)
        ty = np.stack([np.broadcast_to(a, shape) for a in (yl, yl, yh, yh)], axis=-1)
        tx = np.stack([np.broadcast_to(a, shape) for a in (xl, xh, xl, xh)], axis=-1)
        w = np.stack([np.broadcast_to(a, shape) for a in (hy * hx, hy * lx, ly * hx, ly * lx)], axis=-1)
        ph, pw = np.meshgrid(np.arange(PH), np.arange(PW), indexing="ij")
        binid = (ph * PW + pw) if ps else np.zeros_like(ph)
        binid = np.broadcast_to(binid[:, :, None, None, None], w.shape)
        m = np.broadcast_to(m[..., None], w.shape)
        # Gradient rows: grad[n, :, ph, pw] for the bin of each contribution.
        gb = gr[n].reshape(C_out, PH * PW).T  # [PH*PW, C_out]
        bidx = np.broadcast_to((ph * PW + pw)[:, :, None, None, None], w.shape)[m]
        with np.errstate(all="ignore"):
            vals.append((gb[bidx] * w[m][:, None]) / g.count)
        keys.append(((g.batch * nb + binid[m]) * H + ty[m]) * W + tx[m])
    n_keys = N * nb * H * W
    if keys:
        acc = _scatter_in_order(np.concatenate(keys), np.concatenate(vals), n_keys)
    else:
        acc = np.zeros((n_keys, C_out), T)
    # acc[(b, bin, y, x), c_out] -> grad_input[b, c_out*nb + bin, y, x]
    gi = acc.reshape(N, nb, H, W, C_out).transpose(0, 4, 1, 2, 3).reshape(N, C, H, W)
    gi = np.ascontiguousarray(gi)
    return gi.astype(out_dtype) if out_dtype == np.float16 else gi


def roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
              sampling_ratio: int, aligned: bool) -> np.ndarray:
    """``input`` [N, C, H, W], ``rois`` [K, 5] -> [K, C, PH, PW] (T; float16 in -> float16 out)."""
    return _forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, False)


def roi_align_backward(grad, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                       batch_size: int, channels: int, height: int, width: int,
                       sampling_ratio: int, aligned: bool) -> np.ndarray:
    """``grad`` [K, C, PH, PW] -> grad_input [N, C, H, W] in the order documented above."""
    return _backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                     height, width, sampling_ratio, aligned, False)


def ps_roi_align(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                 sampling_ratio: int) -> np.ndarray:
    """Position-sensitive RoIAlign: [N, C, H, W] -> [K, C/(PH*PW), PH, PW]."""
    return _forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, True, True)


def ps_roi_align_backward(grad, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                          sampling_ratio: int, batch_size: int, channels: int, height: int,
                          width: int) -> np.ndarray:
    """``grad`` [K, C/(PH*PW), PH, PW] -> grad_input [N, C, H, W]."""
    return _backward(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                     height, width, sampling_ratio, True, True)
