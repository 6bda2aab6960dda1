"""The NumPy reference as a backend: the specification itself, for CPU arrays. Slow; it exists for
checking and as the last resort on a machine without the compiled core."""
from __future__ import annotations

from typing import Any

from .. import _arrays as A
from ._table import declare, register
from ..reference import box_iou as ref_iou
from ..reference import nms as ref_nms
from ..reference import rotated as ref_rotated

declare("numpy", True)

_ALL = ("float32", "float64", "int32", "int64")


@register("box_iou", "numpy", dtypes=_ALL)
def box_iou(b1: Any, b2: Any, kind: str, fmt: str, eps: float) -> Any:
    out = ref_iou._matrix(A.to_numpy_view(b1), A.to_numpy_view(b2), kind, fmt, eps)
    return A.from_numpy(out, like=b1)


@register("box_iou_rotated", "numpy")
def box_iou_rotated(b1: Any, b2: Any) -> Any:
    out = ref_rotated.box_iou_rotated(A.to_numpy_view(b1), A.to_numpy_view(b2))
    return A.from_numpy(out, like=b1)


@register("nms_rotated", "numpy")
def nms_rotated(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    if classes is None:
        keep = ref_rotated.nms_rotated(b, s, iou_threshold)
    else:
        keep = ref_rotated.batched_nms_rotated(b, s, A.to_numpy_view(classes), iou_threshold)
    return A.from_numpy(keep, like=boxes)


@register("probiou", "numpy")
def probiou(b1: Any, b2: Any, eps: float) -> Any:
    return A.from_numpy(ref_rotated.probiou(A.to_numpy_view(b1), A.to_numpy_view(b2), eps), like=b1)


@register("nms_probiou", "numpy")
def nms_probiou(boxes: Any, scores: Any, classes: Any, iou_threshold: float, fast: bool, eps: float) -> Any:
    keep = ref_rotated.nms_probiou(A.to_numpy_view(boxes), A.to_numpy_view(scores), iou_threshold,
                                   None if classes is None else A.to_numpy_view(classes), fast, eps)
    return A.from_numpy(keep, like=boxes)


@register("multi_image_nms_rotated", "numpy")
def multi_image_nms_rotated(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                            score_threshold: float | None, metric: str, eps: float) -> tuple[Any, Any]:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    c = None if classes is None else A.to_numpy_view(classes)
    if metric == "iou":
        out = ref_rotated.multi_image_nms_rotated(b, s, iou_threshold, max_output, idxs=c,
                                                  score_threshold=score_threshold)
    else:
        out = ref_rotated.multi_image_nms_probiou(b, s, iou_threshold, max_output, idxs=c,
                                                  fast=metric == "probiou_fast", eps=eps,
                                                  score_threshold=score_threshold)
    return tuple(A.from_numpy(x, like=boxes) for x in out)


@register("nms", "numpy")
def nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float) -> Any:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    if classes is None:
        keep = ref_nms.nms(b, s, iou_threshold)
    else:
        keep = ref_nms.batched_nms(b, s, A.to_numpy_view(classes), iou_threshold)
    return A.from_numpy(keep, like=boxes)


@register("multi_image_nms", "numpy")
def multi_image_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                    score_threshold: float | None) -> tuple[Any, Any, Any]:
    idx, cls, counts = ref_nms.multi_image_nms(
        A.to_numpy_view(boxes), A.to_numpy_view(scores), iou_threshold, max_output,
        idxs=None if classes is None else A.to_numpy_view(classes), score_threshold=score_threshold)
    return (A.from_numpy(idx, like=boxes), None if cls is None else A.from_numpy(cls, like=boxes),
            A.from_numpy(counts, like=boxes))


from ..reference import soft_nms as ref_soft_nms  # noqa: E402


