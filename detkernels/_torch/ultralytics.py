"""ultralytics' ``non_max_suppression`` (ultralytics 8.4, ``ultralytics.utils.nms``) through the
fused ``detkernels.detect``: same signature and defaults, same list of ``[n, 6 + extra]`` rows
(xyxy, conf, cls, extra columns; OBB with ``rotated=True``: xywh, conf, cls, extra, angle), same
kept rows in the same order; and ``patch_ultralytics``,
which makes ultralytics' predictors and validators call it.

How ultralytics' per-image loop maps onto two batched ``detect`` calls (no loop over images,
except the rare ``max_nms`` overflow below):

1. Candidates: ``detect(boxes cxcywh, class scores, iou_threshold=1.0, per class)``. A
   ``detect`` IoU never exceeds 1 (the intersection is at most the union under rounding too), so
   this NMS suppresses nothing: it only thresholds, takes each anchor's best class (torch.max's
   index: lowest class on ties) or every (anchor, class) pair (``multi_label``), and orders the
   candidates by descending score, ties by ascending candidate index -- the order torchvision's
   ``nms`` (a stable sort) gives ultralytics' candidates, which are in candidate-index order.
2. Class-offset NMS: the candidates' xyxy boxes plus ``class * max_wh`` -- the same float
   additions ultralytics makes, so the same IoU roundings (the offset quantises coordinates: at
   class 79 and ``max_wh = 7680`` a float32 coordinate near 606 720 has a 1/16 px step, and boxes
   wider than ``max_wh`` overlap other classes' boxes) -- through ``detect`` class-agnostic with
   ``iou_thres``, ``max_det``. Its IoU and ``>`` rule are torchvision ``nms``'s (docs/SPEC.md §1).

``rotated=True`` (OBB heads: ``[B, 4 + nc + extra, A]``, xywh boxes, the angle in radians the last
extra channel): stage 1 as above (only its scores, classes and anchors are used), then per image
(a Python loop, as ultralytics') ``detkernels.nms_probiou(fast=True)`` -- ultralytics'
``TorchNMS.fast_nms(..., iou_func=batch_probiou)`` rule without its N x N matrix -- on the boxes
ultralytics builds, ``(xy + class * max_wh, wh, last column)`` in the prediction's dtype, with
``iou_thres`` rounded to that dtype (ultralytics compares its ProbIoU tensor with it). Rows are
``(x, y, w, h, conf, cls, extra..., angle)``, the boxes not converted. fast_nms orders its input by
an unstable ``argsort(descending=True)``: with tied scores in an image its order is reproduced by
running that sort on the same scores in ultralytics' order (candidate order, or the ``max_nms``
cap's), which ``nms_probiou``'s stable sort then keeps. Where results can still differ: a ProbIoU
within a few ulp of ``iou_thres`` -- ultralytics' ``batch_probiou`` runs torch's exp/log/cos/sin
(SLEEF), detkernels libm's (docs/SPEC.md §8); a float32 pair whose two values straddle the
threshold is pinned in tests/torch_integration/test_ultralytics.py. (A different torch sort
algorithm, e.g. on another device, would also change the tie order; only the CPU is served.)

ultralytics' own rules kept exactly: ``conf > conf_thres`` compared in the prediction's dtype (torch
rounds the Python threshold to float32 first; ``detect`` compares in float64, so the threshold is
passed rounded); an anchor whose class scores hold a NaN is dropped, also with ``multi_label``
(ultralytics filters anchors by the NaN-propagating ``amax``); ``classes`` filters after the best
class is chosen; ``multi_label`` only when ``nc > 1``; ``max_nms``: above it ultralytics keeps
``argsort(descending=True)[:max_nms]``, an unstable torch sort: where the first ``max_nms + 1``
scores are distinct any sort agrees with stage 1; otherwise its tie order is reproduced by running
that same sort on the same scores (for those images only, in a Python loop); empty images
get ultralytics' ``zeros((0, 6 + extra))`` float32 rows and ``zeros((0, 1))`` float32 indices;
``end2end`` (or a last dimension of 6) is ultralytics' own confidence/class filter (no NMS there).

Not reproduced:

* ``max_time_img``: accepted and ignored. ultralytics stops its loop (and returns empty rows for the
  remaining images) once ``2 + max_time_img * B`` seconds have passed; the batched call never
  stops early.
* float16/bfloat16 predictions (ultralytics thresholds, converts and offsets in half precision,
  where ``class * 7680`` overflows above class 8) and devices detect (or, rotated, nms_probiou)
  does not serve yet (CUDA): ``NotImplementedError`` (``Unsupported``). ``patch_ultralytics`` hands
  those calls to ultralytics' own function.
* Invalid ``conf_thres`` / ``iou_thres`` raise ``ValueError`` (ultralytics: ``AssertionError``).
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any

import torch
from torch import Tensor

from .. import _registry
from ..api.detect import detect
from ..api.rotated import nms_probiou

__all__ = ["non_max_suppression", "patch_ultralytics", "Unsupported"]


class Unsupported(NotImplementedError):
    """An argument value whose ultralytics semantics the drop-in does not reproduce."""


def _f(v: float, dtype: torch.dtype) -> float:
    # torch compares a tensor with a Python float in the tensor's dtype: the threshold rounded to it.
    return float(torch.tensor(float(v), dtype=dtype))


def _served(t: Tensor, ops: tuple[str, ...] = ("detect",)) -> bool:
    """A backend of each of ``ops`` runs on ``t``'s device (today: the CPU)."""
    try:
        for op in ops:
            _registry.select(op, str(t.device), "float64" if t.dtype == torch.float64 else "float32")
    except RuntimeError:
        return False
    return True


