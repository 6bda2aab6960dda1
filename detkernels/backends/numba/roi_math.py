"""The scalar RoI maths of reference/roi_align.py and reference/roi_pool.py (and so of csrc/ops/roi_*),
written once as plain Python over ADD/SUB/MUL/DIV and typed constants, and compiled per (target,
dtype) by _box_math.specialise: ``@njit`` for the CPU kernels (roi_cpu.py) and
``cuda.jit(device=True)`` for the numba.cuda kernels (roi_cuda.py), which contain only loops,
indexing and calls of these functions. See box_math.py for why every float operation is a call.

Sampling grids: sample i of bin p sits at ``(start + T(p)*bin) + (T(f32(i) + 0.5f)*bin) / T(G)``,
which is monotone in i (non-decreasing for bin > 0, non-increasing for bin < 0: IEEE rounding is
monotone). So the in-range samples of a bin (-1 <= pos <= size) are one run of consecutive i, found
by binary search (:func:`sample_range`) in O(log G): adaptive grids of up to MAX_GRID = 65536
samples per axis and bin cost nothing for the samples outside the map, and no kernel holds an
array sized by the grid.

The names used below and not defined here (ADD, SUB, MUL, DIV, TT, the typed constants) are
injected per specialisation by :func:`constants` and the target's operator set.
"""
from __future__ import annotations

import numpy as np

from ..._constants import MAX_GRID

ADD = SUB = MUL = DIV = None  # injected per target (see _box_math)
TT = None  # np.float32 or np.float64: int -> T conversion (round to nearest, as NumPy's)
F32 = np.float32
F32_HALF = np.float32(0.5)
LIM = 1 << 31  # rounded RoIPool coordinates are clamped to [-LIM, LIM] (reference.roi_pool._LIM)


def constants(dtype) -> dict:
    """Typed constants of the RoI maths for ``dtype`` (on top of _box_math.constants)."""
    T = np.dtype(dtype).type
    return dict(TT=T, F32=np.float32, F32_HALF=np.float32(0.5), LIM=LIM, MAX_GRID=MAX_GRID,
                HALF=T(0.5), NEG_HALF=T(-0.5), NEG1=T(-1), MAXG_1=T(MAX_GRID - 1), LIM_T=T(LIM),
                NEG_LIM_T=T(-LIM), NEG_FLT_MAX=T(-np.finfo(np.float32).max))


# ---- shared ---------------------------------------------------------------------------------------

def imin(a, b):  # integer min/max (numba.cuda cannot compile the builtins for two ints)
    return b if b < a else a


def imax(a, b):
    return b if a < b else a


def batch_index(v, n_images):
    """trunc(v) if N > 0 and -1 < v < N, else -1 (NaN, inf, out of range, empty batch: the RoI
    reads nothing; with N = 0, v in (-1, 0) would truncate to image 0)."""
    if not (n_images > 0 and v > NEG1 and v < TT(n_images)):
        return -1
    return int(v)


# ---- roi_align / ps_roi_align ----------------------------------------------------------------------

def grid_size(bin_size, sampling_ratio):
    """sampling_ratio if > 0, else min(ceil(bin_size), MAX_GRID); 0 if not ceil(bin_size) > 0."""
    if sampling_ratio > 0:
        return sampling_ratio
    if not bin_size > ZERO:  # ceil(v) > 0 iff v > 0; NaN fails
        return 0
    if bin_size > MAXG_1:  # ceil(v) >= MAX_GRID
        return MAX_GRID
    t = int(bin_size)  # exact: 0 <= bin_size <= 65535
    if TT(t) < bin_size:
        t += 1
    return t


def align_geometry(r1, r2, r3, r4, ss, PH, PW, sampling_ratio, aligned, ps):
    """(x1s, y1s, bin_w, bin_h, gh, gw) of RoI (r1, r2, r3, r4) scaled by ss."""
    off = HALF if (aligned or ps) else ZERO
    x1s = SUB(MUL(r1, ss), off)
    y1s = SUB(MUL(r2, ss), off)
    x2s = SUB(MUL(r3, ss), off)
    y2s = SUB(MUL(r4, ss), off)
    roi_w = SUB(x2s, x1s)
    roi_h = SUB(y2s, y1s)
    if not ps and not aligned:  # std::max(roi, 1): NaN stays NaN
        if roi_w < ONE:
            roi_w = ONE
        if roi_h < ONE:
            roi_h = ONE
    bin_w = DIV(roi_w, TT(PW))
    bin_h = DIV(roi_h, TT(PH))
    return x1s, y1s, bin_w, bin_h, grid_size(bin_h, sampling_ratio), grid_size(bin_w, sampling_ratio)


