"""TorchScript: ``torch.jit.script`` of every function patch_torchvision() installs and of the RoI
modules, forward and backward, equal to eager; scripted modules save and load; torchvision's own
scripted uses (``self.iou = ops.box_iou``, ``torch.jit.script(ops.roi_align)``, a detection
model) under the patch."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _helpers import assert_bytes_equal
from _roi_inputs import boxes_valid, features

import detkernels as dk
from detkernels._torch.patch import PATCHED, ROI_FUNCTIONS

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning",
                                        "ignore:`torch.jit.save` is deprecated:FutureWarning",
                                        "ignore:`torch.jit.load` is deprecated:FutureWarning")


def _boxes(seed, n):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 30], 1)


def _rois():
    return torch.from_numpy(boxes_valid(0, 12)).double()


def _feats(c=8):
    return torch.from_numpy(features(0, np.float64, c=c)).requires_grad_()


# name -> (args builder, index of the differentiable argument or None)
def _scores(n):
    return torch.rand(n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


CALLS = {
    "nms": (lambda: (_boxes(0, 30), _scores(30), 0.5), None),
    "batched_nms": (lambda: (_boxes(0, 30), _scores(30), torch.arange(30) % 3, 0.5), None),
    "box_area": (lambda: (_boxes(1, 7).requires_grad_(),), 0),
    "box_iou": (lambda: (_boxes(1, 7).requires_grad_(), _boxes(2, 5)), 0),
    "generalized_box_iou": (lambda: (_boxes(1, 7).requires_grad_(), _boxes(2, 5)), 0),
    "distance_box_iou": (lambda: (_boxes(1, 7).requires_grad_(), _boxes(2, 5)), 0),
    "complete_box_iou": (lambda: (_boxes(1, 7).requires_grad_(), _boxes(2, 5)), 0),
    "roi_align": (lambda: (_feats(), _rois(), [3, 2], 0.5, 2, True), 0),
    "roi_pool": (lambda: (_feats(), _rois(), 3, 0.5), 0),
    "ps_roi_align": (lambda: (_feats(18), _rois(), 3, 0.5, -1), 0),
    "ps_roi_pool": (lambda: (_feats(18), _rois(), [3, 3], 0.5), 0),
}
INSTALLED = {**PATCHED, **ROI_FUNCTIONS}


def test_every_installed_function_is_covered():
    assert set(CALLS) == set(INSTALLED)


def _fwd_bwd(fn, args, grad_arg):
    out = fn(*args)
    if grad_arg is None:
        return out, None
    (g,) = torch.autograd.grad(out.sin().sum(), args[grad_arg])
    return out, g


@pytest.mark.parametrize("name", CALLS)
def test_script_function_forward_backward_equal_eager(name):
    fn = INSTALLED[name]
    scripted = torch.jit.script(fn)
    assert isinstance(scripted, torch.jit.ScriptFunction)
    build, grad_arg = CALLS[name]
    want, want_g = _fwd_bwd(fn, build(), grad_arg)
    got, got_g = _fwd_bwd(scripted, build(), grad_arg)
    assert_bytes_equal(got, want, name)
    if grad_arg is not None:
        assert_bytes_equal(got_g, want_g, f"{name} grad")


def test_roi_functions_take_a_list_of_boxes_when_scripted():
    scripted = torch.jit.script(dk.roi_align)
    x = _feats()
    boxes = [_boxes(3, 4) * 0.2, _boxes(4, 2) * 0.2]
    assert_bytes_equal(scripted(x, boxes, 2, 0.5), dk.roi_align(x, boxes, 2, 0.5))


def test_generic_api_keeps_backend_keyword():
    b, s = CALLS["nms"][0]()[:2]
    torch.jit.script(dk.nms)
    assert_bytes_equal(dk.nms(b, s, 0.5, backend="numpy"), dk.nms(b, s, 0.5))


class _Holder(torch.nn.Module):
    """torchvision's test pattern: the op as a module attribute, called in forward."""

    def __init__(self, iou):
        super().__init__()
        self.iou = iou

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.iou(a, b)


def _save_load(m):
    buf = io.BytesIO()
    torch.jit.save(m, buf)
    buf.seek(0)
    return torch.jit.load(buf)


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_module_holding_iou_scripts_and_saves(name):
    tv_ops = pytest.importorskip("torchvision.ops")
    a, b = _boxes(1, 7), _boxes(2, 5)
    with dk.patch_torchvision():
        m = torch.jit.script(_Holder(getattr(tv_ops, name)))
    assert "detkernels::" in str(m.inlined_graph)
    loaded = _save_load(m)
    assert_bytes_equal(loaded(a, b), getattr(dk, name)(a, b), name)


