"""The CUDA Soft-NMS kernel (csrc/ops/nms/soft_nms_gpu.h steps, launched by soft_nms_cuda.cu).

Without a GPU: the same step functions run on the CPU (soft_nms_emulate.cpp: one emulated block
per image, its threads owning boxes t, t + T, ..., the argmax as the kernel's halving tree) and
must equal the NumPy reference byte for byte on every input family (ties, exact-threshold IoUs,
degenerate and non-finite boxes, many classes), both methods, several sigmas and score
thresholds, max_output, empty and one-box inputs, a few thousand boxes, and thread counts from 1
to 256. With a GPU (skipped otherwise): the real kernel through the public API.
"""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import soft_nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from _gpu import needs_gpu, torch

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

DTYPES = (np.float32, np.float64)
# (method, iou_threshold, sigma, score_threshold), as tests/ops/test_soft_nms.py: defaults, the
# families' exact-threshold IoUs, small / large sigma, high / negative / -inf score thresholds.
PARAMS = [("linear", 0.3, 0.5, 0.001), ("linear", 0.5, 0.5, 0.3), ("linear", 0.7, 0.5, 0.001),
          ("linear", -0.5, 0.5, -1.0), ("gaussian", 0.3, 0.5, 0.001), ("gaussian", 0.3, 0.05, 0.2),
          ("gaussian", 0.3, 2.0, -np.inf)]


def _emulate_single(b, s, idxs, method, thr, sigma, sthr, max_output=None, threads=8):
    """soft_nms as the CUDA path runs it: the multi-image kernel with B = 1, then compacted."""
    n = b.shape[0]
    k = n if max_output is None else min(max_output, n)
    out, vals, counts = native.soft_nms_multi_emulated(
        np.ascontiguousarray(b[None]), np.ascontiguousarray(s[None]),
        None if idxs is None else np.ascontiguousarray(idxs[None].astype(np.int64)), k, thr, sigma,
        method, sthr, threads=threads)
    c = int(counts[0])
    assert (out[0, c:] == -1).all() and (vals[0, c:] == 0).all()
    return out[0, :c], vals[0, :c]


def _want(b, s, idxs, method, thr, sigma, sthr, max_output=None):
    if idxs is None:
        return ref.soft_nms(b, s, thr, sigma, method, sthr, max_output)
    return ref.batched_soft_nms(b, s, idxs, thr, sigma, method, sthr, max_output)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}-{p[3]}")
