"""The CUDA NMS algorithm (csrc/ops/nms/nms_bitmask.h, launched by nms_cuda.cu).

Without a GPU: the same header functions run sequentially on the CPU (nms_emulate.cpp: same sort
keys, segments, mask tiles, keep scan with emulated threads) and must equal the NumPy reference
byte for byte on every adversarial family, with tiles as small as one 64-row block and odd thread
counts. With a GPU (skipped otherwise): the real kernels against the reference, non-default
streams, CUDA-graph capture, a second device.
"""
from __future__ import annotations

import numpy as np
import pytest

from detkernels.backends import native
from detkernels.reference import nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from _nms_emulation import check as _check, emulate as _emulate
from _gpu import cuda_devices as _cuda_devices, needs_gpu, torch

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

DTYPES = (np.float32, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("seed", range(2))
def test_emulated_single_image_equals_reference_nms(family, seed, dtype):
    """B = 1, max_output = N: the drop-in nms, tiles of 64 rows, 3 scan threads."""
    boxes, scores, _ = batch(family, seed, 1, 301)
    b, s = boxes[0].astype(dtype), scores[0].astype(dtype)
    for thr in (0.5, 0.3, 0.7, 0.0, -0.1, 1.0):
        want = ref.nms(b, s, thr)
        idx, _, counts = _emulate(b[None], s[None], None, thr, b.shape[0], tile_rows=64,
                                  scan_threads=3)
        assert counts[0] == want.size
        assert_bytes_equal(idx[0, :counts[0]], want, f"{family} thr={thr}")
        assert (idx[0, counts[0]:] == -1).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_emulated_per_class_equals_reference_batched_nms(family, dtype):
    boxes, scores, classes = batch(family, 7, 1, 257)
    b, s, c = boxes[0].astype(dtype), scores[0].astype(dtype), classes[0]
    for thr in (0.5, 0.3):
        want = ref.batched_nms(b, s, c, thr)
        idx, _, counts = _emulate(b[None], s[None], c[None], thr, b.shape[0], tile_rows=128,
                                  scan_threads=5)
        assert_bytes_equal(idx[0, :counts[0]], want, f"{family} thr={thr}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("C,with_idxs", [(0, False), (0, True), (1, False), (3, False)])
@pytest.mark.parametrize("sthr", [None, 0.25])
def test_emulated_multi_image_equals_reference(family, C, with_idxs, sthr):
    boxes, scores, classes = batch(family, 3, 3, 150, C)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    c = classes if with_idxs else None
    for K in (0, 1, 40, 500):
        want = ref.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
        # Tile rows: one 64-row block (images straddle tiles and words), and automatic.
        for kw in ({"tile_rows": 64, "scan_threads": 7}, {"scan_threads": 256}):
            _check(_emulate(b, s, c, 0.5, K, sthr, **kw), want, f"{family} C={C} K={K} {kw}")


def test_emulated_bounded_mask_many_tiles():
    """A mask cap far below N^2/8 bytes gives many tiles and still the reference's answer."""
    boxes, scores, classes = batch("clusters", 11, 2, 700, 0)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    want = ref.multi_image_nms(b, s, 0.5, 1400, idxs=classes)
    # 1400 candidates (700 per image) -> 22 column blocks, 12 words per mask row; a 1 byte cap
    # gives one 64-row block per tile (22 tiles).
    _check(_emulate(b, s, classes, 0.5, 1400, mask_cap_bytes=1, scan_threads=4), want, "cap=1")
    _check(_emulate(b, s, classes, 0.5, 1400, mask_cap_bytes=64 * 12 * 8 * 3, scan_threads=1),
           want, "3 blocks per tile")


def test_emulated_many_classes_segments():
    """1000+ classes: segments of a few boxes each, never compared across classes."""
    rng = np.random.default_rng(5)
    n = 3000
    xy = rng.uniform(0, 50, (n, 2))
    b = np.concatenate([xy, xy + 20], 1).astype(np.float32)  # heavy overlap across classes
    s = rng.uniform(size=n).astype(np.float32)
    c = rng.integers(0, 1200, n)
    want = ref.batched_nms(b, s, c, 0.5)
    idx, _, counts = _emulate(b[None], s[None], c[None], 0.5, n, tile_rows=256, scan_threads=32)
    assert_bytes_equal(idx[0, :counts[0]], want, "1200 classes")


def test_emulated_signed_zero_and_nan_scores_order():
    """Sort key: NaN first, then +inf, ..., -0.0 and +0.0 tie (index order), -inf last."""
    b = np.array([[0, 0, 1, 1], [10, 0, 11, 1], [20, 0, 21, 1], [30, 0, 31, 1], [40, 0, 41, 1],
                  [50, 0, 51, 1]], np.float32)
    s = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -0.0], np.float32)
    idx, _, counts = _emulate(b[None], s[None], None, 0.5, 6)
    assert idx[0].tolist() == [2, 4, 0, 1, 5, 3] == ref.nms(b, s, 0.5).tolist()
    idx, _, counts = _emulate(b[None].astype(np.float64), s[None].astype(np.float64), None, 0.5, 6)
    assert idx[0].tolist() == [2, 4, 0, 1, 5, 3]


