"""The CUDA detect pipeline's logic (csrc/ops/detect/detect_gpu.h: score pass, top-k sorts,
compaction, each NMS mode's multi-image CUDA entry -- the bitmask engine for iou / diou,
soft_nms_multi_cuda, matrix_nms_multi_cuda -- output gather) byte-for-byte against the reference
(detkernels/reference/detect.py), on the CPU through the sequential emulation of its steps
(always runs) and on a GPU through the real kernels (skipped without a CUDA device). Input
families, options and NMS modes: tests/ops/test_detect.py's."""
from __future__ import annotations

import numpy as np
import pytest

from _gpu import needs_gpu
from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, top_k_ties
from ops.test_detect import MODES, NAMES, OPTIONS, _inputs

from detkernels import _checks
from detkernels.backends import native
from detkernels.reference import detect as ref

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C is not built")


def _emulated(boxes, scores, thr, K, *, score_threshold=None, pre_nms_top_k=None, fmt="xyxy",
              objectness=None, multi_label=False, class_agnostic=False, idxs=None, nms="iou",
              beta=None, decay=None, sigma=None, min_score=None, **tiling):
    mode = _checks.detect_nms_check(nms, beta, decay, sigma, min_score)
    return native.detect_emulated(boxes, scores, objectness, idxs, thr, K, score_threshold,
                                  pre_nms_top_k, fmt, multi_label and scores.ndim == 3,
                                  class_agnostic, mode, **tiling)


def _check(got, want, what):
    for g, w, name in zip(got, want, NAMES):
        assert_bytes_equal(g, w, f"{what} {name}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_emulated_equals_reference(family, option):
    _emulated_vs_reference(family, OPTIONS[option], ((1, np.float32), (5, np.float64), (37, np.float32)),
                           f"{family} {option}")


def _emulated_vs_reference(family, options, shapes, what):
    """The emulated pipeline against the reference: 2 images of 40 anchors, each (C, dtype) of
    ``shapes``, max_det 0, below and above the kept count."""
    kw = dict(options)
    with_obj = kw.pop("objectness", False)
    for C, dtype in shapes:
        boxes, scores, _, obj = _inputs(family, C, 2, 40, C, dtype)
        if with_obj:
            kw["objectness"] = obj
        for K in (0, 6, 400):
            want = ref.detect(boxes, scores, 0.5, K, **kw)
            _check(_emulated(boxes, scores, 0.5, K, **kw), want, f"{what} C={C} {dtype.__name__} K={K}")


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
    A, C = 30, 3
    boxes, scores = top_k_ties(2, A, C)
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


# ---- NMS modes (diou, soft, matrix: each mode's CUDA entry after steps 1-3) -------------------------

@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_emulated_modes_equal_reference(mode, option, family):
    """Every option of tests/ops/test_detect.py (thresholded or not, top-k below and above the
    candidates, multi-label, class-agnostic, objectness, all below the threshold, k = 0) with
    each mode, both dtypes, max_det 0, below and above the kept count."""
    _emulated_vs_reference(family, dict(OPTIONS[option], **MODES[mode]),
                           ((1, np.float64), (5, np.float32), (5, np.float64)), f"{family} {option} {mode}")


@pytest.mark.parametrize("family", ["ties", "nonfinite", "many_classes"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_emulated_modes_idxs_form(family, mode):
    boxes, scores, classes, obj = _inputs(family, 9, 3, 60, 0)
    for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
               dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict(pre_nms_top_k=5),
               dict()):
        kw.update(MODES[mode])
        _check(_emulated(boxes, scores, 0.5, 30, **kw), ref.detect(boxes, scores, 0.5, 30, **kw),
               f"{family} {sorted(kw)}")


@pytest.mark.parametrize("mode", sorted(MODES))
def test_emulated_modes_top_k_ties_nan_and_signed_zero(mode):
    rng = np.random.default_rng(5)
    A, C = 24, 3
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (2, A, 1)) + \
        rng.integers(0, 20, (2, A, 1)).astype(np.float32)
    scores = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, np.nan, np.inf, -np.inf], np.float32),
                        (2, A, C))
    for k in (1, 7, A - 1, A, A * C, A * C + 5):
        for kw in (dict(), dict(multi_label=True), dict(score_threshold=0.0),
                   dict(multi_label=True, class_agnostic=True, score_threshold=-1.0)):
            kw.update(MODES[mode])
            want = ref.detect(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw)
            _check(_emulated(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw), want, f"k={k} {kw}")


