"""NumPy reference (the specification) of ``roi_align_rotated``, forward and backward.

Semantics: detectron2's ``ROIAlignRotated`` (always aligned) and mmcv's ``roi_align_rotated``
(``aligned`` and ``clockwise`` flags), operation for operation, with roi_align's fixes
(docs/SPEC.md §1.3) and one deterministic sin/cos. The angle is in **degrees**, counter-clockwise
positive (detectron2's unit; mmcv's rois carry radians: pass ``angle * 180 / pi``). Working type T:
float64 for float64 features, float32 otherwise (half features widened, result rounded once).

Geometry of RoI ``n`` (rois ``[K, 6]`` = ``(batch, cx, cy, w, h, angle)``), ``ss = T(spatial_scale)``::

    off = T(0.5) if aligned else T(0)
    cx' = cx*ss - off ;  cy' = cy*ss - off ;  roi_w = w*ss ;  roi_h = h*ss
    not aligned: roi_w = std::max(roi_w, T(1)) ; roi_h likewise          (NaN stays NaN)
    theta = -angle if clockwise else angle
    (s, c) = T(sincos_deg(float64(theta)))                              (below)
    bin_w = roi_w / T(PW) ;  bin_h = roi_h / T(PH)
    gw = sampling_ratio if sampling_ratio > 0 else grid(ceil(bin_w))     gh likewise
    grid(v) = 0 if not v > 0 (NaN, <= 0) ; min(v, MAX_GRID_ROTATED = 256) otherwise
    yy(ph, iy) = (-roi_h/T(2) + T(ph)*bin_h) + (T(float32(iy) + 0.5f) * bin_h) / T(gh)   xx likewise
    y = (yy*c - xx*s) + cy' ;  x = (yy*s + xx*c) + cx'

The taps of ``(y, x)`` follow roi_align's rule exactly (``reference.roi_align._taps``: in range
iff ``-1 <= y <= H`` and ``-1 <= x <= W``, NaN never; clamp; ``w1 = hy*hx ...``;
``sample = ((w1*v1 + w2*v2) + w3*v3) + w4*v4``). ``out[n, c, ph, pw] = acc / T(gh*gw)``,
``acc = T(0) + sample + ...`` over the in-range samples, ``iy`` outer, ``ix`` inner; RoIs whose
batch index names no image, and zero-sample grids, give 0 (as roi_align).

``MAX_GRID_ROTATED``: the samples of a rotated bin do not factor into two axes, so the adaptive grid
is capped at 256 per axis (65536 samples per bin, the most an explicit ``sampling_ratio`` gives)
instead of roi_align's 65536 per axis; detectron2/mmcv sample more only for bins over 256 feature
pixels wide.

``sincos_deg(a)`` (float64 operations in this order; every step but the last two is exact)::

    r = fmod(|a|, 360)                      # NaN/inf -> NaN
    if r >= 180: r = r - 180 ; half = True  # sin, cos -> -sin, -cos
    if r >= 90:  r = r - 90 ; quarter = True  # (sin, cos) -> (cos, -sin)
    if r > 45:   r = 90 - r ; mirror = True   # swap sin and cos
    x = r * 0.017453292519943295 ; x2 = x*x
    ps = SIN[0] ; ps = ps*x2 + SIN[k] (k = 1..7) ; st = x + (x*x2)*ps
    pc = COS[0] ; pc = pc*x2 + COS[k] (k = 1..7) ; ct = 1 + x2*pc
    (s, c) = (ct, st) if mirror else (st, ct) ; then quarter, half ; a < 0: s = -s

``SIN``/``COS``: the doubles nearest ``±1/k!`` (Taylor, to x^17 and x^16). Multiples of 90 degrees
are exact; elsewhere ``|error| <= 2e-16`` (about 1 ulp; libm differs from it by up to 1 ulp) (tests/ops/test_roi_align_rotated.py).

Backward: each in-range sample (n, ph, pw, iy, ix) sends, for its taps k = 1..4 in order,
``(grad[n, c, ph, pw] * w_k) / T(gh*gw)`` to ``grad_input[b, c, y_k, x_k]``; contributions to one
element are summed left to right from +0 in the order **(n, ph, pw, iy, ix, k)**.
"""
from __future__ import annotations

