"""The CUDA rotated pairwise kernel (csrc/ops/box_iou/box_iou_rotated_kernels.cuh) behind
box_iou(fmt='cxcywhr' | 'xywhr' | 'xyxyxyxy') and probiou on CUDA tensors.

Its per-pair code is box_iou_rotated.h's metric policies (RotatedIouMetric, ProbIouMetric), the
very functions the CPU loops run, so the byte-exact CPU tests (tests/ops/test_box_iou_rotated.py,
test_nms_rotated.py) cover that code; what only a GPU can check is the kernel's tiling and the
device's double cos/sin/exp/log (CUDA's, as torchvision's CUDA kernel; glibc's on the CPU). The GPU
tests below state what is expected of each:
  * box_iou rotated: the output is float32 whatever the boxes' dtype, and a last-ulp difference of
    a double cos/sin moves a float32 result only if it crosses a float32 rounding boundary (odds
    ~2^-29 per box), so the fixed-seed families are asserted byte-equal to the reference;
  * probiou: the output is in the boxes' dtype and goes through exp/log: float32 is asserted
    within 2 ulp, float64 within 1e-14 absolute (CUDA documents 1-2 ulp for these functions).
Without a GPU they report themselves as skipped: the kernel is "compiled, not run" here (the PTX
lint, tests/gpu_logic/test_ptx_lint.py, checks it for contractions)."""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import rotated as R

from _helpers import assert_bytes_equal
from _rotated_families import FAMILIES, make
from _gpu import needs_gpu, torch


@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_points_built_and_fail_cleanly_without_a_gpu():
    """A CUDA build exports both launchers and the registry routes CUDA arrays to them; with no
    usable GPU a launch raises, never crashes. Empty shapes launch nothing."""
    from detkernels import _registry
    from detkernels.backends._table import TABLE

    C = native._C
    assert hasattr(C, "box_iou_rotated_cuda") and hasattr(C, "probiou_cuda")
    _registry._load()
    for op in ("box_iou_rotated", "probiou"):
        assert "cuda" in TABLE["native"].impls[op][1], op
    C.box_iou_rotated_cuda(0, 1, 0, 5, 0, 0, 0, 0, 0)  # N == 0: nothing to do, no CUDA call
    C.probiou_cuda(0, 1e-7, 0, 3, 3, 0, 0, 0, 0, 0)
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launchers")
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.box_iou_rotated_cuda(0, 1, 2, 2, 0, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.probiou_cuda(0, 1e-7, 1, 2, 2, 0, 0, 0, 0, 0)


@needs_gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gpu_box_iou_rotated_equals_reference(family, dtype):
    import detkernels as dk

    rng = np.random.default_rng(17)
    a = make(family, rng, 300).astype(dtype)
    b = make(family, rng, 77).astype(dtype)  # M not a multiple of the 32-column tile
    want = R.box_iou_rotated(a, b)
    got = dk.box_iou(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda(), fmt="cxcywhr",
                     backend="native")
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert_bytes_equal(got.cpu().numpy(), want, f"{family} {dtype}")
    # leading batch dimensions: each batch is its own matrix
    ab = np.stack([a[:40], a[40:80]])
    bb = np.stack([b[:30], b[30:60]])
    got = dk.box_iou(torch.from_numpy(ab).cuda(), torch.from_numpy(bb).cuda(), fmt="cxcywhr",
                     backend="native").cpu().numpy()
    for k in range(2):
        assert_bytes_equal(got[k], R.box_iou_rotated(ab[k], bb[k]), f"{family} batch {k}")


@needs_gpu
@pytest.mark.parametrize("family", ["uniform", "clustered", "identical", "containment", "huge",
                                    "tiny", "degenerate"])
def test_gpu_probiou_close_to_reference(family):
    import detkernels as dk

    rng = np.random.default_rng(18)
    for dtype in (np.float32, np.float64):
        a = make(family, rng, 200).astype(dtype)
        a[:, 4] = np.deg2rad(a[:, 4])  # ultralytics' xywhr: radians
        want = R.probiou(a, a)
        got = dk.probiou(torch.from_numpy(a).cuda(), torch.from_numpy(a).cuda(),
                         backend="native").cpu().numpy()
        assert got.dtype == want.dtype
        assert (np.isnan(got) == np.isnan(want)).all()
        fin = ~np.isnan(want)
        if dtype == np.float32:
            ulps = np.abs(got[fin].view(np.int32).astype(np.int64) - want[fin].view(np.int32))
            assert ulps.max(initial=0) <= 2, f"{family}: {ulps.max()} ulp"
        else:
            assert np.abs(got[fin] - want[fin]).max(initial=0) <= 1e-14, family
