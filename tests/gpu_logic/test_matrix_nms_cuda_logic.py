"""The CUDA Matrix NMS pipeline (csrc/ops/nms/matrix_nms_gpu.h S1-S6, launched by
matrix_nms_cuda.cu).

Without a GPU: the same step functions run on the CPU (matrix_nms_emulate.cpp: CUB's radix sorts
as stable sorts by the same keys and bit counts, the column kernels as loops over blocks of
positions, shared-memory row tiles and threads) and must equal the NumPy reference byte for byte
on every input family, both kernels, several sigmas, with and without score_threshold,
max_output and pre_top_k, one class and many, empty and one-box inputs, and a few thousand boxes
(many tiles per column). With a GPU (skipped otherwise): the real kernels through the public API.
"""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import matrix_nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES
from _gpu import needs_gpu, torch

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

DTYPES = (np.float32, np.float64)
# (kernel, sigma, score_threshold, max_output, pre_top_k), as tests/ops/test_matrix_nms.py.
PARAMS = [("gaussian", 2.0, None, None, None), ("gaussian", 0.5, 0.05, 20, None),
          ("linear", 2.0, None, None, 60), ("linear", 2.0, 0.2, 5, 100),
          ("gaussian", 8.0, 0.0, None, 1)]


def _emulate(b, s, labels, kernel, sigma, thr, k, pre):
    return native.matrix_nms_emulated(np.ascontiguousarray(b), np.ascontiguousarray(s),
                                      np.ascontiguousarray(labels.astype(np.int64)), kernel, sigma,
                                      thr, k, pre)


def _check(b, s, labels, params, what):
    want = ref.matrix_nms(b, s, labels, *params)
    got = _emulate(b, s, labels, *params)
    assert_bytes_equal(got[0], want[0], what + " indices")
    assert_bytes_equal(got[1], want[1], what + " scores")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(map(str, p)))
def test_emulated_equals_reference(family, params):
    rng = np.random.default_rng(31)
    boxes, scores, classes = FAMILIES[family](rng, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for labels in (classes, np.zeros_like(classes)):
            _check(b, s, labels, params, f"{family} {dtype.__name__} classes={np.unique(labels).size}")


@pytest.mark.parametrize("kernel", ref.KERNELS)
@pytest.mark.parametrize("family", ["clusters", "degenerate"])
def test_emulated_several_thousand_boxes(kernel, family):
    """N = 2 500: columns spanning ten row tiles, class segments starting mid-tile."""
    rng = np.random.default_rng(3)
    boxes, scores, classes = FAMILIES[family](rng, 2500)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    for labels in (np.zeros_like(classes), classes % 3):
        _check(b, s, labels, (kernel, 2.0, None, None, None), f"classes={np.unique(labels).size}")


def test_wild_ties_signed_zero_decays():
    """Inverted / huge boxes give IoUs outside [0, 1]: den < 0 makes -0 / +0 weights whose running
    min depends on the order; the columns fold rows in the reference's rank order."""
    b = np.array([[0, 0, 10, 10], [10, 10, 0, 0], [0, 0, 10, 10], [5, 5, -5, -5], [0, 0, 10, 10],
                  [2, 2, 8, 8], [0, 0, 1e30, 1e30], [10, 10, 0, 0]], np.float64)
    s = np.array([0.9, 0.8, 0.8, np.nan, -0.0, 0.0, 0.7, 0.8])
    for dtype in DTYPES:
        for params in (("linear", 2.0, None, None, None), ("gaussian", 0.5, None, None, None)):
            _check(b.astype(dtype), s.astype(dtype), np.zeros(8, np.int64), params,
                   f"{dtype.__name__} {params[0]}")


def test_empty_and_one_box():
    for dtype in DTYPES:
        got = _emulate(np.zeros((0, 4), dtype), np.zeros(0, dtype), np.zeros(0, np.int64),
                       "gaussian", 2.0, None, None, None)
        assert got[0].size == 0 and got[1].dtype == dtype
        one = np.array([[1, 2, 3, 4]], dtype)
        for thr in (None, 0.5, 0.95):
            _check(one, np.array([0.9], dtype), np.array([3]), ("linear", 2.0, thr, None, None),
                   f"one box thr={thr}")
        _check(one, np.array([0.9], dtype), np.array([3]), ("linear", 2.0, None, 0, None), "K=0")


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_points_built_and_fail_cleanly_without_a_gpu():
    """A CUDA build exports the Matrix NMS launchers; with no usable GPU they raise, never crash."""
    C = native._C
    assert all(hasattr(C, f) for f in ("matrix_nms_cuda", "matrix_nms_cuda_workspace_bytes"))
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launchers")
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.matrix_nms_cuda_workspace_bytes(0, 10, 0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.matrix_nms_cuda(0, 0, 0, 0, 10, 0, 2.0, False, 0.0, -1, -1, 0, 0, 0, 0, 1 << 20, 0, 0)


@needs_gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", PARAMS[:4], ids=lambda p: "-".join(map(str, p)))
def test_gpu_matrix_nms_equals_reference(family, params):
    import detkernels as dk

    rng = np.random.default_rng(9)
    boxes, scores, classes = FAMILIES[family](rng, 2000)
    kernel, sigma, thr, k, pre = params
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        want = ref.matrix_nms(b, s, classes, *params)
        got = dk.matrix_nms(torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda(),
                            torch.from_numpy(classes).cuda(), kernel=kernel, sigma=sigma,
                            score_threshold=thr, max_output=k, pre_top_k=pre, backend="native")
        assert got[0].device.type == "cuda"
        assert_bytes_equal(got[0].cpu(), want[0], f"{family} {dtype.__name__} indices")
        assert_bytes_equal(got[1].cpu(), want[1], f"{family} {dtype.__name__} scores")
