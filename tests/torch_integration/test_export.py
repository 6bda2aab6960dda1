"""``export_ready`` and ``torch.export`` of torchvision's Faster R-CNN, Mask R-CNN and RetinaNet
(ResNet50-FPN, random weights, a batch of two images at 128 px): the swapped model's eager output
is the unpatched torchvision model's, bit for bit, and the exported program's is eager's. The
pieces export_ready swaps in are tested on their own where a model would not reach a path
(batched_nms above torchvision's size switch, an empty BoxCoder.decode, masks off the image).
AOTInductor: tests/torch_integration/test_export_aoti.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from _helpers import assert_bytes_equal

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import detkernels
from detkernels._torch import export as dk_export

pytestmark = pytest.mark.torchvision

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FULL = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ex = load_example("export_aoti")


@pytest.fixture(autouse=True)
def _unpatch():
    """export_ready installs patch_torchvision() for the process: undo it after each test."""
    yield
    dk_export._restore_patch()


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for k in w:
            assert_bytes_equal(g[k], w[k], k)


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_export_is_bit_equal_to_torchvision(name):
    model, imgs = ex.build(name), ex.images(128)
    assert tv.ops.boxes.batched_nms is not dk_export._patch.torchvision_batched_nms
    with torch.no_grad():
        want = model(imgs)  # torchvision, unpatched
    assert all(len(d["boxes"]) > 10 for d in want)  # random heads still detect: a real comparison
    assert detkernels.export_ready(model) is model
    assert isinstance(model.transform, dk_export._CLASSES["transform"])
    pools = [m for m in model.modules() if isinstance(m, tv.ops.poolers.MultiScaleRoIAlign)]
    assert pools == []  # every torchvision pooler swapped for detkernels'
    with torch.no_grad():
        eager = model(imgs)
        assert_same(eager, want)
        program = torch.export.export(model, (imgs,))
        assert_same(program.module()(imgs), want)
    targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
    assert torch.ops.detkernels.batched_nms.default in targets
    assert torch.ops.detkernels.roi_align.default in targets or name.startswith("retinanet")
    if name.startswith("maskrcnn"):
        assert torch.ops.detkernels.paste_masks.default in targets
        assert want[1]["masks"].shape[1:] == (1, *imgs[1].shape[-2:]) and want[1]["masks"].any()


def test_export_ready_is_idempotent_and_keeps_the_patch_once():
    model = ex.build("tiny_fasterrcnn")
    detkernels.export_ready(model)
    detkernels.export_ready(model)
    assert len(dk_export._PATCH) == 1
    assert tv.ops.boxes.batched_nms is dk_export._patch.torchvision_batched_nms
    dk_export._restore_patch()
    assert tv.ops.boxes.batched_nms is not dk_export._patch.torchvision_batched_nms
    with detkernels.patch_torchvision():  # an active patch is used, not stacked
        detkernels.export_ready(ex.build("tiny_retinanet"))
        assert dk_export._PATCH == []


@pytest.mark.parametrize("bad", [torch.zeros(3), "fasterrcnn", None])
def test_export_ready_needs_a_module(bad):
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        detkernels.export_ready(bad)


def test_export_ready_rejects_unsupported_models():
    with pytest.raises(TypeError, match="FasterRCNN, MaskRCNN or RetinaNet.*Linear"):
        detkernels.export_ready(torch.nn.Linear(2, 2))
    kp = tv.models.detection.keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    with pytest.raises(TypeError, match="KeypointRCNN"):
        detkernels.export_ready(kp)
    model = ex.build("tiny_fasterrcnn")

    class MyTransform(type(model.transform)):
        pass

    model.transform.__class__ = MyTransform
    with pytest.raises(ValueError, match="MyTransform is not torchvision's GeneralizedRCNNTransform"):
        detkernels.export_ready(model)


def test_box_coder_decode_without_the_branch():
    from torchvision.models.detection._utils import BoxCoder

    g = torch.Generator().manual_seed(0)
    old = BoxCoder((10.0, 10.0, 5.0, 5.0))
    new = BoxCoder((10.0, 10.0, 5.0, 5.0))
    dk_export._swap_class(new, "box_coder", dk_export._box_coder_class)
    xy = torch.rand(7, 2, generator=g) * 50
    boxes = [torch.cat([xy, xy + 10], 1)[:4], torch.cat([xy, xy + 10], 1)[4:]]
    for width in (4, 12):  # the RPN's codes, the box head's for 3 classes
        codes = torch.randn(7, width, generator=g)
        assert_bytes_equal(new.decode(codes, boxes), old.decode(codes, boxes), f"width {width}")
    empty = new.decode(torch.zeros(0, 12), [torch.zeros(0, 4)])
    assert empty.shape == (0, 3, 4)  # torchvision: [0, 12]; the model's detections are empty either way


def _paste_cases():
    g = torch.Generator().manual_seed(3)
    masks = torch.rand(5, 1, 28, 28, generator=g)
    # inside, across the borders (the expanded boxes of clipped detections), a 1-pixel box, the
    # whole image (torchvision's own loop raises for a box wholly outside the image)
    boxes = torch.tensor([[10.0, 12.0, 60.0, 50.0], [-20.0, -5.0, 30.0, 40.0], [50.0, 40.0, 90.0, 77.0],
                          [5.0, 5.0, 5.2, 5.4], [0.0, 0.0, 80.0, 64.0]])
    return masks, boxes, (64, 80)


def test_paste_masks_matches_torchvision_eager_and_exported():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    masks, boxes, shape = _paste_cases()
    want = paste_masks_in_image(masks, boxes, shape)
    assert_bytes_equal(dk_export.paste_masks(masks, boxes, shape), want, "eager")

    class Paste(torch.nn.Module):
        def forward(self, m, b):
            return dk_export.paste_masks(m, b, shape)

    n = torch.export.Dim("n")
    program = torch.export.export(Paste(), (masks, boxes), dynamic_shapes=({0: n}, {0: n}))
    assert_bytes_equal(program.module()(masks, boxes), want, "exported")
    assert_bytes_equal(program.module()(masks[1:3], boxes[1:3]), want[1:3], "two masks")  # the count is dynamic
    padded, _ = tv.models.detection.roi_heads.expand_masks(masks[:0], 1)
    assert_bytes_equal(torch.ops.detkernels.paste_masks(padded, boxes[:0].long(), *shape),
                       paste_masks_in_image(masks[:0], boxes[:0], shape), "no masks")


@pytest.mark.parametrize("n", [300, 1500])  # either side of torchvision's 4 000-element CPU switch
def test_exported_batched_nms_keeps_torchvision_order_on_both_sides_of_the_switch(n):
    g = torch.Generator().manual_seed(n)
    xy = torch.rand(n, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 30], 1)
    scores = torch.randint(0, 6, (n,), generator=g).float() / 8  # many ties: the order rule shows
    idxs = torch.randint(0, 3, (n,), generator=g)
    on = torch.where(scores > 0.1)[0]
    want = tv.ops.boxes.batched_nms(boxes[on], scores[on], idxs[on], 0.5)  # torchvision's own
    assert (len(on) * 4 > 4000) == (n > 1000)

    class F(torch.nn.Module):
        def forward(self, b, s, i):
            keep = s > 0.1  # a data-dependent count, as after a model's score threshold
            return tv.ops.boxes.batched_nms(b[keep], s[keep], i[keep], 0.5)

    with detkernels.patch_torchvision():
        program = torch.export.export(F(), (boxes, scores, idxs))
        assert_bytes_equal(program.module()(boxes, scores, idxs), want, "exported")
        assert_bytes_equal(F()(boxes, scores, idxs), want, "eager, patched")


# ---- the crowded-scene and rotated NMS functions under torch.compile / torch.export (issues 13, 17) --

def _variant_inputs():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(24, 2, generator=g) * 50
    b = torch.cat([xy, xy + 5 + torch.rand(24, 2, generator=g) * 20], 1)
    s, c = torch.rand(24, generator=g), torch.arange(24) % 3
    rb = torch.cat([xy, 5 + torch.rand(24, 2, generator=g) * 20, torch.rand(24, 1, generator=g) * 90], 1)
    rr = torch.cat([rb[:, :4], rb[:, 4:] / 57], 1)
    return b, s, c, rb, rr


VARIANTS = {  # name -> (function of (b, s, c, rb, rr) tensors, indices of the ones it takes)
    "soft_nms": (lambda b, s, c: detkernels.soft_nms(b, s, 0.3, sigma=0.5, method="gaussian", idxs=c), (0, 1, 2)),
    "multi_image_soft_nms": (lambda b, s: detkernels.multi_image_soft_nms(b[None], s[None], 6), (0, 1)),
    "diou_nms": (lambda b, s, c: detkernels.diou_nms(b, s, 0.4, beta=0.6, idxs=c), (0, 1, 2)),
    "multi_image_diou_nms": (lambda b, s, c: detkernels.multi_image_diou_nms(b[None], s[None], 0.4, 6, beta=0.6,
                                                                             idxs=c[None]), (0, 1, 2)),
    "multi_image_matrix_nms": (lambda b, s, c: detkernels.multi_image_matrix_nms(b[None], s[None], c[None], 9),
                               (0, 1, 2)),
    "matrix_nms": (lambda b, s, c: detkernels.matrix_nms(b, s, c, max_output=9), (0, 1, 2)),
    "box_iou_rotated": (lambda rb: detkernels.box_iou(rb, rb, fmt="cxcywhr"), (3,)),
    "nms_rotated": (lambda rb, s: detkernels.nms_rotated(rb, s, 0.2), (3, 1)),
    "batched_nms_rotated": (lambda rb, s, c: detkernels.batched_nms_rotated(rb, s, c, 0.2), (3, 1, 2)),
    "probiou": (lambda rr: detkernels.probiou(rr, rr), (4,)),
    "nms_probiou": (lambda rr, s, c: detkernels.nms_probiou(rr, s, 0.2, c, fast=True), (4, 1, 2)),
    "multi_image_nms_rotated": (lambda rb, s, c: detkernels.multi_image_nms_rotated(
        torch.stack([rb, rb.flip(0)]), torch.stack([s, s.flip(0)]), 0.2, 10, idxs=torch.stack([c, c]),
        score_threshold=0.1), (3, 1, 2)),
    "multi_image_nms_probiou": (lambda rr, s: detkernels.multi_image_nms_probiou(
        torch.stack([rr, rr.flip(0)]), torch.stack([s, s.flip(0)]), 0.2, 10, fast=True), (4, 1)),
}


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def _same(got, want, what):
    got, want = (got, want) if isinstance(want, tuple) else ((got,), (want,))
    assert len(got) == len(want) and want[0].numel() > 0
    for i, (a, b) in enumerate(zip(got, want)):
        assert_bytes_equal(a, b, f"{what} output {i}")


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_compiles_fullgraph_and_exports(name):
    fn, which = VARIANTS[name]
    args = tuple(_variant_inputs()[i] for i in which)
    want = fn(*args)
    torch._dynamo.reset()
    _same(torch.compile(fn, fullgraph=True, backend="eager")(*args), want, f"{name} compile")
    program = torch.export.export(_Call(fn), args)
    assert "detkernels." in str(program.graph)  # the custom op, not a traced-through kernel
    _same(program.module()(*args), want, f"{name} export")