def sample_pos(start, bin_size, p, i, G):
    f = TT(F32(F32(i) + F32_HALF))  # T(float32(i) + 0.5f)
    return ADD(ADD(start, MUL(TT(p), bin_size)), DIV(MUL(f, bin_size), TT(G)))


def _first(start, bin_size, p, G, size, lo, hi, mode):
    """Smallest i in [lo, hi) whose sample satisfies predicate ``mode`` (hi if none), for a
    predicate that is false then true along i: 0: pos >= -1, 1: pos > size, 2: not pos >= -1,
    3: pos <= size."""
    while lo < hi:
        mid = (lo + hi) // 2
        c = sample_pos(start, bin_size, p, mid, G)
        if mode == 0:
            ok = c >= NEG1
        elif mode == 1:
            ok = c > TT(size)
        elif mode == 2:
            ok = not (c >= NEG1)
        else:
            ok = c <= TT(size)
        if ok:
            hi = mid
        else:
            lo = mid + 1
    return lo


def sample_range(start, bin_size, p, G, size):
    """[i0, i1): the samples of bin p with -1 <= pos <= size (none when size <= 0)."""
    if size <= 0 or G <= 0:
        return 0, 0
    if bin_size > ZERO:  # ascending: pos >= -1 is a suffix, pos <= size a prefix
        i0 = _first(start, bin_size, p, G, size, 0, G, 0)
        return i0, _first(start, bin_size, p, G, size, i0, G, 1)
    if bin_size < ZERO:  # descending: pos >= -1 is a prefix, pos <= size a suffix
        i1 = _first(start, bin_size, p, G, size, 0, G, 2)
        return _first(start, bin_size, p, G, size, 0, i1, 3), i1
    c = sample_pos(start, bin_size, p, 0, G)  # bin 0: every sample equal; NaN: none in range
    if c >= NEG1 and c <= TT(size):
        return 0, G
    return 0, 0


def sample_taps(c, size):
    """(lo, hi, l, h) of an in-range coordinate: its two taps and their weights' factors."""
    if c <= ZERO:
        c = ZERO
    lo = int(c)
    if lo >= size - 1:
        lo = size - 1
        hi = size - 1
        c = TT(lo)
    else:
        hi = lo + 1
    l = SUB(c, TT(lo))
    return lo, hi, l, SUB(ONE, l)


def tap_at(start, bin_size, p, i, G, size):
    return sample_taps(sample_pos(start, bin_size, p, i, G), size)


def tap_span(start, bin_size, p, G, size, i0, i1):
    """(first, last) tap index touched by samples [i0, i1) (non-empty): taps are monotone in i."""
    a0, b0, l0, h0 = tap_at(start, bin_size, p, i0, G, size)
    a1, b1, l1, h1 = tap_at(start, bin_size, p, i1 - 1, G, size)
    return imin(a0, a1), imax(b0, b1)


def bilinear_weights(ly, hy, lx, hx):
    return MUL(hy, hx), MUL(hy, lx), MUL(ly, hx), MUL(ly, lx)


def bilinear(w1, w2, w3, w4, v1, v2, v3, v4):
    return ADD(ADD(ADD(MUL(w1, v1), MUL(w2, v2)), MUL(w3, v3)), MUL(w4, v4))


def accumulate(acc, v):
    return ADD(acc, v)


def average(acc, count):
    return DIV(acc, count)


def align_grad(d, w, count):
    """One tap's gradient contribution: (grad * w_k) / T(gh*gw)."""
    return DIV(MUL(d, w), count)


def align_sample_count(gh, gw):
    return TT(gh * gw)


# ---- roi_pool / ps_roi_pool -----------------------------------------------------------------------

