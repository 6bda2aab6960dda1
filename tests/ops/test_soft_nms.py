"""Soft-NMS (detkernels.soft_nms): every CPU backend byte for byte against the NumPy reference
(detkernels/reference/soft_nms.py) on the NMS input families, dk_exp (the C++ exponential) against
the reference's and against the correctly rounded exp, the pinned differences from ensemble-boxes'
soft-NMS, the errors, and the torch custom op (eager, torch.compile, torch.export, opcheck)."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest

import detkernels as dk
from detkernels.reference import soft_nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES
from conftest import CPU_BACKENDS, backend_param

BACKENDS = [backend_param(b, "soft_nms") for b in CPU_BACKENDS]
DTYPES = (np.float32, np.float64)
# (method, iou_threshold, sigma, score_threshold): the defaults, the families' exact-threshold
# IoUs (0.5, 0.7), a small sigma, a high score threshold, a negative IoU threshold (linear:
# every overlapping box decays) and a negative score threshold (nothing leaves).
PARAMS = [("linear", 0.3, 0.5, 0.001), ("linear", 0.5, 0.5, 0.3), ("linear", 0.7, 0.5, 0.001),
          ("linear", -0.5, 0.5, -1.0), ("gaussian", 0.3, 0.5, 0.001), ("gaussian", 0.3, 0.05, 0.2),
          ("gaussian", 0.3, 2.0, -np.inf)]


def _call(b, s, method, thr, sigma, sthr, **kw):
    return dk.soft_nms(b, s, thr, sigma=sigma, method=method, score_threshold=sthr, **kw)


def _want(b, s, method, thr, sigma, sthr, idxs=None, max_output=None):
    if idxs is None:
        return ref.soft_nms(b, s, thr, sigma, method, sthr, max_output)
    return ref.batched_soft_nms(b, s, idxs, thr, sigma, method, sthr, max_output)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"{p[0]}-{p[1]}-{p[2]}-{p[3]}")
def test_equals_reference(backend, family, params):
    rng = np.random.default_rng(7)
    boxes, scores, classes = FAMILIES[family](rng, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for idxs, k in ((None, None), (classes, None), (None, 9), (classes, 9)):
            want = _want(b, s, *params, idxs=idxs, max_output=k)
            got = _call(b, s, *params, idxs=idxs, max_output=k, backend=backend)
            what = f"{backend} {family} {dtype.__name__} idxs={idxs is not None} max_output={k}"
            assert_bytes_equal(got[0], want[0], what + " indices")
            assert_bytes_equal(got[1], want[1], what + " scores")


@pytest.mark.parametrize("method", ref.METHODS)
@pytest.mark.parametrize("family", ["uniform", "clusters"])
def test_several_thousand_boxes(method, family):
    """N = 3 000: long decay chains, many blocks and bands of the native argmax/index."""
    rng = np.random.default_rng(11)
    boxes, scores, _ = FAMILIES[family](rng, 3000)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        want = ref.soft_nms(b, s, 0.3, 0.5, method, 0.001)
        got = dk.soft_nms(b, s, 0.3, method=method)
        assert_bytes_equal(got[0], want[0], f"{dtype.__name__} indices")
        assert_bytes_equal(got[1], want[1], f"{dtype.__name__} scores")


def test_mixed_sizes_and_wild_boxes():
    """Box sizes over 5 orders of magnitude (the native kernel's size levels), with NaN and
    infinite coordinates among them (its exhaustive path)."""
    rng = np.random.default_rng(13)
    for t in range(6):
        n = 300
        xy = rng.uniform(-100, 100, (n, 2))
        boxes = np.concatenate([xy, xy + np.exp(rng.uniform(-6, 6, (n, 2)))], 1)
        boxes[rng.integers(0, n, 6), rng.integers(0, 4, 6)] = [np.nan, np.inf, -np.inf] * 2 if t % 2 else 1e30
        scores = rng.uniform(size=n)
        for dtype in DTYPES:
            b, s = boxes.astype(dtype), scores.astype(dtype)
            for method in ref.METHODS:
                want = ref.soft_nms(b, s, 0.1, 0.3, method, 0.001)
                got = dk.soft_nms(b, s, 0.1, sigma=0.3, method=method)
                assert_bytes_equal(got[0], want[0], f"{t} {dtype.__name__} {method} indices")
                assert_bytes_equal(got[1], want[1], f"{t} {dtype.__name__} {method} scores")


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_and_empty(backend):
    for dtype in DTYPES:
        e = np.zeros((0, 4), dtype)
        k, v = dk.soft_nms(e, np.zeros(0, dtype), backend=backend)
        assert k.dtype == np.int64 and k.shape == (0,) and v.dtype == dtype and v.shape == (0,)
        one, s1 = np.array([[0, 0, 1, 1]], dtype), np.array([0.25], dtype)
        k, v = dk.soft_nms(one, s1, backend=backend)
        assert k.tolist() == [0] and v.tobytes() == s1.tobytes()
        k, v = dk.soft_nms(one, s1, max_output=0, backend=backend)
        assert k.shape == (0,) and v.dtype == dtype
        k, v = dk.soft_nms(one, s1, score_threshold=0.5, backend=backend)  # the first box too
        assert k.shape == (0,)


def test_half_inputs_compute_in_float32():
    rng = np.random.default_rng(3)
    boxes, scores, _ = FAMILIES["clusters"](rng, 100)
    b, s = boxes.astype(np.float16), scores.astype(np.float16)
    got = dk.soft_nms(b, s, method="gaussian")
    want = ref.soft_nms(b.astype(np.float32), s.astype(np.float32), 0.3, 0.5, "gaussian", 0.001)
    assert_bytes_equal(got[0], want[0], "indices")
    assert_bytes_equal(got[1], want[1], "scores (float32)")


# ---- the rule, pinned on hand-built inputs -----------------------------------------------------

def _pair(h, dtype):
    """[0,0,1,1] and [0,0,1,h]: IoU exactly h (dyadic h)."""
    return np.array([[0, 0, 1, 1], [0, 0, 1, h]], dtype), np.array([0.75, 0.5], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_decays_strictly_above_threshold(dtype):
    """iou == iou_threshold keeps the full score (the paper's code, ensemble-boxes; mmcv decays
    at >=); one ulp above decays by 1 - iou, one rounding in T."""
    b, s = _pair(0.5, dtype)
    k, v = dk.soft_nms(b, s, 0.5)
    assert k.tolist() == [0, 1] and v[1] == s[1]
    k, v = dk.soft_nms(b, s, float(np.nextafter(dtype(0.5), dtype(0))))
    assert v[1] == s[1] * (dtype(1) - dtype(0.5)) == dtype(0.25)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_weight_is_dk_exp(dtype):
    b, s = _pair(0.5, dtype)
    k, v = dk.soft_nms(b, s, method="gaussian", sigma=0.5)
    w = ref.dk_exp(np.array([-(dtype(0.5) * dtype(0.5)) / dtype(0.5)], dtype))[0]
    assert v.tobytes() == np.array([s[0], s[1] * w], dtype).tobytes()
    assert abs(float(w) - math.exp(-0.5)) <= float(np.spacing(dtype(w)))  # within 1 ulp


@pytest.mark.parametrize("method", ref.METHODS)
def test_disjoint_and_nan_iou_never_decay(method):
    """IoU 0 (disjoint) and NaN (identical zero-area boxes: 0/0) leave the score bit for bit."""
    b = np.array([[0, 0, 1, 1], [2, 2, 3, 3], [5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    s = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    k, v = dk.soft_nms(b, s, -1.0, method=method)  # linear with thr < 0: IoU 0 decays by 1 - 0
    assert k.tolist() == [0, 1, 2, 3] and v.tobytes() == s.tobytes()


def test_ties_go_to_the_lowest_index_and_nan_first():
    b = np.array([[0, 0, 1, 1], [10, 0, 11, 1], [20, 0, 21, 1], [30, 0, 31, 1]], np.float64)
    s = np.array([0.5, -0.0, 0.5, np.nan])
    k, v = dk.soft_nms(b, s, score_threshold=-1.0)
    assert k.tolist() == [3, 0, 2, 1]
    s = np.array([0.0, -0.0, 0.0, 0.0])  # -0 ties with +0
    assert dk.soft_nms(b, s, score_threshold=-1.0)[0].tolist() == [0, 1, 2, 3]


def test_classes_never_decay_each_other():
    rng = np.random.default_rng(5)
    boxes, scores, classes = FAMILIES["clusters"](rng, 300)
    k, v = dk.soft_nms(boxes, scores, method="gaussian", idxs=classes)
    parts = []
    for c in np.unique(classes):
        m = np.flatnonzero(classes == c)
        kc, vc = dk.soft_nms(boxes[m], scores[m], method="gaussian")
        parts += list(zip(m[kc].tolist(), vc.tolist()))
    parts.sort(key=lambda t: (-t[1], t[0]))
    assert list(zip(k.tolist(), v.tolist())) == parts


# ---- dk_exp ------------------------------------------------------------------------------------

def _ulps(a, b):
    it = np.int64 if a.dtype == np.float64 else np.int32
    return np.abs(a.view(it).astype(np.int64) - b.astype(a.dtype).view(it).astype(np.int64))


@pytest.mark.parametrize("dtype,lo,hi", [(np.float32, -110.0, 95.0), (np.float64, -750.0, 715.0)])
def test_dk_exp_cpp_equals_reference(dtype, lo, hi):
    from detkernels import _C

    x = np.concatenate([np.linspace(lo, hi, 200001), [0.0, -0.0, np.nan, np.inf, -np.inf]]).astype(dtype)
    x = np.concatenate([x, np.nextafter(x[:-5], dtype(0))])
    y = np.empty_like(x)
    _C.testing.soft_nms_exp_cpu(0 if dtype == np.float32 else 1, x.ctypes.data, y.ctypes.data, x.size)
    assert_bytes_equal(y, ref.dk_exp(x), "dk_exp")


def test_dk_exp_accuracy_bound():
    """The pinned distance from the correctly rounded exp (math.exp: glibc's, correctly rounded
    in practice): float32 <= 1 ulp, float64 <= 2 ulp (both measured at that bound)."""
    x = np.linspace(-100.0, 0.0, 100001)
    y64 = ref.dk_exp(x)
    r = np.array([math.exp(v) for v in x])
    assert _ulps(y64, r).max() <= 2
    x32 = x.astype(np.float32)
    r32 = np.array([math.exp(float(v)) for v in x32])
    assert _ulps(ref.dk_exp(x32), r32).max() <= 1
    assert ref.dk_exp(np.array([0.0, -0.0]))[0] == 1.0 and ref.dk_exp(np.float32([-0.0]))[0] == 1.0


# ---- ensemble-boxes ----------------------------------------------------------------------------

def _ensemble(b, s, method, thr, sigma, sthr, exp=None):
    """ensemble-boxes' cpu_soft_nms_float (1.0.9): (indices, decayed scores) in its pick order.
    ``exp``: run it with np.exp replaced (its module's ``np`` swapped for a proxy)."""
    E = pytest.importorskip("ensemble_boxes.ensemble_boxes_nms")
    sc = s.copy()
    saved = E.np
    if exp is not None:
        E.np = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
        E.np.exp = exp
    try:
        keep = E.cpu_soft_nms_float(b.copy(), sc, thr, sigma, sthr, 1 if method == "linear" else 2)
    finally:
        E.np = saved
    return keep.astype(np.int64), sc[sc > sthr]


def _normalised(rng, n, dtype):
    xy = rng.uniform(0, 0.85, (n, 2))
    return (np.concatenate([xy, xy + rng.uniform(0.01, 0.15, (n, 2))], 1).astype(dtype),
            rng.uniform(size=n).astype(dtype))


@pytest.mark.parametrize("method", ref.METHODS)
def test_ensemble_boxes_float64_differs_only_by_exp(method):
    """float64, continuous scores (no ties, none at the score threshold): ensemble-boxes' indices
    and decayed scores are byte-identical to detkernels' once its np.exp is replaced by dk_exp;
    with its own np.exp, the indices are the same and the Gaussian scores within 8 ulp."""
    rng = np.random.default_rng(21)
    b, s = _normalised(rng, 400, np.float64)
    k, v = dk.soft_nms(b, s, 0.3, method=method)
    ek, ev = _ensemble(b, s, method, 0.3, 0.5, 0.001, exp=ref.dk_exp)
    assert_bytes_equal(k, ek, "indices")
    assert_bytes_equal(v, ev, "scores")
    ek, ev = _ensemble(b, s, method, 0.3, 0.5, 0.001)
    assert_bytes_equal(k, ek, "indices (np.exp)")
    assert _ulps(v, ev).max() <= (0 if method == "linear" else 8)


@pytest.mark.parametrize("method", ref.METHODS)
def test_ensemble_boxes_float32_computes_in_float64(method):
    """float32: ensemble-boxes computes IoUs and weights in float64 (its boxes are concatenated
    with an int64 column) and rounds each product to float32; detkernels computes in float32.
    Same indices here; scores within 2^-20 relative."""
    rng = np.random.default_rng(22)
    b, s = _normalised(rng, 400, np.float32)
    k, v = dk.soft_nms(b, s, 0.3, method=method)
    ek, ev = _ensemble(b, s, method, 0.3, 0.5, 0.001)
    assert_bytes_equal(k, ek, "indices")
    assert np.abs(v.astype(np.float64) - ev) .max() <= 2.0 ** -20 * np.abs(ev).max()


def test_ensemble_boxes_tie_order_differs():
    """Pinned difference: ensemble-boxes swaps the picked box into place, which moves the box it
    displaces behind its equals; detkernels breaks ties by input index."""
    b = np.array([[0, 0, 0.1, 0.1], [0.2, 0, 0.3, 0.1], [0.4, 0, 0.5, 0.1]])
    s = np.array([0.5, 0.5, 0.9])
    assert _ensemble(b, s, "linear", 0.3, 0.5, 0.001)[0].tolist() == [2, 1, 0]
    assert dk.soft_nms(b, s)[0].tolist() == [2, 0, 1]


def test_ensemble_boxes_keeps_strictly_above_the_score_threshold():
    b = np.array([[0, 0, 0.1, 0.1], [0.2, 0, 0.3, 0.1]])
    s = np.array([0.5, 0.25])
    assert _ensemble(b, s, "linear", 0.3, 0.5, 0.25)[0].tolist() == [0]
    assert dk.soft_nms(b, s, score_threshold=0.25)[0].tolist() == [0, 1]


# ---- errors ------------------------------------------------------------------------------------

B4 = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
S2 = np.array([0.9, 0.8], np.float32)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(sigma=0.0), ValueError, "sigma"), (dict(sigma=-1), ValueError, "sigma"),
    (dict(sigma=float("nan")), ValueError, "sigma"), (dict(sigma="1"), TypeError, "sigma"),
    (dict(method="hard"), ValueError, "method"), (dict(method=None), ValueError, "method"),
    (dict(max_output=-1), ValueError, "max_output"), (dict(max_output=2.0), ValueError, "max_output"),
    (dict(score_threshold="0.1"), TypeError, "score_threshold"),
    (dict(score_threshold=None), TypeError, "score_threshold"),
    (dict(iou_threshold=None), TypeError, "iou_threshold"),
])
def test_bad_arguments_name_themselves(kw, exc, match):
    with pytest.raises(exc, match=match):
        dk.soft_nms(B4, S2, **kw)


