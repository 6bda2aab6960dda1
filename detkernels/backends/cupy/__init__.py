"""CuPy backend: the native build's CUDA sources, compiled at run time by NVRTC (``cupy.RawModule``).

One source of truth for GPU maths: ``kernels.cu`` (next to this file) includes the same
``__host__ __device__`` headers (csrc/common, csrc/ops/*/) and the very kernels (box_iou_kernel.cuh,
nms_kernels.cuh, roi_align_kernels.cuh, roi_pool_kernels.cuh, roi_scatter_kernels.cuh,
detect_kernels.cuh, ...) that nvcc compiles into detkernels._C, with the same float flags
(``--fmad=false``, IEEE division and square root, no flush-to-zero). Compiled once per device on first use (CuPy also caches the
binary on disk; the headers' hash is part of the source, so a changed header recompiles).

multi_image_nms (and so nms_padded, and nms as one image) runs nms_bitmask.h's algorithm with the
native CUDA build's own kernels (nms_kernels.cuh: nms_gather_kernel, nms_mask_kernel,
nms_scan_kernel) for the tiled mask and the per-image scan, and CuPy's stable sorts for the
visiting order: no host synchronisation, outputs of fixed size. Before the mask tiles, where the
rule allows (_sparse_use), the sparse path of nms_sparse_gpu.h runs its kernels
(nms_sparse_gpu_kernels.cuh; issue 16), as nms_cuda.cu does.

diou_nms (issue 13) is nms's path with one kernel changed: the mask tiles are diou_nms_kernels.cuh's
diou_nms_mask_kernel (the DIoU predicate of diou_nms.h) and the sparse path is not taken.

soft_nms / multi_image_soft_nms (issue 13) launch the native build's soft_nms_kernel (one block
per image, soft_nms_gpu.h); matrix_nms its gather and tiled column kernels (matrix_nms_gpu.h),
with CuPy's stable sorts and searchsorted for the plan.

detect (issue 12) runs csrc/ops/detect/detect_gpu.h's pipeline with the native build's kernels
(detect_kernels.cuh: score pass, image keys, selection, padding, compaction, output gather) in
detect_cuda.cu's order; CuPy's stable argsort on the kernels' own keys stands in for CUB's two
radix sorts (top-k, only when k < M), cupy.cumsum for its exclusive sum, and the [B, N] slots go
through multi_image_nms above. Greedy IoU NMS only (the other modes: NotImplementedError), no
host synchronisation, outputs of fixed size. Compiled and emulated (NumPy for CuPy,
tests/gpu_logic/test_cupy_sources.py), never run on a GPU.

Inputs may be torch CUDA tensors, CuPy arrays or Numba device arrays (zero-copy views of their
memory); kernels and CuPy ops run on the caller's current stream; outputs are the caller's kind.
cupy is imported on the first call, never at ``import detkernels``.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ... import _arrays as A
from ..._constants import (FMT_CODES, KIND_CODES, NMS_MASK_BYTES, ROI_ALIGN_MAX_SLOTS,
                           ROI_POOL_MAX_SLOTS, nms_threshold, nms_tile_rows)
from .._table import declare, probe, register

if importlib.util.find_spec("cupy") is None:
    declare("cupy", False, "cupy is not installed (pip install 'detkernels[cupy]', e.g. cupy-cuda13x)")
else:
    declare("cupy", True)


def _probe_cuda() -> str | None:
    """Run by the registry the first time cupy is considered for a CUDA input (imports cupy)."""
    import cupy

    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver: cudaErrorInsufficientDriver and the like
        return f"cupy sees no CUDA device ({type(e).__name__}: {e})"
    return None if n > 0 else "cupy sees no CUDA device"


probe("cupy", "cuda", _probe_cuda)

C_TYPES = {"float32": "float", "float64": "double"}
# box_iou also takes integer boxes (IoU/GIoU; float32 out). NVRTC's int64_t is long (host_device.h).
IOU_C_TYPES = {**C_TYPES, "int32": "int", "int64": "long"}
# The native build's CUDA float flags (CMakeLists.txt DK_CUDA_FLOAT_FLAGS), for NVRTC.
NVRTC_FLOAT_OPTIONS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")
# Every header kernels.cu includes, directly or not (their hash tags the source, see source()).
HEADERS = ("common/host_device.h", "ops/box_iou/box_iou.h", "ops/box_iou/box_iou_kernel.cuh",
           "common/grid_stride.cuh", "ops/nms/nms.h", "ops/nms/nms_bitmask.h",
           "ops/nms/nms_kernels.cuh", "ops/nms/nms_sparse_gpu.h", "ops/nms/nms_sparse_gpu_kernels.cuh",
           # RoI ops (section at the end of this file)
           "ops/roi_align/roi_align.h", "common/roi_scatter.h",
           "common/roi_scatter_kernels.cuh", "ops/roi_align/roi_align_gpu.h",
           "ops/roi_align/roi_align_kernels.cuh", "ops/roi_pool/roi_pool.h",
           "ops/roi_pool/roi_pool_gpu.h", "ops/roi_pool/roi_pool_kernels.cuh",
           # Soft-NMS (issue 13; section at the end of this file)
           "ops/nms/soft_nms.h", "ops/nms/soft_nms_gpu.h", "ops/nms/soft_nms_kernels.cuh",
           "ops/nms/matrix_nms.h", "ops/nms/matrix_nms_gpu.h", "ops/nms/matrix_nms_kernels.cuh",
           # DIoU-NMS (issue 13): the bitmask engine's DIoU mask kernel
           "ops/nms/diou_nms.h", "ops/nms/diou_nms_kernels.cuh",
           # detect (issue 12): the fused post-process's steps (section at the end of this file)
           "ops/detect/detect.h", "ops/detect/detect_gpu.h", "ops/detect/detect_kernels.cuh")
_MODULES: dict = {}


def include_dir() -> Path:
    """Where the shared CUDA headers are: shipped in the package (detkernels/_csrc, copied there
    by setup.py) or, in a source checkout, the repository's csrc/."""
    pkg = Path(__file__).resolve().parents[2]
    for d in (pkg / "_csrc", pkg.parent / "csrc"):
        if (d / HEADERS[1]).is_file():
            return d
    raise RuntimeError(f"detkernels: the CUDA headers are missing (looked in {pkg / '_csrc'} and "
                       f"{pkg.parent / 'csrc'}); reinstall detkernels")


def source() -> str:
    """The NVRTC source: kernels.cu, tagged with a hash of the headers it includes."""
    inc = include_dir()
    h = hashlib.sha256()
    for name in HEADERS:
        h.update((inc / name).read_bytes())
    text = (Path(__file__).with_name("kernels.cu")).read_text()
    return f"// detkernels headers sha256 {h.hexdigest()}\n{text}"


def nvrtc_options() -> tuple:
    return ("-std=c++17", *NVRTC_FLOAT_OPTIONS, f"-I{include_dir()}")


def name_expressions() -> list[str]:
    """Every kernel instantiation the backend launches (GIoU/DIoU/CIoU take xyxy only)."""
    names = []
    for dt, t in IOU_C_TYPES.items():
        for fmt in FMT_CODES.values():
            for kind in KIND_CODES.values():
                if (kind == 0 or fmt == 0) and (dt in C_TYPES or kind <= 1):  # integers: IoU, GIoU
                    names.append(f"detkernels::box_iou_kernel<{t}, {fmt}, {kind}>")
    names += nms_name_expressions()
    names += nms_sparse_name_expressions()
    names += roi_name_expressions()
    names += soft_nms_name_expressions()
    names += matrix_nms_name_expressions()
    names += diou_nms_name_expressions()
    names += detect_name_expressions()
    return names