def _end2end(prediction: Tensor, conf_thres: float, classes: Tensor | None, max_det: int,
             return_idxs: bool) -> Any:
    """ultralytics' end-to-end branch (outputs already NMS-free): confidence and class filter."""
    output, keepi = [], []
    for pred in prediction:
        mask = pred[:, 4] > conf_thres
        if classes is not None:
            mask &= (pred[:, 5:6] == classes).any(1)
        idx = mask.nonzero(as_tuple=False).view(-1)[:max_det]
        output.append(pred[idx].float())
        keepi.append(idx)
    return (output, keepi) if return_idxs else output


def _torch_cap(pi: Tensor, nc: int, thr: float, multi: bool, classes: Tensor | None,
               max_nms: int) -> tuple[Tensor, Tensor, Tensor]:
    """One image's first ``max_nms`` candidates as ultralytics picks them (``pi``: its
    ``[4 + nc + extra, A]`` prediction): its candidates (conf, class, anchor) in candidate-index
    order, then its unstable ``argsort(descending=True)[:max_nms]`` on their scores. Used for
    images above ``max_nms`` with tied scores only, whose cap must run that sort on exactly these
    scores in this order."""
    cls = pi[4:4 + nc]  # [nc, A]: each class's scores contiguous
    if not multi and classes is None:
        # ultralytics' conf is cls.max(1)'s value, which for a NaN-free row is its amax; a NaN
        # row (amax NaN) fails the threshold, as by ultralytics' amax filter. Reduced along the
        # contiguous anchor rows (the [A, nc] view's max(1) was ~3.9 ms an image, this ~0.7),
        # and the class (torch.max's first maximal index, as ultralytics') of the kept ones only.
        conf = cls.amax(0)
        anchor = torch.nonzero(conf > thr)[:, 0]
        conf = conf[anchor]
        o = conf.argsort(descending=True)[:max_nms]
        anchor = anchor[o]
        return conf[o], cls[:, anchor].max(0).indices, anchor
    x = cls.t()  # [A, nc]
    if multi:
        anchor = torch.nonzero(x.amax(1) > thr)[:, 0]  # NaN rows out
        i, j = torch.where(x[anchor] > thr)
        conf, anchor = x[anchor[i], j], anchor[i]
    else:  # a NaN row's max is NaN: out, as by ultralytics' amax filter
        conf, j = x.max(1)
        anchor = torch.nonzero(conf > thr)[:, 0]
        conf, j = conf[anchor], j[anchor]
    if classes is not None:
        keep = (j[:, None].to(pi.dtype) == classes).any(1)
        conf, j, anchor = conf[keep], j[keep], anchor[keep]
    o = conf.argsort(descending=True)[:max_nms]  # ultralytics' cap, its tie order too
    return conf[o], j[o], anchor[o]


