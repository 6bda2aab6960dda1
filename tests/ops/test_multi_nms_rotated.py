"""multi_image_nms_rotated / multi_image_nms_probiou (issue 17): per image, byte for byte the
single-image reference (nms_rotated, batched_nms_rotated, nms_probiou greedy and fast) on the boxes
with score > score_threshold, truncated to max_output and padded with -1; every backend against the
multi-image reference on the rotated families; empty batches and images; bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels import _registry
from detkernels.reference import rotated as R

from _helpers import assert_bytes_equal
from _rotated_families import FAMILIES, make
from conftest import backend_param

BACKENDS = [backend_param(b, "multi_image_nms_rotated") for b in ("native", "numpy")]
METRICS = ("iou", "probiou", "probiou_fast")


def _batch(family, rng, B, N, dtype, metric):
    """[B, N, 5] boxes of a family (radians for ProbIoU), [B, N] scores (ties, NaN), [B, N] classes."""
    b = np.stack([make(family, rng, N) for _ in range(B)]) if N else np.zeros((B, 0, 5))
    if metric != "iou":
        b[..., 4] = np.deg2rad(b[..., 4])
    if family == "identical":
        s = rng.choice(np.array([0.25, 0.5, 1.0]), (B, N))
    else:
        s = rng.random((B, N))
        if family == "nonfinite":
            s[rng.random((B, N)) < 0.1] = np.nan
    return b.astype(dtype), s.astype(dtype), rng.integers(0, 3, (B, N))


def _call(metric, b, s, thr, K, idxs=None, score_threshold=None, backend=None, fmt="cxcywhr"):
    if metric == "iou":
        return detkernels.multi_image_nms_rotated(b, s, thr, K, fmt, idxs=idxs, score_threshold=score_threshold,
                                                  backend=backend)
    return detkernels.multi_image_nms_probiou(b, s, thr, K, idxs=idxs, fast=metric == "probiou_fast",
                                              score_threshold=score_threshold, backend=backend)


def _single(metric, b, s, thr, idxs, fmt="cxcywhr"):
    """The single-image reference function of the metric on one image's boxes."""
    if metric == "iou":
        return R.nms_rotated(b, s, thr, fmt) if idxs is None else R.batched_nms_rotated(b, s, idxs, thr, fmt)
    return R.nms_probiou(b, s, thr, idxs, fast=metric == "probiou_fast")


def _expected(metric, b, s, thr, K, idxs=None, score_threshold=None, fmt="cxcywhr"):
    """Composed image by image from the single-image reference (independent of _per_image)."""
    B, N = s.shape
    out, counts = np.full((B, K), -1, np.int64), np.zeros(B, np.int64)
    for i in range(B):
        sel = np.arange(N) if score_threshold is None else np.flatnonzero(s[i].astype(np.float64) > score_threshold)
        if sel.size:
            q = sel[_single(metric, b[i][sel], s[i][sel], thr, None if idxs is None else idxs[i][sel], fmt)][:K]
            out[i, :q.size], counts[i] = q, q.size
    return out, counts


def _truncate(full, K):
    """(indices, counts) computed with N slots, cut or padded to K slots."""
    idx, counts = full
    n = idx.shape[1]
    idx = idx[:, :K] if K <= n else np.pad(idx, ((0, 0), (0, K - n)), constant_values=-1)
    return idx, np.minimum(counts, K)


