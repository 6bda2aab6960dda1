"""Matrix NMS (detkernels.matrix_nms): every CPU backend byte for byte against the NumPy reference
(detkernels/reference/matrix_nms.py) on the NMS input families; the same kept boxes as the torch
port of mmdetection's mask_matrix_nms (detkernels/bench/peer_matrix_nms.py) on regular boxes,
the differences pinned; errors; the torch custom op."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels as dk
from detkernels.reference import matrix_nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from conftest import CPU_BACKENDS, backend_param

BACKENDS = [backend_param(b, "matrix_nms") for b in CPU_BACKENDS]
DTYPES = (np.float32, np.float64)
PARAMS = [("gaussian", 2.0, None, None, None), ("gaussian", 0.5, 0.05, 20, None),
          ("linear", 2.0, None, None, 60), ("linear", 2.0, 0.2, 5, 100)]


def _kw(kernel, sigma, thr, k, pre):
    return dict(kernel=kernel, sigma=sigma, score_threshold=thr, max_output=k, pre_top_k=pre)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(map(str, p)))
def test_equals_reference(backend, family, params):
    rng = np.random.default_rng(31)
    boxes, scores, classes = FAMILIES[family](rng, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for labels in (classes, np.zeros_like(classes)):  # per class; one class (the fast path)
            want = ref.matrix_nms(b, s, labels, *params)
            got = dk.matrix_nms(b, s, labels, **_kw(*params), backend=backend)
            what = f"{backend} {family} {dtype.__name__} classes={np.unique(labels).size}"
            assert_bytes_equal(got[0], want[0], what + " indices")
            assert_bytes_equal(got[1], want[1], what + " scores")


def test_several_thousand_boxes():
    rng = np.random.default_rng(37)
    boxes, scores, classes = FAMILIES["clusters"](rng, 2500)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for kernel in ref.KERNELS:
            want = ref.matrix_nms(b, s, np.zeros_like(classes), kernel, 2.0, 0.01)
            got = dk.matrix_nms(b, s, np.zeros_like(classes), kernel=kernel, score_threshold=0.01)
            assert_bytes_equal(got[0], want[0], f"{dtype.__name__} {kernel} indices")
            assert_bytes_equal(got[1], want[1], f"{dtype.__name__} {kernel} scores")


def test_empty_one_and_float_labels():
    for dtype in DTYPES:
        k, v = dk.matrix_nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), np.zeros(0, np.int64))
        assert k.shape == (0,) and k.dtype == np.int64 and v.dtype == dtype
        k, v = dk.matrix_nms(np.array([[0, 0, 1, 1]], dtype), np.array([0.5], dtype), np.array([3]))
        assert k.tolist() == [0] and v.tolist() == [0.5]  # nothing above it: decay exactly 1
    rng = np.random.default_rng(41)
    boxes, scores, classes = FAMILIES["clusters"](rng, 100)
    a = dk.matrix_nms(boxes, scores, classes)
    b = dk.matrix_nms(boxes, scores, classes.astype(np.float32) * 0.5)  # same grouping
    assert_bytes_equal(a[0], b[0], "indices")
    assert_bytes_equal(a[1], b[1], "scores")


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_computed_decays(dtype):
    """[0,0,1,1] > [0,0,1,0.5] > [0,0,1,0.25] (IoUs 1/2, 1/4, 1/2; compensations 0, 1/2, 1/2)."""
    b = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0, 1, 0.25]], dtype)
    s = np.array([0.9, 0.8, 0.7], dtype)
    T = dtype
    k, v = dk.matrix_nms(b, s, np.zeros(3), kernel="linear")
    # box 1: (1 - 1/2) / 1 = 1/2; box 2: min((1 - 1/4) / 1, (1 - 1/2) / (1 - 1/2)) = 3/4
    assert k.tolist() == [0, 2, 1]
    assert v.tobytes() == np.array([0.9, T(0.7) * T(0.75), T(0.8) * T(0.5)], dtype).tobytes()
    k, v = dk.matrix_nms(b, s, np.zeros(3), kernel="gaussian", sigma=2.0)
    e = lambda x: ref.dk_exp(np.array([T(-2.0) * (T(x) * T(x))], dtype))[0]  # noqa: E731
    d2 = min(e(0.25) / e(0.0), e(0.5) / e(0.5))
    assert v.tobytes() == np.array(sorted([T(0.9), T(0.8) * (e(0.5) / e(0.0)), T(0.7) * d2],
                                          reverse=True), dtype).tobytes()
    # classes never decay each other
    k, v = dk.matrix_nms(b, s, np.array([0, 1, 2]))
    assert k.tolist() == [0, 1, 2] and v.tobytes() == s.tobytes()


def test_score_threshold_is_inclusive():
    b = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5]])
    s = np.array([0.9, 0.8])
    assert dk.matrix_nms(b, s, np.zeros(2), kernel="linear", score_threshold=0.4)[0].tolist() == [0, 1]
    assert dk.matrix_nms(b, s, np.zeros(2), kernel="linear",
                         score_threshold=float(np.nextafter(0.4, 1)))[0].tolist() == [0]


@pytest.mark.parametrize("kernel", ref.KERNELS)
def test_mmdetection_port_keeps_the_same_boxes(torch, kernel):
    """Regular boxes (IoUs in [0, 1]): mmdetection's column min over the full matrix equals the
    reference's min(1, ...). Same kept indices; the decayed scores differ only through torch.exp
    vs dk_exp (Gaussian: within 2^-20 relative in float32) and are identical for the linear kernel
    up to the division order (within 1 ulp)."""
    from detkernels.bench.peer_matrix_nms import torch_matrix_nms

    rng = np.random.default_rng(43)
    boxes, scores, classes = FAMILIES["clusters"](rng, 300)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 1], 1)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    k, v = dk.matrix_nms(b, s, classes, kernel=kernel, score_threshold=0.05)
    pk, pv = torch_matrix_nms(torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(classes),
                              kernel, 2.0, 0.05)
    assert_bytes_equal(pk.numpy(), k, "indices")
    assert np.abs(pv.numpy().astype(np.float64) - v).max() <= 2.0 ** -20


def test_nan_iou_is_skipped_where_mmdetection_propagates(torch):
    """Pinned difference: two identical zero-area boxes (IoU 0/0) leave every score undecayed
    here; in mmdetection's formulation the NaN reaches the column minimum (NaN scores)."""
    from detkernels.bench.peer_matrix_nms import torch_matrix_nms

    b = np.array([[3, 3, 3, 3], [3, 3, 3, 3], [0, 0, 1, 1]], np.float32)
    s = np.array([0.9, 0.8, 0.7], np.float32)
    k, v = dk.matrix_nms(b, s, np.zeros(3, np.int64))
    assert k.tolist() == [0, 1, 2] and v.tobytes() == s.tobytes()
    _, pv = torch_matrix_nms(torch.from_numpy(b), torch.from_numpy(s), torch.zeros(3, dtype=torch.int64))
    assert torch.isnan(pv).any()


