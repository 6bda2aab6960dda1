"""torchvision RetinaNet / FCOS ``postprocess_detections`` through the fused ``detkernels.detect``,
bit-identical to torchvision's own (torchvision 0.2x; tested on retinanet_resnet50_fpn and
fcos_resnet50_fpn with random weights), and ``patch_detection_postprocess``, which installs them on
the two classes.

torchvision, per image and per FPN level: ``score > score_thresh`` over the flattened
(anchor, class) scores, ``topk(topk_candidates)``, box decoding of the chosen anchors, clipping;
then per image ``batched_nms`` over all levels and the first ``detections_per_img``. Here:

* Scores: ``sigmoid(logits)`` (FCOS: ``sqrt(sigmoid(logits) * sigmoid(ctrness))``) is computed per
  image and level exactly as torchvision calls it -- torch's vectorised sigmoid rounds the tail of
  each call differently from its body, so one batched call would change last bits.
* Threshold and top-k: one ``detect`` per (image, level) on those scores in place (multi-label,
  threshold rounded to the scores' dtype as torch's ``>`` does, ``iou_threshold=1.0``: a detect
  IoU never exceeds 1, so it only selects). Its order is (score desc, candidate index asc); ``torch.topk``'s order of tied
  scores is unspecified, so where the chosen scores (and the first one left out) are not all
  distinct, that (image, level) takes torchvision's own threshold/topk lines instead.
* Decoding and clipping: torchvision's ``box_coder`` and ``clip_boxes_to_image`` on the same
  anchors in the same order (element-for-element the same calls).
* NMS: ``detect`` per image with torchvision's ``batched_nms`` rules: up to 1 000 boxes on the CPU
  (4 000 coordinates; 100 000 elsewhere) the coordinate-offset trick -- the same offset boxes
  (``class * (max coordinate + 1)``, the same float additions) through one class-agnostic NMS --
  above it exact per-class NMS, ordered by torchvision's own (unstable) sort of the kept scores.

On a device detect does not serve yet (CUDA), the functions call torchvision's own method.

What it does not change: torchvision's per-image Python loop around the levels stays (the decode
and the sigmoid calls must be torchvision's); the gain is the fused threshold / top-k / NMS.
"""
from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable

import torch
from torch import Tensor

from .. import _registry
from ..api.detect import detect

__all__ = ["retinanet_postprocess_detections", "fcos_postprocess_detections",
           "patch_detection_postprocess", "batched_nms_like_torchvision"]


