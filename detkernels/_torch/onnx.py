"""ONNX export: the detkernels ops as standard ONNX operators, with both exporters.

How each op exports (``exporting()`` is true under either exporter):

* ``nms``, ``batched_nms``, ``nms_padded``, ``multi_image_nms``: written here as torch
  compositions around one custom op, ``detkernels::onnx_nms`` -- exactly ONNX
  ``NonMaxSuppression`` (``[B, N, 4]`` boxes, ``[B, C, N]`` scores, selected ``[S, 3]`` rows
  ``(batch, class, box)``), whose eager kernel runs detkernels' NMS per (image, class). Per-class
  NMS without a score threshold gives each class its own batch row and zeroes the boxes of other
  classes there (a zero-area box never suppresses, in ONNX Runtime as in detkernels; its selections
  are dropped): exact for every score, -inf and NaN included. The kept rows are ordered
  (image, descending score, ascending candidate index) with three stable ``TopK`` passes and
  scattered into the ``-1``-padded fixed-size outputs.
* ``detect``: a torch composition (``detect`` below) around the same ``onnx_nms``: ``ArgMax``
  for the best class, ``Greater`` for the score threshold (as the float32 that splits float32
  scores as detect's float64 compare does), two stable ``TopK`` passes for the pre-NMS top-k, one
  ``NonMaxSuppression`` over ``[B, C, k]`` scores (other classes' and dropped candidates at -inf
  under a -inf score threshold; without a threshold, the zeroed-boxes rows above), then the
  ordering passes and scatter of ``multi_image_nms`` into the ``max_det`` slots. Greedy IoU NMS
  only: ``detect(nms="diou"|"soft"|"matrix")`` raises NotImplementedError when exported.
* ``roi_align`` -> ``RoiAlign`` (opset 16: ``coordinate_transformation_mode`` carries
  ``aligned``), ``roi_pool`` -> ``MaxRoiPool`` (its argmax output, used only by the backward, is
  exported as -1s).
* ``ps_roi_align`` / ``ps_roi_pool``: no ONNX operator; custom-domain nodes
  ``detkernels.PSRoIAlign`` / ``detkernels.PSRoIPool`` (version 1) with torchvision's attributes
  (``spatial_scale``, ``pooled_height``, ``pooled_width``, ``sampling_ratio``). ONNX Runtime has no
  kernel for them: a runtime that serves them must register one.
* The IoU family: the reference formulas on torch ops (detkernels/_torch/iou.py), i.e.
  elementwise ONNX operators.
* ``probiou``: reference/rotated.py's formula on torch ops (``probiou`` below): elementwise
  operators, within a few ulp of 1 of detkernels (ONNX Runtime's Cos/Sin/Log/Exp are not libm's).
* ``matrix_nms`` and ``nms_probiou(fast=True)``: fully parallel, so torch compositions over the
  ``[n, n]`` IoU / ProbIoU matrix (below): standard operators, O(n²) memory.
* ``soft_nms``, ``multi_image_soft_nms``, ``diou_nms``, ``multi_image_diou_nms``,
  ``multi_image_matrix_nms``, the rotated ``box_iou``, ``nms_rotated``,
  ``batched_nms_rotated``, greedy ``nms_probiou``: no translation yet (greedy selection needs an
  ONNX Loop, the rotated IoU a custom-domain node): export fails with the exporter's error.

Registration happens on import, with no user step: the TorchScript-based exporter's symbolics
(``torch.onnx.register_custom_op_symbolic``) now; the ``dynamo=True`` exporter's onnxscript
translations when onnxscript is imported (it costs ~1 s, so not at ``import detkernels``; the
exporter imports it before it builds its registry). docs/DEPLOY.md lists where ONNX Runtime's
arithmetic differs from detkernels'.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import _checks, _dispatch

INT64_MAX = 2**63 - 1  # max_output_boxes_per_class "no limit", as torchvision's translation
DOMAIN = "detkernels"  # custom domain of the ps ops' nodes
ROI_OPSET = 16  # RoiAlign-16: coordinate_transformation_mode (aligned)


def exporting() -> bool:
    """True under ``torch.onnx.export`` (either exporter)."""
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


# ---- detkernels::onnx_nms: ONNX NonMaxSuppression ----------------------------------------------------

@torch.library.custom_op("detkernels::onnx_nms", mutates_args=())
def onnx_nms(boxes: Tensor, scores: Tensor, max_output_boxes_per_class: int, iou_threshold: float,
             score_threshold: float | None = None) -> Tensor:
    """ONNX ``NonMaxSuppression`` (center_point_box=0) with detkernels' NMS: ``[B, N, 4]`` boxes,
    ``[B, C, N]`` scores -> int64 ``[S, 3]`` rows ``(batch, class, box)``, per batch and class in
    selection order (descending score), at most ``max_output_boxes_per_class`` per class,
    candidates with ``score > score_threshold`` only (if given)."""
    B, C, N = scores.shape
    rows = []
    for b in range(B):
        for c in range(C):
            s = scores[b, c]
            cand = torch.arange(N, device=s.device) if score_threshold is None else \
                torch.nonzero(s > score_threshold)[:, 0]
            if cand.numel() == 0 or max_output_boxes_per_class <= 0:
                continue
            bx, sc = boxes[b, cand].contiguous(), s[cand].contiguous()
            keep = cand[_dispatch.nms(bx, sc, None, iou_threshold, _checks.nms_check(bx, sc), None)]
            keep = keep[:max_output_boxes_per_class]
            rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], 1))
    return torch.cat(rows) if rows else torch.empty((0, 3), dtype=torch.int64, device=boxes.device)


@onnx_nms.register_fake
def _(boxes, scores, max_output_boxes_per_class, iou_threshold, score_threshold=None):
    return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(), 3), dtype=torch.int64)


# ---- the NMS forms as compositions (traced by both exporters) ----------------------------------------

def _f32(t: Tensor) -> Tensor:
    # NonMaxSuppression takes float32 only: other dtypes are rounded to it (docs/DEPLOY.md).
    return t if t.dtype == torch.float32 else t.float()


def _stable_order(keys: list[tuple[Tensor, bool]]) -> Tensor:
    """Permutation sorting by ``keys`` (most significant first; True = descending): one stable
    ``TopK`` per key, least significant first (ONNX TopK breaks ties by lower index)."""
    n = keys[0][0].shape[0]
    perm = torch.arange(n, device=keys[0][0].device)
    for key, descending in reversed(keys):
        perm = perm[torch.topk(key[perm], n, largest=descending, sorted=True)[1]]
    return perm


def _class_exclusive(boxes: Tensor, scores: Tensor, idxs: Tensor, thr: float,
                     sthr: float | None) -> tuple[Tensor, Tensor]:
    """Per-class NMS of ``[B, N, 4]`` boxes, ``[B, N]`` scores and class ids: one NMS row per
    (image, class), the boxes of other classes (and, with a threshold, of failing candidates)
    zeroed there and their selections dropped. Returns (image, box) of the kept candidates."""
    B, N = scores.shape
    classes = torch.unique(idxs.reshape(-1))
    K = classes.shape[0]
    member = idxs[:, None, :] == classes[None, :, None]  # [B, K, N]
    if sthr is not None:
        member = member & (scores > sthr)[:, None, :]
    bx = torch.where(member[..., None], boxes[:, None], torch.zeros_like(boxes[:, None]))
    sel = onnx_nms(bx.reshape(-1, N, 4), scores[:, None, :].expand(B, K, N).reshape(-1, 1, N),
                   INT64_MAX, thr)
    bk, n = sel[:, 0], sel[:, 2]
    ok = member.reshape(-1, N)[bk, n]
    return torch.div(bk[ok], K, rounding_mode="floor"), n[ok]


def _candidates(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float,
                sthr: float | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The kept candidates of multi_image_nms: (image, box, class column or -1, score, candidate
    index), unordered."""
    boxes, scores = _f32(boxes), _f32(scores)
    if scores.ndim == 3:  # [B, N, C]: NonMaxSuppression's own per-class layout
        C = scores.shape[2]
        sel = onnx_nms(boxes, scores.transpose(1, 2), INT64_MAX, thr, sthr)
        b, c, n = sel[:, 0], sel[:, 1], sel[:, 2]
        return b, n, c, scores[b, n, c], n * C + c
    if idxs is None:
        sel = onnx_nms(boxes, scores[:, None, :], INT64_MAX, thr, sthr)
        b, n = sel[:, 0], sel[:, 2]
    else:
        b, n = _class_exclusive(boxes, scores, idxs, thr, sthr)
    return b, n, torch.full_like(n, -1), scores[b, n], n


