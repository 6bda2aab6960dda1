"""The CUDA rotated NMS (issue 17): the bitmask NMS engine (csrc/ops/nms/nms_bitmask.h, launched by
nms_cuda.cu's nms_rotated_multi_cuda) with nms_rotated_gpu.h's RotatedNmsSuppress over
box_iou_rotated.h's metric (rotated IoU or ProbIoU), greedy or Fast-NMS (ultralytics' OBB rule).

Without a GPU: the same header functions run sequentially on the CPU (nms_emulate.cpp's
nms_rotated_multi_emulate_cpu: the engine's sort keys, segments, mask tiles, keep scan with
emulated threads) and must equal the NumPy reference (detkernels/reference/rotated.py) byte for
byte on every rotated family, both dtypes, several thresholds, per class, several images per call
with a score filter, tiles of one 64-row block and odd thread counts. With a GPU (skipped
otherwise): the real kernels through the public API, where the device's double cos/sin/exp/log
may differ from glibc's in the last bit (docs/SPEC.md §8): rotated IoU decisions are asserted
equal (a last-bit IoU change flips a decision only at an IoU within ~1e-16 of the threshold);
ProbIoU's are asserted equal too on these families.
"""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import rotated as R

from _helpers import assert_bytes_equal
from _rotated_families import FAMILIES, make
from _gpu import needs_gpu, torch

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

DTYPES = (np.float32, np.float64)
THRESHOLDS = (0.3, 0.5, 0.0, -0.1, 1.0)
METRICS = ("iou", "probiou", "probiou_fast")


def _boxes(family, rng, n, metric):
    b = make(family, rng, n)
    if metric != "iou":
        b = b.copy()
        b[:, 4] = np.deg2rad(b[:, 4])  # ultralytics' xywhr: radians
    return b


def _scores(rng, n):
    """Ties (quarter steps), a NaN now and then."""
    s = rng.integers(0, 5, n) / 4.0
    s[rng.random(n) < 0.05] = np.nan
    return s


def _want(b, s, c, thr, metric):
    if metric == "iou":
        return R.nms_rotated(b, s, thr) if c is None else R.batched_nms_rotated(b, s, c, thr)
    return R.nms_probiou(b, s, thr, idxs=c, fast=metric == "probiou_fast")