@pytest.mark.parametrize("min_score", [float("nan"), float("-inf"), -1.0, 0.0])
@pytest.mark.parametrize("nms", ["soft", "matrix"])
@pytest.mark.parametrize("decay", ["linear", "gaussian"])
def test_emulated_decaying_modes_ignore_the_padding_slots(nms, decay, min_score):
    """With a score filter most slots of an image are padding (-inf scores). Soft-NMS keeps a box
    unless its score is < min_score, so with min_score NaN or -inf a padding slot would be picked
    if it were a box; Matrix NMS keeps every box without a min_score, and a linear term of 0 makes
    a padding score NaN (ranking first). Neither may show: the entries see n_valid."""
    boxes, scores, _, obj = _inputs("clusters", 3, 3, 50, 4, np.float32)
    boxes[1, 3] = boxes[1, 2]  # identical boxes: IoU 1, a zero linear term
    scores[1, 3] = scores[1, 2]
    for kw in (dict(score_threshold=0.6), dict(score_threshold=0.6, class_agnostic=True),
               dict(score_threshold=0.3, multi_label=True, pre_nms_top_k=30),
               dict(score_threshold=5.0)):  # every slot padding
        kw.update(nms=nms, decay=decay, min_score=min_score)
        if nms == "matrix" and decay == "linear":
            kw["sigma"] = 2.0
        for K in (3, 200):
            want = ref.detect(boxes, scores, 0.5, K, **kw)
            _check(_emulated(boxes, scores, 0.5, K, **kw), want, f"{kw} K={K}")


def test_emulated_modes_empty_and_strided():
    for mode in sorted(MODES):
        for B, A, C in ((0, 5, 3), (2, 0, 3), (2, 5, 0), (0, 0, 0)):
            boxes = np.zeros((B, A, 4), np.float32)
            scores = np.full((B, A, C), 0.5, np.float32)
            for multi in (False, True):
                kw = dict(multi_label=multi, **MODES[mode])
                _check(_emulated(boxes, scores, 0.5, 4, **kw), ref.detect(boxes, scores, 0.5, 4, **kw),
                       f"{mode} B={B} A={A} C={C}")
        boxes, scores, _, obj = _inputs("clusters", 3, 2, 50, 6)
        head = np.ascontiguousarray(np.concatenate([boxes, scores], 2).transpose(0, 2, 1))
        b, s = head[:, :4].transpose(0, 2, 1), head[:, 4:].transpose(0, 2, 1)
        for kw in (dict(score_threshold=0.3, fmt="cxcywh"), dict(multi_label=True, pre_nms_top_k=20)):
            kw.update(MODES[mode])
            _check(_emulated(b, s, 0.45, 25, **kw), ref.detect(b, s, 0.45, 25, **kw), f"{mode} {kw}")


def test_emulated_modes_tiling_and_block_sizes():
    """DIoU over several mask tiles and scan thread counts; Soft-NMS over several emulated block
    sizes (scan_threads rounded down to a power of two): the same bytes."""
    boxes, scores, _, obj = _inputs("clusters", 5, 2, 200, 4)
    for mode in ("diou_beta", "soft_gaussian"):
        kw = dict(multi_label=True, score_threshold=0.1, pre_nms_top_k=300, objectness=obj,
                  **MODES[mode])
        want = ref.detect(boxes, scores, 0.5, 100, **kw)
        for tiling in (dict(tile_rows=64), dict(tile_rows=128, scan_threads=3),
                       dict(scan_threads=64), dict(scan_threads=1)):
            _check(_emulated(boxes, scores, 0.5, 100, **kw, **tiling), want, f"{mode} {tiling}")


