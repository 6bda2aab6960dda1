"""Fixed-size NMS API (detkernels.nms_padded, detkernels.multi_image_nms) on the CPU, against the
NumPy reference (detkernels/reference/nms.py), plus its torch custom ops (fake kernels without
dynamic sizes: torch.compile(fullgraph=True), torch.export, opcheck). GPU runs of the same API are
in test_nms_cuda_logic.py."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels as dk
from detkernels.reference import nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from conftest import CPU_BACKENDS, backend_param

BACKENDS = [backend_param(b, "multi_image_nms") for b in CPU_BACKENDS]


def _check(got, want, what):
    names = ("indices", "classes", "counts") if len(got) == 3 else ("indices", "counts")
    want = want if len(got) == 3 else (want[0], want[2])
    for g, w, name in zip(got, want, names):
        assert_bytes_equal(g, w, f"{what} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("C,with_idxs", [(0, False), (0, True), (4, False)])
@pytest.mark.parametrize("sthr", [None, 0.3])
def test_multi_image_nms_equals_reference(backend, family, C, with_idxs, sthr):
    boxes, scores, classes = batch(family, 0, 3, 120, C)
    for dtype in (np.float32, np.float64):
        b, s = boxes.astype(dtype), scores.astype(dtype)
        c = classes if with_idxs else None
        for K in (0, 7, 1000):
            want = ref.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
            got = dk.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr, backend=backend)
            _check(got, want, f"{backend} {family} {dtype.__name__} K={K}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_reference_multi_image_is_per_image_batched_nms(family):
    """Metamorphic: image b of multi_image_nms = batched_nms of image b (truncated, padded)."""
    boxes, scores, classes = batch(family, 1, 2, 200)
    idx, counts = dk.multi_image_nms(boxes, scores, 0.5, 50, idxs=classes)
    for i in range(2):
        want = ref.batched_nms(boxes[i], scores[i], classes[i], 0.5)[:50]
        assert counts[i] == want.size
        assert_bytes_equal(idx[i, :want.size], want, f"image {i}")
        assert (idx[i, want.size:] == -1).all()


def test_per_class_scores_equal_expanded_batched_nms():
    """[B, N, C] scores = batched_nms over the (box, class) pairs, candidate n*C + c."""
    boxes, scores, _ = batch("clusters", 2, 1, 90, 3)
    b, s = boxes[0], scores[0]
    idx, cls, counts = dk.multi_image_nms(boxes, scores, 0.45, 270)
    flat = ref.batched_nms(np.repeat(b, 3, 0), s.reshape(-1), np.tile(np.arange(3), 90), 0.45)
    assert counts[0] == flat.size
    assert_bytes_equal(idx[0, :flat.size], flat // 3, "boxes")
    assert_bytes_equal(cls[0, :flat.size], flat % 3, "classes")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nms_padded_equals_nms_prefix(backend, family):  # nms_padded goes through multi_impl
    boxes, scores, _ = batch(family, 4, 1, 300)
    b, s = boxes[0].astype(np.float32), scores[0].astype(np.float32)
    full = ref.nms(b, s, 0.5)
    for K in (0, 5, full.size, 400):
        idx, count = dk.nms_padded(b, s, 0.5, K, backend=backend)
        assert count.shape == () and count.dtype == np.int64
        assert int(count) == min(K, full.size)
        assert_bytes_equal(idx[:int(count)], full[:K], f"K={K}")
        assert idx.shape == (K,) and (idx[int(count):] == -1).all()


def test_half_and_noncontiguous_inputs():
    torch = pytest.importorskip("torch")
    boxes, scores, classes = batch("clusters", 3, 2, 150, 0)
    b32 = torch.from_numpy(boxes.astype(np.float32))
    s32 = torch.from_numpy(scores.astype(np.float32))
    for dt in (torch.float16, torch.bfloat16):
        b, s = b32.to(dt), s32.to(dt)
        want = ref.multi_image_nms(b.float().numpy(), s.float().numpy(), 0.5, 60,
                                   idxs=classes, score_threshold=0.1)
        got = dk.multi_image_nms(b, s, 0.5, 60, idxs=torch.from_numpy(classes), score_threshold=0.1)
        _check(got, want, str(dt))
    # Non-contiguous: boxes as a strided view, scores transposed back.
    wide = torch.zeros(2, 150, 8)
    wide[..., ::2] = b32
    bt = wide[..., ::2]
    st = s32.t().contiguous().t()
    assert not bt.is_contiguous() and not st.is_contiguous()
    _check(dk.multi_image_nms(bt, st, 0.5, 60), ref.multi_image_nms(boxes.astype(np.float32),
                                                                     scores.astype(np.float32), 0.5, 60),
           "non-contiguous")


def test_errors_name_the_argument():
    b = np.zeros((2, 3, 4), np.float32)
    s = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="boxes"):
        dk.multi_image_nms(b[0], s, 0.5, 4)
    with pytest.raises(ValueError, match="scores"):
        dk.multi_image_nms(b, s[:, :2], 0.5, 4)
    with pytest.raises(ValueError, match="idxs"):
        dk.multi_image_nms(b, s, 0.5, 4, idxs=np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="idxs"):
        dk.multi_image_nms(b, s[..., None], 0.5, 4, idxs=np.zeros((2, 3), np.int64))
    for bad in (-1, 2.5, True, None):
        with pytest.raises(ValueError, match="max_output"):
            dk.multi_image_nms(b, s, 0.5, bad)
    with pytest.raises(TypeError, match="scores"):
        dk.multi_image_nms(b, s.astype(np.int32), 0.5, 4)
    with pytest.raises(TypeError, match="score_threshold"):
        dk.multi_image_nms(b, s, 0.5, 4, score_threshold="0.1")
    with pytest.raises(RuntimeError, match="boxes"):
        dk.nms_padded(b, s, 0.5, 4)
    with pytest.raises(ValueError, match="max_output"):
        dk.nms_padded(b[0], s[0], 0.5, -2)


def test_workspace_allocation_failure_is_a_memory_error():
    """A workspace that cannot be allocated fails before any launch, naming the size."""
    from detkernels.backends import native

    with pytest.raises(MemoryError, match=r"NMS of 1 x 1000000000000 candidates needs a "
                                          r"4611686018427387904 byte workspace on cpu"):
        native._workspace(np.empty(1), 1 << 62, "NMS of 1 x 1000000000000 candidates")


# ---- GPU backends (skip without a GPU) ---------------------------------------------------------------

GPU_BACKENDS = ("native", "numba", "cupy")
GPU_LIBS = ("torch", "cupy", "numba")


def _gpu_or_skip(backend: str, lib: str, dtype: str):
    """The array module for ``lib`` on a usable GPU, or skip with the reason."""
    import importlib

    from detkernels import _registry

    try:
        mod = importlib.import_module("numba.cuda" if lib == "numba" else lib)
    except ImportError as e:
        pytest.skip(f"{lib} is not installed ({e})")
    try:
        ok = mod.cuda.is_available() if lib == "torch" else (
            mod.is_available() if lib == "numba" else mod.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # no driver
        ok = False
    if not ok:
        pytest.skip(f"no CUDA device usable by {lib} on this machine")
    why = _registry.why_not(backend, "multi_image_nms", "cuda", dtype)
    if why:
        pytest.skip(f"backend {backend!r}: {why}")
    return mod


def _to(lib: str, mod, a: np.ndarray):
    if lib == "torch":
        return mod.from_numpy(np.ascontiguousarray(a)).cuda()
    if lib == "cupy":
        return mod.asarray(a)
    return mod.to_device(np.ascontiguousarray(a))


def _host(x):
    if x is None or isinstance(x, np.ndarray):
        return x
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "get"):
        return x.get()
    return x.cpu().numpy()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("lib", GPU_LIBS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_multi_image_nms_equals_reference(backend, lib, dtype):
    """Every GPU backend, from every array library, on every family: byte-equal, fixed-size
    outputs of the input's kind (torch / CuPy / Numba arrays)."""
    mod = _gpu_or_skip(backend, lib, dtype)
    for family in sorted(FAMILIES):
        for C, with_idxs in ((0, False), (0, True), (4, False)):
            boxes, scores, classes = batch(family, 5, 3, 300, C)
            b, s = boxes.astype(dtype), scores.astype(dtype)
            c = classes if with_idxs else None
            for sthr in (None, 0.3):
                for K in (0, 7, 1300):
                    want = ref.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
                    got = dk.multi_image_nms(_to(lib, mod, b), _to(lib, mod, s), 0.5, K,
                                             idxs=None if c is None else _to(lib, mod, c),
                                             score_threshold=sthr, backend=backend)
                    assert all(dk._arrays.kind(x) == lib for x in got)
                    _check(tuple(_host(x) for x in got), want, f"{backend} {lib} {family} C={C} K={K}")
            if lib == "torch":
                idx, count = dk.nms_padded(_to(lib, mod, b[0]), _to(lib, mod, s[0]), 0.5, 50,
                                           backend=backend)
                w_idx, w_count = ref.nms_padded(b[0], s[0], 0.5, 50)
                assert_bytes_equal(_host(idx), w_idx, f"nms_padded {backend} {family}")
                assert int(count) == int(w_count)


