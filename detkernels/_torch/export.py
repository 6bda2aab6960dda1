"""``export_ready``: make a torchvision detection model traceable by ``torch.export`` (and so
compilable by AOTInductor) without changing a bit of its eager output.

torchvision's detection code stops ``torch.export`` in four places, each swapped here in place
(pytorch/pytorch#146152):

- ``torchvision.ops.batched_nms`` switches path on ``boxes.numel()``, a data-dependent size after
  the score threshold: ``patch_torchvision()`` is installed (process-wide: the detection modules
  call ``torchvision.ops.boxes.batched_nms`` as a module global, which no per-model swap reaches),
  and its ``batched_nms`` takes the custom op, with no size switch, when traced.
- ``poolers._multiscale_roi_align`` gathers each level's RoIs with ``torch.where`` and slices to
  ``Min(1000, u)``: every ``torchvision.ops.MultiScaleRoIAlign`` becomes detkernels' (traced, it
  pools every level masked, static shapes, the same bytes).
- ``BoxCoder.decode`` branches on ``box_sum > 0`` (a data-dependent sum of proposal counts):
  ``ExportBoxCoder`` decodes without the branch.
- Mask R-CNN's ``paste_masks_in_image`` loops over the masks, each resized to a data-dependent
  size: traced, the loop is the custom op ``detkernels::paste_masks`` (a fixed output shape per
  image; its kernel runs torchvision's own per-mask paste, so the bytes are torchvision's).

AOTInductor compiles the exported program into its own C++ kernels, whose arithmetic is not
ATen's in three places these models reach: ``exp`` (``BoxCoder.decode_single``) and ``softmax``
(the box head's scores), each a few ulps off, bilinear ``interpolate`` (the transform's resize,
decomposed into index arithmetic), and channels-last convolutions (``layout_optimization``,
another oneDNN algorithm). Top-k, score thresholds and NMS turn those last bits into other
detections. Traced, the transform's resize is the opaque op ``detkernels::resize_bilinear``
(ATen's kernel); ``aoti_compile_exact`` compiles with ATen's ``exp`` and ``softmax`` and the
eager layouts: the same bytes as eager.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..api import roi_modules as _modules
from . import patch as _patch
from .common import traced


@torch.library.custom_op("detkernels::paste_masks", mutates_args=())
def paste_masks_op(masks: Tensor, boxes: Tensor, im_h: int, im_w: int) -> Tensor:
    """torchvision's per-mask loop of ``paste_masks_in_image`` on masks already padded and boxes
    already expanded and rounded to int64 (``expand_masks`` / ``expand_boxes``, which trace)."""
    from torchvision.models.detection.roi_heads import paste_mask_in_image

    if masks.shape[0] == 0:
        return masks.new_zeros((0, 1, im_h, im_w))
    return torch.stack([paste_mask_in_image(m[0], b, im_h, im_w) for m, b in zip(masks, boxes)])[:, None]


@paste_masks_op.register_fake
def _(masks, boxes, im_h, im_w):
    return masks.new_empty((masks.shape[0], 1, im_h, im_w))


@torch.library.custom_op("detkernels::resize_bilinear", mutates_args=())
def resize_bilinear_op(image: Tensor, height: int, width: int) -> Tensor:
    """``[C, H, W]`` -> ``[C, height, width]`` by ATen's bilinear interpolation (``align_corners=
    False``): torchvision's resize, whose ``scale_factor`` with ``recompute_scale_factor=True``
    interpolates to exactly this size. An opaque op, so Inductor keeps ATen's arithmetic."""
    return torch.nn.functional.interpolate(image[None], size=(height, width), mode="bilinear",
                                           align_corners=False)[0]


@resize_bilinear_op.register_fake
def _(image, height, width):
    return image.new_empty((image.shape[0], height, width))


def paste_masks(masks: Tensor, boxes: Tensor, img_shape: tuple[int, int], padding: int = 1) -> Tensor:
    """``torchvision.models.detection.roi_heads.paste_masks_in_image``; traced, through
    ``detkernels::paste_masks`` (no loop over a data-dependent number of masks)."""
    from torchvision.models.detection import roi_heads

    if not traced(masks, boxes):
        return roi_heads.paste_masks_in_image(masks, boxes, img_shape, padding)
    padded, scale = roi_heads.expand_masks(masks, padding)
    int_boxes = roi_heads.expand_boxes(boxes, scale).to(dtype=torch.int64)
    return torch.ops.detkernels.paste_masks(padded, int_boxes, int(img_shape[0]), int(img_shape[1]))


