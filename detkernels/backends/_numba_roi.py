"""Numba CPU (``@njit``) kernels of roi_align / ps_roi_align and roi_pool / ps_roi_pool, forward and
backward, bit-exact with ``detkernels/reference/roi_align.py`` and ``roi_pool.py`` (their docstrings
give the arithmetic; this file mirrors csrc/ops/roi_align and csrc/ops/roi_pool operation for
operation).

One kernel set per working type T (float32 or float64) built by ``kernels(T)``: T is a closure
constant, so every literal is written ``T(...)`` and no float32 expression is silently promoted to
float64. ``fastmath=False`` keeps IEEE rounding, no contraction; ``error_model="numpy"`` makes 0/0 NaN.

Adaptive sampling grids can hold up to MAX_GRID (65536) samples per axis and bin; only the in-range
samples are visited (per axis, per bin, in ascending order), which keeps the summation order of
the reference while skipping the out-of-range ones (they contribute exactly 0).
"""
from __future__ import annotations

import numba
import numpy as np

from ..reference.roi_align import MAX_GRID

_JIT = dict(fastmath=False, error_model="numpy", nogil=True, cache=False)
_LIM = float(2**31)
_CACHE: dict = {}


def kernels(T):
    """(roi_align_fwd, roi_align_bwd, roi_pool_fwd, roi_pool_bwd) compiled for working type T."""
    T = np.dtype(T).type
    if T not in _CACHE:
        _CACHE[T] = _build(T)
    return _CACHE[T]


