"""numba.cuda kernels over the scalar maths of _numba_math.py.

NVVM contracts ``a * b + c`` into an FMA even with ``fastmath=False`` (shared/BUILD-NOTES.md), so
every float operation is a libdevice ``*_rn`` intrinsic (never fused; IEEE rounding, IEEE
division). libdevice has no ``dsub_rn``: ``a - b`` is ``dadd_rn(a, -b)``, the same IEEE result.
tests/test_numba_ptx.py compiles these kernels to PTX without a GPU and checks for ``fma``,
``.f64`` in float32 kernels and approximate division.

In the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) there is no libdevice: the operations are the
plain operators on NumPy scalars of the working type, which are IEEE float32/float64 as well.

NMS: the boxes are visited in (class, score rank, index) order computed by the caller; a bitmask
kernel marks, for each box i and each 64-wide column block, which later boxes of the same class i
suppresses; one block then scans the boxes in order, keeping a box iff no kept box has marked it.
"""
from __future__ import annotations

import types
import warnings

import numba
import numpy as np
from numba import cuda

from . import _numba_math as M

SIM = bool(numba.config.ENABLE_CUDASIM)
_JIT = dict(fastmath=False)
WORD = 64  # boxes per mask word and per mask-kernel block
# The simulator runs threads ~2.7k/s: 2 scan threads still exercise the strided word loop.
SCAN_THREADS = 2 if SIM else 256
ONE64 = np.int64(1)


_add, _sub, _mul, _div = M.plain_add, M.plain_sub, M.plain_mul, M.plain_div


def _ops(dtype: np.dtype) -> dict:
    if SIM:
        return dict(ADD=_add, SUB=_sub, MUL=_mul, DIV=_div)
    from numba.cuda import libdevice as ld

    if dtype == np.float32:
        return dict(ADD=ld.fadd_rn, SUB=ld.fsub_rn, MUL=ld.fmul_rn, DIV=ld.fdiv_rn)
    dadd_rn = ld.dadd_rn

    def dsub_rn(a, b):
        return dadd_rn(a, -b)

    return dict(ADD=dadd_rn, SUB=cuda.jit(device=True, **_JIT)(dsub_rn), MUL=ld.dmul_rn, DIV=ld.ddiv_rn)


# ---- kernels (compiled per dtype by _numba_math.specialise) ---------------------------------------

def box_iou_kernel(b1, b2, out, fmt, kind, eps):
    """out[b, i, j] = metric(b1[b, i], b2[b, j]); grid x over j, y over i, z over b."""
    j, i = cuda.grid(2)
    b = cuda.blockIdx.z
    if i < out.shape[1] and j < out.shape[2]:
        a0, a1, a2, a3 = b1[b, i, 0], b1[b, i, 1], b1[b, i, 2], b1[b, i, 3]
        c0, c1, c2, c3 = b2[b, j, 0], b2[b, j, 1], b2[b, j, 2], b2[b, j, 3]
        out[b, i, j] = pair_iou(a0, a1, a2, a3, c0, c1, c2, c3, box_area(a0, a1, a2, a3, fmt),
                                box_area(c0, c1, c2, c3, fmt), fmt, kind, eps)


def nms_gather_kernel(boxes, order, cls, has_cls, cols, scls):
    """cols[:, p] = (x1, y1, x2, y2, area) of box order[p]; scls[p] its class (0 without)."""
    p = cuda.grid(1)
    if p < order.shape[0]:
        q = order[p]
        x1, y1, x2, y2 = boxes[q, 0], boxes[q, 1], boxes[q, 2], boxes[q, 3]
        cols[0, p] = x1
        cols[1, p] = y1
        cols[2, p] = x2
        cols[3, p] = y2
        cols[4, p] = nms_area(x1, y1, x2, y2)
        scls[p] = cls[q] if has_cls else 0


def nms_mask_kernel(cols, scls, thr, mask):
    """Block (cb, rb), thread t: bit c of mask[rb*64 + t, cb] is set iff box i = rb*64 + t
    suppresses box j = cb*64 + c, for j > i of the same class. Blocks below the diagonal exit."""
    n = cols.shape[1]
    rb = cuda.blockIdx.y
    cb = cuda.blockIdx.x
    if cb < rb:
        return
    t = cuda.threadIdx.x
    sh = cuda.shared.array((5, 64), SHARED_T)
    shc = cuda.shared.array(64, numba.int64)
    j0 = cb * WORD
    if j0 + t < n:
        for k in range(5):
            sh[k, t] = cols[k, j0 + t]
        shc[t] = scls[j0 + t]
    cuda.syncthreads()
    i = rb * WORD + t
    if i < n:
        ax1, ay1, ax2, ay2, aa, ci = cols[0, i], cols[1, i], cols[2, i], cols[3, i], cols[4, i], scls[i]
        bits = np.int64(0)
        start = t + 1 if cb == rb else 0
        stop = n - j0 if n - j0 < WORD else WORD
        for c in range(start, stop):
            if shc[c] == ci and nms_suppresses(ax1, ay1, ax2, ay2, aa, sh[0, c], sh[1, c], sh[2, c],
                                               sh[3, c], sh[4, c], thr):
                bits |= ONE64 << c
        mask[i, cb] = bits


def nms_scan_kernel(mask, n, removed, keep):
    """One block, boxes in order: keep[i] = 1 iff bit i of ``removed`` (zero-initialised) is
    clear when box i is reached; a kept box ORs its mask row into ``removed``."""
    t = cuda.threadIdx.x
    nt = cuda.blockDim.x
    ncb = mask.shape[1]
    for i in range(n):
        w = i // WORD
        alive = ((removed[w] >> (i % WORD)) & 1) == 0
        cuda.syncthreads()  # every thread has read word w before any writes it
        if alive:
            if t == 0:
                keep[i] = 1
            for x in range(w + t, ncb, nt):
                removed[x] |= mask[i, x]
        cuda.syncthreads()  # the ORs are visible before the next box is read


