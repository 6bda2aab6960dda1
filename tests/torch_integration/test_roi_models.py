"""patch_torchvision with the RoI ops: torchvision Faster R-CNN / Mask R-CNN (random weights, no
downloads) run end to end through detkernels and give the detections torchvision gives."""
from __future__ import annotations

import pytest

from _helpers import assert_bytes_equal

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import detkernels  # noqa: E402
from detkernels import _dispatch  # noqa: E402

pytestmark = pytest.mark.torchvision


def _small(builder, **kw):
    torch.manual_seed(0)
    # Few classes and no score threshold: random heads still produce detections to compare.
    return builder(weights=None, weights_backbone=None, num_classes=3, min_size=128, max_size=128,
                   rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=40, box_score_thresh=0.0,
                   box_detections_per_img=15, **kw).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn"])
def test_detection_model_same_detections(name, monkeypatch):
    model = _small(getattr(tv.models.detection, name))
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 120, 128, generator=g), torch.rand(3, 96, 128, generator=g)]
    with torch.no_grad():
        want = model(images)
    calls = []
    impl = _dispatch.roi_align
    monkeypatch.setattr(_dispatch, "roi_align", lambda *a, **k: calls.append(1) or impl(*a, **k))
    with detkernels.patch_torchvision():
        assert tv.ops.roi_align is detkernels.roi_align
        with torch.no_grad():
            got = model(images)
    assert tv.ops.roi_align is not detkernels.roi_align  # restored
    assert len(calls) >= 4  # one per FPN level (twice with the mask head)
    assert all(len(d["boxes"]) > 0 for d in want)
    for d_got, d_want in zip(got, want):
        assert d_got.keys() == d_want.keys()
        for k in d_want:
            assert_bytes_equal(d_got[k], d_want[k], k)


def test_patched_modules_route_to_detkernels():
    with detkernels.patch_torchvision():
        assert tv.ops.RoIAlign is detkernels.RoIAlign
        assert tv.ops.poolers.roi_align is detkernels.roi_align
        assert tv.ops.ps_roi_pool is detkernels.ps_roi_pool
        m = tv.ops.MultiScaleRoIAlign(["0"], 2, 2)
        assert isinstance(m, detkernels.MultiScaleRoIAlign)
    assert tv.ops.RoIAlign is not detkernels.RoIAlign