def test_bad_arrays_name_themselves():
    with pytest.raises(RuntimeError, match="boxes"):
        dk.soft_nms(B4[:, :3], S2)
    with pytest.raises(RuntimeError, match="scores"):
        dk.soft_nms(B4, S2[:, None])
    with pytest.raises(RuntimeError, match="same number"):
        dk.soft_nms(B4, S2[:1])
    with pytest.raises(RuntimeError, match="idxs"):
        dk.soft_nms(B4, S2, idxs=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="boxes"):
        dk.soft_nms(B4.astype(np.int32), S2)
    with pytest.raises(TypeError, match="scores"):
        dk.soft_nms(B4, S2.astype(np.int64))


def test_cuda_serving_is_declared():
    """native and numba declare soft_nms and multi_image_soft_nms on cuda (compiled, emulated /
    simulated in tests/gpu_logic); numpy does not run them there, and the registry says so
    instead of a silent fallback."""
    from detkernels import _registry
    from detkernels.backends._table import TABLE

    _registry._load()
    for op in ("soft_nms", "multi_image_soft_nms"):
        assert "cuda" in TABLE["native"].impls[op][1]
        assert "cuda" in TABLE["numba"].impls[op][1]
    assert "does not run soft_nms on cuda" in _registry.why_not("numpy", "soft_nms", "cuda")