def non_max_suppression(prediction: Any, conf_thres: float = 0.25, iou_thres: float = 0.45,
                        classes: Any = None, agnostic: bool = False, multi_label: bool = False,
                        max_det: int = 300, nc: int = 0, max_time_img: float = 0.05,
                        max_nms: int = 30000, max_wh: int = 7680, rotated: bool = False,
                        end2end: bool = False, return_idxs: bool = False) -> Any:
    """ultralytics' ``non_max_suppression`` (8.4) through ``detkernels.detect``: the same rows.

    Args:
        prediction: ``[B, 4 + nc + extra, A]`` (cxcywh boxes, class scores, extra columns such as
            mask coefficients; with ``rotated`` the angle in radians last), or a list/tuple whose
            first element is; ``[B, N, 6 + extra]`` with ``end2end``.
        conf_thres: keep ``conf > conf_thres`` (compared in the prediction's dtype), in [0, 1].
        iou_thres: suppress IoU > iou_thres, in [0, 1].
        classes: class ids to keep (after each anchor's best class is chosen), or None.
        agnostic: one NMS over all classes.
        multi_label: every (anchor, class) with ``conf > conf_thres`` (when ``nc > 1``).
        max_det: rows per image.
        nc: number of classes (0: ``prediction.shape[1] - 4``, no extra columns).
        max_time_img: ignored (the batched call has no per-image time limit).
        max_nms: candidates per image entering NMS (ultralytics' sort, ties included).
        max_wh: per-class coordinate offset of the class-aware NMS.
        rotated: OBB: ProbIoU Fast-NMS (``nms_probiou(fast=True)``) on xywhr boxes; identical
            rows except where a ProbIoU is within a few ulp of ``iou_thres`` (module docstring).
        end2end: ultralytics' NMS-free branch.
        return_idxs: also return, per image, the kept anchors' indices.

    Returns:
        A list of ``[n, 6 + extra]`` tensors ``(x1, y1, x2, y2, conf, cls, extra...)`` (rotated:
        ``(x, y, w, h, conf, cls, extra..., angle)``), one per image (and the list of anchor
        indices with ``return_idxs``), as ultralytics returns them.

    Raises:
        ValueError: ``conf_thres`` or ``iou_thres`` outside [0, 1].
        Unsupported (a NotImplementedError): float16/bfloat16 predictions; a device with no detect
            (rotated: or nms_probiou) backend.
    """
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if not 0 <= iou_thres <= 1:
        raise ValueError(f"iou_thres must be in [0, 1], got {iou_thres}")
    if isinstance(prediction, (list, tuple)):  # validation mode: (inference output, loss output)
        prediction = prediction[0]
    cls_t = None if classes is None else torch.tensor(classes, device=prediction.device)
    if prediction.shape[-1] == 6 or end2end:
        return _end2end(prediction, conf_thres, cls_t, max_det, return_idxs)
    if prediction.dtype not in (torch.float32, torch.float64):
        raise Unsupported(f"{prediction.dtype} predictions: ultralytics computes thresholds, boxes and "
                          "class offsets in that dtype, detkernels in float32; pass prediction.float()")
    if not (_served(prediction, ("detect", "nms_probiou")) if rotated else _served(prediction)):
        raise Unsupported(f"detkernels.{'detect/nms_probiou' if rotated else 'detect'} has no backend on "
                          f"{prediction.device} yet")
    dt, dev = prediction.dtype, prediction.device
    B, F, A = prediction.shape
    nc = nc or (F - 4)
    multi = bool(multi_label) and nc > 1
    thr = _f(conf_thres, dt)
    p = prediction.transpose(1, 2)  # [B, A, 4 + nc + extra]
    boxes, scores = p[..., :4], p[..., 4:4 + nc]
    objectness, idxs = None, None
    if cls_t is not None:
        if multi:  # the other classes' pairs never pass: scores -inf there
            allowed = torch.isin(torch.arange(nc, device=dev), cls_t.to(torch.int64))
            scores = torch.where(allowed, scores, torch.tensor(float("-inf"), dtype=dt, device=dev))
        else:  # the best class over all classes first, then the filter (ultralytics' order)
            conf, j = scores.max(-1)
            ok = (j[..., None].to(dt) == cls_t).any(-1)
            scores, idxs = torch.where(ok, conf, torch.tensor(float("-inf"), dtype=dt, device=dev)), j
    if multi:  # ultralytics drops anchors whose amax is NaN: objectness NaN there (s * 1 == s)
        objectness = torch.where(p[..., 4:4 + nc].isnan().any(-1), float("nan"), 1.0).to(dt)
    total = A * (nc if multi else 1)
    k1 = max(1, min(max_nms + 1, total))  # one more than max_nms: sees which images overflow
    r1 = detect(boxes, scores, 1.0, k1, score_threshold=thr, pre_nms_top_k=k1, fmt="cxcywh",
                objectness=objectness, multi_label=multi, idxs=idxs)
    b1, s1, c1, a1, n1 = r1
    width = int(n1.max()) if n1.numel() else 0  # (one host sync: the rows are a list anyway)
    if width > max_nms:
        # Above max_nms (then k1 = max_nms + 1, every slot live): with distinct scores in the
        # first max_nms + 1 slots any sort gives the same first max_nms in the same order, so
        # stage 1's stable order is ultralytics'. With a tie there, its unstable argsort decides.
        tied = (s1[:, 1:] == s1[:, :-1]).any(1)
        for i in torch.nonzero((n1 > max_nms) & tied)[:, 0].tolist():
            ss, cc, aa = _torch_cap(prediction[i], nc, thr, multi, cls_t, max_nms)
            m = aa.numel()
            xywh = p[i, aa, :4]
            wh = xywh[:, 2:] / 2  # ultralytics' xywh2xyxy (detect's cxcywh rule)
            b1[i, :m] = torch.cat([xywh[:, :2] - wh, xywh[:, :2] + wh], 1).to(b1.dtype)
            s1[i, :m], c1[i, :m], a1[i, :m] = ss, cc, aa
    if rotated:
        return _rotated(p, nc, multi, s1, c1, a1, n1, max_nms, iou_thres, agnostic, max_det, max_wh,
                        return_idxs)
    w2 = max(1, min(width, max_nms))  # stage 2 sees the live slots only
    b1, s1, c1, a1 = b1[:, :w2], s1[:, :w2], c1[:, :w2], a1[:, :w2]
    slot = torch.arange(w2, device=dev)
    live = slot[None, :] < torch.clamp(n1, max=max_nms)[:, None]
    s2 = torch.where(live, s1, torch.tensor(float("-inf"), dtype=s1.dtype, device=dev))
    off = c1.to(dt) * (0 if agnostic else max_wh)  # ultralytics' x[:, 5:6] * max_wh, in its dtype
    r2 = detect(b1 + off[..., None], s2, float(iou_thres), max(1, int(max_det)), score_threshold=thr)
    n2 = torch.clamp(r2.counts, max=max(0, int(max_det)))
    q = torch.clamp(r2.indices, min=0)  # kept slots (padding read as slot 0, then cut)
    rows = torch.arange(B, device=dev)[:, None]
    anchor = a1.gather(1, q)
    out = torch.cat([b1.gather(1, q[..., None].expand(-1, -1, 4)).to(dt), s1.gather(1, q)[..., None].to(dt),
                     c1.gather(1, q)[..., None].to(dt), p[rows, torch.clamp(anchor, min=0), 4 + nc:]], -1)
    output = [torch.zeros((0, 6 + F - 4 - nc), device=dev)] * B
    keepi = [torch.zeros((0, 1), device=dev)] * B
    for i, (reached, n) in enumerate(zip((n1 > 0).tolist(), n2.tolist())):
        if reached:  # ultralytics' empty-image defaults otherwise
            output[i], keepi[i] = out[i, :n], anchor[i, :n]
    return (output, keepi) if return_idxs else output


