"""CuPy backend: the native build's CUDA sources, compiled at run time by NVRTC (``cupy.RawModule``).

One source of truth for GPU maths: ``cupy_kernels.cu`` includes the same ``__host__ __device__``
headers (csrc/common, csrc/ops/*/) and the very box_iou kernel (csrc/ops/box_iou/box_iou_kernel.cuh)
that nvcc compiles into detkernels._C, with the same float flags (``--fmad=false``, IEEE division
and square root, no flush-to-zero). Compiled once per device on first use (CuPy also caches the
binary on disk; the headers' hash is part of the source, so a changed header recompiles).

Inputs may be torch CUDA tensors, CuPy arrays or Numba device arrays (zero-copy views of their
memory); kernels and CuPy ops run on the caller's current stream; outputs are the caller's kind.
cupy is imported on the first call, never at ``import detkernels``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .. import _arrays as A
from .._registry import declare, probe, register
from ._numba_math import nms_threshold

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

FMT_CODES = {"xyxy": 0, "xywh": 1, "cxcywh": 2}
KIND_CODES = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3}
C_TYPES = {"float32": "float", "float64": "double"}
# The native build's CUDA float flags (CMakeLists.txt DK_CUDA_FLOAT_FLAGS), for NVRTC.
NVRTC_FLOAT_OPTIONS = ("--fmad=false", "--prec-div=true", "--prec-sqrt=true", "--ftz=false")
HEADERS = ("common/host_device.h", "ops/box_iou/box_iou.h", "ops/box_iou/box_iou_kernel.cuh",
           "ops/nms/nms.h")
_MODULES: dict = {}


def include_dir() -> Path:
    """Where the shared CUDA headers are: shipped in the package (detkernels/_csrc, copied there
    by setup.py) or, in a source checkout, the repository's csrc/."""
    pkg = Path(__file__).resolve().parents[1]
    for d in (pkg / "_csrc", pkg.parent / "csrc"):
        if (d / HEADERS[1]).is_file():
            return d
    raise RuntimeError(f"detkernels: the CUDA headers are missing (looked in {pkg / '_csrc'} and "
                       f"{pkg.parent / 'csrc'}); reinstall detkernels")


def source() -> str:
    """The NVRTC source: cupy_kernels.cu, tagged with a hash of the headers it includes."""
    inc = include_dir()
    h = hashlib.sha256()
    for name in HEADERS:
        h.update((inc / name).read_bytes())
    text = (Path(__file__).with_name("cupy_kernels.cu")).read_text()
    return f"// detkernels headers sha256 {h.hexdigest()}\n{text}"


def nvrtc_options() -> tuple:
    return ("-std=c++17", *NVRTC_FLOAT_OPTIONS, f"-I{include_dir()}")


def name_expressions() -> list[str]:
    """Every kernel instantiation the backend launches (GIoU/DIoU/CIoU take xyxy only)."""
    names = []
    for t in C_TYPES.values():
        for fmt in FMT_CODES.values():
            for kind in KIND_CODES.values():
                if kind == 0 or fmt == 0:
                    names.append(f"detkernels::box_iou_kernel<{t}, {fmt}, {kind}>")
        names += [f"detkernels::cupy_nms::gather<{t}>", f"detkernels::cupy_nms::mask<{t}>"]
    names.append("detkernels::cupy_nms::scan")
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


@register("box_iou", "cupy", devices=("cuda",))
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    """b1 [B, N, 4], b2 [B, M, 4]: contiguous, same float dtype and device -> out [B, N, M]."""
    cp = _cupy()
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    dt = A.dtype_name(b1)
    out = A.empty((B, N, M), dt, like=b1)
    with _On(cp, b1):
        fn = _module(cp).get_function(
            f"detkernels::box_iou_kernel<{C_TYPES[dt]}, {FMT_CODES[fmt]}, {KIND_CODES[kind]}>")
        # The kernel strides over rows and batches: the grid's y/z extents are only capped.
        fn(((M + 31) // 32, min((N + 7) // 8, 65535), min(B, 65535)), (32, 8),
           (_ptr(b1), _ptr(b2), _ptr(out), np.int64(B), np.int64(N), np.int64(M), np.dtype(dt).type(eps)))
    return out


def _score_order(cp: Any, s: Any) -> Any:
    """Stable descending order of ``s``, NaN first, -0.0 == +0.0 (reference.nms.score_order)."""
    nan = cp.isnan(s)
    # Ascending stable sort of -(s + 0): + 0 maps -0.0 to +0.0, so a radix sort sees one zero;
    # NaN keys get a finite stand-in and are then moved to the front by a second stable sort.
    o = cp.argsort(cp.where(nan, 0, -(s + 0)), kind="stable")
    return o[cp.argsort(~nan[o], kind="stable")]


@register("nms", "cupy", devices=("cuda",))
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    Sorting and compaction are CuPy ops on the device; the one host sync is the output length."""
    cp = _cupy()
    n = boxes.shape[0]
    dt = A.dtype_name(boxes)
    T = C_TYPES[dt]
    with _On(cp, boxes):
        mod = _module(cp)
        s, c = _view(cp, scores), _view(cp, classes)
        o1 = _score_order(cp, s)
        o = o1 if c is None else o1[cp.argsort(c[o1], kind="stable")]
        cols = cp.empty((5, n), dtype=dt)
        scls = cp.empty(n, dtype=cp.int64)
        mod.get_function(f"detkernels::cupy_nms::gather<{T}>")(
            ((n + 127) // 128,), (128,),
            (_ptr(boxes), o, o if c is None else c, np.int32(c is not None), np.int64(n), cols, scls))
        ncb = (n + 63) // 64
        if ncb > 65535:
            raise ValueError(f"nms (cupy): at most {65535 * 64} boxes, got {n}")
        try:
            mask = cp.empty((n, ncb), dtype=cp.uint64)
        except cp.cuda.memory.OutOfMemoryError as e:
            raise MemoryError(f"nms (cupy): the {n}x{ncb} suppression bitmask needs "
                              f"{n * ncb * 8 / 2**30:.2f} GiB of GPU memory: {e}") from e
        mod.get_function(f"detkernels::cupy_nms::mask<{T}>")(
            (ncb, ncb), (64,),
            (cols, scls, np.int64(n), np.int64(ncb), nms_threshold(iou_threshold, dt), mask))
        removed = cp.zeros(ncb, dtype=cp.uint64)
        keep = cp.zeros(n, dtype=cp.uint8)
        mod.get_function("detkernels::cupy_nms::scan")(
            (1,), (256,), (mask, np.int64(n), np.int64(ncb), removed, keep))
        f = keep.astype(bool)
        if c is None:
            r = o1[f]
        else:
            kept = cp.zeros(n, dtype=bool)
            kept[o[f]] = True
            r = o1[kept[o1]]
        return _as_kind(r, like=boxes)
