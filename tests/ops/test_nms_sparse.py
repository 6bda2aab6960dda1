"""The pruned CPU NMS path (csrc/ops/nms/nms_sparse.cpp, issue 16): forced on, it is byte-equal to
the reference and to the plain path on every input family, dtype and threshold (including the
negative and NaN thresholds where it must hand over to the plain path), for nms, batched_nms and
multi_image_nms; a hypothesis test checks pruned == plain on arbitrary bit patterns; and the
automatic rule gives the same bytes at sizes where it picks the pruned path."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import detkernels
from detkernels import _C
from detkernels.bench import data
from detkernels.reference import nms as R

from _helpers import assert_bytes_equal
from _nms_families import batch
from families import FAMILIES, make

PLAIN, PRUNED = 1, 2  # NmsPath (nms_sparse.h)
THRESHOLDS = (0.0, -0.0, 0.3, 0.5, 1.0, 1.5, -0.1, float("nan"), float("inf"))


@pytest.fixture
def path():
    """Set the CPU NMS path for the test; the automatic rule is restored afterwards."""
    def set_path(p):
        _C.testing.nms_set_path(p)
    yield set_path
    _C.testing.nms_set_path(0)


def _both(fn, path):
    """fn() on the plain and on the pruned path."""
    path(PLAIN)
    plain = np.asarray(fn())
    path(PRUNED)
    return plain, np.asarray(fn())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_pruned_nms_equals_reference(family, dtype, rng, path):
    for n in (0, 1, 2, 65, 700):
        b, s = make(family, rng, n, "float32" if dtype == "float16" else dtype)
        with np.errstate(over="ignore"):  # float16 is computed in float32 (docs/SPEC.md §1.5)
            b, s = b.astype(dtype), s.astype(dtype)
        for thr in THRESHOLDS:
            want = R.nms(b, s, thr)
            plain, pruned = _both(lambda b=b, s=s, thr=thr: detkernels.nms(b, s, thr, backend="native"), path)
            assert_bytes_equal(pruned, want, f"pruned n={n} thr={thr}")
            assert_bytes_equal(plain, want, f"plain n={n} thr={thr}")


def test_pruned_bfloat16(rng, path, torch):
    """bfloat16 is computed in float32 (docs/SPEC.md §1.5): the pruned path sees float32."""
    b, s = make("uniform", rng, 500, "float32")
    tb, ts = torch.from_numpy(b).bfloat16(), torch.from_numpy(s).bfloat16()
    want = R.nms(tb.float().numpy(), ts.float().numpy(), 0.5)
    plain, pruned = _both(lambda: detkernels.nms(tb, ts, 0.5, backend="native").numpy(), path)
    assert_bytes_equal(pruned, want)
    assert_bytes_equal(plain, want)


@pytest.mark.parametrize("family", ["uniform", "clustered", "degenerate", "nonfinite", "huge"])
def test_pruned_batched_nms(family, rng, path):
    b, s = make(family, rng, 600, "float32")
    c = rng.integers(0, 3, 600)
    for thr in (0.0, 0.5, -0.1):
        plain, pruned = _both(lambda thr=thr: detkernels.batched_nms(b, s, c, thr, backend="native"), path)
        assert_bytes_equal(pruned, R.batched_nms(b, s, c, thr), f"thr={thr}")
        assert_bytes_equal(plain, pruned)


@pytest.mark.parametrize("family", ["uniform", "clusters", "degenerate", "nonfinite", "at_threshold"])
def test_pruned_multi_image_nms(family, path):
    boxes, scores, classes = batch(family, 1, 2, 300, 0)
    for C, idxs in ((0, None), (0, classes)):
        want = R.multi_image_nms(boxes, scores, 0.5, 200, idxs=idxs)
        path(PRUNED)
        got = detkernels.multi_image_nms(boxes, scores, 0.5, 200, idxs=idxs, backend="native")
        for g, w in zip(got, want):
            if w is not None:
                assert_bytes_equal(np.asarray(g), w, family)


def _corner_cases():
    """(dtype, boxes, scores, threshold) of the index corner cases: 3000 sparse boxes plus the
    special ones, which go first."""
    rng = np.random.default_rng(7)
    small = data.large_nms_boxes(rng, 3000, "sparse")[0]
    rows = [small, [[0, 0, 1e5, 1e5]], [[1e30, 1e30, 1e30 + 1e15, 1e30 + 1e15]],
            [[-1e30, 5, -1e30 + 1e15, 6]], [[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20]],
            [[1e-310, 1e-310, 2e-310, 2e-310], [1.5e-310, 1.5e-310, 2.5e-310, 2.5e-310]],
            [[-1e300, -1e300, 1e300, 1e300]], [[0, 0, np.inf, 50], [-np.inf, 0, 30, 30], [np.nan, 0, 9, 9]]]
    b = np.concatenate([np.asarray(r, np.float64) for r in rows])
    s = rng.random(b.shape[0])
    s[3000:] = 2.0 - np.arange(b.shape[0] - 3000) * 1e-3
    for dtype in ("float64", "float32"):
        with np.errstate(over="ignore"):  # in float32 the 1e300 box becomes a +-inf one
            bb, ss = b.astype(dtype), s.astype(dtype)
        for thr in (0.0, 1e-9, 0.5):
            yield dtype, bb, ss, thr


def test_index_corner_cases(path):
    """Boxes the index must not lose: a huge box over many small ones (wider than a level can
    query), boxes far apart (hashed cells), touching edges (w = 0: never suppress), subnormal
    sizes, boxes larger than every level, and +-inf/NaN edges mixed with regular boxes."""
    for dtype, bb, ss, thr in _corner_cases():
        plain, pruned = _both(lambda bb=bb, ss=ss, thr=thr: detkernels.nms(bb, ss, thr, backend="native"), path)
        assert_bytes_equal(pruned, plain, f"{dtype} thr={thr}")
        assert_bytes_equal(pruned, R.nms(bb, ss, thr), f"{dtype} thr={thr} reference")


@pytest.mark.parametrize("dist", data.LARGE_DISTS)
def test_rule_path_equals_plain(dist, path):
    """Sizes where the automatic rule runs (>= 4096 boxes per segment): same bytes as plain."""
    rng = np.random.default_rng(3)
    b, s = data.large_nms_boxes(rng, 12000, dist)
    b, s = b.astype(np.float32), s.astype(np.float32)
    path(PLAIN)
    want = np.asarray(detkernels.nms(b, s, 0.5))
    path(0)
    assert_bytes_equal(np.asarray(detkernels.nms(b, s, 0.5)), want, dist)
    c = rng.integers(0, 2, b.shape[0])
    path(PLAIN)
    want = np.asarray(detkernels.batched_nms(b, s, c, 0.5))
    path(0)
    assert_bytes_equal(np.asarray(detkernels.batched_nms(b, s, c, 0.5)), want, f"{dist} batched")


def _coords(dtype, max_n):
    width = np.dtype(dtype).itemsize * 8
    anything = st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True)
    grid = st.integers(-4, 12).map(float)  # many shared edges, exact IoUs, zero and inverted widths
    return hnp.arrays(dtype, st.tuples(st.integers(0, max_n), st.just(4)),
                      elements=st.one_of(grid, grid, grid, anything))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(data_=st.data(), dtype=st.sampled_from(["float32", "float64"]),
       thr=st.sampled_from([0.0, 0.1, 0.5, 0.75, 1.0, -0.0, -0.5, float("nan")]))
def test_pruned_equals_plain_property(data_, dtype, thr):
    b = data_.draw(_coords(dtype, 60))
    n = b.shape[0]
    s = data_.draw(hnp.arrays(dtype, (n,), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, np.nan, -np.inf])))
    try:
        _C.testing.nms_set_path(PLAIN)
        plain = np.asarray(detkernels.nms(b, s, thr, backend="native"))
        _C.testing.nms_set_path(PRUNED)
        pruned = np.asarray(detkernels.nms(b, s, thr, backend="native"))
    finally:
        _C.testing.nms_set_path(0)
    assert_bytes_equal(pruned, plain)
    assert_bytes_equal(pruned, R.nms(b, s, thr))


# ---- the numba CPU backend's pruned path (numba/cpu.py: nms_sparse_segment, NMS_PATH) -------------

@pytest.fixture
def numba_path(monkeypatch):
    """Set numba/cpu.py's NMS_PATH for the test (read at each call; the rule is restored after)."""
    pytest.importorskip("numba")
    from detkernels.backends.numba import cpu

    return lambda p: monkeypatch.setattr(cpu, "NMS_PATH", p)