def test_emulated_empty():
    for B, N, C in ((0, 5, 0), (2, 0, 0), (2, 3, 0)):
        b = np.zeros((B, N, 4), np.float32)
        s = np.zeros((B, N) if C == 0 else (B, N, C), np.float32)
        want = ref.multi_image_nms(b, s, 0.5, 4)
        _check(_emulate(b, s, None, 0.5, 4), want, f"B={B} N={N}")
    b = np.zeros((2, 3, 4), np.float32)
    s = np.zeros((2, 3, 0), np.float32)
    _check(_emulate(b, s, None, 0.5, 2), ref.multi_image_nms(b, s, 0.5, 2), "C=0 columns")


def test_emulated_rejects_bad_tiles():
    b = np.zeros((1, 4, 4), np.float32)
    s = np.zeros((1, 4), np.float32)
    with pytest.raises(ValueError, match="multiple of 64"):
        _emulate(b, s, None, 0.5, 4, tile_rows=65)
    with pytest.raises(ValueError, match="scan_threads"):
        _emulate(b, s, None, 0.5, 4, scan_threads=0)


# ---- on a GPU --------------------------------------------------------------------------------------

@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_points_built_and_fail_cleanly_without_a_gpu():
    """A CUDA build exports the NMS launchers; with no usable GPU they raise, never crash."""
    C = native._C
    assert all(hasattr(C, f) for f in ("nms_multi_cuda", "nms_multi_cuda_workspace_bytes", "box_iou_cuda"))
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launchers")
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.nms_multi_cuda_workspace_bytes(0, 1, 10, 0, False, 1 << 20, 0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.nms_multi_cuda(0, 0, 0, 0, 1, 10, 0, 0.5, None, 10, 0, 0, 0, 0, 0, 1 << 20, 0, 0)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpu_nms_and_batched_nms_equal_reference(family, dtype):
    import detkernels as dk

    boxes, scores, classes = batch(family, 1, 1, 2000)
    tdt = getattr(torch, dtype)
    b = torch.from_numpy(boxes[0]).to(tdt)
    s = torch.from_numpy(scores[0]).to(tdt)
    c = torch.from_numpy(classes[0])
    bn, sn = b.float().numpy() if dtype != "float64" else b.numpy(), s.float().numpy() if dtype != "float64" else s.numpy()
    for thr in (0.5, 0.3, 0.7):
        got = dk.nms(b.cuda(), s.cuda(), thr, backend="native")
        assert_bytes_equal(got, ref.nms(bn, sn, thr), f"nms {family} {dtype}")
        got = dk.batched_nms(b.cuda(), s.cuda(), c.cuda(), thr, backend="native")
        assert_bytes_equal(got, ref.batched_nms(bn, sn, classes[0], thr), f"batched {family} {dtype}")


@needs_gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("C", [0, 4])
def test_gpu_multi_image_equals_reference(family, C):
    import detkernels as dk

    boxes, scores, classes = batch(family, 2, 4, 900, C)
    b = torch.from_numpy(boxes.astype(np.float32)).cuda()
    s = torch.from_numpy(scores.astype(np.float32)).cuda()
    c = None if C else torch.from_numpy(classes).cuda()
    for sthr in (None, 0.2):
        want = ref.multi_image_nms(b.cpu().numpy(), s.cpu().numpy(), 0.5, 100,
                                   idxs=None if c is None else classes, score_threshold=sthr)
        got = dk.multi_image_nms(b, s, 0.5, 100, idxs=c, score_threshold=sthr, backend="native")
        if C == 0:
            got = (got[0], None, got[1])
        _check(got, want, f"{family} C={C} sthr={sthr}")


@needs_gpu
def test_gpu_tiled_mask_bounded(monkeypatch):
    """A tiny mask cap (one 64-row block per tile) gives the same answer on the GPU."""
    import detkernels as dk

    monkeypatch.setattr(native, "NMS_MASK_BYTES", 1)
    boxes, scores, classes = batch("clusters", 4, 1, 5000)
    b = torch.from_numpy(boxes[0].astype(np.float32))
    s = torch.from_numpy(scores[0].astype(np.float32))
    got = dk.nms(b.cuda(), s.cuda(), 0.5, backend="native")
    assert_bytes_equal(got, ref.nms(b.numpy(), s.numpy(), 0.5), "tiled")


@needs_gpu
def test_gpu_nondefault_stream_and_graph_capture():
    import detkernels as dk

    boxes, scores, _ = batch("clusters", 5, 2, 3000)
    b = torch.from_numpy(boxes.astype(np.float32)).cuda()
    s = torch.from_numpy(scores.astype(np.float32)).cuda()
    want = ref.multi_image_nms(b.cpu().numpy(), s.cpu().numpy(), 0.5, 300)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = dk.multi_image_nms(b, s, 0.5, 300)
    stream.synchronize()
    _check((got[0], None, got[1]), want, "side stream")

    # Capture the fixed-size form; replay on new data copied into the captured inputs.
    sb, ss = b.clone(), s.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        dk.multi_image_nms(sb, ss, 0.5, 300)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_idx, g_counts = dk.multi_image_nms(sb, ss, 0.5, 300)
    boxes2, scores2, _ = batch("uniform", 6, 2, 3000)
    sb.copy_(torch.from_numpy(boxes2.astype(np.float32)))
    ss.copy_(torch.from_numpy(scores2.astype(np.float32)))
    graph.replay()
    torch.cuda.synchronize()
    want2 = ref.multi_image_nms(boxes2.astype(np.float32), scores2.astype(np.float32), 0.5, 300)
    _check((g_idx, None, g_counts), want2, "graph replay")

    idx_graph = torch.cuda.CUDAGraph()
    p_b, p_s = sb[0].clone(), ss[0].clone()
    with torch.cuda.graph(idx_graph):
        p_idx, p_count = dk.nms_padded(p_b, p_s, 0.5, 100)
    idx_graph.replay()
    torch.cuda.synchronize()
    w_idx, w_count = ref.nms_padded(p_b.cpu().numpy(), p_s.cpu().numpy(), 0.5, 100)
    assert_bytes_equal(p_idx, w_idx, "nms_padded graph")
    assert int(p_count) == int(w_count)


@needs_gpu
@pytest.mark.skipif(_cuda_devices() < 2, reason="needs a second GPU (cuda:1)")
def test_gpu_second_device():
    import detkernels as dk

    boxes, scores, classes = batch("clusters", 8, 1, 2000)
    b = torch.from_numpy(boxes[0].astype(np.float32))
    s = torch.from_numpy(scores[0].astype(np.float32))
    with torch.cuda.device(0):
        got = dk.nms(b.to("cuda:1"), s.to("cuda:1"), 0.5)
        assert got.device == torch.device("cuda:1")
        assert torch.cuda.current_device() == 0
    assert_bytes_equal(got, ref.nms(b.numpy(), s.numpy(), 0.5), "cuda:1")
    iou = dk.box_iou(b.to("cuda:1"), b.to("cuda:1"))
    assert iou.device == torch.device("cuda:1")


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("family", ["uniform", "degenerate", "nonfinite", "at_threshold"])
def test_gpu_iou_family_batched_equals_reference(family, dtype):
    """box_iou_cuda: [B, N, 4] x [B, M, 4] in one launch, every kind and format, bit-exact."""
    import detkernels as dk
    from detkernels.reference import box_iou as ref_iou

    b1, _, _ = batch(family, 3, 3, 70)
    b2, _, _ = batch(family, 4, 3, 45)
    t1 = torch.from_numpy(b1).to(getattr(torch, dtype))
    t2 = torch.from_numpy(b2).to(getattr(torch, dtype))
    n1 = t1.double().numpy() if dtype == "float64" else t1.float().numpy()
    n2 = t2.double().numpy() if dtype == "float64" else t2.float().numpy()
    for fmt in ("xyxy", "xywh", "cxcywh"):
        got = dk.box_iou(t1.cuda(), t2.cuda(), fmt, backend="native")
        assert_bytes_equal(got, ref_iou.box_iou(n1, n2, fmt), f"iou {fmt}")
    for name in ("generalized_box_iou", "distance_box_iou", "complete_box_iou"):
        got = getattr(dk, name)(t1.cuda(), t2.cuda(), backend="native")
        assert_bytes_equal(got, getattr(ref_iou, name)(n1, n2), name)