def test_multi_image_entries_emulated_with_n_valid():
    """soft_nms_multi / matrix_nms_multi with n_valid (detect's padded slots, -inf scores past
    it) equal the reference on each image's first n_valid[b] boxes; matrix_nms_multi without it
    equals multi_image_matrix_nms."""
    from _nms_families import batch
    from detkernels.reference.matrix_nms import multi_image_matrix_nms
    from detkernels.reference.soft_nms import multi_image_soft_nms

    for family in sorted(FAMILIES):
        boxes, scores, classes = batch(family, 7, 3, 30, 0)
        boxes, scores = boxes.astype(np.float64), scores.astype(np.float64)
        n_valid = np.array([30, 11, 0], np.int64)
        padded = scores.copy()
        for b, n in enumerate(n_valid):
            padded[b, n:] = -np.inf
        for kern, sthr, pre in (("gaussian", None, None), ("linear", 0.1, 12)):
            got = native.matrix_nms_multi_emulated(boxes, scores, classes, 8, kern, 2.0, sthr, pre)
            want = multi_image_matrix_nms(boxes, scores, classes, 8, kern, 2.0, sthr, pre)
            for g, w, name in zip(got, want, ("indices", "scores", "counts")):
                assert_bytes_equal(g, w, f"{family} {kern} {name}")
            got = native.matrix_nms_multi_emulated(boxes, padded, classes, 8, kern, 2.0, sthr, pre,
                                                   n_valid)
            for b, n in enumerate(n_valid):
                w = multi_image_matrix_nms(boxes[b:b + 1, :n], scores[b:b + 1, :n],
                                           classes[b:b + 1, :n], 8, kern, 2.0, sthr, pre)
                for g, ww, name in zip(got, w, ("indices", "scores", "counts")):
                    assert_bytes_equal(g[b:b + 1], ww, f"{family} {kern} n_valid image {b} {name}")
        for sthr in (0.001, float("nan")):
            got = native.soft_nms_multi_emulated(boxes, padded, classes, 8, 0.3, 0.5, "linear", sthr,
                                                 threads=16, n_valid=n_valid)
            for b, n in enumerate(n_valid):
                w = multi_image_soft_nms(boxes[b:b + 1, :n], scores[b:b + 1, :n], 8, 0.3, 0.5,
                                         "linear", sthr, classes[b:b + 1, :n])
                for g, ww, name in zip(got, w, ("indices", "scores", "counts")):
                    assert_bytes_equal(g[b:b + 1], ww, f"{family} soft sthr={sthr} image {b} {name}")


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
    boxes, scores = top_k_ties(2, 30, 3)
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


# ---- NMS modes on the GPU (skipped without one) ------------------------------------------------------

