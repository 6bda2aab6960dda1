"""The native CPU NMS's ordering (issue 21): a radix sort of integer score keys from 256 boxes up
(a comparison sort below), a counting sort of dense class ids, a stable sort of sparse ones. Every
path is compared byte for byte (order included) with the NumPy reference on scores with heavy ties,
NaN, -0/+0 and +-inf, and on dense, negative, sparse and extreme class ids; and the eager torch fast
path of batched_nms agrees with the general path (and falls back for what it does not take)."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels.reference import nms as R

from _helpers import assert_bytes_equal

# Around the comparison/radix switch (kRadixMin = 256 in nms_cpu.cpp), and a few radix passes.
SIZES = (1, 7, 255, 256, 257, 3000)
I64 = np.iinfo(np.int64)


def _inputs(rng, n, dtype):
    xy = rng.uniform(0, 60, (n, 2))
    wh = rng.uniform(0, 25, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(dtype)
    # Few distinct values (ties), both zeros, infinities, NaN; tiny and huge magnitudes.
    pool = np.array([0.5, 0.25, -0.0, 0.0, np.inf, -np.inf, np.nan, -1e-30, 1e30, 0.75, -3.0], dtype)
    scores = pool[rng.integers(0, pool.size, n)]
    fresh = rng.random(n) < 0.3  # and some distinct values
    scores[fresh] = rng.random(int(fresh.sum())).astype(dtype)
    return boxes, scores


def _ids(rng, n, kind):
    if kind == "dense":
        return rng.integers(0, 80, n)
    if kind == "negative":
        return rng.integers(-5, 3, n)
    if kind == "sparse":
        return rng.choice(np.array([I64.min, -(10**15), 7, 10**12, I64.max]), n)
    return np.full(n, 3, np.int64)  # one class


def _eq(a, e, what):
    assert_bytes_equal(np.asarray(a), np.asarray(e, dtype=np.int64), what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ids", ["dense", "negative", "sparse", "one"])
def test_batched_order_matches_reference(dtype, ids):
    rng = np.random.default_rng(21)
    for n in SIZES:
        b, s = _inputs(rng, n, dtype)
        c = _ids(rng, n, ids).astype(np.int64)
        for thr in (0.0, 0.5):
            _eq(detkernels.batched_nms(b, s, c, thr, backend="native"), R.batched_nms(b, s, c, thr),
                f"n={n} ids={ids} thr={thr}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_single_class_order_matches_reference(dtype):
    rng = np.random.default_rng(22)
    for n in SIZES:
        b, s = _inputs(rng, n, dtype)
        _eq(detkernels.nms(b, s, 0.5, backend="native"), R.nms(b, s, 0.5), f"n={n}")


def test_all_scores_tied_keep_index_order():
    # One key for every box: no radix pass runs (every digit equal), the index order stays.
    n = 600
    b = np.tile(np.array([[0, 0, 1, 1]], np.float32), (n, 1)) + np.arange(n, dtype=np.float32)[:, None] * 2
    s = np.full(n, 0.5, np.float32)
    _eq(detkernels.batched_nms(b, s, np.arange(n) % 3, 0.5, backend="native"), np.arange(n), "ties")
    s[::2] = -0.0
    s[1::2] = 0.0
    _eq(detkernels.nms(b, s, 0.5, backend="native"), np.arange(n), "-0 ties +0")


def test_torch_fast_path_agrees_and_falls_back():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(23)
    b, s = _inputs(rng, 1000, "float32")
    c = rng.integers(0, 80, 1000)
    bt, st, ct = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(c)
    want = R.batched_nms(b, s, c, 0.5)
    _eq(detkernels.batched_nms(bt, st, ct, 0.5).numpy(), want, "fast path")
    _eq(detkernels.batched_nms(bt, st, ct, 0.5, backend="native").numpy(), want, "fast path, named backend")
    # Not taken: int32 and float ids, non-contiguous inputs; the general path gives the same.
    _eq(detkernels.batched_nms(bt, st, ct.int(), 0.5).numpy(), want, "int32 ids")
    _eq(detkernels.batched_nms(bt, st, ct.double(), 0.5).numpy(), want, "float ids")
    bt2 = torch.from_numpy(np.asfortranarray(b))
    _eq(detkernels.batched_nms(bt2, st, ct, 0.5).numpy(), want, "non-contiguous boxes")
    # Errors still come from the general path's checks.
    with pytest.raises(RuntimeError, match="idxs"):
        detkernels.batched_nms(bt, st, ct[:10], 0.5)