def _same(got, want, what):
    assert isinstance(got, tuple) and len(got) == 2, what
    assert_bytes_equal(got[0], want[0], f"{what} indices")
    assert_bytes_equal(got[1], want[1], f"{what} counts")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_single_image_reference(metric, family, dtype, rng):
    """The multi-image reference and the native backend, per image, against the single-image
    reference composed here: with and without classes and score threshold, max_output below and
    above the kept counts, a negative threshold (one box per class and image survives)."""
    N = 32
    b, s, c = _batch(family, rng, 2, N, dtype, metric)
    native = "native" if _registry.why_not("native", "multi_image_nms_rotated", "cpu", dtype) is None else None
    for idxs in (None, c):
        for sthr in (None, 0.3):
            for thr in (0.3, -0.5):
                full = _expected(metric, b, s, thr, N, idxs, sthr)
                what = f"idxs={idxs is not None} sthr={sthr} thr={thr}"
                if thr > 0:
                    assert full[1].min() > 0 and (sthr is None or full[1].max() < N), what  # both act
                    K = 4 if sthr is None else N + 3
                    if metric == "iou":
                        got = R.multi_image_nms_rotated(b, s, thr, K, idxs=idxs, score_threshold=sthr)
                    else:
                        got = R.multi_image_nms_probiou(b, s, thr, K, idxs=idxs, fast=metric == "probiou_fast",
                                                        score_threshold=sthr)
                    _same(got, _truncate(full, K), f"reference {what} K={K}")
                for K in (0, 5, N + 3) if native else ():
                    _same(_call(metric, b, s, thr, K, idxs, sthr, native), _truncate(full, K),
                          f"native {what} K={K}")


@pytest.mark.parametrize("fmt", ["xywhr", "xyxyxyxy"])
def test_formats(fmt, rng, torch):
    """The box formats convert first (torchvision's formulas), then the per-image rule on them."""
    from torchvision.ops import box_convert

    b, s, c = _batch("clustered", rng, 2, 30, "float32", "iou")
    x = box_convert(torch.from_numpy(b), "cxcywhr", fmt).numpy()
    for idxs in (None, c):
        want = _expected("iou", x, s, 0.2, 12, idxs, 0.1, fmt)
        for backend in ("native", "numpy"):
            _same(_call("iou", x, s, 0.2, 12, idxs, 0.1, backend, fmt), want, f"{fmt} {backend}")
        _same(R.multi_image_nms_rotated(x, s, 0.2, 12, fmt, idxs, 0.1), want, f"{fmt} reference")


@pytest.mark.parametrize("metric", METRICS)
def test_torch_tensors_and_class_ids(metric, rng, torch):
    """torch tensors give NumPy's bytes; float and int32 class ids group as int64 ones; half
    inputs are computed in float32, float32 + float64 in float64."""
    b, s, c = _batch("clustered", rng, 3, 30, "float32", metric)
    want = _expected(metric, b, s, 0.25, 10, c, 0.2)
    got = _call(metric, torch.from_numpy(b), torch.from_numpy(s), 0.25, 10, torch.from_numpy(c), 0.2)
    assert all(isinstance(g, torch.Tensor) for g in got)
    _same(got, want, "torch")
    _same(_call(metric, b, s, 0.25, 10, c.astype(np.float32) * 0.5, 0.2), want, "float ids")
    _same(_call(metric, b, s, 0.25, 10, c.astype(np.int32), 0.2), want, "int32 ids")
    h = b.astype(np.float16)
    _same(_call(metric, h, s.astype(np.float16), 0.25, 10), _expected(metric, h.astype(np.float32),
                                                                       s.astype(np.float16).astype(np.float32),
                                                                       0.25, 10), "float16")
    _same(_call(metric, b, s.astype(np.float64), 0.25, 10), _expected(metric, b.astype(np.float64),
                                                                       s.astype(np.float64), 0.25, 10), "mixed")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", METRICS)
def test_empty(backend, metric):
    z = np.zeros
    for B, N, K in ((0, 5, 3), (2, 0, 3), (0, 0, 0), (2, 4, 0)):
        b = z((B, N, 5), np.float32)
        b[..., 2:4] = 1
        got = _call(metric, b, z((B, N), np.float32), 0.5, K, backend=backend)
        _same(got, (np.full((B, K), -1, np.int64), z(B, np.int64)), f"B={B} N={N} K={K}")
    # Every score at or below the threshold (NaN fails it): nothing kept.
    b = np.tile(np.array([0, 0, 4, 2, 0.3], np.float32), (2, 3, 1))
    s = np.array([[0.5, np.nan, 0.1], [0.2, 0.5, 0.5]], np.float32)
    _same(_call(metric, b, s, 0.5, 2, score_threshold=0.5, backend=backend),
          (np.full((2, 2), -1, np.int64), z(2, np.int64)), "filtered out")
    # Without a threshold NaN scores come first; one box each (the duplicates are suppressed).
    _same(_call(metric, b, s, 0.5, 2, backend=backend), (np.array([[1, -1], [1, -1]]), np.array([1, 1])), "NaN")