# ---- torch integration -----------------------------------------------------------------------------

torch = pytest.importorskip("torch")


def _tensors(C=0):
    boxes, scores, classes = batch("clusters", 9, 2, 200, C)
    return (torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(scores.astype(np.float32)),
            torch.from_numpy(classes))


def test_torch_eager_equals_reference():
    b, s, c = _tensors()
    got = dk.multi_image_nms(b, s, 0.5, 50, idxs=c)
    want = ref.multi_image_nms(b.numpy(), s.numpy(), 0.5, 50, idxs=c.numpy())
    assert all(isinstance(x, torch.Tensor) for x in got)
    _check(got, want, "torch")


def test_compile_fullgraph_no_dynamic_shapes():
    b, s, c = _tensors()
    b3, s3, _ = _tensors(3)

    def f(b, s, c, b3, s3):
        i1, n1 = dk.multi_image_nms(b, s, 0.5, 50, idxs=c, score_threshold=0.2)
        i2, k2, n2 = dk.multi_image_nms(b3, s3, 0.5, 40)
        p, n = dk.nms_padded(b[0], s[0], 0.5, 30)
        return i1, n1, i2, k2, n2, p, n

    got = torch.compile(f, fullgraph=True)(b, s, c, b3, s3)
    want = f(b, s, c, b3, s3)
    for g, w in zip(got, want):
        assert_bytes_equal(g, w, "compiled")