def test_emulated_equals_reference(family, params):
    rng = np.random.default_rng(7)
    boxes, scores, classes = FAMILIES[family](rng, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for idxs, k, threads in ((None, None, 8), (classes, None, 32), (None, 9, 1), (classes, 9, 4)):
            want = _want(b, s, idxs, *params, max_output=k)
            got = _emulate_single(b, s, idxs, *params, max_output=k, threads=threads)
            what = f"{family} {dtype.__name__} idxs={idxs is not None} max_output={k} T={threads}"
            assert_bytes_equal(got[0], want[0], what + " indices")
            assert_bytes_equal(got[1], want[1], what + " scores")


@pytest.mark.parametrize("family", ["ties", "at_threshold", "nonfinite", "many_classes"])
@pytest.mark.parametrize("with_idxs", [False, True])
def test_emulated_multi_image_equals_reference(family, with_idxs):
    """B = 3 images in one launch, fixed-size outputs: -1 / 0 padding, counts, max_output cap."""
    boxes, scores, classes = batch(family, 3, 3, 120)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        c = classes if with_idxs else None
        for K in (1, 7, 200):
            for method, thr, sigma, sthr in (PARAMS[0], PARAMS[5]):
                want = ref.multi_image_soft_nms(b, s, K, thr, sigma, method, sthr, c)
                got = native.soft_nms_multi_emulated(b, s, c, K, thr, sigma, method, sthr, threads=16)
                what = f"{family} {dtype.__name__} K={K} {method}"
                for g, w, name in zip(got, want, ("indices", "scores", "counts")):
                    assert_bytes_equal(g, w, f"{what} {name}")


@pytest.mark.parametrize("method", ref.METHODS)
@pytest.mark.parametrize("family", ["uniform", "clusters"])
def test_emulated_several_thousand_boxes(method, family):
    """N = 3 000 per image in global memory: block-strided ownership, long decay chains."""
    rng = np.random.default_rng(11)
    boxes, scores, classes = FAMILIES[family](rng, 3000)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    for idxs in (None, classes % 4):
        want = _want(b, s, idxs, method, 0.3, 0.5, 0.001)
        got = _emulate_single(b, s, idxs, method, 0.3, 0.5, 0.001, threads=256)
        assert_bytes_equal(got[0], want[0], f"idxs={idxs is not None} indices")
        assert_bytes_equal(got[1], want[1], f"idxs={idxs is not None} scores")


@pytest.mark.parametrize("threads", [1, 2, 64, 256])
def test_argmax_tree_shape_does_not_matter(threads):
    """Ties (equal scores, +-0, NaN) resolve to the lowest index whatever the reduction tree."""
    b = np.array([[0, 0, 10, 10]] * 6 + [[50, 50, 60, 60]] * 4, np.float32)
    s = np.array([0.5, np.nan, 0.5, -0.0, 0.0, np.nan, 0.5, 0.5, 0.0, -0.0], np.float32)
    for method in ref.METHODS:
        want = _want(b, s, None, method, 0.3, 0.5, -np.inf)
        got = _emulate_single(b, s, None, method, 0.3, 0.5, -np.inf, threads=threads)
        assert_bytes_equal(got[0], want[0], f"{method} indices")
        assert_bytes_equal(got[1], want[1], f"{method} scores")


def test_empty_one_box_and_zero_slots():
    for dtype in DTYPES:
        e = np.zeros((0, 4), dtype)
        got = _emulate_single(e, np.zeros(0, dtype), None, "linear", 0.3, 0.5, 0.001)
        assert got[0].size == 0 and got[1].dtype == dtype
        one = np.array([[1, 2, 3, 4]], dtype)
        for sc, kept in ((0.9, 1), (1e-4, 0)):  # above / below the score threshold
            got = _emulate_single(one, np.array([sc], dtype), None, "gaussian", 0.3, 0.5, 0.001)
            assert_bytes_equal(got[0], np.arange(kept, dtype=np.int64), "one box")
        b = np.zeros((2, 0, 4), dtype)
        out, vals, counts = native.soft_nms_multi_emulated(b, np.zeros((2, 0), dtype), None, 3,
                                                           0.3, 0.5, "linear", 0.001)
        assert (out == -1).all() and (vals == 0).all() and (counts == 0).all()
        b = np.tile(one, (2, 5, 1))
        out, vals, counts = native.soft_nms_multi_emulated(b, np.ones((2, 5), dtype), None, 0,
                                                           0.3, 0.5, "linear", 0.001)
        assert out.shape == (2, 0) and (counts == 0).all()


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_points_built_and_fail_cleanly_without_a_gpu():
    """A CUDA build exports the Soft-NMS launcher; with no usable GPU it raises, never crashes."""
    C = native._C
    assert all(hasattr(C, f) for f in ("soft_nms_multi_cuda", "soft_nms_multi_cuda_workspace_bytes"))
    nbytes = C.soft_nms_multi_cuda_workspace_bytes(0, 2, 10, True)
    assert nbytes >= 2 * 10 * (4 + 1 + 4 + 8 + 4)  # s, alive, cnt, pick list per box
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launcher")
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.soft_nms_multi_cuda(0, 0, 0, 0, 1, 10, 0.3, 0.5, 0, 0.001, 10, 0, 0, 0, 0, nbytes, 0, 0)


@needs_gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", [PARAMS[0], PARAMS[1], PARAMS[5]], ids=lambda p: f"{p[0]}-{p[2]}")
def test_gpu_soft_nms_equals_reference(family, params):
    import detkernels as dk

    method, thr, sigma, sthr = params
    rng = np.random.default_rng(5)
    boxes, scores, classes = FAMILIES[family](rng, 2000)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for idxs, k in ((None, None), (classes, 50)):
            want = _want(b, s, idxs, method, thr, sigma, sthr, max_output=k)
            got = dk.soft_nms(torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda(), thr,
                              sigma=sigma, method=method, score_threshold=sthr, max_output=k,
                              idxs=None if idxs is None else torch.from_numpy(idxs).cuda(),
                              backend="native")
            assert got[0].device.type == "cuda"
            assert_bytes_equal(got[0].cpu(), want[0], f"{family} {dtype.__name__} indices")
            assert_bytes_equal(got[1].cpu(), want[1], f"{family} {dtype.__name__} scores")


@needs_gpu
@pytest.mark.parametrize("with_idxs", [False, True])
def test_gpu_multi_image_soft_nms_equals_reference(with_idxs):
    import detkernels as dk

    boxes, scores, classes = batch("clusters", 2, 4, 1500)
    c = classes if with_idxs else None
    want = ref.multi_image_soft_nms(boxes, scores, 100, 0.3, 0.5, "gaussian", 0.001, c)
    got = dk.multi_image_soft_nms(torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(),
                                  100, 0.3, method="gaussian",
                                  idxs=None if c is None else torch.from_numpy(c).cuda(),
                                  backend="native")
    for g, w, name in zip(got, want, ("indices", "scores", "counts")):
        assert_bytes_equal(g.cpu(), w, name)