def test_torchvision_box_iou_scripts_under_patch():
    tv = pytest.importorskip("torchvision")
    a, b = _boxes(1, 7), _boxes(2, 5)
    with dk.patch_torchvision():
        f = torch.jit.script(tv.ops.boxes.box_iou)
        g = torch.jit.script(tv.ops.boxes._box_inter_union)  # its global box_area is detkernels'
    assert_bytes_equal(f(a, b), dk.box_iou(a, b))
    assert_bytes_equal(g(a, b)[1], tv.ops.boxes._box_inter_union(a, b)[1])


MODULES = {
    "RoIAlign": (lambda: dk.RoIAlign((3, 2), 0.5, 2, aligned=True), 8),
    "RoIPool": (lambda: dk.RoIPool(3, 0.5), 8),
    "PSRoIAlign": (lambda: dk.PSRoIAlign(3, 0.5, -1), 18),
    "PSRoIPool": (lambda: dk.PSRoIPool((3, 3), 0.5), 18),
}


@pytest.mark.parametrize("name", MODULES)
def test_roi_modules_script_forward_backward_save_load(name):
    make, c = MODULES[name]
    eager = make()
    scripted = _save_load(torch.jit.script(make()))
    for boxes in (_rois(), [_boxes(3, 4) * 0.2, _boxes(4, 2) * 0.2]):
        x1, x2 = _feats(c), _feats(c)
        want, got = eager(x1, boxes), scripted(x2, boxes)
        assert_bytes_equal(got, want, name)
        (gw,) = torch.autograd.grad(want.sin().sum(), x1)
        (gg,) = torch.autograd.grad(got.sin().sum(), x2)
        assert_bytes_equal(gg, gw, f"{name} grad")


def test_multiscale_roi_align_scripts_equal_eager():
    g = torch.Generator().manual_seed(0)
    feats = {"0": torch.rand(2, 4, 32, 32, generator=g, dtype=torch.float64).requires_grad_(),
             "1": torch.rand(2, 4, 16, 16, generator=g, dtype=torch.float64).requires_grad_(),
             "x": torch.rand(2, 4, 8, 8, generator=g, dtype=torch.float64)}
    boxes = [_boxes(5, 6) * 2, _boxes(6, 3) * 2]
    shapes = [(128, 128), (120, 128)]
    eager = dk.MultiScaleRoIAlign(["0", "1"], 3, 2)
    scripted = _save_load(torch.jit.script(dk.MultiScaleRoIAlign(["0", "1"], 3, 2)))
    want, got = eager(feats, boxes, shapes), scripted(feats, boxes, shapes)
    assert_bytes_equal(got, want)
    gw = torch.autograd.grad(want.sum(), [feats["0"], feats["1"]])
    gg = torch.autograd.grad(got.sum(), [feats["0"], feats["1"]])
    for a, b in zip(gg, gw):
        assert_bytes_equal(a, b, "grad")


