"""detkernels.ultralytics.non_max_suppression against ultralytics' own function (ultralytics 8.4,
an optional test dependency): the same rows, bit for bit, in the same order -- on real YOLO head
outputs (yolov8n / yolov8n-seg built from their yaml with random weights, no download) and on
hand-made predictions (tied scores, IoU exactly at the threshold, scores exactly at conf_thres,
NaN, the max_nms cap on ties), plus the pinned case where ultralytics' class-offset trick changes
the kept set against exact per-class NMS (detkernels.detect). OBB (rotated=True): a yolov8n-obb
head (random weights) and hand-made rotated boxes with tied scores (ultralytics' unstable fast_nms
sort, reproduced), and the pinned pair where ultralytics' and detkernels' ProbIoU (SLEEF against
libm, a few ulp) straddle iou_thres -- the one place the rows can differ."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")  # ultralytics then uses torchvision.ops.nms, as the drop-in assumes
pytest.importorskip("ultralytics")

import torchvision  # noqa: E402,F401  (in sys.modules: ultralytics' NMS path is torchvision's)
from ultralytics.utils import nms as ul_nms  # noqa: E402

import detkernels  # noqa: E402

dk_nms = detkernels.ultralytics.non_max_suppression
UL = ul_nms.non_max_suppression  # ultralytics' own (bound at import, before any patch)


def same(a, b) -> None:
    """Two ultralytics results (a list of tensors, or (rows, indices) with return_idxs) equal:
    lengths, shapes, dtypes and bytes."""
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b) == 2
        same(a[0], b[0])
        same(a[1], b[1])
        return
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert (u.shape, u.dtype) == (v.shape, v.dtype), (i, u.shape, v.shape, u.dtype, v.dtype)
        assert torch.equal(u, v), (i, u, v)


def both(pred, **kw):
    a, b = UL(pred, **kw), dk_nms(pred, **kw)
    same(a, b)
    return a


# ---- real head outputs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def heads():
    """Eval-mode outputs of yolov8n and yolov8n-seg (random weights; class biases spread so that
    scores range over [0, 1]) on 2 random 256x320 images: ([2, 84, 1680], [2, 116, 1680])."""
    from ultralytics.nn.tasks import DetectionModel, SegmentationModel

    torch.manual_seed(0)
    out = []
    for cls, yaml in ((DetectionModel, "yolov8n.yaml"), (SegmentationModel, "yolov8n-seg.yaml")):
        m = cls(yaml, nc=80, verbose=False).eval()
        for seq in m.model[-1].cv3:  # the class branch's last conv: biases as a trained head's spread
            torch.nn.init.normal_(seq[-1].bias, -3.0, 1.0)
        with torch.no_grad():
            y = m(torch.rand(2, 3, 256, 320))
        out.append(y)
    det, seg = out
    assert isinstance(det, tuple) and det[0].shape == (2, 84, 1680)
    assert seg[0][0].shape == (2, 116, 1680)  # (pred, protos), then the loss dict
    return det, seg[0][0]


KWARGS = [
    {},
    {"conf_thres": 0.001, "iou_thres": 0.7},
    {"conf_thres": 0.05, "iou_thres": 0.7, "max_det": 50},
    {"conf_thres": 0.01, "multi_label": True, "max_det": 1000},
    {"conf_thres": 0.001, "agnostic": True},
    {"conf_thres": 0.001, "max_nms": 100},                      # the cap: ultralytics' own sort
    {"conf_thres": 0.0, "multi_label": True, "max_nms": 1000},  # every pair above 0, capped
    {"conf_thres": 0.1, "return_idxs": True},
    {"conf_thres": 0.9, "return_idxs": True},                   # empty images: ultralytics' defaults
    {"conf_thres": 0.01, "max_det": 0},
]


@pytest.mark.parametrize("kw", KWARGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_detection_model(heads, kw):
    det, _ = heads
    out = both(det, **kw)  # the (pred, feats) tuple, as a model returns it
    if kw.get("conf_thres", 0.25) < 0.5 and kw.get("max_det", 1) > 0:
        assert sum(x.shape[0] for x in (out[0] if isinstance(out, tuple) else out)) > 0


@pytest.mark.parametrize("kw", [{"conf_thres": 0.001}, {"conf_thres": 0.01, "multi_label": True},
                                {"conf_thres": 0.001, "agnostic": True, "return_idxs": True}])
def test_segmentation_model_mask_columns(heads, kw):
    _, seg = heads
    out = both(seg, nc=80, **kw)
    rows = out[0] if isinstance(out, tuple) else out
    assert rows[0].shape[1] == 6 + 32 and rows[0].shape[0] > 0


def test_classes_filter(heads):
    det, _ = heads
    present = UL(det, conf_thres=0.001)[0][:, 5].long().unique().tolist()
    assert len(present) >= 2
    for kw in ({}, {"multi_label": True}):
        out = both(det, conf_thres=0.001, classes=present[:2] + [79], **kw)
        assert out[0].shape[0] > 0


def test_float64(heads):
    det, _ = heads
    both(det[0].double(), conf_thres=0.001)
    both(det[0].double(), conf_thres=0.01, multi_label=True)


def test_end2end_branch():
    torch.manual_seed(1)
    pred = torch.rand(2, 30, 6)
    pred[..., 5] = torch.randint(0, 4, (2, 30)).float()
    both(pred, conf_thres=0.3, max_det=10)
    both(pred, conf_thres=0.3, classes=[1, 2], return_idxs=True)
    both(torch.rand(1, 20, 9), conf_thres=0.5, end2end=True)


# ---- OBB (rotated=True): ProbIoU Fast-NMS ---------------------------------------------------------

OBB_NC = 15


@pytest.fixture(scope="module")
def obb_head():
    """Eval-mode output of yolov8n-obb (random weights, nc=15; class biases spread as above, angle
    biases spread over the head's [-pi/4, 3pi/4] range) on 2 random 256x320 images: [2, 20, 1680]
    (xywh, 15 class scores, angle in radians). The random backbone makes the scores nearly constant
    per level (almost every score tied: ultralytics' unstable argsort decides their order), so a
    second copy has the class scores replaced by distinct random ones (any sort agrees)."""
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(0)
    m = OBBModel("yolov8n-obb.yaml", nc=OBB_NC, verbose=False).eval()
    head = m.model[-1]
    for seq in head.cv3:
        torch.nn.init.normal_(seq[-1].bias, -3.0, 1.0)
    for seq in head.cv4:  # the angle branch's last conv
        torch.nn.init.normal_(seq[-1].bias, 0.0, 2.0)
        torch.nn.init.normal_(seq[-1].weight, 0.0, 1.0)
    with torch.no_grad():
        y = m(torch.rand(2, 3, 256, 320))
    assert isinstance(y, tuple) and y[0].shape == (2, 4 + OBB_NC + 1, 1680)
    distinct = y[0].clone()
    g = torch.Generator().manual_seed(1)
    distinct[:, 4:4 + OBB_NC] = (torch.randn(2, OBB_NC, 1680, generator=g) * 2 - 4).sigmoid()
    return y, distinct


OBB_KWARGS = [
    {"conf_thres": 0.25, "iou_thres": 0.7},                      # the predictor's defaults
    {"conf_thres": 0.1},
    {"conf_thres": 0.1, "iou_thres": 0.3, "max_det": 20},
    {"conf_thres": 0.2, "iou_thres": 0.7, "multi_label": True},  # the validator's call
    {"conf_thres": 0.1, "agnostic": True, "return_idxs": True},
    {"conf_thres": 0.05, "max_nms": 500, "return_idxs": True},   # the cap: ultralytics' own sort
    {"conf_thres": 0.1, "multi_label": True, "max_nms": 1000},
    {"conf_thres": 0.1, "classes": [0, 3, 7]},
    {"conf_thres": 0.1, "classes": [0, 3, 7], "multi_label": True, "return_idxs": True},
    {"conf_thres": 0.9, "return_idxs": True},                    # empty images: ultralytics' defaults
    {"conf_thres": 0.1, "max_det": 0},
]


def obb_both(pred, **kw):
    # max_time_img: ultralytics' N x N ProbIoU matrices are slow; its time limit must not cut it
    # short (the drop-in ignores the argument).
    return both(pred, nc=OBB_NC, rotated=True, max_time_img=600.0, **kw)


@pytest.mark.parametrize("kw", OBB_KWARGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("scores", ["model", "distinct"])
def test_obb_model(obb_head, kw, scores):
    y, distinct = obb_head
    out = obb_both(y if scores == "model" else distinct, **kw)
    rows = out[0] if isinstance(out, tuple) else out
    if kw["conf_thres"] < 0.5 and kw.get("max_det", 1) > 0:
        assert all(r.shape[0] > 0 and r.shape[1] == 7 for r in rows)


def obb_pred_of(boxes_xywhr, cls_scores, dtype=np.float32) -> "torch.Tensor":
    """[1, 4 + C + 1, A]: xywh, class scores, angle (radians) last, as the OBB head lays them out."""
    b = np.asarray(boxes_xywhr, np.float64)
    s = np.asarray(cls_scores, np.float64)
    return torch.as_tensor(np.concatenate([b[:, :4], s, b[:, 4:]], 1).astype(dtype)).T[None].contiguous()


def random_obbs(rng, A, C, levels=(0.5, 0.75)):
    """A clustered rotated boxes (heavy overlaps) with one class each and tied scores."""
    boxes = np.concatenate([rng.uniform(0, 120, (A, 2)), rng.uniform(8, 40, (A, 2)),
                            rng.uniform(-np.pi / 4, 3 * np.pi / 4, (A, 1))], 1)
    scores = np.zeros((A, C))
    scores[np.arange(A), rng.integers(0, C, A)] = rng.choice(levels, A)
    return boxes, scores


def test_obb_tied_scores():
    # Hundreds of tied scores (torch's argsort is unstable from ~100 elements up): ultralytics'
    # fast_nms order among ties is its argsort's; the drop-in runs that sort on the same scores in
    # the same (candidate) order, so the same boxes survive in the same order.
    rng = np.random.default_rng(7)
    boxes, scores = random_obbs(rng, 600, 3)
    pred = obb_pred_of(boxes, scores)
    for kw in ({}, {"agnostic": True}, {"multi_label": True, "return_idxs": True}, {"classes": [0, 2]},
               {"max_nms": 250, "return_idxs": True}, {"max_nms": 250, "multi_label": True}):
        for iou in (0.2, 0.5, 0.7):
            out = both(pred, conf_thres=0.25, iou_thres=iou, nc=3, rotated=True, **kw)
            rows = out[0] if isinstance(out, tuple) else out
            assert 0 < rows[0].shape[0] < 600
    # Stage 1's stable tie order (nms_probiou alone) keeps another set: the sort matters here.
    p = pred[0].T
    boxes_t = torch.cat([p[:, :2] + p[:, 4:7].argmax(1, keepdim=True).float() * 7680, p[:, 2:4], p[:, -1:]], 1)
    stable = detkernels.nms_probiou(boxes_t, p[:, 4:7].amax(1), 0.5, fast=True)
    assert not torch.equal(stable, UL(pred, conf_thres=0.25, iou_thres=0.5, nc=3, rotated=True,
                                      return_idxs=True)[1][0])


def test_obb_batch_float64_nan():
    rng = np.random.default_rng(8)
    imgs = []
    for k in range(3):
        boxes, scores = random_obbs(rng, 300, 4, levels=(0.3, 0.6, 0.9))
        scores[:5, 1] = np.nan  # NaN rows: dropped (ultralytics' amax filter), with multi_label too
        imgs.append(obb_pred_of(boxes, scores))
    imgs[1][..., 4:8, :] = 0.0  # an empty image
    pred = torch.cat(imgs)
    for p in (pred, pred.double()):
        for kw in ({}, {"multi_label": True}, {"agnostic": True, "max_det": 7, "return_idxs": True}):
            out = both(p, conf_thres=0.25, iou_thres=0.45, nc=4, rotated=True, **kw)
            rows = out[0] if isinstance(out, tuple) else out
            assert rows[1].shape[0] == 0 and rows[0].dtype == p.dtype
    keep = both(pred, conf_thres=0.25, nc=4, rotated=True, multi_label=True, return_idxs=True)[1]
    assert not any(i < 5 for k in keep for i in k.tolist())


def test_obb_probiou_ulp_pinned():
    """ultralytics' batch_probiou runs torch's exp/log/cos/sin (SLEEF), detkernels' ProbIoU libm's:
    they can differ by a few ulp. This pair (found by search) has detkernels' ProbIoU two float32 ulp
    above ultralytics'; with iou_thres equal to ultralytics' value ultralytics keeps the second box
    (u > thr is false) and the drop-in suppresses it (d > thr). Each follows its own ProbIoU against
    the same float32 threshold, so results can differ only where a ProbIoU is within a few ulp of
    iou_thres."""
    from ultralytics.utils.metrics import batch_probiou

    pair = [[30.769254684448242, 19.18387794494629, 12.892659187316895, 10.842328071594238, 0.5871503353118896],
            [29.871183395385742, 12.530688285827637, 9.392228126525879, 7.804869174957275, 0.48433640599250793]]
    b = torch.tensor(pair, dtype=torch.float32)
    u, d = float(batch_probiou(b, b)[0, 1]), float(detkernels.probiou(b, b)[0, 1])
    pred = obb_pred_of(pair, [[0.9], [0.8]])
    for thr in (u, d):
        kw = {"conf_thres": 0.25, "iou_thres": thr, "rotated": True, "nc": 1}
        assert UL(pred, **kw)[0].shape[0] == (2 if u <= thr else 1)
        assert dk_nms(pred, **kw)[0].shape[0] == (2 if d <= thr else 1)
    if u == d:
        pytest.skip("this torch build's ProbIoU agrees with detkernels' on the pinned pair")
    assert abs(u - d) <= 6e-8 and d > u  # two float32 ulp (2**-25 each near 0.28)
    kw = {"conf_thres": 0.25, "iou_thres": u, "rotated": True, "nc": 1}
    assert (UL(pred, **kw)[0].shape[0], dk_nms(pred, **kw)[0].shape[0]) == (2, 1)


def test_obb_iou_thres_compared_in_float32():
    # ultralytics compares its float32 ProbIoU matrix with iou_thres rounded to float32: a
    # threshold just below a pair's ProbIoU v that rounds up to v keeps the pair (v > v is false);
    # compared in float64 it would suppress. The drop-in passes the rounded threshold.
    from ultralytics.utils.metrics import batch_probiou

    pair = [[34.277099609375, 32.52296447753906, 20.84657859802246, 19.96751594543457, 0.5],
            [32.560081481933594, 40.067195892333984, 23.153858184814453, 24.31163787841797, 0.25]]
    b = torch.tensor(pair, dtype=torch.float32)
    v = batch_probiou(b, b)[0, 1]
    assert float(detkernels.probiou(b, b)[0, 1]) == float(v) and 0.1 < float(v) < 0.9
    below = float(v) - float(np.spacing(np.float32(v))) / 4  # rounds to v in float32
    assert below < float(v) and float(torch.tensor(below, dtype=torch.float32)) == float(v)
    pred = obb_pred_of(pair, [[0.9], [0.8]])
    for thr, n in ((below, 2), (float(np.nextafter(np.float32(v), np.float32(0))), 1)):
        out = both(pred, conf_thres=0.25, iou_thres=thr, nc=1, rotated=True)
        assert out[0].shape[0] == n
    both(pred.double(), conf_thres=0.25, iou_thres=below, nc=1, rotated=True)  # float64: no rounding


# ---- hand-made predictions -----------------------------------------------------------------------

def pred_of(boxes_cxcywh, cls_scores) -> "torch.Tensor":
    """[1, 4 + C, A] from [A, 4] cxcywh boxes and [A, C] class scores (float32)."""
    b = torch.as_tensor(np.asarray(boxes_cxcywh, np.float32))
    s = torch.as_tensor(np.asarray(cls_scores, np.float32))
    return torch.cat([b, s], 1).T[None].contiguous()


def test_ties_and_iou_at_threshold():
    # Boxes with IoU exactly 0.5 (kept: ultralytics, like detect, suppresses IoU > threshold), and
    # tied scores everywhere: the tie order decides which of two overlapping boxes survives.
    boxes = [[2, 0.5, 4, 1], [1, 0.5, 2, 1], [1, 0.5, 2, 1], [3, 0.5, 2, 1], [2.5, 0.5, 3, 1],
             [2, 0.5, 4, 1], [10, 10, 2, 2], [10.5, 10, 2, 2]]
    scores = np.zeros((8, 3), np.float32)
    scores[:, 0] = 0.5
    scores[5, 1] = scores[5, 0]        # tied classes: the lowest wins (torch.max's index)
    scores[6:, 2] = 0.75
    scores[7, 0] = 0.75
    pred = pred_of(boxes, scores)
    for iou in (0.5, 0.45, 0.7):
        for kw in ({}, {"agnostic": True}, {"multi_label": True}, {"return_idxs": True}):
            out = both(pred, conf_thres=0.25, iou_thres=iou, **kw)
            assert out[0].shape[0] > 0 if not isinstance(out, tuple) else out[0][0].shape[0] > 0
    # IoU(box 0, box 1) is exactly 0.5: at iou_thres=0.5 box 1 (later index, same score) stays.
    kept = UL(pred, conf_thres=0.25, iou_thres=0.5, return_idxs=True)[1][0].tolist()
    assert 0 in kept and 1 in kept


def test_score_exactly_at_conf_thres():
    # conf > conf_thres in float32: a score equal to float32(0.45) fails, the next float passes,
    # and a float64 threshold just below float32(0.45) rounds to it (compared in float32).
    f = np.float32(0.45)
    up = np.nextafter(f, np.float32(1))
    thr_below = (float(f) + float(np.nextafter(f, np.float32(0)))) / 2  # rounds to f in float32
    boxes = [[5 * i, 5, 2, 2] for i in range(4)]
    scores = np.array([[f, 0], [up, 0], [0, f], [0, up]], np.float32)
    for thr in (0.45, thr_below, float(f)):
        out = both(pred_of(boxes, scores), conf_thres=thr, iou_thres=0.5, return_idxs=True)
        assert out[1][0].tolist() == [1, 3]
    both(pred_of(boxes, scores), conf_thres=thr_below, multi_label=True)


def test_nan_scores():
    # An anchor whose class scores hold a NaN is dropped (ultralytics' NaN-propagating amax
    # filter), also with multi_label where its other classes pass the threshold.
    boxes = [[5 * i, 5, 2, 2] for i in range(4)]
    scores = np.array([[np.nan, 0.9, 0.8], [0.3, 0.9, 0.8], [0.9, np.nan, 0.1], [0.2, 0.3, 0.6]], np.float32)
    pred = pred_of(boxes, scores)
    for kw in ({}, {"multi_label": True}, {"multi_label": True, "classes": [1, 2]}, {"classes": [1]}):
        out = both(pred, conf_thres=0.25, return_idxs=True, **kw)
        assert 0 not in out[1][0].tolist() and 2 not in out[1][0].tolist()


def test_max_nms_cap_on_tied_scores():
    # More candidates than max_nms, all scores tied: ultralytics keeps argsort(descending=True)
    # [:max_nms], an unstable sort -- the drop-in runs that same sort, so the same boxes survive.
    rng = np.random.default_rng(3)
    A = 3000
    boxes = np.concatenate([rng.uniform(0, 400, (A, 2)), rng.uniform(4, 40, (A, 2))], 1)
    scores = np.zeros((A, 4), np.float32)
    scores[np.arange(A), rng.integers(0, 4, A)] = rng.choice(np.float32([0.5, 0.75]), A)
    pred = pred_of(boxes, scores)
    both(pred, conf_thres=0.25, max_nms=500, return_idxs=True)
    both(pred, conf_thres=0.25, max_nms=500, multi_label=True)
    both(torch.cat([pred, pred.flip(2)]), conf_thres=0.25, max_nms=1000, max_det=50)


def test_max_nms_cap_on_distinct_scores_stays_fused(monkeypatch):
    # Above max_nms with distinct scores any sort agrees: no per-image torch path (it would raise).
    from detkernels._torch import ultralytics as mod

    def no_loop(*a, **k):
        raise AssertionError("per-image path taken")

    rng = np.random.default_rng(4)
    A = 2000
    boxes = np.concatenate([rng.uniform(0, 300, (A, 2)), rng.uniform(4, 40, (A, 2))], 1)
    scores = rng.permutation(np.linspace(0.3, 0.9, A * 3, dtype=np.float32)).reshape(A, 3)  # distinct
    pred = torch.cat([pred_of(boxes, scores), pred_of(boxes[::-1].copy(), scores)])
    want = [UL(pred, conf_thres=0.25, max_nms=300, multi_label=m, return_idxs=True) for m in (False, True)]
    monkeypatch.setattr(mod, "_torch_cap", no_loop)
    for m, w in zip((False, True), want):
        same(w, dk_nms(pred, conf_thres=0.25, max_nms=300, multi_label=m, return_idxs=True))
    with pytest.raises(AssertionError, match="per-image path"):  # the tied case does take it
        dk_nms(pred_of(boxes, np.full((A, 3), 0.5, np.float32)), conf_thres=0.25, max_nms=300)


def test_class_offset_rounding_pinned():
    """ultralytics adds ``class * max_wh`` to the coordinates before one NMS: at class 79 a
    float32 coordinate near 606 720 has a 1/16 px step, so IoUs round differently from exact
    per-class NMS. Two pairs of class-79 boxes (found by search) where the offset flips the
    decision at iou_thres=0.45: the drop-in follows ultralytics; detkernels.detect (exact, no
    offset) keeps the other set. With max_wh=0 the offset vanishes and both agree."""
    pairs = [  # (cxcywh pair, boxes ultralytics keeps, boxes exact per-class NMS keeps)
        ([[57.46097183227539, 47.727691650390625, 91.77489471435547, 87.51652526855469],
          [82.683837890625, 60.341575622558594, 91.77489471435547, 87.51652526855469]], 1, 2),
        ([[531.2852172851562, 151.0053253173828, 76.5851821899414, 15.75079345703125],
          [555.8013305664062, 152.36123657226562, 76.5851821899414, 15.75079345703125]], 2, 1),
    ]
    for boxes, n_ul, n_exact in pairs:
        scores = np.zeros((2, 80), np.float32)
        scores[:, 79] = [0.9, 0.8]
        pred = pred_of(boxes, scores)
        out = both(pred, conf_thres=0.25, iou_thres=0.45)
        assert out[0].shape[0] == n_ul
        p = pred.transpose(1, 2)
        r = detkernels.detect(p[..., :4].contiguous(), p[..., 4:].contiguous(), 0.45, 300,
                              score_threshold=0.25, fmt="cxcywh")
        assert int(r.counts[0]) == n_exact != n_ul
        no_offset = both(pred, conf_thres=0.25, iou_thres=0.45, max_wh=0)
        assert no_offset[0].shape[0] == n_exact


def test_many_images_in_one_call():
    rng = np.random.default_rng(5)
    B, A, C = 5, 400, 6
    pred = torch.empty(B, 4 + C, A)
    pred[:, :2] = torch.from_numpy(rng.uniform(0, 200, (B, 2, A)).astype(np.float32))
    pred[:, 2:4] = torch.from_numpy(rng.uniform(5, 60, (B, 2, A)).astype(np.float32))
    pred[:, 4:] = torch.from_numpy(np.round(rng.uniform(0, 1, (B, C, A)), 1).astype(np.float32))  # many ties
    pred[2, 4:] = 0.0  # an empty image
    for kw in ({}, {"multi_label": True}, {"agnostic": True, "max_det": 7}, {"return_idxs": True}):
        both(pred, conf_thres=0.3, iou_thres=0.5, **kw)


# ---- arguments -----------------------------------------------------------------------------------

def test_unsupported_and_invalid_arguments(heads):
    det, _ = heads
    with pytest.raises(NotImplementedError, match="float16"):
        dk_nms(det[0].half())
    with pytest.raises(NotImplementedError, match="float16"):
        dk_nms(det[0].half(), rotated=True)
    with pytest.raises(ValueError, match="conf_thres"):
        dk_nms(det, conf_thres=1.5)
    with pytest.raises(ValueError, match="iou_thres"):
        dk_nms(det, iou_thres=-0.1)


def test_signature_matches_ultralytics():
    import inspect

    a, b = inspect.signature(UL), inspect.signature(dk_nms)
    assert [(p.name, p.default) for p in a.parameters.values()] == \
        [(p.name, p.default) for p in b.parameters.values()]


def test_patch_ultralytics(heads):
    det, _ = heads
    with detkernels.ultralytics.patch_ultralytics():
        patched = ul_nms.non_max_suppression
        assert patched is not UL and patched.__wrapped__ is dk_nms
        same(patched(det, conf_thres=0.01), UL(det, conf_thres=0.01))
        # Unsupported calls go to ultralytics' own function.
        same(patched(det[0].half(), conf_thres=0.01), UL(det[0].half(), conf_thres=0.01))
    assert ul_nms.non_max_suppression is UL
    p = detkernels.ultralytics.patch_ultralytics()
    assert ul_nms.non_max_suppression is not UL
    p.restore()
    assert ul_nms.non_max_suppression is UL


def test_patch_ultralytics_obb_predictor_and_validator(obb_head, monkeypatch):
    """ultralytics' OBBPredictor / OBBValidator .postprocess (rotated=True) under the patch: the
    drop-in runs (not the fallback) and the Results' obb rows / the validator's dicts are
    ultralytics' own."""
    import types

    from ultralytics.models.yolo.obb import OBBPredictor

    from detkernels._torch import ultralytics as mod

    distinct = obb_head[1][..., :400].contiguous()  # few candidates: its 2.1 s time limit stays far
    pr = OBBPredictor(overrides={"conf": 0.25, "iou": 0.7, "verbose": False})
    pr.model = types.SimpleNamespace(names={i: str(i) for i in range(OBB_NC)}, end2end=False)
    pr.batch = (["a.jpg", "b.jpg"],)
    img, orig = torch.zeros(2, 3, 256, 320), [np.zeros((256, 320, 3), np.uint8)] * 2
    want = pr.postprocess(distinct.clone(), img, orig)
    calls = []

    def counted(*a, **k):
        calls.append(k.get("rotated"))
        return dk_nms(*a, **k)

    monkeypatch.setattr(mod, "non_max_suppression", counted)
    with mod.patch_ultralytics():
        got = pr.postprocess(distinct.clone(), img, orig)
        # Unsupported rotated calls (half precision) still go to ultralytics' own function.
        half = distinct.half()
        same(ul_nms.non_max_suppression(half, 0.25, 0.7, nc=OBB_NC, rotated=True),
             UL(half, 0.25, 0.7, nc=OBB_NC, rotated=True))
    assert calls == [True, True]
    assert len(got) == len(want) == 2
    for a, b in zip(want, got):
        assert a.obb.data.shape[0] > 0 and torch.equal(a.obb.data, b.obb.data)

    # OBBValidator.postprocess: multi_label=True, rotated=True, the angle appended to the boxes.
    from ultralytics.models.yolo.obb import OBBValidator

    val = OBBValidator(args={"conf": 0.2, "iou": 0.7, "task": "obb", "verbose": False})
    val.nc, val.end2end = OBB_NC, False
    want = val.postprocess(distinct.clone())
    with mod.patch_ultralytics():
        got = val.postprocess(distinct.clone())
    assert len(calls) == 3 and len(got) == len(want) == 2
    for a, b in zip(want, got):
        assert a.keys() == b.keys() and a["bboxes"].shape[0] > 0 and a["bboxes"].shape[1] == 5
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_devices_without_a_detect_backend(heads, monkeypatch):
    """Where detect serves no backend (CUDA today) the drop-in raises Unsupported and the patch
    hands the call to ultralytics (simulated here: no GPU on the test host)."""
    det, _ = heads
    from detkernels._torch import ultralytics as mod

    obb = obb_pred_of(*random_obbs(np.random.default_rng(9), 50, 2))
    monkeypatch.setattr(mod, "_served", lambda t, ops=("detect",): False)
    with pytest.raises(NotImplementedError, match="no backend"):
        dk_nms(det)
    with pytest.raises(NotImplementedError, match="nms_probiou has no backend"):
        dk_nms(obb, nc=2, rotated=True)
    with mod.patch_ultralytics():
        same(ul_nms.non_max_suppression(det, conf_thres=0.01), UL(det, conf_thres=0.01))
        same(ul_nms.non_max_suppression(obb, nc=2, rotated=True), UL(obb, nc=2, rotated=True))
    assert mod._served(det[0]) is False
    monkeypatch.undo()
    assert mod._served(det[0]) is True and mod._served(obb, ("detect", "nms_probiou")) is True