def _emulate(b, s, c, thr, K, sthr=None, metric="iou", **kw):
    c = None if c is None else np.ascontiguousarray(c, dtype=np.int64)
    return native.nms_rotated_multi_emulated(np.ascontiguousarray(b), np.ascontiguousarray(s), c,
                                             thr, K, sthr, metric, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("family", FAMILIES)
def test_emulated_equals_reference(family, metric, dtype):
    """One image (B = 1, max_output = N), without and with classes: tiles of 64 rows, 3 scan
    threads, so rows cross tiles and words are owned by several threads."""
    rng = np.random.default_rng(11)
    for n in (0, 1, 150):
        b = _boxes(family, rng, n, metric).astype(dtype)
        s = _scores(rng, n).astype(dtype)
        c = rng.integers(0, 3, n)
        for thr in THRESHOLDS:
            for cls in (None, c):
                idx, counts = _emulate(b[None], s[None], None if cls is None else cls[None], thr, n,
                                       metric=metric, tile_rows=64, scan_threads=3)
                assert (idx[0, counts[0]:] == -1).all()
                want = _want(b, s, cls, thr, metric)
                assert_bytes_equal(idx[0, :counts[0]], want,
                                   f"{family} {metric} thr={thr} classes={cls is not None}")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("threads", [1, 7, 256])
def test_emulated_multi_image_fixed_size(metric, threads):
    """B = 3 images in one call, score filter (score > 0.3 in double), max_output below and above
    the kept counts: per image the first counts[b] indices are the single-image result over the
    boxes that pass the filter, mapped back, capped; then -1."""
    rng = np.random.default_rng(12)
    fams = ("clustered", "identical", "containment")
    n = 90
    b = np.stack([_boxes(f, rng, n, metric) for f in fams])
    s = np.stack([_scores(rng, n) for _ in fams])
    c = rng.integers(0, 2, (3, n))
    for K in (5, n):
        for cls in (None, c):
            idx, counts = _emulate(b, s, cls, 0.4, K, 0.3, metric=metric, tile_rows=128,
                                   scan_threads=threads)
            for k in range(3):
                keep = np.nonzero(s[k].astype(np.float64) > 0.3)[0]
                sub = _want(b[k][keep], s[k][keep], None if cls is None else cls[k][keep], 0.4, metric)
                want = keep[sub][:K]
                assert counts[k] == len(want)
                assert_bytes_equal(idx[k, :counts[k]], want, f"{metric} image {k} K={K}")
                assert (idx[k, counts[k]:] == -1).all()


def test_fast_differs_from_greedy_where_it_should():
    """A chain a > b > c where a suppresses b and b suppresses c but a does not reach c (ProbIoU
    0.354 neighbours, 0.059 apart; threshold 0.2): greedy keeps a and c, Fast-NMS keeps a only
    (b, although suppressed, still suppresses c)."""
    b = np.array([[[0.0, 0, 10, 4, 0], [6.0, 0, 10, 4, 0], [12.0, 0, 10, 4, 0]]])
    s = np.array([[0.9, 0.8, 0.7]])
    greedy, ng = _emulate(b, s, None, 0.2, 3, metric="probiou")
    fast, nf = _emulate(b, s, None, 0.2, 3, metric="probiou_fast")
    assert greedy[0].tolist() == [0, 2, -1] and ng.tolist() == [2]
    assert fast[0].tolist() == [0, -1, -1] and nf.tolist() == [1]
    assert R.nms_probiou(b[0], s[0], 0.2).tolist() == [0, 2]
    assert R.nms_probiou(b[0], s[0], 0.2, fast=True).tolist() == [0]


def test_emulated_bad_metric_raises():
    with pytest.raises(KeyError):
        _emulate(np.zeros((1, 2, 5)), np.zeros((1, 2)), None, 0.5, 2, metric="giou")
    with pytest.raises(ValueError, match="unknown metric"):
        native._C.testing.nms_rotated_multi_emulate_cpu(1, 9, 0, 0, 0, 1, 0, 0.5, 1e-7, None, 0, 0, 0,
                                                        0, 1 << 20, 1)


# ---- on a GPU --------------------------------------------------------------------------------------


@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_point_built_and_registered():
    from detkernels import _registry
    from detkernels.backends._table import TABLE

    assert hasattr(native._C, "nms_rotated_multi_cuda")
    _registry._load()
    for op in ("nms_rotated", "nms_probiou"):
        assert "cuda" in TABLE["native"].impls[op][1], op


@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_nms_rotated_equals_reference(family, metric):
    import detkernels as dk

    rng = np.random.default_rng(13)
    for dtype in DTYPES:
        b = _boxes(family, rng, 400, metric).astype(dtype)
        s = _scores(rng, 400).astype(dtype)
        c = rng.integers(0, 3, 400)
        B, S, C = (torch.from_numpy(x).cuda() for x in (b, s, c))
        for cls, Cc in ((None, None), (c, C)):
            if metric == "iou":
                got = dk.nms_rotated(B, S, 0.3, backend="native") if cls is None else \
                    dk.batched_nms_rotated(B, S, Cc, 0.3, backend="native")
            else:
                got = dk.nms_probiou(B, S, 0.3, Cc, fast=metric == "probiou_fast", backend="native")
            assert got.device.type == "cuda"
            assert_bytes_equal(got.cpu().numpy(), _want(b, s, cls, 0.3, metric), f"{family} {dtype}")


@needs_gpu
@pytest.mark.parametrize("metric", METRICS)
def test_gpu_multi_image_equals_reference(metric):
    """The public fixed-size forms on CUDA tensors: one launch sequence for the whole batch."""
    import detkernels as dk

    rng = np.random.default_rng(14)
    fams = ("clustered", "identical", "containment", "uniform")
    b = np.stack([_boxes(f, rng, 300, metric) for f in fams]).astype(np.float32)
    s = np.stack([_scores(rng, 300) for _ in fams]).astype(np.float32)
    c = rng.integers(0, 3, (4, 300))
    B, S, C = (torch.from_numpy(x).cuda() for x in (b, s, c))
    if metric == "iou":
        got = dk.multi_image_nms_rotated(B, S, 0.4, 50, idxs=C, score_threshold=0.2, backend="native")
    else:
        got = dk.multi_image_nms_probiou(B, S, 0.4, 50, idxs=C, fast=metric == "probiou_fast",
                                         score_threshold=0.2, backend="native")
    for k in range(4):
        keep = np.nonzero(s[k].astype(np.float64) > 0.2)[0]
        want = keep[_want(b[k][keep], s[k][keep], c[k][keep], 0.4, metric)][:50]
        n = int(got[1][k])
        assert_bytes_equal(got[0][k, :n].cpu().numpy(), want, f"{metric} image {k}")
        assert (got[0][k, n:] == -1).all()