@pytest.mark.torchvision
def test_patched_detection_model_scripts_and_matches_eager():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = tv.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3, min_size=64, max_size=64,
        rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_score_thresh=0.0,
        box_detections_per_img=10).eval()
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    with dk.patch_torchvision(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Scripted Faster R-CNN always returns a tuple"
        scripted = torch.jit.script(model)
        assert "detkernels::roi_align" in str(scripted.roi_heads.box_roi_pool.inlined_graph)
        assert "detkernels::" in str(scripted.rpn.inlined_graph)  # batched_nms
        with torch.no_grad():
            want = model(images)
            got = scripted(images)[1]
    assert len(want[0]["boxes"]) > 0
    for k in want[0]:
        assert_bytes_equal(got[0][k], want[0][k], k)


# ---- the crowded-scene and rotated NMS functions (issues 13, 17) ------------------------------------

def _rboxes(seed, n, radians=False):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50
    wh = 2 + torch.rand(n, 2, generator=g, dtype=torch.float64) * 20
    a = torch.rand(n, 1, generator=g, dtype=torch.float64) * (3.0 if radians else 170.0)
    return torch.cat([xy, wh, a], 1)


_CLS = torch.arange(30) % 3
VARIANTS = {  # name -> (args, keyword arguments)
    "soft_nms": (lambda: (_boxes(0, 30), _scores(30), 0.3), {"sigma": 0.7, "method": "gaussian", "idxs": _CLS}),
    "multi_image_soft_nms": (lambda: (_boxes(0, 30)[None], _scores(30)[None], 6, 0.4), {"method": "linear"}),
    "diou_nms": (lambda: (_boxes(0, 30), _scores(30), 0.4), {"beta": 0.6, "idxs": _CLS}),
    "multi_image_diou_nms": (lambda: (_boxes(0, 30)[None], _scores(30)[None], 0.4, 6),
                             {"beta": 0.6, "idxs": _CLS[None]}),
    "multi_image_matrix_nms": (lambda: (_boxes(0, 30)[None], _scores(30)[None], _CLS[None], 9),
                               {"kernel": "linear", "score_threshold": 0.1, "pre_top_k": 25}),
    "matrix_nms": (lambda: (_boxes(0, 30), _scores(30), _CLS), {"kernel": "linear", "score_threshold": 0.1,
                                                               "max_output": 9, "pre_top_k": 25}),
    "nms_rotated": (lambda: (_rboxes(0, 30), _scores(30), 0.2), {}),
    "batched_nms_rotated": (lambda: (_rboxes(0, 30), _scores(30), _CLS, 0.2, "xywhr"), {}),
    "probiou": (lambda: (_rboxes(0, 30, True), _rboxes(1, 7, True)), {"eps": 1e-6}),
    "nms_probiou": (lambda: (_rboxes(0, 30, True), _scores(30), 0.2, _CLS), {"fast": True}),
    "multi_image_nms_rotated": (lambda: (_rboxes(0, 30)[None], _scores(30)[None], 0.2, 12, "xywhr"),
                                {"idxs": _CLS[None], "score_threshold": 0.1}),
    "multi_image_nms_probiou": (lambda: (_rboxes(0, 30, True)[None], _scores(30)[None], 0.2, 12),
                                {"idxs": _CLS[None], "fast": True, "eps": 1e-6}),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_scripts_equal_eager(name):
    fn = getattr(dk, name)
    scripted = torch.jit.script(fn)
    assert isinstance(scripted, torch.jit.ScriptFunction)
    build, kw = VARIANTS[name]
    for what, kwargs in (("", kw), (" defaults", {})):
        want, got = fn(*build(), **kwargs), scripted(*build(), **kwargs)
        want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
        assert len(got) == len(want) and want[0].numel() > 0
        for i, (a, b) in enumerate(zip(got, want)):
            assert_bytes_equal(a, b, f"{name}{what} output {i}")


class _Variants(torch.nn.Module):
    """The functions called inside scripted code (keyword-only arguments included)."""

    def forward(self, b: torch.Tensor, s: torch.Tensor, c: torch.Tensor, rb: torch.Tensor, rr: torch.Tensor):
        k, v = dk.soft_nms(b, s, 0.3, sigma=0.5, method="gaussian", idxs=c)
        k2, v2, n2 = dk.multi_image_soft_nms(b[None], s[None], 5, score_threshold=0.01)
        d = dk.diou_nms(b, s, 0.5, beta=0.6)
        mk, mv = dk.matrix_nms(b, s, c, sigma=1.5, max_output=7)
        dk2, dn2 = dk.multi_image_diou_nms(b[None], s[None], 0.5, 6, beta=0.6, idxs=c[None])
        mk2, mv2, mn2 = dk.multi_image_matrix_nms(b[None], s[None], c[None], 7, sigma=1.5)
        r = dk.nms_rotated(rb, s, 0.3)
        r2 = dk.batched_nms_rotated(rb, s, c, 0.3, "xywhr")
        p = dk.probiou(rr, rr[:5], eps=1e-7)
        pn = dk.nms_probiou(rr, s, 0.3, c, fast=False)
        ri = dk.box_iou(rb, rb[:6], fmt="cxcywhr")
        mr, mrn = dk.multi_image_nms_rotated(rb[None], s[None], 0.3, 8, idxs=c[None], score_threshold=0.1)
        mp, mpn = dk.multi_image_nms_probiou(rr[None], s[None], 0.3, 8, fast=True)
        return k, v, k2, v2, n2, d, mk, mv, r, r2, p, pn, ri, dk2, dn2, mk2, mv2, mn2, mr, mrn, mp, mpn


def test_variants_inside_scripted_code_equal_eager_and_save_load():
    args = (_boxes(0, 30), _scores(30), _CLS, _rboxes(0, 30), _rboxes(2, 30, True))
    scripted = _save_load(torch.jit.script(_Variants()))
    graph = str(scripted.inlined_graph)
    for op in ("soft_nms_script", "diou_nms_script", "matrix_nms_script", "nms_rotated_script",
               "multi_image_diou_nms_script", "multi_image_matrix_nms_script",
               "detkernels::probiou", "nms_probiou_script", "detkernels::box_iou",
               "multi_image_nms_rotated_script", "multi_image_nms_probiou_script"):
        assert op in graph, op
    want = _Variants()(*args)
    got = scripted(*args)
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_bytes_equal(a, b, f"output {i}")
