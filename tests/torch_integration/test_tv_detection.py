"""torchvision RetinaNet / FCOS ``postprocess_detections`` through detkernels.detect
(detkernels/_torch/tv_detection.py) against torchvision's own, bit for bit: on the head outputs of
retinanet_resnet50_fpn and fcos_resnet50_fpn (random weights, no download; class biases spread so
that scores pass the threshold), with both batched_nms paths (coordinate trick up to 1 000 boxes,
per-class above), tied scores (torch.topk's tie order), and the whole model under the patch."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import detkernels  # noqa: E402

T = detkernels.tv_detection


def same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype and x[key].shape == y[key].shape, key
            assert torch.equal(x[key], y[key]), key


@pytest.fixture(scope="module", params=["retinanet", "fcos"])
def captured(request):
    """(model, images, the arguments its forward passed to postprocess_detections)."""
    from torchvision.models import detection as D

    torch.manual_seed(0)
    build = D.retinanet_resnet50_fpn if request.param == "retinanet" else D.fcos_resnet50_fpn
    model = build(weights=None, weights_backbone=None, num_classes=12, min_size=160, max_size=200).eval()
    torch.nn.init.normal_(model.head.classification_head.cls_logits.bias, -1.5, 1.0)
    images = [torch.rand(3, 160, 200), torch.rand(3, 150, 190)]
    seen = []
    original = type(model).postprocess_detections

    def spy(self, *args):
        seen.append(args)
        return original(self, *args)

    type(model).postprocess_detections = spy
    try:
        with torch.no_grad():
            model(images)
    finally:
        type(model).postprocess_detections = original
    return request.param, model, images, seen[0]


def fused(kind):
    return T.retinanet_postprocess_detections if kind == "retinanet" else T.fcos_postprocess_detections


@pytest.mark.parametrize("score_thresh, topk", [(0.05, 1000), (0.3, 1000), (0.05, 50), (0.99, 1000)])
def test_postprocess_equals_torchvision(captured, score_thresh, topk):
    kind, model, _, args = captured
    model.score_thresh, model.topk_candidates = score_thresh, topk
    try:
        want = type(model).postprocess_detections(model, *args)
        got = fused(kind)(model, *args)
    finally:
        model.score_thresh, model.topk_candidates = 0.05, 1000
    same(got, want)
    if score_thresh == 0.05 and topk == 1000:
        assert all(d["boxes"].shape[0] > 0 for d in want)


def test_both_batched_nms_paths_and_ties(captured):
    """Quantised logits: many tied scores (the (image, level)s with a tie take torch.topk), and
    with 1 000+ boxes per image torchvision's per-class batched_nms path."""
    kind, model, _, (head, anchors, shapes) = captured
    q = {k: [torch.round(t * 4) / 4 for t in v] for k, v in head.items()}
    for thr in (0.05, 0.5):
        model.score_thresh = thr
        try:
            same(fused(kind)(model, q, anchors, shapes), type(model).postprocess_detections(model, q, anchors, shapes))
        finally:
            model.score_thresh = 0.05


def test_batched_nms_like_torchvision_both_paths():
    g = torch.Generator().manual_seed(1)
    for n in (0, 7, 1000, 1001, 3000):
        xy = torch.rand(n, 2, generator=g) * 200
        boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g) * 60 + 1], 1)
        scores = torch.round(torch.rand(n, generator=g) * 20) / 20  # ties
        idxs = torch.randint(0, 5, (n,), generator=g)
        assert torch.equal(T.batched_nms_like_torchvision(boxes, scores, idxs, 0.5),
                           tv.ops.batched_nms(boxes, scores, idxs, 0.5))


def test_patched_model_is_bit_identical(captured):
    kind, model, images, _ = captured
    with torch.no_grad():
        want = model(images)
        with T.patch_detection_postprocess():
            assert type(model).postprocess_detections is fused(kind)
            got = model(images)
    assert type(model).postprocess_detections is not fused(kind)
    same(got, want)


def test_untied_levels_take_the_fused_selection(captured, monkeypatch):
    """(image, level)s whose chosen scores are distinct use detect's selection; tied ones (float32
    sigmoids do tie: a few levels of the random RetinaNet head) fall back to torch.topk."""
    kind, model, _, args = captured
    calls = []
    distinct = T._distinct
    monkeypatch.setattr(T, "_distinct", lambda s: calls.append(distinct(s)) or calls[-1])
    same(fused(kind)(model, *args), type(model).postprocess_detections(model, *args))
    assert len(calls) == 2 * 5 and sum(calls) >= 5


def test_devices_without_a_detect_backend_use_torchvision(captured, monkeypatch):
    kind, model, images, args = captured
    monkeypatch.setattr(T, "_served", lambda head: False)
    sentinel = [{"boxes": torch.zeros(0, 4)}]
    monkeypatch.setattr(type(model), "postprocess_detections", lambda self, *a: sentinel)
    assert fused(kind)(model, *args) is sentinel  # torchvision's method (here a stand-in) is called
    monkeypatch.undo()
    assert T._served(args[0]) is True