# ---- torch -------------------------------------------------------------------------------------

def _tensors(torch):
    rng = np.random.default_rng(9)
    boxes, scores, classes = FAMILIES["clusters"](rng, 200)
    return (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
            torch.from_numpy(classes))


def test_torch_eager_matches_numpy(torch):
    b, s, c = _tensors(torch)
    for kw in (dict(), dict(method="gaussian", idxs=c, max_output=20)):
        k, v = dk.soft_nms(b, s, **kw)
        assert isinstance(k, torch.Tensor) and k.dtype == torch.int64 and v.dtype == torch.float32
        kwn = {**kw, "idxs": None if "idxs" not in kw else c.numpy()}
        kn, vn = dk.soft_nms(b.numpy(), s.numpy(), **kwn)
        assert_bytes_equal(k, kn, "indices")
        assert_bytes_equal(v, vn, "scores")


def test_torch_compile_and_export(torch):
    b, s, c = _tensors(torch)
    want = dk.soft_nms(b, s, 0.5, method="gaussian", idxs=c, max_output=40)
    f = torch.compile(lambda b, s, c: dk.soft_nms(b, s, 0.5, method="gaussian", idxs=c, max_output=40),
                      fullgraph=True)
    for g, w in zip(f(b, s, c), want):
        assert_bytes_equal(g, w, "compiled")

    class M(torch.nn.Module):
        def forward(self, b, s):
            return dk.soft_nms(b, s, 0.4, sigma=0.7)

    ep = torch.export.export(M(), (b, s))
    for g, w in zip(ep.module()(b, s), dk.soft_nms(b, s, 0.4, sigma=0.7)):
        assert_bytes_equal(g, w, "exported")