def _numba_both(fn, numba_path):
    numba_path(PLAIN)
    plain = np.asarray(fn())
    numba_path(PRUNED)
    return plain, np.asarray(fn())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numba_pruned_nms_equals_reference(family, dtype, rng, numba_path):
    for n in (0, 1, 2, 65, 700):
        b, s = make(family, rng, n, dtype)
        for thr in THRESHOLDS:
            want = R.nms(b, s, thr)
            plain, pruned = _numba_both(lambda b=b, s=s, thr=thr: detkernels.nms(b, s, thr, backend="numba"),
                                        numba_path)
            assert_bytes_equal(pruned, want, f"pruned n={n} thr={thr}")
            assert_bytes_equal(plain, want, f"plain n={n} thr={thr}")


@pytest.mark.parametrize("family", ["uniform", "clustered", "degenerate", "nonfinite", "huge"])
def test_numba_pruned_batched_nms(family, rng, numba_path):
    b, s = make(family, rng, 600, "float32")
    c = rng.integers(0, 3, 600)
    for thr in (0.0, 0.5, -0.1):
        plain, pruned = _numba_both(lambda thr=thr: detkernels.batched_nms(b, s, c, thr, backend="numba"),
                                    numba_path)
        assert_bytes_equal(pruned, R.batched_nms(b, s, c, thr), f"thr={thr}")
        assert_bytes_equal(plain, pruned)