def test_export_has_static_output_shapes():
    b, s, c = _tensors()

    class M(torch.nn.Module):
        def forward(self, b, s, c):
            return dk.multi_image_nms(b, s, 0.5, 25, idxs=c)

    ep = torch.export.export(M(), (b, s, c))
    out_specs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    shapes = [tuple(x.meta["val"].shape) for x in out_specs]
    assert shapes == [(2, 25), (2,)]
    got = ep.module()(b, s, c)
    for g, w in zip(got, dk.multi_image_nms(b, s, 0.5, 25, idxs=c)):
        assert_bytes_equal(g, w, "exported")


def test_opcheck_custom_ops():
    b, s, c = _tensors()
    torch.library.opcheck(torch.ops.detkernels.multi_image_nms.default, (b, s, c, 0.5, 30, 0.1))
    torch.library.opcheck(torch.ops.detkernels.multi_image_nms.default, (b, s, None, 0.5, 30, None))
    torch.library.opcheck(torch.ops.detkernels.nms_padded.default, (b[0], s[0], 0.5, 30))


@pytest.mark.parametrize("bad", ["0.5", None, b"0.5"])
def test_threshold_is_validated_alike_everywhere(bad):
    """Every NMS entry validates iou_threshold the same way, at the public entry (nms_padded and
    multi_image_nms accepted the string "0.5" before the validation moved to detkernels/_checks.py)."""
    b = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
    s = np.array([0.9, 0.8], np.float32)
    calls = [lambda: dk.nms(b, s, bad), lambda: dk.batched_nms(b, s, np.zeros(2, np.int64), bad),
             lambda: dk.nms_padded(b, s, bad, 2), lambda: dk.multi_image_nms(b[None], s[None], bad, 2)]
    for call in calls:
        with pytest.raises(TypeError, match="iou_threshold must be a real number"):
            call()