def test_hand_computed():
    """Two images: a 90-degree-turned duplicate of the best (suppressed), a disjoint box (kept),
    a contained box with IoU 1/4 (kept at 0.3); image 1 filters by score."""
    one = np.array([[0, 0, 4, 2, 0], [0, 0, 2, 4, 90], [50, 50, 4, 2, 30], [0, 0, 2, 1, 0]], np.float64)
    b = np.stack([one, one])
    s = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    idx, counts = detkernels.multi_image_nms_rotated(b, s, 0.3, 5)
    assert idx.tolist() == [[0, 2, 3, -1, -1], [0, 2, 3, -1, -1]] and counts.tolist() == [3, 3]
    idx, counts = detkernels.multi_image_nms_rotated(b, s, 0.3, 2, score_threshold=0.65)
    assert idx.tolist() == [[0, 2], [0, 2]] and counts.tolist() == [2, 2]
    idx, counts = detkernels.multi_image_nms_rotated(b, s, 0.2, 4, idxs=np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))
    assert idx.tolist() == [[0, 1, 2, -1], [0, 2, -1, -1]] and counts.tolist() == [3, 2]


def test_errors():
    b, s = np.zeros((2, 3, 5), np.float32), np.zeros((2, 3), np.float32)
    f, fp = detkernels.multi_image_nms_rotated, detkernels.multi_image_nms_probiou
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, N, 5\] for fmt='cxcywhr'"):
        f(b[0], s, 0.5, 4)
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, N, 8\] for fmt='xyxyxyxy'"):
        f(b, s, 0.5, 4, "xyxyxyxy")
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, N, 5\] \(cx, cy, w, h, radians\)"):
        fp(np.zeros((2, 3, 4), np.float32), s, 0.5, 4)
    with pytest.raises(ValueError, match="fmt must be one of"):
        f(b, s, 0.5, 4, "xyxy")
    with pytest.raises(ValueError, match=r"scores must have shape \[2, 3\]"):
        f(b, s[:, :2], 0.5, 4)
    with pytest.raises(ValueError, match=r"scores must have shape \[2, 3\]"):
        fp(b, s[..., None], 0.5, 4)
    with pytest.raises(ValueError, match=r"idxs must have shape \[2, 3\]"):
        f(b, s, 0.5, 4, idxs=np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="idxs must be a numeric array"):
        fp(b, s, 0.5, 4, idxs=np.zeros((2, 3), "U1"))
    for bad in (-1, 2.0, True, None):
        with pytest.raises(ValueError, match="max_output must be a non-negative int"):
            f(b, s, 0.5, bad)
        with pytest.raises(ValueError, match="max_output must be a non-negative int"):
            fp(b, s, 0.5, bad)
    with pytest.raises(TypeError, match="iou_threshold must be a real number"):
        f(b, s, "0.5", 4)
    with pytest.raises(TypeError, match="score_threshold must be a float or None"):
        fp(b, s, 0.5, 4, score_threshold="0.1")
    with pytest.raises(TypeError, match="eps must be a real number"):
        fp(b, s, 0.5, 4, eps=None)
    with pytest.raises(TypeError, match="boxes must be a floating point array"):
        f(b.astype(np.int32), s, 0.5, 4)
    with pytest.raises(TypeError, match="scores must be a floating point array"):
        fp(b, s.astype(np.int64), 0.5, 4)