def _box_coder_class() -> type:
    from torchvision.models.detection._utils import BoxCoder

    class ExportBoxCoder(BoxCoder):
        """``BoxCoder`` whose ``decode`` has no ``box_sum > 0`` branch. The detection models call it
        with ``rel_codes`` ``[n, W]`` for ``n`` boxes (the RPN's ``W = 4``, the box head's
        ``4 * num_classes``), so the result is ``decode_single``'s, reshaped to ``[n, W // 4, 4]``
        -- torchvision's for ``n > 0``. For ``n = 0`` torchvision skips the reshape (``[0, W]``
        instead of ``[0, W // 4, 4]``); the model's detections are the same empty tensors."""

        def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
            concat = torch.cat(boxes, dim=0)
            n = concat.shape[0]
            width = rel_codes.shape[-1]
            pred = self.decode_single(rel_codes.reshape(n, width), concat)
            return pred.reshape(n, width // 4, 4)

    return ExportBoxCoder


def _transform_class() -> type:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class ExportTransform(GeneralizedRCNNTransform):
        """``GeneralizedRCNNTransform`` that, traced, resizes through ``detkernels::resize_bilinear``
        and pastes masks through ``paste_masks`` (the rest is torchvision's own code)."""

        def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
                   ) -> tuple[Tensor, dict[str, Tensor] | None]:
            if (target is not None or self.training or not traced(image)
                    or not all(type(d) is int for d in image.shape)):  # dynamic image sizes: torchvision's
                return super().resize(image, target)
            # torchvision's size rule, run on a shape-only tensor outside the traced graph; then the
            # interpolation itself as detkernels::resize_bilinear (Inductor's bilinear rounds otherwise).
            from torch._subclasses.fake_tensor import unset_fake_temporarily
            from torch.fx.experimental.proxy_tensor import disable_proxy_modes_tracing

            with unset_fake_temporarily(), disable_proxy_modes_tracing():
                shape = super().resize(torch.empty(image.shape, dtype=image.dtype, device="meta"))[0].shape
            return torch.ops.detkernels.resize_bilinear(image, int(shape[-2]), int(shape[-1])), None

        def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                        original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
            if self.training:
                return result
            masks = [r.pop("masks", None) for r in result]
            result = super().postprocess(result, image_shapes, original_image_sizes)
            for r, m, size in zip(result, masks, original_image_sizes):
                if m is not None:  # after the boxes are resized, as torchvision pastes them
                    r["masks"] = paste_masks(m, r["boxes"], size)
            return result

    return ExportTransform


_CLASSES: dict[str, type] = {}
_PATCH: list[Any] = []


def _swap_class(obj: Any, key: str, make: Any) -> None:
    """Give ``obj`` the export subclass of its (torchvision) class; its state is untouched."""
    if key not in _CLASSES:
        _CLASSES[key] = make()
    cls = _CLASSES[key]
    if not isinstance(obj, cls):
        if type(obj) not in cls.__mro__:
            raise ValueError(f"export_ready: {type(obj).__qualname__} is not torchvision's "
                             f"{cls.__mro__[1].__qualname__} (a custom subclass is not supported)")
        obj.__class__ = cls


def _ensure_patched() -> None:
    import torchvision

    if torchvision.ops.boxes.batched_nms is not _patch.torchvision_batched_nms:
        _PATCH.append(_patch.patch_torchvision())


def _restore_patch() -> None:
    """Undo the ``patch_torchvision()`` that ``export_ready`` installed, if it did (for tests)."""
    while _PATCH:
        _PATCH.pop().restore()


def _supported_types() -> tuple[type, ...]:
    from torchvision.models.detection import (
        FasterRCNN,
        KeypointRCNN,
        MaskRCNN,
        RetinaNet,
    )

    return FasterRCNN, MaskRCNN, RetinaNet, KeypointRCNN


