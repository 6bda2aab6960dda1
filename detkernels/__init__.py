"""detkernels: fast, bit-exact object-detection kernels; a drop-in for ``torchvision.ops``.

NumPy is the only hard dependency: torch, numba and cupy are used when installed and are not
imported by ``import detkernels``. The NumPy reference (``detkernels.reference``) is the
specification every backend is tested against, byte for byte.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from typing import Any

from ._registry import available_backends, explain, get_backend, set_backend
from .api.detect import Detections, detect
from .api.boxes import box_area, box_iou, complete_box_iou, distance_box_iou, generalized_box_iou
from .api.nms import batched_nms, multi_image_nms, nms, nms_padded
from .api.nms_variants import (diou_nms, matrix_nms, multi_image_diou_nms, multi_image_matrix_nms,
                               multi_image_soft_nms, soft_nms)
from .api.roi import ps_roi_align, ps_roi_pool, roi_align, roi_align_rotated, roi_pool
from .api.rotated import (batched_nms_rotated, multi_image_nms_probiou, multi_image_nms_rotated, nms_probiou,
                          nms_rotated, probiou)
from .backends.native import build_info

__version__ = "0.1.0"

__all__ = [
    "available_backends",
    "batched_nms",
    "box_area",
    "box_iou",
    "build_info",
    "complete_box_iou",
    "detect",
    "Detections",
    "diou_nms",
    "distance_box_iou",
    "explain",
    "export_ready",
    "aoti_compile_exact",
    "generalized_box_iou",
    "get_backend",
    "matrix_nms",
    "multi_image_diou_nms",
    "multi_image_matrix_nms",
    "multi_image_nms",
    "multi_image_soft_nms",
    "nms",
    "nms_padded",
    "patch_torchvision",
    "ps_roi_align",
    "ps_roi_pool",
    "roi_align",
    "roi_align_rotated",
    "roi_pool",
    "RoIAlign",
    "RoIPool",
    "PSRoIAlign",
    "PSRoIPool",
    "MultiScaleRoIAlign",
    "RoIAlignRotated",
    "set_backend",
    "soft_nms",
    "set_num_threads",
    "get_num_threads",
    "nms_rotated",
    "batched_nms_rotated",
    "probiou",
    "nms_probiou",
    "multi_image_nms_rotated",
    "multi_image_nms_probiou",
]


def set_num_threads(n: int) -> None:
    """Threads used by the native CPU kernels (default: DETKERNELS_NUM_THREADS, else all cores).
    Results never depend on it."""
    from . import _C

    _C.set_num_threads(int(n))


def get_num_threads() -> int:
    from . import _C

    return _C.num_threads()


def __getattr__(name: str):
    # The RoI nn.Modules need torch: created on first access, not at `import detkernels`.
    if name in ("RoIAlign", "RoIPool", "PSRoIAlign", "PSRoIPool", "MultiScaleRoIAlign", "RoIAlignRotated"):
        from .api import roi_modules

        return getattr(roi_modules, name)
    if name == "ultralytics":  # the ultralytics drop-in (needs torch): detkernels/_torch/ultralytics.py
        return importlib.import_module("._torch.ultralytics", __name__)
    if name == "tv_detection":  # RetinaNet / FCOS post-process via detect: detkernels/_torch/tv_detection.py
        return importlib.import_module("._torch.tv_detection", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def patch_torchvision():
    """Make ``torchvision.ops`` call detkernels (also usable as a context manager that restores
    torchvision's functions on exit; ``.restore()`` undoes a global patch). See
    ``detkernels._torch.patch.patch_torchvision``."""
    from ._torch.patch import patch_torchvision as p

    return p()


def export_ready(model: Any) -> Any:
    """Make a torchvision Faster R-CNN / Mask R-CNN / RetinaNet traceable by ``torch.export`` (and
    AOTInductor), in place, eager outputs unchanged bit for bit; returns ``model``. See
    ``detkernels._torch.export.export_ready`` and docs/DEPLOY.md."""
    from ._torch.export import export_ready as f

    return f(model)


def aoti_compile_exact(program: Any, package_path: str | None = None,
                       inductor_configs: dict[str, Any] | None = None) -> str:
    """``torch._inductor.aoti_compile_and_package`` with ATen's kernels where Inductor's round
    differently: the package computes eager's bytes. See ``detkernels._torch.export``."""
    from ._torch.export import aoti_compile_exact as f

    return f(program, package_path, inductor_configs)


class _AfterTorchImport(importlib.abc.MetaPathFinder):
    """When torch is imported after detkernels: registers the custom ops and TorchScript builtins
    right after torch's own import finishes (not at detkernels' first eager call)."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not find us again
        spec = importlib.util.find_spec("torch")
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_register(module: Any) -> None:
            exec_module(module)
            try:
                from ._torch import script  # noqa: F401
            except Exception:  # never break `import torch`; the first call registers (and reports)
                pass

        loader.exec_module = exec_then_register
        return spec


# Register the custom ops and TorchScript builtins (cheap) before any eager call, so
# torch.jit.script / torch.compile see them whichever of torch and detkernels is imported first.
if "torch" in sys.modules:
    from ._torch import script  # noqa: F401
else:
    sys.meta_path.insert(0, _AfterTorchImport())