@register("soft_nms", "numpy")
def soft_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, sigma: float, method: str,
             score_threshold: float, max_output: int | None) -> tuple[Any, Any]:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    args = (iou_threshold, sigma, method, score_threshold, max_output)
    if classes is None:
        keep, kept = ref_soft_nms.soft_nms(b, s, *args)
    else:
        keep, kept = ref_soft_nms.batched_soft_nms(b, s, A.to_numpy_view(classes), *args)
    return A.from_numpy(keep, like=boxes), A.from_numpy(kept, like=boxes)


@register("multi_image_soft_nms", "numpy")
def multi_image_soft_nms(boxes: Any, scores: Any, classes: Any, max_output: int, iou_threshold: float,
                         sigma: float, method: str, score_threshold: float) -> tuple[Any, Any, Any]:
    out = ref_soft_nms.multi_image_soft_nms(
        A.to_numpy_view(boxes), A.to_numpy_view(scores), max_output, iou_threshold, sigma, method,
        score_threshold, idxs=None if classes is None else A.to_numpy_view(classes))
    return tuple(A.from_numpy(x, like=boxes) for x in out)


from ..reference import diou_nms as ref_diou_nms  # noqa: E402


@register("diou_nms", "numpy")
def diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, beta: float) -> Any:
    b, s = A.to_numpy_view(boxes), A.to_numpy_view(scores)
    if classes is None:
        keep = ref_diou_nms.diou_nms(b, s, iou_threshold, beta)
    else:
        keep = ref_diou_nms.batched_diou_nms(b, s, A.to_numpy_view(classes), iou_threshold, beta)
    return A.from_numpy(keep, like=boxes)


@register("multi_image_diou_nms", "numpy")
def multi_image_diou_nms(boxes: Any, scores: Any, classes: Any, iou_threshold: float, max_output: int,
                         beta: float) -> tuple[Any, Any]:
    out = ref_diou_nms.multi_image_diou_nms(
        A.to_numpy_view(boxes), A.to_numpy_view(scores), iou_threshold, max_output, beta,
        idxs=None if classes is None else A.to_numpy_view(classes))
    return tuple(A.from_numpy(x, like=boxes) for x in out)


from ..reference import matrix_nms as ref_matrix_nms  # noqa: E402


@register("matrix_nms", "numpy")
def matrix_nms(boxes: Any, scores: Any, labels: Any, kernel: str, sigma: float,
               score_threshold: float | None, max_output: int | None,
               pre_top_k: int | None) -> tuple[Any, Any]:
    keep, kept = ref_matrix_nms.matrix_nms(A.to_numpy_view(boxes), A.to_numpy_view(scores),
                                           A.to_numpy_view(labels), kernel, sigma, score_threshold,
                                           max_output, pre_top_k)
    return A.from_numpy(keep, like=boxes), A.from_numpy(kept, like=boxes)


@register("multi_image_matrix_nms", "numpy")
def multi_image_matrix_nms(boxes: Any, scores: Any, labels: Any, max_output: int, kernel: str,
                           sigma: float, score_threshold: float | None,
                           pre_top_k: int | None) -> tuple[Any, Any, Any]:
    out = ref_matrix_nms.multi_image_matrix_nms(
        A.to_numpy_view(boxes), A.to_numpy_view(scores), A.to_numpy_view(labels), max_output,
        kernel, sigma, score_threshold, pre_top_k)
    return tuple(A.from_numpy(x, like=boxes) for x in out)


from ..reference import detect as ref_detect  # noqa: E402


@register("detect", "numpy")
def detect(boxes: Any, scores: Any, objectness: Any, idxs: Any, iou_threshold: float, max_det: int,
           score_threshold: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool, nms: Any = None) -> tuple:
    v = (lambda x: None if x is None else A.to_numpy_view(x))
    mode = {} if nms is None else nms._asdict()
    out = ref_detect.detect(v(boxes), v(scores), iou_threshold, max_det, score_threshold=score_threshold,
                            pre_nms_top_k=top_k, fmt=fmt, objectness=v(objectness),
                            multi_label=multi_label, class_agnostic=class_agnostic, idxs=v(idxs),
                            **{("nms" if k == "mode" else k): x for k, x in mode.items()})
    return tuple(A.from_numpy(x, like=boxes) for x in out)


