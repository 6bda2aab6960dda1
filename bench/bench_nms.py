"""NMS benchmarks: single-class NMS vs N; batched (per-class) NMS vs N and vs the number of
classes; the YOLO post-process (conf -> top-k -> batched NMS) vs top-k and vs images per batch."""
import pytest

from conftest import (BATCHED_BOX_COUNTS, BOX_COUNTS, CLASS_COUNTS, DEFAULT_BATCHED_BOXES,
                      DEFAULT_BOXES, DEFAULT_CLASSES, DEFAULT_TOPK, DTYPES, IMAGE_COUNTS,
                      IOU_THRESHOLD, TOPK_COUNTS, params, run)


@pytest.mark.parametrize("device,p,label", params("nms", "N", BOX_COUNTS, iou=IOU_THRESHOLD))
def test_nms_boxes(benchmark, device, p, label):
    run(benchmark, "nms", device, p, label, "N")


@pytest.mark.parametrize("device,p,label", params("nms", "dtype", DTYPES, N=DEFAULT_BOXES))
def test_nms_dtype(benchmark, device, p, label):
    run(benchmark, "nms", device, p, label, "dtype")


@pytest.mark.parametrize("device,p,label", params("batched_nms", "N", BATCHED_BOX_COUNTS, classes=DEFAULT_CLASSES))
def test_batched_nms_boxes(benchmark, device, p, label):
    run(benchmark, "batched_nms", device, p, label, "N")


@pytest.mark.parametrize("device,p,label",
                         params("batched_nms", "classes", CLASS_COUNTS, N=DEFAULT_BATCHED_BOXES))
def test_batched_nms_classes(benchmark, device, p, label):
    run(benchmark, "batched_nms", device, p, label, "classes")


@pytest.mark.parametrize("device,p,label", params("detect", "k", TOPK_COUNTS))
def test_detect_topk(benchmark, device, p, label):
    run(benchmark, "detect", device, p, label, "k")


@pytest.mark.parametrize("device,p,label", params("detect", "B", IMAGE_COUNTS, k=DEFAULT_TOPK))
def test_detect_images(benchmark, device, p, label):
    run(benchmark, "detect", device, p, label, "B")