def nms(boxes: Tensor, scores: Tensor, thr: float) -> Tensor:
    return onnx_nms(_f32(boxes)[None], _f32(scores)[None, None], INT64_MAX, thr)[:, 2]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, thr: float) -> Tensor:
    boxes, scores = _f32(boxes), _f32(scores)
    _, n = _class_exclusive(boxes[None], scores[None], idxs[None], thr, None)
    return n[_stable_order([(scores[n], True), (n, False)])]


def multi_image_nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, max_output: int,
                    sthr: float | None) -> tuple[Tensor, Tensor | None, Tensor]:
    B = boxes.shape[0]
    b, n, c, s, key = _candidates(boxes, scores, idxs, thr, sthr)
    order = _stable_order([(b, False), (s, True), (key, False)])
    b, n, c = b[order], n[order], c[order]
    per_image = (b[:, None] == torch.arange(B, device=b.device)[None, :]).sum(0)  # [B]
    start = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(b.shape[0], device=b.device) - start[b]
    # Slot b * max_output + rank; candidates past max_output go to one extra slot, then dropped.
    slot = torch.where(rank < max_output, b * max_output + rank, torch.full_like(rank, B * max_output))
    pad = torch.full((B * max_output + 1,), -1, dtype=torch.int64, device=b.device)
    idx = pad.scatter(0, slot, n)[:-1].reshape(B, max_output)
    cls = pad.scatter(0, slot, c)[:-1].reshape(B, max_output)
    counts = torch.clamp(per_image, max=max_output)
    return idx, (cls if scores.ndim == 3 else None), counts


