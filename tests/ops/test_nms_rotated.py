"""nms_rotated / batched_nms_rotated: every backend byte for byte against the NumPy reference on
the rotated families; the reference against greedy NMS composed from torchvision's rotated
box_iou matrix; hand-computed cases; thresholds at the IoU; errors."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels.reference import rotated as R

from _helpers import assert_bytes_equal
from _rotated_families import FAMILIES, make
from conftest import backend_param

BACKENDS = [backend_param(b, "nms_rotated") for b in ("native", "numpy")]


def _scores(rng, n, dtype, family):
    if family == "identical":  # ties: a handful of values
        return rng.choice(np.array([0.25, 0.5, 1.0]), n).astype(dtype)
    s = rng.random(n).astype(dtype)
    if family == "nonfinite":
        s[rng.random(n) < 0.1] = np.nan
    return s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_reference(backend, family, dtype, rng):
    b = make(family, rng, 80).astype(dtype)
    s = _scores(rng, 80, dtype, family)
    c = rng.integers(0, 3, 80)
    for thr in (0.0, 0.4, -0.5):
        assert_bytes_equal(detkernels.nms_rotated(b, s, thr, backend=backend), R.nms_rotated(b, s, thr),
                           f"thr {thr}")
        assert_bytes_equal(detkernels.batched_nms_rotated(b, s, c, thr, backend=backend),
                           R.batched_nms_rotated(b, s, c, thr), f"batched thr {thr}")


def _greedy(iou, scores, thr):
    """Greedy NMS on a precomputed IoU matrix (row: kept box), descending score, stable ties."""
    order = np.lexsort((-scores, ~np.isnan(scores)))
    dead = np.zeros(len(order), bool)
    keep = []
    for a, i in enumerate(order):
        if dead[a]:
            continue
        keep.append(i)
        dead[a + 1:] |= iou[i, order[a + 1:]].astype(np.float64) > thr
    return np.array(keep, np.int64)


@pytest.mark.parametrize("family", ["uniform", "clustered", "identical", "touching", "nonfinite"])
def test_matches_greedy_on_torchvision_iou(family, rng, torch, tv_ops):
    """float32 boxes: the IoU in the working type is float32, so greedy NMS on torchvision's own
    rotated IoU matrix is the same computation, composed independently."""
    b = make(family, rng, 150).astype("float32")
    s = _scores(rng, 150, "float32", family)
    iou = tv_ops.box_iou(torch.from_numpy(b), torch.from_numpy(b), fmt="cxcywhr").numpy()
    for thr in (0.1, 0.5):
        assert_bytes_equal(detkernels.nms_rotated(torch.from_numpy(b), torch.from_numpy(s), thr),
                           torch.from_numpy(_greedy(iou, s, thr)), f"thr {thr}")


def test_threshold_equal_to_iou_keeps(rng):
    """IoU exactly at the threshold does not suppress (strict >), one ulp below does."""
    b = np.array([[0, 0, 4, 2, 0], [2, 0, 4, 2, 0]], np.float32)  # IoU 1/3 in float32
    s = np.array([0.9, 0.8], np.float32)
    iou = float(detkernels.box_iou(b[:1], b[1:], fmt="cxcywhr")[0, 0])
    assert detkernels.nms_rotated(b, s, iou).tolist() == [0, 1]
    assert detkernels.nms_rotated(b, s, np.nextafter(iou, 0)).tolist() == [0]


def test_hand_computed():
    # Three boxes: a 90-degree-turned duplicate of the best (suppressed), a disjoint one (kept),
    # a contained one with IoU 1/4 (kept at 0.3, suppressed at 0.2).
    b = np.array([[0, 0, 4, 2, 0], [0, 0, 2, 4, 90], [50, 50, 4, 2, 30], [0, 0, 2, 1, 0]], np.float64)
    s = np.array([0.9, 0.8, 0.7, 0.6])
    assert detkernels.nms_rotated(b, s, 0.3).tolist() == [0, 2, 3]
    assert detkernels.nms_rotated(b, s, 0.2).tolist() == [0, 2]
    assert detkernels.batched_nms_rotated(b, s, np.array([0, 1, 0, 0]), 0.2).tolist() == [0, 1, 2]
    # xyxyxyxy input converts first, the result is the same.
    from torchvision.ops import box_convert
    import torch

    corners = box_convert(torch.from_numpy(b), "cxcywhr", "xyxyxyxy")
    assert detkernels.nms_rotated(corners, torch.from_numpy(s), 0.3, fmt="xyxyxyxy").tolist() == [0, 2, 3]


def test_empty_and_errors():
    assert detkernels.nms_rotated(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)
    with pytest.raises(RuntimeError, match=r"shape \[N, 5\]"):
        detkernels.nms_rotated(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.5)
    with pytest.raises(RuntimeError, match="scores should be"):
        detkernels.nms_rotated(np.zeros((3, 5), np.float32), np.zeros(2, np.float32), 0.5)
    with pytest.raises(ValueError, match="fmt must be one of"):
        detkernels.nms_rotated(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), 0.5, fmt="xyxy")
    with pytest.raises(TypeError, match="iou_threshold must be a real number"):
        detkernels.nms_rotated(np.zeros((3, 5), np.float32), np.zeros(3, np.float32), "0.5")


# ---- ProbIoU (ultralytics' OBB metric) ----------------------------------------------------------------

def _radians(b):
    b = b.copy()
    b[:, 4] = np.deg2rad(b[:, 4])
    return b


@pytest.mark.parametrize("backend", [backend_param(b, "probiou") for b in ("native", "numpy")])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probiou_matches_reference(backend, family, dtype, rng):
    b = _radians(make(family, rng, 50)).astype(dtype)
    c = _radians(make(family, rng, 31)).astype(dtype)
    assert_bytes_equal(detkernels.probiou(b, c, backend=backend), R.probiou(b, c))
    s = _scores(rng, 50, dtype, family)
    k = rng.integers(0, 3, 50)
    for fast in (False, True):
        for idxs in (None, k):
            assert_bytes_equal(detkernels.nms_probiou(b, s, 0.4, idxs, fast=fast, backend=backend),
                               R.nms_probiou(b, s, 0.4, idxs, fast=fast), f"fast={fast}")


@pytest.mark.parametrize("family", ["uniform", "clustered", "containment", "touching", "symmetric", "identical"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_probiou_close_to_ultralytics(family, dtype, rng, torch):
    """Same formula and order; libm's exp/log/cos/sin vs torch's (SLEEF): within 2e-4 (measured
    1.3e-4 on near-duplicates in float32, where 1 - sqrt(eps + tiny) amplifies an ulp; 7e-7
    elsewhere; 1.3e-13 in float64). Degenerate (zero-width) boxes are left out: the formula's
    cancellation there makes both sides' results ulp-sensitive (NaN on one, 0 on the other)."""
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    b = _radians(make(family, rng, 60)).astype(dtype)
    want = metrics.batch_probiou(torch.from_numpy(b), torch.from_numpy(b)).numpy()
    got = detkernels.probiou(b, b)
    assert got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 if dtype == "float32" else 1e-12)


