"""detkernels.detect (the fused post-process: score threshold -> pre-NMS top-k -> exact NMS ->
max_det) against its NumPy reference (detkernels/reference/detect.py), the reference against
hand-computed goldens and a torch/torchvision composition, the argument checks, and the torch
custom op (torch.compile(fullgraph=True), torch.export, opcheck). The backend matrix
(tests/backends/test_backends.py) runs it from every array library."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels as dk
from detkernels.reference import detect as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from conftest import CPU_BACKENDS, backend_param

BACKENDS = [backend_param(b, "detect") for b in CPU_BACKENDS]
NAMES = ("boxes", "scores", "classes", "indices", "counts")


def _check(got, want, what):
    assert len(got) == 5
    for g, w, name in zip(got, want, NAMES):
        assert_bytes_equal(g, w, f"{what} {name}")


def _inputs(family, seed, B, A, C, dtype=np.float32):
    boxes, scores, classes = batch(family, seed, B, A, max(C, 0))
    obj = np.random.default_rng(seed).uniform(0.5, 1.0, (B, A))
    return boxes.astype(dtype), scores.astype(dtype), classes, obj.astype(dtype)


# ---- the reference: goldens and a composition of torch/torchvision ------------------------------------

def test_reference_goldens():
    """Ties -> lowest class, NaN rows, strict > threshold, output order, class_agnostic, padding."""
    nan = np.nan
    boxes = np.array([[[0, 0, 4, 4], [20, 20, 24, 24], [0, 0, 4, 3], [40, 40, 44, 44]]], np.float32)
    scores = np.array([[[0.5, 0.5, 0.25],      # a0: tie -> class 0
                        [0.25, nan, 0.75],     # a1: NaN -> class 1 (fails any threshold)
                        [0.5, 0.75, 0.75],     # a2: tie -> class 1; IoU(a0, a2) = 0.75
                        [0.25, 0.25, 0.25]]],  # a3: exactly at 0.25 -> fails '> 0.25'
                      np.float32)
    b, s, c, i, n = ref.detect(boxes, scores, 0.5, 4, score_threshold=0.25)
    assert n.tolist() == [2] and i.tolist() == [[2, 0, -1, -1]] and c.tolist() == [[1, 0, -1, -1]]
    assert s.tolist() == [[0.75, 0.5, 0, 0]] and b[0, 0].tolist() == [0, 0, 4, 3]
    assert (b[0, 2:] == 0).all() and b.dtype == np.float32
    # class_agnostic: a2 (0.75) suppresses a0 (IoU 0.75 > 0.5)
    _, _, c, i, n = ref.detect(boxes, scores, 0.5, 4, score_threshold=0.25, class_agnostic=True)
    assert i.tolist() == [[2, -1, -1, -1]] and n.tolist() == [1]
    # no threshold: the NaN candidate ranks first; a3 (class 0, 0.25) is kept
    _, s, c, i, n = ref.detect(boxes, scores, 0.5, 4)
    assert i.tolist() == [[1, 2, 0, 3]] and c.tolist() == [[1, 1, 0, 0]] and np.isnan(s[0, 0])
    # multi-label: every pair above 0.25, per-class NMS (a0 keeps class 0 over a2, a2 class 1 over
    # a0), ties by candidate index a*C + c
    _, s, c, i, n = ref.detect(boxes, scores, 0.5, 8, score_threshold=0.25, multi_label=True)
    assert list(zip(i[0, :n[0]].tolist(), c[0, :n[0]].tolist())) == [(1, 2), (2, 1), (2, 2), (0, 0)]
    # max_det truncates the ordered list
    _, _, _, i, n = ref.detect(boxes, scores, 0.5, 1, score_threshold=0.25)
    assert i.tolist() == [[2]] and n.tolist() == [1]


def test_reference_top_k_ties_by_candidate_index():
    boxes = np.array([[[10 * k, 0, 10 * k + 4, 4] for k in range(5)]], np.float64)  # disjoint
    scores = np.array([[0.5, 0.75, 0.5, 0.5, 0.75]])
    _, s, _, i, n = ref.detect(boxes, scores, 0.5, 5, pre_nms_top_k=3)
    assert i.tolist() == [[1, 4, 0, -1, -1]] and n.tolist() == [3]
    _, _, _, i, _ = ref.detect(boxes, scores, 0.5, 5, pre_nms_top_k=10)  # k >= candidates
    assert i.tolist() == [[1, 4, 0, 2, 3]]


def test_reference_objectness_and_formats():
    rng = np.random.default_rng(3)
    xy, wh = rng.uniform(0, 50, (1, 30, 2)), rng.uniform(2, 20, (1, 30, 2))
    xyxy = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    scores, obj = rng.uniform(size=(1, 30, 4)).astype(np.float32), rng.uniform(size=(1, 30)).astype(np.float32)
    want = ref.detect(xyxy, scores * obj[..., None], 0.5, 10, score_threshold=0.1)
    _check(ref.detect(xyxy, scores, 0.5, 10, score_threshold=0.1, objectness=obj), want, "objectness")
    xywh = np.concatenate([xy, wh], -1).astype(np.float32)
    corners = np.concatenate([xywh[..., :2], xywh[..., :2] + xywh[..., 2:]], -1)  # x2 = x + w in T
    _check(ref.detect(xywh, scores, 0.5, 10, fmt="xywh"), ref.detect(corners, scores, 0.5, 10), "xywh")
    c = xywh[..., :2] + xywh[..., 2:] / np.float32(2)  # centres; corners cx -+ w / 2
    cxcywh = np.concatenate([c, xywh[..., 2:]], -1)
    half = cxcywh[..., 2:] / np.float32(2)
    corners = np.concatenate([cxcywh[..., :2] - half, cxcywh[..., :2] + half], -1)
    _check(ref.detect(cxcywh, scores, 0.5, 10, fmt="cxcywh"), ref.detect(corners, scores, 0.5, 10), "cxcywh")


def test_reference_equals_torch_torchvision_composition(torch, tv_ops):
    """Per image: class max -> '>' threshold -> top-k -> batched_nms (torchvision's exact per-class
    loop) = the reference, for untied float64 scores."""
    from torchvision.ops.boxes import _batched_nms_vanilla

    boxes, scores, _, _ = _inputs("clusters", 5, 3, 400, 6, np.float64)
    scores += np.random.default_rng(5).uniform(0, 1e-6, scores.shape)  # no ties
    b, s, c, i, n = ref.detect(boxes, scores, 0.45, 50, score_threshold=0.3, pre_nms_top_k=120)
    for im in range(3):
        tb, ts = torch.from_numpy(boxes[im]), torch.from_numpy(scores[im])
        sc, lab = ts.max(dim=1)
        idx = (sc > 0.3).nonzero().squeeze(1)
        idx = idx[sc[idx].topk(min(120, idx.numel())).indices]
        keep = idx[_batched_nms_vanilla(tb[idx], sc[idx], lab[idx], 0.45)][:50]
        assert int(n[im]) == keep.numel()
        assert i[im, :n[im]].tolist() == keep.tolist()
        assert c[im, :n[im]].tolist() == lab[keep].tolist()


# ---- backends against the reference -------------------------------------------------------------------

OPTIONS = {
    "single": dict(score_threshold=0.3),
    "single_no_thr_topk": dict(pre_nms_top_k=17),
    "multi": dict(multi_label=True, score_threshold=0.2, pre_nms_top_k=40),
    "agnostic_obj": dict(class_agnostic=True, score_threshold=0.1, objectness=True),
    "multi_agnostic": dict(multi_label=True, class_agnostic=True),
    "cxcywh_obj": dict(fmt="cxcywh", objectness=True, score_threshold=0.25, pre_nms_top_k=1000),
    "xywh_all_below": dict(fmt="xywh", score_threshold=2.0),
    "k0": dict(pre_nms_top_k=0),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_detect_equals_reference(backend, family, option):
    kw = dict(OPTIONS[option])
    with_obj = kw.pop("objectness", False)
    for C in (1, 5, 37):  # 37: vector lanes plus a scalar tail in the native row scans
        for dtype in (np.float32, np.float64):
            boxes, scores, _, obj = _inputs(family, C, 2, 60, C, dtype)
            if with_obj:
                kw["objectness"] = obj
            for K in (0, 6, 400):  # 400 >= every kept count
                want = ref.detect(boxes, scores, 0.5, K, **kw)
                got = dk.detect(boxes, scores, 0.5, K, backend=backend, **kw)
                _check(got, want, f"{backend} {family} {option} C={C} {dtype.__name__} K={K}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["ties", "nonfinite", "many_classes"])
def test_idxs_form_equals_reference(backend, family):
    boxes, scores, classes, obj = _inputs(family, 9, 3, 80, 0)
    for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
               dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict()):
        want = ref.detect(boxes, scores, 0.5, 30, **kw)
        _check(dk.detect(boxes, scores, 0.5, 30, backend=backend, **kw), want, f"{family} {sorted(kw)}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    for B, A, C in ((0, 5, 3), (2, 0, 3), (2, 5, 0), (0, 0, 0)):
        boxes = np.zeros((B, A, 4), np.float32)
        scores = np.full((B, A, C), 0.5, np.float32)
        for multi in (False, True):
            got = dk.detect(boxes, scores, 0.5, 4, multi_label=multi, backend=backend)
            _check(got, ref.detect(boxes, scores, 0.5, 4, multi_label=multi), f"B={B} A={A} C={C}")
            assert got.boxes.shape == (B, 4, 4) and got.counts.shape == (B,)
            assert (got.counts == 0).all() and (got.indices == -1).all()


def test_many_candidates_split_over_threads():
    """A = 5000 anchors: the native score pass runs in anchor blocks on the pool (B < threads)."""
    boxes, scores, _, obj = _inputs("clusters", 11, 1, 5000, 7)
    for kw in (dict(score_threshold=0.5, pre_nms_top_k=300), dict(multi_label=True, score_threshold=0.9),
               dict(objectness=obj, pre_nms_top_k=50)):
        _check(dk.detect(boxes, scores, 0.45, 100, backend="native", **kw),
               ref.detect(boxes, scores, 0.45, 100, **kw), str(sorted(kw)))


def test_row_scan_at_every_width():
    """The native single-label scans -- rows (one max pass that sums the row as its NaN witness,
    then, for a passing row, the first column equal to the maximum from 64-column lane masks) and
    columns (ultralytics' [B, 4 + C, A] layout: the same witness per anchor over blocks of anchors)
    -- on rows that exercise each part: widths below, at and past the vector and 64-column chunk
    sizes; the maximum in the second chunk, tied across chunks (the first wins), tied as -0 / +0;
    rows holding both infinities (a NaN sum without a NaN), NaN anywhere (class 0 too), huge
    values whose sum overflows; with and without a threshold and objectness, in both dtypes."""
    rng = np.random.default_rng(12)
    for C in (31, 32, 33, 63, 64, 65, 80, 127, 129, 200):
        A = 96
        for dtype in (np.float32, np.float64):
            s = rng.uniform(0, 0.6, (1, A, C)).astype(dtype)
            for a in range(A):
                kind = a % 8
                c1, c2 = rng.integers(0, C, 2)
                if kind == 0 and a % 16 == 0:  # NaN in class 0
                    s[0, a, 0] = np.nan
                elif kind == 1:  # the maximum late (second chunk where there is one), tied earlier
                    s[0, a, C - 1] = s[0, a, min(c1, C - 1)] = 0.9
                elif kind == 2:  # -0 / +0 maximum
                    s[0, a] = -rng.uniform(0, 1, C)
                    s[0, a, c1], s[0, a, c2] = -0.0, 0.0
                elif kind == 3:  # both infinities, no NaN
                    s[0, a, c1], s[0, a, c2] = np.inf, -np.inf
                elif kind == 4:  # -inf only, maximum below it elsewhere
                    s[0, a, c1] = -np.inf
                elif kind == 5:  # a NaN
                    s[0, a, c1] = np.nan
                elif kind == 6:  # sums overflow to inf (no NaN): max found exactly
                    s[0, a] = np.finfo(dtype).max / 2
                    s[0, a, c1] = np.finfo(dtype).max
                elif kind == 7:  # +inf then -inf overflow partner
                    s[0, a] = np.finfo(dtype).max
                    s[0, a, c1] = -np.inf
            boxes = _inputs("uniform", C, 1, A, 1, dtype)[0]
            obj = rng.uniform(0.5, 1.0, (1, A)).astype(dtype)
            columns = np.ascontiguousarray(s.transpose(0, 2, 1)).transpose(0, 2, 1)  # [1, A, C] view
            for kw in (dict(), dict(score_threshold=0.5), dict(objectness=obj),
                       dict(objectness=obj, score_threshold=0.3)):
                want = ref.detect(boxes, s, 0.5, A, **kw)
                for layout, scores in (("rows", s), ("columns", columns)):
                    _check(dk.detect(boxes, scores, 0.5, A, backend="native", **kw), want,
                           f"{layout} C={C} {dtype.__name__} {sorted(kw)}")


def _bin_stress_scores(rng, n):
    """float32 scores that stress the native top-k's radix select (a histogram of the score keys'
    top 12 bits, then nth_element inside the bin holding the k-th): values packed into one bin
    (one exponent, the same top mantissa bits), long runs of ties, bin edges (consecutive floats
    across a bin boundary), -0 / +0, negatives, +-inf and NaN (no threshold: they are candidates)."""
    one_bin = (np.float32(0.5) + rng.integers(0, 1000, n).astype(np.float32) * np.float32(2 ** -24))
    edge = np.float32(0.5625)  # 0.5 + 2^-4: a 12-bit bin boundary of the score keys
    around = np.nextafter(edge, np.float32(0), dtype=np.float32)
    pool = np.array([0.0, -0.0, -1.5, np.inf, -np.inf, np.nan, edge, around, 0.25, 0.75], np.float32)
    mixed = rng.choice(pool, n)
    ties = np.repeat(rng.uniform(0, 1, max(1, n // 20)).astype(np.float32), 20)[:n]
    return {"one_bin": one_bin, "mixed": mixed, "ties": ties}


def test_top_k_selects_exactly_across_score_bins():
    """Every k from 0 past the candidate count, single label and multi-label, against the
    reference: the k-th candidate falls inside a bin, at a bin's first or last key, in a run of
    ties and among NaNs."""
    rng = np.random.default_rng(5)
    A, C = 120, 3
    boxes = _inputs("uniform", 5, 1, A, C)[0]
    for name, flat in _bin_stress_scores(rng, A * C).items():
        scores = flat.reshape(1, A, C)
        for multi in (False, True):
            for k in list(range(0, 40)) + [59, 60, 61, 119, 120, 121, 200, 359, 360, 361]:
                kw = dict(pre_nms_top_k=k, multi_label=multi)
                _check(dk.detect(boxes, scores, 0.5, 400, backend="native", **kw),
                       ref.detect(boxes, scores, 0.5, 400, **kw), f"{name} multi={multi} k={k}")


# ---- NMS modes (issue 13: DIoU-, Soft-, Matrix NMS inside detect) -------------------------------------

MODES = {
    "diou": dict(nms="diou"),
    "diou_beta": dict(nms="diou", beta=0.6),
    "soft_linear": dict(nms="soft"),
    "soft_gaussian": dict(nms="soft", decay="gaussian", sigma=0.3, min_score=0.05),
    "matrix_gaussian": dict(nms="matrix"),
    "matrix_linear": dict(nms="matrix", decay="linear", min_score=0.1),
}
MODE_OPTIONS = {k: OPTIONS[k] for k in ("single", "single_no_thr_topk", "multi", "agnostic_obj")}
MODE_BACKENDS = [backend_param(b, "detect") for b in ("native", "numpy")]


@pytest.mark.parametrize("backend", MODE_BACKENDS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", sorted(MODES))
def test_nms_modes_equal_reference(backend, family, mode):
    for option, opts in MODE_OPTIONS.items():
        kw = dict(opts, **MODES[mode])
        with_obj = kw.pop("objectness", False)
        for C in (1, 5):
            for dtype in (np.float32, np.float64):
                boxes, scores, _, obj = _inputs(family, C, 2, 60, C, dtype)
                if with_obj:
                    kw["objectness"] = obj
                for K in (0, 6, 400):
                    want = ref.detect(boxes, scores, 0.5, K, **kw)
                    got = dk.detect(boxes, scores, 0.5, K, backend=backend, **kw)
                    _check(got, want, f"{backend} {family} {mode} {option} C={C} {dtype.__name__} K={K}")


@pytest.mark.parametrize("family", ["ties", "nonfinite", "many_classes"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_nms_modes_idxs_form_and_threads(family, mode):
    boxes, scores, classes, obj = _inputs(family, 9, 3, 80, 0)
    for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
               dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict()):
        kw.update(MODES[mode])
        want = ref.detect(boxes, scores, 0.5, 30, **kw)
        _check(dk.detect(boxes, scores, 0.5, 30, backend="native", **kw), want, f"{family} {sorted(kw)}")
    boxes, scores, _, _ = _inputs("clusters", 11, 1, 3000, 7)  # anchor blocks on the pool
    kw = dict(score_threshold=0.5, pre_nms_top_k=300, **MODES[mode])
    _check(dk.detect(boxes, scores, 0.45, 100, backend="native", **kw),
           ref.detect(boxes, scores, 0.45, 100, **kw), "split")


def test_reference_modes_compose_the_single_image_ops():
    """Per image, the candidates (threshold, top-k) go to diou_nms / soft_nms / matrix_nms as
    those ops are called directly; soft and matrix give the decayed scores."""
    from detkernels.reference.diou_nms import batched_diou_nms
    from detkernels.reference.matrix_nms import matrix_nms
    from detkernels.reference.soft_nms import soft_nms

    boxes, scores, _, _ = _inputs("clusters", 4, 2, 120, 3, np.float64)
    scores += np.random.default_rng(4).uniform(0, 1e-6, scores.shape)  # no ties
    kw = dict(score_threshold=0.3, pre_nms_top_k=50)
    for im in range(2):
        s, c = scores[im].max(1), scores[im].argmax(1)
        sel = np.flatnonzero(s > 0.3)
        sel = np.sort(sel[np.argsort(-s[sel], kind="stable")[:50]])
        bb, ss = boxes[im][sel], s[sel]
        _, _, cl, i, n = ref.detect(boxes, scores, 0.5, 20, nms="diou", beta=0.6, **kw)
        assert i[im, :n[im]].tolist() == sel[batched_diou_nms(bb, ss, c[sel], 0.5, 0.6)[:20]].tolist()
        _, sc, _, i, n = ref.detect(boxes, scores, 0.4, 20, nms="soft", decay="gaussian",
                                    class_agnostic=True, **kw)
        k, v = soft_nms(bb, ss, 0.4, 0.5, "gaussian", 0.001, 20)  # regular boxes: pick order
        assert i[im, :n[im]].tolist() == sel[k].tolist() and sc[im, :n[im]].tolist() == v.tolist()
        _, sc, _, i, n = ref.detect(boxes, scores, 0.5, 20, nms="matrix", min_score=0.2, **kw)
        k, v = matrix_nms(bb, ss, c[sel], "gaussian", 2.0, 0.2, 20)
        assert i[im, :n[im]].tolist() == sel[k].tolist() and sc[im, :n[im]].tolist() == v.tolist()
    # "iou" spelled out is the default, bit for bit
    _check(ref.detect(boxes, scores, 0.5, 20, nms="iou", **kw), ref.detect(boxes, scores, 0.5, 20, **kw), "iou")


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(nms="nms"), ValueError, "nms must be one of"),
    (dict(nms=None), ValueError, "nms must be one of"),
    (dict(beta=0.6), ValueError, "beta applies to nms='diou', not nms='iou'"),
    (dict(nms="soft", beta=0.6), ValueError, "beta applies"),
    (dict(nms="diou", sigma=0.5), ValueError, "sigma applies to nms='soft' or 'matrix'"),
    (dict(nms="diou", min_score=0.5), ValueError, "min_score applies"),
    (dict(nms="iou", decay="linear"), ValueError, "decay applies"),
    (dict(nms="diou", beta=0.0), ValueError, "beta must be a positive"),
    (dict(nms="diou", beta="1"), TypeError, "beta"),
    (dict(nms="soft", decay="cubic"), ValueError, "decay must be one of"),
    (dict(nms="soft", sigma=0.0), ValueError, "sigma must be a positive"),
    (dict(nms="matrix", sigma=float("inf")), ValueError, "sigma must be a positive finite"),
    (dict(nms="soft", min_score="0.1"), TypeError, "min_score"),
])
def test_bad_nms_mode_arguments_name_the_argument(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        dk.detect(B3, S3, 0.5, 10, **kwargs)


def test_nms_modes_refused_where_not_served(monkeypatch):
    """numba (CPU and CUDA) runs greedy IoU NMS only: another mode is a NotImplementedError
    naming it and the device, never greedy NMS in its place. Native serves every mode on CPU and
    CUDA."""
    from detkernels import _checks, _dispatch, _registry

    if _registry.why_not("numba", "detect") is None:
        with pytest.raises(NotImplementedError, match=r"nms='soft'.* on cpu by backend 'numba'"):
            dk.detect(B3, S3, 0.5, 10, nms="soft", backend="numba")
    if _registry.why_not("native", "detect") is None:
        from detkernels.backends import native

        # The registry's choice for a CUDA array (no GPU here: the selection itself is stubbed).
        monkeypatch.setattr(_registry, "select", lambda op, dev, w, backend=None: ("native", native.detect))
        for mode in ("iou", "diou", "soft", "matrix"):
            assert _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms(mode), None) is native.detect
        # A backend whose detect lists no CUDA modes is refused there, naming the mode.
        def iou_only(*args, **kwargs):
            raise AssertionError("not called")
        iou_only.nms_modes = {"cpu": ("iou", "soft")}
        monkeypatch.setattr(_registry, "select", lambda op, dev, w, backend=None: ("native", iou_only))
        with pytest.raises(NotImplementedError, match=r"nms='soft'.* on cuda by backend 'native'"):
            _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms("soft"), None)
    if _registry.why_not("numba", "detect") is None:
        from detkernels.backends import numba as nb

        monkeypatch.setattr(_registry, "select", lambda op, dev, w, backend=None: ("numba", nb.detect))
        for mode in ("diou", "soft", "matrix"):
            with pytest.raises(NotImplementedError, match=rf"nms='{mode}'.* on cuda by backend 'numba'"):
                _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms(mode), None)
        assert _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms(), None) is nb.detect


# ---- torch --------------------------------------------------------------------------------------------

def _tensors(torch, dtype="float32"):
    boxes, scores, classes, obj = _inputs("clusters", 2, 2, 150, 4, np.float32)
    t = lambda a: torch.from_numpy(a).to(getattr(torch, dtype))  # noqa: E731
    return t(boxes), t(scores), torch.from_numpy(classes), t(obj)


def test_torch_in_torch_out_and_half_inputs(torch):
    for dtype in ("float16", "bfloat16", "float32"):
        b, s, c, o = _tensors(torch, dtype)
        got = dk.detect(b, s, 0.5, 20, score_threshold=0.3, objectness=o)
        assert all(isinstance(x, torch.Tensor) for x in got)
        assert got.boxes.dtype == torch.float32  # half inputs are computed (and returned) in float32
        want = ref.detect(b.float().numpy(), s.float().numpy(), 0.5, 20, score_threshold=0.3,
                          objectness=o.float().numpy())
        _check(got, want, dtype)
    got = dk.detect(b, s[..., 0], 0.5, 20, idxs=c)
    _check(got, ref.detect(b.numpy(), s[..., 0].numpy(), 0.5, 20, idxs=c.numpy()), "idxs")


def test_compile_fullgraph_and_export_static_shapes(torch):
    b, s, c, o = _tensors(torch)

    def f(b, s, o):
        r = dk.detect(b, s, 0.5, 25, score_threshold=0.2, pre_nms_top_k=100, objectness=o)
        return r.boxes, r.scores, r.classes, r.indices, r.counts

    want = f(b, s, o)
    for g, w in zip(torch.compile(f, fullgraph=True)(b, s, o), want):
        assert_bytes_equal(g, w, "compiled")

    class M(torch.nn.Module):
        def forward(self, b, s, o):
            return f(b, s, o)

    ep = torch.export.export(M(), (b, s, o))
    out_specs = [n for n in ep.graph.nodes if n.op == "output"][0].args[0]
    assert [tuple(x.meta["val"].shape) for x in out_specs] == [(2, 25, 4), (2, 25), (2, 25), (2, 25), (2,)]
    for g, w in zip(ep.module()(b, s, o), want):
        assert_bytes_equal(g, w, "exported")


def test_opcheck(torch):
    b, s, c, o = _tensors(torch)
    op = torch.ops.detkernels.detect.default
    torch.library.opcheck(op, (b, s, o, None, 0.5, 30, 0.1, 50, "xyxy", False, False))
    torch.library.opcheck(op, (b, s[..., 0], None, c, 0.5, 30, None, None, "cxcywh", False, True))
    torch.library.opcheck(op, (b, s, o, None, 0.5, 30, 0.1, 50, "xyxy", False, False, "soft", None,
                               "gaussian", 0.5, 0.001))
    torch.library.opcheck(op, (b, s, None, None, 0.5, 30, None, None, "xyxy", True, False, "matrix",
                               None, "gaussian", 2.0, None))
    torch.library.opcheck(op, (b, s, None, None, 0.5, 30, 0.2, None, "xyxy", False, False, "diou",
                               0.6, None, None, None))


@pytest.mark.parametrize("mode", ["diou_beta", "soft_gaussian", "matrix_linear"])
def test_nms_modes_compile_and_export(torch, mode):
    b, s, c, o = _tensors(torch)

    def f(b, s, o):
        r = dk.detect(b, s, 0.5, 25, score_threshold=0.2, pre_nms_top_k=100, objectness=o, **MODES[mode])
        return r.boxes, r.scores, r.classes, r.indices, r.counts

    want = f(b, s, o)
    _check(want, ref.detect(b.numpy(), s.numpy(), 0.5, 25, score_threshold=0.2, pre_nms_top_k=100,
                            objectness=o.numpy(), **MODES[mode]), "eager")
    for g, w in zip(torch.compile(f, fullgraph=True)(b, s, o), want):
        assert_bytes_equal(g, w, "compiled")

    class M(torch.nn.Module):
        def forward(self, b, s, o):
            return f(b, s, o)

    ep = torch.export.export(M(), (b, s, o))
    for g, w in zip(ep.module()(b, s, o), want):
        assert_bytes_equal(g, w, "exported")


# ---- argument checks ----------------------------------------------------------------------------------

B3 = np.zeros((2, 5, 4), np.float32)
S3 = np.zeros((2, 5, 3), np.float32)


@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(boxes=np.zeros((5, 4), np.float32)), ValueError, "boxes"),
    (dict(scores=np.zeros((2, 4, 3), np.float32)), ValueError, "scores"),
    (dict(scores=np.zeros((2, 5, 3), np.int64)), TypeError, "scores"),
    (dict(objectness=np.zeros((2, 4), np.float32)), ValueError, "objectness"),
    (dict(idxs=np.zeros((2, 5), np.int64)), ValueError, "idxs"),
    (dict(scores=S3[..., 0], idxs=np.zeros((2, 5), np.float32)), TypeError, "idxs"),
    (dict(scores=S3[..., 0], multi_label=True), ValueError, "multi_label"),
    (dict(multi_label=1), TypeError, "multi_label"),
    (dict(class_agnostic="yes"), TypeError, "class_agnostic"),
    (dict(max_det=-1), ValueError, "max_det"),
    (dict(max_det=2.5), ValueError, "max_det"),
    (dict(pre_nms_top_k=-3), ValueError, "pre_nms_top_k"),
    (dict(fmt="xyxyxyxy"), ValueError, "fmt"),
    (dict(iou_threshold="0.5"), TypeError, "iou_threshold"),
    (dict(score_threshold="0.5"), TypeError, "score_threshold"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, name):
    args = dict(boxes=B3, scores=S3, iou_threshold=0.5, max_det=10)
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        dk.detect(args.pop("boxes"), args.pop("scores"), args.pop("iou_threshold"), args.pop("max_det"), **args)


@pytest.mark.parametrize("backend", [backend_param(b, "detect") for b in ("native", "numba")])
@pytest.mark.parametrize("family", ["clusters", "ties", "nonfinite"])
def test_strided_layouts_read_in_place(backend, family):
    """Views of a head output, read with their strides: YOLOv5's [B, A, 5 + C] (row scans on a
    sliced row), ultralytics' [B, 4 + C, A] transposed (column scans), reversed NumPy views
    (numba copies them contiguous, once per input)."""
    for C in (3, 37):
        boxes, scores, _, obj = _inputs(family, C, 2, 300, C)
        v5 = np.concatenate([boxes, obj[..., None], scores], -1)              # [B, A, 5 + C]
        u8 = np.ascontiguousarray(np.concatenate([boxes, scores], -1).transpose(0, 2, 1))  # [B, 4+C, A]
        cases = [(v5[..., :4], v5[..., 5:], dict(objectness=v5[..., 4])),
                 (u8[:, :4].transpose(0, 2, 1), u8[:, 4:].transpose(0, 2, 1), {}),
                 (u8[:, :4].transpose(0, 2, 1), u8[:, 4:].transpose(0, 2, 1), dict(objectness=obj)),
                 (boxes[:, ::-1], scores[:, ::-1, ::-1], {})]
        for b, s, kw in cases:
            for extra in ({}, {"score_threshold": 0.3, "pre_nms_top_k": 50}, {"multi_label": True}):
                want = ref.detect(np.ascontiguousarray(b), np.ascontiguousarray(s), 0.5, 40, **kw, **extra)
                got = dk.detect(b, s, 0.5, 40, backend=backend, **kw, **extra)
                _check(got, want, f"C={C} strides={s.strides} {sorted(kw)} {sorted(extra)}")