import numpy as np

from .roi_align import _coords, _scatter_in_order, _taps, batch_index, check_sampling_ratio, working_dtype
from .roi_align import _prepare as _prepare_rois

__all__ = ["MAX_GRID_ROTATED", "sincos_deg", "roi_align_rotated", "roi_align_rotated_backward"]

MAX_GRID_ROTATED = 256

_SIN = (2.8114572543455206e-15, -7.647163731819816e-13, 1.6059043836821613e-10,
        -2.505210838544172e-08, 2.7557319223985893e-06, -0.0001984126984126984,
        0.008333333333333333, -0.16666666666666666)
_COS = (4.779477332387385e-14, -1.1470745597729725e-11, 2.08767569878681e-09,
        -2.755731922398589e-07, 2.48015873015873e-05, -0.001388888888888889,
        0.041666666666666664, -0.5)
_DEG2RAD = 0.017453292519943295


def sincos_deg(a) -> tuple[np.ndarray, np.ndarray]:
    """``(sin, cos)`` of ``a`` degrees (any shape), float64, bit-identical to csrc's sincos_deg."""
    a = np.asarray(a, np.float64)
    with np.errstate(all="ignore"):
        neg = a < 0.0
        r = np.fmod(np.where(neg, -a, a), 360.0)
        half = r >= 180.0
        r = np.where(half, r - 180.0, r)
        quarter = r >= 90.0
        r = np.where(quarter, r - 90.0, r)
        mirror = r > 45.0
        r = np.where(mirror, 90.0 - r, r)
        x = r * _DEG2RAD
        x2 = x * x
        ps = np.full_like(x, _SIN[0])
        for k in _SIN[1:]:
            ps = ps * x2 + k
        st = x + (x * x2) * ps
        pc = np.full_like(x, _COS[0])
        for k in _COS[1:]:
            pc = pc * x2 + k
        ct = 1.0 + x2 * pc
    s, c = np.where(mirror, ct, st), np.where(mirror, st, ct)
    s, c = np.where(quarter, c, s), np.where(quarter, -s, c)
    s, c = np.where(half, -s, s), np.where(half, -c, c)
    s = np.where(neg, -s, s)
    return s, c


def _grid(bin_size, sampling_ratio: int) -> int:
    if sampling_ratio > 0:
        return int(sampling_ratio)
    v = np.ceil(bin_size)
    if not v > 0:
        return 0
    return int(min(v, MAX_GRID_ROTATED))


def _samples(roi, T, n_images, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, clockwise):
    """(batch, count, ys, xs, valid) with ys/xs roi_align ``_Axis`` taps of shape [PH, PW, gh, gw];
    None when the RoI reads nothing."""
    ss = T(spatial_scale)
    off = T(0.5) if aligned else T(0)
    with np.errstate(all="ignore"):
        cx = roi[1] * ss - off
        cy = roi[2] * ss - off
        roi_w = roi[3] * ss
        roi_h = roi[4] * ss
        if not aligned:
            roi_w = T(1) if roi_w < T(1) else roi_w  # std::max(roi_w, 1): NaN stays NaN
            roi_h = T(1) if roi_h < T(1) else roi_h
        theta = -roi[5] if clockwise else roi[5]
        s, c = sincos_deg(np.float64(theta))
        s, c = T(s), T(c)
        bin_w = roi_w / T(PW)
        bin_h = roi_h / T(PH)
    gh, gw = _grid(bin_h, sampling_ratio), _grid(bin_w, sampling_ratio)
    b = batch_index(roi[0], n_images)
    if b is None or gh == 0 or gw == 0:
        return None
    with np.errstate(all="ignore"):
        yy = _coords(-roi_h / T(2), bin_h, PH, gh, T)[:, None, :, None]  # [PH, 1, gh, 1]
        xx = _coords(-roi_w / T(2), bin_w, PW, gw, T)[None, :, None, :]  # [1, PW, 1, gw]
        y = (yy * c - xx * s) + cy
        x = (yy * s + xx * c) + cx
    ys, xs = _taps(y, H, T), _taps(x, W, T)
    return b, T(gh * gw), ys, xs, ys.valid & xs.valid


def _prepare(input, rois):
    return _prepare_rois(input, rois, 6)