def nms_padded(boxes: Tensor, scores: Tensor, thr: float, max_output: int) -> tuple[Tensor, Tensor]:
    idx, _, counts = multi_image_nms(boxes[None], scores[None], None, thr, max_output, None)
    return idx[0], counts[0]


# ---- detect: the fused post-process as a composition -----------------------------------------------

def _f32_above(v: float) -> float:
    """The float32 ``t`` with ``x > t`` (float32 compare) == ``(double)x > v`` for every float32
    ``x``: ``v`` itself if float32 holds it, else the float32 just below it (ONNX ``Greater``
    compares float32s; detect compares in float64)."""
    import numpy as np

    t = np.float32(v)
    if np.isfinite(v) and float(t) > v:
        t = np.nextafter(t, np.float32(-np.inf))
    return float(t)


def _xyxy(boxes: Tensor, fmt: str) -> Tensor:
    # The IoU functions' conversions (reference/box_iou.py to_xyxy): one rounding per coordinate.
    a, b = boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return torch.cat([a, a + b], -1)
    if fmt == "cxcywh":
        return torch.cat([a - b / 2, a + b / 2], -1)
    return boxes


def refuse_detect_nms(nms: str) -> None:
    """detect's NMS modes other than "iou" have no standard ONNX operator: a clear error (here, and
    in detkernels::detect's fake kernel, which the exporter's fallback strict trace reaches)."""
    if nms != "iou":
        raise NotImplementedError(f"detect(nms={nms!r}) has no ONNX export: standard ONNX has only "
                                  f"greedy IoU NonMaxSuppression (export detect with nms='iou')")


