"""Deploy a model that uses detkernels ops as ONNX, and run it in ONNX Runtime.

    python examples/export_onnx.py                      # the dynamo=True exporter, detector.onnx
    python examples/export_onnx.py --exporter legacy --out /tmp/head.onnx

The model is a detection head's tail: per-class NMS of a batch of images with fixed-size outputs
(``detkernels.multi_image_nms`` -> ONNX ``NonMaxSuppression``) and RoIAlign of the kept boxes
(``detkernels.roi_align`` -> ONNX ``RoiAlign``, opset 16+). Nothing to register: importing
detkernels registers the translations. ONNX Runtime gives detkernels' bytes on inputs such as
these (valid boxes, no NaN scores, a threshold exact in float32); docs/DEPLOY.md lists where its
arithmetic differs.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

import detkernels

EXPORTERS = {"dynamo": True, "legacy": False}


class DetectionTail(nn.Module):
    """Boxes ``[B, N, 4]``, class scores ``[B, N, C]`` and a feature map ``[B, F, H, W]`` ->
    kept box indices, their classes and counts (``[B, max_output]``, -1 padded), and the
    ``7 x 7`` RoIAlign of every slot's box (padding slots pool box 0; mask them with counts)."""

    def __init__(self, iou_threshold: float = 0.5, score_threshold: float = 0.25, max_output: int = 16,
                 spatial_scale: float = 0.25) -> None:
        super().__init__()
        self.iou_threshold, self.score_threshold = iou_threshold, score_threshold
        self.max_output, self.spatial_scale = max_output, spatial_scale

    def forward(self, boxes: Tensor, scores: Tensor, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        idx, cls, counts = detkernels.multi_image_nms(boxes, scores, self.iou_threshold, self.max_output,
                                                      score_threshold=self.score_threshold)
        B = boxes.shape[0]
        kept = torch.gather(boxes, 1, idx.clamp(min=0)[..., None].expand(B, self.max_output, 4))
        image = torch.arange(B, dtype=boxes.dtype)[:, None, None].expand(B, self.max_output, 1)
        rois = torch.cat([image, kept], 2).reshape(B * self.max_output, 5)
        pooled = detkernels.roi_align(features, rois, 7, self.spatial_scale, 2, aligned=True)
        return idx, cls, counts, pooled


def inputs(batch: int = 2, n: int = 64, classes: int = 3, size: int = 64, seed: int = 0) -> tuple[Tensor, ...]:
    """Random valid boxes (x1 < x2, y1 < y2) in a ``size`` image, scores in [0, 1), features at
    stride 4."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, n, 2, generator=g) * (size - 8)
    wh = torch.rand(batch, n, 2, generator=g) * 24 + 2
    boxes = torch.cat([xy, xy + wh], 2)
    scores = torch.rand(batch, n, classes, generator=g)
    features = torch.rand(batch, 8, size // 4, size // 4, generator=g)
    return boxes, scores, features


def export(model: nn.Module, args: tuple[Tensor, ...], path: str, exporter: str = "dynamo") -> str:
    """``torch.onnx.export`` with the chosen exporter (opset 18), checked by ``onnx.checker``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' deprecation and tracer notes
        torch.onnx.export(model, args, path, dynamo=EXPORTERS[exporter], opset_version=18)
    onnx.checker.check_model(onnx.load(path))
    return path


def run(path: str, args: tuple[Tensor, ...]) -> list[np.ndarray]:
    """The ONNX model in ONNX Runtime (CPU), on ``args``."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {k: a.numpy() for k, a in zip(names, args)})


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exporter", default="dynamo", choices=sorted(EXPORTERS))
    p.add_argument("--out", default="detector.onnx", help="where to write the ONNX model")
    a = p.parse_args(argv)

    model, args = DetectionTail().eval(), inputs()
    path = export(model, args, a.out, a.exporter)
    with torch.no_grad():
        want = [t.numpy() for t in model(*args)]
    got = run(path, args)
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    equal = all(w.dtype == g.dtype and w.shape == g.shape and w.tobytes() == g.tobytes() for w, g in zip(want, got))
    result = {"path": path, "exporter": a.exporter, "onnx_ops": ops, "kept_per_image": want[2].tolist(),
              "onnxruntime_equal": equal}
    for k, v in result.items():
        print(f"{k}: {v}")
    return result


if __name__ == "__main__":
    main()