@pytest.mark.skipif(not native.HAS_CUDA, reason="detkernels._C built without CUDA (no nvcc)")
def test_cuda_entry_points_take_the_mode_and_fail_cleanly_without_a_gpu():
    """A CUDA build exports detect's launcher with the mode (its workspace size takes it) and the
    multi-image Matrix NMS launcher; with no usable GPU they raise, never crash."""
    C = native._C
    assert all(hasattr(C, f) for f in ("detect_cuda", "detect_cuda_workspace_bytes",
                                       "matrix_nms_multi_cuda", "matrix_nms_multi_cuda_workspace_bytes"))
    if C.cuda_device_count():
        pytest.skip("a GPU is present: the GPU tests below exercise the launchers")
    for mode in native.DETECT_NMS_MODES.values():
        with pytest.raises(RuntimeError, match="CUDA error"):
            C.detect_cuda_workspace_bytes(0, 2, 10, 3, False, -1, mode, 1 << 20, 0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.matrix_nms_multi_cuda_workspace_bytes(0, 2, 10, 0)
    with pytest.raises(RuntimeError, match="CUDA error"):
        C.matrix_nms_multi_cuda(0, 0, 0, 0, 2, 10, 0, 2.0, False, 0.0, 5, -1, 0, 0, 0, 0, 1 << 20,
                                0, 0, 0)


@needs_gpu
@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_cuda_modes_equal_reference(option, mode):
    """The real kernels of every mode: torch CUDA tensors in and out, the reference's bytes."""
    import detkernels as dk
    import torch

    kw = dict(OPTIONS[option], **MODES[mode])
    with_obj = kw.pop("objectness", False)
    t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    for family in sorted(FAMILIES):
        for C, dtype in ((1, np.float64), (5, np.float32), (37, np.float32)):
            boxes, scores, _, obj = _inputs(family, C, 2, 40, C, dtype)
            extra = dict(objectness=obj) if with_obj else {}
            for K in (0, 6, 400):
                want = ref.detect(boxes, scores, 0.5, K, **kw, **extra)
                got = dk.detect(t(boxes), t(scores), 0.5, K, backend="native", **kw,
                                **({k: t(v) for k, v in extra.items()}))
                assert all(x.is_cuda for x in got)
                _check([x.cpu().numpy() for x in got], want, f"{family} {option} {mode} C={C} K={K}")


@needs_gpu
@pytest.mark.parametrize("mode", sorted(MODES))
def test_cuda_modes_graph_capture(mode):
    """No host synchronisation in any mode: the call captures in a CUDA graph and replays."""
    import detkernels as dk
    import torch

    boxes, scores, _, obj = _inputs("clusters", 1, 2, 500, 8)
    b, s = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
    kw = dict(score_threshold=0.2, pre_nms_top_k=100, **MODES[mode])
    dk.detect(b, s, 0.5, 30, backend="native", **kw)  # warm-up outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = dk.detect(b, s, 0.5, 30, backend="native", **kw)
    g.replay()
    torch.cuda.synchronize()
    _check([x.cpu().numpy() for x in out], ref.detect(boxes, scores, 0.5, 30, **kw), f"graph {mode}")


@needs_gpu
def test_cuda_multi_image_diou_and_matrix_nms():
    """multi_image_diou_nms (diou_nms_multi_cuda) and multi_image_matrix_nms
    (matrix_nms_multi_cuda) on CUDA tensors: the reference's bytes."""
    import detkernels as dk
    import torch
    from _nms_families import batch
    from detkernels.reference.diou_nms import multi_image_diou_nms
    from detkernels.reference.matrix_nms import multi_image_matrix_nms

    t = lambda a: torch.from_numpy(a).cuda()  # noqa: E731
    for family in sorted(FAMILIES):
        boxes, scores, classes = batch(family, 3, 3, 50, 0)
        for dtype in (np.float32, np.float64):
            b, s = boxes.astype(dtype), scores.astype(dtype)
            for idxs in (None, classes):
                want = multi_image_diou_nms(b, s, 0.5, 20, 0.7, idxs)
                got = dk.multi_image_diou_nms(t(b), t(s), 0.5, 20, beta=0.7, backend="native",
                                              idxs=None if idxs is None else t(idxs))
                for g, w in zip(got, want):
                    assert_bytes_equal(g.cpu().numpy(), w, f"diou {family}")
            for kern, sthr, pre in (("gaussian", None, None), ("linear", 0.1, 12)):
                want = multi_image_matrix_nms(b, s, classes, 20, kern, 2.0, sthr, pre)
                got = dk.multi_image_matrix_nms(t(b), t(s), t(classes), 20, kernel=kern, sigma=2.0,
                                                score_threshold=sthr, pre_top_k=pre, backend="native")
                for g, w in zip(got, want):
                    assert_bytes_equal(g.cpu().numpy(), w, f"matrix {family} {kern}")
