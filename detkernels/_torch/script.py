"""TorchScript: calls to detkernels' public functions inside ``torch.jit.script`` code compile to
``torch.ops.detkernels.*`` (registered as builtins). Imported by ``detkernels/__init__.py`` when
torch is (it imports every custom op on the way).

The RoI functions take ``boxes`` as ``Tensor[K, 5]`` or ``List[Tensor[L, 4]]`` and
``output_size`` as an int or a pair, which no single schema expresses: they compile (through
their twins in ``script_fns``) to ``detkernels::<name>_script`` with two overloads. Overloads can only be declared with
``torch.library.Library.define`` (``custom_op`` takes one schema per name), so these schema-only
entry points -- composite, no kernel of their own: they call the public function -- are the one
place that mechanism is used. ``box_area`` (no custom op: torch ops) and ``patch_torchvision``'s
``torchvision_batched_nms`` get one such entry each too.

``torch.jit.script(f)`` of a public function itself compiles its twin in ``script_fns``
(torchvision's signature, no ``backend=``), put in TorchScript's function cache here.
"""
from __future__ import annotations

import warnings

import torch
from torch.jit import _builtins

from .. import _checks
from ..api import boxes as _boxes
from ..api import nms as _nms
from ..api import nms_variants as _variants
from ..api import roi as _roi
from ..api import rotated as _rotated
from ..backends import native
from . import detect as _detect_ops  # noqa: F401  (custom ops)
from . import iou as _iou_ops  # noqa: F401
from . import nms as _nms_ops  # noqa: F401
from . import roi as _roi_ops  # noqa: F401
from . import rotated as _rotated_ops  # noqa: F401
from . import export as _export_ops  # noqa: F401  (detkernels::paste_masks, for export_ready)
from . import script_fns as _fns
from .patch import torchvision_batched_nms, torchvision_box_iou

# The native CPU kernels' jobs run on torch's OpenMP threads from now on (one pool per process).
native.share_torch_threads(torch)

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


# The RoI functions are no builtins: a call in scripted code compiles their twin (below), which
# picks the overload from a Union[Tensor, List[Tensor]] argument -- as a module's forward passes it.
for _name in ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool"):
    _script_impl(_name)