@pytest.mark.parametrize("family", ["uniform", "clusters", "degenerate", "nonfinite", "at_threshold"])
def test_numba_pruned_multi_image_nms(family, numba_path):
    """multi_image_nms runs its (image, class) segments on numba's threads (nms_parallel_kernel)."""
    boxes, scores, classes = batch(family, 1, 3, 300, 0)
    for idxs in (None, classes):
        want = R.multi_image_nms(boxes, scores, 0.5, 200, idxs=idxs)
        numba_path(PRUNED)
        got = detkernels.multi_image_nms(boxes, scores, 0.5, 200, idxs=idxs, backend="numba")
        for g, w in zip(got, want):
            if w is not None:
                assert_bytes_equal(np.asarray(g), w, family)


def test_numba_index_corner_cases(numba_path):
    """test_index_corner_cases on the numba grid: a huge box over small ones (wide), far-flung
    boxes (the grid coarsened or clamped), touching edges, subnormal sizes, +-inf/NaN edges."""
    for dtype, bb, ss, thr in _corner_cases():
        plain, pruned = _numba_both(lambda bb=bb, ss=ss, thr=thr: detkernels.nms(bb, ss, thr, backend="numba"),
                                    numba_path)
        assert_bytes_equal(pruned, plain, f"{dtype} thr={thr}")
        assert_bytes_equal(pruned, R.nms(bb, ss, thr), f"{dtype} thr={thr} reference")


@pytest.mark.parametrize("dist", data.LARGE_DISTS)
def test_numba_rule_path_equals_plain(dist, numba_path):
    """At 12 000 boxes the automatic rule runs: the same bytes as plain, for nms and batched_nms;
    and the rule's choice itself: pruned for the sparse and clustered canvases, plain for the one
    big cluster (nms_sparse_segment returns whether it ran)."""
    from detkernels.backends.numba import cpu

    rng = np.random.default_rng(3)
    b, s = data.large_nms_boxes(rng, 12000, dist)
    b, s = b.astype(np.float32), s.astype(np.float32)
    numba_path(PLAIN)
    want = np.asarray(detkernels.nms(b, s, 0.5, backend="numba"))
    numba_path(0)
    assert_bytes_equal(np.asarray(detkernels.nms(b, s, 0.5, backend="numba")), want, dist)
    c = rng.integers(0, 2, b.shape[0])
    numba_path(PLAIN)
    want = np.asarray(detkernels.batched_nms(b, s, c, 0.5, backend="numba"))
    numba_path(0)
    assert_bytes_equal(np.asarray(detkernels.batched_nms(b, s, c, 0.5, backend="numba")), want, f"{dist} batched")
    k = cpu.kernels("float32")
    cols = [np.ascontiguousarray(b[:, i]) for i in range(4)]
    ar = (cols[2] - cols[0]) * (cols[3] - cols[1])
    keep = np.zeros(b.shape[0], np.uint8)
    ran = k.nms_sparse_segment(*cols, ar, 0, b.shape[0], np.float32(0.5), keep, 0)
    assert ran == (dist != "one_cluster"), dist
    assert not k.nms_sparse_segment(*cols, ar, 0, 4095, np.float32(0.5), keep, 0)  # below 4096: plain


@settings(max_examples=100, deadline=None, derandomize=True)
@given(data_=st.data(), dtype=st.sampled_from(["float32", "float64"]),
       thr=st.sampled_from([0.0, 0.1, 0.5, 0.75, 1.0, -0.0, -0.5, float("nan")]))
def test_numba_pruned_equals_plain_property(data_, dtype, thr):
    pytest.importorskip("numba")
    from detkernels.backends.numba import cpu

    b = data_.draw(_coords(dtype, 60))
    n = b.shape[0]
    s = data_.draw(hnp.arrays(dtype, (n,), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, np.nan, -np.inf])))
    saved = cpu.NMS_PATH
    try:
        cpu.NMS_PATH = PLAIN
        plain = np.asarray(detkernels.nms(b, s, thr, backend="numba"))
        cpu.NMS_PATH = PRUNED
        pruned = np.asarray(detkernels.nms(b, s, thr, backend="numba"))
    finally:
        cpu.NMS_PATH = saved
    assert_bytes_equal(pruned, plain)
    assert_bytes_equal(pruned, R.nms(b, s, thr))
