"""The scalar maths of csrc/ops/box_iou/box_iou.h and csrc/ops/nms/nms.h (and detect's
per-anchor pass), written once as plain Python and compiled per (target, dtype) by
:func:`specialise`, for the Numba backend.

Every float operation goes through ADD/SUB/MUL/DIV and every constant is a named global of the
working type, because the two targets need different things for the same formula:

* CPU ``@njit``: plain operators (LLVM does not contract without fastmath) and typed constants
  (a Python float literal would promote a float32 expression to float64).
* ``numba.cuda``: NVVM contracts ``a * b + c`` into an FMA even with ``fastmath=False``, so every
  operation is a libdevice ``*_rn`` intrinsic, which is never fused.

The operation order is the C++ headers' exactly (and so the NumPy reference's). This module does
not import numba: the backend compiles it on first use.
"""
from __future__ import annotations

import types
from typing import Callable

import numpy as np

from ..._constants import nms_threshold  # noqa: F401  (used as M.nms_threshold)
from ...reference.box_iou import _ATAN32, _ATAN64, FOUR_OVER_PI2

# Injected per specialisation (see specialise): ADD, SUB, MUL, DIV and the constants below.
ADD = SUB = MUL = DIV = None


# ---- host_device.h --------------------------------------------------------------------------------

# Plain IEEE operators: the CPU build's ADD/SUB/MUL/DIV, and the CUDA simulator's (which has no
# libdevice *_rn functions).
def plain_add(a, b):
    return a + b


def plain_sub(a, b):
    return a - b


def plain_mul(a, b):
    return a * b


def plain_div(a, b):
    return a / b


def std_max(a, b):  # std::max: NaN and -0.0 follow the operand order
    return b if a < b else a


def std_min(a, b):
    return b if b < a else a


def nan_max(a, b):  # torch.maximum: NaN if either is
    return b if (a < b or b != b) else a


def nan_min(a, b):
    return b if (b < a or b != b) else a


def clamp_min0(x):  # Tensor.clamp(min=0)
    return ZERO if x < ZERO else x


# ---- box_iou.h ------------------------------------------------------------------------------------

def atan_eval_f32(x):  # AtanCoef<float>::eval, Cephes atanf
    y0 = ZERO
    if x > A32_T3P8:
        y0 = A32_PIO2
        x = -DIV(ONE, x)
    elif x > A32_TP8:
        y0 = A32_PIO4
        x = DIV(SUB(x, ONE), ADD(x, ONE))
    z = MUL(x, x)
    p = SUB(MUL(ADD(MUL(SUB(MUL(A32_P0, z), A32_P1), z), A32_P2), z), A32_P3)
    return ADD(y0, ADD(MUL(MUL(p, z), x), x))


def atan_eval_f64(x):  # AtanCoef<double>::eval, Cephes atan
    y0 = ZERO
    more = ZERO
    if x > A64_T3P8:
        y0 = A64_PIO2
        more = A64_MORE
        x = -DIV(ONE, x)
    elif x > A64_MID:
        y0 = A64_PIO4
        more = A64_HALFMORE
        x = DIV(SUB(x, ONE), ADD(x, ONE))
    z = MUL(x, x)
    p = SUB(MUL(SUB(MUL(SUB(MUL(SUB(MUL(A64_P0, z), A64_P1), z), A64_P2), z), A64_P3), z), A64_P4)
    q = ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(z, A64_Q0), z), A64_Q1), z), A64_Q2), z), A64_Q3), z),
            A64_Q4)
    return ADD(y0, ADD(ADD(MUL(x, DIV(MUL(z, p), q)), x), more))


def dk_atan(x):  # odd extension; ATAN_EVAL is atan_eval_f32 or atan_eval_f64
    neg = x < ZERO
    r = ATAN_EVAL(-x if neg else x)
    return -r if neg else r


def box_area(b0, b1, b2, b3, fmt):
    if fmt == 0:
        return MUL(SUB(b2, b0), SUB(b3, b1))
    return MUL(b2, b3)


