"""Numba backend: CPU ``@njit`` kernels (numba/cpu.py) and ``numba.cuda`` kernels (numba/cuda.py)
compiled from one copy of the scalar maths (numba/box_math.py), bit-exact with the NumPy reference.

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

multi_image_nms runs a batch as independent (image, class) segments through the same kernels. On
the CPU the plan is made on the host and the segments are spread over numba's threads. With torch
CUDA tensors the plan (per-image stable sorts, segments by a running max) and the padded outputs
are torch ops on the device: no host synchronisation. With Numba or CuPy device arrays the plan is
made on the host (the scores and classes are copied there and the keep flags back).

detect (issue 12) runs greedy IoU NMS on the CPU and on CUDA: its per-anchor pass is a kernel
(numba/cpu.py, numba/cuda.py), the candidate selection and plan are multi_image_nms's host plan
(NumPy, with detect's pre-NMS top-k), the suppression multi_image_nms's kernels; on CUDA the
padded outputs are a kernel too, and the plan makes each call synchronise with the host.

NMS variants (issue 13): soft_nms, multi_image_soft_nms, diou_nms and matrix_nms run their loops
in numba/cpu.py and on CUDA in numba/cuda.py (soft_nms: a block per (image, class) segment;
diou_nms: nms's bitmask kernels with DIoU's predicate; matrix_nms: a thread per column; the plans
and the finishes on the host) over the scalar maths of box_math.py (nms_iou, diou_penalty_of, dk_log,
dk_exp, the decay weights); orders, merges and filters are host NumPy, the reference's own code
(score_order). multi_image_soft_nms runs every (image, class) segment in one call on numba's
threads; matrix_nms computes its columns in parallel (each column's max and min in the
reference's row order, so the bytes do not depend on the thread count).

RoI ops (roi_align, ps_roi_align, roi_pool, ps_roi_pool, forward and backward) run on the CPU
(numba/roi_cpu.py, ``parallel=True``) and on CUDA (numba/roi_cuda.py); their arithmetic is written
once (numba/roi_math.py) and compiled for both targets, one kernel set per dtype (float32,
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

from ... import _arrays as A
from ..._constants import FMT_CODES, KIND_CODES
from .._table import declare, probe, register
from ...reference.nms import score_order

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



def _cuda():
    """numba.cuda kernels, with a clear error where numba.cuda cannot run."""
    from numba import cuda

    if not cuda.is_available():
        raise RuntimeError("detkernels: the numba backend cannot run on CUDA here: numba.cuda finds "
                           "no usable GPU/driver (numba.cuda.detect() says why)")
    from . import cuda as _cuda

    return cuda, _cuda


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
    return (o1, *_class_segments(o1, c))


def _class_segments(o1: np.ndarray, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(visiting order, segment starts + n) of the indices ``o1`` grouped by class ``c``
    (stable: o1's order is kept inside a class); one segment without classes."""
    n = o1.shape[0]
    if c is None:
        return o1, np.array([0, n], np.int64)
    o = o1[np.argsort(c[o1], kind="stable")]
    cs = c[o]
    starts = np.flatnonzero(cs[1:] != cs[:-1]) + 1
    return o, np.concatenate(([0], starts, [n])).astype(np.int64)


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
        from . import cpu as _cpu

        out = _cpu.box_iou(A.to_numpy_view(b1), A.to_numpy_view(b2), KIND_CODES[kind],
                                 FMT_CODES[fmt], eps)
        return A.from_numpy(out, like=b1)
    cuda, K = _cuda()
    out = A.empty((b1.shape[0], b1.shape[1], b2.shape[1]), A.dtype_name(b1), like=b1)
    with cuda.gpus[_device_index(b1)]:
        K.box_iou(_as_numba(cuda, b1), _as_numba(cuda, b2), _as_numba(cuda, out), KIND_CODES[kind],
                  FMT_CODES[fmt], eps, _stream(cuda, b1))
    return out


