"""Every op on every backend, from every array library, byte-for-byte against the NumPy reference.

One matrix: (op, backend, dtype, array library) x every input family of docs/SPEC.md §3. A backend, a
device or an array library that is not usable on this machine makes the case skip with the reason
(the registry's reason for a backend), never pass. CUDA cases need a GPU; the numba.cuda kernels
are also run in the CUDA simulator (tests/gpu_logic/test_numba_cudasim.py) and their PTX is linted
(tests/gpu_logic/test_numba_ptx.py), which needs no GPU.
"""
from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from _helpers import assert_bytes_equal, to_numpy

import detkernels
from detkernels import _registry
from detkernels.reference import box_iou as R
from detkernels.reference import nms as RN

import families as F

BACKENDS = ("native", "numba", "cupy", "numpy")
# (device, array library): the libraries that can hold an array on that device.
PLACEMENTS = (("cpu", "numpy"), ("cpu", "torch"), ("cuda", "torch"), ("cuda", "cupy"), ("cuda", "numba"))
IOU_OPS = {"iou": "box_iou", "giou": "generalized_box_iou", "diou": "distance_box_iou",
           "ciou": "complete_box_iou"}
OPS = (*IOU_OPS, "nms", "batched_nms", "multi_image_nms")
SIZES = {"cpu": (0, 1, 7, 90), "cuda": (0, 1, 7, 130)}


def _cuda_device_present() -> str | None:
    """None if some CUDA device is usable here, else why not."""
    for probe in (lambda: sys.modules["torch"].cuda.is_available() if "torch" in sys.modules else False,
                  lambda: detkernels.build_info().get("cuda_devices", 0) > 0):
        try:
            if probe():
                return None
        except Exception:
            pass
    return "no CUDA device on this machine"


def _library(lib: str):
    try:
        if lib == "numba":
            return importlib.import_module("numba.cuda")
        return importlib.import_module(lib)
    except ImportError as e:
        pytest.skip(f"{lib} is not installed ({e})")


def _skip_unless_runnable(backend: str, op: str, device: str, lib: str, dtype: str) -> object:
    """Skip (with the reason) unless `backend` can run `op` for `lib` arrays on `device`."""
    mod = _library(lib)
    if device == "cuda":
        why = _cuda_device_present()
        if why:
            pytest.skip(why)
    why = _registry.why_not(backend, "nms" if "nms" in op else "box_iou", device, dtype)
    if why:
        pytest.skip(f"backend {backend!r}: {why}")
    return mod


def _put(a: np.ndarray, lib: str, device: str, mod, strided: bool = False):
    """`a` as an array of `lib` on `device`; `strided`: a non-contiguous view with a[:, k] at
    column 2k of a wider array (boxes) / every other element (1-D)."""
    if strided:
        wide = np.zeros((a.shape[0], 2 * a.shape[1]) if a.ndim == 2 else (2 * a.shape[0],), a.dtype)
        if a.ndim == 2:
            wide[:, ::2] = a
        else:
            wide[::2] = a
    src = wide if strided else a
    if lib == "numpy":
        x = src
    elif lib == "torch":
        x = mod.from_numpy(np.ascontiguousarray(src)).to(device)
    elif lib == "cupy":
        x = mod.asarray(src)
    else:
        x = mod.to_device(np.ascontiguousarray(src))
    if not strided:
        return x
    return x[:, ::2] if a.ndim == 2 else x[::2]


def _kind_of(x) -> str:
    return detkernels._arrays.kind(x)