def _cupy():
    try:
        import cupy
    except ImportError as e:  # declared available, but the import itself fails
        raise RuntimeError(f"detkernels: the cupy backend cannot import cupy: {e}") from e
    return cupy


def _module(cp: Any) -> Any:
    dev = cp.cuda.Device().id
    mod = _MODULES.get(dev)
    if mod is None:
        mod = cp.RawModule(code=source(), options=nvrtc_options(), name_expressions=name_expressions())
        mod.compile()
        _MODULES[dev] = mod
    return mod


class _On:
    """Context: the array's device and the caller's current stream (torch's, CuPy's, or a Numba
    array's own)."""

    def __init__(self, cp: Any, x: Any) -> None:
        d = A.device(x)
        self.dev = cp.cuda.Device(int(d.split(":")[1]) if ":" in d else 0)
        self.cp, self.x = cp, x

    def __enter__(self) -> None:
        self.dev.__enter__()
        if A.kind(self.x) == "cupy":
            self.stream = None
        else:
            h = A.current_stream(self.x)
            self.stream = self.cp.cuda.ExternalStream(h) if h else self.cp.cuda.Stream.null
            self.stream.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.stream is not None:
            self.stream.__exit__(*exc)
        self.dev.__exit__(*exc)


def _view(cp: Any, x: Any) -> Any:
    """A CuPy array over a contiguous device array's memory: zero-copy, and no stream
    synchronisation (cupy.asarray would synchronise on a __cuda_array_interface__ stream)."""
    if x is None or A.kind(x) == "cupy":
        return x
    dt = np.dtype(A.dtype_name(x))
    n = int(np.prod(x.shape))
    mem = cp.cuda.UnownedMemory(A.data_ptr(x), n * dt.itemsize, x, cp.cuda.Device().id)
    return cp.ndarray(tuple(x.shape), dt, cp.cuda.MemoryPointer(mem, 0))


def _as_kind(r: Any, like: Any) -> Any:
    """The CuPy result ``r`` as an array of ``like``'s kind, zero-copy. Called inside _On, where
    CuPy's current stream is the caller's, so the hand-over needs no synchronisation."""
    k = A.kind(like)
    if k == "cupy":
        return r
    if k == "torch":
        return sys.modules["torch"].from_dlpack(r)
    from numba import cuda

    return cuda.as_cuda_array(r, sync=False)


def _ptr(x: Any) -> np.uint64:
    return np.uint64(A.data_ptr(x))