@register("nms", "numba", devices=("cpu", "cuda"))
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, beta: float | None = None) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices.
    ``beta`` (CUDA only; diou_nms's call): DIoU-NMS's predicate instead of IoU's."""
    if A.device(boxes) == "cpu":
        from . import cpu as _cpu

        s = A.to_numpy_view(scores)
        c = None if classes is None else A.to_numpy_view(classes)
        o1, o, seg = _host_order(s, c)
        flags = _cpu.nms_keep(A.to_numpy_view(boxes), o, seg, iou_threshold)
        return A.from_numpy(_keep_from_flags(o1, o, flags), like=boxes)
    cuda, K = _cuda()
    with cuda.gpus[_device_index(boxes)]:
        if A.kind(boxes) == "torch":
            return _nms_torch_cuda(cuda, K, boxes, scores, classes, iou_threshold, beta)
        s = _to_host(scores)
        c = None if classes is None else _to_host(classes)
        o1, o, _ = _host_order(s, c)
        stream = _stream(cuda, boxes)
        d_cls = None if c is None else cuda.to_device(np.ascontiguousarray(c), stream=stream)
        flags = K.nms_keep(_as_numba(cuda, boxes), cuda.to_device(o, stream=stream), d_cls,
                           iou_threshold, stream, beta).copy_to_host(stream=stream)
        stream.synchronize()
        return A.from_numpy(_keep_from_flags(o1, o, flags), like=boxes)


def _nms_torch_cuda(cuda: Any, K: Any, boxes: Any, scores: Any, classes: Any, thr: float,
                    beta: float | None = None) -> Any:
    """torch CUDA tensors: sorting and compaction stay on the device (torch ops on the current
    stream); the one host sync is the output length, as in torchvision. ``beta``: DIoU-NMS."""
    torch = sys.modules["torch"]
    # + 0 turns -0.0 into +0.0, so a radix sort cannot order -0.0 before +0.0 (the reference
    # treats them as equal); NaN ranks first in torch's descending sort.
    o1 = torch.sort(scores + 0, descending=True, stable=True).indices
    o = o1 if classes is None else o1[torch.sort(classes[o1], stable=True).indices]
    stream = _stream(cuda, boxes)
    flags = K.nms_keep(_as_numba(cuda, boxes), _as_numba(cuda, o), _as_numba(cuda, classes), thr,
                       stream, beta)
    f = torch.as_tensor(flags, device=boxes.device).bool()
    if classes is None:
        return o1[f]
    kept = torch.zeros(o.shape[0], dtype=torch.bool, device=boxes.device)
    kept[o[f]] = True
    return o1[kept[o1]]


# ---- multi_image_nms --------------------------------------------------------------------------
# A batch is a set of independent segments -- (image, class), over the candidates (box n, class
# column c) of an image, candidate q = n * Cc + c, that pass the score filter -- visited by
# descending score (NaN first, ties by q): the nms kernels above run them as they run classes.

def _multi_dims(boxes: Any, scores: Any) -> tuple[int, int, int, int]:
    """(B, N, C, Cc): C = 0 for [B, N] scores, Cc = max(C, 1) candidates per box."""
    B, N = int(boxes.shape[0]), int(boxes.shape[1])
    C = int(scores.shape[2]) if scores.ndim == 3 else 0
    return B, N, C, max(C, 1)


def _multi_host_plan(s: np.ndarray, c: np.ndarray | None, sthr: float | None,
                     top_k: int | None = None) -> tuple[list, np.ndarray, np.ndarray, np.ndarray]:
    """Visiting plan on the host. ``s`` [B, M] scores by candidate, ``c`` [B, M] int64 classes or
    None; ``top_k`` (detect's pre-NMS top-k): of the candidates that pass the filter, only the
    ``top_k`` first in score order (score_order: NaN first, ties by q) are planned. Returns
    (o1s, o, seg, bounds): o1s[b] image b's candidates that pass the filter (and top-k), as global ids
    b * M + q, in the reference's order (descending score, NaN first, ties by q); o every image's
    in visiting order (image, class, score rank); seg the (image, class) segment starts in o plus
    len(o) (an image without candidates adds an empty segment); bounds[b] where image b starts in
    o, plus len(o)."""
    B, M = s.shape
    o1s, orders, starts = [], [], []
    bounds = np.zeros(B + 1, np.int64)
    n = 0
    for b in range(B):
        bounds[b] = n
        sb = s[b]
        if sthr is None:
            sel = np.arange(M, dtype=np.int64)
        else:  # (double)score > score_threshold: NaN fails
            sel = np.flatnonzero(sb.astype(np.float64) > sthr)
        if top_k is not None and sel.shape[0] > top_k:  # reference/detect.py step 4
            sel = np.sort(sel[score_order(sb[sel])[:top_k]])
        o1, o, seg = _host_order(sb[sel], None if c is None else c[b][sel])
        o1s.append(sel[o1] + b * M)
        orders.append(sel[o] + b * M)
        starts.append(seg[:-1] + n)
        n += o.shape[0]
    o = np.concatenate(orders) if orders else np.empty(0, np.int64)
    seg = np.concatenate(starts + [np.array([n], np.int64)])
    bounds[B] = n
    return o1s, o.astype(np.int64, copy=False), seg.astype(np.int64, copy=False), bounds


def _multi_host_classes(scores: Any, classes: Any, B: int, N: int, C: int) -> np.ndarray | None:
    """[B, M] int64 class of each candidate on the host (None: one class)."""
    if C > 1:
        return np.broadcast_to(np.tile(np.arange(C, dtype=np.int64), N), (B, N * C))
    if classes is not None:
        return _to_host(classes).reshape(B, N)
    return None


def _multi_host_outputs(o1s: list, kept_by_cand: np.ndarray, M: int, Cc: int, K: int,
                        per_class: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Padded outputs: image b's kept candidates in o1s[b]'s order, the first K of them."""
    B = len(o1s)
    out = np.full((B, K), -1, np.int64)
    cls = np.full((B, K), -1, np.int64) if per_class else None
    counts = np.zeros(B, np.int64)
    for b, o1 in enumerate(o1s):
        q = o1[kept_by_cand[o1]][:K] - b * M
        counts[b] = q.shape[0]
        out[b, :q.shape[0]] = q // Cc
        if per_class:
            cls[b, :q.shape[0]] = q % Cc
    return out, cls, counts


def _soft_merge(idx: np.ndarray, val: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The classes' picks of one image merged as batched_soft_nms merges them: by decayed score
    (NaN first), ties by input index, the first ``limit``."""
    by_index = np.argsort(idx, kind="stable")
    idx, val = idx[by_index], val[by_index]
    o = score_order(val)[:limit]
    return idx[o], val[o]


_SOFT_METHODS = {"linear": 0, "gaussian": 1}  # box_math.soft_nms_weight's method codes


def _soft_nms_run(boxes: Any, scores: Any, rows: int, order: np.ndarray, seg: np.ndarray, method: str,
                  thr: float, sigma: float, sthr: float, limit: int,
                  parallel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input indices, decayed scores, picks per segment) on the host: the segments of ``order``
    (host) through numba/cpu.py's soft_nms (``parallel``: segments on numba's threads) or
    numba/cuda.py's (a block per segment; the picks are copied back), boxes viewed [rows, 4]."""
    if A.device(boxes) == "cpu":
        from . import cpu as _cpu

        return _cpu.soft_nms(A.to_numpy_view(boxes).reshape(rows, 4), A.to_numpy_view(scores).reshape(rows),
                             order, seg, _SOFT_METHODS[method], thr, sigma, sthr, limit, parallel=parallel)
    cuda, K = _cuda()
    with cuda.gpus[_device_index(boxes)]:
        b, s = A.ascontig(boxes), A.ascontig(scores)
        return K.soft_nms(_as_numba(cuda, b).reshape(rows, 4), _as_numba(cuda, s).reshape(rows), order, seg,
                          _SOFT_METHODS[method], thr, sigma, sthr, limit, _stream(cuda, b))


@register("soft_nms", "numba", devices=("cpu", "cuda"))
def soft_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> (kept indices,
    decayed scores): per class segment the reference's sequential loop (numba/cpu.py; on CUDA a
    block per segment, numba/cuda.py), the classes' picks merged on the host by decayed score,
    ties by index. CUDA: the plan (class segments) and the merge are host NumPy (a host sync)."""
    n = int(boxes.shape[0])
    limit = n if max_output is None else min(int(max_output), n)
    if classes is None:
        order, seg = np.arange(n, dtype=np.int64), np.array([0, n], np.int64)
    else:
        order, seg = _class_segments(np.arange(n, dtype=np.int64), _to_host(classes))
    idx, val, _ = _soft_nms_run(boxes, scores, n, order, seg, method, iou_threshold, sigma,
                                score_threshold, limit, False)
    if classes is not None:
        idx, val = _soft_merge(idx, val, limit)
    return A.from_numpy(idx, like=boxes), A.from_numpy(val, like=boxes)


@register("multi_image_soft_nms", "numba", devices=("cpu", "cuda"))
def multi_image_soft_nms(boxes: Any, scores: Any, classes: Any, max_output: int, iou_threshold: float,
                         sigma: float, method: str, score_threshold: float) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N] (same float dtype), classes int64 [B, N] or None ->
    (indices [B, K] -1 padded, decayed scores [B, K] 0 padded, counts [B]): every (image, class)
    segment of the batch through soft_nms's kernel in one call (the segments on numba's threads;
    on CUDA a block each); per image the classes' picks merged on the host as soft_nms merges
    them (CUDA: a host sync)."""
    B, N = int(boxes.shape[0]), int(boxes.shape[1])
    K = int(max_output)
    image = np.repeat(np.arange(B, dtype=np.int64), N)
    if classes is None:
        order, seg = np.arange(B * N, dtype=np.int64), np.arange(B + 1, dtype=np.int64) * N
    else:  # (image, class) segments, input index ascending inside one (lexsort is stable)
        c = _to_host(classes).reshape(B * N)
        order = np.lexsort((c, image)).astype(np.int64)
        ci, cc = image[order], c[order]
        starts = np.flatnonzero((ci[1:] != ci[:-1]) | (cc[1:] != cc[:-1])) + 1
        seg = np.concatenate(([0], starts, [B * N])).astype(np.int64)
    idx, val, _ = _soft_nms_run(boxes, scores, B * N, order, seg, method, iou_threshold, sigma,
                                score_threshold, min(K, N), True)
    out = np.full((B, K), -1, np.int64)
    vals = np.zeros((B, K), A.dtype_name(boxes))
    counts = np.zeros(B, np.int64)
    bounds = np.searchsorted(image[idx], np.arange(B + 1))  # picks are image by image
    for i in range(B):
        k, v = idx[bounds[i]:bounds[i + 1]] - i * N, val[bounds[i]:bounds[i + 1]]
        if classes is not None:
            k, v = _soft_merge(k, v, K)
        counts[i] = k.shape[0]
        out[i, :k.shape[0]], vals[i, :k.shape[0]] = k, v
    return tuple(A.from_numpy(x, like=boxes) for x in (out, vals, counts))


