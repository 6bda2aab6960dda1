"""The compiled core, detkernels._C: C++ CPU kernels and (when built with nvcc) CUDA kernels.

Only loops, launches and memory here: inputs arrive validated, promoted and contiguous from
detkernels/_dispatch.py; outputs are allocated in the caller's array library, on its device, and the
kernel is enqueued on the caller's current CUDA stream.
"""
from __future__ import annotations

import glob
import os
from typing import Any

from .. import _arrays as A
from .._constants import (DTYPE_CODES, FMT_CODES, KIND_CODES, NMS_MASK_BYTES, ROI_ALIGN_MAX_SLOTS,
                          ROI_POOL_MAX_SLOTS)
from ._table import declare, probe, register

try:
    from .. import _C
except ImportError as e:  # built without the core (or a broken build): say why, never raise
    _C = None
    declare("native", False, f"detkernels._C is not importable ({e}); reinstall with `pip install .`")
else:
    declare("native", True)

HAS_CUDA = bool(_C is not None and _C.build_info()["cuda"])
IOU_DEVICES = ("cpu", "cuda")
if _C is not None and not HAS_CUDA:  # say why native serves no CUDA array, not just that it does not
    probe("native", "cuda", lambda: f"detkernels._C was built without CUDA kernels "
                                    f"({_C.build_info().get('cuda_why', 'no nvcc')}); rebuild with "
                                    f"DETKERNELS_CUDA=1 for the native CUDA backend")


def share_torch_threads(torch: Any) -> str:
    """Run the native CPU kernels' parallel jobs on torch's intra-op OpenMP threads rather than
    on detkernels' own (csrc/common/parallel.cpp, "Sharing torch's OpenMP runtime": after a torch
    op its OpenMP threads spin, and our own then competed with them for the cores). Called once
    torch is imported (detkernels/_torch/script.py). Returns the runtime's library, or '' where
    torch's parallel backend is not OpenMP, its runtime is not found loaded, or
    ``DETKERNELS_SHARE_OPENMP=0`` asks for detkernels' own threads."""
    if _C is None or os.environ.get("DETKERNELS_SHARE_OPENMP", "1") == "0":
        return ""
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return ""
    except Exception:  # an unusual torch build: keep our own threads
        return ""
    # torch's own copy first (pip wheels: torch/lib/libgomp.so.1), then the usual sonames (a
    # conda torch links the environment's runtime); only an already-loaded one binds.
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    bundled = sorted(glob.glob(os.path.join(lib_dir, "lib*omp*")))
    return _C.share_openmp_runtime(bundled + ["libgomp.so.1", "libomp.so", "libomp.dylib", "libiomp5.so"])


def build_info() -> dict:
    """How detkernels._C was built: CUDA version and architectures (None without CUDA), float
    flags, compiler, build type; plus the CUDA devices visible now."""
    if _C is None:
        return {"cuda": False, "cuda_version": None, "cuda_architectures": None, "available": False}
    info = dict(_C.build_info())
    if not info["cuda"]:
        info["cuda_version"] = info["cuda_architectures"] = None
    info["cuda_devices"] = _C.cuda_device_count()
    info["num_threads"] = _C.num_threads()
    info["thread_runtime"] = _C.thread_runtime()
    info["summary"] = build_summary(info)
    return info


def build_summary(info: dict) -> str:
    """One line (for a terminal): what the compiled core was built for, and why not CUDA when it
    was not (shown by the benchmark; ``cuda_why`` has the nvcc path of a CUDA build)."""
    if info.get("cuda"):
        return (f"detkernels._C: CPU + CUDA {info['cuda_version']} kernels ({info['cuda_architectures']}); "
                f"{info['cuda_devices']} CUDA device(s) visible; {info['num_threads']} CPU threads")
    return f"detkernels._C: CPU kernels only ({info.get('cuda_why', '')}); {info['num_threads']} CPU threads"


@register("box_iou", "native", devices=IOU_DEVICES, dtypes=("float32", "float64", "int32", "int64"))
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    """b1 [B, N, 4], b2 [B, M, 4]: contiguous, same dtype and device -> out [B, N, M] (float32 for
    int32/int64 boxes, which take kind 'iou' or 'giou': torchvision's integer arithmetic)."""
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    dt = A.dtype_name(b1)
    out = A.empty((B, N, M), "float64" if dt == "float64" else "float32", like=b1)
    args = (DTYPE_CODES[dt], FMT_CODES[fmt], KIND_CODES[kind], float(eps), B, N, M,
            A.data_ptr(b1), A.data_ptr(b2), A.data_ptr(out))
    if A.device(b1) == "cpu":
        _C.box_iou_cpu(*args)
    else:
        _C.box_iou_cuda(*args, _device_index(b1), A.current_stream(b1))
    return out


@register("box_iou_rotated", "native", devices=IOU_DEVICES)
def box_iou_rotated(b1: Any, b2: Any) -> Any:
    """b1 [B, N, 5], b2 [B, M, 5] cxcywhr: contiguous, same float dtype -> float32 [B, N, M]."""
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    out = A.empty((B, N, M), "float32", like=b1)
    args = (DTYPE_CODES[A.dtype_name(b1)], B, N, M, A.data_ptr(b1), A.data_ptr(b2), A.data_ptr(out))
    if A.device(b1) == "cpu":
        _C.box_iou_rotated_cpu(*args)
    else:
        _C.box_iou_rotated_cuda(*args, _device_index(b1), A.current_stream(b1))
    return out


# csrc/ops/box_iou/box_iou_rotated.h: RotatedNmsMetric (CPU multi-image loop and the CUDA engine)
ROTATED_NMS_METRICS = {"iou": 0, "probiou": 1, "probiou_fast": 2}