def detect(boxes: Tensor, scores: Tensor, objectness: Tensor | None, idxs: Tensor | None, thr: float,
           max_det: int, sthr: float | None, top_k: int | None, fmt: str, multi_label: bool,
           class_agnostic: bool, w: str, nms: str = "iou") -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """detect (reference/detect.py) in standard ONNX operators: ``ArgMax`` (single-label, NaN rows
    mapped to their first NaN as detect does), ``Greater`` (the threshold as the float32 that
    compares alike), two stable ``TopK`` passes (score, then passed/failed) for the pre-NMS top-k,
    ``NonMaxSuppression`` per class (``[B, C, k]`` scores: other classes' and dropped candidates at
    -inf below a -inf score threshold; without a threshold one batch row per (image, class) with
    the other classes' boxes zeroed, as ``_class_exclusive``), three stable ``TopK`` passes for the
    output order and a scatter into the padded outputs. Boxes and scores come out in the working
    dtype ``w``; ranking and NMS run on float32 (NonMaxSuppression's only type). Greedy IoU NMS
    only: ``nms`` other than "iou" (DIoU-, Soft-, Matrix NMS: no standard ONNX operator) raises."""
    refuse_detect_nms(nms)
    dt = getattr(torch, w)
    B, A = boxes.shape[:2]
    xyxy = _xyxy(boxes.to(dt), fmt)  # [B, A, 4] in T: the output boxes
    s = scores.to(dt)
    if objectness is not None:
        s = s * (objectness.to(dt)[..., None] if s.ndim == 3 else objectness.to(dt))
    dev = boxes.device
    if s.ndim == 3 and multi_label:
        C = s.shape[2]
        cand_s = s.reshape(B, A * C)                                        # q = a * C + c
        cand_a = (torch.arange(A * C, device=dev) // C)[None].expand(B, -1)
        cand_c = (torch.arange(A * C, device=dev) % C)[None].expand(B, -1)
    elif s.ndim == 3:
        C = s.shape[2]
        isnan = s.isnan()
        first_nan = torch.argmax(isnan.to(torch.int32), -1)
        best = torch.argmax(torch.where(isnan, torch.full_like(s, float("-inf")), s), -1)
        cand_c = torch.where(isnan.any(-1), first_nan, best)                # q = a
        cand_s = torch.gather(s, 2, cand_c[..., None])[..., 0]
        cand_a = torch.arange(A, device=dev)[None].expand(B, -1)
    else:
        C = 1
        cand_s, cand_a = s, torch.arange(A, device=dev)[None].expand(B, -1)
        cand_c = torch.zeros_like(cand_a) if idxs is None else idxs.to(torch.int64)
    Q = cand_s.shape[1]
    key = _f32(cand_s)
    passed = None if sthr is None else key > _f32_above(sthr)
    q = torch.arange(Q, device=dev)[None].expand(B, -1)
    if top_k is not None and top_k < Q:
        # Stable TopK passes: by score (ties -> lower q), then passed first; the first k.
        perm = torch.topk(key, Q, dim=1, largest=True, sorted=True)[1]
        if passed is not None:
            p2 = torch.topk(torch.gather(passed, 1, perm).to(torch.int32), top_k, dim=1, largest=True,
                            sorted=True)[1]
            perm = torch.gather(perm, 1, p2)
        else:
            perm = perm[:, :top_k]
        q = torch.topk(perm, top_k, dim=1, largest=False, sorted=True)[0]   # back to ascending q
        key, cand_s, cand_a, cand_c = (torch.gather(x, 1, q) for x in (key, cand_s, cand_a, cand_c))
        passed = None if passed is None else torch.gather(passed, 1, q)
    n = q.shape[1]
    nms_boxes = _f32(torch.gather(xyxy, 1, cand_a[..., None].expand(-1, -1, 4)))  # [B, n, 4]
    if class_agnostic or (s.ndim == 2 and idxs is None):
        classes, cls_row = torch.zeros(1, dtype=torch.int64, device=dev), torch.zeros_like(cand_c)
    elif s.ndim == 3:
        classes, cls_row = torch.arange(C, device=dev), cand_c
    else:
        classes = torch.unique(cand_c.reshape(-1))
        cls_row = cand_c
    K = classes.shape[0]
    member = cls_row[:, None, :] == classes[None, :, None]                  # [B, K, n]
    if passed is not None:
        # Dropped candidates and other classes' at -inf, under a -inf score threshold: outside NMS.
        member = member & passed[:, None, :]
        ks = torch.where(member, key[:, None, :], torch.full_like(key[:, None, :], float("-inf")))
        sel = onnx_nms(nms_boxes, ks, INT64_MAX, thr, float("-inf"))
        b, j = sel[:, 0], sel[:, 2]
    else:
        bx = torch.where(member[..., None], nms_boxes[:, None], torch.zeros_like(nms_boxes[:, None]))
        sel = onnx_nms(bx.reshape(B * K, n, 4), key[:, None, :].expand(B, K, n).reshape(B * K, 1, n),
                       INT64_MAX, thr)
        bk, j = sel[:, 0], sel[:, 2]
        ok = member.reshape(B * K, n)[bk, j]
        b, j = torch.div(bk[ok], K, rounding_mode="floor"), j[ok]
    order = _stable_order([(b, False), (key[b, j], True), (q[b, j], False)])
    b, j = b[order], j[order]
    per_image = (b[:, None] == torch.arange(B, device=dev)[None, :]).sum(0)
    start = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(b.shape[0], device=dev) - start[b]
    slot = torch.where(rank < max_det, b * max_det + rank, torch.full_like(rank, B * max_det))
    size = B * max_det + 1

    def put(values: Tensor, fill: float, width: int = 0) -> Tensor:
        shape = (size, width) if width else (size,)
        out = torch.full(shape, fill, dtype=values.dtype, device=dev)
        idx = slot[:, None].expand(-1, width) if width else slot
        out = out.scatter(0, idx, values)[:-1]
        return out.reshape((B, max_det, width) if width else (B, max_det))

    anchor = cand_a[b, j]
    out_b = put(xyxy[b, anchor], 0.0, 4)
    out_s = put(cand_s[b, j], 0.0)
    return (out_b, out_s, put(cand_c[b, j], -1), put(anchor, -1), torch.clamp(per_image, max=max_det))


# ---- probiou: elementwise operators -----------------------------------------------------------------

def probiou(b1: Tensor, b2: Tensor, eps: float, checked: tuple) -> Tensor:
    """reference/rotated.py's ``probiou`` (``_cov`` and ``probiou_pair``, the same operation
    order) on torch ops: elementwise ONNX operators. The square root is taken in float64 as
    there; ``Cos``, ``Sin``, ``Log`` and ``Exp`` are the runtime's, not libm's (docs/DEPLOY.md)."""
    w = checked[3]
    dt = getattr(torch, w)

    def c(v: float) -> Tensor:
        # A constant of the working dtype, rounded once (T(v)). Not torch.full: the dynamo
        # exporter rounds a full's fill value through float32 (eps = 1e-7 in a float64 graph).
        return torch.tensor(v, dtype=dt, device=b1.device)

    def cov(b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        A, B = (b[..., 2] * b[..., 2]) / c(12), (b[..., 3] * b[..., 3]) / c(12)
        cs, sn = torch.cos(b[..., 4]), torch.sin(b[..., 4])
        cos2, sin2 = cs * cs, sn * sn
        return A * cos2 + B * sin2, A * sin2 + B * cos2, ((A - B) * cs) * sn

    p, q = b1.to(dt), b2.to(dt)
    (a1, bb1, c1), (a2, bb2, c2) = ([x[..., :, None] for x in cov(p)], [x[..., None, :] for x in cov(q)])
    px, py = p[..., :, None, 0], p[..., :, None, 1]
    qx, qy = q[..., None, :, 0], q[..., None, :, 1]
    e, zero = c(eps), c(0)
    sa, sb, sc = a1 + a2, bb1 + bb2, c1 + c2
    dy, dx = py - qy, px - qx
    S = sa * sb - sc * sc
    t1 = ((sa * (dy * dy) + sb * (dx * dx)) / (S + e)) * c(0.25)
    t2 = (((sc * (qx - px)) * dy) / (S + e)) * c(0.5)
    d1, d2 = a1 * bb1 - c1 * c1, a2 * bb2 - c2 * c2
    d1, d2 = torch.where(d1 < zero, zero, d1), torch.where(d2 < zero, zero, d2)
    root = torch.sqrt((d1 * d2).to(torch.float64)).to(dt)
    arg = S / (c(4) * root + e) + e
    bd = (t1 + t2) + torch.log(arg) * c(0.5)
    bd = torch.where(bd < e, e, bd)
    bd = torch.where(bd > c(100), c(100), bd)
    hd = torch.sqrt(((c(1) - torch.exp(-bd)) + e).to(torch.float64)).to(dt)
    return c(1) - hd


def nms_probiou_fast(boxes: Tensor, scores: Tensor, idxs: Tensor | None, thr: float, eps: float,
                     w: str) -> Tensor:
    """``nms_probiou(fast=True)`` (Fast-NMS, reference/rotated.py): a box is dropped when any
    box before it in score order (of its class) has ``probiou(earlier, it) > thr`` (float64
    compare) -- parallel: the ``[n, n]`` ProbIoU matrix above (O(n²) memory), the same-class upper
    triangle, a column reduction. Within ``probiou``'s ONNX bound (a pair within it of the
    threshold may decide otherwise). The greedy form has no such graph."""
    dt = getattr(torch, w)
    b, s = boxes.to(dt), scores.to(dt)
    order = _stable_order([(s, True)])
    n = order.shape[0]
    bo = b[order]
    P = probiou(bo, bo, eps, ((), n, n, w))  # [i, j]: i the earlier box
    r = torch.arange(n, device=b.device)
    pair = r[None, :] > r[:, None]
    if idxs is not None:
        cls = idxs[order]
        pair = pair & (cls[None, :] == cls[:, None])
    dead = (pair & (P.to(torch.float64) > thr)).to(torch.int64).sum(0) > 0
    return order[~dead]


# ---- matrix_nms: standard operators ---------------------------------------------------------------

def matrix_nms(boxes: Tensor, scores: Tensor, labels: Tensor, kernel: str, sigma: float,
               sthr: float | None, max_output: int | None, pre_top_k: int | None,
               w: str) -> tuple[Tensor, Tensor]:
    """reference/matrix_nms.py in standard ONNX operators (it is fully parallel): a stable ``TopK``
    for the score order, the ``[n, n]`` IoU matrix (nms's arithmetic, the higher-ranked box
    first), the same-class upper triangle, the NaN-skipping column max (compensation) and min
    (decay) as ``Where`` + ``ReduceMax`` / ``ReduceMin``, the decayed scores, the float64
    threshold and the output order (two stable ``TopK``). Linear kernel: the same IEEE operations
    as the reference. Gaussian: ONNX ``Exp`` instead of ``dk_exp`` (docs/DEPLOY.md)."""
    dt = getattr(torch, w)
    b, s = boxes.to(dt), scores.to(dt)
    dev = b.device

    def c(v: float) -> Tensor:  # see probiou: not torch.full
        return torch.tensor(v, dtype=dt, device=dev)

    order = _stable_order([(s, True)])
    if pre_top_k is not None:
        order = order[:pre_top_k]
    n = order.shape[0]
    bo, ss, ll = b[order], s[order], labels[order]
    x1, y1, x2, y2 = (bo[:, k] for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    zero = c(0)
    iw = torch.maximum(zero, torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None]))
    ih = torch.maximum(zero, torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None]))
    inter = iw * ih
    iou = inter / ((area[:, None] + area[None]) - inter)  # [i, j]: i the higher-ranked box
    r = torch.arange(n, device=dev)
    pair = (r[None, :] > r[:, None]) & (ll[None, :] == ll[:, None])
    iou = torch.where(pair & ~iou.isnan(), iou, zero)
    comp = torch.amax(torch.cat([iou, zero.expand(1, n)]), 0)  # c_j = max(0, max_i iou(i, j))

    def term(x: Tensor) -> Tensor:
        return torch.exp(c(-float(sigma)) * (x * x)) if kernel == "gaussian" else c(1) - x

    wgt = term(iou) / term(comp)[:, None]
    one = c(1)
    wgt = torch.where(pair & ~wgt.isnan(), wgt, one)
    decay = torch.amin(torch.cat([wgt, one.expand(1, n)]), 0)
    dec = ss * decay
    idx = order
    if sthr is not None:
        keep = torch.nonzero(dec.to(torch.float64) >= sthr)[:, 0]
        idx, dec = idx[keep], dec[keep]
    o = _stable_order([(dec, True), (idx, False)])
    if max_output is not None:
        o = o[:max_output]
    return idx[o], dec[o]