def test_opcheck_custom_op(torch):
    b, s, c = _tensors(torch)
    op = torch.ops.detkernels.soft_nms.default
    torch.library.opcheck(op, (b, s, None, 0.3, 0.5, "linear", 0.001, None))
    torch.library.opcheck(op, (b.double(), s.double(), c, 0.3, 0.5, "gaussian", 0.1, 7))


# ---- multi_image_soft_nms: the fixed-size batch form ---------------------------------------------

def _batch(rng, B=3, N=80):
    out = [FAMILIES["clusters"](rng, N) for _ in range(B)]
    return tuple(np.stack(x) for x in zip(*out))


@pytest.mark.parametrize("backend", [backend_param(b, "multi_image_soft_nms") for b in CPU_BACKENDS])
def test_multi_image_is_per_image_soft_nms(backend):
    rng = np.random.default_rng(51)
    boxes, scores, classes = _batch(rng)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for idxs, K in ((None, 10), (classes, 200), (None, 0)):
            idx, val, counts = dk.multi_image_soft_nms(b, s, K, 0.4, method="gaussian", idxs=idxs,
                                                       backend=backend)
            assert idx.shape == val.shape == (3, K) and counts.shape == (3,) and val.dtype == dtype
            for i in range(3):
                k, v = dk.soft_nms(b[i], s[i], 0.4, method="gaussian", max_output=K,
                                   idxs=None if idxs is None else idxs[i])
                assert counts[i] == k.size
                assert_bytes_equal(idx[i, :k.size], k, f"image {i} indices")
                assert_bytes_equal(val[i, :k.size], v, f"image {i} scores")
                assert (idx[i, k.size:] == -1).all() and (val[i, k.size:] == 0).all()