@register("diou_nms", "numba", devices=("cpu", "cuda"))
def diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, beta: float) -> Any:
    """boxes [N, 4], scores [N] (same float dtype), classes int64 [N] or None -> kept indices by
    descending score: nms's visiting plan (host), the greedy loop with DIoU's measure (numba/cpu.py,
    the classes on numba's threads). CUDA: nms's path (host or torch plan, the bitmask kernels)
    with DIoU-NMS's predicate."""
    if A.device(boxes) != "cpu":
        return nms(boxes, scores, classes, iou_threshold, beta=beta)
    from . import cpu as _cpu

    s = A.to_numpy_view(scores)
    c = None if classes is None else A.to_numpy_view(classes)
    o1, o, seg = _host_order(s, c)
    flags = _cpu.diou_nms_keep(A.to_numpy_view(boxes), o, seg, iou_threshold, beta)
    return A.from_numpy(_keep_from_flags(o1, o, flags), like=boxes)


_MATRIX_KERNELS = {"gaussian": 0, "linear": 1}  # box_math.matrix_nms_term's kernel codes


@register("matrix_nms", "numba", devices=("cpu", "cuda"))
def matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None,
               pre_top_k: int | None) -> tuple[Any, Any]:
    """boxes [N, 4], scores [N] (same float dtype), labels int64 [N] -> (indices, decayed scores):
    the ranks (score order, pre_top_k) grouped by class on the host, the decays in numba
    (numba/cpu.py, columns in parallel; numba/cuda.py, a thread per column), the filter and final
    order on the host as the reference's. CUDA: the scores and labels are copied to the host and
    the decays back (host syncs)."""
    s = _to_host(scores)
    order = score_order(s)
    if pre_top_k is not None:
        order = order[:int(pre_top_k)]
    n = order.shape[0]
    o, seg = _class_segments(np.arange(n, dtype=np.int64), _to_host(labels)[order])
    decay = np.empty(n, s.dtype)
    if A.device(boxes) == "cpu":
        from . import cpu as _cpu

        decay[o] = _cpu.matrix_nms_decay(A.to_numpy_view(boxes), order[o], seg,
                                         _MATRIX_KERNELS[kernel], sigma)
    else:
        cuda, K = _cuda()
        with cuda.gpus[_device_index(boxes)]:
            decay[o] = K.matrix_nms_decay(_as_numba(cuda, boxes), order[o], seg,
                                          _MATRIX_KERNELS[kernel], sigma, _stream(cuda, boxes))
    with np.errstate(all="ignore"):
        dec = s[order] * decay
    sel = np.arange(n)
    if score_threshold is not None:
        sel = sel[dec.astype(np.float64) >= float(score_threshold)]
    idx, val = _soft_merge(order[sel], dec[sel], n if max_output is None else int(max_output))
    return A.from_numpy(idx, like=boxes), A.from_numpy(val, like=boxes)


