"""nms / batched_nms: every backend equal (order included) to the NumPy reference; the reference
equal to torchvision's CPU kernel; thresholds, ties, NaN, sizes around the 64-box word, errors."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels.reference import nms as R

from _helpers import assert_bytes_equal
from conftest import CPU_BACKENDS, backend_param
from families import FAMILIES, make

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0, -0.1)
SIZES = (0, 1, 2, 63, 64, 65, 200)


def _eq(actual, expected, what=""):
    assert_bytes_equal(np.asarray(actual), np.asarray(expected, dtype=np.int64), what)


@pytest.mark.parametrize("backend", [backend_param(b, "nms") for b in CPU_BACKENDS])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nms_matches_reference(backend, family, dtype, rng):
    for n in SIZES:
        b, s = make(family, rng, n, dtype)
        for thr in THRESHOLDS:
            _eq(detkernels.nms(b, s, thr, backend=backend), R.nms(b, s, thr), f"n={n} thr={thr}")


@pytest.mark.parametrize("backend", [backend_param(b, "nms") for b in CPU_BACKENDS])
@pytest.mark.parametrize("family", ["uniform", "clustered", "ties", "nonfinite"])
@pytest.mark.parametrize("nclasses", [1, 3, 80])
def test_batched_nms_matches_reference(backend, family, nclasses, rng):
    for n in (0, 1, 65, 300):
        b, s = make(family, rng, n, "float32")
        c = rng.integers(0, nclasses, n)
        for thr in (0.3, 0.5, 0.7):
            _eq(detkernels.batched_nms(b, s, c, thr, backend=backend), R.batched_nms(b, s, c, thr),
                f"n={n} thr={thr}")


@pytest.mark.parametrize("n", [2000, 5000])
def test_large_and_thread_independent(n, rng):
    """Several thousand boxes: several 512-candidate blocks, parallel steps; any thread count."""
    b, s = make("clustered", rng, n, "float32")
    u, su = make("uniform", rng, n, "float32")
    ref, refu = R.nms(b, s, 0.5), R.nms(u, su, 0.5)
    for threads in (1, 2, 4):
        detkernels.set_num_threads(threads)
        _eq(detkernels.nms(b, s, 0.5), ref, f"clustered, {threads} threads")
        _eq(detkernels.nms(u, su, 0.5), refu, f"uniform, {threads} threads")
    c = rng.integers(0, 80, n)
    _eq(detkernels.batched_nms(u, su, c, 0.5), R.batched_nms(u, su, c, 0.5), "batched")
    detkernels.set_num_threads(2)


def test_many_classes(rng):
    """1000+ classes: per-class segments run in parallel."""
    b, s = make("uniform", rng, 3000, "float64")
    c = rng.integers(0, 1500, 3000)
    _eq(detkernels.batched_nms(b, s, c, 0.4), R.batched_nms(b, s, c, 0.4))


def test_threshold_semantics():
    """IoU exactly at the threshold is kept (strict >), and the compare is in double: a float32
    IoU equal to float32(0.3) = 0.300000012 is suppressed at thr=0.3 but float32(0.7) = 0.69999999
    is kept at thr=0.7 (torchvision CPU; docs/SPEC.md divergence 1 for CUDA)."""
    a = np.array([[0, 0, 2, 1], [0, 0, 1, 1]], np.float32)   # IoU 0.5
    s = np.array([0.9, 0.8], np.float32)
    _eq(detkernels.nms(a, s, 0.5), [0, 1])
    _eq(detkernels.nms(a, s, np.nextafter(0.5, 0)), [0])
    # [0,0,3,1] vs [0,0,10,1]: float32 IoU 3/10 == float32(0.3); [0,0,7,1]: 7/10 == float32(0.7).
    big = np.array([0, 0, 10, 1], np.float32)
    for w, thr, expect in ((3, 0.3, [0]), (7, 0.7, [0, 1])):
        b = np.stack([big, np.array([0, 0, w, 1], np.float32)])
        assert R.nms(b, np.float32([1, 0]), -1.0).size == 1
        iou = np.float32(w) / ((np.float32(w) + np.float32(10)) - np.float32(w))
        assert iou == np.float32(thr) and float(iou) != thr
        for backend in ("native", "numpy"):
            _eq(detkernels.nms(b, s, thr, backend=backend), expect, f"thr={thr} {backend}")


def test_ties_nan_order():
    b = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], np.float32)
    s = np.array([0.5, np.nan, 0.7, 0.5], np.float32)
    _eq(detkernels.nms(b, s, 0.5), [1, 2, 0, 3])  # NaN first, ties by index
    s = np.array([-np.inf, np.inf, 0.0, -0.0], np.float32)
    _eq(detkernels.nms(b, s, 0.5), [1, 2, 3, 0])  # -0.0 ties with 0.0
    same = np.repeat(b[:1], 4, 0)
    _eq(detkernels.nms(same, np.float32([0.1, 0.2, 0.2, 0.1]), 0.5), [1])


def test_dtypes(rng):
    b, s = make("clustered", rng, 100, "float32")
    ref = R.nms(b, s, 0.5)
    _eq(detkernels.nms(b.astype(np.float16), s.astype(np.float16), 0.5),
        R.nms(b.astype(np.float16).astype(np.float32), s.astype(np.float16).astype(np.float32), 0.5))
    _eq(detkernels.nms(b, s.astype(np.float64), 0.5), R.nms(b.astype(np.float64), s.astype(np.float64), 0.5))
    _eq(detkernels.nms(np.asfortranarray(b), s[::-1].copy()[::-1], 0.5), ref)
    c = rng.integers(0, 4, 100)
    for cdt in (np.int8, np.int32, np.uint8, np.float32, np.float64):
        _eq(detkernels.batched_nms(b, s, c.astype(cdt), 0.5), R.batched_nms(b, s, c, 0.5), str(cdt))
    frac = rng.choice(np.array([0.5, 0.7, 1.5]), 100)  # float class ids: grouped by exact value
    _eq(detkernels.batched_nms(b, s, frac, 0.5), R.batched_nms(b, s, frac, 0.5))


def test_errors():
    b, s = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    with pytest.raises(RuntimeError, match="boxes should be a 2d tensor"):
        detkernels.nms(np.zeros((3, 5), np.float32), s, 0.5)
    with pytest.raises(RuntimeError, match="scores should be a 1d tensor"):
        detkernels.nms(b, np.zeros((3, 1), np.float32), 0.5)
    with pytest.raises(RuntimeError, match="same number of elements"):
        detkernels.nms(b, np.zeros(4, np.float32), 0.5)
    with pytest.raises(TypeError, match="boxes must be a floating point"):
        detkernels.nms(b.astype(np.int64), s, 0.5)
    with pytest.raises(RuntimeError, match="idxs should be a 1d tensor"):
        detkernels.batched_nms(b, s, np.zeros(2, np.int64), 0.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        detkernels.nms(b, s, "half")
    with pytest.raises(TypeError, match="expected a NumPy array"):
        detkernels.nms(b, [0.1, 0.2, 0.3], 0.5)


# ---- parity with torchvision -----------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_matches_torchvision(tv_ops, torch, family, dtype, rng):
    for n in (0, 1, 65, 700):
        b, s = make(family, rng, n, dtype)
        for thr in THRESHOLDS:
            tv = tv_ops.nms(torch.from_numpy(b), torch.from_numpy(s), thr).numpy()
            _eq(R.nms(b, s, thr), tv, f"n={n} thr={thr}")


@pytest.mark.parametrize("family", ["uniform", "clustered", "ties"])
def test_batched_reference_matches_torchvision(tv_ops, torch, family, rng):
    """Equal to torchvision up to the order among equal scores: torchvision's per-class path
    (> 1000 boxes on CPU) sorts its result with an unstable sort; detkernels orders ties by index
    (docs/SPEC.md divergence 2)."""
    for n in (50, 1500):
        b, s = make(family, rng, n, "float32")
        c = rng.integers(0, 5, n)
        ref = R.batched_nms(b, s, c, 0.5)
        tv = tv_ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c), 0.5).numpy()
        assert sorted(ref) == sorted(tv)
        assert_bytes_equal(s[ref], s[tv])


def test_batched_divergence_offset_trick(tv_ops, torch):
    """docs/SPEC.md divergence 2, pinned: the coordinate-offset trick leaks across classes for
    coordinates < -1 and loses precision for big ids; detkernels stays exact per class."""
    # max coordinate -1: the trick's offset idx * (max + 1) is 0, so classes share one space.
    b = np.array([[-10, -10, -1, -1], [-10, -10, -1, -1], [-9, -9, -2, -2]], np.float32)
    s = np.array([0.9, 0.8, 0.7], np.float32)
    c = np.array([0, 1, 1])
    exact = R.batched_nms(b, s, c, 0.5)
    _eq(exact, [0, 1])  # box 1 is alone in class 1 until box 2, which it suppresses
    _eq(detkernels.batched_nms(b, s, c, 0.5), exact)
    trick = tv_ops.boxes._batched_nms_coordinate_trick(torch.from_numpy(b), torch.from_numpy(s),
                                                       torch.from_numpy(c), 0.5).numpy()
    _eq(trick, [0])  # torchvision's trick lets class 0 suppress class 1