def _rotated_multi_cuda(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                        score_threshold: float | None, metric: str, eps: float) -> tuple[Any, Any]:
    """Rotated NMS on the CUDA bitmask engine (csrc/ops/nms/nms_rotated_gpu.h): boxes [B, N, 5],
    scores [B, N], classes [B, N] or None -> (indices [B, max_output], counts [B]); no host sync."""
    B, N = boxes.shape[0], boxes.shape[1]
    dt, dev = DTYPE_CODES[A.dtype_name(boxes)], _device_index(boxes)
    out = A.empty((B, max_output), "int64", like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    nbytes = _C.nms_multi_cuda_workspace_bytes(dt, B, N, 0, classes is not None, NMS_MASK_BYTES, dev)
    ws = _workspace(boxes, nbytes, f"rotated NMS of {B} x {N} boxes")
    _C.nms_rotated_multi_cuda(dt, ROTATED_NMS_METRICS[metric], A.data_ptr(boxes), A.data_ptr(scores),
                              0 if classes is None else A.data_ptr(classes), B, N, float(iou_threshold),
                              float(eps), score_threshold, max_output, A.data_ptr(out), A.data_ptr(counts),
                              A.data_ptr(ws), nbytes, NMS_MASK_BYTES, dev, A.current_stream(boxes))
    return out, counts


def _rotated_one_cuda(boxes: Any, scores: Any, classes: Any, iou_threshold: float, metric: str,
                      eps: float) -> Any:
    """One image through _rotated_multi_cuda; the only host sync is reading the number kept."""
    out, counts = _rotated_multi_cuda(boxes[None], scores[None], None if classes is None else classes[None],
                                      iou_threshold, boxes.shape[0], None, metric, eps)
    return out[0, :int(counts[0])]


@register("nms_rotated", "native", devices=IOU_DEVICES)
def nms_rotated(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """boxes [N, 5] cxcywhr, scores [N] (same float dtype), classes int64 [N] or None -> kept indices."""
    n = boxes.shape[0]
    if A.device(boxes) != "cpu":
        return _rotated_one_cuda(boxes, scores, classes, iou_threshold, "iou", 0.0)
    keep = A.empty((n,), "int64", like=boxes)
    count = _C.nms_rotated_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                               0 if classes is None else A.data_ptr(classes), n, float(iou_threshold),
                               A.data_ptr(keep))
    return keep[:count]


@register("probiou", "native", devices=IOU_DEVICES)
def probiou(b1: Any, b2: Any, eps: float) -> Any:
    """b1 [B, N, 5], b2 [B, M, 5] ultralytics xywhr, same float dtype -> [B, N, M] in that dtype."""
    B, N, M = b1.shape[0], b1.shape[1], b2.shape[1]
    dt = A.dtype_name(b1)
    out = A.empty((B, N, M), dt, like=b1)
    args = (DTYPE_CODES[dt], float(eps), B, N, M, A.data_ptr(b1), A.data_ptr(b2), A.data_ptr(out))
    if A.device(b1) == "cpu":
        _C.probiou_cpu(*args)
    else:
        _C.probiou_cuda(*args, _device_index(b1), A.current_stream(b1))
    return out


@register("nms_probiou", "native", devices=IOU_DEVICES)
def nms_probiou(boxes: Any, scores: Any, classes: Any, iou_threshold: float, fast: bool, eps: float) -> Any:
    n = boxes.shape[0]
    if A.device(boxes) != "cpu":
        return _rotated_one_cuda(boxes, scores, classes, iou_threshold,
                                 "probiou_fast" if fast else "probiou", eps)
    keep = A.empty((n,), "int64", like=boxes)
    count = _C.nms_probiou_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                               0 if classes is None else A.data_ptr(classes), n, float(iou_threshold),
                               float(eps), int(bool(fast)), A.data_ptr(keep))
    return keep[:count]