@register("box_iou", "cupy", devices=("cuda",), dtypes=tuple(IOU_C_TYPES))
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    """b1 [B, N, 4], b2 [B, M, 4]: contiguous, same dtype and device -> out [B, N, M] (float32 for
    int32/int64 boxes, which take kind 'iou' or 'giou')."""
    cp = _cupy()
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    dt = A.dtype_name(b1)
    out_dt = "float64" if dt == "float64" else "float32"
    out = A.empty((B, N, M), out_dt, like=b1)
    with _On(cp, b1):
        fn = _module(cp).get_function(
            f"detkernels::box_iou_kernel<{IOU_C_TYPES[dt]}, {FMT_CODES[fmt]}, {KIND_CODES[kind]}>")
        # The kernel strides over rows and batches: the grid's y/z extents are only capped.
        fn(((M + 31) // 32, min((N + 7) // 8, 65535), min(B, 65535)), (32, 8),
           (_ptr(b1), _ptr(b2), _ptr(out), np.int64(B), np.int64(N), np.int64(M), np.dtype(out_dt).type(eps)))
    return out


def _argsort(xp: Any, a: Any, axis: int = -1) -> Any:
    """Stable argsort on ``xp`` (cupy, or numpy in tests). CuPy's sorts are always stable and
    older CuPy releases reject a ``kind`` argument, so it is passed to NumPy only."""
    if xp is np:
        return np.argsort(a, axis=axis, kind="stable")
    return xp.argsort(a, axis=axis)


def _score_order(xp: Any, s: Any) -> Any:
    """Stable descending order of ``s`` along its last axis, NaN first, -0.0 == +0.0
    (reference.nms.score_order per row). ``xp``: cupy (or numpy, for the tests)."""
    nan = xp.isnan(s)
    # Ascending stable sort of -(s + 0): + 0 maps -0.0 to +0.0, so a radix sort sees one zero;
    # NaN keys get a finite stand-in and are then moved to the front by a second stable sort.
    o = _argsort(xp, xp.where(nan, 0, -(s + 0)))
    return xp.take_along_axis(o, _argsort(xp, (~xp.take_along_axis(nan, o, -1)).astype(xp.uint8)), -1)


@register("nms", "cupy", devices=("cuda",))
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    multi_image_nms with one image and max_output = N, as the native CUDA build's nms: the same
    plan and kernels; the one host sync is the output length."""
    cp = _cupy()
    n = int(boxes.shape[0])
    with _On(cp, boxes):
        b, s = _view(cp, boxes).reshape(1, n, 4), _view(cp, scores).reshape(1, n)
        c = None if classes is None else _view(cp, classes).reshape(1, n)
        idx, _, counts = _multi_image_nms(cp, b, s, c, iou_threshold, n, None)
        return _as_kind(idx[0, :int(counts[0])], like=boxes)


# ---- multi_image_nms: plan with CuPy sorts, suppression by nms_bitmask.h's steps ---------------------
# The plan and the outputs are written against an array module ``xp`` (cupy here; numpy in
# tests/gpu_logic/test_cupy_sources.py, which checks them without a GPU).

NMS_THREADS = 256
NMS_SCAN_THREADS = 256  # nms_kernels.cuh kNmsScanThreads (its __launch_bounds__)


def nms_name_expressions() -> list[str]:
    """The NMS kernel instantiations the backend launches (nms_kernels.cuh)."""
    names = [f"detkernels::nms_{k}_kernel<{t}>" for t in C_TYPES.values() for k in ("gather", "mask")]
    return names + ["detkernels::nms_scan_kernel"]


def diou_nms_name_expressions() -> list[str]:
    """DIoU-NMS's own kernel (diou_nms_kernels.cuh, issue 13); its other steps are nms's."""
    return [f"detkernels::diou_nms_mask_kernel<{t}>" for t in C_TYPES.values()]


def nms_sparse_name_expressions() -> list[str]:
    """The sparse NMS path's kernel instantiations (nms_sparse_gpu_kernels.cuh, issue 16), which
    _multi_sparse launches."""
    names = [f"detkernels::nms_sparse_{k}_kernel<{t}>" for t in C_TYPES.values()
             for k in ("key", "gather", "block_box", "block_pairs", "edges")]
    return names + [f"detkernels::nms_sparse_{k}_kernel" for k in
                    ("decide", "cap", "init", "round", "finish", "output", "neutralise")]


# The sparse path (issue 16; csrc/ops/nms/nms_sparse_gpu.h S1-S6, launched as nms_cuda.cu's
# run_sparse does, with CuPy's stable argsort and cumsum for CUB's sort and sum). Constants of
# nms_sparse_gpu.h (tests/gpu_logic/test_nms_sparse_gpu_logic.py checks they agree).
# SPARSE_PATH: 0 the rule, 1 never, 2 forced (no density rule) -- nms_sparse.h's NmsPath.
SPARSE_PATH = 0
SPARSE_ROUNDS = 64               # kNmsSparseRounds
SPARSE_MIN_PER_IMAGE = 4096      # kNmsSparseMinPerImage
SPARSE_MIN_EDGES_PER_CAND = 16   # kNmsSparseMinEdgesPerCand
SPARSE_REDUCE_THREADS = 256      # kNmsSparseReduceThreads


def _sparse_use(n: int, M: int, t: Any) -> bool:
    """nms_sparse_gpu_use: the host (shape) side of the rule, and thr >= 0 (T-rounded)."""
    if SPARSE_PATH == 1 or n <= 0 or n >= 2 ** 31 or not (t >= 0):
        return False
    return SPARSE_PATH == 2 or M >= SPARSE_MIN_PER_IMAGE


def _multi_sparse(cp: Any, mod: Any, cols: Any, valid8: Any, seg: Any, keep: Any, edges: Any,
                  mask_bytes: int, n: int, T: str, t: Any) -> None:
    """The sparse path on the gathered columns: on success keep holds the kept flags and seg /
    valid8 are neutralised (the mask tiles and scan that follow find nothing to do); on a device
    fallback (non-finite box, density rule, edge capacity) nothing changed. No host sync."""
    f = mod.get_function
    grid = (max(1, min((n + NMS_THREADS - 1) // NMS_THREADS, 1 << 16)),)
    nb = (n + 63) // 64
    gb = (max(1, min((nb + NMS_THREADS - 1) // NMS_THREADS, 1 << 16)),)
    blk, i64 = (NMS_THREADS,), np.int64
    ctrl = cp.zeros(1 + SPARSE_ROUNDS, dtype=cp.uint32)  # fallback flag, undecided per round
    keys = cp.empty(n, dtype=cp.uint64)
    ranks = cp.empty(n, dtype=cp.int64)
    f(f"detkernels::nms_sparse_key_kernel<{T}>")(grid, blk, (cols[0], cols[1], keys, ranks, i64(n)))
    sp = _argsort(cp, keys)  # positions of keys are ranks (the kernel's ranks[p] = p)
    sp = sp[_argsort(cp, seg[sp])]  # S1: by segment, Z order within (stable sorts)
    scols = cp.empty_like(cols)
    sseg = cp.empty(n, dtype=cp.int64)
    svalid = cp.empty(n, dtype=cp.uint8)
    pos_of = cp.empty(n, dtype=cp.int32)
    f(f"detkernels::nms_sparse_gather_kernel<{T}>")(grid, blk, (
        sp, cols[0], cols[1], cols[2], cols[3], cols[4], seg, valid8, scols[0], scols[1],
        scols[2], scols[3], scols[4], sseg, svalid, pos_of, ctrl, i64(n)))
    bbox = cp.empty(4 * nb, dtype=cols.dtype)
    blo = cp.empty(nb, dtype=cp.int64)
    bhi = cp.empty(nb, dtype=cp.int64)
    f(f"detkernels::nms_sparse_block_box_kernel<{T}>")(gb, blk, (
        scols[0], scols[1], scols[2], scols[3], svalid, sseg, bbox, blo, bhi, i64(nb), i64(n), ctrl))
    if SPARSE_PATH != 2:  # S3, the density rule
        pairs = cp.empty(2 * nb, dtype=cp.int64)
        f(f"detkernels::nms_sparse_block_pairs_kernel<{T}>")(gb, blk, (bbox, blo, bhi, pairs, i64(nb), ctrl))
        f("detkernels::nms_sparse_decide_kernel")((1,), (SPARSE_REDUCE_THREADS,), (pairs, i64(nb), ctrl))
    cnt = cp.empty(n, dtype=cp.int64)
    fedges = f(f"detkernels::nms_sparse_edges_kernel<{T}>")
    common = (scols[0], scols[1], scols[2], scols[3], scols[4], sseg, sp, bbox, blo, bhi, i64(nb), i64(n), t)
    ge = (min(nb, 1 << 20),)
    fedges(ge, (64,), (*common, cnt, np.uint64(0), np.uint64(0), ctrl))  # count pass
    off = cp.zeros(n + 1, dtype=cp.int64)
    off[1:] = cp.cumsum(cnt)
    cap = max(mask_bytes // 4, SPARSE_MIN_EDGES_PER_CAND * n)  # nms_sparse_edge_cap
    f("detkernels::nms_sparse_cap_kernel")((1,), (1,), (off, i64(n), i64(cap), ctrl))
    fedges(ge, (64,), (*common, cnt, off, edges, ctrl))  # emit pass
    state = (cp.empty(n, dtype=cp.uint8), cp.empty(n, dtype=cp.uint8))
    f("detkernels::nms_sparse_init_kernel")(grid, blk, (svalid, state[0], i64(n), ctrl))
    fround = f("detkernels::nms_sparse_round_kernel")
    for r in range(SPARSE_ROUNDS):
        fround(grid, blk, (off, edges, state[r % 2], state[(r + 1) % 2], ctrl[1 + r:], i64(n), ctrl))
    fin = state[SPARSE_ROUNDS % 2]
    f("detkernels::nms_sparse_finish_kernel")((1,), (1,), (i64(n), pos_of, off, edges, fin,
                                                         ctrl[SPARSE_ROUNDS:], ctrl))
    f("detkernels::nms_sparse_output_kernel")(grid, blk, (sp, fin, keep, i64(n), ctrl))
    f("detkernels::nms_sparse_neutralise_kernel")(grid, blk, (seg, valid8, i64(n), ctrl))


def _multi_plan(xp: Any, s: Any, cls: Any, N: int, Cc: int, sthr: float | None) -> tuple:
    """Visiting plan of multi_image_nms on ``xp`` arrays, no host sync. ``s`` [B, M] scores by
    candidate q = n * Cc + c, ``cls`` [B, M] int64 classes or None.

    Returns (o1, o, valid, seg, rows): o1 [B, M] each image's candidates by descending score (NaN
    first, ties by q); o [B, M] them in (valid, class, score, q) order -- sorted position
    p = b * M + j holds candidate o[b, j]; valid [B * M] bool per position (score filter);
    seg [B * M] the start of p's segment (same image and class, both valid; a filtered candidate
    is a segment of its own); rows [B * M] p's row of boxes [B * N, 4]."""
    B, M = s.shape
    o1 = _score_order(xp, s)
    o = o1
    if cls is not None:
        o = xp.take_along_axis(o, _argsort(xp, xp.take_along_axis(cls, o, 1), 1), 1)
    n = B * M
    if sthr is not None:
        v2 = s.astype(xp.float64) > sthr  # NaN fails
        inval = (~xp.take_along_axis(v2, o, 1)).astype(xp.uint8)
        o = xp.take_along_axis(o, _argsort(xp, inval, 1), 1)
        valid = xp.take_along_axis(v2, o, 1).reshape(n)
    else:
        valid = xp.ones(n, dtype=bool)
    pos = xp.arange(n, dtype=xp.int64)
    head = (pos % M == 0) | ~valid
    head[1:] |= ~valid[:-1]
    if cls is not None:
        c = xp.take_along_axis(cls, o, 1).reshape(n)
        head[1:] |= c[1:] != c[:-1]
    # seg = running max of (head ? p : 0), from segment ids (no max-scan needed): the head
    # positions are scattered to their ids; non-heads write a dummy slot n.
    sid = xp.cumsum(head.astype(xp.int64)) - 1
    starts = xp.zeros(n + 1, dtype=xp.int64)
    starts[xp.where(head, sid, n)] = pos
    seg = starts[sid]
    rows = (pos // M) * N + o.reshape(n) // Cc
    return o1, o, valid, seg, rows


def _multi_outputs(xp: Any, o1: Any, o: Any, keep: Any, valid: Any, max_output: int, Cc: int,
                   per_class: bool) -> tuple:
    """(indices [B, K], classes [B, K] or None, counts [B]) from keep flags over positions: each
    image's kept candidates in o1's order, the first K, padded with -1. No host sync."""
    B, M = o1.shape
    n = B * M
    kept = keep.astype(bool) & valid
    by_cand = xp.zeros(n, dtype=bool)
    by_cand[(xp.arange(n, dtype=xp.int64) // M) * M + o.reshape(n)] = kept
    ko = xp.take_along_axis(by_cand.reshape(B, M), o1, 1)  # kept flags in score order
    final = xp.take_along_axis(o1, _argsort(xp, (~ko).astype(xp.uint8), 1), 1)
    counts = xp.minimum(ko.sum(axis=1), max_output).astype(xp.int64)
    take = min(max_output, M)
    slot = xp.arange(take)[None, :] < counts[:, None]
    out = xp.full((B, max_output), -1, dtype=xp.int64)
    out[:, :take] = xp.where(slot, final[:, :take] // Cc, -1)
    cls = None
    if per_class:
        cls = xp.full((B, max_output), -1, dtype=xp.int64)
        cls[:, :take] = xp.where(slot, final[:, :take] % Cc, -1)
    return out, cls, counts


def _multi_suppress(cp: Any, mod: Any, boxes: Any, scores: Any, o: Any, seg: Any, N: int, M: int,
                    B: int, dt: str, thr: float, sthr: float | None, beta: float | None = None) -> Any:
    """Keep flags (uint8, per sorted position) for the plan ``o`` (its ``seg``): columns gathered,
    then mask tiles and the per-image scan of nms_bitmask.h -- the native build's kernels
    (nms_kernels.cuh) -- all enqueued on the current stream. With ``beta``: DIoU-NMS (the mask
    tiles are diou_nms_mask_kernel's, no sparse path), as nms_cuda.cu's diou_nms_multi_cuda."""
    T = C_TYPES[dt]
    n = B * M
    ncb = (n + 63) // 64
    W = min((M + 63) // 64 + 1, ncb)  # nms_mask_width
    R = nms_tile_rows(n, W, NMS_MASK_BYTES)
    # nms_gather_kernel takes candidate ids q = b * M + o[b, j] (it finds their boxes itself, as
    # the plan's rows) and writes the validity of the score filter the plan applied.
    cand = (cp.arange(n, dtype=cp.int64) // M) * M + o.reshape(n)
    cols = cp.empty((5, n), dtype=dt)
    valid8 = cp.empty(n, dtype=cp.uint8)
    has_sthr = sthr is not None
    mod.get_function(f"detkernels::nms_gather_kernel<{T}>")(
        (max(1, min((n + NMS_THREADS - 1) // NMS_THREADS, 1 << 16)),), (NMS_THREADS,),  # grid_1d
        (cand, _ptr(boxes), scores, cols[0], cols[1], cols[2], cols[3], cols[4], valid8,
         np.int64(n), np.int64(M), np.int64(N), np.int64(M // N), np.int32(has_sthr),
         np.float64(sthr if has_sthr else 0.0)))
    t = nms_threshold(thr, dt)
    sparse = beta is None and _sparse_use(n, M, t)
    # The sparse path's edges alias the mask tiles (at least 16 int32 per candidate), as on nvcc.
    nbytes = max(R * W * 8, 4 * SPARSE_MIN_EDGES_PER_CAND * n) if sparse else R * W * 8
    try:
        buf = cp.empty(nbytes // 8, dtype=cp.uint64)
    except cp.cuda.memory.OutOfMemoryError as e:
        raise MemoryError(f"multi_image_nms (cupy): a {R}x{W} bitmask tile needs "
                          f"{nbytes / 2**30:.2f} GiB of GPU memory (lower "
                          f"DETKERNELS_NMS_MASK_BYTES): {e}") from e
    mask = buf[:R * W].reshape(R, W)
    removed = cp.zeros(ncb, dtype=cp.uint64)
    keep = cp.zeros(n, dtype=cp.uint8)
    if sparse:
        seg = seg.copy()  # neutralised on success; the plan's own stays intact
        _multi_sparse(cp, mod, cols, valid8, seg, keep, buf.view(cp.int32), R * W * 8, n,
                      T, t)
    if beta is None:
        fmask, extra = mod.get_function(f"detkernels::nms_mask_kernel<{T}>"), (t,)
    else:  # thr and beta rounded to T, as DiouNmsSuppress takes them
        fmask, extra = mod.get_function(f"detkernels::diou_nms_mask_kernel<{T}>"), (t, t.dtype.type(beta))
    fscan = mod.get_function("detkernels::nms_scan_kernel")
    for row0 in range(0, n, R):  # nms_cuda.cu's grid for each tile
        nrb = min(ncb, (row0 + R) // 64) - row0 // 64
        gx = max(1, min(ncb - row0 // 64, W, 16384 // nrb))
        fmask((gx, nrb), (64,), (cols[0], cols[1], cols[2], cols[3], cols[4], seg, mask,
                                 np.int64(n), np.int64(ncb), np.int64(W), np.int64(row0), *extra))
        fscan((B,), (NMS_SCAN_THREADS,), (np.int64(M), np.int64(R), np.int64(n), np.int64(row0),
                                           mask, np.int64(W), np.int64(ncb), removed, seg, valid8,
                                           keep))
    return keep


@register("multi_image_nms", "cupy", devices=("cuda",))
def multi_image_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                    score_threshold: float | None) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N] or [B, N, C] (same float dtype), classes int64 [B, N] or
    None -> (indices [B, K] int64, classes [B, K] int64 or None, counts [B] int64).
    CuPy sorts and the NVRTC kernels on the caller's stream: no host synchronisation, outputs of
    fixed size."""
    cp = _cupy()
    with _On(cp, boxes):
        outs = _multi_image_nms(cp, boxes, _view(cp, scores), _view(cp, classes), iou_threshold,
                                max_output, score_threshold)
        return tuple(None if x is None else _as_kind(x, like=boxes) for x in outs)


def _multi_image_nms(cp: Any, boxes: Any, scores: Any, classes: Any, iou_threshold: float,
                     max_output: int, score_threshold: float | None,
                     beta: float | None = None) -> tuple[Any, Any, Any]:
    """multi_image_nms on CuPy views of scores and classes (boxes: any contiguous device array),
    inside _On; returns CuPy arrays. With ``beta``: DIoU-NMS's (issue 13)."""
    B, N = int(boxes.shape[0]), int(boxes.shape[1])
    C = int(scores.shape[2]) if scores.ndim == 3 else 0
    Cc = max(C, 1)
    M = N * Cc
    per_class = scores.ndim == 3
    dt = A.dtype_name(boxes)
    if B * M == 0:
        out = cp.full((B, max_output), -1, dtype=cp.int64)
        return out, out.copy() if per_class else None, cp.zeros(B, dtype=cp.int64)
    s = scores.reshape(B, M)
    if C > 1:
        cls = cp.broadcast_to(cp.tile(cp.arange(C, dtype=cp.int64), N), (B, M))
    else:
        cls = None if classes is None else classes.reshape(B, N)
    o1, o, valid, seg, _ = _multi_plan(cp, s, cls, N, Cc, score_threshold)
    keep = _multi_suppress(cp, _module(cp), boxes, s, o, seg, N, M, B, dt, iou_threshold,
                           score_threshold, beta)
    return _multi_outputs(cp, o1, o, keep, valid, max_output, Cc, per_class)


@register("diou_nms", "cupy", devices=("cuda",))
def diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, beta: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    nms's path (one image, max_output = N) with the DIoU mask kernel, as the native CUDA build's
    diou_nms (issue 13); the one host sync is the output length."""
    cp = _cupy()
    n = int(boxes.shape[0])
    with _On(cp, boxes):
        b, s = _view(cp, boxes).reshape(1, n, 4), _view(cp, scores).reshape(1, n)
        c = None if classes is None else _view(cp, classes).reshape(1, n)
        idx, _, counts = _multi_image_nms(cp, b, s, c, iou_threshold, n, None, beta)
        return _as_kind(idx[0, :int(counts[0])], like=boxes)


# ---- RoI ops --------------------------------------------------------------------------------------
# roi_align / ps_roi_align and roi_pool / ps_roi_pool, forward and backward, launching the native
# build's kernels (csrc/ops/roi_align/roi_align_kernels.cuh, csrc/ops/roi_pool/roi_pool_kernels.cuh,
# csrc/common/roi_scatter_kernels.cuh). Inputs arrive as for the native backend (working
# dtype, rois and argmax contiguous, features and grads in any layout: element strides are passed);
# outputs are allocated in the caller's array kind. The backward is the deterministic atomic-free
# scatter of roi_scatter.h: where the nvcc build runs CUB (radix sort, scan) this runs
# cupy.argsort (stable: CuPy's sorts are stable, kind=None means 'stable') and cupy.cumsum.

ROI_THREADS = 256
# The caps on the slots of the backward sort (ROI_ALIGN_MAX_SLOTS, ROI_POOL_MAX_SLOTS) are
# detkernels._constants', shared with the native backend (and read from the same variables).
_SCATTER = {False: "RoiAlignScatter", True: "PsRoiPoolScatter"}  # key: is it ps_roi_pool


def roi_name_expressions() -> list[str]:
    """The RoI kernel instantiations the backend launches."""
    names = []
    for t in C_TYPES.values():
        names += [f"detkernels::roi_align_forward<{t}>", f"detkernels::roi_pool_forward<{t}>",
                  f"detkernels::roi_scatter_reduce<{t}>", f"detkernels::roi_pool_max_keys<{t}>",
                  f"detkernels::roi_pool_max_reduce<{t}>"]
        for pol in _SCATTER.values():
            names += [f"detkernels::roi_scatter_{step}<detkernels::{pol}<{t}>>"
                      for step in ("count", "key", "decode")]
    return names


def _blocks(n: int) -> tuple:
    return (min((n + ROI_THREADS - 1) // ROI_THREADS, 65535 * 16),)  # kernels grid-stride


def _elem_strides(x: Any) -> tuple:
    """Element strides of a 4-d array of any kind, as int64 kernel arguments."""
    if A.kind(x) == "torch":
        s = x.stride()
    else:
        item = np.dtype(A.dtype_name(x)).itemsize
        s = [v // item for v in x.strides]
    return tuple(np.int64(v) for v in s)


def _launch(mod: Any, name: str, n: int, args: tuple) -> None:
    if n > 0:
        mod.get_function(name)(_blocks(n), (ROI_THREADS,), args)


def _slot_cap(op: str, M: int, cap: int, env: str) -> None:
    if M > cap:
        raise MemoryError(f"detkernels: the cupy {op} backward needs {M} contribution slots "
                          f"(40 bytes each, plus sort scratch), more than the cap of {cap}; use "
                          f"fewer or smaller rois{', a positive sampling_ratio' if 'align' in op else ''}"
                          f", or raise {env}")


def _zeroed(cp: Any, shape: tuple, dt: str, like: Any) -> Any:
    """A zero-filled contiguous array of like's kind (filled by CuPy on the current stream)."""
    out = A.empty(shape, dt, like=like)
    if int(np.prod(shape)):
        _view(cp, out).fill(0)
    return out


def _scatter_backward(cp: Any, mod: Any, ps_pool: bool, geom: tuple, K: int, nb: int, dt: str,
                      grad: Any, C: int, HW: int, none: int, ps: bool, ph: int, pw: int, gi: Any,
                      op: str, cap: int, env: str) -> None:
    """Steps 1-5 of roi_scatter.h into the zeroed gi. One host sync: the slot count M."""
    with _oom_as_memory_error(cp, op, env):
        _scatter_steps(cp, mod, ps_pool, geom, K, nb, dt, grad, C, HW, none, ps, ph, pw, gi, op, cap, env)


@contextlib.contextmanager
def _oom_as_memory_error(cp: Any, op: str, env: str) -> Iterator[None]:
    """CuPy's OutOfMemoryError in a backward's slot arrays becomes a MemoryError saying what to do."""
    try:
        yield
    except Exception as e:
        if "OutOfMemory" in type(e).__name__:
            raise MemoryError(f"detkernels: the cupy {op} backward's slot arrays do not fit in GPU "
                              f"memory ({e}); use fewer or smaller rois, or lower {env}") from e
        raise


def _scatter_steps(cp: Any, mod: Any, ps_pool: bool, geom: tuple, K: int, nb: int, dt: str, grad: Any,
                   C: int, HW: int, none: int, ps: bool, ph: int, pw: int, gi: Any, op: str, cap: int,
                   env: str) -> None:
    T = C_TYPES[dt]
    pol = f"detkernels::{_SCATTER[ps_pool]}<{T}>"
    off = cp.zeros(K + 1, dtype=cp.int64)
    div = cp.empty(K * (nb if ps_pool else 1), dtype=dt)
    _launch(mod, f"detkernels::roi_scatter_count<{pol}>", K, (*geom, off, div))
    off = cp.cumsum(off)  # off[0] = 0: exclusive offsets of the slots
    M = int(off[-1])  # the one host synchronisation: M sizes the slot arrays
    _slot_cap(op, M, cap, env)
    if M == 0 or C == 0:
        return
    key = cp.empty(M, dtype=cp.int64)
    _launch(mod, f"detkernels::roi_scatter_key<{pol}>", M, (*geom, off, np.int64(M), key, np.uint64(0)))
    seq = cp.argsort(key)  # stable
    skey = key[seq]
    bins = cp.empty(M, dtype=cp.int64)
    w = cp.empty(M, dtype=dt)
    _launch(mod, f"detkernels::roi_scatter_decode<{pol}>", M, (*geom, off, np.int64(M), seq, bins, w))
    _launch(mod, f"detkernels::roi_scatter_reduce<{T}>", M * C,
            (skey, bins, w, div, np.int32(ps_pool), np.int64(M), _ptr(grad), *_elem_strides(grad),
             np.int64(C), np.int64(HW), np.int64(none), np.int32(ps), np.int64(ph), np.int64(pw),
             _ptr(gi)))


def _geom(rois: Any, dt: str, spatial_scale: float, K: int, ph: int, pw: int, n: int, h: int, w: int,
          sr: int, aligned: bool, ps: bool) -> tuple:
    """The kernels' leading scalar arguments (DK_ROI_GEOM_PARAMS)."""
    return (_ptr(rois), np.dtype(dt).type(spatial_scale), np.int64(K), np.int64(ph), np.int64(pw),
            np.int64(n), np.int64(h), np.int64(w), np.int64(sr), np.int32(aligned), np.int32(ps))


@register("roi_align", "cupy", devices=("cuda",))
def roi_align(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool) -> Any:
    """input [N, C, H, W] (any strides) -> [K, Co, PH, PW] (Co = C, or C/(PH*PW) for ps)."""
    cp = _cupy()
    N, C, H, W = (int(s) for s in input.shape)
    K = int(rois.shape[0])
    dt = A.dtype_name(input)
    Co = C // (ph * pw) if ps else C
    out = A.empty((K, Co, ph, pw), dt, like=input)
    st = _elem_strides(input)
    channels_inner = not ps and int(st[1]) == 1 and C > 1  # channels-last: coalesced reads
    with _On(cp, input):
        _launch(_module(cp), f"detkernels::roi_align_forward<{C_TYPES[dt]}>", K * Co * ph * pw,
                (_ptr(input), *st, np.int64(N), np.int64(Co), np.int64(H), np.int64(W), _ptr(rois),
                 np.int64(K), np.dtype(dt).type(spatial_scale), np.int64(ph), np.int64(pw),
                 np.int64(sampling_ratio), np.int32(aligned), np.int32(ps), np.int32(channels_inner),
                 _ptr(out)))
    return out


@register("roi_align_backward", "cupy", devices=("cuda",))
def roi_align_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                       h: int, w: int, sampling_ratio: int, aligned: bool, ps: bool) -> Any:
    """grad [K, Co, PH, PW] (any strides) -> grad_input [N, C, H, W], deterministic, no atomics."""
    cp = _cupy()
    dt = A.dtype_name(grad)
    K = int(rois.shape[0])
    with _On(cp, grad):
        gi = _zeroed(cp, (n, c, h, w), dt, grad)
        if K:
            geom = _geom(rois, dt, spatial_scale, K, ph, pw, n, h, w, sampling_ratio, aligned, ps)
            _scatter_backward(cp, _module(cp), False, geom, K, ph * pw, dt, grad, c, h * w, n * h * w,
                              ps, ph, pw, gi, "ps_roi_align" if ps else "roi_align",
                              ROI_ALIGN_MAX_SLOTS, "DETKERNELS_ROI_ALIGN_MAX_SLOTS")
    return gi


@register("roi_pool", "cupy", devices=("cuda",))
def roi_pool(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool) -> tuple:
    """input [N, C, H, W] (any strides) -> (out [K, Co, PH, PW], argmax or channel map int32)."""
    cp = _cupy()
    N, C, H, W = (int(s) for s in input.shape)
    K = int(rois.shape[0])
    dt = A.dtype_name(input)
    Co = C // (ph * pw) if ps else C
    out = A.empty((K, Co, ph, pw), dt, like=input)
    idx = A.empty((K, Co, ph, pw), "int32", like=input)
    st = _elem_strides(input)
    channels_inner = not ps and int(st[1]) == 1 and C > 1
    with _On(cp, input):
        _launch(_module(cp), f"detkernels::roi_pool_forward<{C_TYPES[dt]}>", K * Co * ph * pw,
                (_ptr(input), *st, np.int64(N), np.int64(Co), np.int64(H), np.int64(W), _ptr(rois),
                 np.int64(K), np.dtype(dt).type(spatial_scale), np.int64(ph), np.int64(pw),
                 np.int32(ps), np.int32(channels_inner), _ptr(out), _ptr(idx)))
    return out, idx


@register("roi_pool_backward", "cupy", devices=("cuda",))
def roi_pool_backward(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int, n: int,
                      c: int, h: int, w: int, ps: bool) -> Any:
    """grad [K, Co, PH, PW] (+ argmax int32 [K, C, PH, PW], contiguous, for roi_pool) ->
    grad_input [N, C, H, W]. roi_pool: its K*C*PH*PW slots need no host sync; ps_roi_pool syncs
    once for its slot count."""
    cp = _cupy()
    dt = A.dtype_name(grad)
    K = int(rois.shape[0])
    with _On(cp, grad):
        mod = _module(cp)
        gi = _zeroed(cp, (n, c, h, w), dt, grad)
        if ps:
            if K:
                geom = _geom(rois, dt, spatial_scale, K, ph, pw, n, h, w, 0, False, True)
                _scatter_backward(cp, mod, True, geom, K, ph * pw, dt, grad, c, h * w, n * h * w,
                                  True, ph, pw, gi, "ps_roi_pool", ROI_POOL_MAX_SLOTS,
                                  "DETKERNELS_ROI_POOL_MAX_SLOTS")
            return gi
        M, none = K * c * ph * pw, n * c * h * w
        _slot_cap("roi_pool", M, ROI_POOL_MAX_SLOTS, "DETKERNELS_ROI_POOL_MAX_SLOTS")
        if M == 0:
            return gi
        T = C_TYPES[dt]
        with _oom_as_memory_error(cp, "roi_pool", "DETKERNELS_ROI_POOL_MAX_SLOTS"):
            _roi_pool_max_backward(cp, mod, T, rois, idx, grad, M, none, n, c, h, w, ph, pw, gi)
    return gi


def _roi_pool_max_backward(cp: Any, mod: Any, T: str, rois: Any, idx: Any, grad: Any, M: int, none: int,
                           n: int, c: int, h: int, w: int, ph: int, pw: int, gi: Any) -> None:
    """RoIPool backward: one slot per output element, keyed by its argmax target (no host sync)."""
    key = cp.empty(M, dtype=cp.int64)
    _launch(mod, f"detkernels::roi_pool_max_keys<{T}>", M,
            (_ptr(rois), _ptr(idx), np.int64(M), np.int64(c), np.int64(ph * pw), np.int64(n),
             np.int64(h * w), key, np.uint64(0)))
    seq = cp.argsort(key)  # stable: each target's contributions stay in (n, ph, pw) order
    _launch(mod, f"detkernels::roi_pool_max_reduce<{T}>", M,
            (key[seq], seq, np.int64(M), np.int64(none), _ptr(grad), *_elem_strides(grad),
             np.int64(c), np.int64(ph), np.int64(pw), _ptr(gi)))


# ---- Soft-NMS (issue 13) ------------------------------------------------------------------------
# soft_nms_kernels.cuh's one launch, one block per image (the algorithm: csrc/ops/nms/soft_nms_gpu.h),
# the same kernel the native CUDA build launches.

SOFT_NMS_THREADS = 256  # csrc/ops/nms/soft_nms_gpu.h: kSoftNmsThreads
SOFT_NMS_METHODS = {"linear": 0, "gaussian": 1}  # csrc/ops/nms/soft_nms.h: SoftNmsMethod


def soft_nms_name_expressions() -> list[str]:
    return [f"detkernels::soft_nms_kernel<{t}>" for t in C_TYPES.values()]


def _soft_nms_multi(cp: Any, boxes: Any, scores: Any, classes: Any, max_output: int,
                    iou_threshold: float, sigma: float, method: str,
                    score_threshold: float) -> tuple[Any, Any, Any]:
    """multi_image_soft_nms on CuPy arrays (inside _On): one launch, no host synchronisation."""
    B, N, K = int(boxes.shape[0]), int(boxes.shape[1]), int(max_output)
    dt = A.dtype_name(boxes)
    out = cp.empty((B, K), dtype=np.int64)
    vals = cp.empty((B, K), dtype=np.dtype(dt))
    counts = cp.empty((B,), dtype=np.int64)
    if B == 0:
        return out, vals, counts
    n = max(B * N, 1)
    s = cp.empty((n,), dtype=np.dtype(dt))
    alive = cp.empty((n,), dtype=np.uint8)
    cnt = cp.empty((n,), dtype=np.int32) if classes is not None else None
    pick_idx = cp.empty((n,), dtype=np.int64)
    pick_s = cp.empty((n,), dtype=np.dtype(dt))
    null = np.uint64(0)
    _module(cp).get_function(f"detkernels::soft_nms_kernel<{C_TYPES[dt]}>")(
        (B,), (SOFT_NMS_THREADS,),
        (boxes, scores, null if classes is None else classes, np.int64(N),
         np.int32(SOFT_NMS_METHODS[method]), np.float64(iou_threshold), np.float64(sigma),
         np.float64(score_threshold), np.int64(K), s, alive, null if cnt is None else cnt, pick_idx,
         pick_s, out, vals, counts, null))  # n_valid: none (every box of each image)
    return out, vals, counts


@register("soft_nms", "cupy", devices=("cuda",))
def soft_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N], classes int64 [N] or None -> (indices, decayed scores) in pick
    order: the multi-image kernel with B = 1; one host synchronisation (the count)."""
    cp = _cupy()
    with _On(cp, boxes):
        n = int(boxes.shape[0])
        k = n if max_output is None else min(int(max_output), n)
        c = None if classes is None else _view(cp, classes).reshape(1, n)
        out, vals, counts = _soft_nms_multi(cp, _view(cp, boxes).reshape(1, n, 4),
                                            _view(cp, scores).reshape(1, n), c, k, iou_threshold,
                                            sigma, method, score_threshold)
        m = int(counts[0])
        return _as_kind(out[0, :m], like=boxes), _as_kind(vals[0, :m], like=boxes)


@register("multi_image_soft_nms", "cupy", devices=("cuda",))
def multi_image_soft_nms(boxes: Any, scores: Any, classes: Any, max_output: int, iou_threshold: float,
                         sigma: float, method: str, score_threshold: float) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N], classes int64 [B, N] or None -> (indices [B, K],
    scores [B, K], counts [B]); no host synchronisation."""
    cp = _cupy()
    with _On(cp, boxes):
        outs = _soft_nms_multi(cp, _view(cp, boxes), _view(cp, scores), _view(cp, classes),
                               max_output, iou_threshold, sigma, method, score_threshold)
        return tuple(_as_kind(x, like=boxes) for x in outs)


# ---- Matrix NMS (issue 13) ----------------------------------------------------------------------
# matrix_nms_gpu.h's S3-S5 with the native build's kernels (matrix_nms_kernels.cuh: gather, the
# tiled column passes); the plan between them (S1, S2, the class starts, S6) with CuPy's stable
# sorts, as for NMS.

MATRIX_NMS_THREADS = 256  # csrc/ops/nms/matrix_nms_gpu.h: kMatrixNmsThreads
MATRIX_NMS_KERNELS = {"gaussian": 0, "linear": 1}  # csrc/ops/nms/matrix_nms.h: MatrixNmsKernel


def matrix_nms_name_expressions() -> list[str]:
    return [f"detkernels::matrix_nms_{k}_kernel<{t}>" for t in C_TYPES.values()
            for k in ("gather", "column")]


def _matrix_plan(xp: Any, scores: Any, labels: Any, pre_top_k: int | None) -> tuple[Any, Any, Any]:
    """S1-S3's plan: ``order`` (rank -> candidate: score_order, the first pre_top_k), ``pos_rank``
    (position -> rank: classes ascending, ranks ascending within one) and ``seg`` (position -> the
    first position of its class). ``xp``: cupy (or numpy, for the tests)."""
    order = _score_order(xp, scores)
    if pre_top_k is not None:
        order = order[:int(pre_top_k)]
    lab = labels[order]
    pos_rank = _argsort(xp, lab)
    ls = lab[pos_rank]
    return order, pos_rank, xp.searchsorted(ls, ls, side="left").astype(np.int64)


def _matrix_final(xp: Any, kept: Any, dec: Any, max_output: int | None) -> tuple[Any, Any]:
    """S6: the kept candidates (ascending index) ordered by decayed score (NaN first, ties by
    index), the first max_output."""
    sel = xp.flatnonzero(kept)
    val = dec[sel]
    o = _score_order(xp, val)
    if max_output is not None:
        o = o[:int(max_output)]
    return sel[o].astype(np.int64), val[o]


def _matrix_nms(cp: Any, boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
                score_threshold: float | None, max_output: int | None,
                pre_top_k: int | None) -> tuple[Any, Any]:
    """matrix_nms on CuPy arrays (inside _On); one host synchronisation (the kept count)."""
    n = int(boxes.shape[0])
    dt = np.dtype(A.dtype_name(boxes))
    T = C_TYPES[dt.name]
    order, pos_rank, seg = _matrix_plan(cp, scores, labels, pre_top_k)
    m = int(order.shape[0])
    kept = cp.zeros((n,), dtype=np.uint8)
    dec = cp.zeros((n,), dtype=dt)
    if m > 0:
        mod = _module(cp)
        x1, y1, x2, y2, area, den = (cp.empty((m,), dtype=dt) for _ in range(6))
        head = cp.empty((m,), dtype=np.int64)  # the native plan's max-scan input; seg is searchsorted's
        grid = (min((m + MATRIX_NMS_THREADS - 1) // MATRIX_NMS_THREADS, 1 << 16),)  # grid-strided
        mod.get_function(f"detkernels::matrix_nms_gather_kernel<{T}>")(
            grid, (MATRIX_NMS_THREADS,),
            (pos_rank, order, boxes, labels, x1, y1, x2, y2, area, head, np.int64(m)))
        has_thr = score_threshold is not None
        for decay in (0, 1):
            mod.get_function(f"detkernels::matrix_nms_column_kernel<{T}>")(
                grid, (MATRIX_NMS_THREADS,),
                (np.int32(decay), x1, y1, x2, y2, area, seg, den, np.int64(m),
                 np.int32(MATRIX_NMS_KERNELS[kernel]), np.float64(sigma), pos_rank, order, scores,
                 np.int32(has_thr), np.float64(score_threshold if has_thr else 0.0), dec, kept))
    return _matrix_final(cp, kept, dec, max_output)


@register("matrix_nms", "cupy", devices=("cuda",))
def matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None,
               pre_top_k: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N] (same float dtype), labels int64 [N] -> (indices, decayed scores)."""
    cp = _cupy()
    with _On(cp, boxes):
        idx, val = _matrix_nms(cp, _view(cp, boxes), _view(cp, scores), _view(cp, labels), kernel,
                               sigma, score_threshold, max_output, pre_top_k)
        return _as_kind(idx, like=boxes), _as_kind(val, like=boxes)


# ---- detect (issue 12) --------------------------------------------------------------------------
# csrc/ops/detect/detect_gpu.h's pipeline with the native build's kernels (detect_kernels.cuh),
# launched in detect_cuda.cu's order: score pass -> (top-k only when k < M: two stable sorts of
# every candidate -- CuPy's argsort standing in for CUB's radix sorts, on the same keys the
# kernels write) -> selection -> exclusive sum (cupy.cumsum) + compaction into [B, N] slots ->
# this backend's multi-image NMS (_multi_image_nms) over the slots -> output gather. No host
# synchronisation, fixed-size outputs. Greedy IoU NMS only (nms_modes), as native CUDA.

DETECT_THREADS = 256  # detect_cuda.cu kThreads


def detect_name_expressions() -> list[str]:
    """The detect kernel instantiations the backend launches (detect_kernels.cuh)."""
    names = [f"detkernels::detect_{k}_kernel<{t}>" for t in C_TYPES.values()
             for k in ("score", "pad", "compact", "output")]
    return names + ["detkernels::detect_image_key_kernel", "detkernels::detect_select_kernel"]


def _grid_1d(n: int) -> tuple:
    """detect_cuda.cu's grid_1d: the kernels grid-stride, the grid is only capped."""
    return (max(1, min((n + DETECT_THREADS - 1) // DETECT_THREADS, 1 << 16)),)


def detect_shape(B: int, A: int, C: int, multi_label: bool, top_k: int | None) -> tuple:
    """(M, N, sort): candidates per image (detect_gpu_candidates), slots per image entering NMS
    (detect_gpu_slots) and whether the top-k sorts run (k < M, some candidate)."""
    multi = bool(multi_label) and C > 0
    M = A * C if multi else A
    k = -1 if top_k is None else int(top_k)
    N = k if 0 <= k < M else M
    return M, N, N < M and B * M > 0


# DK_DETECT_GPU_PARAMS's fields in order (detect_kernels.cuh; the test compares the two lists).
DETECT_GPU_FIELDS = ("boxes", "scores", "obj", "idxs", "A", "C", "M", "box_image", "box_anchor",
                     "box_coord", "score_image", "score_anchor", "score_class", "obj_image",
                     "obj_anchor", "fmt", "multi", "has_thr", "thr")


def _detect_args(boxes: Any, scores: Any, objectness: Any, idxs: Any, A_: int, C: int, M: int,
                 fmt: str, multi: bool, score_threshold: float | None) -> tuple:
    """DetectGpuArgs field by field (DETECT_GPU_FIELDS' order): inputs in any layout, read
    through their element strides as on native."""
    bst, sst = _elem_strides(boxes), _elem_strides(scores)
    ost = (np.int64(0), np.int64(0)) if objectness is None else _elem_strides(objectness)
    has_thr = score_threshold is not None
    null = np.uint64(0)
    f = dict(boxes=_ptr(boxes), scores=_ptr(scores),
             obj=null if objectness is None else _ptr(objectness),
             idxs=null if idxs is None else _ptr(idxs), A=np.int64(A_), C=np.int64(C),
             M=np.int64(M), box_image=bst[0], box_anchor=bst[1], box_coord=bst[2],
             score_image=sst[0], score_anchor=sst[1], score_class=sst[2] if C else np.int64(0),
             obj_image=ost[0], obj_anchor=ost[1], fmt=np.int32(FMT_CODES[fmt]),
             multi=np.int32(multi), has_thr=np.int32(has_thr),
             thr=np.float64(score_threshold if has_thr else 0.0))
    return tuple(f[name] for name in DETECT_GPU_FIELDS)


def _detect(cp: Any, boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float,
            max_det: int, score_threshold: float | None, top_k: int | None, fmt: str,
            multi_label: bool, class_agnostic: bool) -> tuple:
    """detect inside _On, on ``cp`` (cupy; NumPy with emulated kernels in the tests): CuPy arrays
    (boxes [B, K, 4], scores [B, K], classes [B, K], indices [B, K], counts [B])."""
    B, A_ = int(boxes.shape[0]), int(boxes.shape[1])
    C = int(scores.shape[2]) if scores.ndim == 3 else 0  # C = 0: [B, A] scores, as on native
    if scores.ndim == 3 and C == 0:  # [B, A, 0]: no candidates at all
        A_ = 0
    multi = bool(multi_label) and C > 0
    M, N, sort = detect_shape(B, A_, C, multi, top_k)
    total, slots, K = B * M, B * N, int(max_det)
    dt = np.dtype(A.dtype_name(boxes))
    T = C_TYPES[dt.name]
    i64, blk = np.int64, (DETECT_THREADS,)
    cbox = cp.empty((slots, 4), dtype=dt)
    cscore = cp.empty((slots,), dtype=dt)
    ccls = cp.empty((slots,), dtype=np.int64)
    canchor = cp.empty((slots,), dtype=np.int64)
    if slots > 0:
        f = _module(cp).get_function
        g = _detect_args(boxes, scores, objectness, idxs, A_, C, M, fmt, multi, score_threshold)
        score = cp.empty((total,), dtype=dt)
        cls = cp.empty((total,), dtype=np.int64)
        valid = cp.empty((total,), dtype=np.uint8)
        # 1. score pass; with a top-k, the first sort's keys (nms_score_key) and values (gq)
        keys = cp.empty((total,), dtype=np.uint64) if sort else None
        vals = cp.empty((total,), dtype=np.int64) if sort else None
        null = np.uint64(0)
        f(f"detkernels::detect_score_kernel<{T}>")(_grid_1d(total), blk, (
            *g, score, cls, valid, null if keys is None else keys, null if vals is None else vals,
            i64(total)))
        # 2. top-k: CUB's SortPairs by score key, then by image key (detect_image_key_kernel:
        # image, valid first) -- both stable, so ties keep ascending gq, as the radix sorts.
        order = None
        if sort:
            order = vals[_argsort(cp, keys)]
            ikeys = cp.empty((total,), dtype=np.uint64)
            f("detkernels::detect_image_key_kernel")(_grid_1d(total), blk,
                                                     (order, valid, ikeys, i64(total), i64(M)))
            order = order[_argsort(cp, ikeys)]
        sel = cp.empty((total,), dtype=np.int64)
        f("detkernels::detect_select_kernel")(_grid_1d(total), blk, (
            null if order is None else order, valid, i64(M), i64(N if sort else M), sel, i64(total)))
        # 3. slots: exclusive sum of the selection in gq order, padding, compaction
        pos = cp.cumsum(sel) - sel
        f(f"detkernels::detect_pad_kernel<{T}>")(_grid_1d(slots), blk,
                                                 (cbox, cscore, ccls, canchor, i64(slots)))
        f(f"detkernels::detect_compact_kernel<{T}>")(_grid_1d(total), blk, (
            *g, i64(N), sel, pos, score, cls, cbox, cscore, ccls, canchor, i64(total)))
    # 4. NMS of the [B, N] slots: slot order is candidate order, so its ties are the reference's
    # (N == 0: padding and zero counts)
    per_class = not class_agnostic and (C > 0 or idxs is not None)
    idx, _, counts = _multi_image_nms(cp, cbox.reshape(B, N, 4), cscore.reshape(B, N),
                                      ccls.reshape(B, N) if per_class else None, iou_threshold, K,
                                      score_threshold)
    # 5. outputs (idx: the kept slots on entry, the anchors on exit)
    ob = cp.empty((B, K, 4), dtype=dt)
    os_ = cp.empty((B, K), dtype=dt)
    oc = cp.empty((B, K), dtype=np.int64)
    if B * K > 0:
        _module(cp).get_function(f"detkernels::detect_output_kernel<{T}>")(_grid_1d(B * K), blk, (
            i64(B), i64(K), i64(N), counts, cbox, cscore, ccls, canchor,
            np.uint64(0),  # dec: none (greedy NMS keeps the scores)
            ob, os_, oc, idx))
    return ob, os_, oc, idx, counts


@register("detect", "cupy", devices=("cuda",))
def detect(boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float, max_det: int,
           score_threshold: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool, nms: Any = None) -> tuple:
    """boxes [B, A, 4], scores [B, A] or [B, A, C], objectness [B, A] or None (one float dtype,
    any strides), idxs int64 [B, A] contiguous or None -> (boxes [B, K, 4] xyxy, scores [B, K],
    classes [B, K], indices [B, K], counts [B]) of the caller's kind; no host synchronisation.
    Greedy IoU NMS only (``nms`` other than "iou": _dispatch.detect_select refuses it first)."""
    if nms is not None and nms.mode != "iou":
        raise NotImplementedError(f"cupy detect runs nms='iou' only, got nms={nms.mode!r}")
    cp = _cupy()
    with _On(cp, boxes):
        outs = _detect(cp, boxes, scores, objectness, idxs, iou_threshold, max_det,
                       score_threshold, top_k, fmt, multi_label, class_agnostic)
        return tuple(_as_kind(x, like=boxes) for x in outs)


detect.nms_modes = {}  # CUDA: greedy IoU NMS only (detect_gpu.h), as native CUDA