detect.nms_modes = {"cpu": ref_detect.NMS_MODES}


# ---- RoI ops ---------------------------------------------------------------------------------------

from ..reference import roi_align as ref_roi_align  # noqa: E402
from ..reference import roi_pool as ref_roi_pool  # noqa: E402


@register("roi_align", "numpy")
def roi_align(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
              aligned: bool, ps: bool) -> Any:
    x, r = A.to_numpy_view(input), A.to_numpy_view(rois)
    if ps:
        out = ref_roi_align.ps_roi_align(x, r, spatial_scale, ph, pw, sampling_ratio)
    else:
        out = ref_roi_align.roi_align(x, r, spatial_scale, ph, pw, sampling_ratio, aligned)
    return A.from_numpy(out, like=input)


@register("roi_align_backward", "numpy")
def roi_align_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                       h: int, w: int, sampling_ratio: int, aligned: bool, ps: bool) -> Any:
    g, r = A.to_numpy_view(grad), A.to_numpy_view(rois)
    if ps:
        gi = ref_roi_align.ps_roi_align_backward(g, r, spatial_scale, ph, pw, sampling_ratio, n, c, h, w)
    else:
        gi = ref_roi_align.roi_align_backward(g, r, spatial_scale, ph, pw, n, c, h, w, sampling_ratio, aligned)
    return A.from_numpy(gi, like=grad)


@register("roi_pool", "numpy")
def roi_pool(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, ps: bool) -> tuple:
    x, r = A.to_numpy_view(input), A.to_numpy_view(rois)
    fn = ref_roi_pool.ps_roi_pool if ps else ref_roi_pool.roi_pool
    out, idx = fn(x, r, spatial_scale, ph, pw)
    return A.from_numpy(out, like=input), A.from_numpy(idx, like=input)


@register("roi_pool_backward", "numpy")
def roi_pool_backward(grad: Any, rois: Any, idx: Any, spatial_scale: float, ph: int, pw: int, n: int,
                      c: int, h: int, w: int, ps: bool) -> Any:
    g, r, i = A.to_numpy_view(grad), A.to_numpy_view(rois), A.to_numpy_view(idx)
    fn = ref_roi_pool.ps_roi_pool_backward if ps else ref_roi_pool.roi_pool_backward
    return A.from_numpy(fn(g, r, i, spatial_scale, ph, pw, n, c, h, w), like=grad)


# ---- roi_align_rotated ---------------------------------------------------------------------------------

from ..reference import roi_align_rotated as ref_roi_align_rotated  # noqa: E402


@register("roi_align_rotated", "numpy")
def roi_align_rotated(input: Any, rois: Any, spatial_scale: float, ph: int, pw: int, sampling_ratio: int,
                      aligned: bool, clockwise: bool) -> Any:
    out = ref_roi_align_rotated.roi_align_rotated(A.to_numpy_view(input), A.to_numpy_view(rois), spatial_scale,
                                                  ph, pw, sampling_ratio, aligned, clockwise)
    return A.from_numpy(out, like=input)


@register("roi_align_rotated_backward", "numpy")
def roi_align_rotated_backward(grad: Any, rois: Any, spatial_scale: float, ph: int, pw: int, n: int, c: int,
                               h: int, w: int, sampling_ratio: int, aligned: bool, clockwise: bool) -> Any:
    gi = ref_roi_align_rotated.roi_align_rotated_backward(A.to_numpy_view(grad), A.to_numpy_view(rois),
                                                          spatial_scale, ph, pw, n, c, h, w, sampling_ratio,
                                                          aligned, clockwise)
    return A.from_numpy(gi, like=grad)
