"""torch integration: tensors in -> tensors out, autograd, custom ops (opcheck, torch.compile,
torch.export), TorchScript, torch.fx, and patch_torchvision on a real detection model."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import detkernels
from detkernels.reference import box_iou as R
from detkernels.reference import nms as RN

from _helpers import assert_bytes_equal, assert_values_equal
from families import FAMILIES, make

torch = pytest.importorskip("torch")


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def test_tensor_in_tensor_out(rng):
    b, s = make("clustered", rng, 120, "float32")
    keep = detkernels.nms(_t(b), _t(s), 0.5)
    assert isinstance(keep, torch.Tensor) and keep.dtype == torch.int64
    assert_bytes_equal(keep, RN.nms(b, s, 0.5))
    iou = detkernels.box_iou(_t(b), _t(b[:7]))
    assert isinstance(iou, torch.Tensor) and iou.dtype == torch.float32
    assert_bytes_equal(iou, R.box_iou(b, b[:7]))
    with pytest.raises(TypeError, match="boxes1 is a torch array but boxes2 is a numpy array"):
        detkernels.box_iou(_t(b), b)
    with pytest.raises(TypeError, match="boxes is a torch array but scores is a numpy array"):
        detkernels.nms(_t(b), s, 0.5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nms_tensors_match_reference(family, dtype, rng):
    """Torch CPU tensors take the eager fast path: same bytes as the reference."""
    for n in (0, 1, 65, 400):
        b, s = make(family, rng, n, dtype)
        for thr in (0.0, 0.5, 0.7):
            assert_bytes_equal(detkernels.nms(_t(b), _t(s), thr), RN.nms(b, s, thr), f"n={n}")
        wide = torch.zeros(n, 8, dtype=getattr(torch, dtype))
        wide[:, ::2] = _t(b)  # non-contiguous boxes
        assert_bytes_equal(detkernels.nms(wide[:, ::2], _t(s), 0.5), RN.nms(b, s, 0.5))


def test_half_types(rng):
    """docs/SPEC.md §1.5: bfloat16/float16 accepted natively; all arithmetic in float32."""
    b, s = make("clustered", rng, 80, "float32")
    for dt in (torch.float16, torch.bfloat16):
        bt, st = _t(b).to(dt), _t(s).to(dt)
        b32, s32 = bt.float().numpy(), st.float().numpy()
        assert_bytes_equal(detkernels.nms(bt, st, 0.5), RN.nms(b32, s32, 0.5), str(dt))
        out = detkernels.generalized_box_iou(bt, bt[:9])
        assert out.dtype == torch.float32
        assert_bytes_equal(out, R.generalized_box_iou(b32, b32[:9]), str(dt))


@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_autograd(tv_ops, name, rng):
    """Gradients flow (DETR-style losses); values equal the exact path; gradients equal
    torchvision's up to summation order (the formula is split per coordinate)."""
    b1, _ = make("uniform", rng, 12, "float64")
    b2, _ = make("uniform", rng, 9, "float64")
    x1, x2 = _t(b1).requires_grad_(), _t(b2).requires_grad_()
    out = getattr(detkernels, name)(x1, x2)
    assert_values_equal(out.detach(), getattr(R, name)(b1, b2))
    w = torch.rand_like(out)
    g1, g2 = torch.autograd.grad((out * w).sum(), (x1, x2))
    y1, y2 = _t(b1).requires_grad_(), _t(b2).requires_grad_()
    h1, h2 = torch.autograd.grad((getattr(tv_ops, name)(y1, y2) * w).sum(), (y1, y2))
    torch.testing.assert_close(g1, h1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, h2, rtol=1e-12, atol=1e-12)
    if name != "complete_box_iou":  # CIoU's alpha is a stop-gradient (torchvision's too)
        assert torch.autograd.gradcheck(lambda a, b: getattr(detkernels, name)(a, b), (x1, x2))


# opcheck's own AOT-dispatch utility reads .grad of non-leaf tensors (a torch-internal warning).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.parametrize("name", ["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"])
def test_custom_op_autograd_and_opcheck(name, rng):
    b1, _ = make("uniform", rng, 6, "float64")
    b2, _ = make("uniform", rng, 5, "float64")
    op = getattr(torch.ops.detkernels, name)
    x1, x2 = _t(b1).requires_grad_(), _t(b2).requires_grad_()
    if name != "complete_box_iou":  # CIoU's alpha is a stop-gradient (torchvision's too)
        assert torch.autograd.gradcheck(lambda a, b: op(a, b), (x1, x2))
    torch.library.opcheck(op, (x1, x2))
    torch.library.opcheck(op, (_t(b1).float(), _t(b2).float()))


def test_nms_opcheck(rng):
    b, s = make("clustered", rng, 50, "float32")
    c = rng.integers(0, 3, 50)
    torch.library.opcheck(torch.ops.detkernels.nms, (_t(b), _t(s), 0.5))
    torch.library.opcheck(torch.ops.detkernels.batched_nms, (_t(b), _t(s), _t(c), 0.5))


def test_compile_fullgraph(rng):
    b, s = make("clustered", rng, 90, "float32")
    c = rng.integers(0, 3, 90)

    def post(boxes, scores, idxs):
        keep = detkernels.batched_nms(boxes, scores, idxs, 0.5)
        return keep, detkernels.box_iou(boxes[keep], boxes)

    fn = torch.compile(post, fullgraph=True, dynamic=True)
    keep, iou = fn(_t(b), _t(s), _t(c))
    assert_bytes_equal(keep, RN.batched_nms(b, s, c, 0.5))
    assert_bytes_equal(iou, R.box_iou(b[keep.numpy()], b))