def _rotated(p: Tensor, nc: int, multi: bool, s1: Tensor, c1: Tensor, a1: Tensor, n1: Tensor,
             max_nms: int, iou_thres: float, agnostic: bool, max_det: int, max_wh: int,
             return_idxs: bool) -> Any:
    """ultralytics' OBB branch on stage 1's candidates, one ``nms_probiou(fast=True)`` per image:
    rows ``(x, y, w, h, conf, cls, extra...)`` with the raw xywh boxes, the NMS on
    ``(xy + cls * max_wh, wh, last column)`` in the prediction's dtype (``p``: ``[B, A, F]``)."""
    dt, dev = p.dtype, p.device
    B, F = p.shape[0], p.shape[2]
    thr = _f(iou_thres, dt)  # ultralytics compares its ProbIoU matrix (dtype dt) with the threshold
    output = [torch.zeros((0, 6 + F - 4 - nc), device=dev)] * B
    keepi = [torch.zeros((0, 1), device=dev)] * B
    for i, n in enumerate(n1.tolist()):
        if n == 0:  # ultralytics' empty-image defaults
            continue
        capped, n = n > max_nms, min(n, max_nms)
        s, c, a = s1[i, :n].to(dt), c1[i, :n], a1[i, :n]
        x = p[i, a]
        rows = torch.cat([x[:, :4], s[:, None], c[:, None].to(dt), x[:, 4 + nc:]], 1)
        if n > 1 and bool((s[1:] == s[:-1]).any()):
            # Tied scores: fast_nms's argsort(descending=True) is unstable, and its tie order
            # depends on its input order -- candidate order (anchor, then class), or above max_nms
            # the cap's order (stage 1's slots then hold it). The same sort on the same scores in
            # that order gives the same order; nms_probiou's stable sort then keeps it.
            if not capped:
                o = (a * nc + c if multi else a).argsort()
                rows, a = rows[o], a[o]
            o = rows[:, 4].argsort(descending=True)
            rows, a = rows[o], a[o]
        off = rows[:, 5:6] * (0 if agnostic else max_wh)  # ultralytics' x[:, 5:6] * max_wh, in dt
        boxes = torch.cat([rows[:, :2] + off, rows[:, 2:4], rows[:, -1:]], 1)  # its xywhr
        k = nms_probiou(boxes, rows[:, 4].contiguous(), thr, fast=True)[:max_det]
        output[i], keepi[i] = rows[k], a[k]
    return (output, keepi) if return_idxs else output


class patch_ultralytics(contextlib.AbstractContextManager):
    """Make ultralytics call ``non_max_suppression`` above (its predictors and validators look it
    up as ``ultralytics.utils.nms.non_max_suppression`` at each call). Patches at construction;
    as a context manager restores on exit; ``.restore()`` undoes a global patch. Calls the drop-in
    does not reproduce (``Unsupported``: half-precision predictions, CUDA) go to
    ultralytics' own function."""

    def __init__(self) -> None:
        self._mod = importlib.import_module("ultralytics.utils.nms")
        self._saved = original = self._mod.non_max_suppression

        def patched(*args: Any, **kwargs: Any) -> Any:
            try:
                return non_max_suppression(*args, **kwargs)
            except Unsupported:
                return original(*args, **kwargs)

        patched.__wrapped__ = non_max_suppression  # type: ignore[attr-defined]
        self._mod.non_max_suppression = patched

    def restore(self) -> None:
        """Put ultralytics' own function back."""
        if self._saved is not None:
            self._mod.non_max_suppression = self._saved
            self._saved = None

    def __exit__(self, *exc: Any) -> None:
        self.restore()