@register("multi_image_nms_rotated", "native", devices=IOU_DEVICES)
def multi_image_nms_rotated(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                            score_threshold: float | None, metric: str, eps: float) -> tuple[Any, Any]:
    """boxes [B, N, 5] (cxcywhr for 'iou', ultralytics xywhr for 'probiou' / 'probiou_fast'),
    scores [B, N] (same float dtype), classes int64 [B, N] or None -> (indices [B, K], counts [B]).
    On CUDA: the bitmask engine, no host synchronisation."""
    if A.device(boxes) != "cpu":
        return _rotated_multi_cuda(boxes, scores, classes, iou_threshold, max_output, score_threshold,
                                   metric, eps)
    B, N = boxes.shape[0], boxes.shape[1]
    out = A.empty((B, max_output), "int64", like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    _C.nms_rotated_multi_cpu(DTYPE_CODES[A.dtype_name(boxes)], ROTATED_NMS_METRICS[metric], A.data_ptr(boxes),
                             A.data_ptr(scores), 0 if classes is None else A.data_ptr(classes), B, N,
                             float(iou_threshold), score_threshold is not None,
                             0.0 if score_threshold is None else float(score_threshold), float(eps),
                             int(max_output), A.data_ptr(out), A.data_ptr(counts))
    return out, counts


def _device_index(x: Any) -> int:
    dev = A.device(x)
    return int(dev.split(":")[1]) if ":" in dev else 0


# The CUDA NMS builds its N x N/64 bitmask in row tiles of at most NMS_MASK_BYTES (at least 64
# rows): bounded workspace for any N (10^6 boxes: ~8 MB per 64-row tile).


def _workspace(like: Any, nbytes: int, what: str) -> Any:
    """A uint8 device buffer of the caller's array kind, or a MemoryError naming the size."""
    try:
        return A.empty((max(int(nbytes), 1),), "uint8", like=like)
    except Exception as e:  # torch.OutOfMemoryError, cupy OutOfMemoryError
        if isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__:
            raise MemoryError(f"detkernels: {what} needs a {nbytes} byte workspace on "
                              f"{A.device(like)}, which could not be allocated ({e}); lower "
                              f"DETKERNELS_NMS_MASK_BYTES (now {NMS_MASK_BYTES}) or the number "
                              f"of boxes") from e
        raise


def _multi_args(boxes: Any, scores: Any, classes: Any) -> tuple[int, int, int, int]:
    B, N = boxes.shape[0], boxes.shape[1]
    C = scores.shape[2] if scores.ndim == 3 else 0  # C = 0 means [B, N] scores to the core
    if scores.ndim == 3 and C == 0:  # [B, N, 0]: no candidates at all
        N = 0
    return DTYPE_CODES[A.dtype_name(boxes)], B, N, C


def _multi_cuda(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                score_threshold: float | None, want_cls: bool,
                beta: float | None = None) -> tuple[Any, Any, Any]:
    """The bitmask NMS engine on CUDA; with ``beta``, DIoU-NMS (the same engine, the DIoU
    predicate: csrc/ops/nms/diou_nms.h)."""
    dt, B, N, C = _multi_args(boxes, scores, classes)
    dev = _device_index(boxes)
    out = A.empty((B, max_output), "int64", like=boxes)
    cls = A.empty((B, max_output), "int64", like=boxes) if want_cls else None
    counts = A.empty((B,), "int64", like=boxes)
    nbytes = _C.nms_multi_cuda_workspace_bytes(dt, B, N, C, classes is not None, NMS_MASK_BYTES, dev)
    ws = _workspace(boxes, nbytes, f"NMS of {B} x {N * max(C, 1)} candidates")
    head = (dt, A.data_ptr(boxes), A.data_ptr(scores), 0 if classes is None else A.data_ptr(classes),
            B, N, C, float(iou_threshold))
    tail = (score_threshold, max_output, A.data_ptr(out), 0 if cls is None else A.data_ptr(cls),
            A.data_ptr(counts), A.data_ptr(ws), nbytes, NMS_MASK_BYTES, dev, A.current_stream(boxes))
    if beta is None:
        _C.nms_multi_cuda(*head, *tail)
    else:
        _C.diou_nms_multi_cuda(*head, float(beta), *tail)
    return out, cls, counts


@register("nms", "native", devices=IOU_DEVICES)
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    On CUDA the only host synchronisation is reading the number kept."""
    n = boxes.shape[0]
    if A.device(boxes) != "cpu":
        out, _, counts = _multi_cuda(boxes[None], scores[None], None if classes is None else classes[None],
                                     iou_threshold, n, None, False)
        return out[0, :int(counts[0])]
    keep = A.empty((n,), "int64", like=boxes)
    count = _C.nms_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                       0 if classes is None else A.data_ptr(classes), n, float(iou_threshold),
                       A.data_ptr(keep))
    return keep[:count]


SOFT_NMS_METHODS = {"linear": 0, "gaussian": 1}  # csrc/ops/nms/soft_nms.h: SoftNmsMethod


def _soft_multi_cuda(boxes: Any, scores: Any, classes: Any, max_output: int, iou_threshold: float,
                     sigma: float, method: str, score_threshold: float) -> tuple[Any, Any, Any]:
    """Soft-NMS on CUDA (csrc/ops/nms/soft_nms_gpu.h): one launch, one block per image, no host
    synchronisation."""
    B, N = boxes.shape[0], boxes.shape[1]
    dt = A.dtype_name(boxes)
    out = A.empty((B, max_output), "int64", like=boxes)
    vals = A.empty((B, max_output), dt, like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    nbytes = _C.soft_nms_multi_cuda_workspace_bytes(DTYPE_CODES[dt], B, N, classes is not None)
    ws = _workspace(boxes, nbytes, f"Soft-NMS of {B} x {N} boxes")
    _C.soft_nms_multi_cuda(DTYPE_CODES[dt], A.data_ptr(boxes), A.data_ptr(scores),
                           0 if classes is None else A.data_ptr(classes), B, N, float(iou_threshold),
                           float(sigma), SOFT_NMS_METHODS[method], float(score_threshold),
                           int(max_output), A.data_ptr(out), A.data_ptr(vals), A.data_ptr(counts),
                           A.data_ptr(ws), nbytes, _device_index(boxes), A.current_stream(boxes))
    return out, vals, counts


@register("soft_nms", "native", devices=IOU_DEVICES)
def soft_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> (kept indices
    int64, decayed scores) in pick order. On CUDA the only host synchronisation is reading the
    number kept."""
    n = boxes.shape[0]
    if A.device(boxes) != "cpu":
        k = n if max_output is None else min(int(max_output), n)
        out, vals, counts = _soft_multi_cuda(boxes[None], scores[None],
                                             None if classes is None else classes[None], k,
                                             iou_threshold, sigma, method, score_threshold)
        c = int(counts[0])
        return out[0, :c], vals[0, :c]
    keep = A.empty((n,), "int64", like=boxes)
    kept = A.empty((n,), A.dtype_name(boxes), like=boxes)
    count = _C.soft_nms_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                            0 if classes is None else A.data_ptr(classes), n, float(iou_threshold),
                            float(sigma), SOFT_NMS_METHODS[method], float(score_threshold),
                            -1 if max_output is None else int(max_output), A.data_ptr(keep),
                            A.data_ptr(kept))
    return keep[:count], kept[:count]


@register("multi_image_soft_nms", "native", devices=IOU_DEVICES)
def multi_image_soft_nms(boxes: Any, scores: Any, classes: Any, max_output: int, iou_threshold: float,
                         sigma: float, method: str, score_threshold: float) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N], classes int64 [B, N] or None -> (indices [B, K],
    scores [B, K], counts [B]); on CUDA never syncs with the host."""
    if A.device(boxes) != "cpu":
        return _soft_multi_cuda(boxes, scores, classes, max_output, iou_threshold, sigma, method,
                                score_threshold)
    B, N = boxes.shape[0], boxes.shape[1]
    dt = A.dtype_name(boxes)
    out = A.empty((B, max_output), "int64", like=boxes)
    vals = A.empty((B, max_output), dt, like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    _C.soft_nms_multi_cpu(DTYPE_CODES[dt], A.data_ptr(boxes), A.data_ptr(scores),
                          0 if classes is None else A.data_ptr(classes), B, N, float(iou_threshold),
                          float(sigma), SOFT_NMS_METHODS[method], float(score_threshold),
                          int(max_output), A.data_ptr(out), A.data_ptr(vals), A.data_ptr(counts))
    return out, vals, counts


@register("diou_nms", "native", devices=IOU_DEVICES)
def diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, beta: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    On CUDA: the bitmask NMS engine with the DIoU predicate (issue 13), one image, per class by
    its segments; the only host synchronisation is reading the number kept."""
    n = boxes.shape[0]
    if A.device(boxes) != "cpu":
        out, _, counts = _multi_cuda(boxes[None], scores[None], None if classes is None else classes[None],
                                     iou_threshold, n, None, False, beta=beta)
        return out[0, :int(counts[0])]
    keep = A.empty((n,), "int64", like=boxes)
    count = _C.diou_nms_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                            0 if classes is None else A.data_ptr(classes), n, float(iou_threshold),
                            float(beta), A.data_ptr(keep))
    return keep[:count]


@register("multi_image_diou_nms", "native", devices=IOU_DEVICES)
def multi_image_diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                         beta: float) -> tuple[Any, Any]:
    """boxes [B, N, 4], scores [B, N], classes int64 [B, N] or None -> (indices [B, K], counts [B]);
    the images in parallel on the CPU thread pool; on CUDA the bitmask engine with the DIoU
    predicate (diou_nms_multi_cuda), no host synchronisation."""
    if A.device(boxes) != "cpu":
        out, _, counts = _multi_cuda(boxes, scores, classes, iou_threshold, max_output, None, False,
                                     beta=beta)
        return out, counts
    B, N = boxes.shape[0], boxes.shape[1]
    out = A.empty((B, max_output), "int64", like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    _C.diou_nms_multi_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                          0 if classes is None else A.data_ptr(classes), B, N, float(iou_threshold),
                          float(beta), int(max_output), A.data_ptr(out), A.data_ptr(counts))
    return out, counts