def test_export(rng):
    class Post(torch.nn.Module):
        def forward(self, boxes, scores):
            return detkernels.nms(boxes, scores, 0.6)

    b, s = make("clustered", rng, 64, "float32")
    ep = torch.export.export(Post(), (_t(b), _t(s)))
    assert "detkernels.nms" in str(ep.graph)
    assert_bytes_equal(ep.module()(_t(b), _t(s)), RN.nms(b, s, 0.6))


def test_jit_script(rng):
    def post(boxes: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        keep = detkernels.nms(boxes, scores, 0.5)
        return detkernels.box_iou(boxes[keep], boxes)

    scripted = torch.jit.script(post)
    assert "detkernels::nms" in str(scripted.graph)
    b, s = make("clustered", rng, 40, "float32")
    assert_bytes_equal(scripted(_t(b), _t(s)), post(_t(b), _t(s)))


def test_fx_leaf(rng):
    class M(torch.nn.Module):
        def forward(self, boxes, scores):
            return detkernels.nms(boxes, scores, 0.5) + 0

    gm = torch.fx.symbolic_trace(M())
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert detkernels.nms in targets
    b, s = make("clustered", rng, 40, "float32")
    assert_bytes_equal(gm(_t(b), _t(s)), RN.nms(b, s, 0.5))


def _canonical(det):
    """Detections as rows sorted by (score desc, label, box): torchvision's per-class NMS orders
    equal scores with an unstable sort, detkernels by index (docs/SPEC.md divergence 2)."""
    rows = torch.cat([det["scores"][:, None], det["labels"][:, None].to(det["boxes"]), det["boxes"]], 1)
    keys = [rows[:, k].numpy() for k in range(rows.shape[1] - 1, 0, -1)] + [-rows[:, 0].numpy()]
    return rows[np.lexsort(keys)]


def test_patch_torchvision_detection_model(tv_ops):
    """A torchvision detector with random weights gives identical detections through detkernels."""
    import torchvision
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                  box_score_thresh=0.0, rpn_pre_nms_top_n_test=300,
                                                  rpn_post_nms_top_n_test=100).eval()
    with torch.no_grad():  # default init gives every box the same score: spread the logits
        for m in (model.rpn.head, model.roi_heads.box_head, model.roi_heads.box_predictor):
            for p in m.parameters():
                p.normal_(0, 0.3)
    images = [torch.rand(3, 200, 260), torch.rand(3, 180, 240)]
    calls = []
    orig = detkernels._registry.select  # both the eager fast path and _dispatch choose here

    def spy(op, *a, **k):
        calls.extend([1] if op == "nms" else [])
        return orig(op, *a, **k)

    with torch.no_grad():
        ref = model(images)
        detkernels._registry.select = spy
        try:
            with detkernels.patch_torchvision():
                assert torchvision.ops.boxes.batched_nms is detkernels._torch.patch.torchvision_batched_nms
                got = model(images)
        finally:
            detkernels._registry.select = orig
    assert torchvision.ops.boxes.batched_nms is not detkernels._torch.patch.torchvision_batched_nms  # restored
    assert calls, "detkernels was not called"
    for r, g in zip(ref, got):
        assert r["boxes"].shape[0] > 0
        assert torch.equal(r["scores"], g["scores"])
        assert torch.equal(_canonical(r), _canonical(g))


def test_import_does_not_import_torch():
    code = "import sys, detkernels, numpy as np; detkernels.nms(np.zeros((2,4),'f4'), np.ones(2,'f4'), .5); " \
           "assert 'torch' not in sys.modules and 'numba' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_imported_after_detkernels_still_scripts(tmp_path):
    """Importing torch after detkernels registers the custom ops and TorchScript builtins at once,
    so torch.jit.script works before any eager call."""
    script = tmp_path / "order.py"
    script.write_text(
        "import sys, warnings, detkernels\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "assert 'detkernels._torch.script' in sys.modules\n"
        "warnings.simplefilter('ignore')\n"
        "def f(b, s):\n"
        "    return detkernels.nms(b, s, 0.5)\n"
        "g = torch.jit.script(f)\n"
        "assert 'detkernels::nms' in str(g.graph)\n"
        "b = torch.tensor([[0., 0, 10, 10], [1, 1, 10, 10]])\n"
        "assert g(b, torch.tensor([0.9, 0.8])).tolist() == [0]\n")
    subprocess.run([sys.executable, str(script)], check=True, timeout=300)


def test_large_cpu_outputs_are_ordinary_tensors(rng):
    """Outputs of 4 MiB and more come from NumPy's allocator (huge-page advice, see
    _arrays.empty): still plain CPU tensors of the right dtype that own their memory."""
    b1 = torch.as_tensor(rng.uniform(0, 100, (1100, 4)).astype(np.float32)).sort(1).values
    b2 = b1[:1000]
    out = detkernels.box_iou(b1, b2)
    assert out.shape == (1100, 1000) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.untyped_storage().nbytes() >= out.numel() * 4
    assert_bytes_equal(out, detkernels.box_iou(b1.numpy(), b2.numpy()), "large box_iou")
    out.add_(1)  # writable, in place
    assert torch.equal(out[:5, :5], detkernels.box_iou(b1[:5], b2[:5]) + 1)


def test_build_info():
    info = detkernels.build_info()
    for key in ("cuda", "cuda_version", "cuda_architectures", "float_flags"):
        assert key in info
    if info["cuda"]:
        assert info["cuda_version"].startswith(("12.", "13.")) and "90" in info["cuda_architectures"]
        assert info["cuda_devices"] >= 0  # 0 on GPU-less hosts: never an exception
    else:
        assert info["cuda_version"] is None