@register("multi_image_nms", "numba", devices=("cpu", "cuda"))
def multi_image_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                    score_threshold: float | None) -> tuple[Any, Any, Any]:
    """boxes [B, N, 4], scores [B, N] or [B, N, C] (same float dtype), classes int64 [B, N] or
    None -> (indices [B, K] int64, classes [B, K] int64 or None, counts [B] int64).

    CPU: the visiting plan on the host (NumPy), the segments' suppression in numba threads.
    CUDA with torch tensors: sorting, segmenting and the padded outputs are torch ops on the
    current stream and the suppression numba.cuda kernels on it: no host synchronisation, outputs
    of fixed size (CUDA-graph safe as far as numba's launches are). CUDA with other arrays (Numba,
    CuPy): the plan is made on the host (one copy of the scores and classes to it, one of the keep
    flags back), so those calls synchronise with the host."""
    B, N, C, Cc = _multi_dims(boxes, scores)
    M = N * Cc
    per_class = scores.ndim == 3
    if A.device(boxes) != "cpu" and A.kind(boxes) == "torch":
        cuda, K = _cuda()
        with cuda.gpus[_device_index(boxes)]:
            return _multi_torch_cuda(cuda, K, boxes, scores, classes, iou_threshold, max_output,
                                     score_threshold)
    s = _to_host(scores).reshape(B, M)
    o1s, o, seg, bounds = _multi_host_plan(s, _multi_host_classes(scores, classes, B, N, C),
                                           score_threshold)
    rows = (o // M) * N + (o % M) // Cc  # box row of each visited candidate in boxes [B * N, 4]
    if A.device(boxes) == "cpu":
        from . import cpu as _cpu

        flags = _cpu.nms_keep(A.to_numpy_view(boxes).reshape(B * N, 4), rows, seg,
                                    iou_threshold, parallel=True)
    else:
        flags = _multi_host_cuda(boxes, rows, seg, bounds, iou_threshold, B * N)
    kept_by_cand = np.zeros(B * M, bool)
    kept_by_cand[o[flags.astype(bool)]] = True
    outs = _multi_host_outputs(o1s, kept_by_cand, M, Cc, max_output, per_class)
    return tuple(None if x is None else A.from_numpy(x, like=boxes) for x in outs)


def _multi_host_cuda(boxes: Any, rows: np.ndarray, seg: np.ndarray, bounds: np.ndarray, thr: float,
                     nrows: int) -> np.ndarray:
    """Keep flags (host) of a host plan, suppressed by the numba.cuda kernels; one block per
    image scans it (segments never straddle images)."""
    cuda, K = _cuda()
    n = rows.shape[0]
    if n == 0:
        return np.zeros(0, np.uint8)
    ranges = np.ascontiguousarray(np.stack([bounds[:-1], bounds[1:]], 1))  # one block per image
    lengths = np.diff(seg)
    seg_of = np.repeat(seg[:-1], lengths)  # the start of each position's segment
    width = (int(lengths.max()) + 63) // 64 + 1
    with cuda.gpus[_device_index(boxes)]:
        stream = _stream(cuda, boxes)
        b2 = _as_numba(cuda, boxes).reshape(nrows, 4)
        flags = K.nms_keep_segments(b2, cuda.to_device(rows, stream=stream),
                                    cuda.to_device(seg_of, stream=stream),
                                    cuda.to_device(ranges, stream=stream), width, thr, stream)
        out = flags.copy_to_host(stream=stream)
        stream.synchronize()
    return out


def _multi_torch_cuda(cuda: Any, K: Any, boxes: Any, scores: Any, classes: Any, thr: float,
                      max_output: int, sthr: float | None) -> tuple[Any, Any, Any]:
    """torch CUDA tensors: the plan is torch ops on the device -- per-image stable sorts by
    descending score, class, then validity (score filter) give positions p = b * M + j in
    (image, valid, class, score, q) order; a candidate that fails the filter is a segment of its
    own -- then the kernels flag kept positions and torch sorts/pads the outputs. No host sync."""
    torch = sys.modules["torch"]
    B, N, C, Cc = _multi_dims(boxes, scores)
    M = N * Cc
    dev = boxes.device
    per_class = scores.ndim == 3
    i64 = torch.int64
    if B * M == 0:
        out = torch.full((B, max_output), -1, dtype=i64, device=dev)
        return out, out.clone() if per_class else None, torch.zeros(B, dtype=i64, device=dev)
    s = scores.reshape(B, M)
    # + 0 turns -0.0 into +0.0 (the reference treats them as equal); NaN ranks first.
    o1 = torch.sort(s + 0, dim=1, descending=True, stable=True).indices  # [B, M] q by score
    o = o1
    if C > 1:
        o = torch.gather(o, 1, torch.sort(o % Cc, dim=1, stable=True).indices)
    elif classes is not None:
        o = torch.gather(o, 1, torch.sort(torch.gather(classes, 1, o), dim=1, stable=True).indices)
    if sthr is not None:
        valid = s.double() > sthr  # NaN fails
        o = torch.gather(o, 1, torch.sort((~torch.gather(valid, 1, o)).to(torch.uint8), dim=1,
                                          stable=True).indices)
        v = torch.gather(valid, 1, o).reshape(-1)
    else:
        v = torch.ones(B * M, dtype=torch.bool, device=dev)
    of = o.reshape(-1)
    pos = torch.arange(B * M, dtype=i64, device=dev)
    if C > 1:
        cl = of % Cc
    elif classes is not None:
        cl = torch.gather(classes, 1, o).reshape(-1)
    else:
        cl = torch.zeros(B * M, dtype=i64, device=dev)
    head = (pos % M == 0) | ~v
    head[1:] |= ~v[:-1] | (cl[1:] != cl[:-1])
    seg = torch.cummax(torch.where(head, pos, 0), 0).values
    rows = (pos // M) * N + of // Cc
    # One scan block per image, over its valid positions only (they come first).
    start = torch.arange(B, dtype=i64, device=dev) * M
    ranges = torch.stack([start, start + v.reshape(B, M).sum(1)], 1).contiguous()
    width = (M + 63) // 64 + 1
    stream = _stream(cuda, boxes)
    tdt = {"float32": torch.float32, "float64": torch.float64, "int64": i64, "uint8": torch.uint8}

    def alloc(shape: tuple, dtype: np.dtype, zero: bool) -> Any:
        """Scratch from torch's caching allocator on the current stream: no cudaMalloc/sync."""
        make = torch.zeros if zero else torch.empty
        return _as_numba(cuda, make(shape, dtype=tdt[np.dtype(dtype).name], device=dev))

    flags = K.nms_keep_segments(_as_numba(cuda, boxes.reshape(B * N, 4)), _as_numba(cuda, rows),
                                _as_numba(cuda, seg), _as_numba(cuda, ranges), width, thr, stream,
                                alloc)
    kept = torch.as_tensor(flags, device=dev).bool() & v
    kept_by_cand = torch.zeros(B * M, dtype=torch.bool, device=dev)
    kept_by_cand[(pos // M) * M + of] = kept
    ko = torch.gather(kept_by_cand.reshape(B, M), 1, o1)  # kept flags in score order
    final = torch.gather(o1, 1, torch.sort((~ko).to(torch.uint8), dim=1, stable=True).indices)
    counts = ko.sum(1).clamp(max=max_output)
    take = min(max_output, M)
    slot = torch.arange(take, device=dev)[None, :] < counts[:, None]
    out = torch.full((B, max_output), -1, dtype=i64, device=dev)
    out[:, :take] = torch.where(slot, final[:, :take] // Cc, -1)
    cls = None
    if per_class:
        cls = torch.full((B, max_output), -1, dtype=i64, device=dev)
        cls[:, :take] = torch.where(slot, final[:, :take] % Cc, -1)
    return out, cls, counts


# ---- detect (issue 12) ---------------------------------------------------------------------------
# The per-anchor pass (objectness product, best class, xyxy corners) is box_math.detect_anchor, run
# by numba/cpu.py's detect_candidates (anchors on threads) or numba/cuda.py's
# detect_candidates_kernel (a thread per anchor). The candidate selection (score filter, pre-NMS
# top-k) and the visiting plan are multi_image_nms's host plan (_multi_host_plan, NumPy); every
# image's (class) segments then run through multi_image_nms's suppression in one call: numba's
# threads on the CPU, the bitmask kernels on CUDA (_multi_host_cuda).

def _np_contig(x: Any) -> np.ndarray | None:
    """A contiguous NumPy view (or copy, for a strided head output) of a CPU array; None stays."""
    return None if x is None else np.ascontiguousarray(A.to_numpy_view(x))


def _detect_picks(cs: np.ndarray, classes: np.ndarray | None, N: int, Cc: int, sthr: float | None,
                  top_k: int | None, K: int, suppress: Any) -> tuple[np.ndarray, np.ndarray]:
    """(picks [B, K] int64, counts [B]): image b's kept candidates q by descending score (NaN
    first, ties by q; reference/detect.py steps 3-6), -1 past counts[b]. ``cs`` [B, M] host
    candidate scores, ``classes`` [B, M] int64 (None: class-agnostic), candidate q on box row
    b * N + q // Cc; ``suppress(rows, seg, bounds)`` -> keep flags over the plan's positions."""
    B, M = cs.shape
    if M == 0 or K == 0:
        return np.full((B, K), -1, np.int64), np.zeros(B, np.int64)
    o1s, o, seg, bounds = _multi_host_plan(cs, classes, sthr, None if top_k is None else int(top_k))
    kept_by_cand = np.zeros(B * M, bool)
    if o.shape[0]:
        rows = (o // M) * N + (o % M) // Cc  # box row of each visited candidate in xyxy [B * N, 4]
        kept_by_cand[o[suppress(rows, seg, bounds).astype(bool)]] = True
    picks, _, counts = _multi_host_outputs(o1s, kept_by_cand, M, 1, K, False)
    return picks, counts


def _detect_classes(cls: np.ndarray, B: int, N: int, C: int, multi: bool,
                    agnostic: bool) -> np.ndarray | None:
    """[B, M] int64 NMS class of each candidate on the host (None: class-agnostic)."""
    if agnostic:
        return None
    if multi:
        return np.broadcast_to(np.tile(np.arange(C, dtype=np.int64), N), (B, N * C))
    return cls


@register("detect", "numba", devices=("cpu", "cuda"))
def detect(boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float, max_det: int,
           score_threshold: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool) -> tuple:
    """boxes [B, A, 4], scores [B, A] or [B, A, C], objectness [B, A] or None (one float dtype,
    any strides: copied contiguous), idxs int64 [B, A] or None -> (boxes [B, K, 4], scores [B, K],
    classes, indices [B, K], counts [B]); the rule is reference/detect.py's, greedy IoU NMS only
    (no ``nms_modes``: _dispatch.detect_select refuses the other modes).

    CUDA (numba.cuda, any CUDA array kind): the per-anchor pass, the suppression and the padded
    outputs are kernels on the caller's stream; the plan between them is host NumPy, as for
    multi_image_nms with Numba/CuPy arrays: the candidate scores (and classes) are copied to the
    host and the keep flags and picks back, so a call synchronises with the host."""
    if A.device(boxes) != "cpu":
        return _detect_cuda(boxes, scores, objectness, idxs, iou_threshold, int(max_det),
                            score_threshold, top_k, fmt, multi_label, class_agnostic)
    from . import cpu as _cpu

    b, s, o = _np_contig(boxes), _np_contig(scores), _np_contig(objectness)
    per_column = s.ndim == 3
    B, N = int(b.shape[0]), int(b.shape[1])
    s3 = s if per_column else s.reshape(B, N, 1)
    C = int(s3.shape[2])
    multi = bool(multi_label) and per_column
    xyxy, cs, best = _cpu.detect_pass(b, s3, o, FMT_CODES[fmt], multi)
    M = 0 if C == 0 else cs.shape[1]  # candidates per image, index q
    Cc = C if multi else 1  # anchor = q // Cc
    if per_column or idxs is None:
        cls = best  # [B, A] scores: 0 (one class)
    else:
        cls = A.to_numpy_view(idxs).reshape(B, N)
    agnostic = class_agnostic or (not per_column and idxs is None)
    K = int(max_det)
    picks, counts = _detect_picks(
        cs[:, :M], _detect_classes(cls, B, N, C, multi, agnostic), N, Cc, score_threshold, top_k, K,
        lambda rows, seg, _: _cpu.nms_keep(xyxy.reshape(B * N, 4), rows, seg, iou_threshold,
                                           parallel=True))
    ob = np.zeros((B, K, 4), b.dtype)
    os_ = np.zeros((B, K), b.dtype)
    oc = np.full((B, K), -1, np.int64)
    oi = np.full((B, K), -1, np.int64)
    for i in range(B):
        k = int(counts[i])
        q = picks[i, :k]
        a = q // Cc
        ob[i, :k] = xyxy[i, a]
        os_[i, :k] = cs[i, q]
        oc[i, :k] = q % Cc if multi else cls[i, a]
        oi[i, :k] = a
    return tuple(A.from_numpy(x, like=boxes) for x in (ob, os_, oc, oi, counts))


def _detect_cuda(boxes: Any, scores: Any, objectness: Any, idxs: Any, thr: float, K: int,
                 sthr: float | None, top_k: int | None, fmt: str, multi_label: bool,
                 class_agnostic: bool) -> tuple:
    """detect on numba.cuda (see detect): outputs of ``boxes``' array kind, on its device."""
    cuda, NC = _cuda()
    b, s = A.ascontig(boxes), A.ascontig(scores)
    o = None if objectness is None else A.ascontig(objectness)
    per_column = s.ndim == 3
    B, N = int(b.shape[0]), int(b.shape[1])
    s3 = s if per_column else s.reshape(B, N, 1)
    C = int(s3.shape[2])
    multi = bool(multi_label) and per_column
    M = N * C if multi else (N if C else 0)  # candidates per image, index q
    Cc = C if multi else 1  # anchor = q // Cc
    dt = A.dtype_name(b)
    if M == 0 or K == 0:  # no candidates or no slots: padding only (no kernel on empty arrays)
        return tuple(A.from_numpy(x, like=b) for x in (
            np.zeros((B, K, 4), dt), np.zeros((B, K), dt), np.full((B, K), -1, np.int64),
            np.full((B, K), -1, np.int64), np.zeros(B, np.int64)))
    xyxy = A.empty((B, N, 4), dt, like=b)
    cs = A.empty((B, N * C if multi else N), dt, like=b)
    best = A.empty((B, N), "int64", like=b)
    cls = best if per_column or idxs is None else idxs  # [B, A] scores: best is 0 (one class)
    agnostic = class_agnostic or (not per_column and idxs is None)
    with cuda.gpus[_device_index(b)]:
        stream = _stream(cuda, b)

        def nb(x: Any) -> Any:
            return _as_numba(cuda, x)

        NC.detect_candidates(nb(b), nb(s3), nb(o), FMT_CODES[fmt], multi, nb(xyxy), nb(cs), nb(best),
                             stream)
        c_host = None if agnostic or multi else _to_host(cls).reshape(B, N)
        picks, counts = _detect_picks(
            _to_host(cs), _detect_classes(c_host, B, N, C, multi, agnostic), N, Cc, sthr, top_k, K,
            lambda rows, seg, bounds: _multi_host_cuda(xyxy, rows, seg, bounds, thr, B * N))
        ob = A.empty((B, K, 4), dt, like=b)
        os_ = A.empty((B, K), dt, like=b)
        oc = A.empty((B, K), "int64", like=b)
        oi = A.empty((B, K), "int64", like=b)
        NC.detect_outputs(nb(xyxy), nb(cs), nb(cls), nb(A.from_numpy(picks, like=b)), Cc, multi,
                          nb(ob), nb(os_), nb(oc), nb(oi), stream)
    return ob, os_, oc, oi, A.from_numpy(counts, like=b)


# ---- RoI ops (CPU and CUDA) ------------------------------------------------------------------------
# Inputs arrive in the working dtype (float32/float64; float16/bfloat16 are widened by detkernels/_dispatch.py).
# Strided (channels-last) features and grads are made contiguous here (one copy), so each kernel
# compiles once per dtype. CUDA: the kernels write every element of their outputs (no memset) on
# the caller's stream, with no host synchronisation.

def _roi_np(x: Any) -> np.ndarray:
    return np.ascontiguousarray(A.to_numpy_view(x))


def _numel(x: Any) -> int:
    return int(np.prod(x.shape))  # torch's .size is a method


def _roi_cuda() -> tuple:
    """(numba.cuda, _roi_cuda), with a clear error where numba.cuda cannot run."""
    cuda, _ = _cuda()
    from . import roi_cuda as _roi_cuda

    return cuda, _roi_cuda


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
        from . import roi_cpu as _roi_cpu

        out = _roi_cpu.roi_align(A.to_numpy_view(input), _roi_np(rois), spatial_scale, ph, pw,
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
        from . import roi_cpu as _roi_cpu

        gi = _roi_cpu.roi_align_backward(_roi_np(grad), _roi_np(rois), spatial_scale, ph, pw,
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
        from . import roi_cpu as _roi_cpu

        out, idx = _roi_cpu.roi_pool(_roi_np(input), _roi_np(rois), spatial_scale, ph, pw, ps)
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
        from . import roi_cpu as _roi_cpu

        gi = _roi_cpu.roi_pool_backward(_roi_np(grad), _roi_np(rois), _roi_np(idx), spatial_scale,
                                          ph, pw, (n, c, h, w), ps)
        return A.from_numpy(gi, like=grad)
    _, K = _roi_cuda()
    g, r, i = A.ascontig(grad), A.ascontig(rois), A.ascontig(idx)
    gi = A.empty((n, c, h, w), A.dtype_name(g), like=g)
    if _numel(gi):
        _roi_launch(K.roi_pool_backward, g, (g, r, i, gi), spatial_scale, ph, pw, ps)
    return gi