MATRIX_NMS_KERNELS = {"gaussian": 0, "linear": 1}  # csrc/ops/nms/matrix_nms.h: MatrixNmsKernel


@register("matrix_nms", "native", devices=IOU_DEVICES)
def matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None,
               pre_top_k: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N] (same float dtype), labels int64 [N] -> (indices, decayed scores).
    On CUDA (csrc/ops/nms/matrix_nms_gpu.h) the only host synchronisation is reading the count."""
    n = boxes.shape[0]
    keep = A.empty((n,), "int64", like=boxes)
    kept = A.empty((n,), A.dtype_name(boxes), like=boxes)
    if A.device(boxes) != "cpu":
        dt, dev = DTYPE_CODES[A.dtype_name(boxes)], _device_index(boxes)
        count = A.empty((1,), "int64", like=boxes)
        nbytes = _C.matrix_nms_cuda_workspace_bytes(dt, n, dev)
        ws = _workspace(boxes, nbytes, f"Matrix NMS of {n} boxes")
        _C.matrix_nms_cuda(dt, A.data_ptr(boxes), A.data_ptr(scores), A.data_ptr(labels), n,
                           MATRIX_NMS_KERNELS[kernel], float(sigma), score_threshold is not None,
                           0.0 if score_threshold is None else float(score_threshold),
                           -1 if max_output is None else int(max_output),
                           -1 if pre_top_k is None else int(pre_top_k), A.data_ptr(keep),
                           A.data_ptr(kept), A.data_ptr(count), A.data_ptr(ws), nbytes, dev,
                           A.current_stream(boxes))
        c = int(count[0])
        return keep[:c], kept[:c]
    count = _C.matrix_nms_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
                              A.data_ptr(labels), n, MATRIX_NMS_KERNELS[kernel], float(sigma),
                              score_threshold is not None,
                              0.0 if score_threshold is None else float(score_threshold),
                              -1 if max_output is None else int(max_output),
                              -1 if pre_top_k is None else int(pre_top_k), A.data_ptr(keep),
                              A.data_ptr(kept))
    return keep[:count], kept[:count]


@register("multi_image_matrix_nms", "native", devices=IOU_DEVICES)
def multi_image_matrix_nms(boxes: Any, scores: Any, labels: Any, max_output: int, kernel: str,
                           sigma: float, score_threshold: float | None,
                           pre_top_k: int | None) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N], labels int64 [B, N] -> (indices [B, K], decayed scores
    [B, K], counts [B]); the images in parallel on the CPU thread pool; on CUDA matrix_nms_cuda
    per image then one output launch (matrix_nms_multi_cuda), no host synchronisation."""
    B, N = boxes.shape[0], boxes.shape[1]
    dt = A.dtype_name(boxes)
    out = A.empty((B, max_output), "int64", like=boxes)
    vals = A.empty((B, max_output), dt, like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    if A.device(boxes) != "cpu":
        dev = _device_index(boxes)
        nbytes = _C.matrix_nms_multi_cuda_workspace_bytes(DTYPE_CODES[dt], B, N, dev)
        ws = _workspace(boxes, nbytes, f"Matrix NMS of {B} x {N} boxes")
        _C.matrix_nms_multi_cuda(DTYPE_CODES[dt], A.data_ptr(boxes), A.data_ptr(scores),
                                 A.data_ptr(labels), B, N, MATRIX_NMS_KERNELS[kernel], float(sigma),
                                 score_threshold is not None,
                                 0.0 if score_threshold is None else float(score_threshold),
                                 int(max_output), -1 if pre_top_k is None else int(pre_top_k),
                                 A.data_ptr(out), A.data_ptr(vals), A.data_ptr(counts),
                                 A.data_ptr(ws), nbytes, dev, A.current_stream(boxes), 0)
        return out, vals, counts
    _C.matrix_nms_multi_cpu(DTYPE_CODES[dt], A.data_ptr(boxes), A.data_ptr(scores),
                            A.data_ptr(labels), B, N, MATRIX_NMS_KERNELS[kernel], float(sigma),
                            score_threshold is not None,
                            0.0 if score_threshold is None else float(score_threshold),
                            int(max_output), -1 if pre_top_k is None else int(pre_top_k),
                            A.data_ptr(out), A.data_ptr(vals), A.data_ptr(counts))
    return out, vals, counts


@register("multi_image_nms", "native", devices=IOU_DEVICES)
def multi_image_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                    score_threshold: float | None) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N] or [B, N, C] (same float dtype), classes int64 [B, N] or
    None -> (indices [B, K], classes [B, K] or None, counts [B]); never syncs with the host."""
    want_cls = scores.ndim == 3
    if A.device(boxes) != "cpu":
        return _multi_cuda(boxes, scores, classes, iou_threshold, max_output, score_threshold, want_cls)
    dt, B, N, C = _multi_args(boxes, scores, classes)
    out = A.empty((B, max_output), "int64", like=boxes)
    cls = A.empty((B, max_output), "int64", like=boxes) if want_cls else None
    counts = A.empty((B,), "int64", like=boxes)
    _C.nms_multi_cpu(dt, A.data_ptr(boxes), A.data_ptr(scores),
                     0 if classes is None else A.data_ptr(classes), B, N, C, float(iou_threshold),
                     score_threshold, max_output, A.data_ptr(out),
                     0 if cls is None else A.data_ptr(cls), A.data_ptr(counts))
    return out, cls, counts


DETECT_NMS_MODES = {"iou": 0, "diou": 1, "soft": 2, "matrix": 3}  # detect.h: DetectNmsMode


def _detect_nms_args(nms: Any) -> tuple:
    """(mode, beta, decay, sigma, min_score) for detect_cpu: detect.h's DetectNms fields."""
    if nms is None:
        return 0, 1.0, 0, 0.0, None
    decay = (SOFT_NMS_METHODS if nms.mode == "soft" else MATRIX_NMS_KERNELS).get(nms.decay, 0)
    return (DETECT_NMS_MODES[nms.mode], 1.0 if nms.beta is None else float(nms.beta), decay,
            0.0 if nms.sigma is None else float(nms.sigma), nms.min_score)


