"""The CUDA DIoU-NMS (issue 13): the bitmask NMS engine (csrc/ops/nms/nms_bitmask.h, launched by
nms_cuda.cu) with diou_nms.h's DiouNmsSuppress as its predicate.

Without a GPU: the same header functions run sequentially on the CPU (nms_emulate.cpp's
diou_nms_multi_emulate_cpu: same sort keys, segments, mask tiles, keep scan with emulated threads,
the predicate the CPU driver and the kernels use) and must equal the NumPy reference
(detkernels/reference/diou_nms.py) byte for byte on every NMS input family, both dtypes, several
thresholds and betas, per class, several images per call, tiles as small as one 64-row block and
odd thread counts. With a GPU (skipped otherwise): the real kernels through the public API.
"""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import diou_nms as ref
from detkernels.reference import nms as ref_nms

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from _nms_emulation import check as _check, emulate as _emulate
from _gpu import needs_gpu, torch

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

DTYPES = (np.float32, np.float64)
THRESHOLDS = (0.5, 0.3, 0.7, 0.0, -0.1, 1.0)
BETAS = (1.0, 0.6, 2.0)


def _want(b, s, c, thr, beta):
    return ref.diou_nms(b, s, thr, beta) if c is None else ref.batched_diou_nms(b, s, c, thr, beta)


