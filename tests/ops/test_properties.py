"""Property-based tests (hypothesis): arbitrary float32/float64 bit patterns -- NaN, inf,
subnormals, -0.0, huge and inverted boxes -- through the native kernels, byte-equal to the
reference; plus metamorphic properties of the reference itself."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import detkernels
from detkernels.reference import box_iou as R
from detkernels.reference import nms as RN

from _helpers import assert_bytes_equal

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True)


def _boxes(dtype, max_n=40):
    return hnp.arrays(dtype, st.tuples(st.integers(0, max_n), st.just(4)),
                      elements=st.floats(width=np.dtype(dtype).itemsize * 8, allow_nan=True,
                                         allow_infinity=True, allow_subnormal=True))


def _small_ints(dtype, max_n=40):
    """Small integer coordinates: many exact ties, coincident edges and exact-threshold IoUs."""
    return hnp.arrays(dtype, st.tuples(st.integers(0, max_n), st.just(4)), elements=st.integers(-3, 6))


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(["float32", "float64"]),
       kind=st.sampled_from(["box_iou", "generalized_box_iou", "distance_box_iou", "complete_box_iou"]),
       small=st.booleans())
def test_iou_any_floats(data, dtype, kind, small):
    gen = _small_ints if small else _boxes
    b1, b2 = data.draw(gen(dtype)), data.draw(gen(dtype))
    assert_bytes_equal(getattr(detkernels, kind)(b1, b2), getattr(R, kind)(b1, b2), kind)


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(["float32", "float64"]), small=st.booleans(),
       thr=st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 0.7, 1.0, -0.5, float("nan"), float("inf")]),
       classes=st.integers(0, 4))
def test_nms_any_floats(data, dtype, small, thr, classes):
    b = data.draw((_small_ints if small else _boxes)(dtype))
    n = b.shape[0]
    s = data.draw(hnp.arrays(dtype, (n,), elements=st.sampled_from([0.0, -0.0, 0.5, 1.0, np.nan, np.inf, -np.inf])
                             if small else st.floats(width=np.dtype(dtype).itemsize * 8)))
    if classes:
        c = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, classes)))
        assert_bytes_equal(detkernels.batched_nms(b, s, c, thr), RN.batched_nms(b, s, c, thr))
    else:
        assert_bytes_equal(detkernels.nms(b, s, thr), RN.nms(b, s, thr))


@SETTINGS
@given(data=st.data())
def test_reference_metamorphic(data):
    """IoU is symmetric and invariant under translation by a power of two (exact in float);
    scaling by 1/2 (exact) keeps NMS results (D2-style half-size test)."""
    b1 = data.draw(_small_ints("float64")) * 8
    b2 = data.draw(_small_ints("float64")) * 8
    with np.errstate(all="ignore"):
        iou = R.box_iou(b1, b2)
        assert_bytes_equal(R.box_iou(b2, b1), iou.T)
        assert_bytes_equal(R.box_iou(b1 + 64, b2 + 64), iou)
    s = np.linspace(1, 0, b1.shape[0])
    assert_bytes_equal(RN.nms(b1 / 2, s, 0.5), RN.nms(b1, s, 0.5))
