"""IoU family: every backend byte-for-byte against the NumPy reference; the reference against
torchvision; shapes, dtypes, broadcasting and errors."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels.reference import box_iou as R

from _helpers import assert_bytes_equal, assert_values_equal
from conftest import CPU_BACKENDS, backend_param
from families import FAMILIES, make

KINDS = {
    "iou": ("box_iou", {}),
    "giou": ("generalized_box_iou", {}),
    "diou": ("distance_box_iou", {}),
    "ciou": ("complete_box_iou", {}),
}


def _call(name, b1, b2, **kw):
    return getattr(detkernels, name)(b1, b2, **kw)


@pytest.mark.parametrize("backend", [backend_param(b, "box_iou") for b in CPU_BACKENDS])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_matches_reference(backend, family, dtype, kind, rng):
    name, _ = KINDS[kind]
    for n, m in ((1, 1), (17, 33), (63, 65)):
        b1, _ = make(family, rng, n, dtype)
        b2, _ = make(family, rng, m, dtype)
        assert_bytes_equal(_call(name, b1, b2, backend=backend), getattr(R, name)(b1, b2), f"{name} {n}x{m}")


@pytest.mark.parametrize("backend", [backend_param(b, "box_iou") for b in CPU_BACKENDS])
@pytest.mark.parametrize("fmt", ["xyxy", "xywh", "cxcywh"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_formats(backend, fmt, dtype, rng):
    b1, _ = make("uniform", rng, 40, dtype)
    b2, _ = make("degenerate", rng, 30, dtype)
    assert_bytes_equal(detkernels.box_iou(b1, b2, fmt=fmt, backend=backend), R.box_iou(b1, b2, fmt=fmt))


def test_large_threaded_matches_reference(rng):
    """Big enough that the native kernel splits rows across threads; thread count is irrelevant."""
    b1, _ = make("uniform", rng, 1500, "float32")
    b2, _ = make("clustered", rng, 700, "float32")
    ref = R.box_iou(b1, b2)
    for threads in (1, 2, 3):
        detkernels.set_num_threads(threads)
        assert_bytes_equal(detkernels.box_iou(b1, b2), ref, f"{threads} threads")
    detkernels.set_num_threads(2)


def test_float_contraction_is_off(rng):
    """Proves the build's float rules: on these inputs an FMA-contracted union
    (area_a + area_b) - w*h would change the last bit of many IoUs; native must not."""
    b1, _ = make("uniform", rng, 300, "float32")
    b2, _ = make("uniform", rng, 300, "float32")
    b1[:, 2:] = b1[:, :2] + 180  # make most pairs overlap
    ref = R.box_iou(b1, b2)
    x1 = np.maximum(b1[:, None, 0], b2[None, :, 0]); x2 = np.minimum(b1[:, None, 2], b2[None, :, 2])
    y1 = np.maximum(b1[:, None, 1], b2[None, :, 1]); y2 = np.minimum(b1[:, None, 3], b2[None, :, 3])
    w, h = np.maximum(x2 - x1, 0), np.maximum(y2 - y1, 0)
    a1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1]); a2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    s = (a1[:, None] + a2[None, :]).astype(np.float64)
    fused_union = (s - w.astype(np.float64) * h.astype(np.float64)).astype(np.float32)  # one rounding
    fused = (w * h) / fused_union
    assert (fused != ref).sum() > 100, "test inputs no longer sensitive to FMA contraction"
    assert_bytes_equal(detkernels.box_iou(b1, b2, backend="native"), ref)
    info = detkernels.build_info()
    assert "-ffp-contract=off" in info["float_flags"]
    if info["cuda"]:
        assert "--fmad=false" in info["float_flags"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_batched_and_broadcast(kind, rng):
    name, _ = KINDS[kind]
    b1 = make("uniform", rng, 2 * 3 * 7, "float32")[0].reshape(2, 3, 7, 4)
    b2 = make("clustered", rng, 3 * 5, "float32")[0].reshape(3, 5, 4)
    out = _call(name, b1, b2)
    assert out.shape == (2, 3, 7, 5) and out.dtype == np.float32
    for i in range(2):
        for j in range(3):
            assert_bytes_equal(out[i, j], getattr(R, name)(b1[i, j], b2[j]))
    assert_bytes_equal(out, getattr(R, name)(b1, b2))


@pytest.mark.parametrize("shapes", [((0, 4), (5, 4)), ((5, 4), (0, 4)), ((0, 4), (0, 4)), ((2, 0, 4), (3, 4))])
def test_empty(shapes):
    b1, b2 = np.zeros(shapes[0], np.float32), np.zeros(shapes[1], np.float32)
    out = detkernels.box_iou(b1, b2)
    assert out.shape == R.box_iou(b1, b2).shape and out.dtype == np.float32


def test_dtypes(rng):
    b1, _ = make("uniform", rng, 9, "float32")
    b2, _ = make("uniform", rng, 4, "float64")
    assert detkernels.box_iou(b1, b2).dtype == np.float64  # promotion
    h1, h2 = b1.astype(np.float16), b2.astype(np.float16)
    out = detkernels.box_iou(h1, h2)  # docs/SPEC.md §1.5: all arithmetic in float32
    assert_bytes_equal(out, R.box_iou(h1.astype(np.float32), h2.astype(np.float32)))
    i1, i2 = (b1 * 4).astype(np.int16), (b2 * 4).astype(np.int16)
    assert_bytes_equal(detkernels.box_iou(i1, i2), R.box_iou(i1, i2))
    assert detkernels.box_iou(i1, i2).dtype == np.float32


def test_non_contiguous(rng):
    b1 = make("uniform", rng, 40, "float64")[0][::2]
    b2 = np.asfortranarray(make("uniform", rng, 10, "float64")[0])
    assert_bytes_equal(detkernels.box_iou(b1, b2), R.box_iou(np.ascontiguousarray(b1), b2))


def test_reference_goldens():
    """Hand-computed dyadic values: exact in every precision."""
    a = np.array([[0, 0, 2, 1]], np.float32)
    b = np.array([[0, 0, 1, 1], [1, 0, 3, 1], [4, 4, 5, 5], [0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(R.box_iou(a, b), np.float32([[0.5, 1 / 3, 0.0, 0.0]]))
    np.testing.assert_array_equal(R.box_iou(b[3:], b[3:]), [[np.nan]])  # 0/0, no epsilon
    # GIoU of disjoint unit boxes 1 apart: iou 0, enclosing area 3, union 2 -> -1/3
    np.testing.assert_array_equal(R.generalized_box_iou(b[:1], np.array([[2, 0, 3, 1]], np.float32)),
                                  np.float32([[0 - (3 - 2) / 3]]))
    np.testing.assert_array_equal(R.box_area(b), [1, 2, 1, 0])


def test_atan_accuracy():
    x = np.concatenate([np.linspace(-30, 30, 100001), [0.0, -0.0, 1e-30, 1e30, np.inf, -np.inf]])
    for dt, max_ulp in ((np.float32, 3), (np.float64, 2)):
        xx = x.astype(dt)
        exact = np.arctan(xx.astype(np.float64))
        err = np.abs(R.atan(xx).astype(np.float64) - exact) / np.spacing(np.abs(exact).astype(dt)).astype(np.float64)
        assert err.max() <= max_ulp, (dt, err.max())
    assert np.isnan(R.atan(np.float32([np.nan]))).all()


# ---- parity with torchvision -----------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_matches_torchvision(tv_ops, torch, family, dtype, kind, rng):
    name, _ = KINDS[kind]
    b1, _ = make(family, rng, 37, dtype)
    b2, _ = make(family, rng, 29, dtype)
    ref = getattr(R, name)(b1, b2)
    tv = getattr(tv_ops, name)(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
    if kind == "ciou":
        # Documented divergence: detkernels' own atan vs the platform's (SLEEF) atan. The
        # difference is a few ulp of atan, propagated through v and alpha.
        fin = np.isfinite(ref) & np.isfinite(tv)
        assert (np.isnan(ref) == np.isnan(tv)).all()
        np.testing.assert_allclose(ref[fin], tv[fin], rtol=2e-6 if dtype == "float32" else 1e-14,
                                   atol=1e-6 if dtype == "float32" else 1e-15)
    else:
        assert_values_equal(ref, tv, name)


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
def test_reference_formats_match_torchvision(tv_ops, torch, fmt, rng):
    b1, _ = make("uniform", rng, 30, "float32")
    b2, _ = make("degenerate", rng, 20, "float32")
    tv = tv_ops.box_iou(torch.from_numpy(b1), torch.from_numpy(b2), fmt=fmt).numpy()
    assert_values_equal(R.box_iou(b1, b2, fmt=fmt), tv)


def test_integer_matches_torchvision(tv_ops, torch, rng):
    b1 = rng.integers(0, 300, (20, 4)).astype(np.int32)
    b2 = rng.integers(0, 300, (15, 4)).astype(np.int32)
    for name in ("box_iou", "generalized_box_iou"):
        tv = getattr(tv_ops, name)(torch.from_numpy(b1), torch.from_numpy(b2)).numpy()
        assert_values_equal(getattr(detkernels, name)(b1, b2), tv, name)


# ---- errors ----------------------------------------------------------------------------------------

def test_errors():
    good = np.zeros((3, 4), np.float32)
    with pytest.raises(IndexError, match="boxes1"):
        detkernels.box_iou(np.zeros(4, np.float32), good)
    with pytest.raises(ValueError, match="boxes2 must have shape"):
        detkernels.box_iou(good, np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="fmt"):
        detkernels.box_iou(good, good, fmt="yxyx")
    with pytest.raises(ValueError, match=r"boxes1 must have shape \[\.\.\., N, 5\] for fmt='cxcywhr'"):
        detkernels.box_iou(good, good, fmt="cxcywhr")  # rotated: tests/ops/test_box_iou_rotated.py
    with pytest.raises(TypeError, match="boxes1"):
        detkernels.box_iou(good.astype(np.complex64), good)
    with pytest.raises(ValueError, match="do not broadcast"):
        detkernels.box_iou(np.zeros((2, 3, 4), np.float32), np.zeros((3, 3, 4), np.float32))
    with pytest.raises(ValueError, match="unknown backend"):
        detkernels.box_iou(good, good, backend="tensorrt")
    with pytest.raises(RuntimeError, match="cannot run box_iou"):
        detkernels.box_iou(good.astype(np.int32), good.astype(np.int32), backend="numba")
