"""Deploy a torchvision detection model with torch.export and AOTInductor, through detkernels.

    python examples/export_aoti.py                                  # Faster R-CNN ResNet50-FPN
    python examples/export_aoti.py --model maskrcnn_resnet50_fpn --size 128 --package /tmp/m.pt2
    python examples/export_aoti.py --model tiny_fasterrcnn          # a tiny backbone, compiles fast
    python examples/export_aoti.py --fast                           # Inductor's own kernels

Steps: build the model (random weights: nothing is downloaded; load your own state_dict instead),
``detkernels.export_ready(model)``, ``torch.export.export``, ``detkernels.aoti_compile_exact``
(``aoti_compile_and_package`` with ATen's kernels where Inductor's round differently; ``--fast``:
plain ``aoti_compile_and_package``, whose detections differ from eager's), ``aoti_load_package``
and run it, then compare with eager. The process that loads the package must ``import detkernels``
(the NMS, RoIAlign and mask-paste nodes are detkernels' custom ops). docs/DEPLOY.md has the
measured times.
"""
from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import (
    poolers,  # torchvision's class even under patch_torchvision()
)

import detkernels

FULL = ("fasterrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "retinanet_resnet50_fpn")
TINY = ("tiny_fasterrcnn", "tiny_maskrcnn", "tiny_retinanet")


class TinyBackbone(nn.Module):
    """Two feature levels (strides 4 and 8, 8 channels): torchvision's detection heads and
    post-processing at a size AOTInductor compiles in seconds."""

    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        a = torch.relu(self.c1(x))
        return OrderedDict([("0", a), ("1", torch.relu(self.c2(a)))])


def build(name: str, size: int = 128, seed: int = 0) -> nn.Module:
    """A torchvision detection model, random weights (seeded), eval mode, images resized to
    ``size``. Low score thresholds: random heads still give detections to compare."""
    torch.manual_seed(seed)
    kw = {"min_size": size, "max_size": size}
    if name in FULL:
        extra = {"score_thresh": 0.01} if name.startswith("retinanet") else {}
        return getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None,
                                                           **kw, **extra).eval()
    if name not in TINY:
        raise ValueError(f"--model must be one of {FULL + TINY}, got {name!r}")
    anchors = AnchorGenerator(((16,), (32,)), ((0.5, 1.0, 2.0),) * 2)
    if name == "tiny_retinanet":
        return RetinaNet(TinyBackbone(), num_classes=3, anchor_generator=anchors, score_thresh=0.01,
                         **kw).eval()
    pool = poolers.MultiScaleRoIAlign(["0", "1"], 7, 2)
    common = dict(num_classes=3, rpn_anchor_generator=anchors, box_roi_pool=pool,
                  rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=50, box_score_thresh=0.0, **kw)
    if name == "tiny_maskrcnn":
        return MaskRCNN(TinyBackbone(), mask_roi_pool=poolers.MultiScaleRoIAlign(["0", "1"], 14, 2),
                        **common).eval()
    return FasterRCNN(TinyBackbone(), **common).eval()


def images(size: int, batch: int = 2, seed: int = 1) -> list[Tensor]:
    """``batch`` random images of different sizes around ``size``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size - 8 * i, size, generator=g) for i in range(batch)]


def same(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> bool:
    """Bit for bit: the same keys, shapes, dtypes and bytes."""
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(x[k].shape == y[k].shape and x[k].dtype == y[k].dtype
                                     and torch.equal(x[k].view(-1).view(torch.uint8), y[k].view(-1).view(torch.uint8))
                                     for k in x) for x, y in zip(a, b))


def max_abs_diff(a: list[dict[str, Tensor]], b: list[dict[str, Tensor]]) -> float | None:
    """Largest |difference| over the outputs, None where the shapes differ."""
    worst = 0.0
    for x, y in zip(a, b):
        for k in x:
            if x[k].shape != y[k].shape:
                return None
            if x[k].numel():
                worst = max(worst, float((x[k].double() - y[k].double()).abs().max()))
    return worst


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=FULL[0], choices=FULL + TINY)
    p.add_argument("--size", type=int, default=128, help="min_size = max_size of the model's transform")
    p.add_argument("--package", default="detector.pt2", help="where to write the AOTInductor package")
    p.add_argument("--fast", action="store_true", help="Inductor's own kernels (not bit-equal to eager)")
    a = p.parse_args(argv)

    model = detkernels.export_ready(build(a.model, a.size))
    imgs = images(a.size)
    with torch.no_grad():
        eager = model(imgs)
        t0 = time.perf_counter()
        program = torch.export.export(model, (imgs,))
        t1 = time.perf_counter()
        if a.fast:
            path = torch._inductor.aoti_compile_and_package(program, package_path=a.package)
        else:
            path = detkernels.aoti_compile_exact(program, package_path=a.package)
        t2 = time.perf_counter()
        exported = program.module()(imgs)
        compiled = torch._inductor.aoti_load_package(path)(imgs)
    result = {"model": a.model, "package": path, "exact": not a.fast, "export_s": round(t1 - t0, 2), "aoti_compile_s": round(t2 - t1, 2),
              "detections": [len(d["boxes"]) for d in eager], "exported_equal": same(exported, eager),
              "aoti_equal": same(compiled, eager), "aoti_max_abs_diff": max_abs_diff(compiled, eager)}
    for k, v in result.items():
        print(f"{k}: {v}")
    return result


if __name__ == "__main__":
    main()