KERNELS = ("box_iou_kernel", "nms_gather_kernel", "nms_mask_kernel", "nms_scan_kernel")
_SPECS: dict = {}


def _specialise(dt: np.dtype, ops: dict | None = None) -> object:
    kern = cuda.jit(**_JIT)
    extra = tuple((name, globals()[name], kern) for name in KERNELS)
    env = dict(np=np, numba=numba, cuda=cuda, WORD=WORD, ONE64=ONE64,
               SHARED_T=numba.float32 if dt == np.float32 else numba.float64)
    return M.specialise(dt, ops or _ops(dt), cuda.jit(device=True, **_JIT), extra, env)


def kernels(dtype) -> object:
    """The compiled (lazily, on first launch) kernels for float32 or float64."""
    dt = np.dtype(dtype)
    k = _SPECS.get(dt.name)
    if k is None:
        k = _SPECS[dt.name] = _specialise(dt)
    return k


def signatures(dtype) -> dict:
    """Explicit signatures of the kernels (for compile_ptx)."""
    T = numba.from_dtype(np.dtype(dtype))
    i64 = numba.int64
    return {
        "box_iou_kernel": (T[:, :, ::1], T[:, :, ::1], T[:, :, ::1], i64, i64, T),
        "nms_gather_kernel": (T[:, ::1], i64[::1], i64[::1], numba.boolean, T[:, ::1], i64[::1]),
        "nms_mask_kernel": (T[:, ::1], i64[::1], T, i64[:, ::1]),
        "nms_scan_kernel": (i64[:, ::1], i64, i64[::1], numba.uint8[::1]),
    }


def ptx(dtype, cc: tuple = (9, 0), plain_operators: bool = False) -> dict:
    """PTX of every kernel for ``dtype``, compiled without a GPU (needs NVVM and libdevice, e.g.
    a CUDA toolkit under CUDA_HOME or /usr/local/cuda). For a lint: uses its own, fresh
    specialisation, never the one that launches kernels. ``plain_operators`` compiles with + - * /
    instead of the *_rn intrinsics (the lint's control: NVVM then emits FMAs)."""
    import numba.cuda.dispatcher as D

    plain = {n: cuda.jit(device=True, **_JIT)(f)
             for n, f in (("ADD", _add), ("SUB", _sub), ("MUL", _mul), ("DIV", _div))}
    k = _specialise(np.dtype(dtype), plain if plain_operators else None)
    # numba compiles a device function for the *current device's* compute capability even under
    # compile_ptx(cc=...), which fails without a driver: tell it the target instead.
    saved = D.get_current_device
    D.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    try:
        return {name: cuda.compile_ptx(k.py[name], sig, cc=cc)[0]
                for name, sig in signatures(dtype).items()}
    finally:
        D.get_current_device = saved


# ---- launches ------------------------------------------------------------------------------------

def _configure(kernel, grid, block, stream):
    """kernel[grid, block, stream] without numba's low-occupancy NumbaPerformanceWarning, which it
    raises for every grid under 128 blocks (small inputs; the one-block NMS scan by design)."""
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        return kernel[grid, block, stream]


def box_iou(b1, b2, out, kind: int, fmt: int, eps: float, stream) -> None:
    """b1 [B, N, 4], b2 [B, M, 4], out [B, N, M]: numba device arrays of one float dtype."""
    B, N, M_ = out.shape
    if B == 0 or N == 0 or M_ == 0:
        return
    if (N + 7) // 8 > 65535 or B > 65535:
        raise ValueError("box_iou (numba.cuda): N/8 and the batch size must be <= 65535")
    block = (32, 8)
    grid = ((M_ + 31) // 32, (N + 7) // 8, B)
    dt = np.dtype(out.dtype)
    _configure(kernels(dt).box_iou_kernel, grid, block, stream)(b1, b2, out, fmt, kind, dt.type(eps))


def nms_keep(boxes, order, cls, thr: float, stream):
    """Flags (uint8 device array) over positions of ``order``: 1 where that box is kept.
    boxes [n, 4], order int64 [n] (visiting order: class, then score rank), cls int64 [n] or None."""
    n = order.shape[0]
    dt = np.dtype(boxes.dtype)
    k = kernels(dt)
    ncb = (n + WORD - 1) // WORD
    cols = cuda.device_array((5, n), dtype=dt, stream=stream)
    scls = cuda.device_array(n, dtype=np.int64, stream=stream)
    has_cls = cls is not None
    if not has_cls:
        cls = cuda.device_array(1, dtype=np.int64, stream=stream)
    _configure(k.nms_gather_kernel, (n + 127) // 128, 128, stream)(
        boxes, order, cls, has_cls, cols, scls)
    try:
        mask = cuda.device_array((n, ncb), dtype=np.int64, stream=stream)
    except Exception as e:  # numba raises CudaAPIError for an out-of-memory allocation
        raise MemoryError(f"nms (numba.cuda): the {n}x{ncb} suppression bitmask needs "
                          f"{n * ncb * 8 / 2**30:.2f} GiB of GPU memory: {e}") from e
    _configure(k.nms_mask_kernel, (ncb, ncb), WORD, stream)(cols, scls, M.nms_threshold(thr, dt), mask)
    removed = cuda.to_device(np.zeros(ncb, np.int64), stream=stream)
    keep = cuda.to_device(np.zeros(n, np.uint8), stream=stream)
    _configure(k.nms_scan_kernel, 1, SCAN_THREADS, stream)(mask, n, removed, keep)
    return keep