def _check_placement(out, lib: str, device: str) -> None:
    assert _kind_of(out) == lib, f"output is a {_kind_of(out)} array for {lib} input"
    assert detkernels._arrays.device(out).split(":")[0] == device


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_matches_reference(op, backend, device, lib, dtype, rng):
    mod = _skip_unless_runnable(backend, op, device, lib, dtype)
    for family in F.FAMILIES:
        for n in SIZES[device]:
            b, s = F.make(family, rng, n, dtype)
            what = f"{op} {family} n={n}"
            for strided in ((False, True) if family == "uniform" else (False,)):
                xb = _put(b, lib, device, mod, strided)
                if op in IOU_OPS:
                    m = max(n // 2, 1) if n else 0
                    b2 = b[::-1][:m].copy()
                    out = getattr(detkernels, IOU_OPS[op])(xb, _put(b2, lib, device, mod),
                                                           backend=backend)
                    expect = R._matrix(b, b2, op)
                elif op == "multi_image_nms":
                    # two images (the boxes, and the same boxes reversed), [B, N] and [B, N, 3]
                    # scores, with and without a score filter
                    bb = np.stack([b, b[::-1]])
                    for ss in (np.stack([s, s[::-1]]), rng.random((2, n, 3)).astype(dtype)):
                        for sthr in (None, 0.3):
                            got = detkernels.multi_image_nms(_put(bb, lib, device, mod), _put(ss, lib, device, mod),
                                                             0.5, 9, score_threshold=sthr, backend=backend)
                            want = [w for w in RN.multi_image_nms(bb, ss, 0.5, 9, score_threshold=sthr) if w is not None]
                            assert len(got) == len(want)
                            for k, (g, w) in enumerate(zip(got, want)):
                                _check_placement(g, lib, device)
                                assert_bytes_equal(g, w, f"{what} scores{ss.shape} sthr={sthr} output {k}")
                    continue
                else:
                    xs = _put(s, lib, device, mod, strided)
                    for thr in (0.0, 0.3, 0.5, 0.7, 1.0):
                        if op == "nms":
                            out = detkernels.nms(xb, xs, thr, backend=backend)
                            expect = RN.nms(b, s, thr)
                        else:
                            c = rng.integers(0, 4, n)
                            out = detkernels.batched_nms(xb, xs, _put(c, lib, device, mod), thr,
                                                         backend=backend)
                            expect = RN.batched_nms(b, s, c, thr)
                        _check_placement(out, lib, device)
                        assert_bytes_equal(out, expect, f"{what} thr={thr} strided={strided}")
                    continue
                _check_placement(out, lib, device)
                assert_bytes_equal(out, expect, f"{what} strided={strided}")


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_formats_and_batches(backend, device, lib, fmt, rng):
    mod = _skip_unless_runnable(backend, "box_iou", device, lib, "float32")
    for dtype in ("float32", "float64"):
        for family in ("uniform", "degenerate", "nonfinite"):
            b1 = np.stack([F.make(family, rng, 9, dtype)[0] for _ in range(3)])  # [3, 9, 4]
            b2 = np.stack([F.make(family, rng, 5, dtype)[0] for _ in range(3)])  # [3, 5, 4]
            out = detkernels.box_iou(_put(b1, lib, device, mod), _put(b2, lib, device, mod), fmt,
                                     backend=backend)
            _check_placement(out, lib, device)
            assert_bytes_equal(out, R.box_iou(b1, b2, fmt), f"{fmt} {family} {dtype}")


@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_nms_threshold_ulps(backend, device, lib):
    """IoU exactly at the threshold is kept; the threshold one double ulp below suppresses; the
    float32 rounding of a threshold never changes the answer (docs/SPEC.md divergence 1)."""
    mod = _skip_unless_runnable(backend, "nms", device, lib, "float32")
    for dtype in (np.float32, np.float64):
        for h in (dtype(0.375), dtype(0.3)):
            # IoU of [0,0,1,1] and [0,0,1,h]: inter h, union (1 + h) - h; exactly h = 0.375.
            b = np.array([[0, 0, 1, 1], [0, 0, 1, h]], dtype)
            s = np.array([0.9, 0.8], dtype)
            xb, xs = _put(b, lib, device, mod), _put(s, lib, device, mod)
            iou = float(R.box_iou(b[:1], b[1:])[0, 0])
            for thr in (iou, np.nextafter(iou, 0.0), np.nextafter(iou, 1.0),
                        float(np.nextafter(np.float32(iou), np.float32(0))),
                        float(np.nextafter(np.float32(iou), np.float32(1)))):
                assert_bytes_equal(detkernels.nms(xb, xs, thr, backend=backend), RN.nms(b, s, thr),
                                   f"{dtype.__name__} h={h} thr={thr!r}")
            if h == dtype(0.375):
                assert list(to_numpy(detkernels.nms(xb, xs, 0.375, backend=backend))) == [0, 1]
                below = np.nextafter(0.375, 0.0)  # rounds to 0.375 in float32: must still suppress
                assert list(to_numpy(detkernels.nms(xb, xs, below, backend=backend))) == [0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_promotes(backend, torch, rng):
    """float16/bfloat16 tensors are computed in float32 (docs/SPEC.md §1.5) on every backend."""
    mod = _skip_unless_runnable(backend, "nms", "cpu", "torch", "float32")
    b, s = F.make("clustered", rng, 60, "float32")
    for half in (mod.float16, mod.bfloat16):
        tb, ts = mod.from_numpy(b).to(half), mod.from_numpy(s).to(half)
        b32, s32 = tb.float().numpy(), ts.float().numpy()
        assert_bytes_equal(detkernels.nms(tb, ts, 0.5, backend=backend), RN.nms(b32, s32, 0.5))
        assert_bytes_equal(detkernels.box_iou(tb, tb[:7], backend=backend), R.box_iou(b32, b32[:7]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_detect_matches_reference(backend, device, lib, dtype, rng):
    """detect: two images (the family's boxes, and reversed), [B, N, 3] scores with the family's
    special values in column 0, single/multi-label, with objectness, thresholded and top-k."""
    from detkernels.reference import detect as RD

    mod = _library(lib)
    if device == "cuda" and (why := _cuda_device_present()):
        pytest.skip(why)
    if why := _registry.why_not(backend, "detect", device, dtype):
        pytest.skip(f"backend {backend!r}: {why}")
    for family in F.FAMILIES:
        for n in SIZES[device]:
            b, s = F.make(family, rng, n, dtype)
            bb = np.stack([b, b[::-1]])
            ss = rng.random((2, n, 3)).astype(dtype)
            ss[:, :, 0] = np.stack([s, s[::-1]])
            obj = rng.random((2, n)).astype(dtype)
            for kw in (dict(score_threshold=0.3, pre_nms_top_k=5), dict(multi_label=True),
                       dict(objectness=obj, fmt="cxcywh", class_agnostic=True)):
                want = RD.detect(bb, ss, 0.5, 6, **kw)
                if "objectness" in kw:
                    kw = dict(kw, objectness=_put(obj, lib, device, mod))
                got = detkernels.detect(_put(bb, lib, device, mod), _put(ss, lib, device, mod), 0.5, 6,
                                        backend=backend, **kw)
                for k, (g, w) in enumerate(zip(got, want)):
                    _check_placement(g, lib, device)
                    assert_bytes_equal(g, w, f"detect {family} n={n} {sorted(kw)} output {k}")


# ---- RoI ops: forward and backward, every backend x placement (GPU rows skip without a device) ----
ROI_OPS = ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool")
# (spatial_scale, PH, PW, sampling_ratio, valid boxes too, images): an adaptive grid over the
# adversarial boxes (huge ones dropped: their grids are slow), a fixed grid over valid +
# adversarial ones, and the same over an empty batch (N = 0: batch index -0.5 must not read image 0).
ROI_CONFIGS = {"adaptive": (0.5, 2, 2, 0, False, 2), "fixed": (0.75, 2, 3, 2, True, 2),
               "empty_batch": (0.75, 2, 3, 2, True, 0)}


def _roi_case(op: str, backend: str, lib: str, device: str, dtype: str, mod, cfg: str):
    """(forward[, index map], backward) of `op` on `backend` for `lib` arrays, and the reference's."""
    from _roi_inputs import boxes_adversarial, boxes_valid, features, grad_like
    from detkernels import _checks, _dispatch
    from detkernels.reference import roi_align as RA, roi_pool as RP

    ss, ph, pw, sr, valid, images = ROI_CONFIGS[cfg]
    T = np.dtype(dtype).type
    ps = op.startswith("ps_")
    x = features(7, T, c=ph * pw * 2 if ps else 4, n=images)
    rois = boxes_adversarial(7, T)
    if valid:
        rois = np.concatenate([boxes_valid(7, 12, T), rois])
    else:
        rois = rois[np.all(np.abs(rois[:, 1:]) < 1e5, axis=1)]
    n, c, h, w = x.shape

    def put(a):
        return _put(np.ascontiguousarray(a), lib, device, mod)

    xx, rr = put(x), put(rois)
    if "align" in op:
        wd = _checks.roi_check(xx, rr, ph, pw, ps, pool=False)
        out = _dispatch.roi_align(xx, rr, ss, ph, pw, sr, True, ps, wd, backend)
        want = RA.ps_roi_align(x, rois, ss, ph, pw, sr) if ps else RA.roi_align(x, rois, ss, ph, pw, sr, True)
        g = grad_like(want.shape, 7, T)
        gi = _dispatch.roi_align_backward(put(g), rr, ss, ph, pw, n, c, h, w, sr, True, ps, wd, backend)
        want_gi = (RA.ps_roi_align_backward(g, rois, ss, ph, pw, sr, n, c, h, w) if ps else
                   RA.roi_align_backward(g, rois, ss, ph, pw, n, c, h, w, sr, True))
        return (out, gi), (want, want_gi)
    wd = _checks.roi_check(xx, rr, ph, pw, ps, pool=True)
    out, idx = _dispatch.roi_pool(xx, rr, ss, ph, pw, ps, wd, backend)
    want, want_idx = (RP.ps_roi_pool if ps else RP.roi_pool)(x, rois, ss, ph, pw)
    g = grad_like(want.shape, 7, T)
    gi = _dispatch.roi_pool_backward(put(g), rr, idx, ss, ph, pw, n, c, h, w, ps, wd, backend)
    rb = RP.ps_roi_pool_backward if ps else RP.roi_pool_backward
    return (out, idx, gi), (want, want_idx, rb(g, rois, want_idx, ss, ph, pw, n, c, h, w))


@pytest.mark.parametrize("cfg", list(ROI_CONFIGS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ROI_OPS)
def test_roi_matches_reference(op, backend, device, lib, dtype, cfg):
    mod = _library(lib)
    if device == "cuda" and (why := _cuda_device_present()):
        pytest.skip(why)
    reg = "roi_align" if "align" in op else "roi_pool"
    for r in (reg, f"{reg}_backward"):
        if why := _registry.why_not(backend, r, device, dtype):
            pytest.skip(f"backend {backend!r}: {why}")
    got, want = _roi_case(op, backend, lib, device, dtype, mod, cfg)
    for k, (a, b) in enumerate(zip(got, want)):
        _check_placement(a, lib, device)
        a = a.copy_to_host() if hasattr(a, "copy_to_host") else a
        assert_bytes_equal(a, b, f"{op} {cfg} output {k}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_align_rotated_matches_reference(backend, device, lib, dtype):
    from _roi_inputs import features, grad_like
    from detkernels import _checks, _dispatch
    from detkernels.reference import roi_align_rotated as RR

    mod = _library(lib)
    if device == "cuda" and (why := _cuda_device_present()):
        pytest.skip(why)
    for r in ("roi_align_rotated", "roi_align_rotated_backward"):
        if why := _registry.why_not(backend, r, device, dtype):
            pytest.skip(f"backend {backend!r}: {why}")
    T = np.dtype(dtype).type
    x = features(7, T, c=4)
    rng = np.random.default_rng(7)
    k = 12
    rois = np.stack([rng.integers(0, 2, k), rng.uniform(-4, 17, k), rng.uniform(-4, 15, k),
                     rng.uniform(0, 9, k), rng.uniform(0, 9, k), rng.uniform(-400, 400, k)], 1)
    rois[0, 5], rois[1, 5], rois[2, 0], rois[3, 3] = np.nan, 90, 2, np.inf
    rois = rois.astype(T)
    n, c, h, w = x.shape
    xx, rr = _put(x, lib, device, mod), _put(rois, lib, device, mod)
    wd = _checks.roi_rotated_check(xx, rr, 2, 3)
    for sr, aligned, cw in ((0, True, False), (2, False, True)):
        out = _dispatch.roi_align_rotated(xx, rr, 0.5, 2, 3, sr, aligned, cw, wd, backend)
        want = RR.roi_align_rotated(x, rois, 0.5, 2, 3, sr, aligned, cw)
        g = grad_like(want.shape, 7, T)
        gi = _dispatch.roi_align_rotated_backward(_put(g, lib, device, mod), rr, 0.5, 2, 3, n, c, h, w, sr,
                                                  aligned, cw, wd, backend)
        want_gi = RR.roi_align_rotated_backward(g, rois, 0.5, 2, 3, n, c, h, w, sr, aligned, cw)
        for a, b, what in ((out, want, "forward"), (gi, want_gi, "backward")):
            _check_placement(a, lib, device)
            assert_bytes_equal(to_numpy(a), b, f"roi_align_rotated {what} sr={sr}")


# ---- rotated boxes (issue 17) ------------------------------------------------------------------------

ROTATED_OPS = {"box_iou_rotated": "box_iou_rotated", "nms_rotated": "nms_rotated",
               "batched_nms_rotated": "nms_rotated", "probiou": "probiou", "nms_probiou": "nms_probiou",
               "multi_image_nms_rotated": "multi_image_nms_rotated",
               "multi_image_nms_probiou": "multi_image_nms_rotated"}


# ---- NMS variants (issue 13): soft_nms, diou_nms, matrix_nms and their multi_image_ forms -----------
VARIANT_OPS = ("soft_nms", "multi_image_soft_nms", "diou_nms", "multi_image_diou_nms", "matrix_nms",
               "multi_image_matrix_nms")


def _variant_calls(b, s, c):
    """(name, reference result, call(boxes, scores, classes, backend)) for one image's arrays."""
    from detkernels.reference import diou_nms as RD
    from detkernels.reference import matrix_nms as RM
    from detkernels.reference import soft_nms as RS

    d = detkernels
    return {
        "soft_nms": [(RS.soft_nms(b, s, 0.3, 0.5, "gaussian", 0.01),
                      lambda B, S, C, be: d.soft_nms(B, S, method="gaussian", score_threshold=0.01, backend=be)),
                     (RS.batched_soft_nms(b, s, c, 0.5, 0.5, "linear", 0.001, 5),
                      lambda B, S, C, be: d.soft_nms(B, S, 0.5, idxs=C, max_output=5, backend=be))],
        "multi_image_soft_nms": [(RS.multi_image_soft_nms(np.stack([b, b[::-1]]), np.stack([s, s[::-1]]), 6,
                                                          idxs=np.stack([c, c[::-1]])),
                                  lambda B, S, C, be: d.multi_image_soft_nms(
                                      _stack2(B), _stack2(S), 6, idxs=_stack2(C), backend=be))],
        "diou_nms": [(RD.diou_nms(b, s, 0.5, 1.0),
                      lambda B, S, C, be: d.diou_nms(B, S, 0.5, backend=be)),
                     (RD.batched_diou_nms(b, s, c, 0.3, 0.6),
                      lambda B, S, C, be: d.diou_nms(B, S, 0.3, beta=0.6, idxs=C, backend=be))],
        "multi_image_diou_nms": [(RD.multi_image_diou_nms(np.stack([b, b[::-1]]), np.stack([s, s[::-1]]), 0.4, 5,
                                                          0.6, np.stack([c, c[::-1]])),
                                  lambda B, S, C, be: d.multi_image_diou_nms(
                                      _stack2(B), _stack2(S), 0.4, 5, beta=0.6, idxs=_stack2(C), backend=be))],
        "multi_image_matrix_nms": [(RM.multi_image_matrix_nms(np.stack([b, b[::-1]]), np.stack([s, s[::-1]]),
                                                              np.stack([c, c[::-1]]), 6, "linear", 2.0, 0.05),
                                    lambda B, S, C, be: d.multi_image_matrix_nms(
                                        _stack2(B), _stack2(S), _stack2(C), 6, kernel="linear",
                                        score_threshold=0.05, backend=be))],
        "matrix_nms": [(RM.matrix_nms(b, s, c, "gaussian", 2.0, 0.05),
                        lambda B, S, C, be: d.matrix_nms(B, S, C, score_threshold=0.05, backend=be)),
                       (RM.matrix_nms(b, s, c, "linear", 2.0, None, 4, 50),
                        lambda B, S, C, be: d.matrix_nms(B, S, C, kernel="linear", max_output=4,
                                                         pre_top_k=50, backend=be))],
    }


def _stack2(x):
    """[x, x reversed] in x's array library (multi-image inputs from one image's arrays)."""
    if isinstance(x, np.ndarray):
        return np.stack([x, x[::-1]])
    torch = sys.modules["torch"]
    return torch.stack([x, torch.flip(x, [0])])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(ROTATED_OPS))
def test_rotated_matches_reference(op, backend, device, lib, dtype, rng):
    from _rotated_families import FAMILIES as RF, make as rmake
    from detkernels.reference import rotated as RR

    mod = _library(lib)
    if device == "cuda" and (why := _cuda_device_present()):
        pytest.skip(why)
    if why := _registry.why_not(backend, ROTATED_OPS[op], device, dtype):
        pytest.skip(f"backend {backend!r}: {why}")
    for family in RF:
        for n in (0, 1, 23):
            b = rmake(family, rng, n).astype(dtype)
            s = rng.random(n).astype(dtype)
            c = rng.integers(0, 3, n)
            x, y, z = _put(b, lib, device, mod), _put(s, lib, device, mod), _put(c, lib, device, mod)
            if op == "box_iou_rotated":
                got, want = detkernels.box_iou(x, x, fmt="cxcywhr", backend=backend), RR.box_iou_rotated(b, b)
            elif op == "nms_rotated":
                got, want = detkernels.nms_rotated(x, y, 0.3, backend=backend), RR.nms_rotated(b, s, 0.3)
            elif op == "batched_nms_rotated":
                got = detkernels.batched_nms_rotated(x, y, z, 0.3, backend=backend)
                want = RR.batched_nms_rotated(b, s, c, 0.3)
            elif op == "probiou":
                got, want = detkernels.probiou(x, x, backend=backend), RR.probiou(b, b)
            elif op.startswith("multi_image"):  # two images: the boxes and the boxes reversed
                B, S, C = (np.stack([a, a[::-1]]) for a in (b, s, c))
                X, Y, Z = (_put(a, lib, device, mod) for a in (B, S, C))
                if op == "multi_image_nms_rotated":
                    got = detkernels.multi_image_nms_rotated(X, Y, 0.3, 9, idxs=Z, score_threshold=0.2, backend=backend)
                    want = RR.multi_image_nms_rotated(B, S, 0.3, 9, idxs=C, score_threshold=0.2)
                else:
                    got = detkernels.multi_image_nms_probiou(X, Y, 0.3, 9, fast=True, backend=backend)
                    want = RR.multi_image_nms_probiou(B, S, 0.3, 9, fast=True)
                for k, (g, w) in enumerate(zip(got, want)):
                    _check_placement(g, lib, device)
                    assert_bytes_equal(to_numpy(g), w, f"{op} {family} n={n} output {k}")
                continue
            else:
                got, want = detkernels.nms_probiou(x, y, 0.3, fast=True, backend=backend), RR.nms_probiou(b, s, 0.3, fast=True)
            _check_placement(got, lib, device)
            if device == "cuda" and op == "probiou":  # the device's exp/log: docs/SPEC.md §8
                _assert_within_ulps(to_numpy(got), want, 2 if dtype == "float32" else 64, f"{family} n={n}")
            else:
                assert_bytes_equal(to_numpy(got), want, f"{op} {family} n={n}")


def _assert_within_ulps(got, want, ulps, what):
    """Same shape and dtype, NaN where want is NaN, else within `ulps` units in the last place."""
    assert got.shape == want.shape and got.dtype == want.dtype, what
    assert (np.isnan(got) == np.isnan(want)).all(), what
    fin = ~np.isnan(want)
    it = np.int32 if want.dtype == np.float32 else np.int64
    d = np.abs(got[fin].view(it).astype(np.float64) - want[fin].view(it).astype(np.float64))
    assert d.max(initial=0) <= ulps, f"{what}: {d.max()} ulp"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("device,lib", PLACEMENTS, ids=[f"{d}-{l}" for d, l in PLACEMENTS])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", VARIANT_OPS)
def test_nms_variants_match_reference(op, backend, device, lib, dtype, rng):
    mod = _library(lib)
    if device == "cuda" and (why := _cuda_device_present()):
        pytest.skip(why)
    if why := _registry.why_not(backend, op, device, dtype):
        pytest.skip(f"backend {backend!r}: {why}")
    for family in F.FAMILIES:
        for n in SIZES[device]:
            b, s = F.make(family, rng, n, dtype)
            c = rng.integers(0, 3, n).astype(np.int64)
            for want, call in _variant_calls(b, s, c)[op]:
                got = call(_put(b, lib, device, mod), _put(s, lib, device, mod), _put(c, lib, device, mod),
                           backend)
                got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
                for k, (g, w) in enumerate(zip(got, want)):
                    _check_placement(g, lib, device)
                    assert_bytes_equal(g, w, f"{op} {family} n={n} output {k}")


# ---- the matrix covers the registry -----------------------------------------------------------------
# Registered op -> the matrix test(s) above that run it on every backend and placement.
COVERED = {"box_iou": "test_matches_reference (iou, giou, diou, ciou), test_formats_and_batches",
           "nms": "test_matches_reference (nms, batched_nms), test_nms_threshold_ulps",
           "multi_image_nms": "test_matches_reference (multi_image_nms)",
           "detect": "test_detect_matches_reference",
           "roi_align": "test_roi_matches_reference", "roi_align_backward": "test_roi_matches_reference",
           "roi_pool": "test_roi_matches_reference", "roi_pool_backward": "test_roi_matches_reference",
           "roi_align_rotated": "test_roi_align_rotated_matches_reference",
           "roi_align_rotated_backward": "test_roi_align_rotated_matches_reference",
           "box_iou_rotated": "test_rotated_matches_reference", "nms_rotated": "test_rotated_matches_reference",
           "probiou": "test_rotated_matches_reference", "nms_probiou": "test_rotated_matches_reference",
           "multi_image_nms_rotated": "test_rotated_matches_reference",
           **{op: "test_nms_variants_match_reference" for op in VARIANT_OPS}}


def test_matrix_covers_every_registered_op_backend_and_device():
    """Driven by the registry: a new (op, backend, device) registration fails here until the
    matrix runs it (an op missing from COVERED, a backend or device missing from the axes)."""
    _registry._load()
    devices = {d for d, _ in PLACEMENTS}
    for name, b in _registry._TABLE.items():
        assert name in BACKENDS, f"backend {name!r} is not an axis of the matrix"
        for op, (_, devs, _) in b.impls.items():
            assert op in COVERED, f"{name} registers {op!r}, which no matrix test runs"
            assert set(devs) <= devices, f"{name} serves {op} on {devs}; the matrix places arrays on {devices}"
    assert set(_registry.BACKENDS) == set(BACKENDS)