B4 = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
S2 = np.array([0.9, 0.8], np.float32)
L2 = np.zeros(2, np.int64)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(kernel="box"), ValueError, "kernel"), (dict(kernel=None), ValueError, "kernel"),
    (dict(sigma=0.0), ValueError, "sigma"), (dict(sigma=float("nan")), ValueError, "sigma"),
    (dict(sigma="2"), TypeError, "sigma"), (dict(score_threshold="0.1"), TypeError, "score_threshold"),
    (dict(max_output=-1), ValueError, "max_output"), (dict(pre_top_k=1.5), ValueError, "pre_top_k"),
])
def test_bad_arguments_name_themselves(kw, exc, match):
    with pytest.raises(exc, match=match):
        dk.matrix_nms(B4, S2, L2, **kw)


def test_bad_arrays_name_themselves():
    with pytest.raises(TypeError, match="labels"):
        dk.matrix_nms(B4, S2, None)
    with pytest.raises(RuntimeError, match="labels"):
        dk.matrix_nms(B4, S2, L2[:1])
    with pytest.raises(TypeError, match="labels"):
        dk.matrix_nms(B4, S2, np.array(["a", "b"]))
    with pytest.raises(RuntimeError, match="boxes"):
        dk.matrix_nms(B4[:, :2], S2, L2)
    with pytest.raises(TypeError, match="boxes"):
        dk.matrix_nms(B4.astype(np.int64), S2, L2)