def box_corners(b0, b1, b2, b3, fmt):
    if fmt == 0:
        return b0, b1, b2, b3
    if fmt == 1:
        return b0, b1, ADD(b0, b2), ADD(b1, b3)
    hw = DIV(b2, TWO)
    hh = DIV(b3, TWO)
    return SUB(b0, hw), SUB(b1, hh), ADD(b0, hw), ADD(b1, hh)


def diou_penalty(a0, a1, a2, a3, b0, b1, b2, b3, wc, hc, eps):
    """DIoU's distance term cd2 / ((wc*wc + hc*hc) + eps) (box_iou.h's diou_penalty); wc, hc:
    the enclosing box's clamped width and height."""
    diag2 = ADD(ADD(MUL(wc, wc), MUL(hc, hc)), eps)
    dx = SUB(DIV(ADD(a0, a2), TWO), DIV(ADD(b0, b2), TWO))
    dy = SUB(DIV(ADD(a1, a3), TWO), DIV(ADD(b1, b3), TWO))
    return DIV(ADD(MUL(dx, dx), MUL(dy, dy)), diag2)


def diou_penalty_of(a0, a1, a2, a3, b0, b1, b2, b3, eps):
    """diou_penalty with the enclosing box computed from the xyxy boxes (box_iou.h's
    diou_penalty_of)."""
    wc = clamp_min0(SUB(nan_max(a2, b2), nan_min(a0, b0)))
    hc = clamp_min0(SUB(nan_max(a3, b3), nan_min(a1, b1)))
    return diou_penalty(a0, a1, a2, a3, b0, b1, b2, b3, wc, hc, eps)


def pair_iou(a0, a1, a2, a3, b0, b1, b2, b3, area_a, area_b, fmt, kind, eps):
    ax1, ay1, ax2, ay2 = box_corners(a0, a1, a2, a3, fmt)
    bx1, by1, bx2, by2 = box_corners(b0, b1, b2, b3, fmt)
    w = clamp_min0(SUB(nan_min(ax2, bx2), nan_max(ax1, bx1)))
    h = clamp_min0(SUB(nan_min(ay2, by2), nan_max(ay1, by1)))
    inter = MUL(w, h)
    uni = SUB(ADD(area_a, area_b), inter)
    iou = DIV(inter, uni)
    if kind == 0:
        return iou
    wc = clamp_min0(SUB(nan_max(ax2, bx2), nan_min(ax1, bx1)))
    hc = clamp_min0(SUB(nan_max(ay2, by2), nan_min(ay1, by1)))
    if kind == 1:
        area_c = MUL(wc, hc)
        return SUB(iou, DIV(SUB(area_c, uni), area_c))
    diou = SUB(iou, diou_penalty(a0, a1, a2, a3, b0, b1, b2, b3, wc, hc, eps))
    if kind == 2:
        return diou
    d = SUB(dk_atan(DIV(SUB(a2, a0), SUB(a3, a1))), dk_atan(DIV(SUB(b2, b0), SUB(b3, b1))))
    v = MUL(FOUR_OVER_PI2_T, MUL(d, d))
    alpha = DIV(v, ADD(ADD(SUB(ONE, iou), v), eps))
    return SUB(diou, MUL(alpha, v))


# ---- nms.h ----------------------------------------------------------------------------------------

def nms_area(x1, y1, x2, y2):
    return MUL(SUB(x2, x1), SUB(y2, y1))


def nms_iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b):
    """nms.h's nms_iou: ``a`` is the kept (higher-ranked) box; std::max/min."""
    w = std_max(ZERO, SUB(std_min(ax2, bx2), std_max(ax1, bx1)))
    h = std_max(ZERO, SUB(std_min(ay2, by2), std_max(ay1, by1)))
    inter = MUL(w, h)
    return DIV(inter, SUB(ADD(area_a, area_b), inter))


def nms_suppresses(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, thr):
    """``a`` is the kept (higher-ranked) box; ``thr`` is nms_threshold(iou_threshold) in T."""
    return nms_iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b) > thr


# ---- detect_gpu.h (issue 12) ----------------------------------------------------------------------

