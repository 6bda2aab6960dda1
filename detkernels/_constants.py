"""The one Python home of the numbers and small rules that the compiled core, the Numba and CuPy
backends and the reference share. The C++ side has its own copy where it needs one (enums in
csrc/common/host_device.h, caps in the op headers); ``_C`` exports those and
tests/support/test_constants.py asserts that the two agree. Pure Python: importable without _C,
numba, cupy or torch.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = [
    "DTYPE_CODES", "FMT_CODES", "KIND_CODES", "MAX_GRID", "MAX_SAMPLING_RATIO", "MAX_PLANE",
    "NMS_MASK_BYTES", "ROI_ALIGN_MAX_SLOTS", "ROI_POOL_MAX_SLOTS", "nms_threshold", "nms_tile_rows",
]

# csrc/common/host_device.h `enum DType`, box_iou.h `BoxFormat` / `IouKind`.
DTYPE_CODES = {"float32": 0, "float64": 1, "float16": 2, "bfloat16": 3, "int32": 4, "int64": 5}
FMT_CODES = {"xyxy": 0, "xywh": 1, "cxcywh": 2}
KIND_CODES = {"iou": 0, "giou": 1, "diou": 2, "ciou": 3}

# RoIAlign sampling: adaptive grids are capped at MAX_GRID samples per axis and bin (roi_align.h
# kRoiMaxGrid); an explicit sampling_ratio may not exceed MAX_SAMPLING_RATIO (MAX_SAMPLING_RATIO**2
# = MAX_GRID samples per bin). roi_pool's argmax h*W + w is int32: at most MAX_PLANE pixels.
MAX_GRID = 1 << 16
MAX_SAMPLING_RATIO = 1 << 8
MAX_PLANE = 2**31 - 1


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


# Workspace caps of the GPU paths (read once, at import): NMS mask tiles, and the slots of the
# native/CuPy RoI backward sorts (32 bytes each; more is refused with a MemoryError).
NMS_MASK_BYTES = _env_int("DETKERNELS_NMS_MASK_BYTES", 256 << 20)
ROI_ALIGN_MAX_SLOTS = _env_int("DETKERNELS_ROI_ALIGN_MAX_SLOTS", 1 << 26)
ROI_POOL_MAX_SLOTS = _env_int("DETKERNELS_ROI_POOL_MAX_SLOTS", 1 << 26)


def nms_threshold(thr: float, dtype) -> np.generic:
    """Largest value of ``dtype`` <= thr (nms.h ``nms_threshold``): for any x of that dtype,
    ``x > result`` iff ``float(x) > thr``, so a compare in T is torchvision's double compare."""
    T = np.dtype(dtype).type
    t = T(thr)
    if float(t) > thr:
        t = np.nextafter(t, T(-np.inf))
    return t


def nms_tile_rows(n: int, width: int, cap_bytes: int) -> int:
    """Rows per NMS mask tile (nms_bitmask.h ``nms_tile_rows``): a multiple of 64, as many as
    ``cap_bytes`` holds at ``width`` 64-bit words per row, at least one 64-row block, at most all
    rows and 65535 blocks (one grid dimension)."""
    ncb = (n + 63) // 64
    blocks = max(cap_bytes // (width * 8 * 64) if width > 0 else 1, 1)
    return min(blocks, ncb, 65535) * 64  # 0 for n = 0, as the C++