for _mod, _names in ((_nms, ("nms", "batched_nms")),
                     (_boxes, ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"))):
    for _name in _names:
        _builtins._register_builtin(getattr(_mod, _name), f"detkernels::{_name}")

_lib.define("box_area_script(Tensor boxes, str fmt='xyxy') -> Tensor")
_lib.impl("box_area_script", lambda boxes, fmt="xyxy": _boxes.box_area(boxes, fmt), "CompositeImplicitAutograd")
_lib.define("torchvision_batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor")
_lib.impl("torchvision_batched_nms", torchvision_batched_nms, "CompositeImplicitAutograd")
_builtins._register_builtin(_boxes.box_area, "detkernels::box_area_script")
_builtins._register_builtin(torchvision_batched_nms, "detkernels::torchvision_batched_nms")
_builtins._register_builtin(torchvision_box_iou, "detkernels::box_iou")

# torch.jit.script(f) -> the compiled twin (TorchScript looks its cache up before parsing f).
# Compiled here, quietly: torch.jit.script warns that TorchScript is deprecated on every call.
_TWINS = [(_nms.nms, _fns.nms), (_nms.batched_nms, _fns.batched_nms),
          (torchvision_batched_nms, _fns.torchvision_batched_nms), (_boxes.box_area, _fns.box_area),
          (torchvision_box_iou, _fns.box_iou)]
_TWINS += [(getattr(_boxes, n), getattr(_fns, n))
           for n in ("box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou")]
_TWINS += [(getattr(_roi, n), getattr(_fns, n)) for n in ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool")]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    for _fn, _twin in _TWINS:
        torch.jit._state._set_jit_function_cache(_fn, torch.jit.script(_twin))

# The crowded-scene and rotated NMS functions (issue 13, 17): their custom ops take the arguments in
# another order (``idxs`` among the tensors, no keyword-only part), so each gets a schema-only
# entry with the public signature (keyword-only part included, ``backend=`` left out) whose
# composite kernel calls the public function -- eager's bytes by construction. ``probiou``'s
# custom op has the public signature itself; the rotated ``box_iou`` is ``detkernels::box_iou``.
_VARIANT_SCHEMAS = {
    (_variants, "soft_nms"): "Tensor boxes, Tensor scores, float iou_threshold=0.3, *, float sigma=0.5, "
                             "str method='linear', float score_threshold=0.001, int? max_output=None, "
                             "Tensor? idxs=None) -> (Tensor, Tensor)",
    (_variants, "multi_image_soft_nms"): "Tensor boxes, Tensor scores, int max_output, float iou_threshold=0.3, "
                                         "*, float sigma=0.5, str method='linear', "
                                         "float score_threshold=0.001, Tensor? idxs=None) "
                                         "-> (Tensor, Tensor, Tensor)",
    (_variants, "diou_nms"): "Tensor boxes, Tensor scores, float iou_threshold, *, float beta=1.0, "
                             "Tensor? idxs=None) -> Tensor",
    (_variants, "multi_image_diou_nms"): "Tensor boxes, Tensor scores, float iou_threshold, int max_output, "
                                         "*, float beta=1.0, Tensor? idxs=None) -> (Tensor, Tensor)",
    (_variants, "multi_image_matrix_nms"): "Tensor boxes, Tensor scores, Tensor labels, int max_output, *, "
                                           "str kernel='gaussian', float sigma=2.0, "
                                           "float? score_threshold=None, int? pre_top_k=None) "
                                           "-> (Tensor, Tensor, Tensor)",
    (_variants, "matrix_nms"): "Tensor boxes, Tensor scores, Tensor labels, *, str kernel='gaussian', "
                               "float sigma=2.0, float? score_threshold=None, int? max_output=None, "
                               "int? pre_top_k=None) -> (Tensor, Tensor)",
    (_rotated, "nms_rotated"): "Tensor boxes, Tensor scores, float iou_threshold, str fmt='cxcywhr') -> Tensor",
    (_rotated, "batched_nms_rotated"): "Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold, "
                                       "str fmt='cxcywhr') -> Tensor",
    (_rotated, "nms_probiou"): "Tensor boxes, Tensor scores, float iou_threshold, Tensor? idxs=None, *, "
                               "bool fast=False, float eps=1e-7) -> Tensor",
    (_rotated, "multi_image_nms_rotated"): "Tensor boxes, Tensor scores, float iou_threshold, int max_output, "
                                           "str fmt='cxcywhr', *, Tensor? idxs=None, "
                                           "float? score_threshold=None) -> (Tensor, Tensor)",
    (_rotated, "multi_image_nms_probiou"): "Tensor boxes, Tensor scores, float iou_threshold, int max_output, "
                                           "*, Tensor? idxs=None, bool fast=False, float eps=1e-7, "
                                           "float? score_threshold=None) -> (Tensor, Tensor)",
    (_roi, "roi_align_rotated"): "Tensor input, Tensor rois, int[2] output_size, float spatial_scale=1.0, "
                                 "int sampling_ratio=0, bool aligned=True, bool clockwise=False) -> Tensor",
}
for (_mod, _name), _schema in _VARIANT_SCHEMAS.items():
    _lib.define(f"{_name}_script({_schema}")
    _lib.impl(f"{_name}_script", getattr(_mod, _name), "CompositeImplicitAutograd")
    _builtins._register_builtin(getattr(_mod, _name), f"detkernels::{_name}_script")
_builtins._register_builtin(_rotated.probiou, "detkernels::probiou")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    for (_mod, _name) in (*_VARIANT_SCHEMAS, (_rotated, "probiou")):
        torch.jit._state._set_jit_function_cache(getattr(_mod, _name), torch.jit.script(getattr(_fns, _name)))
