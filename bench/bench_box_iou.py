"""box_iou benchmarks: an N x N IoU matrix vs N, and vs dtype."""
import pytest

from conftest import DEFAULT_BOXES, DTYPES, IOU_BOX_COUNTS, params, run


@pytest.mark.parametrize("device,p,label", params("box_iou", "N", IOU_BOX_COUNTS))
def test_box_iou_boxes(benchmark, device, p, label):
    run(benchmark, "box_iou", device, p, label, "N")


@pytest.mark.parametrize("device,p,label", params("box_iou", "dtype", DTYPES, N=DEFAULT_BOXES))
def test_box_iou_dtype(benchmark, device, p, label):
    run(benchmark, "box_iou", device, p, label, "dtype")
