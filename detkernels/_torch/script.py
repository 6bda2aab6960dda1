"""TorchScript: calls to detkernels' public functions inside ``torch.jit.script`` code compile to
``torch.ops.detkernels.*`` (registered as builtins). Imported by ``detkernels/__init__.py`` when
torch is (it imports every custom op on the way).

The RoI functions take ``boxes`` as ``Tensor[K, 5]`` or ``List[Tensor[L, 4]]`` and
``output_size`` as an int or a pair, which no single schema expresses: they compile to
``detkernels::<name>_script`` with two overloads. Overloads can only be declared with
``torch.library.Library.define`` (``custom_op`` takes one schema per name), so these schema-only
entry points -- composite, no kernel of their own: they call the public function -- are the one
place that mechanism is used.
"""
from __future__ import annotations

import torch
from torch.jit import _builtins

from .. import _checks
from ..api import boxes as _boxes
from ..api import nms as _nms
from ..api import roi as _roi
from . import detect as _detect_ops  # noqa: F401  (custom ops)
from . import iou as _iou_ops  # noqa: F401
from . import nms as _nms_ops  # noqa: F401
from . import roi as _roi_ops  # noqa: F401

_lib = torch.library.Library("detkernels", "FRAGMENT")

for _name, _extra in (("roi_align", ", int sampling_ratio=-1, bool aligned=False"),
                      ("ps_roi_align", ", int sampling_ratio=-1"), ("roi_pool", ""), ("ps_roi_pool", "")):
    for _overload, _b in (("", "Tensor boxes"), (".boxes_list", "Tensor[] boxes")):
        _lib.define(f"{_name}_script{_overload}(Tensor input, {_b}, SymInt[2] output_size, "
                    f"float spatial_scale=1.0{_extra}) -> Tensor")


def _script_impl(name: str) -> None:
    fn = getattr(_roi, name)

    def impl(input, boxes, output_size, *args):
        return fn(input, _checks.rois_from_boxes(boxes), tuple(output_size), *args)

    for overload in ("", ".boxes_list"):
        _lib.impl(f"{name}_script{overload}", impl, "CompositeImplicitAutograd")


for _name in ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool"):
    _script_impl(_name)
    _builtins._register_builtin(getattr(_roi, _name), f"detkernels::{_name}_script")
for _mod, _names in ((_nms, ("nms", "batched_nms")),
                     (_boxes, ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"))):
    for _name in _names:
        _builtins._register_builtin(getattr(_mod, _name), f"detkernels::{_name}")