# ---- the TorchScript-based exporter: symbolics -------------------------------------------------------

def _register_symbolics() -> None:
    from torch.onnx import register_custom_op_symbolic, symbolic_helper
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "i", "f", "v")
    def nms_sym(g, boxes, scores, max_out, thr, sthr):
        args = [boxes, scores, g.op("Constant", value_t=torch.tensor([max_out], dtype=torch.int64)),
                g.op("Constant", value_t=torch.tensor([thr], dtype=torch.float32))]
        if not symbolic_helper._is_none(sthr):
            args.append(g.op("Cast", g.op("Reshape", sthr, _consts(g, [1])[0]), to_i=1))  # FLOAT
        return g.op("NonMaxSuppression", *args)

    def rois_split(g, rois):
        idx = g.op("Squeeze", g.op("Slice", rois, *_consts(g, [0], [1], [1])), _consts(g, [1])[0])
        return g.op("Slice", rois, *_consts(g, [1], [5], [1])), g.op("Cast", idx, to_i=7)  # INT64

    @parse_args("v", "v", "f", "i", "i", "i", "b")
    def roi_align_sym(g, input, rois, ss, ph, pw, sr, aligned):
        coords, idx = rois_split(g, rois)
        return g.op("RoiAlign", input, coords, idx, spatial_scale_f=ss, output_height_i=ph,
                    output_width_i=pw, sampling_ratio_i=max(sr, 0),
                    coordinate_transformation_mode_s="half_pixel" if aligned else "output_half_pixel")

    @parse_args("v", "v", "f", "i", "i")
    def roi_pool_sym(g, input, rois, ss, ph, pw):
        y = g.op("MaxRoiPool", input, rois, pooled_shape_i=[ph, pw], spatial_scale_f=ss)
        return y, _minus_ones_like(g, y)

    @parse_args("v", "v", "f", "i", "i", "i")
    def ps_roi_align_sym(g, input, rois, ss, ph, pw, sr):
        return g.op(f"{DOMAIN}::PSRoIAlign", input, rois, spatial_scale_f=ss, pooled_height_i=ph,
                    pooled_width_i=pw, sampling_ratio_i=sr, outputs=2)

    @parse_args("v", "v", "f", "i", "i")
    def ps_roi_pool_sym(g, input, rois, ss, ph, pw):
        return g.op(f"{DOMAIN}::PSRoIPool", input, rois, spatial_scale_f=ss, pooled_height_i=ph,
                    pooled_width_i=pw, outputs=2)

    register_custom_op_symbolic("detkernels::onnx_nms", nms_sym, 11)
    for name, fn in (("roi_align", roi_align_sym), ("roi_pool", roi_pool_sym),
                     ("ps_roi_align", ps_roi_align_sym), ("ps_roi_pool", ps_roi_pool_sym)):
        register_custom_op_symbolic(f"detkernels::{name}", fn, ROI_OPSET)