def detect_anchor(boxes, scores, obj, has_obj, fmt, multi_label, xyxy, cs, cls, b, a):
    """detect's per-anchor pass (reference/detect.py steps 1-2; detect_gpu.h's detect_gpu_score)
    for anchor ``a`` of image ``b``: the one copy run by numba/cpu.py (anchors on threads) and
    numba/cuda.py (a thread per anchor). boxes [B, A, 4] in ``fmt`` -> xyxy[b, a] (box_corners);
    scores [B, A, C] times obj [B, A] (one MUL in T, before anything else) -> candidate scores
    cs: multi-label cs[b, a * C + c], else cs[b, a] the best class cls[b, a] -- the first NaN
    column, else the lowest column holding the row maximum (a strict ``>`` scan: ties and
    -0.0 == +0.0 keep the lower column). With C = 0 only xyxy is written."""
    C = scores.shape[2]
    x1, y1, x2, y2 = box_corners(boxes[b, a, 0], boxes[b, a, 1], boxes[b, a, 2], boxes[b, a, 3], fmt)
    xyxy[b, a, 0] = x1
    xyxy[b, a, 1] = y1
    xyxy[b, a, 2] = x2
    xyxy[b, a, 3] = y2
    if multi_label:
        for c in range(C):
            v = scores[b, a, c]
            cs[b, a * C + c] = MUL(v, obj[b, a]) if has_obj else v
    elif C > 0:
        best = -1
        m = ZERO
        for c in range(C):
            v = scores[b, a, c]
            if has_obj:
                v = MUL(v, obj[b, a])
            if v != v:  # NaN ranks above everything: the first one wins
                best = c
                m = v
                break
            if best < 0 or v > m:
                best = c
                m = v
        cs[b, a] = m
        cls[b, a] = best


# ---- soft_nms.h (issue 13) ------------------------------------------------------------------------
# The numba twins of dk_floor / dk_ldexp / dk_exp / soft_nms_weight. Not in SCALAR_FUNCS: they
# are compiled as extras where a kernel needs them (numba/cpu.py's _build_exp; numba/cuda.py's
# _specialise for matrix_nms, without soft_nms_weight). TYPE (np.float32 / np.float64) and the
# E32_* / E64_* constants come from soft_nms_constants.

def dk_floor(v):  # |v| < 2^31: the truncation, lowered by 1 where it rounded up (exact)
    t = TYPE(int(v))
    return SUB(t, ONE) if t > v else t


def dk_ldexp(y, n):  # y * 2^n rounded once (math.ldexp: exact in float64 for a float32 y)
    return TYPE(math.ldexp(y, n))


def exp_eval_f32(x):  # ExpCoef<float>::eval, Cephes expf
    if x != x:
        return x
    if x < E32_MINLOG:
        return ZERO
    if x > E32_MAXLOG:
        return E_INF
    z = dk_floor(ADD(MUL(E32_LOG2E, x), E_HALF))
    r = SUB(x, MUL(z, E32_C1))
    r = SUB(r, MUL(z, E32_C2))
    zz = MUL(r, r)
    p = ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(ADD(MUL(E32_P0, r), E32_P1), r), E32_P2), r), E32_P3), r),
                    E32_P4), r), E32_P5)
    return dk_ldexp(ADD(ADD(MUL(p, zz), r), ONE), int(z))


def exp_eval_f64(x):  # ExpCoef<double>::eval, Cephes exp
    if x != x:
        return x
    if x < E64_MINLOG:
        return ZERO
    if x > E64_MAXLOG:
        return E_INF
    px = dk_floor(ADD(MUL(E64_LOG2E, x), E_HALF))
    r = SUB(x, MUL(px, E64_C1))
    r = SUB(r, MUL(px, E64_C2))
    xx = MUL(r, r)
    p = MUL(r, ADD(MUL(ADD(MUL(E64_P0, xx), E64_P1), xx), E64_P2))
    q = ADD(MUL(ADD(MUL(ADD(MUL(E64_Q0, xx), E64_Q1), xx), E64_Q2), xx), E64_Q3)
    r = DIV(p, SUB(q, p))
    r = ADD(ONE, MUL(TWO, r))
    return dk_ldexp(r, int(px))


def dk_exp(x):  # EXP_EVAL is exp_eval_f32 or exp_eval_f64
    return EXP_EVAL(x)


