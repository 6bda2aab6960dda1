"""Numba CPU (``@njit(parallel=True)``) kernels of roi_align / ps_roi_align and roi_pool / ps_roi_pool,
forward and backward, bit-exact with ``detkernels/reference/roi_align.py`` and ``roi_pool.py``.

The arithmetic is roi_math.py's (shared with the numba.cuda kernels of roi_cuda.py);
this file holds only loops, tables and indexing. ``fastmath=False`` keeps IEEE rounding and no
contraction; ``error_model="numpy"`` makes 0/0 NaN.

Threads (numba ``prange``); every element of an output is written by exactly one thread, in the
reference's order, so results do not depend on the thread count:

* forward: RoIs in parallel; per RoI, the in-range samples of each bin are tabulated once
  (sample_range: only the in-range ones, so adaptive grids of up to 65536 samples cost nothing
  outside the map) and shared by every channel. roi_align also has channels-last kernels (the
  channel loop innermost and contiguous, so LLVM vectorises it), used when the features already
  are channels-last or the bins outnumber the map's pixels (_use_nhwc); same bytes either way.
* backward: output channels in parallel (``nchunks`` contiguous channel ranges). A channel's
  gradient goes to its own input channels only (ps: input channel (c*PH + ph)*PW + pw), so each
  thread owns whole input planes and visits the RoIs in index order, then bins, samples and taps
  in the reference's order (n, ph, pw, iy, ix, k) -- the summation order of every element. The
  per-RoI tables are rebuilt by each thread (cheap next to the scatter).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import prange

from . import cpu as _cpu
from . import box_math as M
from . import roi_math as R

_JIT = dict(fastmath=False, error_model="numpy", nogil=True)
_CACHE: dict = {}


def axis_table(start, bin_size, P, G, size):
    """Per bin p: cnt[p] in-range samples and their taps lo/hi [P, max cnt], factors l/h."""
    cnt = np.zeros(P, np.int64)
    first = np.zeros(P, np.int64)
    m = 0
    for p in range(P):
        i0, i1 = sample_range(start, bin_size, p, G, size)
        first[p] = i0
        cnt[p] = i1 - i0
        m = max(m, i1 - i0)
    lo = np.empty((P, m), np.int64)
    hi = np.empty((P, m), np.int64)
    l = np.empty((P, m), TT)
    h = np.empty((P, m), TT)
    for p in range(P):
        for k in range(cnt[p]):
            lo[p, k], hi[p, k], l[p, k], h[p, k] = tap_at(start, bin_size, p, first[p] + k, G, size)
    return cnt, lo, hi, l, h


def align_fwd(x, rois, ss, PH, PW, sampling_ratio, aligned, ps, out):
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    K, Co = out.shape[0], out.shape[1]
    for n in prange(K):
        b = batch_index(rois[n, 0], N)
        x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4],
                                                        ss, PH, PW, sampling_ratio, aligned, ps)
        if b < 0 or gh == 0 or gw == 0:
            out[n] = ZERO  # the RoI reads nothing
            continue
        count = align_sample_count(gh, gw)
        ny, ylo, yhi, ly, hy = axis_table(y1s, bin_h, PH, gh, H)
        nx, xlo, xhi, lx, hx = axis_table(x1s, bin_w, PW, gw, W)
        for c in range(Co):
            for ph in range(PH):
                for pw in range(PW):
                    ci = (c * PH + ph) * PW + pw if ps else c
                    acc = ZERO
                    for a in range(ny[ph]):
                        y0, y1 = ylo[ph, a], yhi[ph, a]
                        for e in range(nx[pw]):
                            x0, x1 = xlo[pw, e], xhi[pw, e]
                            w1, w2, w3, w4 = bilinear_weights(ly[ph, a], hy[ph, a], lx[pw, e], hx[pw, e])
                            acc = accumulate(acc, bilinear(w1, w2, w3, w4, x[b, ci, y0, x0], x[b, ci, y0, x1],
                                                           x[b, ci, y1, x0], x[b, ci, y1, x1]))
                    out[n, c, ph, pw] = average(acc, count)


def align_bwd(g, rois, ss, PH, PW, sampling_ratio, aligned, ps, nchunks, gi):
    """gi zero-filled; output channels [c0, c1) per chunk (see the module docstring)."""
    N, H, W = gi.shape[0], gi.shape[2], gi.shape[3]
    K, Co = g.shape[0], g.shape[1]
    for j in prange(nchunks):
        c0 = j * Co // nchunks
        c1 = (j + 1) * Co // nchunks
        if c0 == c1:
            continue
        for n in range(K):
            b = batch_index(rois[n, 0], N)
            x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3],
                                                            rois[n, 4], ss, PH, PW, sampling_ratio,
                                                            aligned, ps)
            if b < 0 or gh == 0 or gw == 0:
                continue
            count = align_sample_count(gh, gw)
            ny, ylo, yhi, ly, hy = axis_table(y1s, bin_h, PH, gh, H)
            nx, xlo, xhi, lx, hx = axis_table(x1s, bin_w, PW, gw, W)
            for ph in range(PH):
                for pw in range(PW):
                    for a in range(ny[ph]):
                        y0, y1 = ylo[ph, a], yhi[ph, a]
                        for e in range(nx[pw]):
                            x0, x1 = xlo[pw, e], xhi[pw, e]
                            w1, w2, w3, w4 = bilinear_weights(ly[ph, a], hy[ph, a], lx[pw, e], hx[pw, e])
                            for c in range(c0, c1):
                                ci = (c * PH + ph) * PW + pw if ps else c
                                d = g[n, c, ph, pw]
                                gi[b, ci, y0, x0] = accumulate(gi[b, ci, y0, x0], align_grad(d, w1, count))
                                gi[b, ci, y0, x1] = accumulate(gi[b, ci, y0, x1], align_grad(d, w2, count))
                                gi[b, ci, y1, x0] = accumulate(gi[b, ci, y1, x0], align_grad(d, w3, count))
                                gi[b, ci, y1, x1] = accumulate(gi[b, ci, y1, x1], align_grad(d, w4, count))


def align_fwd_nhwc(xt, rois, ss, PH, PW, sampling_ratio, aligned, out):
    """roi_align (not ps) on channels-last features xt [N, H, W, C]: the channel loop is innermost
    and contiguous (LLVM vectorises it); each output element still sums its samples in order."""
    N, H, W, C = xt.shape
    K = out.shape[0]
    for n in prange(K):
        b = batch_index(rois[n, 0], N)
        x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4],
                                                        ss, PH, PW, sampling_ratio, aligned, False)
        if b < 0 or gh == 0 or gw == 0:
            out[n] = ZERO  # the RoI reads nothing
            continue
        count = align_sample_count(gh, gw)
        ny, ylo, yhi, ly, hy = axis_table(y1s, bin_h, PH, gh, H)
        nx, xlo, xhi, lx, hx = axis_table(x1s, bin_w, PW, gw, W)
        acc = np.empty(C, TT)
        for ph in range(PH):
            for pw in range(PW):
                for c in range(C):
                    acc[c] = ZERO
                for a in range(ny[ph]):
                    y0, y1 = ylo[ph, a], yhi[ph, a]
                    for e in range(nx[pw]):
                        x0, x1 = xlo[pw, e], xhi[pw, e]
                        w1, w2, w3, w4 = bilinear_weights(ly[ph, a], hy[ph, a], lx[pw, e], hx[pw, e])
                        p1, p2, p3, p4 = xt[b, y0, x0], xt[b, y0, x1], xt[b, y1, x0], xt[b, y1, x1]
                        for c in range(C):
                            acc[c] = accumulate(acc[c], bilinear(w1, w2, w3, w4, p1[c], p2[c], p3[c], p4[c]))
                for c in range(C):
                    out[n, c, ph, pw] = average(acc[c], count)


def align_bwd_nhwc(g, rois, ss, PH, PW, sampling_ratio, aligned, nchunks, git):
    """roi_align (not ps) backward into channels-last git [N, H, W, C] (zero-filled): channel
    ranges in parallel, the contiguous channel loop innermost; order as align_bwd."""
    N, H, W, C = git.shape
    K = g.shape[0]
    for j in prange(nchunks):
        c0 = j * C // nchunks
        c1 = (j + 1) * C // nchunks
        if c0 == c1:
            continue
        gb = np.empty(c1 - c0, TT)
        for n in range(K):
            b = batch_index(rois[n, 0], N)
            x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3],
                                                            rois[n, 4], ss, PH, PW, sampling_ratio,
                                                            aligned, False)
            if b < 0 or gh == 0 or gw == 0:
                continue
            count = align_sample_count(gh, gw)
            ny, ylo, yhi, ly, hy = axis_table(y1s, bin_h, PH, gh, H)
            nx, xlo, xhi, lx, hx = axis_table(x1s, bin_w, PW, gw, W)
            for ph in range(PH):
                for pw in range(PW):
                    for c in range(c0, c1):
                        gb[c - c0] = g[n, c, ph, pw]
                    for a in range(ny[ph]):
                        y0, y1 = ylo[ph, a], yhi[ph, a]
                        for e in range(nx[pw]):
                            x0, x1 = xlo[pw, e], xhi[pw, e]
                            w1, w2, w3, w4 = bilinear_weights(ly[ph, a], hy[ph, a], lx[pw, e], hx[pw, e])
                            r = git[b, y0, x0, c0:c1]
                            for c in range(c1 - c0):
                                r[c] = accumulate(r[c], align_grad(gb[c], w1, count))
                            r = git[b, y0, x1, c0:c1]
                            for c in range(c1 - c0):
                                r[c] = accumulate(r[c], align_grad(gb[c], w2, count))
                            r = git[b, y1, x0, c0:c1]
                            for c in range(c1 - c0):
                                r[c] = accumulate(r[c], align_grad(gb[c], w3, count))
                            r = git[b, y1, x1, c0:c1]
                            for c in range(c1 - c0):
                                r[c] = accumulate(r[c], align_grad(gb[c], w4, count))


def pool_fwd(x, rois, ss, PH, PW, ps, out, idx):
    """Writes every element of out and idx (argmax or -1; ps: the input channel read)."""
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    K, Co = out.shape[0], out.shape[1]
    hi_h = H - 1 if ps else H
    hi_w = W - 1 if ps else W
    for n in prange(K):
        b = batch_index(rois[n, 0], N)
        ok, sw, sh, bin_w, bin_h = pool_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4], ss,
                                                 PH, PW, ps)
        for ph in range(PH):
            h0, h1 = pool_bin(sh, bin_h, ph, hi_h)
            for pw in range(PW):
                w0, w1 = pool_bin(sw, bin_w, pw, hi_w)
                empty = b < 0 or not ok or h1 <= h0 or w1 <= w0
                for c in range(Co):
                    ci = (c * PH + ph) * PW + pw if ps else c
                    if empty:
                        out[n, c, ph, pw] = ZERO
                        idx[n, c, ph, pw] = ci if ps else -1
                    else:
                        v, a = pool_element(x, b, ci, h0, h1, w0, w1, W, ps)
                        out[n, c, ph, pw] = v
                        idx[n, c, ph, pw] = a


def pool_bwd(g, rois, am, ss, PH, PW, ps, nchunks, gi):
    """gi zero-filled; output channels [c0, c1) per chunk. roi_pool: argmax entries outside the
    map (not produced by the forward) are ignored rather than written out of bounds."""
    N, H, W = gi.shape[0], gi.shape[2], gi.shape[3]
    K, Co = g.shape[0], g.shape[1]
    hi_h = H - 1 if ps else H
    hi_w = W - 1 if ps else W
    for j in prange(nchunks):
        c0 = j * Co // nchunks
        c1 = (j + 1) * Co // nchunks
        if c0 == c1:
            continue
        for n in range(K):
            b = batch_index(rois[n, 0], N)
            if b < 0:
                continue
            ok, sw, sh, bin_w, bin_h = pool_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4],
                                                     ss, PH, PW, ps)
            if ps and not ok:
                continue
            for ph in range(PH):
                for pw in range(PW):
                    if ps:
                        h0, h1 = pool_bin(sh, bin_h, ph, hi_h)
                        w0, w1 = pool_bin(sw, bin_w, pw, hi_w)
                        if h1 <= h0 or w1 <= w0:
                            continue
                        area = pool_area(h0, h1, w0, w1)
                        for c in range(c0, c1):
                            ci = (c * PH + ph) * PW + pw
                            d = average(g[n, c, ph, pw], area)
                            for hh in range(h0, h1):
                                for ww in range(w0, w1):
                                    gi[b, ci, hh, ww] = accumulate(gi[b, ci, hh, ww], d)
                    else:
                        for c in range(c0, c1):
                            a = am[n, c, ph, pw]
                            if a >= 0 and a < H * W:
                                gi[b, c, a // W, a % W] = accumulate(gi[b, c, a // W, a % W], g[n, c, ph, pw])


KERNELS = ("align_fwd", "align_bwd", "align_fwd_nhwc", "align_bwd_nhwc", "pool_fwd", "pool_bwd")


def _build(dt: np.dtype):
    njit = numba.njit(**_JIT)
    extra = [(f.__name__, f, njit) for f in R.SCALAR_FUNCS + R.ELEMENT_FUNCS]
    extra.append(("axis_table", axis_table, njit))
    kern = numba.njit(parallel=True, **_JIT)
    extra.extend((name, globals()[name], kern) for name in KERNELS)
    env = dict(np=np, prange=prange, **R.constants(dt))
    return M.specialise(dt, _cpu._OPS, njit, tuple(extra), env)


def kernels(dtype):
    """The compiled (lazily, on first call) kernels for float32 or float64."""
    return M.per_dtype(_CACHE, _build, dtype)


def _nchunks(channels: int) -> int:
    """Channel ranges for the backward: a few per thread for balance (any count gives the same
    bytes: each element is owned by one range)."""
    return max(1, min(channels, 4 * numba.get_num_threads()))


def _use_nhwc(x: np.ndarray, K: int, ph: int, pw: int) -> bool:
    """Channels-last kernels when the features already are, or when the bins outnumber the map's
    pixels enough to pay for the transposing copy (same bytes either way)."""
    N, C, H, W = x.shape
    return x.transpose(0, 2, 3, 1).flags.c_contiguous or 8 * K * ph * pw >= N * H * W


def roi_align(x: np.ndarray, rois: np.ndarray, spatial_scale: float, ph: int, pw: int,
              sampling_ratio: int, aligned: bool, ps: bool, nhwc: bool | None = None) -> np.ndarray:
    """x [N, C, H, W] (any strides), rois [K, 5] (same float dtype) -> [K, Co, PH, PW].
    ``nhwc``: force the channels-last (True) or NCHW (False) kernel (roi_align only)."""
    T = x.dtype.type
    rois = np.ascontiguousarray(rois)
    out = np.empty((rois.shape[0], x.shape[1] // (ph * pw) if ps else x.shape[1], ph, pw), x.dtype)
    k = kernels(x.dtype)
    if nhwc is None:
        nhwc = _use_nhwc(x, rois.shape[0], ph, pw)
    if nhwc and not ps:
        k.align_fwd_nhwc(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), rois, T(spatial_scale), int(ph),
                         int(pw), int(sampling_ratio), bool(aligned), out)
    else:
        k.align_fwd(np.ascontiguousarray(x), rois, T(spatial_scale), int(ph), int(pw),
                    int(sampling_ratio), bool(aligned), bool(ps), out)
    return out


def roi_align_backward(g: np.ndarray, rois: np.ndarray, spatial_scale: float, ph: int, pw: int,
                       shape: tuple, sampling_ratio: int, aligned: bool, ps: bool,
                       nchunks: int | None = None, nhwc: bool | None = None) -> np.ndarray:
    """g [K, Co, PH, PW] -> grad_input of ``shape`` [N, C, H, W] (contiguous)."""
    T = g.dtype.type
    g, rois = np.ascontiguousarray(g), np.ascontiguousarray(rois)
    N, C, H, W = shape
    k = kernels(g.dtype)
    if nhwc is None:
        nhwc = 8 * rois.shape[0] * ph * pw >= N * H * W
    if nhwc and not ps:
        git = np.zeros((N, H, W, C), g.dtype)
        k.align_bwd_nhwc(g, rois, T(spatial_scale), int(ph), int(pw), int(sampling_ratio),
                         bool(aligned), nchunks or _nchunks(C), git)
        return np.ascontiguousarray(git.transpose(0, 3, 1, 2))
    gi = np.zeros(shape, g.dtype)
    k.align_bwd(g, rois, T(spatial_scale), int(ph), int(pw), int(sampling_ratio), bool(aligned),
                bool(ps), nchunks or _nchunks(g.shape[1]), gi)
    return gi


def roi_pool(x: np.ndarray, rois: np.ndarray, spatial_scale: float, ph: int, pw: int,
             ps: bool) -> tuple:
    """-> (out [K, Co, PH, PW], argmax / channel map int32 [K, Co, PH, PW])."""
    T = x.dtype.type
    shape = (rois.shape[0], x.shape[1] // (ph * pw) if ps else x.shape[1], ph, pw)
    out = np.empty(shape, x.dtype)
    idx = np.empty(shape, np.int32)
    kernels(x.dtype).pool_fwd(x, rois, T(spatial_scale), int(ph), int(pw), bool(ps), out, idx)
    return out, idx


def roi_pool_backward(g: np.ndarray, rois: np.ndarray, idx: np.ndarray, spatial_scale: float, ph: int,
                      pw: int, shape: tuple, ps: bool, nchunks: int | None = None) -> np.ndarray:
    T = g.dtype.type
    gi = np.zeros(shape, g.dtype)
    kernels(g.dtype).pool_bwd(g, rois, idx, T(spatial_scale), int(ph), int(pw), bool(ps),
                              nchunks or _nchunks(g.shape[1]), gi)
    return gi