def test_torch(torch):
    rng = np.random.default_rng(47)
    boxes, scores, classes = FAMILIES["clusters"](rng, 200)
    b, s, c = (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
               torch.from_numpy(classes))
    want = dk.matrix_nms(b.numpy(), s.numpy(), classes, kernel="linear", score_threshold=0.1, max_output=30)
    got = dk.matrix_nms(b, s, c, kernel="linear", score_threshold=0.1, max_output=30)
    assert isinstance(got[0], torch.Tensor)
    for g, w in zip(got, want):
        assert_bytes_equal(g, w, "eager")
    f = torch.compile(lambda b, s, c: dk.matrix_nms(b, s, c, kernel="linear", score_threshold=0.1,
                                                    max_output=30), fullgraph=True)
    for g, w in zip(f(b, s, c), want):
        assert_bytes_equal(g, w, "compiled")

    class M(torch.nn.Module):
        def forward(self, b, s, c):
            return dk.matrix_nms(b, s, c, pre_top_k=100)

    ep = torch.export.export(M(), (b, s, c))
    for g, w in zip(ep.module()(b, s, c), dk.matrix_nms(b, s, c, pre_top_k=100)):
        assert_bytes_equal(g, w, "exported")
    op = torch.ops.detkernels.matrix_nms.default
    torch.library.opcheck(op, (b, s, c, "gaussian", 2.0, None, None, None))
    torch.library.opcheck(op, (b.double(), s.double(), c, "linear", 1.0, 0.1, 10, 50))


# ---- multi_image_matrix_nms: the fixed-size batch form -------------------------------------------

MULTI_BACKENDS = [backend_param(b, "multi_image_matrix_nms") for b in CPU_BACKENDS]
MULTI_PARAMS = [("gaussian", 2.0, None, None), ("linear", 2.0, 0.1, 40), ("gaussian", 0.5, 0.3, None)]


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_multi_image_is_per_image_matrix_nms(backend, family):
    """Per image, byte for byte the single-image reference with max_output (smaller and larger
    than the kept count), padded with -1 / 0."""
    boxes, scores, classes = batch(family, 43, 3, 70)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for kernel, sigma, sthr, pre in MULTI_PARAMS:
            for K in (0, 4, 100):
                idx, val, counts = dk.multi_image_matrix_nms(b, s, classes, K, kernel=kernel, sigma=sigma,
                                                             score_threshold=sthr, pre_top_k=pre,
                                                             backend=backend)
                assert idx.shape == val.shape == (3, K) and counts.shape == (3,)
                assert idx.dtype == counts.dtype == np.int64 and val.dtype == dtype
                for i in range(3):
                    k, v = ref.matrix_nms(b[i], s[i], classes[i], kernel, sigma, sthr, K, pre)
                    what = f"{backend} {family} {dtype.__name__} {kernel} K={K} image {i}"
                    assert counts[i] == k.size, what
                    assert_bytes_equal(idx[i, :k.size], k, what + " indices")
                    assert_bytes_equal(val[i, :k.size], v, what + " scores")
                    assert (idx[i, k.size:] == -1).all() and (val[i, k.size:] == 0).all(), what


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
def test_multi_image_empty(backend):
    for B, N, K in ((0, 5, 3), (2, 0, 3), (0, 0, 0), (2, 1, 0)):
        z = np.zeros((B, N), np.float64)
        idx, val, counts = dk.multi_image_matrix_nms(np.zeros((B, N, 4), np.float64), z, z.astype(np.int64),
                                                     K, pre_top_k=0, backend=backend)
        assert idx.shape == val.shape == (B, K) and counts.shape == (B,) and val.dtype == np.float64
        assert (idx == -1).all() and (val == 0).all() and (counts == 0).all()