def test_compile_and_export(rng, torch):
    """The custom ops detkernels::multi_image_nms_rotated / _probiou have static output shapes:
    torch.compile(fullgraph=True) and torch.export (B and N dynamic too) give eager's bytes."""
    b, s, c = _batch("clustered", rng, 3, 40, "float32", "iou")
    b, s, c = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)

    def f(x, y, z):
        return (*detkernels.multi_image_nms_rotated(x, y, 0.3, 8, idxs=z, score_threshold=0.2),
                *detkernels.multi_image_nms_probiou(x, y, 0.3, 8, fast=True),
                *detkernels.multi_image_nms_rotated(x, y, 0.3, 8, "xywhr"))

    want = f(b, s, c)
    torch._dynamo.reset()
    for k, (g, w) in enumerate(zip(torch.compile(f, fullgraph=True, backend="eager")(b, s, c), want)):
        assert_bytes_equal(g, w, f"compile output {k}")

    class M(torch.nn.Module):
        def forward(self, x, y, z):
            return f(x, y, z)

    Bd, Nd = torch.export.Dim("B", min=2), torch.export.Dim("N", min=2)
    ep = torch.export.export(M(), (b, s, c), dynamic_shapes=({0: Bd, 1: Nd}, {0: Bd, 1: Nd}, {0: Bd, 1: Nd}))
    assert "detkernels.multi_image_nms_rotated" in str(ep.graph)
    for k, (g, w) in enumerate(zip(ep.module()(b, s, c), want)):
        assert_bytes_equal(g, w, f"export output {k}")
    b2, s2, c2 = b[:2, :25].contiguous(), s[:2, :25].contiguous(), c[:2, :25].contiguous()
    for k, (g, w) in enumerate(zip(ep.module()(b2, s2, c2), f(b2, s2, c2))):
        assert_bytes_equal(g, w, f"export, other sizes, output {k}")


def test_opcheck(rng, torch):
    """torch.library.opcheck of both custom ops (schema, fake kernel, no aliasing)."""
    b, s, c = _batch("clustered", rng, 2, 20, "float32", "iou")
    b, s, c = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)
    ops = torch.ops.detkernels
    torch.library.opcheck(ops.multi_image_nms_rotated, (b, s, c, 0.3, 6, 0.2, "xywhr"))
    torch.library.opcheck(ops.multi_image_nms_rotated, (b, s, None, 0.3, 0, None))
    torch.library.opcheck(ops.multi_image_nms_probiou, (b, s, c, 0.3, 6, None, True, 1e-7))


def test_thread_count_does_not_matter(rng):
    """Images run in parallel on the native thread pool: the bytes do not depend on its size."""
    if why := _registry.why_not("native", "multi_image_nms_rotated"):
        pytest.skip(why)
    b, s, c = _batch("clustered", rng, 9, 60, "float32", "iou")
    n0 = detkernels.get_num_threads()
    try:
        outs = []
        for n in (1, 3, 8):
            detkernels.set_num_threads(n)
            outs.append([_call(m, b, s, 0.3, 20, c, 0.1, "native") for m in METRICS])
    finally:
        detkernels.set_num_threads(n0)
    for got in outs[1:]:
        for g, w in zip(got, outs[0]):
            _same(g, w, "threads")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("family", ["clustered", "identical", "nonfinite", "degenerate"])
def test_cpu_loop_equals_the_cuda_emulation(metric, family, rng):
    """The same backend contract on its two native paths: the CPU loop (nms_rotated_multi_cpu) and
    the CUDA bitmask engine run step by step on the CPU (nms_rotated_multi_emulate_cpu)."""
    from detkernels.backends import native

    if why := _registry.why_not("native", "multi_image_nms_rotated"):
        pytest.skip(why)
    b, s, c = _batch(family, rng, 3, 70, "float32", metric)
    for classes in (None, c):
        for sthr in (None, 0.3):
            args = (b, s, classes, 0.3, 25, sthr, metric, 1e-7)
            _same(native.multi_image_nms_rotated(*args), native.nms_rotated_multi_emulated(*args),
                  f"classes={classes is not None} sthr={sthr}")
