"""The CUDA detect pipeline's logic (csrc/ops/detect/detect_gpu.h: score pass, top-k sorts,
compaction, the bitmask NMS engine, output gather) byte-for-byte against the reference
(detkernels/reference/detect.py), on the CPU through the sequential emulation of its steps
(always runs) and on a GPU through the real kernels (skipped without a CUDA device). Input
families and options: tests/ops/test_detect.py's."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES
from ops.test_detect import NAMES, OPTIONS, _inputs

from detkernels.backends import native
from detkernels.reference import detect as ref

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C is not built")


def _emulated(boxes, scores, thr, K, *, score_threshold=None, pre_nms_top_k=None, fmt="xyxy",
              objectness=None, multi_label=False, class_agnostic=False, idxs=None, **tiling):
    return native.detect_emulated(boxes, scores, objectness, idxs, thr, K, score_threshold,
                                  pre_nms_top_k, fmt, multi_label and scores.ndim == 3,
                                  class_agnostic, **tiling)


def _check(got, want, what):
    for g, w, name in zip(got, want, NAMES):
        assert_bytes_equal(g, w, f"{what} {name}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_emulated_equals_reference(family, option):
    kw = dict(OPTIONS[option])
    with_obj = kw.pop("objectness", False)
    for C, dtype in ((1, np.float32), (5, np.float64), (37, np.float32)):
        boxes, scores, _, obj = _inputs(family, C, 2, 40, C, dtype)
        if with_obj:
            kw["objectness"] = obj
        for K in (0, 6, 400):
            want = ref.detect(boxes, scores, 0.5, K, **kw)
            _check(_emulated(boxes, scores, 0.5, K, **kw), want,
                   f"{family} {option} C={C} {dtype.__name__} K={K}")


@pytest.mark.parametrize("family", ["ties", "nonfinite", "many_classes"])
def test_emulated_idxs_form(family):
    boxes, scores, classes, obj = _inputs(family, 9, 3, 60, 0)
    for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
               dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict(pre_nms_top_k=5),
               dict()):
        _check(_emulated(boxes, scores, 0.5, 30, **kw), ref.detect(boxes, scores, 0.5, 30, **kw),
               f"{family} {sorted(kw)}")


def test_emulated_top_k_ties_nan_and_signed_zero():
    """Top-k across equal scores, NaN (ranks first without a threshold), -0.0 == +0.0: the sorts
    keep candidate order among ties; k >= candidates and k = candidates - 1 both exercised."""
    rng = np.random.default_rng(4)
    A, C = 30, 3
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (2, A, 1)) + \
        rng.integers(0, 30, (2, A, 1)).astype(np.float32)
    scores = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, np.nan, np.inf], np.float32), (2, A, C))
    for k in (1, 7, A - 1, A, A * C - 1, A * C, A * C + 5):
        for kw in (dict(), dict(multi_label=True), dict(score_threshold=0.0),
                   dict(multi_label=True, class_agnostic=True, score_threshold=-1.0)):
            want = ref.detect(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw)
            _check(_emulated(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw), want, f"k={k} {kw}")


def test_emulated_empty_and_strided():
    for B, A, C in ((0, 5, 3), (2, 0, 3), (2, 5, 0), (0, 0, 0)):
        boxes = np.zeros((B, A, 4), np.float32)
        scores = np.full((B, A, C), 0.5, np.float32)
        for multi in (False, True):
            _check(_emulated(boxes, scores, 0.5, 4, multi_label=multi),
                   ref.detect(boxes, scores, 0.5, 4, multi_label=multi), f"B={B} A={A} C={C}")
    # ultralytics' [B, 4 + C, A] head read in place: anchors contiguous, classes strided
    boxes, scores, _, obj = _inputs("clusters", 3, 2, 50, 6)
    head = np.ascontiguousarray(np.concatenate([boxes, scores], 2).transpose(0, 2, 1))
    b, s = head[:, :4].transpose(0, 2, 1), head[:, 4:].transpose(0, 2, 1)
    for kw in (dict(score_threshold=0.3, fmt="cxcywh"), dict(multi_label=True, pre_nms_top_k=20)):
        _check(_emulated(b, s, 0.45, 25, **kw), ref.detect(b, s, 0.45, 25, **kw), str(kw))


def test_emulated_tiling_and_scan_threads():
    """The NMS stage over several mask tiles and scan thread counts gives the same bytes."""
    boxes, scores, _, obj = _inputs("clusters", 5, 2, 300, 4)
    kw = dict(multi_label=True, score_threshold=0.1, pre_nms_top_k=500, objectness=obj)
    want = ref.detect(boxes, scores, 0.5, 100, **kw)
    for tiling in (dict(tile_rows=64), dict(tile_rows=128, scan_threads=3), dict(scan_threads=64)):
        _check(_emulated(boxes, scores, 0.5, 100, **kw, **tiling), want, str(tiling))


def _cuda_torch():
    torch = pytest.importorskip("torch")
    if not (native.HAS_CUDA and torch.cuda.is_available()):
        pytest.skip("needs a CUDA device and a CUDA build of detkernels._C")
    return torch


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cuda_equals_reference(option):
    """The real kernels (GPU hosts only): torch CUDA tensors in, CUDA tensors out, same bytes."""
    torch = _cuda_torch()
    import detkernels as dk

    kw = dict(OPTIONS[option])
    with_obj = kw.pop("objectness", False)
    for family in sorted(FAMILIES):
        for C, dtype in ((1, np.float32), (5, np.float64), (37, np.float32)):
            boxes, scores, _, obj = _inputs(family, C, 2, 40, C, dtype)
            want = ref.detect(boxes, scores, 0.5, 6, **kw, **(dict(objectness=obj) if with_obj else {}))
            t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
            got = dk.detect(t(boxes), t(scores), 0.5, 6, backend="native",
                            **kw, **(dict(objectness=t(obj)) if with_obj else {}))
            assert all(x.is_cuda for x in got)
            _check([x.cpu().numpy() for x in got], want, f"{family} {option} C={C}")


def test_cuda_graph_capture():
    """No host synchronisation and static shapes: the call captures in a CUDA graph and replays."""
    torch = _cuda_torch()
    import detkernels as dk

    boxes, scores, _, obj = _inputs("clusters", 1, 2, 500, 8)
    b, s = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    kw = dict(score_threshold=0.2, pre_nms_top_k=100)
    dk.detect(b, s, 0.5, 30, backend="native", **kw)  # warm-up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = dk.detect(b, s, 0.5, 30, backend="native", **kw)
    g.replay()
    torch.cuda.synchronize()
    _check([x.cpu().numpy() for x in out], ref.detect(boxes, scores, 0.5, 30, **kw), "graph")


# ---- the CuPy backend (issue 12): the same kernels through NVRTC -------------------------------

def _cupy_device():
    """cupy with a CUDA device and the cupy detect registered and runnable, else a skip."""
    cupy = pytest.importorskip("cupy", reason="cupy is not installed (the CuPy detect's CPU check: "
                               "tests/gpu_logic/test_cupy_sources.py)")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("cupy sees no CUDA device")
    except Exception as e:
        pytest.skip(f"cupy sees no CUDA device ({type(e).__name__})")
    from detkernels import _registry

    if why := _registry.why_not("cupy", "detect", "cuda", "float32"):
        pytest.skip(f"backend 'cupy': {why}")
    return cupy


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cupy_equals_reference(option):
    """CuPy arrays in, CuPy arrays out (GPU hosts with cupy only): the reference's bytes on every
    family, C = 1 / 5 / 37, both dtypes, K = 0 / 6 / 400."""
    cp = _cupy_device()
    import detkernels as dk

    kw = dict(OPTIONS[option])
    with_obj = kw.pop("objectness", False)
    for family in sorted(FAMILIES):
        for C, dtype in ((1, np.float32), (5, np.float64), (37, np.float32)):
            boxes, scores, _, obj = _inputs(family, C, 2, 40, C, dtype)
            for K in (0, 6, 400):
                want = ref.detect(boxes, scores, 0.5, K, **kw, **(dict(objectness=obj) if with_obj else {}))
                got = dk.detect(cp.asarray(boxes), cp.asarray(scores), 0.5, K, backend="cupy", **kw,
                                **(dict(objectness=cp.asarray(obj)) if with_obj else {}))
                assert all(isinstance(x, cp.ndarray) for x in got)
                _check([cp.asnumpy(x) for x in got], want, f"cupy {family} {option} C={C} K={K}")


def test_cupy_idxs_top_k_ties_empty_and_strided():
    cp = _cupy_device()
    import detkernels as dk

    for family in ("ties", "nonfinite", "many_classes"):
        boxes, scores, classes, obj = _inputs(family, 9, 3, 60, 0)
        for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
                   dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict(pre_nms_top_k=5)):
            dkw = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            got = dk.detect(cp.asarray(boxes), cp.asarray(scores), 0.5, 30, backend="cupy", **dkw)
            _check([cp.asnumpy(x) for x in got], ref.detect(boxes, scores, 0.5, 30, **kw), f"{family} {sorted(kw)}")
    rng = np.random.default_rng(4)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (2, 30, 1)) + \
        rng.integers(0, 30, (2, 30, 1)).astype(np.float32)
    scores = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, np.nan, np.inf], np.float32), (2, 30, 3))
    for k in (1, 7, 29, 30, 89, 90, 95):
        for kw in (dict(), dict(multi_label=True), dict(score_threshold=0.0)):
            got = dk.detect(cp.asarray(boxes), cp.asarray(scores), 0.3, 50, pre_nms_top_k=k,
                            backend="cupy", **kw)
            _check([cp.asnumpy(x) for x in got], ref.detect(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw),
                   f"k={k} {kw}")
    for B, A, C in ((0, 5, 3), (2, 0, 3), (2, 5, 0)):
        b, s = np.zeros((B, A, 4), np.float32), np.full((B, A, C), 0.5, np.float32)
        got = dk.detect(cp.asarray(b), cp.asarray(s), 0.5, 4, backend="cupy")
        _check([cp.asnumpy(x) for x in got], ref.detect(b, s, 0.5, 4), f"B={B} A={A} C={C}")
    boxes, scores, _, _ = _inputs("clusters", 3, 2, 50, 6)
    head = cp.asarray(np.ascontiguousarray(np.concatenate([boxes, scores], 2).transpose(0, 2, 1)))
    b, s = head[:, :4].transpose(0, 2, 1), head[:, 4:].transpose(0, 2, 1)  # read in place
    for kw in (dict(score_threshold=0.3, fmt="cxcywh"), dict(multi_label=True, pre_nms_top_k=20)):
        got = dk.detect(b, s, 0.45, 25, backend="cupy", **kw)
        _check([cp.asnumpy(x) for x in got], ref.detect(cp.asnumpy(b), cp.asnumpy(s), 0.45, 25, **kw), str(kw))


def test_cupy_equals_native_cuda_and_refuses_other_modes():
    """The same bytes as the native CUDA pipeline (torch CUDA tensors in, torch out, both
    backends); nms modes other than 'iou' are refused, never run as greedy NMS."""
    _cupy_device()
    torch = _cuda_torch()
    import detkernels as dk

    boxes, scores, _, obj = _inputs("clusters", 5, 2, 300, 4)
    t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    for kw in (dict(multi_label=True, score_threshold=0.1, pre_nms_top_k=500),
               dict(score_threshold=0.2, pre_nms_top_k=50), dict(class_agnostic=True)):
        a = dk.detect(t(boxes), t(scores), 0.5, 100, objectness=t(obj), backend="cupy", **kw)
        n = dk.detect(t(boxes), t(scores), 0.5, 100, objectness=t(obj), backend="native", **kw)
        assert all(x.is_cuda for x in a)
        _check([x.cpu().numpy() for x in a], [x.cpu().numpy() for x in n], f"cupy vs native {kw}")
    for mode in ("diou", "soft", "matrix"):
        with pytest.raises(NotImplementedError, match=mode):
            dk.detect(t(boxes), t(scores), 0.5, 100, nms=mode, backend="cupy")