def _consts(g: Any, *lists: list[int]) -> list[Any]:
    return [g.op("Constant", value_t=torch.tensor(v, dtype=torch.int64)) for v in lists]


def _minus_ones_like(g: Any, y: Any) -> Any:
    return g.op("ConstantOfShape", g.op("Shape", y), value_t=torch.tensor([-1], dtype=torch.int32))


# ---- the dynamo exporter: onnxscript translations ----------------------------------------------------

def _register_translations() -> None:
    import onnx
    import onnxscript
    from onnxscript.function_libs.torch_lib.registration import torch_op
    from onnxscript.onnx_opset import opset18 as op

    dk_ps_align, dk_ps_pool = (onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), name, _ps_schema(name))
                               for name in ("PSRoIAlign", "PSRoIPool"))

    @torch_op("detkernels::onnx_nms", trace_only=True)
    def nms_tr(boxes, scores, max_output_boxes_per_class: int, iou_threshold: float,
               score_threshold: float | None = None):
        if score_threshold is None:
            return op.NonMaxSuppression(boxes, scores, max_output_boxes_per_class, iou_threshold)
        return op.NonMaxSuppression(boxes, scores, max_output_boxes_per_class, iou_threshold,
                                    score_threshold)

    def rois_split(rois):
        idx = op.Cast(op.Squeeze(op.Slice(rois, [0], [1], [1]), [1]), to=onnx.TensorProto.INT64)
        return op.Slice(rois, [1], [5], [1]), idx

    @torch_op("detkernels::roi_align", trace_only=True)
    def roi_align_tr(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                     sampling_ratio: int, aligned: bool):
        coords, idx = rois_split(rois)
        return op.RoiAlign(input, coords, idx, spatial_scale=spatial_scale, output_height=pooled_height,
                           output_width=pooled_width, sampling_ratio=max(sampling_ratio, 0),
                           coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")

    @torch_op("detkernels::roi_pool", trace_only=True)
    def roi_pool_tr(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        y = op.MaxRoiPool(input, rois, pooled_shape=(pooled_height, pooled_width), spatial_scale=spatial_scale)
        return y, op.ConstantOfShape(op.Shape(y), value=onnx.helper.make_tensor("v", onnx.TensorProto.INT32, [1], [-1]))

    @torch_op("detkernels::ps_roi_align", trace_only=True)
    def ps_roi_align_tr(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int,
                        sampling_ratio: int):
        return dk_ps_align(input, rois, spatial_scale=spatial_scale, pooled_height=pooled_height,
                             pooled_width=pooled_width, sampling_ratio=sampling_ratio, _num_outputs=2)

    @torch_op("detkernels::ps_roi_pool", trace_only=True)
    def ps_roi_pool_tr(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        return dk_ps_pool(input, rois, spatial_scale=spatial_scale, pooled_height=pooled_height,
                            pooled_width=pooled_width, _num_outputs=2)


def _ps_schema(name: str) -> Any:
    """The ONNX schema of the custom-domain ps nodes (for onnxscript; not registered with onnx)."""
    from onnx.defs import OpSchema

    attrs = [OpSchema.Attribute("spatial_scale", OpSchema.AttrType.FLOAT, ""),
             OpSchema.Attribute("pooled_height", OpSchema.AttrType.INT, ""),
             OpSchema.Attribute("pooled_width", OpSchema.AttrType.INT, "")]
    if name == "PSRoIAlign":
        attrs.append(OpSchema.Attribute("sampling_ratio", OpSchema.AttrType.INT, ""))
    return OpSchema(name, DOMAIN, 1,
                    inputs=[OpSchema.FormalParameter("input", "T"), OpSchema.FormalParameter("rois", "T")],
                    outputs=[OpSchema.FormalParameter("output", "T"),
                             OpSchema.FormalParameter("channel_mapping", "tensor(int32)")],
                    type_constraints=[("T", ["tensor(float16)", "tensor(bfloat16)", "tensor(float)",
                                             "tensor(double)"], "")],
                    attributes=attrs)


# ---- registration on import --------------------------------------------------------------------------

class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``fn`` right after module ``name`` has been imported (once)."""

    def __init__(self, name: str, fn: Callable[[], None]) -> None:
        self.name, self.fn = name, fn

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module, fn = loader.exec_module, self.fn

        def exec_then(module: Any) -> None:
            exec_module(module)
            fn()

        loader.exec_module = exec_then
        return spec


def _when_imported(name: str, fn: Callable[[], None]) -> None:
    if name in sys.modules:
        fn()
    else:
        sys.meta_path.insert(0, _AfterImport(name, fn))


_register_symbolics()
# The translations need onnxscript's torch_lib registry, created at the end of its own import.
_when_imported("onnxscript", _register_translations)