def soft_nms_weight(iou, method, thr, sigma):
    # thr: the double threshold (numba/cpu.py: iou is widened for the compare, soft_nms.h's), or
    # nms_threshold(thr, T) (numba/cuda.py: the same result compared in T, no float64 in a
    # float32 kernel).
    if method == 0:
        return SUB(ONE, iou) if iou > thr else ONE
    if iou != iou:
        return ONE
    return dk_exp(DIV(-MUL(iou, iou), sigma))


def soft_nms_constants(dtype) -> dict:
    """TYPE and the typed constants of dk_exp (reference/soft_nms.py's, exact in T) and of dk_log
    (reference/diou_nms.py's, rounded to T as the C++ literals are)."""
    from ...reference import soft_nms as R

    T = np.dtype(dtype).type
    from ...reference import diou_nms as RD

    c = dict(TYPE=T, E_HALF=T(0.5), E_INF=T(np.inf), math=__import__("math"),
             L_SQRT_HALF=T(RD._SQRT_HALF), L_LN2=T(RD._LN2), L_ATANH=tuple(T(v) for v in RD._ATANH))
    if T is np.float32:
        f = R._F
        c.update(E32_LOG2E=f["log2e"], E32_C1=f["c1"], E32_C2=f["c2"], E32_P0=f["p0"], E32_P1=f["p1"],
                 E32_P2=f["p2"], E32_P3=f["p3"], E32_P4=f["p4"], E32_P5=f["p5"],
                 E32_MINLOG=f["minlog"], E32_MAXLOG=f["maxlog"])
    else:
        c.update(E64_LOG2E=T(R._LOG2E), E64_C1=T(R._C1), E64_C2=T(R._C2), E64_MINLOG=T(R._MINLOG),
                 E64_MAXLOG=T(R._MAXLOG), **{f"E64_P{i}": T(v) for i, v in enumerate(R._P)},
                 **{f"E64_Q{i}": T(v) for i, v in enumerate(R._Q)})
    return c


def ranks_before(sa, a, sb, b):
    """soft_nms.h's ranks_before: (score sa, index a) ranks before (sb, b) -- NaN first, then the
    higher score (-0 == +0), then the lower index. A strict total order on distinct indices, so a
    block-wide argmax under it picks the same in any reduction order."""
    if (sa != sa and sb == sb) or sa > sb:
        return True
    if (sb != sb and sa == sa) or sb > sa:
        return False
    return a < b


SOFT_NMS_FUNCS = (dk_floor, dk_ldexp, dk_exp, soft_nms_weight, ranks_before)


# ---- diou_nms.h, matrix_nms.h (issue 13) ----------------------------------------------------------
# The numba twins of dk_log / dk_pow / diou_nms_measure / matrix_nms_term, compiled with the
# soft_nms functions above (they need dk_exp; numba/cpu.py's _build_exp; numba/cuda.py compiles
# matrix_nms_term for its matrix_nms kernels); the L_* constants come from soft_nms_constants.

def dk_log(x):  # frexp (exact), then the atanh series of z = (m - 1) / (m + 1)
    if x != x:
        return x
    if x < ZERO:
        return DIV(ZERO, ZERO)
    if x == ZERO:
        return -E_INF
    if x == E_INF:
        return x
    mf, e = math.frexp(float(x))  # exact in float64 for a float32 x; m in [0.5, 1)
    m = TYPE(mf)
    if m < L_SQRT_HALF:
        m = ADD(m, m)
        e = e - 1
    z = DIV(SUB(m, ONE), ADD(m, ONE))
    z2 = MUL(z, z)
    p = L_ATANH[0]
    for k in range(1, 11):
        p = ADD(MUL(p, z2), L_ATANH[k])
    tz = ADD(z, z)
    return ADD(ADD(tz, MUL(MUL(tz, z2), p)), MUL(TYPE(e), L_LN2))


def dk_pow(r, beta):  # r^beta for r >= 0 (or NaN), beta > 0; beta == 1: r itself
    if beta == ONE:
        return r
    if r == ZERO:
        return ZERO
    return dk_exp(MUL(beta, dk_log(r)))


def diou_nms_measure(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b, beta):
    """DIoU-NMS's measure of candidate b against kept box a: nms_iou - R^beta (R: eps = 0)."""
    iou = nms_iou(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b)
    return SUB(iou, dk_pow(diou_penalty_of(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, ZERO), beta))