def test_multi_image_errors():
    b, s = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="max_output"):
        dk.multi_image_soft_nms(b, s, -1)
    with pytest.raises(ValueError, match="scores"):
        dk.multi_image_soft_nms(b, np.zeros((2, 3, 2), np.float32), 4)
    with pytest.raises(ValueError, match="boxes"):
        dk.multi_image_soft_nms(b[0], s, 4)
    with pytest.raises(ValueError, match="idxs"):
        dk.multi_image_soft_nms(b, s, 4, idxs=np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match="sigma"):
        dk.multi_image_soft_nms(b, s, 4, sigma=0)


def test_multi_image_exports_with_static_shapes(torch):
    rng = np.random.default_rng(53)
    boxes, scores, classes = _batch(rng)
    b, s, c = (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
               torch.from_numpy(classes))

    class M(torch.nn.Module):
        def forward(self, b, s, c):
            return dk.multi_image_soft_nms(b, s, 25, 0.5, method="gaussian", idxs=c)

    ep = torch.export.export(M(), (b, s, c))
    want = dk.multi_image_soft_nms(b, s, 25, 0.5, method="gaussian", idxs=c)
    got = ep.module()(b, s, c)
    assert tuple(got[0].shape) == (3, 25)
    for g, w in zip(got, want):
        assert_bytes_equal(g, w, "exported")
    f = torch.compile(lambda b, s: dk.multi_image_soft_nms(b, s, 25), fullgraph=True)
    for g, w in zip(f(b, s), dk.multi_image_soft_nms(b, s, 25)):
        assert_bytes_equal(g, w, "compiled")
    op = torch.ops.detkernels.multi_image_soft_nms.default
    torch.library.opcheck(op, (b, s, c, 25, 0.3, 0.5, "linear", 0.001))
    torch.library.opcheck(op, (b.double(), s.double(), None, 7, 0.3, 0.5, "gaussian", 0.1))