@register("detect", "native", devices=IOU_DEVICES)
def detect(boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float, max_det: int,
           score_threshold: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool, nms: Any = None) -> tuple:
    """boxes [B, A, 4], scores [B, A] or [B, A, C], objectness [B, A] or None (one float dtype,
    any strides), idxs int64 [B, A] contiguous or None -> (boxes [B, K, 4], scores [B, K],
    classes, indices [B, K], counts [B]). On CUDA: no host synchronisation (issue 12). ``nms``
    (_checks.DetectNms; None: "iou"): CPU and CUDA serve every mode (nms_modes)."""
    boxes, scores, objectness = (_element_strided(x) for x in (boxes, scores, objectness))
    B, N = boxes.shape[0], boxes.shape[1]
    C = scores.shape[2] if scores.ndim == 3 else 0  # C = 0 means [B, A] scores to the core
    if scores.ndim == 3 and C == 0:  # [B, A, 0]: no candidates at all
        N = 0
    dt = A.dtype_name(boxes)
    ob = A.empty((B, max_det, 4), dt, like=boxes)
    os_ = A.empty((B, max_det), dt, like=boxes)
    oc = A.empty((B, max_det), "int64", like=boxes)
    oi = A.empty((B, max_det), "int64", like=boxes)
    counts = A.empty((B,), "int64", like=boxes)
    bst, sst = _strides(boxes), _strides(scores)
    ost = [0, 0] if objectness is None else _strides(objectness)
    strides = bst + sst[:2] + [sst[2] if C else 0] + ost
    args = (DTYPE_CODES[dt], A.data_ptr(boxes), A.data_ptr(scores),
            0 if objectness is None else A.data_ptr(objectness),
            0 if idxs is None else A.data_ptr(idxs), B, N, C, strides, FMT_CODES[fmt],
            float(iou_threshold), score_threshold, -1 if top_k is None else int(top_k),
            max_det, bool(multi_label), bool(class_agnostic))
    outs = (A.data_ptr(ob), A.data_ptr(os_), A.data_ptr(oc), A.data_ptr(oi), A.data_ptr(counts))
    mode = _detect_nms_args(nms)
    if A.device(boxes) != "cpu":  # csrc/ops/detect/detect_gpu.h; workspace from static shapes
        dev = _device_index(boxes)
        k = -1 if top_k is None else int(top_k)
        nbytes = _C.detect_cuda_workspace_bytes(DTYPE_CODES[dt], B, N, C, bool(multi_label), k,
                                                mode[0], NMS_MASK_BYTES, dev)
        cand = N * (C if multi_label and C else 1)
        ws = _workspace(boxes, nbytes, f"detect of {B} x {cand} candidates (set pre_nms_top_k)")
        _C.detect_cuda(*args, *mode, *outs, A.data_ptr(ws), nbytes, NMS_MASK_BYTES, dev,
                       A.current_stream(boxes))
        return ob, os_, oc, oi, counts
    _C.detect_cpu(*args, *mode, *outs)
    return ob, os_, oc, oi, counts


# CUDA (detect_gpu.h): each mode's multi-image CUDA entry after the shared steps 1-3
detect.nms_modes = {"cpu": tuple(DETECT_NMS_MODES), "cuda": tuple(DETECT_NMS_MODES)}


def _element_strided(x: Any) -> Any:
    """``x`` itself when its strides are whole elements (always for torch), else a contiguous copy."""
    if x is None or A.kind(x) != "numpy" or all(st % x.itemsize == 0 for st in x.strides):
        return x
    return A.ascontig(x)


def multi_image_nms_emulated(boxes: Any, scores: Any, classes: Any, iou_threshold: float,
                             max_output: int, score_threshold: float | None, *, tile_rows: int = 0,
                             mask_cap_bytes: int = NMS_MASK_BYTES, scan_threads: int = 256,
                             beta: float | None = None) -> tuple[Any, Any, Any]:
    """The CUDA algorithm (nms_bitmask.h) run sequentially on the CPU, for NumPy inputs laid out as
    for multi_image_nms; with ``beta``, DIoU-NMS's (the DIoU predicate, issue 13). Tests only: it
    verifies the GPU logic where there is no GPU."""
    import numpy as np

    dt, B, N, C = _multi_args(boxes, scores, classes)
    out = np.empty((B, max_output), np.int64)
    cls = np.empty((B, max_output), np.int64) if scores.ndim == 3 else None
    counts = np.empty((B,), np.int64)
    head = (dt, A.data_ptr(boxes), A.data_ptr(scores), 0 if classes is None else A.data_ptr(classes),
            B, N, C, float(iou_threshold))
    tail = (score_threshold, max_output, A.data_ptr(out), 0 if cls is None else A.data_ptr(cls),
            A.data_ptr(counts), int(tile_rows), int(mask_cap_bytes), int(scan_threads))
    if beta is None:
        _C.testing.nms_multi_emulate_cpu(*head, *tail)
    else:
        _C.testing.diou_nms_multi_emulate_cpu(*head, float(beta), *tail)
    return out, cls, counts


def nms_rotated_multi_emulated(boxes: Any, scores: Any, classes: Any, iou_threshold: float,
                               max_output: int, score_threshold: float | None, metric: str = "iou",
                               eps: float = 1e-7, *, tile_rows: int = 0,
                               mask_cap_bytes: int = NMS_MASK_BYTES,
                               scan_threads: int = 256) -> tuple[Any, Any]:
    """The CUDA rotated NMS (the bitmask engine with nms_rotated_gpu.h's predicate) run
    sequentially on the CPU, for NumPy boxes [B, N, 5], scores [B, N], classes [B, N] or None.
    Tests only: it verifies the GPU logic where there is no GPU."""
    import numpy as np

    B, N = boxes.shape[0], boxes.shape[1]
    out = np.empty((B, max_output), np.int64)
    counts = np.empty((B,), np.int64)
    _C.testing.nms_rotated_multi_emulate_cpu(
        DTYPE_CODES[A.dtype_name(boxes)], ROTATED_NMS_METRICS[metric], A.data_ptr(boxes),
        A.data_ptr(scores), 0 if classes is None else A.data_ptr(classes), B, N, float(iou_threshold),
        float(eps), score_threshold, max_output, A.data_ptr(out), A.data_ptr(counts), int(tile_rows),
        int(mask_cap_bytes), int(scan_threads))
    return out, counts