def test_fast_nms_probiou_is_ultralytics_obb_nms(rng, torch):
    """ultralytics' OBB post-process (TorchNMS.fast_nms with batch_probiou): the same kept boxes
    in the same order (distinct scores; no ProbIoU within 1e-5 of the threshold, where the last
    bits of exp/log could decide) -- without its dense N x N matrix."""
    nms_mod = pytest.importorskip("ultralytics.utils.nms")
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    b = _radians(make("clustered", rng, 400)).astype("float32")
    s = rng.permutation(400).astype("float32") / 400
    iou = detkernels.probiou(b, b)
    thr = max((0.4, 0.45, 0.5, 0.55, 0.6), key=lambda t: np.abs(iou - t).min())
    assert np.abs(iou - thr).min() > 1e-5  # clear of the threshold (the values differ by < 1e-6)
    want = nms_mod.TorchNMS.fast_nms(torch.from_numpy(b), torch.from_numpy(s), thr,
                                     iou_func=metrics.batch_probiou).numpy()
    got = detkernels.nms_probiou(b, s, thr, fast=True)
    assert got.tolist() == want.tolist()
    greedy = detkernels.nms_probiou(b, s, thr)
    assert set(got.tolist()) <= set(greedy.tolist())  # Fast-NMS suppresses at least as much


def test_probiou_shapes_and_errors():
    b = np.zeros((2, 3, 5), np.float32)
    b[..., 2:4] = 1
    assert detkernels.probiou(b, b[0]).shape == (2, 3, 3)
    assert detkernels.probiou(b.astype(np.float64), b).dtype == np.float64
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., N, 5\]"):
        detkernels.probiou(np.zeros((2, 4)), b)
    with pytest.raises(RuntimeError, match=r"shape \[N, 5\]"):
        detkernels.nms_probiou(np.zeros((2, 8), np.float32), np.zeros(2, np.float32), 0.5)
    assert detkernels.nms_probiou(np.zeros((0, 5), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


def test_compile_and_export(rng, torch):
    """The custom ops detkernels::nms_rotated / nms_probiou (fake kernels with a data-dependent
    size): torch.compile(fullgraph=True) and torch.export give eager's result."""
    b = torch.from_numpy(make("clustered", rng, 60).astype("float32"))
    s = torch.from_numpy(rng.random(60).astype("float32"))
    c = torch.from_numpy(rng.integers(0, 3, 60))

    def f(x, y, z):
        return (detkernels.nms_rotated(x, y, 0.3), detkernels.batched_nms_rotated(x, y, z, 0.3),
                detkernels.nms_probiou(x, y, 0.3, fast=True))

    want = f(b, s, c)
    torch._dynamo.reset()
    for g, w in zip(torch.compile(f, fullgraph=True, backend="eager")(b, s, c), want):
        assert_bytes_equal(g, w, "compile")

    class M(torch.nn.Module):
        def forward(self, x, y, z):
            return f(x, y, z)

    ep = torch.export.export(M(), (b, s, c))
    for g, w in zip(ep.module()(b, s, c), want):
        assert_bytes_equal(g, w, "export")