def _single(b, s, c, thr, beta, **kw):
    """diou_nms as the CUDA path runs it: one image, max_output = N, then the first counts[0]."""
    idx, cls, counts = _emulate(b[None], s[None], None if c is None else c[None], thr, b.shape[0],
                                beta=beta, **kw)
    assert cls is None and (idx[0, counts[0]:] == -1).all()
    return idx[0, :counts[0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("beta", BETAS)
def test_emulated_equals_reference_diou_nms(family, beta, dtype):
    """B = 1, no classes: tiles of 64 rows, 3 scan threads."""
    boxes, scores, _ = batch(family, 0, 1, 301)
    b, s = boxes[0].astype(dtype), scores[0].astype(dtype)
    for thr in THRESHOLDS:
        got = _single(b, s, None, thr, beta, tile_rows=64, scan_threads=3)
        assert_bytes_equal(got, _want(b, s, None, thr, beta), f"{family} thr={thr} beta={beta}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_emulated_per_class_equals_reference_batched(family, dtype):
    """idxs: the engine's class segments (no coordinate offsets), as batched_nms on CUDA."""
    boxes, scores, classes = batch(family, 7, 1, 257)
    b, s, c = boxes[0].astype(dtype), scores[0].astype(dtype), classes[0]
    for thr, beta in ((0.5, 1.0), (0.3, 0.6), (0.0, 2.0)):
        for kw in ({"tile_rows": 128, "scan_threads": 5}, {"scan_threads": 256}):
            got = _single(b, s, c, thr, beta, **kw)
            assert_bytes_equal(got, _want(b, s, c, thr, beta), f"{family} thr={thr} {kw}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("with_idxs", [False, True])
def test_emulated_multi_image(family, with_idxs):
    """B = 3 images in one call (images straddle tiles and mask words): each image's kept boxes
    are the reference's, the first K, padded with -1."""
    boxes, scores, classes = batch(family, 3, 3, 150)
    for dtype in DTYPES:
        b, s = boxes.astype(dtype), scores.astype(dtype)
        c = classes if with_idxs else None
        per = [_want(b[i], s[i], None if c is None else c[i], 0.4, 0.8) for i in range(3)]
        for K in (0, 1, 40, 500):
            want_idx = np.full((3, K), -1, np.int64)
            for i, w in enumerate(per):
                want_idx[i, :min(K, w.size)] = w[:K]
            want = (want_idx, None, np.array([min(K, w.size) for w in per], np.int64))
            for kw in ({"tile_rows": 64, "scan_threads": 7}, {"scan_threads": 256}):
                _check(_emulate(b, s, c, 0.4, K, beta=0.8, **kw), want, f"{family} K={K} {kw}")


def test_emulated_bounded_mask_many_tiles():
    """A mask cap far below N^2/8 bytes gives many tiles and still the reference's answer."""
    boxes, scores, classes = batch("clusters", 11, 1, 1400)
    b, s, c = boxes[0].astype(np.float32), scores[0].astype(np.float32), classes[0]
    for cc in (None, c):
        want = _want(b, s, cc, 0.5, 1.0)
        assert_bytes_equal(_single(b, s, cc, 0.5, 1.0, mask_cap_bytes=1, scan_threads=4), want, "cap=1")
        assert_bytes_equal(_single(b, s, cc, 0.5, 1.0, mask_cap_bytes=64 * 23 * 8 * 3, scan_threads=1),
                           want, "3 blocks per tile")


def test_emulated_is_diou_not_iou():
    """The predicate is really DIoU's: a box whose centre is far from the kept one's survives an
    overlap that plain NMS (the same engine, IoU predicate) suppresses; identical zero-area boxes
    (R = 0/0 = NaN) never suppress."""
    b = np.array([[0, 0, 10, 10], [0, 0, 10, 7], [50, 50, 50, 50], [50, 50, 50, 50]], np.float32)
    s = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU(0, 1) = 0.7, R = 1.5^2 / 200 = 0.01125, DIoU = 0.68875: at 0.695 IoU suppresses 1,
    # DIoU does not; at 0.65 both do.
    assert _single(b, s, None, 0.695, 1.0).tolist() == [0, 1, 2, 3] == ref.diou_nms(b, s, 0.695).tolist()
    idx, _, counts = _emulate(b[None], s[None], None, 0.695, 4)
    assert idx[0, :counts[0]].tolist() == [0, 2, 3] == ref_nms.nms(b, s, 0.695).tolist()
    assert _single(b, s, None, 0.65, 1.0).tolist() == [0, 2, 3]
    # and the two differ on a real family (the tests above are not vacuous)
    boxes, scores, _ = batch("clusters", 2, 1, 400)
    bb, ss = boxes[0].astype(np.float32), scores[0].astype(np.float32)
    idx, _, counts = _emulate(bb[None], ss[None], None, 0.5, 400)
    assert _single(bb, ss, None, 0.5, 1.0).tolist() != idx[0, :counts[0]].tolist()


def test_emulated_empty_and_one_box():
    for dtype in DTYPES:
        e = np.zeros((0, 4), dtype)
        assert _single(e, np.zeros(0, dtype), None, 0.5, 1.0).size == 0
        one = np.array([[1, 2, 3, 4]], dtype)
        assert_bytes_equal(_single(one, np.array([0.5], dtype), None, 0.5, 0.6),
                           np.zeros(1, np.int64), "one box")
        out, cls, counts = _emulate(np.zeros((2, 0, 4), dtype), np.zeros((2, 0), dtype), None, 0.5,
                                    3, beta=1.0)
        assert (out == -1).all() and (counts == 0).all() and cls is None


def test_emulated_rejects_bad_tiles():
    b = np.zeros((1, 4, 4), np.float32)
    s = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="multiple of 64"):
        _emulate(b, s, None, 0.5, 4, tile_rows=65, beta=1.0)
    with pytest.raises(ValueError, match="scan_threads"):
        _emulate(b, s, None, 0.5, 4, scan_threads=0, beta=1.0)


def test_native_declares_cuda():
    """native serves diou_nms on cuda (compiled; emulated here), numba still does not serve it."""
    from detkernels import _registry
    from detkernels.backends._table import TABLE

    _registry._load()
    assert "cuda" in TABLE["native"].impls["diou_nms"][1]


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_point_built_and_fails_cleanly_without_a_gpu():
    """A CUDA build exports the DIoU-NMS launcher; with no usable GPU it raises, never crashes."""
    C = native._C
    assert hasattr(C, "diou_nms_multi_cuda")
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launcher")
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.diou_nms_multi_cuda(0, 0, 0, 0, 1, 10, 0, 0.5, 1.0, None, 10, 0, 0, 0, 0, 0, 1 << 20, 0, 0)


@needs_gpu
@pytest.mark.parametrize("backend", ["native", "cupy"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpu_diou_nms_equals_reference(family, backend):
    import detkernels as dk
    from detkernels import _registry

    if why := _registry.why_not(backend, "diou_nms", "cuda"):
        pytest.skip(f"{backend}: {why}")
    boxes, scores, classes = batch(family, 1, 1, 2000)
    for dtype in DTYPES:
        b, s, c = boxes[0].astype(dtype), scores[0].astype(dtype), classes[0]
        for thr, beta in ((0.5, 1.0), (0.3, 0.6)):
            for idxs in (None, c):
                got = dk.diou_nms(torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda(), thr,
                                  beta=beta, idxs=None if idxs is None else torch.from_numpy(idxs).cuda(),
                                  backend=backend)
                assert got.device.type == "cuda"
                assert_bytes_equal(got.cpu(), _want(b, s, idxs, thr, beta),
                                   f"{backend} {family} {dtype.__name__} idxs={idxs is not None}")


@needs_gpu
def test_gpu_tiled_mask_bounded(monkeypatch):
    """A tiny mask cap (one 64-row block per tile) gives the same answer on the GPU."""
    import detkernels as dk

    monkeypatch.setattr(native, "NMS_MASK_BYTES", 1)
    boxes, scores, classes = batch("clusters", 4, 1, 5000)
    b, s = boxes[0].astype(np.float32), scores[0].astype(np.float32)
    got = dk.diou_nms(torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda(), 0.5, beta=0.6,
                      backend="native")
    assert_bytes_equal(got.cpu(), ref.diou_nms(b, s, 0.5, 0.6), "tiled")