def matrix_nms_term(x, kernel, neg_sigma):  # the weight's numerator (x = d) or denominator (c)
    if kernel == 0:
        return dk_exp(MUL(neg_sigma, MUL(x, x)))
    return SUB(ONE, x)


DIOU_MATRIX_FUNCS = (dk_log, dk_pow, diou_nms_measure, matrix_nms_term)


# ---- compilation ----------------------------------------------------------------------------------

SCALAR_FUNCS = (std_max, std_min, nan_max, nan_min, clamp_min0, dk_atan, box_area, box_corners,
                diou_penalty, diou_penalty_of, pair_iou, nms_area, nms_iou, nms_suppresses,
                detect_anchor)


def constants(dtype) -> dict:
    """The typed constants the formulas use, as NumPy scalars of ``dtype`` (numba freezes such
    globals as constants of that type)."""
    T = np.dtype(dtype).type
    c = dict(ZERO=T(0), ONE=T(1), TWO=T(2), FOUR_OVER_PI2_T=T(FOUR_OVER_PI2))
    if T is np.float32:
        k = _ATAN32
        c.update(A32_T3P8=T(k["t3p8"]), A32_TP8=T(k["tp8"]), A32_PIO2=T(k["pio2"]),
                 A32_PIO4=T(k["pio4"]))
        # p = ((P0*z - P1)*z + P2)*z - P3 with the magnitudes of the C++ header's literals.
        c.update(A32_P0=T(k["p"][0]), A32_P1=T(-k["p"][1]), A32_P2=T(k["p"][2]), A32_P3=T(-k["p"][3]))
    else:
        k = _ATAN64
        c.update(A64_T3P8=T(k["t3p8"]), A64_MID=T(k["mid_cut"]), A64_PIO2=T(k["pio2"]),
                 A64_PIO4=T(k["pio4"]), A64_MORE=T(k["morebits"]), A64_HALFMORE=T(0.5 * k["morebits"]))
        for i, v in enumerate(k["p"]):  # P(z) = (((P0*z - |P1|)*z - |P2|)*z - |P3|)*z - |P4|
            c[f"A64_P{i}"] = T(v if i == 0 else -v)
        for i, v in enumerate(k["q"]):
            c[f"A64_Q{i}"] = T(v)
    return c


def per_dtype(cache: dict, build: Callable, dtype) -> types.SimpleNamespace:
    """``build(np.dtype(dtype))`` once per dtype name (the backend modules' compiled kernel sets;
    compilation itself is lazy, on first call or launch)."""
    dt = np.dtype(dtype)
    k = cache.get(dt.name)
    if k is None:
        k = cache[dt.name] = build(dt)
    return k


def specialise(dtype, ops: dict, compile_fn: Callable, extra: tuple = (),
               env: dict | None = None) -> types.SimpleNamespace:
    """Compile SCALAR_FUNCS (and ``extra`` functions, e.g. kernels written over them) for one
    dtype: each gets a private globals dict holding ``ops`` (ADD/SUB/MUL/DIV), the typed constants
    and the other compiled functions, then is passed through ``compile_fn`` (numba.njit,
    cuda.jit(device=True), or a kernel compiler for ``extra``); ``env`` adds globals the extra
    functions need (np, prange, cuda...). Returns them by name."""
    ns: dict = {}
    ns.update(globals())
    ns.update(env or {})
    ns.update(constants(dtype))
    ns.update(ops)
    out = types.SimpleNamespace(py={})  # py: the uncompiled specialised functions (for PTX lint)
    atan_src = atan_eval_f32 if np.dtype(dtype) == np.float32 else atan_eval_f64
    funcs = [(f.__name__, f, compile_fn) for f in SCALAR_FUNCS]
    funcs.append(("ATAN_EVAL", atan_src, compile_fn))
    funcs.extend(extra)
    for name, f, comp in funcs:
        g = types.FunctionType(f.__code__, ns, f.__name__, f.__defaults__, f.__closure__)
        out.py[name] = g
        ns[name] = comp(g)
        setattr(out, name, ns[name])
    out.ns = ns
    return out