def roi_align_rotated(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                      sampling_ratio: int, aligned: bool, clockwise: bool) -> np.ndarray:
    """``input`` [N, C, H, W], ``rois`` [K, 6] -> [K, C, PH, PW] (T; float16 in -> float16 out)."""
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    out_dtype = np.asarray(input).dtype
    x, r, T = _prepare(input, rois)
    N, C, H, W = x.shape
    PH, PW = int(pooled_height), int(pooled_width)
    out = np.zeros((r.shape[0], C, PH, PW), T)
    for n in range(r.shape[0]):
        g = _samples(r[n], T, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, clockwise)
        if g is None:
            continue
        b, count, ys, xs, m = g
        v = x[b]
        # In-range samples in the order (ph, pw, iy, ix); key = bin.
        sel = np.nonzero(m)
        yl, yh, ly, hy = ys.lo[sel], ys.hi[sel], ys.l[sel], ys.h[sel]
        xl, xh, lx, hx = xs.lo[sel], xs.hi[sel], xs.l[sel], xs.h[sel]
        w1, w2, w3, w4 = hy * hx, hy * lx, ly * hx, ly * lx
        with np.errstate(all="ignore"):
            smp = ((w1 * v[:, yl, xl] + w2 * v[:, yl, xh]) + w3 * v[:, yh, xl]) + w4 * v[:, yh, xh]  # [C, M]
        keys = sel[0] * PW + sel[1]
        acc = _scatter_in_order(keys, np.ascontiguousarray(smp.T), PH * PW)  # [PH*PW, C]
        out[n] = (acc.T / count).reshape(C, PH, PW)
    return out.astype(out_dtype) if out_dtype == np.float16 else out


def roi_align_rotated_backward(grad, rois, spatial_scale: float, pooled_height: int,
                               pooled_width: int, batch_size: int, channels: int, height: int,
                               width: int, sampling_ratio: int, aligned: bool,
                               clockwise: bool) -> np.ndarray:
    """``grad`` [K, C, PH, PW] -> grad_input [N, C, H, W] in the order documented above."""
    sampling_ratio = check_sampling_ratio(sampling_ratio)
    out_dtype = np.asarray(grad).dtype
    T = working_dtype(out_dtype).type
    gr = np.asarray(grad).astype(T, copy=False)
    r = np.asarray(rois).astype(T, copy=False)
    if r.ndim != 2 or r.shape[1] != 6:
        raise ValueError(f"rois must have shape [K, 6], got {r.shape}")
    N, C, H, W = int(batch_size), int(channels), int(height), int(width)
    PH, PW = int(pooled_height), int(pooled_width)
    keys, vals = [], []
    for n in range(r.shape[0]):
        g = _samples(r[n], T, N, H, W, spatial_scale, PH, PW, sampling_ratio, aligned, clockwise)
        if g is None:
            continue
        b, count, ys, xs, m = g
        sel = np.nonzero(m)
        yl, yh, ly, hy = ys.lo[sel], ys.hi[sel], ys.l[sel], ys.h[sel]
        xl, xh, lx, hx = xs.lo[sel], xs.hi[sel], xs.l[sel], xs.h[sel]
        w = np.stack([hy * hx, hy * lx, ly * hx, ly * lx], axis=-1)  # [M, 4], rows (ph, pw, iy, ix)
        ty = np.stack([yl, yl, yh, yh], axis=-1)
        tx = np.stack([xl, xh, xl, xh], axis=-1)
        gb = gr[n].reshape(C, PH * PW).T  # [PH*PW, C]
        bins = np.repeat(sel[0] * PW + sel[1], 4)
        with np.errstate(all="ignore"):
            vals.append((gb[bins] * w.reshape(-1)[:, None]) / count)
        keys.append((b * H + ty.reshape(-1)) * W + tx.reshape(-1))
    n_keys = N * H * W
    if keys:
        acc = _scatter_in_order(np.concatenate(keys), np.concatenate(vals), n_keys)
    else:
        acc = np.zeros((n_keys, C), T)
    gi = np.ascontiguousarray(acc.reshape(N, H, W, C).transpose(0, 3, 1, 2))
    return gi.astype(out_dtype) if out_dtype == np.float16 else gi