def soft_nms_multi_emulated(boxes: Any, scores: Any, classes: Any, max_output: int,
                            iou_threshold: float, sigma: float, method: str, score_threshold: float,
                            *, threads: int = 256, n_valid: Any = None) -> tuple[Any, Any, Any]:
    """The CUDA Soft-NMS kernel's steps (soft_nms_gpu.h) run on the CPU with ``threads`` emulated
    threads per block, for contiguous NumPy inputs laid out as for multi_image_soft_nms; n_valid
    (int64 [B] or None): image b's boxes are its first n_valid[b]. Tests only."""
    import numpy as np

    B, N = boxes.shape[0], boxes.shape[1]
    out = np.empty((B, max_output), np.int64)
    vals = np.empty((B, max_output), boxes.dtype)
    counts = np.empty((B,), np.int64)
    _C.testing.soft_nms_multi_emulate_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes),
                                          A.data_ptr(scores), 0 if classes is None else A.data_ptr(classes),
                                          B, N, float(iou_threshold), float(sigma),
                                          SOFT_NMS_METHODS[method], float(score_threshold),
                                          int(max_output), A.data_ptr(out), A.data_ptr(vals),
                                          A.data_ptr(counts), int(threads),
                                          0 if n_valid is None else A.data_ptr(n_valid))
    return out, vals, counts


def matrix_nms_emulated(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
                        score_threshold: float | None, max_output: int | None,
                        pre_top_k: int | None) -> tuple[Any, Any]:
    """The CUDA Matrix NMS pipeline (matrix_nms_gpu.h S1-S6) run on the CPU, for contiguous NumPy
    inputs (labels int64). Tests only."""
    import numpy as np

    n = boxes.shape[0]
    keep = np.empty((n,), np.int64)
    kept = np.empty((n,), boxes.dtype)
    count = _C.testing.matrix_nms_emulate_cpu(DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes),
                                              A.data_ptr(scores), A.data_ptr(labels), n,
                                              MATRIX_NMS_KERNELS[kernel], float(sigma),
                                              score_threshold is not None,
                                              0.0 if score_threshold is None else float(score_threshold),
                                              -1 if max_output is None else int(max_output),
                                              -1 if pre_top_k is None else int(pre_top_k),
                                              A.data_ptr(keep), A.data_ptr(kept))
    return keep[:count], kept[:count]


def matrix_nms_multi_emulated(boxes: Any, scores: Any, labels: Any, max_output: int, kernel: str,
                              sigma: float, score_threshold: float | None, pre_top_k: int | None,
                              n_valid: Any = None) -> tuple[Any, Any, Any]:
    """matrix_nms_multi_cuda's algorithm (matrix_nms_gpu.h: S1-S6 per image, then
    matrix_nms_multi_emit) on the CPU, for contiguous NumPy inputs laid out as for
    multi_image_matrix_nms; n_valid (int64 [B] or None): image b's boxes are its first n_valid[b]
    (the others must rank below them). Tests only."""
    import numpy as np

    B, N = boxes.shape[0], boxes.shape[1]
    out = np.full((B, max_output), 7, np.int64)  # poison: all written
    vals = np.full((B, max_output), 7, boxes.dtype)
    counts = np.full((B,), 7, np.int64)
    _C.testing.matrix_nms_multi_emulate_cpu(
        DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores), A.data_ptr(labels),
        B, N, MATRIX_NMS_KERNELS[kernel], float(sigma), score_threshold is not None,
        0.0 if score_threshold is None else float(score_threshold), int(max_output),
        -1 if pre_top_k is None else int(pre_top_k), A.data_ptr(out), A.data_ptr(vals),
        A.data_ptr(counts), 0 if n_valid is None else A.data_ptr(n_valid))
    return out, vals, counts


# ---- RoI ops (CPU and CUDA) ---------------------------------------------------------------------------------
# Inputs arrive in the working dtype (float32/float64, see detkernels/_dispatch.py); features and
# grads in any layout (element strides are passed), rois contiguous [K, 5].