def export_ready(model: nn.Module) -> nn.Module:
    """Make a torchvision Faster R-CNN, Mask R-CNN or RetinaNet traceable by ``torch.export``
    (``torch.export.export(model, (images,))`` with ``images`` a list of ``[3, H, W]`` tensors),
    and so by AOTInductor. Swaps in place, and returns ``model``:

    - every ``torchvision.ops.MultiScaleRoIAlign`` submodule -> ``detkernels.MultiScaleRoIAlign``
      (same configuration);
    - the RPN's and the RoI heads' ``BoxCoder`` -> one whose ``decode`` has no data-dependent
      branch;
    - the transform -> one whose ``postprocess`` pastes masks without a per-mask Python loop when
      traced;
    - and installs ``detkernels.patch_torchvision()`` for the process if it is not active (the
      models call ``torchvision.ops.boxes.batched_nms`` as a module global; detkernels' traces
      without a data-dependent size switch). Do not ``restore()`` it while exporting.

    Eager outputs stay bit-identical to the unpatched torchvision model's; the exported program's
    equal eager's bit for bit. Idempotent.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or not a torchvision FasterRCNN / MaskRCNN /
            RetinaNet (KeypointRCNN's keypoint post-processing is not covered).
        ValueError: one of the parts it swaps is a custom subclass of torchvision's.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"export_ready: model must be a torch.nn.Module, got {type(model).__qualname__}")
    try:
        faster, _mask, retina, keypoint = _supported_types()
    except ImportError as e:  # pragma: no cover - torchvision is a test dependency
        raise ImportError("export_ready needs torchvision") from e
    if isinstance(model, keypoint) or not isinstance(model, (faster, retina)):
        raise TypeError("export_ready: model must be a torchvision FasterRCNN, MaskRCNN or RetinaNet "
                         f"(torchvision.models.detection), got {type(model).__qualname__}")
    from torchvision.ops import poolers

    for name, sub in list(model.named_modules()):
        if isinstance(sub, poolers.MultiScaleRoIAlign) and not isinstance(sub, _modules.MultiScaleRoIAlign):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            setattr(parent, attr, _modules.MultiScaleRoIAlign(
                list(sub.featmap_names), sub.output_size, sub.sampling_ratio,
                canonical_scale=sub.canonical_scale, canonical_level=sub.canonical_level))
    if isinstance(model, faster):
        _swap_class(model.rpn.box_coder, "box_coder", _box_coder_class)
        _swap_class(model.roi_heads.box_coder, "box_coder", _box_coder_class)
    _swap_class(model.transform, "transform", _transform_class)
    _ensure_patched()
    return model


# The ops whose Inductor kernels round differently from ATen's CPU kernels (measured: exp a few
# ulps, softmax its reduction). Bilinear interpolation decomposes before Inductor's tables are
# consulted: export_ready's transform makes the resize an opaque op instead.
ATEN_NUMERICS_OPS = ("exp", "_softmax", "sigmoid")


@contextlib.contextmanager
def aten_numerics(ops: tuple[str, ...] = ATEN_NUMERICS_OPS) -> Iterator[None]:
    """Inside the block, Inductor calls ATen's kernels for ``ops`` (``torch.ops.aten`` names)
    instead of generating its own, keeps eager's memory layouts (no channels-last convolutions)
    and neither reads nor writes its FX graph cache (an entry compiled outside would differ).
    Inductor's lowering and decomposition tables are process globals: they are saved on entry
    and restored on exit; do not compile in another thread meanwhile."""
    from torch._inductor import config, decomposition, lowering

    tables = (lowering.lowerings, decomposition.decompositions)
    sets = (lowering.fallbacks, lowering.needs_realized_inputs)
    saved = [dict(t) for t in tables], [set(x) for x in sets]
    # select_decomp_table() serves a cached copy of the decompositions: rebuilt inside and after.
    cached = getattr(decomposition, "fast_random_decomps", None)
    clear = getattr(cached, "cache_clear", lambda: None)
    try:
        clear()
        for name in ops:
            packet = getattr(torch.ops.aten, name)
            for overload in packet.overloads():
                op = getattr(packet, overload)
                for t in tables:
                    t.pop(op, None)
            lowering.make_fallback(packet, warn=False, override_decomp=True)
        with config.patch(layout_optimization=False, fx_graph_cache=False, fx_graph_remote_cache=False):
            yield
    finally:
        for t, old in zip(tables, saved[0]):
            t.clear()
            t.update(old)
        for x, old in zip(sets, saved[1]):
            x.clear()
            x.update(old)
        clear()


def aoti_compile_exact(program: Any, package_path: str | None = None,
                       inductor_configs: dict[str, Any] | None = None) -> str:
    """``torch._inductor.aoti_compile_and_package`` whose package computes eager's bytes: under
    ``aten_numerics()`` (ATen's ``exp``, ``softmax`` and bilinear ``interpolate``, eager layouts).
    Returns the package path (for ``torch._inductor.aoti_load_package``).

    Args:
        program: a ``torch.export.ExportedProgram``.
        package_path: where to write the ``.pt2`` package (a temporary file if None).
        inductor_configs: passed on to ``aoti_compile_and_package``.

    Raises:
        TypeError: ``program`` is not an ExportedProgram.
    """
    if not isinstance(program, torch.export.ExportedProgram):
        raise TypeError("aoti_compile_exact: program must be a torch.export.ExportedProgram "
                        f"(from torch.export.export), got {type(program).__qualname__}")
    with aten_numerics():
        return torch._inductor.aoti_compile_and_package(program, package_path=package_path,
                                                        inductor_configs=inductor_configs)
