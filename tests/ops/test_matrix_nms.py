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
from _nms_families import FAMILIES
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
