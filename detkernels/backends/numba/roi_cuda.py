"""numba.cuda kernels of roi_align / ps_roi_align and roi_pool / ps_roi_pool, forward and backward,
bit-exact with the NumPy reference. The arithmetic is roi_math.py's (the same source as the
CPU kernels), compiled with the libdevice ``*_rn`` operators of _cuda._ops (never fused into
FMAs; plain operators in the CUDA simulator). tests/gpu_logic/test_numba_ptx.py lints their PTX.

Parallelism (grid-stride loops; no atomics, no shared accumulators, so the bytes do not depend on
the launch configuration or on scheduling):

* forward (both ops): one thread per output element [n, c, ph, pw]; roi_align computes the taps of
  the in-range samples on the fly (sample_range: binary search, so no array sized by the grid).
* roi_align backward: owner-computes, one thread per input row grad_input[b, ci, y, :]. It visits
  the RoIs of image b in index order, then (ph, pw, iy, ix, tap) in the reference's order, and
  adds only the taps that land on row y: every element sums its contributions in the reference's
  order. A bin whose samples' taps cannot reach row y is skipped after two tap evaluations (taps
  are monotone in the sample index). ps: input channel ci = (c*PH + ph)*PW + pw receives from
  bin (ph, pw) of output channel c only.
* roi_pool backward: one thread per input plane grad_input[b, c] (zeroes it, then adds
  grad[n, c, ph, pw] at argmax[n, c, ph, pw] for the RoIs of image b in (n, ph, pw) order).
* ps_roi_pool backward: one thread per input row grad_input[b, ci, h, :], RoIs in index order,
  the fixed bin (ph, pw) of ci.
"""
from __future__ import annotations

import types

import numba
import numpy as np
from numba import cuda

from . import cuda as NC
from . import box_math as M
from . import roi_math as R

SIM = NC.SIM
_JIT = dict(fastmath=False)


# ---- kernels (compiled per dtype; their globals are the specialisation's) -------------------------

def out_index(t, Co, PH, PW):
    """(n, c, ph, pw) of flat index t of a [K, Co, PH, PW] output."""
    pw = t % PW
    r = t // PW
    ph = r % PH
    r //= PH
    return r // Co, r % Co, ph, pw


def align_fwd_kernel(x, rois, ss, PH, PW, sampling_ratio, aligned, ps, out):
    N = x.shape[0]
    K, Co = out.shape[0], out.shape[1]
    total = K * Co * PH * PW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, ph, pw = out_index(t, Co, PH, PW)
        b = batch_index(rois[n, 0], N)
        x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4],
                                                        ss, PH, PW, sampling_ratio, aligned, ps)
        if b < 0 or gh == 0 or gw == 0:
            out[n, c, ph, pw] = ZERO
        else:
            ci = (c * PH + ph) * PW + pw if ps else c
            out[n, c, ph, pw] = align_element(x, b, ci, y1s, bin_h, gh, x1s, bin_w, gw, ph, pw,
                                              align_sample_count(gh, gw))


def align_bwd_kernel(g, rois, ss, PH, PW, sampling_ratio, aligned, ps, gi):
    N, C, H, W = gi.shape[0], gi.shape[1], gi.shape[2], gi.shape[3]
    K = g.shape[0]
    total = N * C * H
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        y = t % H
        r = t // H
        ci = r % C
        b = r // C
        for xx in range(W):
            gi[b, ci, y, xx] = ZERO
        if ps:  # the one bin and output channel that read input channel ci
            c = ci // (PH * PW)
            ph0 = (ci % (PH * PW)) // PW
            pw0 = ci % PW
            ph1 = ph0 + 1
            pw1 = pw0 + 1
        else:
            c = ci
            ph0 = 0
            pw0 = 0
            ph1 = PH
            pw1 = PW
        for n in range(K):
            if batch_index(rois[n, 0], N) != b:
                continue
            x1s, y1s, bin_w, bin_h, gh, gw = align_geometry(rois[n, 1], rois[n, 2], rois[n, 3],
                                                            rois[n, 4], ss, PH, PW, sampling_ratio,
                                                            aligned, ps)
            if gh == 0 or gw == 0:
                continue
            count = align_sample_count(gh, gw)
            for ph in range(ph0, ph1):
                iy0, iy1 = sample_range(y1s, bin_h, ph, gh, H)
                if iy0 >= iy1:
                    continue
                lo, hi = tap_span(y1s, bin_h, ph, gh, H, iy0, iy1)
                if y < lo or y > hi:
                    continue
                for pw in range(pw0, pw1):
                    ix0, ix1 = sample_range(x1s, bin_w, pw, gw, W)
                    d = g[n, c, ph, pw]
                    for iy in range(iy0, iy1):
                        ya, yb, ly, hy = tap_at(y1s, bin_h, ph, iy, gh, H)
                        top = ya == y
                        bottom = yb == y
                        if not (top or bottom):
                            continue
                        for ix in range(ix0, ix1):
                            xa, xb, lx, hx = tap_at(x1s, bin_w, pw, ix, gw, W)
                            w1, w2, w3, w4 = bilinear_weights(ly, hy, lx, hx)
                            if top:
                                gi[b, ci, y, xa] = accumulate(gi[b, ci, y, xa], align_grad(d, w1, count))
                                gi[b, ci, y, xb] = accumulate(gi[b, ci, y, xb], align_grad(d, w2, count))
                            if bottom:
                                gi[b, ci, y, xa] = accumulate(gi[b, ci, y, xa], align_grad(d, w3, count))
                                gi[b, ci, y, xb] = accumulate(gi[b, ci, y, xb], align_grad(d, w4, count))