def batched_nms_like_torchvision(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms`` (0.2x) through ``detect``: the same indices, same order."""
    n = boxes.shape[0]
    if n == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000):
        # torchvision: exact per-class NMS, the kept indices ascending, then its unstable sort.
        r = detect(boxes[None], scores[None], iou_threshold, n, idxs=idxs[None])
        keep = torch.sort(r.indices[0, :int(r.counts[0])])[0]
        return keep[scores[keep].sort(descending=True)[1]]
    # The coordinate trick, with torchvision's own offset arithmetic, then one NMS.
    offsets = idxs.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    r = detect((boxes + offsets[:, None])[None], scores[None], iou_threshold, n)
    return r.indices[0, :int(r.counts[0])]


def _distinct(s: Tensor) -> bool:
    return bool((s[1:] != s[:-1]).all()) if s.numel() > 1 else True


def _postprocess(self: Any, class_logits: list[Tensor], box_regression: list[Tensor], anchors: list[list[Tensor]],
                 image_shapes: list[tuple[int, int]], score_fn: Callable[[int, int], Tensor],
                 decode: Callable[[Tensor, Tensor], Tensor]) -> list[dict[str, Tensor]]:
    from torchvision.ops import boxes as box_ops

    B, k = len(image_shapes), int(self.topk_candidates)
    per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(B)]
    for lvl in range(len(class_logits)):
        scores = [score_fn(i, lvl) for i in range(B)]  # [HWA, C] each, torchvision's own calls
        for i in range(B):
            HWA, C = scores[i].shape
            k1 = max(1, min(k + 1, HWA * C))  # one past top-k: sees a tie at the cut
            thr = float(torch.tensor(float(self.score_thresh), dtype=scores[i].dtype))  # torch's '>' rounds it
            # One image per call: its scores are read in place (a batched call would copy them).
            r = detect(scores[i].new_zeros(()).expand(1, HWA, 4), scores[i][None], 1.0, k1,
                       score_threshold=thr, pre_nms_top_k=k1, multi_label=True)
            count = int(r.counts[0])
            n = min(count, k)
            if _distinct(r.scores[0, :min(count, k + 1)]):
                sc, anchor_idxs, labels = r.scores[0, :n], r.indices[0, :n], r.classes[0, :n]
            else:  # tied scores: torch.topk's tie order is torchvision's, so take its lines
                flat = scores[i].flatten()
                keep = flat > self.score_thresh
                sc, topk_idxs = flat[keep], torch.where(keep)[0]
                sc, idx = sc.topk(min(k, topk_idxs.shape[0]))
                topk_idxs = topk_idxs[idx]
                anchor_idxs, labels = torch.div(topk_idxs, C, rounding_mode="floor"), topk_idxs % C
            bx = decode(box_regression[lvl][i][anchor_idxs], anchors[i][lvl][anchor_idxs])
            per_image[i].append((box_ops.clip_boxes_to_image(bx, image_shapes[i]), sc, labels))
    detections = []
    for i in range(B):
        boxes, sc, labels = (torch.cat([x[j] for x in per_image[i]]) for j in range(3))
        keep = batched_nms_like_torchvision(boxes, sc, labels, self.nms_thresh)[: self.detections_per_img]
        detections.append({"boxes": boxes[keep], "scores": sc[keep], "labels": labels[keep]})
    return detections


_SAVED: dict[str, Any] = {}  # class name -> torchvision's own method, while patched
_MODULES = {"RetinaNet": "torchvision.models.detection.retinanet", "FCOS": "torchvision.models.detection.fcos"}


def _torchvision_method(cls: str) -> Any:
    return _SAVED.get(cls) or getattr(importlib.import_module(_MODULES[cls]), cls).__dict__["postprocess_detections"]


def _served(head_outputs: dict[str, list[Tensor]]) -> bool:
    """A detect backend runs on the head's device and dtype (today: the CPU)."""
    t = head_outputs["cls_logits"][0]
    try:
        _registry.select("detect", str(t.device), "float64" if t.dtype == torch.float64 else "float32")
    except RuntimeError:
        return False
    return True


def retinanet_postprocess_detections(self: Any, head_outputs: dict[str, list[Tensor]],
                                     anchors: list[list[Tensor]],
                                     image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """``RetinaNet.postprocess_detections`` (same arguments, same detections, bit for bit; on a
    device detect does not serve, torchvision's own)."""
    if not _served(head_outputs):
        return _torchvision_method("RetinaNet")(self, head_outputs, anchors, image_shapes)
    cl = head_outputs["cls_logits"]
    return _postprocess(self, cl, head_outputs["bbox_regression"], anchors, image_shapes,
                        lambda i, lvl: torch.sigmoid(cl[lvl][i]), self.box_coder.decode_single)


def fcos_postprocess_detections(self: Any, head_outputs: dict[str, list[Tensor]], anchors: list[list[Tensor]],
                                image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
    """``FCOS.postprocess_detections`` (same arguments, same detections, bit for bit; on a device
    detect does not serve, torchvision's own)."""
    if not _served(head_outputs):
        return _torchvision_method("FCOS")(self, head_outputs, anchors, image_shapes)
    cl, ct = head_outputs["cls_logits"], head_outputs["bbox_ctrness"]
    return _postprocess(self, cl, head_outputs["bbox_regression"], anchors, image_shapes,
                        lambda i, lvl: torch.sqrt(torch.sigmoid(cl[lvl][i]) * torch.sigmoid(ct[lvl][i])),
                        self.box_coder.decode)


class patch_detection_postprocess(contextlib.AbstractContextManager):
    """Install the two functions above as ``RetinaNet.postprocess_detections`` and
    ``FCOS.postprocess_detections`` (every instance, existing ones too). Patches at construction;
    as a context manager restores on exit; ``.restore()`` undoes a global patch."""

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []
        for name, fn in (("RetinaNet", retinanet_postprocess_detections), ("FCOS", fcos_postprocess_detections)):
            c = getattr(importlib.import_module(_MODULES[name]), name)
            self._saved.append((c, name, c.__dict__["postprocess_detections"]))
            _SAVED.setdefault(name, c.__dict__["postprocess_detections"])
            c.postprocess_detections = fn

    def restore(self) -> None:
        """Put torchvision's own methods back."""
        for c, name, fn in reversed(self._saved):
            c.postprocess_detections = fn
            if c.__dict__["postprocess_detections"] is _SAVED.get(name):
                del _SAVED[name]
        self._saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self.restore()
