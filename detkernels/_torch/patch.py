"""``patch_torchvision``: route torchvision.ops (and the places its modules and detection models
look the ops up) to detkernels' public functions and modules."""
from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any

from .. import _registry
from .._checks import ROTATED
from ..api import boxes as _boxes
from ..api import nms as _nms
from ..api import roi as _roi
from ..api import roi_modules as _modules
from .common import traced


def torchvision_batched_nms(boxes: Any, scores: Any, idxs: Any, iou_threshold: float) -> Any:
    """``torchvision.ops.batched_nms`` as ``patch_torchvision`` installs it: detkernels' exact
    per-class kept set, in the order torchvision returns it, so a swapped-in model is bit-identical
    (its RoI sampler draws proposals by position; SSD keeps the first ``detections_per_img``).

    torchvision has two paths. At most 1 000 boxes on the CPU (25 000 elsewhere), or while jit
    tracing, the coordinate-offset trick: its order is ``nms``'s, descending score with ties by
    ascending index -- detkernels' own order. Above, one ``nms`` per class and then
    ``keep[scores[keep].sort(descending=True)[1]]`` over the kept indices in ascending order, whose
    tie order is whatever torch's (unstable) sort gives: reproduced by running that same sort on the
    same values. The kept set stays exact per class (no offset trick, docs/SPEC.md §1.2)."""
    keep = _nms.batched_nms(boxes, scores, idxs, iou_threshold)
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(boxes, torch.Tensor):
        return keep
    if torch._C._get_tracing_state():
        return keep  # torchvision takes the coordinate trick while jit tracing: detkernels' order
    limit = 4000 if boxes.device.type == "cpu" else 100_000
    if traced(boxes, scores, idxs) and not isinstance(boxes.shape[0], int):
        # torch.export / torch.compile with a symbolic box count (data-dependent after the detection
        # models' thresholds): a Python `if` on it stops export. Both orders, chosen in the graph.
        big = torch.scalar_tensor(boxes.shape[0], dtype=torch.int64, device=keep.device) * 4 > limit
        asc = keep.sort()[0]  # the kept indices ascending: torchvision's keep_mask, same length as keep
        return torch.where(big, asc[scores[asc].sort(descending=True)[1]], keep)
    if boxes.numel() > limit:
        mask = torch.zeros_like(scores, dtype=torch.bool)
        mask[keep] = True
        keep = torch.where(mask)[0]  # ascending, as torchvision's keep_mask gives them
        keep = keep[scores[keep].sort(descending=True)[1]]
    return keep


_TV_BOX_IOU: Any = None  # torchvision's own box_iou, captured by the first patch


def torchvision_box_iou(boxes1: Any, boxes2: Any, fmt: str = "xyxy") -> Any:
    """``torchvision.ops.box_iou`` as ``patch_torchvision`` installs it: detkernels' ``box_iou``,
    except rotated formats on a device that no detkernels backend serves for them (CUDA today):
    those go to torchvision's own function, so the patch never takes a working path away."""
    torch = sys.modules.get("torch")
    if fmt in ROTATED and _TV_BOX_IOU is not None and torch is not None and isinstance(boxes1, torch.Tensor):
        try:
            _registry.select("box_iou_rotated", boxes1.device.type,
                             "float64" if boxes1.dtype == torch.float64 else "float32")
        except RuntimeError:
            return _TV_BOX_IOU(boxes1, boxes2, fmt=fmt)
    return _boxes.box_iou(boxes1, boxes2, fmt)


PATCHED = {"nms": _nms.nms, "batched_nms": torchvision_batched_nms, "box_area": _boxes.box_area,
           "box_iou": torchvision_box_iou, "generalized_box_iou": _boxes.generalized_box_iou,
           "distance_box_iou": _boxes.distance_box_iou, "complete_box_iou": _boxes.complete_box_iou}
ROI_FUNCTIONS = {name: getattr(_roi, name) for name in ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool")}
ROI_CLASSES = {name: getattr(_modules, name) for name in _modules.__all__}


def patch_targets() -> list[tuple[Any, str, Any]]:
    """(module, attribute, replacement) for every place torchvision looks the ops up: the
    ``torchvision.ops`` and ``torchvision.ops.boxes`` namespaces, the globals the torchvision RoI
    module classes call (so existing RoIAlign/MultiScaleRoIAlign instances, e.g. inside a built
    detection model, reroute too), and the roi_align used by the Mask R-CNN loss."""
    out: list[tuple[Any, str, Any]] = []
    for modname in ("torchvision.ops", "torchvision.ops.boxes"):
        mod = importlib.import_module(modname)
        out += [(mod, name, new) for name, new in PATCHED.items() if hasattr(mod, name)]
    tv_ops = importlib.import_module("torchvision.ops")
    out += [(tv_ops, name, new) for name, new in {**ROI_FUNCTIONS, **ROI_CLASSES}.items() if hasattr(tv_ops, name)]
    for modname, name in (("torchvision.ops.roi_align", "roi_align"), ("torchvision.ops.roi_pool", "roi_pool"),
                          ("torchvision.ops.ps_roi_align", "ps_roi_align"),
                          ("torchvision.ops.ps_roi_pool", "ps_roi_pool"), ("torchvision.ops.poolers", "roi_align"),
                          ("torchvision.models.detection.roi_heads", "roi_align")):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        if hasattr(mod, name):
            out.append((mod, name, ROI_FUNCTIONS[name]))
    return out


class patch_torchvision(contextlib.AbstractContextManager):
    """Route ``torchvision.ops`` functions to detkernels, so an existing torchvision model uses it
    without code changes. Patches at construction; as a context manager, restores on exit::

        detkernels.patch_torchvision()            # for the rest of the process
        with detkernels.patch_torchvision(): ...  # for a block
        p = detkernels.patch_torchvision(); ...; p.restore()   # undo a global patch

    Patched: nms, batched_nms (in torchvision's result order: ``torchvision_batched_nms``), box_area, box_iou, generalized/distance/complete_box_iou in
    ``torchvision.ops`` and ``torchvision.ops.boxes`` (which the detection models call); the RoI
    ops, their modules, and the globals torchvision's RoI modules and detection heads call
    (``patch_targets``).
    """

    def __init__(self) -> None:
        global _TV_BOX_IOU
        tv_box_iou = importlib.import_module("torchvision.ops.boxes").box_iou
        if tv_box_iou is not torchvision_box_iou:
            _TV_BOX_IOU = tv_box_iou
        self._saved: list[tuple[Any, str, Any]] = []
        for mod, name, new in patch_targets():
            self._saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, new)

    def restore(self) -> None:
        """Put torchvision's own functions back."""
        for mod, name, fn in reversed(self._saved):
            setattr(mod, name, fn)
        self._saved.clear()

    def __exit__(self, *exc: Any) -> None:
        self.restore()
