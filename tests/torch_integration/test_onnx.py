"""ONNX export of every op with both exporters, run in ONNX Runtime on the input families and
compared with detkernels (docs/DEPLOY.md has the rules pinned here).

Each case is exported once per exporter (fixed shapes: every family is drawn at the same size)
and the session is reused across families and seeds. Where ONNX Runtime's arithmetic differs,
the comparison states the exact rule: NonMaxSuppression equals detkernels on min/max-normalised
float32 boxes with the threshold rounded to float32 (NaN scores are outside it: ORT's priority
queue has no order for them).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES
from _roi_inputs import boxes_adversarial, boxes_valid, features

import detkernels as dk

EXPORTERS = {"dynamo": True, "legacy": False}
N, B, C, M = 48, 2, 3, 7  # boxes per image, images, classes, max_output
K = 24  # rois
SEEDS = range(2)


class _Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def export(fn, args, exporter: str, path) -> ort.InferenceSession:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation / tracer notes
        torch.onnx.export(_Fn(fn), args, str(path), dynamo=EXPORTERS[exporter], opset_version=18,
                          verbose=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(sess, *args):
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: a.numpy() for n, a in zip(names, args)})


def op_types(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


# ---- NMS forms ---------------------------------------------------------------------------------------

def ort_view(boxes, scores, thr):
    """The inputs on which detkernels reproduces ONNX Runtime's NonMaxSuppression: corners sorted
    (ORT takes any diagonal pair), the threshold rounded to float32 (ORT compares float32s)."""
    lo, hi = torch.minimum(boxes[..., :2], boxes[..., 2:]), torch.maximum(boxes[..., :2], boxes[..., 2:])
    return torch.cat([lo, hi], -1), scores, float(np.float32(thr))


def family(name, seed, b=1, c=0):
    rng = np.random.default_rng(seed)
    bs, ss, cs = zip(*(FAMILIES[name](rng, N) for _ in range(b)))
    boxes, scores, idxs = (torch.from_numpy(np.stack(x)) for x in (bs, ss, cs))
    boxes, scores = boxes.float(), scores.float()
    scores = torch.where(scores.isnan(), torch.tensor(float("inf")), scores)  # see the docstring
    if c:
        g = torch.Generator().manual_seed(seed)
        scores = torch.stack([scores] + [scores[:, torch.randperm(N, generator=g)] for _ in range(c - 1)], -1)
    return boxes, scores, idxs


NMS_CASES = {
    # name: (fn(boxes, scores, idxs, thr) -> outputs, images, classes, uses idxs)
    "nms": (lambda b, s, i, t: dk.nms(b[0], s[0], t), 1, 0, False),
    "batched_nms": (lambda b, s, i, t: dk.batched_nms(b[0], s[0], i[0], t), 1, 0, True),
    "nms_padded": (lambda b, s, i, t: dk.nms_padded(b[0], s[0], t, M), 1, 0, False),
    "multi_image_nms": (lambda b, s, i, t: dk.multi_image_nms(b, s, t, M), B, 0, False),
    "multi_image_nms_idxs": (lambda b, s, i, t: dk.multi_image_nms(b, s, t, M, idxs=i), B, 0, True),
    "multi_image_nms_classes": (lambda b, s, i, t: dk.multi_image_nms(b, s, t, M, score_threshold=0.25),
                                B, C, False),
    "multi_image_nms_idxs_score": (lambda b, s, i, t: dk.multi_image_nms(b, s, t, M, idxs=i, score_threshold=0.25),
                                   B, 0, True),
}
_sessions: dict = {}


def nms_session(case, exporter, thr, tmp_path_factory):
    key = (case, exporter, thr)
    if key not in _sessions:
        fn, b, c, with_idxs = NMS_CASES[case]
        boxes, scores, idxs = family("uniform", 0, b, c)
        path = tmp_path_factory.mktemp("onnx") / f"{case}.onnx"
        if with_idxs:
            sess = export(lambda x, s, i: fn(x, s, i, thr), (boxes, scores, idxs), exporter, path)
        else:
            sess = export(lambda x, s: fn(x, s, None, thr), (boxes, scores), exporter, path)
        _sessions[key] = (sess, path)
    return _sessions[key]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", NMS_CASES)
def test_nms_forms_in_onnxruntime(case, exporter, tmp_path_factory):
    thr = 0.3  # float32(0.3) > 0.3: the at_threshold family meets the float32 rounding
    sess, path = nms_session(case, exporter, thr, tmp_path_factory)
    assert "NonMaxSuppression" in op_types(path)
    fn, b, c, with_idxs = NMS_CASES[case]
    for fam in FAMILIES:
        for seed in SEEDS:
            boxes, scores, idxs = family(fam, seed, b, c)
            got = run(sess, boxes, scores, *([idxs] if with_idxs else []))
            want = fn(*ort_view(boxes, scores, thr)[:2], idxs, ort_view(boxes, scores, thr)[2])
            want = want if isinstance(want, tuple) else (want,)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert_bytes_equal(torch.from_numpy(np.asarray(g)), w, f"{case} {exporter} {fam} seed {seed}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_nms_threshold_rounding_at_the_threshold(exporter, tmp_path_factory):
    """IoU = fl(3 / 10) = float32(0.3) > 0.3: detkernels compares the float32 IoU with 0.3 in
    float64 and suppresses; ONNX Runtime compares it with float32(0.3) and keeps the box."""
    sess, _ = nms_session("nms", exporter, 0.3, tmp_path_factory)
    far = [[100.0 + 3 * k, 100.0, 101.0 + 3 * k, 101.0] for k in range(N - 2)]
    boxes = torch.tensor([[[0.0, 0.0, 5.0, 1.0], [2.0, 0.0, 10.0, 1.0]] + far])  # inter 3, union 10
    scores = torch.linspace(1.0, 0.5, N)[None]
    got = torch.from_numpy(run(sess, boxes, scores)[0])
    assert dk.nms(boxes[0], scores[0], 0.3).tolist() == [0] + list(range(2, N))
    assert got.tolist() == list(range(N))
    assert torch.equal(got, dk.nms(boxes[0], scores[0], float(np.float32(0.3))))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_nms_inverted_boxes_are_normalised_by_onnxruntime(exporter, tmp_path_factory):
    """ONNX Runtime takes (x1, y1, x2, y2) as any diagonal pair; detkernels (torchvision) takes the
    corners as given, so an inverted box has a negative area and suppresses nothing."""
    sess, _ = nms_session("nms", exporter, 0.3, tmp_path_factory)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [10.0, 10.0, 0.0, 0.0]] + [[100.0, 100, 101, 101]] * (N - 2)])
    scores = torch.cat([torch.tensor([[1.0, 0.9]]), torch.zeros(1, N - 2)], 1)
    got = run(sess, boxes, scores)[0]
    assert got[:2].tolist() == [0, 2]  # the inverted copy of box 0 is suppressed
    assert dk.nms(boxes[0], scores[0], 0.3)[:3].tolist() == [0, 1, 2]


# ---- RoI ops -----------------------------------------------------------------------------------------

def adversarial_rois(seed):
    """boxes_adversarial's rows that ONNX Runtime accepts: finite (it raises on NaN/inf rois, see
    test_roi_align_nonfinite_rois_raise), |coordinates| < 1e3 (its adaptive sampling grid for a
    1e6 box does not fit in memory) and batch indices naming an image."""
    b = boxes_adversarial(seed)
    b = b[np.isfinite(b).all(1) & (np.abs(b).max(1) < 1e3) & (b[:, 0] >= 0) & (b[:, 0] < 2)]
    return np.resize(b, (K, 5))


ROI_FAMILIES = {"valid": lambda seed: boxes_valid(seed, K), "adversarial": adversarial_rois}
ROI_CASES = {
    "roi_align_aligned": (lambda x, r: dk.roi_align(x, r, (3, 3), 0.5, -1, True), "RoiAlign"),
    "roi_align": (lambda x, r: dk.roi_align(x, r, (2, 3), 1.0, 2, False), "RoiAlign"),
    "roi_pool": (lambda x, r: dk.roi_pool(x, r, (3, 2), 0.5), "MaxRoiPool"),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", ROI_CASES)
def test_roi_ops_in_onnxruntime(case, exporter, tmp_path):
    fn, onnx_op = ROI_CASES[case]
    x, r = torch.from_numpy(features(0)), torch.from_numpy(boxes_valid(0, K))
    sess = export(fn, (x, r), exporter, tmp_path / "m.onnx")
    assert onnx_op in op_types(tmp_path / "m.onnx")
    for fam, rois in ROI_FAMILIES.items():
        for seed in SEEDS:
            x, r = torch.from_numpy(features(seed)), torch.from_numpy(rois(seed))
            assert_bytes_equal(torch.from_numpy(run(sess, x, r)[0]), fn(x, r), f"{case} {exporter} {fam} {seed}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_roi_align_nonfinite_rois_raise_in_onnxruntime(exporter, tmp_path):
    """detkernels gives 0 for a RoI with a NaN/inf coordinate; ONNX Runtime refuses the input."""
    fn = ROI_CASES["roi_align"][0]
    x, r = torch.from_numpy(features(0)), torch.from_numpy(boxes_valid(0, K))
    sess = export(fn, (x, r), exporter, tmp_path / "m.onnx")
    r[3, 2] = float("nan")
    assert fn(x, r)[3].abs().sum() == 0
    with pytest.raises(Exception, match="must be finite"):
        run(sess, x, r)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_ps_ops_export_as_custom_domain_nodes(name, exporter, tmp_path):
    """No ONNX operator: a ``detkernels.PSRoIAlign`` / ``PSRoIPool`` node (docs/DEPLOY.md)."""
    fn = getattr(dk, name)
    x, r = torch.from_numpy(features(0, c=18)), torch.from_numpy(boxes_valid(0, K))
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Fn(lambda x, r: fn(x, r, (3, 3), 0.5)), (x, r), str(path),
                          dynamo=EXPORTERS[exporter], opset_version=18)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    nodes = [n for n in model.graph.node if n.domain == "detkernels"]
    assert [n.op_type for n in nodes] == ["PSRoIAlign" if name == "ps_roi_align" else "PSRoIPool"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs["pooled_height"] == 3 and attrs["pooled_width"] == 3 and attrs["spatial_scale"] == 0.5
    assert any(o.domain == "detkernels" and o.version == 1 for o in model.opset_import)


# ---- IoU family --------------------------------------------------------------------------------------

IOU = {"box_iou": dk.box_iou, "generalized_box_iou": dk.generalized_box_iou,
       "distance_box_iou": dk.distance_box_iou, "complete_box_iou": dk.complete_box_iou,
       "box_area": dk.box_area}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", IOU)
def test_iou_family_in_onnxruntime(name, exporter, tmp_path):
    fn = IOU[name]
    args = (lambda a, b: fn(a)) if name == "box_area" else fn
    a, b = family("uniform", 0)[0][0, :16], family("uniform", 1)[0][0, :20]
    path = tmp_path / "m.onnx"
    sess = export(args, (a, b), exporter, path) if name != "box_area" else export(fn, (a,), exporter, path)
    assert not [t for t in op_types(path) if t in ("NonMaxSuppression",) or "detkernels" in t]
    for fam in FAMILIES:
        for seed in SEEDS:
            x = family(fam, seed)[0][0]
            a, b = x[:16], x[16:36]
            got = run(sess, a, b)[0] if name != "box_area" else run(sess, x[:16])[0]
            want = fn(a, b) if name != "box_area" else fn(x[:16])
            assert_bytes_equal(torch.from_numpy(got), want, f"{name} {exporter} {fam} {seed}")


# ---- a torchvision model exports the same under patch_torchvision() ----------------------------------

class _TvHead(torch.nn.Module):
    """The torchvision.ops calls of a detection head, looked up at call time (as the models do).
    roi_pool only for the legacy exporter: onnxscript 0.7.2's translation of torchvision::roi_pool
    takes the wrong arguments, so plain torchvision cannot export it with dynamo=True (detkernels'
    roi_pool can: test_roi_ops_in_onnxruntime)."""

    def __init__(self, with_roi_pool: bool):
        super().__init__()
        self.with_roi_pool = with_roi_pool

    def forward(self, feats, rois, boxes, scores):
        from torchvision import ops

        out = (ops.nms(boxes, scores, 0.5), ops.roi_align(feats, rois, (3, 3), 0.5, 2, True),
               ops.box_iou(boxes[:8], boxes))
        return out + (ops.roi_pool(feats, rois, (2, 2), 0.5),) if self.with_roi_pool else out


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_torchvision_module_exports_the_same_under_patch(exporter, tmp_path):
    pytest.importorskip("torchvision")
    feats, rois = torch.from_numpy(features(0)), torch.from_numpy(boxes_valid(0, K))
    boxes, scores, _ = family("clusters", 0)
    args = (feats, rois, boxes[0], scores[0])
    head = _TvHead(with_roi_pool=exporter == "legacy")
    plain = export(head, args, exporter, tmp_path / "tv.onnx")
    with dk.patch_torchvision():
        patched = export(head, args, exporter, tmp_path / "dk.onnx")
    kinds = {"NonMaxSuppression", "RoiAlign", "MaxRoiPool"}
    assert [t for t in op_types(tmp_path / "tv.onnx") if t in kinds] == \
        [t for t in op_types(tmp_path / "dk.onnx") if t in kinds]
    for seed in SEEDS:
        boxes, scores, _ = family("uniform", seed)
        args = (torch.from_numpy(features(seed)), torch.from_numpy(boxes_valid(seed, K)), boxes[0], scores[0])
        for g, w in zip(run(patched, *args), run(plain, *args)):
            assert_bytes_equal(g, w, f"{exporter} seed {seed}")


# ---- detect: the fused post-process ------------------------------------------------------------------

DET_A, DET_K = 48, 10  # anchors per image, max_det
DETECT_CASES = {
    # name: (detect keywords, score columns C (0: [B, A] scores), with idxs, with objectness)
    "single_thr": (dict(score_threshold=0.3), C, False, False),
    "single_topk_no_thr": (dict(pre_nms_top_k=17), C, False, False),
    "multi_thr_topk": (dict(multi_label=True, score_threshold=0.2, pre_nms_top_k=40), C, False, False),
    "agnostic_obj": (dict(class_agnostic=True, score_threshold=0.1), C, False, True),
    "multi_agnostic_no_thr": (dict(multi_label=True, class_agnostic=True), C, False, False),
    "cxcywh_thr_topk": (dict(fmt="cxcywh", score_threshold=0.25, pre_nms_top_k=1000), C, False, True),
    "xywh_thr_topk": (dict(fmt="xywh", score_threshold=0.3, pre_nms_top_k=7), C, False, False),
    "idxs_thr": (dict(score_threshold=0.2), 0, True, False),
    "idxs_no_thr_topk": (dict(pre_nms_top_k=9), 0, True, False),
    "one_class_topk": (dict(pre_nms_top_k=9, score_threshold=0.0), 0, False, False),
}


def detect_inputs(case, fam, seed):
    """Family ``fam``'s boxes and scores as ONNX Runtime assumes them: corners ordered (xyxy) or
    widths non-negative (xywh, cxcywh), and without a score threshold NaN scores as +inf (ORT's
    TopK and NonMaxSuppression have no order for NaN; with a threshold NaN fails it in both)."""
    kw, c, with_idxs, with_obj = DETECT_CASES[case]
    boxes, scores, idxs = family(fam, seed, B, c)
    if kw.get("score_threshold") is not None:
        rng = np.random.default_rng(seed)
        bs, ss, _ = zip(*(FAMILIES[fam](rng, N) for _ in range(B)))
        raw = torch.from_numpy(np.stack(ss)).float()
        scores = torch.where(raw.isnan(), raw, scores) if c == 0 else \
            torch.where(raw.isnan()[..., None], raw[..., None], scores)
    boxes, scores, idxs = boxes[:, :DET_A], scores[:, :DET_A], idxs[:, :DET_A]
    if kw.get("fmt", "xyxy") == "xyxy":
        boxes = ort_view(boxes, scores, 0.5)[0]
    else:
        boxes = torch.cat([boxes[..., :2], boxes[..., 2:].abs()], -1)
    args = [boxes, scores]
    if with_idxs:
        args.append(idxs)
    if with_obj:
        args.append(torch.from_numpy(np.random.default_rng(seed).uniform(0.5, 1, (B, DET_A))).float())
    return args


def detect_fn(case, thr=0.5):
    kw, _, with_idxs, with_obj = DETECT_CASES[case]

    def fn(boxes, scores, *rest):
        extra = dict(kw)
        if with_idxs:
            extra["idxs"] = rest[0]
        if with_obj:
            extra["objectness"] = rest[-1]
        return tuple(dk.detect(boxes, scores, thr, DET_K, **extra))

    return fn


_detect_sessions: dict = {}


def detect_session(case, exporter, tmp_path_factory, thr=0.5):
    key = (case, exporter, thr)
    if key not in _detect_sessions:
        path = tmp_path_factory.mktemp("onnx") / f"detect_{case}.onnx"
        _detect_sessions[key] = (export(detect_fn(case, thr), tuple(detect_inputs(case, "uniform", 0)),
                                        exporter, path), path)
    return _detect_sessions[key]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("case", DETECT_CASES)
def test_detect_in_onnxruntime(case, exporter, tmp_path_factory):
    """Byte-equal on every NMS input family (ties, IoU at the threshold, degenerate and non-finite
    boxes, many classes), IoU threshold 0.5 (a float32): all five outputs."""
    sess, path = detect_session(case, exporter, tmp_path_factory)
    ops = op_types(path)
    assert "NonMaxSuppression" in ops and not [t for t in ops if "detkernels" in t]
    if "topk" in case:
        assert "TopK" in ops
    fn = detect_fn(case)
    for fam in FAMILIES:
        for seed in SEEDS:
            args = detect_inputs(case, fam, seed)
            got, want = run(sess, *args), fn(*args)
            assert len(got) == len(want) == 5
            for g, w, name in zip(got, want, ("boxes", "scores", "classes", "indices", "counts")):
                assert_bytes_equal(torch.from_numpy(np.asarray(g)), w, f"{case} {exporter} {fam} {seed} {name}")


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_detect_iou_threshold_rounding(exporter, tmp_path_factory):
    """The NMS rule of test_nms_threshold_rounding_at_the_threshold, inside detect: IoU =
    fl(3 / 10) = float32(0.3) > 0.3 -- detkernels suppresses, ONNX Runtime keeps; with the
    threshold given as float32(0.3) both keep."""
    sess, _ = detect_session("single_thr", exporter, tmp_path_factory, thr=0.3)
    far = [[100.0 + 3 * k, 100.0, 101.0 + 3 * k, 101.0] for k in range(DET_A - 2)]
    boxes = torch.tensor([[0.0, 0.0, 5.0, 1.0], [2.0, 0.0, 10.0, 1.0]] + far)[None].expand(B, -1, -1)
    scores = torch.zeros(B, DET_A, C)
    scores[:, :2, 1] = torch.tensor([0.9, 0.8])
    got = run(sess, boxes.contiguous(), scores)
    assert got[3][0, :2].tolist() == [0, 1] and got[4].tolist() == [2, 2]
    assert dk.detect(boxes, scores, 0.3, DET_K, score_threshold=0.3).counts.tolist() == [1, 1]
    assert dk.detect(boxes, scores, float(np.float32(0.3)), DET_K, score_threshold=0.3).counts.tolist() == [2, 2]


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_detect_float64_ranks_in_float32(exporter, tmp_path):
    """float64 inputs: the outputs keep float64, but ranking and NMS run on float32 (the only type
    of NonMaxSuppression): two scores equal in float32 tie there, so the lower index comes first,
    where detkernels orders them by their float64 values."""
    fn = lambda b, s: tuple(dk.detect(b, s, 0.5, 4, score_threshold=0.1))
    boxes = torch.tensor([[[0.0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]]], dtype=torch.float64)
    scores = torch.tensor([[0.5, 0.5 + 1e-12, 0.25]], dtype=torch.float64)
    sess = export(fn, (boxes, scores), exporter, tmp_path / "d.onnx")
    got = run(sess, boxes, scores)
    assert got[1].dtype == np.float64 and got[3][0].tolist() == [0, 1, 2, -1]
    assert dk.detect(boxes, scores, 0.5, 4, score_threshold=0.1).indices[0].tolist() == [1, 0, 2, -1]
    assert_bytes_equal(torch.from_numpy(got[1][0, :2]), scores[0, :2])  # values as given, float64


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_detect_score_threshold_compares_as_float64(exporter, tmp_path_factory):
    """``score > 0.3`` is a float64 compare in detkernels: float32(0.3) = 0.30000001 passes, the
    float32 below it fails. The graph's ``Greater`` compares float32s, so the exported threshold is
    the float32 just below 0.3 (``_f32_above``), which splits them the same way."""
    sess, _ = detect_session("single_thr", exporter, tmp_path_factory)
    boxes = torch.tensor([[10.0 * k, 0, 10.0 * k + 4, 4] for k in range(DET_A)])[None].expand(B, -1, -1).contiguous()
    f = np.float32(0.3)
    scores = torch.zeros(B, DET_A, C)
    scores[:, 0, 0], scores[:, 1, 2] = float(f), float(np.nextafter(f, np.float32(0)))
    got = run(sess, boxes, scores)
    want = dk.detect(boxes, scores, 0.5, DET_K, score_threshold=0.3)
    assert want.indices[:, 0].tolist() == [0, 0] and want.counts.tolist() == [1, 1]
    for g, w in zip(got, want):
        assert_bytes_equal(torch.from_numpy(np.asarray(g)), w, exporter)


# ---- probiou (issue 17): elementwise operators ------------------------------------------------------

def _obb(seed, n, dtype):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    a = (torch.rand(n, 1, generator=g, dtype=torch.float64) - 0.5) * 7
    b = torch.cat([xy, wh, a], 1)
    b[:3] = b[3:6]  # identical pairs: probiou 1 - sqrt(eps)-ish
    b[6, 2:4] = 0  # a degenerate box (zero covariance)
    return b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_probiou_in_onnxruntime_within_one_ulp_of_one(exporter, dtype, tmp_path):
    """probiou exports as elementwise operators (reference/rotated.py's order); ONNX Runtime's
    Cos/Sin/Log/Exp are not libm's, so the bytes differ in a few percent of the pairs (up to tens
    of ulp of small results), but the result is 1 - sqrt(...): the difference stays within
    2**-24 (float32) / 2**-52 (float64) absolute (measured: exactly that on these boxes; pinned
    at twice it)."""
    a, b = _obb(0, 40, dtype), _obb(1, 9, dtype)
    path = tmp_path / "probiou.onnx"
    sess = export(lambda x, y: dk.probiou(x, y, 1e-7), (a, b), exporter, path)
    assert {"Cos", "Sin", "Log", "Exp", "Sqrt"} <= set(op_types(path))
    assert "detkernels" not in {n.domain for n in onnx.load(str(path)).graph.node}
    (got,) = run(sess, a, b)
    want = dk.probiou(a, b, 1e-7).numpy()
    assert got.dtype == want.dtype and got.shape == want.shape == (40, 9)
    assert not np.isnan(want).any()
    bound = 2.0 ** (-23 if dtype == torch.float32 else -51)
    assert np.abs(got.astype(np.float64) - want.astype(np.float64)).max() <= bound
    assert (got == want).mean() > 0.5  # most pairs byte-equal: the same formula, not an approximation


# ---- matrix_nms (issue 13): standard operators -------------------------------------------------------

def _matrix_inputs(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    n = 40
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    b = torch.cat([xy, xy + 3 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 20], 1)
    s = torch.rand(n, generator=g, dtype=torch.float64)
    s[5] = s[6]  # a tie: ascending index
    b[7] = b[8]  # IoU 1
    b[9, 2:] = b[9, :2]  # zero area
    b[10] = b[10, [2, 3, 0, 1]]  # inverted corners (negative area, taken as given)
    s[11] = float("inf")
    labels = torch.randint(0, 3, (n,), generator=g)
    return b.to(dtype), s.to(dtype), labels


MATRIX_CASES = {"all": {}, "filtered": {"score_threshold": 0.2, "max_output": 10, "pre_top_k": 30}}


@pytest.mark.parametrize("case", MATRIX_CASES)
@pytest.mark.parametrize("kernel", ["linear", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_matrix_nms_in_onnxruntime(exporter, dtype, kernel, case, tmp_path):
    """matrix_nms exports as standard operators (no custom node). Linear kernel: byte-equal (the
    same IEEE operations). Gaussian: ONNX Exp is not detkernels' dk_exp: measured byte-equal in
    float64 and a few ulp off in float32 on these inputs; pinned at the same indices and decayed
    scores within 4 ulp."""
    kw = {"kernel": kernel, "sigma": 1.5, **MATRIX_CASES[case]}
    b, s, labels = _matrix_inputs(0, dtype)
    path = tmp_path / "matrix_nms.onnx"
    sess = export(lambda x, y, z: dk.matrix_nms(x, y, z, **kw), (b, s, labels), exporter, path)
    assert "detkernels" not in {n.domain for n in onnx.load(str(path)).graph.node}
    for seed in range(3):
        b, s, labels = _matrix_inputs(seed, dtype)
        gi, gv = run(sess, b, s, labels)
        wi, wv = dk.matrix_nms(b, s, labels, **kw)
        assert wi.numel() > 0
        assert_bytes_equal(gi, wi, "indices")
        if kernel == "linear":
            assert_bytes_equal(gv, wv, "scores")
        else:
            wv = wv.numpy()
            assert gv.dtype == wv.dtype
            with np.errstate(invalid="ignore"):  # inf - inf where both are the inf score
                assert ((gv == wv) | (np.abs(gv - wv) <= 4 * np.spacing(np.abs(wv)))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_nms_probiou_fast_in_onnxruntime(exporter, dtype, tmp_path):
    """nms_probiou(fast=True) exports as standard operators (probiou's matrix, a column
    reduction); the kept indices equal detkernels' where no ProbIoU lies within probiou's ONNX
    bound of the threshold (checked here, so the equality is meaningful)."""
    boxes, scores = _obb(0, 40, dtype), torch.rand(40, generator=torch.Generator().manual_seed(3)).to(dtype)
    idxs = torch.arange(40) % 2
    thr = 0.05
    path = tmp_path / "nms_probiou.onnx"
    sess = export(lambda b, s, c: dk.nms_probiou(b, s, thr, c, fast=True), (boxes, scores, idxs), exporter, path)
    assert "detkernels" not in {n.domain for n in onnx.load(str(path)).graph.node}
    p = dk.probiou(boxes, boxes).double().numpy()
    assert (np.abs(p - thr) > 2.0 ** -20).all()
    (got,) = run(sess, boxes, scores, idxs)
    want = dk.nms_probiou(boxes, scores, thr, idxs, fast=True)
    assert 0 < want.numel() < 40
    assert_bytes_equal(got, want, "kept")


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("mode", ["diou", "soft", "matrix"])
def test_detect_nms_modes_refuse_to_export(mode, exporter, tmp_path):
    """DIoU-, Soft- and Matrix NMS have no standard ONNX operator: exporting detect with them
    raises (naming the mode) instead of exporting greedy NonMaxSuppression."""
    args = tuple(detect_inputs("single_thr", "uniform", 0))
    fn = lambda b, s: tuple(dk.detect(b, s, 0.5, DET_K, score_threshold=0.3, nms=mode))  # noqa: E731
    with pytest.raises(Exception, match=rf"detect\(nms='{mode}'\) has no ONNX export") as e:
        export(fn, args, exporter, tmp_path / "m.onnx")
    err = e.value
    while not isinstance(err, NotImplementedError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, NotImplementedError)
