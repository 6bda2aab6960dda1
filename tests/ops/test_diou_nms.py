"""DIoU-NMS (detkernels.diou_nms): every CPU backend byte for byte against the NumPy reference
(detkernels/reference/diou_nms.py) on the NMS input families; its measure is distance_box_iou's
(the one DIoU formula); dk_log (the C++ logarithm of R**beta) against the reference's and the
correctly rounded log; errors; the torch custom op."""
from __future__ import annotations

import math

import numpy as np
import pytest

import detkernels as dk
from detkernels.reference import diou_nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from conftest import CPU_BACKENDS, backend_param

BACKENDS = [backend_param(b, "diou_nms") for b in CPU_BACKENDS]
DTYPES = (np.float32, np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("thr,beta", [(0.5, 1.0), (0.3, 0.6), (0.7, 2.0), (-0.2, 1.0)])
def test_equals_reference(backend, family, thr, beta):
    rng = np.random.default_rng(17)
    boxes, scores, classes = FAMILIES[family](rng, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        what = f"{backend} {family} {dtype.__name__}"
        assert_bytes_equal(dk.diou_nms(b, s, thr, beta=beta, backend=backend),
                           ref.diou_nms(b, s, thr, beta), what)
        assert_bytes_equal(dk.diou_nms(b, s, thr, beta=beta, idxs=classes, backend=backend),
                           ref.batched_diou_nms(b, s, classes, thr, beta), what + " idxs")


def test_several_thousand_boxes():
    rng = np.random.default_rng(19)
    boxes, scores, classes = FAMILIES["clusters"](rng, 3000)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        assert_bytes_equal(dk.diou_nms(b, s, 0.5, beta=0.6), ref.diou_nms(b, s, 0.5, 0.6), dtype.__name__)


def test_empty_and_one():
    for dtype in DTYPES:
        k = dk.diou_nms(np.zeros((0, 4), dtype), np.zeros(0, dtype), 0.5)
        assert k.dtype == np.int64 and k.shape == (0,)
        assert dk.diou_nms(np.array([[0, 0, 1, 1]], dtype), np.array([0.5], dtype), 0.5).tolist() == [0]


def _greedy(measure, scores, thr):
    """Greedy NMS over a precomputed [N, N] measure (row = kept box)."""
    order = np.lexsort((-scores, ~np.isnan(scores)))
    keep, alive = [], list(order)
    while alive:
        i = alive.pop(0)
        keep.append(i)
        alive = [j for j in alive if not float(measure[i, j]) > thr]
    return np.array(keep, np.int64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_measure_is_distance_box_iou(dtype):
    """beta = 1 on finite positive-area boxes (where nms's and box_iou's IoU agree): the kept set
    of greedy NMS over distance_box_iou(eps=0) -- the same DIoU formula, one copy."""
    rng = np.random.default_rng(23)
    boxes, scores, _ = FAMILIES["clusters"](rng, 200)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 1], 1)
    b, s = boxes.astype(dtype), scores.astype(dtype)
    m = dk.distance_box_iou(b, b, eps=0.0)
    assert_bytes_equal(dk.diou_nms(b, s, 0.4), _greedy(m, s, 0.4), "vs distance_box_iou")
    # and differs from plain NMS on these crowded clusters (the centre term matters)
    assert not np.array_equal(dk.diou_nms(b, s, 0.4), dk.nms(b, s, 0.4))


@pytest.mark.parametrize("dtype", DTYPES)
def test_threshold_is_strict_and_beta_one_is_exact(dtype):
    """[0,0,4,4] and [0,0,4,2]: iou 1/2, R = 1 / 32 (dyadic): diou = 15/32 exactly."""
    b = np.array([[0, 0, 4, 4], [0, 0, 4, 2]], dtype)
    s = np.array([0.9, 0.8], dtype)
    assert dk.diou_nms(b, s, 15 / 32).tolist() == [0, 1]  # equal: kept
    assert dk.diou_nms(b, s, float(np.nextafter(dtype(15 / 32), dtype(0)))).tolist() == [0]
    # beta = 0.5: R**0.5 = 1 / sqrt(32) through dk_exp(0.5 * dk_log(R)): within 2 ulp of sqrt
    r = ref.dk_pow(np.array([1 / 32], dtype), 0.5)[0]
    assert abs(float(r) - math.sqrt(1 / 32)) <= 2 * float(np.spacing(dtype(r)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dk_log_cpp_equals_reference(dtype):
    from detkernels import _C

    tiny = np.finfo(dtype).smallest_subnormal
    x = np.concatenate([np.exp(np.linspace(-80, 80, 100001)), np.linspace(0, 2, 50001),
                        [0.0, -0.0, -1.0, np.nan, np.inf, tiny, np.finfo(dtype).max]]).astype(dtype)
    y = np.empty_like(x)
    _C.testing.diou_nms_log_cpu(0 if dtype == np.float32 else 1, x.ctypes.data, y.ctypes.data, x.size)
    assert_bytes_equal(y, ref.dk_log(x), "dk_log")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dk_log_numba_equals_reference(dtype):
    """The numba twin (backends/numba/box_math.py dk_log, dk_pow), subnormals included."""
    numba = pytest.importorskip("numba", reason="numba is not installed")
    from detkernels.backends.numba import cpu

    k = cpu.exp_kernels(np.dtype(dtype).name)
    log, pow_ = k.dk_log, k.dk_pow
    tiny = np.finfo(dtype).smallest_subnormal
    x = np.concatenate([np.exp(np.linspace(-80, 80, 20001)), np.linspace(0, 2, 5001),
                        np.arange(1, 2000) * tiny,
                        [0.0, -0.0, -1.0, np.inf, -np.inf, np.finfo(dtype).max]]).astype(dtype)

    @numba.njit
    def run(x, y, b):
        for i in range(x.shape[0]):
            y[i] = log(x[i]) if b < 0 else pow_(abs(x[i]), b)
        return y

    want = ref.dk_log(x)
    got = run(x, np.empty_like(x), dtype(-1))
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    assert_bytes_equal(got[~nan], want[~nan], "dk_log")
    assert_bytes_equal(run(x, np.empty_like(x), dtype(0.6)), ref.dk_pow(np.abs(x), 0.6), "dk_pow")


def test_dk_log_accuracy_bound():
    """Pinned: within 2 ulp of the correctly rounded log (math.log), float32 and float64."""
    for dtype, it in ((np.float32, np.int32), (np.float64, np.int64)):
        x = np.exp(np.linspace(-80, 80, 50001)).astype(dtype)
        want = np.array([math.log(float(v)) for v in x]).astype(dtype)
        d = np.abs(ref.dk_log(x).view(it).astype(np.int64) - want.view(it).astype(np.int64))
        assert d.max() <= 2, dtype
    assert ref.dk_log(np.array([1.0]))[0] == 0.0 and ref.dk_log(np.float32([1.0]))[0] == 0.0


B4 = np.array([[0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
S2 = np.array([0.9, 0.8], np.float32)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(beta=0.0), ValueError, "beta"), (dict(beta=-1), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"), (dict(beta=float("inf")), ValueError, "beta"),
    (dict(beta="1"), TypeError, "beta"), (dict(iou_threshold=None), TypeError, "iou_threshold"),
])
def test_bad_arguments_name_themselves(kw, exc, match):
    kw = {"iou_threshold": 0.5, **kw}
    with pytest.raises(exc, match=match):
        dk.diou_nms(B4, S2, **kw)


def test_bad_arrays_name_themselves():
    with pytest.raises(RuntimeError, match="boxes"):
        dk.diou_nms(B4[:, :3], S2, 0.5)
    with pytest.raises(RuntimeError, match="same number"):
        dk.diou_nms(B4, S2[:1], 0.5)
    with pytest.raises(RuntimeError, match="idxs"):
        dk.diou_nms(B4, S2, 0.5, idxs=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="scores"):
        dk.diou_nms(B4, S2.astype(np.int32), 0.5)


def test_torch(torch):
    rng = np.random.default_rng(29)
    boxes, scores, classes = FAMILIES["clusters"](rng, 200)
    b, s, c = (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
               torch.from_numpy(classes))
    want = dk.diou_nms(boxes.astype(np.float32), scores.astype(np.float32), 0.5, beta=0.6, idxs=classes)
    got = dk.diou_nms(b, s, 0.5, beta=0.6, idxs=c)
    assert isinstance(got, torch.Tensor)
    assert_bytes_equal(got, want, "eager")
    f = torch.compile(lambda b, s, c: dk.diou_nms(b, s, 0.5, beta=0.6, idxs=c), fullgraph=True)
    assert_bytes_equal(f(b, s, c), want, "compiled")

    class M(torch.nn.Module):
        def forward(self, b, s):
            return dk.diou_nms(b, s, 0.5)

    ep = torch.export.export(M(), (b, s))
    assert_bytes_equal(ep.module()(b, s), dk.diou_nms(b, s, 0.5), "exported")
    torch.library.opcheck(torch.ops.detkernels.diou_nms.default, (b, s, c, 0.5, 0.6))
    torch.library.opcheck(torch.ops.detkernels.diou_nms.default, (b.double(), s.double(), None, 0.5, 1.0))


# ---- multi_image_diou_nms: the fixed-size batch form ---------------------------------------------

MULTI_BACKENDS = [backend_param(b, "multi_image_diou_nms") for b in CPU_BACKENDS]


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_multi_image_is_per_image_diou_nms(backend, family):
    """Per image, byte for byte the single-image reference truncated to max_output (smaller and
    larger than the kept count), padded with -1."""
    boxes, scores, classes = batch(family, 31, 3, 70)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        for idxs in (None, classes):
            for thr, beta in ((0.5, 1.0), (0.3, 0.6)):
                for K in (0, 4, 100):
                    idx, counts = dk.multi_image_diou_nms(b, s, thr, K, beta=beta, idxs=idxs,
                                                          backend=backend)
                    assert idx.shape == (3, K) and idx.dtype == np.int64
                    assert counts.shape == (3,) and counts.dtype == np.int64
                    for i in range(3):
                        k = (ref.diou_nms(b[i], s[i], thr, beta) if idxs is None else
                             ref.batched_diou_nms(b[i], s[i], idxs[i], thr, beta))[:K]
                        what = f"{backend} {family} {dtype.__name__} idxs={idxs is not None} K={K} image {i}"
                        assert counts[i] == k.size, what
                        assert_bytes_equal(idx[i, :k.size], k, what)
                        assert (idx[i, k.size:] == -1).all(), what


@pytest.mark.parametrize("backend", MULTI_BACKENDS)
def test_multi_image_empty(backend):
    for B, N, K in ((0, 5, 3), (2, 0, 3), (0, 0, 0), (2, 1, 0)):
        idx, counts = dk.multi_image_diou_nms(np.zeros((B, N, 4), np.float32), np.zeros((B, N), np.float32),
                                              0.5, K, backend=backend)
        assert idx.shape == (B, K) and counts.shape == (B,)
        assert (idx == -1).all() and (counts == 0).all()


def test_multi_image_half_and_noncontiguous():
    boxes, scores, classes = batch("clusters", 37, 4, 50)
    b = boxes.astype(np.float16)[::2]
    s = np.asfortranarray(scores.astype(np.float32))[::2]
    idx, counts = dk.multi_image_diou_nms(b, s, 0.5, 20, beta=0.6, idxs=classes[::2])
    want, wc = ref.multi_image_diou_nms(b.astype(np.float32), s, 0.5, 20, 0.6, classes[::2])
    assert_bytes_equal(idx, want, "indices")
    assert_bytes_equal(counts, wc, "counts")


def test_multi_image_bad_arguments_name_themselves():
    b, s = np.zeros((2, 3, 4), np.float32), np.zeros((2, 3), np.float32)
    cases = [
        (dict(max_output=-1), ValueError, "max_output"), (dict(max_output=2.5), ValueError, "max_output"),
        (dict(max_output=None), ValueError, "max_output"), (dict(beta=0.0), ValueError, "beta"),
        (dict(beta=float("nan")), ValueError, "beta"), (dict(iou_threshold="0.5"), TypeError, "iou_threshold"),
        (dict(boxes=b[0]), ValueError, "boxes"), (dict(boxes=b[..., :3]), ValueError, "boxes"),
        (dict(scores=s[0]), ValueError, "scores"), (dict(scores=np.zeros((2, 3, 2), np.float32)), ValueError, "scores"),
        (dict(idxs=np.zeros((2, 4), np.int64)), ValueError, "idxs"),
        (dict(idxs=np.zeros((2, 3), "U1")), TypeError, "idxs"),
        (dict(scores=s.astype(np.int32)), TypeError, "scores"),
    ]
    for kw, exc, match in cases:
        args = {"boxes": b, "scores": s, "iou_threshold": 0.5, "max_output": 4, **kw}
        with pytest.raises(exc, match=match):
            dk.multi_image_diou_nms(**args)


def test_multi_image_torch_compiles_and_exports_with_static_shapes(torch):
    boxes, scores, classes = batch("clusters", 41, 3, 80)
    b, s, c = (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
               torch.from_numpy(classes))
    want = ref.multi_image_diou_nms(b.numpy(), s.numpy(), 0.45, 25, 0.6, classes)
    got = dk.multi_image_diou_nms(b, s, 0.45, 25, beta=0.6, idxs=c)
    assert isinstance(got[0], torch.Tensor) and len(got) == 2
    for g, w in zip(got, want):
        assert_bytes_equal(g, w, "eager")

    class M(torch.nn.Module):
        def forward(self, b, s, c):
            return dk.multi_image_diou_nms(b, s, 0.45, 25, beta=0.6, idxs=c)

    ep = torch.export.export(M(), (b, s, c))
    assert "detkernels.multi_image_diou_nms" in str(ep.graph)
    out_specs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    assert [tuple(x.meta["val"].shape) for x in out_specs] == [(3, 25), (3,)]  # static, no u0
    out = ep.module()(b, s, c)
    for g, w in zip(out, want):
        assert_bytes_equal(g, w, "exported")
    torch._dynamo.reset()
    f = torch.compile(lambda b, s: dk.multi_image_diou_nms(b, s, 0.5, 25), fullgraph=True)
    for g, w in zip(f(b, s), dk.multi_image_diou_nms(b, s, 0.5, 25)):
        assert_bytes_equal(g, w, "compiled")
    op = torch.ops.detkernels.multi_image_diou_nms.default
    torch.library.opcheck(op, (b, s, c, 0.5, 25, 0.6))
    torch.library.opcheck(op, (b.double(), s.double(), None, 0.3, 7, 1.0))