def _strides(x: Any) -> list[int]:
    if A.kind(x) == "numpy":
        return [s // x.itemsize for s in x.strides]
    return list(x.stride())


def _roi_workspace(like: Any, nbytes: int, what: str, env: str) -> Any:
    """A uint8 device buffer for a RoI backward's sort, or a MemoryError naming its size."""
    try:
        return A.empty((max(int(nbytes), 1),), "uint8", like=like)
    except Exception as e:  # torch.OutOfMemoryError, cupy OutOfMemoryError
        if isinstance(e, MemoryError) or "OutOfMemory" in type(e).__name__:
            raise MemoryError(f"detkernels: the CUDA {what} backward needs a {nbytes} byte workspace on "
                              f"{A.device(like)}, which could not be allocated ({e}); use fewer or "
                              f"smaller rois, or lower {env}") from e
        raise


# The CUDA RoIAlign backward sorts one slot per (roi, ph, pw, iy, ix, tap) -- 32 bytes each plus
# the sort's scratch -- so its workspace is bounded by refusing more than ROI_ALIGN_MAX_SLOTS.


@register("roi_align", "native", devices=IOU_DEVICES)
def roi_align(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool) -> Any:
    """input [N, C, H, W] -> [K, Co, PH, PW] (Co = C, or C/(PH*PW) for ps)."""
    N, C, H, W = (int(s) for s in input.shape)
    K = int(rois.shape[0])
    dt = A.dtype_name(input)
    out = A.empty((K, C // (ph * pw) if ps else C, ph, pw), dt, like=input)
    if A.device(input) != "cpu":
        _C.roi_align_forward_cuda(DTYPE_CODES[dt], ps, A.data_ptr(input), _strides(input), N, C, H,
                                  W, A.data_ptr(rois), K, float(spatial_scale), ph, pw,
                                  int(sampling_ratio), bool(aligned), A.data_ptr(out),
                                  _device_index(input), A.current_stream(input))
        return out
    _C.roi_align_forward_cpu(DTYPE_CODES[dt], ps, A.data_ptr(input), _strides(input), N, C, H, W,
                             A.data_ptr(rois), K, float(spatial_scale), ph, pw, int(sampling_ratio),
                             bool(aligned), A.data_ptr(out))
    return out


def _roi_align_slot_cap(M: int, op: str) -> None:
    """The CUDA RoIAlign backwards (plain and rotated) refuse more than ROI_ALIGN_MAX_SLOTS slots
    before allocating their workspace."""
    if M > ROI_ALIGN_MAX_SLOTS:
        raise MemoryError(f"detkernels: the CUDA {op} backward needs {M} sample slots "
                          f"(rois x bins x samples x 4 taps), more than the cap of "
                          f"{ROI_ALIGN_MAX_SLOTS} (32 bytes each); pass a positive sampling_ratio, "
                          f"fewer or smaller rois, or raise DETKERNELS_ROI_ALIGN_MAX_SLOTS")


def _roi_align_backward_cuda(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int,
                             c: int, h: int, w: int, sampling_ratio: int, aligned: bool,
                             ps: bool, gi: Any) -> None:
    """Deterministic CUDA backward: count slots (one sync), refuse above the cap, then sort/reduce."""
    dt, K, dev = DTYPE_CODES[A.dtype_name(grad)], int(rois.shape[0]), _device_index(grad)
    stream = A.current_stream(grad)
    pre = A.empty((16 * (K + 1),), "uint8", like=grad)  # slot offsets int64[K+1], counts T[K]
    M = _C.roi_align_backward_cuda_prepare(dt, ps, A.data_ptr(rois), K, float(spatial_scale), ph, pw,
                                           n, int(sampling_ratio), bool(aligned), A.data_ptr(pre),
                                           dev, stream)
    _roi_align_slot_cap(M, "roi_align")
    nbytes = _C.roi_align_backward_cuda_workspace_bytes(M, n, h, w, dev)
    ws = _roi_workspace(grad, nbytes, "roi_align", "DETKERNELS_ROI_ALIGN_MAX_SLOTS")
    _C.roi_align_backward_cuda(dt, ps, A.data_ptr(grad), _strides(grad), A.data_ptr(rois), K,
                               float(spatial_scale), ph, pw, n, c, h, w, int(sampling_ratio),
                               bool(aligned), A.data_ptr(pre), M, A.data_ptr(ws), nbytes,
                               A.data_ptr(gi), dev, stream)


@register("roi_align_backward", "native", devices=IOU_DEVICES)
def roi_align_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                       h: int, w: int, sampling_ratio: int, aligned: bool, ps: bool) -> Any:
    """grad [K, Co, PH, PW] -> grad_input [N, C, H, W] (contiguous)."""
    dt = A.dtype_name(grad)
    gi = A.empty((n, c, h, w), dt, like=grad)
    if A.device(grad) != "cpu":
        _roi_align_backward_cuda(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                 aligned, ps, gi)
        return gi
    _C.roi_align_backward_cpu(DTYPE_CODES[dt], ps, A.data_ptr(grad), _strides(grad), A.data_ptr(rois),
                              int(rois.shape[0]), float(spatial_scale), ph, pw, n, c, h, w,
                              int(sampling_ratio), bool(aligned), A.data_ptr(gi))
    return gi


# roi_align_rotated: rois contiguous [K, 6] (batch, cx, cy, w, h, angle in degrees).

@register("roi_align_rotated", "native", devices=IOU_DEVICES)
def roi_align_rotated(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                      aligned: bool, clockwise: bool) -> Any:
    """input [N, C, H, W] -> [K, C, PH, PW]."""
    N, C, H, W = (int(s) for s in input.shape)
    dt = A.dtype_name(input)
    out = A.empty((int(rois.shape[0]), C, ph, pw), dt, like=input)
    if A.device(input) != "cpu":
        _C.roi_align_rotated_forward_cuda(DTYPE_CODES[dt], A.data_ptr(input), _strides(input), N, C, H, W,
                                          A.data_ptr(rois), int(rois.shape[0]), float(spatial_scale), ph, pw,
                                          int(sampling_ratio), bool(aligned), bool(clockwise), A.data_ptr(out),
                                          _device_index(input), A.current_stream(input))
        return out
    _C.roi_align_rotated_forward_cpu(DTYPE_CODES[dt], A.data_ptr(input), _strides(input), N, C, H, W,
                                     A.data_ptr(rois), int(rois.shape[0]), float(spatial_scale), ph, pw,
                                     int(sampling_ratio), bool(aligned), bool(clockwise), A.data_ptr(out))
    return out


def _roi_align_rotated_backward_cuda(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int,
                                     c: int, h: int, w: int, sampling_ratio: int, aligned: bool,
                                     clockwise: bool, gi: Any) -> None:
    """As _roi_align_backward_cuda (same slot cap and workspace), with the rotated slot policy."""
    dt, K, dev = DTYPE_CODES[A.dtype_name(grad)], int(rois.shape[0]), _device_index(grad)
    stream = A.current_stream(grad)
    pre = A.empty((16 * (K + 1),), "uint8", like=grad)
    M = _C.roi_align_rotated_backward_cuda_prepare(dt, A.data_ptr(rois), K, float(spatial_scale), ph, pw, n,
                                                   int(sampling_ratio), bool(aligned), bool(clockwise),
                                                   A.data_ptr(pre), dev, stream)
    _roi_align_slot_cap(M, "roi_align_rotated")
    nbytes = _C.roi_align_backward_cuda_workspace_bytes(M, n, h, w, dev)
    ws = _roi_workspace(grad, nbytes, "roi_align_rotated", "DETKERNELS_ROI_ALIGN_MAX_SLOTS")
    _C.roi_align_rotated_backward_cuda(dt, A.data_ptr(grad), _strides(grad), A.data_ptr(rois), K,
                                       float(spatial_scale), ph, pw, n, c, h, w, int(sampling_ratio),
                                       bool(aligned), bool(clockwise), A.data_ptr(pre), M, A.data_ptr(ws),
                                       nbytes, A.data_ptr(gi), dev, stream)


@register("roi_align_rotated_backward", "native", devices=IOU_DEVICES)
def roi_align_rotated_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                               h: int, w: int, sampling_ratio: int, aligned: bool, clockwise: bool) -> Any:
    """grad [K, C, PH, PW] -> grad_input [N, C, H, W] (contiguous)."""
    dt = A.dtype_name(grad)
    gi = A.empty((n, c, h, w), dt, like=grad)
    if A.device(grad) != "cpu":
        _roi_align_rotated_backward_cuda(grad, rois, spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                         aligned, clockwise, gi)
        return gi
    _C.roi_align_rotated_backward_cpu(DTYPE_CODES[dt], A.data_ptr(grad), _strides(grad), A.data_ptr(rois),
                                      int(rois.shape[0]), float(spatial_scale), ph, pw, n, c, h, w,
                                      int(sampling_ratio), bool(aligned), bool(clockwise), A.data_ptr(gi))
    return gi


# The CUDA RoIPool backward sorts one slot per output element (roi_pool: K*C*PH*PW) or per bin
# pixel (ps_roi_pool), 32 bytes each plus the sort's scratch: refused above ROI_POOL_MAX_SLOTS.


@register("roi_pool", "native", devices=IOU_DEVICES)
def roi_pool(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool) -> tuple:
    """input [N, C, H, W] -> (out [K, Co, PH, PW], argmax or channel map int32 [K, Co, PH, PW]).
    On CUDA: one kernel on the caller's stream, no host synchronisation."""
    N, C, H, W = (int(s) for s in input.shape)
    K = int(rois.shape[0])
    dt = A.dtype_name(input)
    shape = (K, C // (ph * pw) if ps else C, ph, pw)
    out = A.empty(shape, dt, like=input)
    idx = A.empty(shape, "int32", like=input)
    args = (DTYPE_CODES[dt], ps, A.data_ptr(input), _strides(input), N, C, H, W, A.data_ptr(rois), K,
            float(spatial_scale), ph, pw, A.data_ptr(out), A.data_ptr(idx))
    if A.device(input) != "cpu":
        _C.roi_pool_forward_cuda(*args, _device_index(input), A.current_stream(input))
    else:
        _C.roi_pool_forward_cpu(*args)
    return out, idx


def _slot_cap_error(op: str, M: int, cap: int, env: str) -> MemoryError:
    return MemoryError(f"detkernels: the CUDA {op} backward needs {M} contribution slots (32 bytes "
                       f"each, plus sort scratch), more than the cap of {cap}; use fewer or smaller "
                       f"rois, or raise {env}")


def _roi_pool_backward_cuda(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int,
                            n: int, c: int, h: int, w: int, ps: bool, gi: Any) -> None:
    """Deterministic CUDA backward. roi_pool: K*C*PH*PW slots, known without a sync; ps_roi_pool:
    one host sync (the prepare step) to read the slot count that sizes the workspace."""
    dt, K, dev = DTYPE_CODES[A.dtype_name(grad)], int(rois.shape[0]), _device_index(grad)
    stream = A.current_stream(grad)
    pre = None
    if ps:
        pre = A.empty((max(_C.ps_roi_pool_backward_cuda_pre_bytes(K, ph, pw), 1),), "uint8", like=grad)
        M = _C.ps_roi_pool_backward_cuda_prepare(dt, A.data_ptr(rois), K, float(spatial_scale), ph, pw,
                                                 n, h, w, A.data_ptr(pre), dev, stream)
    else:
        M = K * c * ph * pw
    if M > ROI_POOL_MAX_SLOTS:
        raise _slot_cap_error("ps_roi_pool" if ps else "roi_pool", M, ROI_POOL_MAX_SLOTS,
                                      "DETKERNELS_ROI_POOL_MAX_SLOTS")
    nbytes = _C.roi_pool_backward_cuda_workspace_bytes(ps, M, n, c, h, w, dev)
    ws = _roi_workspace(grad, nbytes, "ps_roi_pool" if ps else "roi_pool", "DETKERNELS_ROI_POOL_MAX_SLOTS")
    _C.roi_pool_backward_cuda(dt, ps, A.data_ptr(grad), _strides(grad), A.data_ptr(rois),
                              A.data_ptr(idx), K, float(spatial_scale), ph, pw, n, c, h, w,
                              0 if pre is None else A.data_ptr(pre), M, A.data_ptr(ws), nbytes,
                              A.data_ptr(gi), dev, stream)


@register("roi_pool_backward", "native", devices=IOU_DEVICES)
def roi_pool_backward(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int, n: int,
                      c: int, h: int, w: int, ps: bool) -> Any:
    """grad [K, Co, PH, PW] (+ argmax int32, contiguous, for roi_pool) -> grad_input [N, C, H, W]."""
    dt = A.dtype_name(grad)
    gi = A.empty((n, c, h, w), dt, like=grad)
    if A.device(grad) != "cpu":
        _roi_pool_backward_cuda(grad, rois, idx, spatial_scale, ph, pw, n, c, h, w, ps, gi)
        return gi
    _C.roi_pool_backward_cpu(DTYPE_CODES[dt], ps, A.data_ptr(grad), _strides(grad), A.data_ptr(rois),
                             A.data_ptr(idx), int(rois.shape[0]), float(spatial_scale), ph, pw, n, c,
                             h, w, A.data_ptr(gi))
    return gi


def detect_emulated(boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float,
                    max_det: int, score_threshold: float | None, top_k: int | None, fmt: str,
                    multi_label: bool, class_agnostic: bool, nms: Any = None, *, tile_rows: int = 0,
                    mask_cap_bytes: int = NMS_MASK_BYTES, scan_threads: int = 256) -> tuple:
    """The CUDA detect pipeline (csrc/ops/detect/detect_gpu.h) run sequentially on the CPU, for
    NumPy inputs in the working dtype laid out as for detect; ``nms`` a _checks.DetectNms (None:
    "iou"). Tests only (issue 12)."""
    import numpy as np

    boxes, scores, objectness = (_element_strided(x) for x in (boxes, scores, objectness))
    B, N = boxes.shape[0], boxes.shape[1]
    C = scores.shape[2] if scores.ndim == 3 else 0
    if scores.ndim == 3 and C == 0:
        N = 0
    dt = boxes.dtype
    out = (np.full((B, max_det, 4), 7, dt), np.full((B, max_det), 7, dt),  # poison: all written
           np.full((B, max_det), 7, np.int64), np.full((B, max_det), 7, np.int64),
           np.full((B,), 7, np.int64))
    bst, sst = _strides(boxes), _strides(scores)
    ost = [0, 0] if objectness is None else _strides(objectness)
    strides = bst + sst[:2] + [sst[2] if C else 0] + ost
    _C.testing.detect_emulate_cpu(
        DTYPE_CODES[A.dtype_name(boxes)], A.data_ptr(boxes), A.data_ptr(scores),
        0 if objectness is None else A.data_ptr(objectness), 0 if idxs is None else A.data_ptr(idxs),
        B, N, C, strides, FMT_CODES[fmt], float(iou_threshold), score_threshold,
        -1 if top_k is None else int(top_k), max_det, bool(multi_label), bool(class_agnostic),
        *_detect_nms_args(nms), *(A.data_ptr(x) for x in out), int(tile_rows), int(mask_cap_bytes),
        int(scan_threads))
    return out