def _build(T):
    njit = numba.njit(**_JIT)
    f32 = np.float32

    @njit
    def batch_index(v, n_images):
        if not (v > T(-1) and v < T(n_images)):
            return -1
        return int(v)

    @njit
    def grid(bin_size, sampling_ratio):
        if sampling_ratio > 0:
            return sampling_ratio
        v = np.ceil(bin_size)  # math.ceil would return an int (NaN/inf cannot be one)
        if not v > T(0):
            return 0
        return int(min(v, T(MAX_GRID)))

    @njit
    def axis(start, bin_size, P, G, size, cnt, idx, lo, hi, l, h):
        """Per bin p: cnt[p] in-range samples, idx[p, :cnt[p]] their i (ascending) and taps."""
        for p in range(P):
            k = 0
            for i in range(G):
                f = T(f32(i) + f32(0.5))
                c = (start + T(p) * bin_size) + (f * bin_size) / T(G)
                if not (c >= T(-1) and c <= T(size) and size > 0):
                    continue
                if c <= T(0):
                    c = T(0)
                a = int(c)
                if a >= size - 1:
                    a = size - 1
                    b = size - 1
                    c = T(a)
                else:
                    b = a + 1
                ll = c - T(a)
                idx[p, k] = i
                lo[p, k] = a
                hi[p, k] = b
                l[p, k] = ll
                h[p, k] = T(1) - ll
                k += 1
            cnt[p] = k

    @njit
    def geometry(roi, ss, PH, PW, sampling_ratio, aligned, ps):
        off = T(0.5) if (aligned or ps) else T(0)
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
        return x1s, y1s, bin_w, bin_h, grid(bin_h, sampling_ratio), grid(bin_w, sampling_ratio)

    @njit
    def align_setup(roi, ss, N, H, W, PH, PW, sampling_ratio, aligned, ps):
        x1s, y1s, bin_w, bin_h, gh, gw = geometry(roi, ss, PH, PW, sampling_ratio, aligned, ps)
        b = batch_index(roi[0], N)
        ycnt = np.zeros(PH, np.int64)
        xcnt = np.zeros(PW, np.int64)
        yl = np.zeros((PH, gh), np.int64)
        yh = np.zeros((PH, gh), np.int64)
        ly = np.zeros((PH, gh), T)
        hy = np.zeros((PH, gh), T)
        xl = np.zeros((PW, gw), np.int64)
        xh = np.zeros((PW, gw), np.int64)
        lx = np.zeros((PW, gw), T)
        hx = np.zeros((PW, gw), T)
        iy = np.zeros((PH, gh), np.int64)
        ix = np.zeros((PW, gw), np.int64)
        if b >= 0 and gh > 0 and gw > 0:
            axis(y1s, bin_h, PH, gh, H, ycnt, iy, yl, yh, ly, hy)
            axis(x1s, bin_w, PW, gw, W, xcnt, ix, xl, xh, lx, hx)
        return b, gh, gw, ycnt, yl, yh, ly, hy, xcnt, xl, xh, lx, hx

    @njit
    def align_fwd(x, rois, ss, PH, PW, sampling_ratio, aligned, ps, out):
        N, C, H, W = x.shape
        K, Co = out.shape[0], out.shape[1]
        for n in range(K):
            b, gh, gw, ycnt, yl, yh, ly, hy, xcnt, xl, xh, lx, hx = align_setup(
                rois[n], ss, N, H, W, PH, PW, sampling_ratio, aligned, ps)
            if b < 0 or gh == 0 or gw == 0:
                continue  # out is zero-filled
            count = T(gh * gw)
            for c in range(Co):
                for ph in range(PH):
                    for pw in range(PW):
                        ci = (c * PH + ph) * PW + pw if ps else c
                        acc = T(0)
                        for a in range(ycnt[ph]):
                            for e in range(xcnt[pw]):
                                w1 = hy[ph, a] * hx[pw, e]
                                w2 = hy[ph, a] * lx[pw, e]
                                w3 = ly[ph, a] * hx[pw, e]
                                w4 = ly[ph, a] * lx[pw, e]
                                s = (((w1 * x[b, ci, yl[ph, a], xl[pw, e]] + w2 * x[b, ci, yl[ph, a], xh[pw, e]])
                                      + w3 * x[b, ci, yh[ph, a], xl[pw, e]]) + w4 * x[b, ci, yh[ph, a], xh[pw, e]])
                                acc = acc + s
                        out[n, c, ph, pw] = acc / count

    @njit
    def align_bwd(g, rois, ss, PH, PW, sampling_ratio, aligned, ps, gi):
        """Sequential in the order (n, ph, pw, iy, ix, tap); channels inside (they never share a
        target), so every element of gi sums its contributions in the reference's order."""
        N, C, H, W = gi.shape
        K, Co = g.shape[0], g.shape[1]
        for n in range(K):
            b, gh, gw, ycnt, yl, yh, ly, hy, xcnt, xl, xh, lx, hx = align_setup(
                rois[n], ss, N, H, W, PH, PW, sampling_ratio, aligned, ps)
            if b < 0 or gh == 0 or gw == 0:
                continue
            count = T(gh * gw)
            for ph in range(PH):
                for pw in range(PW):
                    for a in range(ycnt[ph]):
                        for e in range(xcnt[pw]):
                            w1 = hy[ph, a] * hx[pw, e]
                            w2 = hy[ph, a] * lx[pw, e]
                            w3 = ly[ph, a] * hx[pw, e]
                            w4 = ly[ph, a] * lx[pw, e]
                            y0, y1, x0, x1 = yl[ph, a], yh[ph, a], xl[pw, e], xh[pw, e]
                            for c in range(Co):
                                ci = (c * PH + ph) * PW + pw if ps else c
                                d = g[n, c, ph, pw]
                                gi[b, ci, y0, x0] += (d * w1) / count
                                gi[b, ci, y0, x1] += (d * w2) / count
                                gi[b, ci, y1, x0] += (d * w3) / count
                                gi[b, ci, y1, x1] += (d * w4) / count

    @njit
    def c_round(v):
        t = np.trunc(v)  # math.trunc would return an int
        if abs(v - t) >= T(0.5):
            return t + (T(1) if v > T(0) else T(-1))
        return t

    @njit
    def coord(v):
        """(ok, int): C round, NaN -> not ok, clamped to [-2**31, 2**31]."""
        r = c_round(v)
        if r != r:
            return False, 0
        rf = min(max(float(r), -_LIM), _LIM)
        return True, int(rf)

    @njit
    def pool_bins(roi, ss, PH, PW, H, W, ps, hs, ws):
        """Fills hs [PH, 2], ws [PW, 2]; False when the RoI has no pixels (NaN coordinate)."""
        o1, sw = coord(roi[1] * ss)
        o2, sh = coord(roi[2] * ss)
        o3, ew = coord(roi[3] * ss)
        o4, eh = coord(roi[4] * ss)
        if not (o1 and o2 and o3 and o4):
            return False
        extra = 0 if ps else 1
        roi_w = max(ew - sw + extra, 1)
        roi_h = max(eh - sh + extra, 1)
        bin_h = T(roi_h) / T(PH)
        bin_w = T(roi_w) / T(PW)
        hi_h = H - 1 if ps else H
        hi_w = W - 1 if ps else W
        for p in range(PH):
            hs[p, 0] = min(max(int(np.floor(T(p) * bin_h)) + sh, 0), hi_h)
            hs[p, 1] = min(max(int(np.ceil(T(p + 1) * bin_h)) + sh, 0), hi_h)
        for p in range(PW):
            ws[p, 0] = min(max(int(np.floor(T(p) * bin_w)) + sw, 0), hi_w)
            ws[p, 1] = min(max(int(np.ceil(T(p + 1) * bin_w)) + sw, 0), hi_w)
        return True

    @njit
    def pool_fwd(x, rois, ss, PH, PW, ps, out, idx):
        """out zero-filled; idx pre-filled (-1 for roi_pool, the channel map for ps_roi_pool)."""
        N, C, H, W = x.shape
        K, Co = out.shape[0], out.shape[1]
        hs = np.zeros((PH, 2), np.int64)
        ws = np.zeros((PW, 2), np.int64)
        neg = -T(3.4028234663852886e38)  # T(-FLT_MAX)
        for n in range(K):
            b = batch_index(rois[n, 0], N)
            if b < 0 or not pool_bins(rois[n], ss, PH, PW, H, W, ps, hs, ws):
                continue
            for c in range(Co):
                for ph in range(PH):
                    for pw in range(PW):
                        h0, h1, w0, w1 = hs[ph, 0], hs[ph, 1], ws[pw, 0], ws[pw, 1]
                        if h1 <= h0 or w1 <= w0:
                            continue
                        if ps:
                            ci = (c * PH + ph) * PW + pw
                            s = T(0)
                            for hh in range(h0, h1):
                                for ww in range(w0, w1):
                                    s = s + x[b, ci, hh, ww]
                            out[n, c, ph, pw] = s / T((h1 - h0) * (w1 - w0))
                        else:
                            m = neg
                            a = -1
                            for hh in range(h0, h1):
                                for ww in range(w0, w1):
                                    v = x[b, c, hh, ww]
                                    if v > m:
                                        m = v
                                        a = hh * W + ww
                            out[n, c, ph, pw] = m
                            idx[n, c, ph, pw] = a

    @njit
    def pool_bwd(g, rois, am, ss, PH, PW, ps, gi):
        N, C, H, W = gi.shape
        K, Co = g.shape[0], g.shape[1]
        hs = np.zeros((PH, 2), np.int64)
        ws = np.zeros((PW, 2), np.int64)
        for n in range(K):
            b = batch_index(rois[n, 0], N)
            if b < 0:
                continue
            if not ps:
                for ph in range(PH):
                    for pw in range(PW):
                        for c in range(Co):
                            a = am[n, c, ph, pw]
                            if a >= 0:
                                gi[b, c, a // W, a % W] += g[n, c, ph, pw]
                continue
            if not pool_bins(rois[n], ss, PH, PW, H, W, ps, hs, ws):
                continue
            for ph in range(PH):
                for pw in range(PW):
                    h0, h1, w0, w1 = hs[ph, 0], hs[ph, 1], ws[pw, 0], ws[pw, 1]
                    if h1 <= h0 or w1 <= w0:
                        continue
                    area = T((h1 - h0) * (w1 - w0))
                    for c in range(Co):
                        ci = (c * PH + ph) * PW + pw
                        d = g[n, c, ph, pw] / area
                        for hh in range(h0, h1):
                            for ww in range(w0, w1):
                                gi[b, ci, hh, ww] += d

    return align_fwd, align_bwd, pool_fwd, pool_bwd
