"""roi_align benchmarks (C=256 stride-8 feature map): vs the number of RoIs P, and vs the output
size (7x7, 14x14). Skipped, with the reason, while this build of detkernels has no roi_align."""
import pytest

from conftest import DEFAULT_ROIS, DTYPES, ROI_COUNTS, ROI_OUTPUT_SIZES, params, run
from detkernels.bench.scenarios import FAMILIES

_why = FAMILIES["roi_align"].available()
if _why is not None:
    pytest.skip(_why, allow_module_level=True)


@pytest.mark.parametrize("device,p,label", params("roi_align", "P", ROI_COUNTS))
def test_roi_align_rois(benchmark, device, p, label):
    run(benchmark, "roi_align", device, p, label, "P")


@pytest.mark.parametrize("device,p,label", params("roi_align", "out", ROI_OUTPUT_SIZES, P=DEFAULT_ROIS))
def test_roi_align_output_size(benchmark, device, p, label):
    run(benchmark, "roi_align", device, p, label, "out")


@pytest.mark.parametrize("device,p,label", params("roi_align", "dtype", DTYPES, P=DEFAULT_ROIS))
def test_roi_align_dtype(benchmark, device, p, label):
    run(benchmark, "roi_align", device, p, label, "dtype")
