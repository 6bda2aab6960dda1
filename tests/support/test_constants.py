"""detkernels/_constants.py (the Python home of the codes, caps and small rules shared with the
compiled core) agrees with the C++ it mirrors, as exported by detkernels._C: the dtype codes
(common/host_device.h), the IoU format and kind codes (box_iou.h), RoIAlign's grid cap
(roi_align.h kRoiMaxGrid), the NMS mask word (nms_bitmask.h kNmsWordBits), the NMS tile planning
(nms_tile_rows) and the NMS threshold rounding (nms.h nms_threshold)."""
from __future__ import annotations

import numpy as np
import pytest

from detkernels import _constants as K
from detkernels.backends.native import _C

pytestmark = pytest.mark.skipif(_C is None, reason="detkernels._C is not built")


@pytest.fixture(scope="module")
def cpp():
    return _C.constants()


def test_codes(cpp):
    assert cpp["dtype_codes"] == K.DTYPE_CODES
    assert cpp["fmt_codes"] == K.FMT_CODES
    assert cpp["kind_codes"] == K.KIND_CODES


def test_caps(cpp):
    assert cpp["roi_max_grid"] == K.MAX_GRID
    assert K.MAX_SAMPLING_RATIO ** 2 == K.MAX_GRID
    assert cpp["nms_word_bits"] == 64  # _constants.nms_tile_rows and NMS_MASK_BYTES assume it


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000, 4096, 100_000, 64 * 65535 + 1, 10**8])
def test_nms_tile_rows(n):
    for width in (0, 1, 2, 3, 17, 1563):
        for cap in (0, 1, 512, 8 * 64, 1 << 20, 256 << 20, 1 << 40):
            want = _C.testing.nms_tile_rows(n, width, cap)
            assert K.nms_tile_rows(n, width, cap) == want, (n, width, cap)
            assert want % 64 == 0


def test_nms_threshold():
    rng = np.random.default_rng(0)
    thresholds = [0.0, -0.0, 0.5, 0.3, 0.7, 1.0, 1 / 3, 2.0**-149, -1e-40, 3e38, -3e38, np.inf,
                  -np.inf, *rng.random(200), *np.nextafter(np.float32(0.5), [0, 1]).astype(float)]
    for dtype, code in (("float32", K.DTYPE_CODES["float32"]), ("float64", K.DTYPE_CODES["float64"])):
        for thr in thresholds:
            got = K.nms_threshold(float(thr), dtype)
            assert got.dtype == np.dtype(dtype)
            want = _C.testing.nms_threshold(float(thr), code)
            assert float(got) == want or (np.isnan(float(got)) and np.isnan(want)), (dtype, thr)


def test_nms_threshold_rejects_other_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        _C.testing.nms_threshold(0.5, K.DTYPE_CODES["int32"])


def test_test_only_entries_live_in_testing():
    """The emulations, the thread-pool probe and the tile planning are _C.testing's, not _C's."""
    for name in ("parallel_probe", "nms_multi_emulate_cpu", "roi_align_forward_emulate_cpu",
                 "roi_align_backward_emulate_cpu", "roi_pool_forward_emulate_cpu",
                 "roi_pool_backward_emulate_cpu", "nms_tile_rows", "nms_threshold"):
        assert hasattr(_C.testing, name), name
        assert not hasattr(_C, name) and not hasattr(_C, "_" + name), name