def pool_fwd_kernel(x, rois, ss, PH, PW, ps, out, idx):
    N, H, W = x.shape[0], x.shape[2], x.shape[3]
    K, Co = out.shape[0], out.shape[1]
    hi_h = H - 1 if ps else H
    hi_w = W - 1 if ps else W
    total = K * Co * PH * PW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        n, c, ph, pw = out_index(t, Co, PH, PW)
        ci = (c * PH + ph) * PW + pw if ps else c
        b = batch_index(rois[n, 0], N)
        ok, sw, sh, bin_w, bin_h = pool_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4], ss,
                                                 PH, PW, ps)
        h0, h1 = pool_bin(sh, bin_h, ph, hi_h)
        w0, w1 = pool_bin(sw, bin_w, pw, hi_w)
        if b < 0 or not ok or h1 <= h0 or w1 <= w0:
            out[n, c, ph, pw] = ZERO
            idx[n, c, ph, pw] = ci if ps else -1
        else:
            v, a = pool_element(x, b, ci, h0, h1, w0, w1, W, ps)
            out[n, c, ph, pw] = v
            idx[n, c, ph, pw] = a


def pool_bwd_kernel(g, rois, am, ss, PH, PW, gi):
    """roi_pool: one thread per plane [b, c]. Argmax entries outside the map are ignored."""
    N, C, H, W = gi.shape[0], gi.shape[1], gi.shape[2], gi.shape[3]
    K = g.shape[0]
    for t in range(cuda.grid(1), N * C, cuda.gridsize(1)):
        c = t % C
        b = t // C
        for yy in range(H):
            for xx in range(W):
                gi[b, c, yy, xx] = ZERO
        for n in range(K):
            if batch_index(rois[n, 0], N) != b:
                continue
            for ph in range(PH):
                for pw in range(PW):
                    a = am[n, c, ph, pw]
                    if a >= 0 and a < H * W:
                        gi[b, c, a // W, a % W] = accumulate(gi[b, c, a // W, a % W], g[n, c, ph, pw])


def ps_pool_bwd_kernel(g, rois, ss, PH, PW, gi):
    """ps_roi_pool: one thread per row [b, ci, h]."""
    N, C, H, W = gi.shape[0], gi.shape[1], gi.shape[2], gi.shape[3]
    K = g.shape[0]
    for t in range(cuda.grid(1), N * C * H, cuda.gridsize(1)):
        h = t % H
        r = t // H
        ci = r % C
        b = r // C
        for xx in range(W):
            gi[b, ci, h, xx] = ZERO
        c = ci // (PH * PW)
        ph = (ci % (PH * PW)) // PW
        pw = ci % PW
        for n in range(K):
            if batch_index(rois[n, 0], N) != b:
                continue
            ok, sw, sh, bin_w, bin_h = pool_geometry(rois[n, 1], rois[n, 2], rois[n, 3], rois[n, 4],
                                                     ss, PH, PW, True)
            if not ok:
                continue
            h0, h1 = pool_bin(sh, bin_h, ph, H - 1)
            w0, w1 = pool_bin(sw, bin_w, pw, W - 1)
            if h < h0 or h >= h1 or w1 <= w0:
                continue
            d = average(g[n, c, ph, pw], pool_area(h0, h1, w0, w1))
            for ww in range(w0, w1):
                gi[b, ci, h, ww] = accumulate(gi[b, ci, h, ww], d)


KERNELS = ("align_fwd_kernel", "align_bwd_kernel", "pool_fwd_kernel", "pool_bwd_kernel",
           "ps_pool_bwd_kernel")
_SPECS: dict = {}


def _specialise(dt: np.dtype, ops: dict | None = None) -> object:
    dev = cuda.jit(device=True, **_JIT)
    extra = [(f.__name__, f, dev) for f in R.SCALAR_FUNCS + R.ELEMENT_FUNCS]
    extra.append(("out_index", out_index, dev))
    kern = cuda.jit(**_JIT)
    extra.extend((name, globals()[name], kern) for name in KERNELS)
    env = dict(np=np, numba=numba, cuda=cuda, **R.constants(dt))
    return M.specialise(dt, ops or NC._ops(dt), dev, tuple(extra), env)


def kernels(dtype) -> object:
    """The compiled (lazily, on first launch) kernels for float32 or float64."""
    return M.per_dtype(_SPECS, _specialise, dtype)


def signatures(dtype) -> dict:
    """Explicit signatures of the kernels (for compile_ptx)."""
    T = numba.from_dtype(np.dtype(dtype))
    i64, b1 = numba.int64, numba.boolean
    T4, T2, I4 = T[:, :, :, ::1], T[:, ::1], numba.int32[:, :, :, ::1]
    return {
        "align_fwd_kernel": (T4, T2, T, i64, i64, i64, b1, b1, T4),
        "align_bwd_kernel": (T4, T2, T, i64, i64, i64, b1, b1, T4),
        "pool_fwd_kernel": (T4, T2, T, i64, i64, b1, T4, I4),
        "pool_bwd_kernel": (T4, T2, I4, T, i64, i64, T4),
        "ps_pool_bwd_kernel": (T4, T2, T, i64, i64, T4),
    }


def ptx(dtype, cc: tuple = (9, 0), plain_operators: bool = False) -> dict:
    """PTX of every RoI kernel for ``dtype``, compiled without a GPU (see _cuda.ptx)."""
    import numba.cuda.dispatcher as D

    plain = {n: cuda.jit(device=True, **_JIT)(f)
             for n, f in (("ADD", M.plain_add), ("SUB", M.plain_sub), ("MUL", M.plain_mul),
                          ("DIV", M.plain_div))}
    k = _specialise(np.dtype(dtype), plain if plain_operators else None)
    saved = D.get_current_device
    D.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        return {name: cuda.compile_ptx(k.py[name], sig, cc=cc)[0]
                for name, sig in signatures(dtype).items()}
    finally:
        D.get_current_device = saved


# ---- launches (numba device arrays, contiguous, one float dtype; the caller's stream) -------------

def _launch(kernel, total: int, stream, *args) -> None:
    if total <= 0:
        return
    if SIM:  # ~2.7k simulated threads/s: few threads, the grid-stride loops do the rest
        block, grid = 16, min(2, (total + 15) // 16)
    else:
        block = 256
        grid = min((total + block - 1) // block, 1 << 16)
    NC._configure(kernel, grid, block, stream)(*args)


def roi_align(x, rois, out, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool, stream) -> None:
    """x [N, C, H, W], rois [K, 5] -> out [K, Co, PH, PW] (every element written)."""
    T = np.dtype(x.dtype).type
    _launch(kernels(x.dtype).align_fwd_kernel, out.size, stream, x, rois, T(spatial_scale), int(ph),
            int(pw), int(sampling_ratio), bool(aligned), bool(ps), out)


def roi_align_backward(g, rois, gi, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                       aligned: bool, ps: bool, stream) -> None:
    """g [K, Co, PH, PW] -> gi [N, C, H, W] (every element written)."""
    T = np.dtype(g.dtype).type
    N, C, H, _ = gi.shape
    _launch(kernels(g.dtype).align_bwd_kernel, N * C * H, stream, g, rois, T(spatial_scale), int(ph),
            int(pw), int(sampling_ratio), bool(aligned), bool(ps), gi)


def roi_pool(x, rois, out, idx, spatial_scale: float, ph: int, pw: int, ps: bool, stream) -> None:
    """x [N, C, H, W] -> out [K, Co, PH, PW], idx int32 (argmax or -1; ps: the channel read)."""
    T = np.dtype(x.dtype).type
    _launch(kernels(x.dtype).pool_fwd_kernel, out.size, stream, x, rois, T(spatial_scale), int(ph),
            int(pw), bool(ps), out, idx)


def roi_pool_backward(g, rois, idx, gi, spatial_scale: float, ph: int, pw: int, ps: bool,
                      stream) -> None:
    T = np.dtype(g.dtype).type
    N, C, H, _ = gi.shape
    k = kernels(g.dtype)
    if ps:
        _launch(k.ps_pool_bwd_kernel, N * C * H, stream, g, rois, T(spatial_scale), int(ph), int(pw), gi)
    else:
        _launch(k.pool_bwd_kernel, N * C, stream, g, rois, idx, T(spatial_scale), int(ph), int(pw), gi)
