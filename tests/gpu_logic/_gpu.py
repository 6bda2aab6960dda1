"""The on-a-GPU part of the GPU-logic tests: whether this build has CUDA kernels and a device to run
them, torch (imported only then), and the skip marker. Without a GPU those tests report
themselves as skipped; the CPU emulations in the same files cover the algorithms."""
from __future__ import annotations

import pytest

from detkernels.backends import native


def cuda_devices() -> int:
    """CUDA devices the native build can use (0 without CUDA kernels or a driver)."""
    if not native.HAS_CUDA:
        return 0
    return native._C.cuda_device_count()


torch = pytest.importorskip("torch") if cuda_devices() else None
needs_gpu = pytest.mark.skipif(
    not cuda_devices() or torch is None or not torch.cuda.is_available(),
    reason="no CUDA device here (the CPU emulation covers the algorithm); "
    "these run on any machine with a GPU and a CUDA build")