def round_coord(v):
    """(ok, C round(v) clamped to [-LIM, LIM]); ok is False for NaN."""
    if v != v:
        return False, 0
    if v >= LIM_T:
        return True, LIM
    if v <= NEG_LIM_T:
        return True, -LIM
    t = int(v)  # trunc; v - T(t) is exact
    d = SUB(v, TT(t))
    if d >= HALF:
        t += 1
    elif d <= NEG_HALF:
        t -= 1
    return True, t


def pool_geometry(r1, r2, r3, r4, ss, PH, PW, ps):
    """(ok, sw, sh, bin_w, bin_h); ok is False when a rounded coordinate is NaN."""
    o1, sw = round_coord(MUL(r1, ss))
    o2, sh = round_coord(MUL(r2, ss))
    o3, ew = round_coord(MUL(r3, ss))
    o4, eh = round_coord(MUL(r4, ss))
    if not (o1 and o2 and o3 and o4):
        return False, 0, 0, ZERO, ZERO
    extra = 0 if ps else 1
    roi_w = imax(ew - sw + extra, 1)
    roi_h = imax(eh - sh + extra, 1)
    return True, sw, sh, DIV(TT(roi_w), TT(PW)), DIV(TT(roi_h), TT(PH))


def _floor_int(x):  # x finite, |x| < 2**62
    t = int(x)
    if TT(t) > x:
        t -= 1
    return t


def _ceil_int(x):
    t = int(x)
    if TT(t) < x:
        t += 1
    return t


def pool_bin(start, bin_size, p, hi):
    """(begin, end) of bin p on one axis, clamped to [0, hi]."""
    a = _floor_int(MUL(TT(p), bin_size)) + start
    b = _ceil_int(MUL(TT(p + 1), bin_size)) + start
    return imin(imax(a, 0), hi), imin(imax(b, 0), hi)


def pool_area(h0, h1, w0, w1):
    return TT((h1 - h0) * (w1 - w0))


SCALAR_FUNCS = (imin, imax, batch_index, grid_size, align_geometry, sample_pos, _first, sample_range, sample_taps,
                tap_at, tap_span, bilinear_weights, bilinear, accumulate, average, align_grad,
                align_sample_count, round_coord, pool_geometry, _floor_int, _ceil_int, pool_bin,
                pool_area)


# ---- per-element loops over arrays (the same on both targets) -------------------------------------

def pool_element(x, b, ci, h0, h1, w0, w1, W, ps):
    """(value, index) of a non-empty bin: ps: (mean, ci); else (max, argmax) -- row-major, ties
    keep the first, NaN never wins, all-NaN gives (-FLT_MAX, -1)."""
    if ps:
        s = ZERO
        for hh in range(h0, h1):
            for ww in range(w0, w1):
                s = ADD(s, x[b, ci, hh, ww])
        return DIV(s, pool_area(h0, h1, w0, w1)), ci
    m = NEG_FLT_MAX
    a = -1
    for hh in range(h0, h1):
        for ww in range(w0, w1):
            v = x[b, ci, hh, ww]
            if v > m:
                m = v
                a = hh * W + ww
    return m, a


def align_element(x, b, ci, y1s, bin_h, gh, x1s, bin_w, gw, ph, pw, count):
    """One roi_align output element, taps computed on the fly (no tables): the in-range samples of
    bin (ph, pw), iy outer, ix inner."""
    H = x.shape[2]
    W = x.shape[3]
    iy0, iy1 = sample_range(y1s, bin_h, ph, gh, H)
    ix0, ix1 = sample_range(x1s, bin_w, pw, gw, W)
    acc = ZERO
    for iy in range(iy0, iy1):
        y0, y1, ly, hy = tap_at(y1s, bin_h, ph, iy, gh, H)
        for ix in range(ix0, ix1):
            x0, x1, lx, hx = tap_at(x1s, bin_w, pw, ix, gw, W)
            w1, w2, w3, w4 = bilinear_weights(ly, hy, lx, hx)
            acc = accumulate(acc, bilinear(w1, w2, w3, w4, x[b, ci, y0, x0], x[b, ci, y0, x1],
                                           x[b, ci, y1, x0], x[b, ci, y1, x1]))
    return average(acc, count)


ELEMENT_FUNCS = (pool_element, align_element)