def test_multi_image_half_noncontiguous_and_float_labels():
    boxes, scores, classes = batch("clusters", 59, 4, 50)
    b = boxes.astype(np.float16)[::2]
    s = np.asfortranarray(scores.astype(np.float32))[::2]
    lab = (classes[::2] * 0.5).astype(np.float32)  # any numeric labels: equal values = one class
    got = dk.multi_image_matrix_nms(b, s, lab, 20, kernel="linear", score_threshold=0.05)
    want = ref.multi_image_matrix_nms(b.astype(np.float32), s, lab, 20, "linear", 2.0, 0.05)
    for g, w, what in zip(got, want, ("indices", "scores", "counts")):
        assert_bytes_equal(g, w, what)


def test_multi_image_bad_arguments_name_themselves():
    b, s, lab = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int64)
    cases = [
        (dict(max_output=-1), ValueError, "max_output"), (dict(max_output=None), ValueError, "max_output"),
        (dict(kernel="box"), ValueError, "kernel"), (dict(sigma=0.0), ValueError, "sigma"),
        (dict(score_threshold="0.1"), TypeError, "score_threshold"), (dict(pre_top_k=-2), ValueError, "pre_top_k"),
        (dict(labels=None), TypeError, "labels"), (dict(labels=lab[:, :2]), ValueError, "labels"),
        (dict(labels=np.zeros((2, 3), "U1")), TypeError, "labels"),
        (dict(boxes=b[0]), ValueError, "boxes"), (dict(scores=s[:1]), ValueError, "scores"),
        (dict(scores=np.zeros((2, 3, 2), np.float32)), ValueError, "scores"),
        (dict(boxes=b.astype(np.int64)), TypeError, "boxes"),
    ]
    for kw, exc, match in cases:
        args = {"boxes": b, "scores": s, "labels": lab, "max_output": 4, **kw}
        with pytest.raises(exc, match=match):
            dk.multi_image_matrix_nms(**args)


def test_multi_image_torch_compiles_and_exports_with_static_shapes(torch):
    boxes, scores, classes = batch("clusters", 61, 3, 80)
    b, s, c = (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
               torch.from_numpy(classes))
    want = ref.multi_image_matrix_nms(b.numpy(), s.numpy(), classes, 25, "linear", 2.0, 0.1, 60)
    got = dk.multi_image_matrix_nms(b, s, c, 25, kernel="linear", score_threshold=0.1, pre_top_k=60)
    assert isinstance(got[0], torch.Tensor) and len(got) == 3
    for g, w in zip(got, want):
        assert_bytes_equal(g, w, "eager")

    class M(torch.nn.Module):
        def forward(self, b, s, c):
            return dk.multi_image_matrix_nms(b, s, c, 25, kernel="linear", score_threshold=0.1, pre_top_k=60)

    ep = torch.export.export(M(), (b, s, c))
    assert "detkernels.multi_image_matrix_nms" in str(ep.graph)
    out_specs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    assert [tuple(x.meta["val"].shape) for x in out_specs] == [(3, 25), (3, 25), (3,)]  # static
    for g, w in zip(ep.module()(b, s, c), want):
        assert_bytes_equal(g, w, "exported")
    torch._dynamo.reset()
    f = torch.compile(lambda b, s, c: dk.multi_image_matrix_nms(b, s, c, 25), fullgraph=True)
    for g, w in zip(f(b, s, c), dk.multi_image_matrix_nms(b, s, c, 25)):
        assert_bytes_equal(g, w, "compiled")
    op = torch.ops.detkernels.multi_image_matrix_nms.default
    torch.library.opcheck(op, (b, s, c, 25, "gaussian", 2.0, None, None))
    torch.library.opcheck(op, (b.double(), s.double(), c, 7, "linear", 1.0, 0.1, 50))
