"""Numba backend: CPU ``@njit`` kernels (_numba_cpu.py) and ``numba.cuda`` kernels (_numba_cuda.py)
compiled from one copy of the scalar maths (_numba_math.py), bit-exact with the NumPy reference.

numba is imported on the first call of a Numba kernel, not when the registry loads this module
(importing numba takes ~0.5 s). Kernels compile on first use in each process: NMS per dtype, CPU
box_iou per (dtype, kind, fmt), about 2-5 s each on a 2-core machine; they are not cached on disk
(numba's cache cannot key kernels specialised at run time by their globals).

CUDA: whether numba.cuda can run is probed (importing numba) the first time this backend is
considered for a CUDA input, not when the registry loads this module.

Visiting order for NMS (descending score, NaN first, ties by index; then by class for
batched_nms) is computed on the host with NumPy for NumPy, CuPy and Numba arrays (one copy of the
scores and classes to the host), and with ``torch.sort(stable=True)`` on the device for torch
tensors. The suppression itself runs in the kernels.

RoI ops (roi_align, ps_roi_align, roi_pool, ps_roi_pool, forward and backward) run on the CPU
(_numba_roi.py, ``parallel=True``) and on CUDA (_numba_roi_cuda.py); their arithmetic is written
once (_numba_roi_math.py) and compiled for both targets, one kernel set per dtype (float32,
float64; float16/bfloat16 are widened by the Python layer). No float atomics and no shared
accumulators: every output element is owned by one thread (CPU: RoIs in parallel for the forward,
channel ranges for the backward; CUDA: one thread per output element for the forwards, per input
row or plane for the backwards), which sums its contributions in the reference's order, so the
bytes do not depend on the thread count or launch configuration. In-range samples of adaptive
grids (up to 65536 per axis and bin) are found by binary search, never by scanning the grid.
On the CPU, roi_align uses channels-last kernels (the channel loop vectorises) when the features
already are channels-last or the bins outnumber the map's pixels; strided inputs are copied to
contiguous ones first (on CUDA too; Numba device arrays through the host).
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np

from .. import _arrays as A
from .._registry import declare, probe, register
from ..reference.nms import score_order

if importlib.util.find_spec("numba") is None:
    declare("numba", False, "numba is not installed (pip install 'detkernels[numba]')")
else:
    declare("numba", True)


def _probe_cuda() -> str | None:
    """Run by the registry the first time numba is considered for a CUDA input (it imports numba,
    too slow for import time)."""
    from numba import cuda

    if cuda.is_available():
        return None
    return "numba.cuda finds no usable GPU/driver (numba.cuda.detect() says why)"


probe("numba", "cuda", _probe_cuda)

FMT_CODES = {"xyxy": 0, "xywh": 1, "cxcywh": 2}
KIND_CODES = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3}


def _cuda():
    """numba.cuda kernels, with a clear error where numba.cuda cannot run."""
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("detkernels: the numba backend cannot run on CUDA here: numba.cuda finds "
                           "no usable GPU/driver (numba.cuda.detect() says why)")
    from . import _numba_cuda

    return cuda, _numba_cuda


def _device_index(x: Any) -> int:
    d = A.device(x)
    return int(d.split(":")[1]) if ":" in d else 0


def _as_numba(cuda: Any, x: Any) -> Any:
    """A numba device array viewing ``x`` (zero-copy, no stream synchronisation: the kernels are
    enqueued on the caller's stream, see _stream)."""
    if x is None or A.kind(x) == "numba":
        return x
    return cuda.as_cuda_array(x, sync=False)


def _stream(cuda: Any, x: Any) -> Any:
    """The caller's current stream: torch's / CuPy's current stream, or a Numba array's own."""
    k = A.kind(x)
    if k in ("torch", "cupy"):
        h = A.current_stream(x)
        if h:
            return cuda.external_stream(h)
    else:
        s = getattr(x, "stream", 0)
        if s:
            return s
    # The CUDA simulator has no default_stream(); its streams are all synchronous anyway.
    return cuda.default_stream() if hasattr(cuda, "default_stream") else cuda.stream()


def _to_host(x: Any) -> np.ndarray:
    k = A.kind(x)
    if k == "numba":
        return x.copy_to_host()
    if k == "cupy":
        return x.get()
    if k == "torch":
        return x.cpu().numpy()
    return np.asarray(x)


def _host_order(s: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score order, visiting order, segment starts + n): the score order is the reference's;
    with classes the visiting order groups them (stable, so score rank is kept inside a class)."""
    o1 = score_order(s)
    n = o1.shape[0]
    if c is None:
        return o1, o1, np.array([0, n], np.int64)
    o = o1[np.argsort(c[o1], kind="stable")]
    cs = c[o]
    starts = np.flatnonzero(cs[1:] != cs[:-1]) + 1
    return o1, o, np.concatenate(([0], starts, [n])).astype(np.int64)


def _keep_from_flags(o1: np.ndarray, o: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Kept indices by descending score (ties by index) from keep flags over visiting order."""
    if o is o1:
        return o1[flags.astype(bool)]
    kept = np.zeros(o.shape[0], bool)
    kept[o[flags.astype(bool)]] = True
    return o1[kept[o1]]


@register("box_iou", "numba", devices=("cpu", "cuda"))
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    """b1 [B, N, 4], b2 [B, M, 4]: contiguous, same float dtype and device -> out [B, N, M]."""
    if A.device(b1) == "cpu":
        from . import _numba_cpu

        out = _numba_cpu.box_iou(A.to_numpy_view(b1), A.to_numpy_view(b2), KIND_CODES[kind],
                                 FMT_CODES[fmt], eps)
        return A.from_numpy(out, like=b1)
    cuda, K = _cuda()
    out = A.empty((b1.shape[0], b1.shape[1], b2.shape[1]), A.dtype_name(b1), like=b1)
    with cuda.gpus[_device_index(b1)]:
        K.box_iou(_as_numba(cuda, b1), _as_numba(cuda, b2), _as_numba(cuda, out), KIND_CODES[kind],
                  FMT_CODES[fmt], eps, _stream(cuda, b1))
    return out


@register("nms", "numba", devices=("cpu", "cuda"))
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices."""
    if A.device(boxes) == "cpu":
        from . import _numba_cpu

        s = A.to_numpy_view(scores)
        c = None if classes is None else A.to_numpy_view(classes)
        o1, o, seg = _host_order(s, c)
        flags = _numba_cpu.nms_keep(A.to_numpy_view(boxes), o, seg, iou_threshold)
        return A.from_numpy(_keep_from_flags(o1, o, flags), like=boxes)
    cuda, K = _cuda()
    with cuda.gpus[_device_index(boxes)]:
        if A.kind(boxes) == "torch":
            return _nms_torch_cuda(cuda, K, boxes, scores, classes, iou_threshold)
        s = _to_host(scores)
        c = None if classes is None else _to_host(classes)
        o1, o, _ = _host_order(s, c)
        stream = _stream(cuda, boxes)
        d_cls = None if c is None else cuda.to_device(np.ascontiguousarray(c), stream=stream)
        flags = K.nms_keep(_as_numba(cuda, boxes), cuda.to_device(o, stream=stream), d_cls,
                           iou_threshold, stream).copy_to_host(stream=stream)
        stream.synchronize()
        return A.from_numpy(_keep_from_flags(o1, o, flags), like=boxes)


def _nms_torch_cuda(cuda: Any, K: Any, boxes: Any, scores: Any, classes: Any, thr: float) -> Any:
    """torch CUDA tensors: sorting and compaction stay on the device (torch ops on the current
    stream); the one host sync is the output length, as in torchvision."""
    torch = sys.modules["torch"]
    # + 0 turns -0.0 into +0.0, so a radix sort cannot order -0.0 before +0.0 (the reference
    # treats them as equal); NaN ranks first in torch's descending sort.
    o1 = torch.sort(scores + 0, descending=True, stable=True).indices
    o = o1 if classes is None else o1[torch.sort(classes[o1], stable=True).indices]
    stream = _stream(cuda, boxes)
    flags = K.nms_keep(_as_numba(cuda, boxes), _as_numba(cuda, o), _as_numba(cuda, classes), thr,
                       stream)
    f = torch.as_tensor(flags, device=boxes.device).bool()
    if classes is None:
        return o1[f]
    kept = torch.zeros(o.shape[0], dtype=torch.bool, device=boxes.device)
    kept[o[f]] = True
    return o1[kept[o1]]


# ---- RoI ops (CPU and CUDA) ------------------------------------------------------------------------
# Inputs arrive in the working dtype (float32/float64; float16/bfloat16 are widened by roi_ops.py).
# Strided (channels-last) features and grads are made contiguous here (one copy), so each kernel
# compiles once per dtype. CUDA: the kernels write every element of their outputs (no memset) on
# the caller's stream, with no host synchronisation.

def _roi_np(x: Any) -> np.ndarray:
    return np.ascontiguousarray(A.to_numpy_view(x))


def _numel(x: Any) -> int:
    return int(np.prod(x.shape))  # torch's .size is a method


def _roi_cuda() -> tuple:
    """(numba.cuda, _numba_roi_cuda), with a clear error where numba.cuda cannot run."""
    cuda, _ = _cuda()
    from . import _numba_roi_cuda

    return cuda, _numba_roi_cuda


def _roi_launch(fn: Any, like: Any, arrays: tuple, *args: Any) -> None:
    """fn(*numba views of arrays, *args, stream) on like's device and stream."""
    cuda, _ = _roi_cuda()
    with cuda.gpus[_device_index(like)]:
        fn(*(_as_numba(cuda, a) for a in arrays), *args, _stream(cuda, like))


@register("roi_align", "numba", devices=("cpu", "cuda"), dtypes=("float32", "float64"))
def roi_align(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool) -> Any:
    """input [N, C, H, W] -> [K, Co, PH, PW] (Co = C, or C/(PH*PW) for ps)."""
    if A.device(input) == "cpu":
        from . import _numba_roi

        out = _numba_roi.roi_align(A.to_numpy_view(input), _roi_np(rois), spatial_scale, ph, pw,
                                   sampling_ratio, aligned, ps)
        return A.from_numpy(out, like=input)
    _, K = _roi_cuda()
    x, r = A.ascontig(input), A.ascontig(rois)
    out = A.empty((r.shape[0], x.shape[1] // (ph * pw) if ps else x.shape[1], ph, pw),
                  A.dtype_name(x), like=x)
    if _numel(out):
        _roi_launch(K.roi_align, x, (x, r, out), spatial_scale, ph, pw, sampling_ratio, aligned, ps)
    return out


@register("roi_align_backward", "numba", devices=("cpu", "cuda"), dtypes=("float32", "float64"))
def roi_align_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                       h: int, w: int, sampling_ratio: int, aligned: bool, ps: bool) -> Any:
    """grad [K, Co, PH, PW] -> grad_input [N, C, H, W] (contiguous)."""
    if A.device(grad) == "cpu":
        from . import _numba_roi

        gi = _numba_roi.roi_align_backward(_roi_np(grad), _roi_np(rois), spatial_scale, ph, pw,
                                           (n, c, h, w), sampling_ratio, aligned, ps)
        return A.from_numpy(gi, like=grad)
    _, K = _roi_cuda()
    g, r = A.ascontig(grad), A.ascontig(rois)
    gi = A.empty((n, c, h, w), A.dtype_name(g), like=g)
    if _numel(gi):
        _roi_launch(K.roi_align_backward, g, (g, r, gi), spatial_scale, ph, pw, sampling_ratio,
                    aligned, ps)
    return gi


@register("roi_pool", "numba", devices=("cpu", "cuda"), dtypes=("float32", "float64"))
def roi_pool(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool) -> tuple:
    """input [N, C, H, W] -> (out [K, Co, PH, PW], argmax or channel map int32 [K, Co, PH, PW])."""
    if A.device(input) == "cpu":
        from . import _numba_roi

        out, idx = _numba_roi.roi_pool(_roi_np(input), _roi_np(rois), spatial_scale, ph, pw, ps)
        return A.from_numpy(out, like=input), A.from_numpy(idx, like=input)
    _, K = _roi_cuda()
    x, r = A.ascontig(input), A.ascontig(rois)
    shape = (r.shape[0], x.shape[1] // (ph * pw) if ps else x.shape[1], ph, pw)
    out = A.empty(shape, A.dtype_name(x), like=x)
    idx = A.empty(shape, "int32", like=x)
    if _numel(out):
        _roi_launch(K.roi_pool, x, (x, r, out, idx), spatial_scale, ph, pw, ps)
    return out, idx


@register("roi_pool_backward", "numba", devices=("cpu", "cuda"), dtypes=("float32", "float64"))
def roi_pool_backward(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int, n: int,
                      c: int, h: int, w: int, ps: bool) -> Any:
    """grad [K, Co, PH, PW] (+ argmax int32 for roi_pool) -> grad_input [N, C, H, W]."""
    if A.device(grad) == "cpu":
        from . import _numba_roi

        gi = _numba_roi.roi_pool_backward(_roi_np(grad), _roi_np(rois), _roi_np(idx), spatial_scale,
                                          ph, pw, (n, c, h, w), ps)
        return A.from_numpy(gi, like=grad)
    _, K = _roi_cuda()
    g, r, i = A.ascontig(grad), A.ascontig(rois), A.ascontig(idx)
    gi = A.empty((n, c, h, w), A.dtype_name(g), like=g)
    if _numel(gi):
        _roi_launch(K.roi_pool_backward, g, (g, r, i, gi), spatial_scale, ph, pw, ps)
    return gi
