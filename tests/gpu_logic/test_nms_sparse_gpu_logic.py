"""The sparse CUDA NMS path (csrc/ops/nms/nms_sparse_gpu.h, issue 16), without a GPU.

nms_emulate.cpp runs its steps (Z-order blocks, culled block pairs, CSR in-edges, rounds, the
sequential pass, the device fallback flags) sequentially on the CPU, inside the same emulated
pipeline as the bitmask path. Forced on with _C.testing.nms_gpu_set_path, it must equal the NumPy
reference byte for byte on every NMS family (degenerate, NaN/inf, ties, IoUs at the threshold,
per-class, several images), on large sparse / clustered inputs, and the plain bitmask path on
arbitrary inputs (hypothesis). Each test also checks which way the emulated call went
(_C.testing.nms_gpu_emulated_outcome), so a test of the sparse path cannot pass on the plain one.
Nothing here runs on a GPU: the kernels are compiled (nvcc, NVRTC), not run.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detkernels.backends import native
from detkernels.bench import data
from detkernels.reference import nms as ref

from _helpers import assert_bytes_equal
from _nms_families import FAMILIES, batch
from _nms_emulation import check as _check, emulate as _emulate

pytestmark = pytest.mark.skipif(native._C is None, reason="detkernels._C not built")

AUTO, PLAIN, PRUNED = 0, 1, 2  # NmsPath (nms_sparse.h)
O_PLAIN, O_FALLBACK, O_SPARSE, O_FINISHED = 0, 1, 2, 3  # NmsOutcome (nms_sparse_gpu.h)
THRESHOLDS = (0.5, 0.3, 0.7, 0.0, -0.0, 1.0, 1.5, -0.1, float("nan"))
# Default mask tiles hold many edges; a 64-row tile holds few (the capacity fallback).
BIG = {"scan_threads": 3}


@pytest.fixture
def gpu_path():
    """Force the emulated GPU NMS path (and its round count); auto is restored afterwards."""
    C = native._C.testing

    def set_path(p, rounds=0):
        C.nms_gpu_set_path(p, rounds)
    yield set_path
    C.nms_gpu_set_path(AUTO, 0)


def _outcome() -> int:
    return native._C.testing.nms_gpu_emulated_outcome()




def _expected_outcome(b, thr, valid=None):
    """What the forced sparse path must do: plain for thr not >= 0, fallback for a valid box with a
    non-finite coordinate, else sparse (or its capacity fallback, which the caller allows)."""
    if not (thr >= 0):
        return {O_PLAIN}
    v = np.ones(b.shape[:-1], bool) if valid is None else valid
    if not np.isfinite(b[v]).all():
        return {O_FALLBACK}
    return {O_SPARSE, O_FINISHED, O_FALLBACK}


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sparse_single_image_equals_reference(family, dtype, gpu_path):
    """B = 1 (nms), every threshold; rounds 64 (default) and 1 (the sequential pass finishes)."""
    boxes, scores, _ = batch(family, 0, 1, 301)
    b, s = boxes[0].astype(dtype), scores[0].astype(dtype)
    for rounds in (0, 1):
        gpu_path(PRUNED, rounds)
        for thr in THRESHOLDS:
            want = ref.nms(b, s, thr)
            idx, _, counts = _emulate(b[None], s[None], None, thr, b.shape[0], **BIG)
            assert _outcome() in _expected_outcome(b, thr), (thr, _outcome())
            assert counts[0] == want.size, f"{family} thr={thr} rounds={rounds}"
            assert_bytes_equal(idx[0, :counts[0]], want, f"{family} thr={thr} rounds={rounds}")
            assert (idx[0, counts[0]:] == -1).all()


def test_the_sparse_path_really_runs(gpu_path):
    """On finite families the forced path completes (not a fallback): rounds, and with one round
    the sequential pass; the plain and auto (small: plain) settings never take it."""
    boxes, scores, _ = batch("uniform", 1, 1, 400)
    b, s = boxes[0].astype(np.float32), scores[0].astype(np.float32)
    want = ref.nms(b, s, 0.5)
    for p, rounds, outcome in ((PRUNED, 0, O_SPARSE), (PRUNED, 1, O_FINISHED), (PLAIN, 0, O_PLAIN),
                               (AUTO, 0, O_PLAIN)):
        gpu_path(p, rounds)
        idx, _, counts = _emulate(b[None], s[None], None, 0.5, 400, **BIG)
        assert _outcome() == outcome, (p, rounds, _outcome())
        assert_bytes_equal(idx[0, :counts[0]], want, f"path {p} rounds {rounds}")


def test_capacity_fallback(gpu_path):
    """One cluster (every pair overlaps) with 64-row mask tiles: more edges than the workspace
    holds, so the device flag hands over to the bitmask path, which must see untouched inputs."""
    gpu_path(PRUNED)
    b, s = data.large_nms_boxes(np.random.default_rng(2), 700, "one_cluster")
    b, s = b.astype(np.float32), s.astype(np.float32)
    idx, _, counts = _emulate(b[None], s[None], None, 0.5, 700, tile_rows=64, scan_threads=5)
    assert _outcome() == O_FALLBACK
    assert_bytes_equal(idx[0, :counts[0]], ref.nms(b, s, 0.5), "one cluster, fallback")


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sparse_per_class_equals_reference(family, dtype, gpu_path):
    gpu_path(PRUNED)
    boxes, scores, classes = batch(family, 7, 1, 257)
    b, s, c = boxes[0].astype(dtype), scores[0].astype(dtype), classes[0]
    for thr in (0.5, 0.3, 0.0):
        want = ref.batched_nms(b, s, c, thr)
        idx, _, counts = _emulate(b[None], s[None], c[None], thr, b.shape[0], **BIG)
        assert _outcome() in _expected_outcome(b, thr)
        assert_bytes_equal(idx[0, :counts[0]], want, f"{family} thr={thr}")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("C,with_idxs", [(0, False), (0, True), (3, False)])
@pytest.mark.parametrize("sthr", [None, 0.25])
def test_sparse_multi_image_equals_reference(family, C, with_idxs, sthr, gpu_path):
    """Several images (segments never cross them), score filter (invalid candidates start
    removed; their NaN boxes must not trigger the fallback), per-class scores, max_output."""
    gpu_path(PRUNED)
    boxes, scores, classes = batch(family, 3, 3, 150, C)
    b, s = boxes.astype(np.float32), scores.astype(np.float32)
    c = classes if with_idxs else None
    for K in (0, 40, 500):
        want = ref.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
        _check(_emulate(b, s, c, 0.5, K, sthr, **BIG), want, f"{family} C={C} K={K}")
        sc = s if C == 0 else s.max(axis=2)  # a box with any valid class score is looked at
        valid = np.ones(s.shape[:2], bool) if sthr is None else (sc.astype(np.float64) > sthr)
        assert _outcome() in _expected_outcome(b, 0.5, valid), _outcome()


@pytest.mark.parametrize("dist", ["sparse", "clustered"])
@pytest.mark.parametrize("dtype", (np.float32, np.float64))
def test_large_inputs_auto_rule(dist, dtype, gpu_path):
    """Issue 16's densities at N = 6000 (above the rule's 4096 per image): the automatic rule
    takes the sparse path and the result is the reference's; B = 2 images as well."""
    gpu_path(AUTO)
    rng = np.random.default_rng(5)
    b, s = data.large_nms_boxes(rng, 6000, dist)
    b, s = b.astype(dtype), s.astype(dtype)
    idx, _, counts = _emulate(b[None], s[None], None, 0.5, 6000)
    assert _outcome() == O_SPARSE, _outcome()
    assert_bytes_equal(idx[0, :counts[0]], ref.nms(b, s, 0.5), f"{dist}")
    b2, s2 = data.large_nms_boxes(rng, 6000, dist)
    bb = np.stack([b, b2.astype(dtype)])
    ss = np.stack([s, s2.astype(dtype)])
    want = ref.multi_image_nms(bb, ss, 0.5, 6000)
    _check(_emulate(bb, ss, None, 0.5, 6000), want, f"{dist} B=2")
    assert _outcome() == O_SPARSE


def test_one_cluster_auto_rule_keeps_the_bitmask(gpu_path):
    """The worst case for any spatial index: the density rule (device side) falls back."""
    gpu_path(AUTO)
    b, s = data.large_nms_boxes(np.random.default_rng(6), 4500, "one_cluster")
    b, s = b.astype(np.float32), s.astype(np.float32)
    idx, _, counts = _emulate(b[None], s[None], None, 0.5, 4500)
    assert _outcome() == O_FALLBACK
    assert_bytes_equal(idx[0, :counts[0]], ref.nms(b, s, 0.5), "one cluster")


def test_long_chain_needs_the_sequential_pass(gpu_path):
    """A staircase: box k overlaps box k+1 only, scores descending, so each decision waits for
    the previous one (a chain of N): the rounds cannot finish, the sequential pass must."""
    gpu_path(PRUNED)
    n = 300
    x = np.arange(n, dtype=np.float64) * 0.5
    b = np.stack([x, np.zeros(n), x + 1.0, np.ones(n)], 1)  # IoU(k, k+1) = 1/3
    s = np.linspace(1, 0.1, n)
    for thr in (0.3, 0.2):
        idx, _, counts = _emulate(b[None], s[None], None, thr, n, **BIG)
        assert _outcome() == O_FINISHED
        want = ref.nms(b, s, thr)
        assert want.size == (n + 1) // 2  # every other box
        assert_bytes_equal(idx[0, :counts[0]], want, f"chain thr={thr}")


_COORD = st.one_of(st.integers(-4, 12).map(float), st.sampled_from([0.5, -0.0, 1e30, 3.25]),
                   st.sampled_from([math.nan, math.inf, -math.inf]))


@settings(max_examples=60, deadline=None)
@given(boxes=hnp.arrays(np.float64, st.tuples(st.integers(1, 140), st.just(4)), elements=_COORD),
       data_=st.data())
def test_property_sparse_equals_plain(boxes, data_):
    """Arbitrary small-grid boxes (many overlaps, exact ties, inverted, huge, NaN/inf), tied
    scores, classes, a score filter: the emulated sparse path equals the emulated plain path and
    the reference."""
    C = native._C.testing
    n = boxes.shape[0]
    if data_.draw(st.booleans()):  # half the examples finite: the sparse path runs on them
        boxes = np.where(np.isfinite(boxes), boxes, 2.0)
    scores = data_.draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 0.25, 0.5, 1.0, math.nan])))
    classes = data_.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 2))) if data_.draw(st.booleans()) else None
    thr = data_.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    sthr = data_.draw(st.sampled_from([None, 0.3]))
    dtype = data_.draw(st.sampled_from([np.float32, np.float64]))
    with np.errstate(over="ignore"):
        b, s = boxes.astype(dtype)[None], scores.astype(dtype)[None]
    c = None if classes is None else classes[None]
    try:
        C.nms_gpu_set_path(PLAIN, 0)
        plain = _emulate(b, s, c, thr, n, sthr, **BIG)
        C.nms_gpu_set_path(PRUNED, data_.draw(st.sampled_from([0, 1, 2])))
        sparse = _emulate(b, s, c, thr, n, sthr, **BIG)
        outcome = _outcome()
    finally:
        C.nms_gpu_set_path(AUTO, 0)
    valid = np.ones(n, bool) if sthr is None else s[0].astype(np.float64) > sthr
    assert outcome in _expected_outcome(b[0], thr, valid), outcome
    _check(sparse, plain, "sparse vs plain")
    _check(sparse, ref.multi_image_nms(b, s, thr, n, idxs=c, score_threshold=sthr), "sparse vs reference")


def test_sparse_kernels_compile_with_nvrtc():
    """The CuPy backend's NVRTC source holds the sparse kernels (the very ones nvcc builds): they
    compile with the backend's float flags, and their PTX has no FMA, no approximate/FTZ op and,
    in the float32 instantiations, no float64 arithmetic. (Compiled, not run: no GPU here.)"""
    import re

    from detkernels.backends import cupy as CP

    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except Exception as e:
        pytest.skip(f"NVRTC is not usable here (pip install cuda-bindings nvidia-cuda-nvrtc): {e}")
    names = CP.nms_sparse_name_expressions()
    _, prog = nvrtc.nvrtcCreateProgram(CP.source().encode(), b"kernels.cu", 0, [], [])
    for n in names:
        nvrtc.nvrtcAddNameExpression(prog, n.encode())
    opts = [o.encode() for o in (*CP.nvrtc_options(), "--gpu-architecture=compute_90")]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    ptx = ptx.decode(errors="replace")
    starts = [(m.group(1), m.start()) for m in re.finditer(r"\.entry\s+(\w+)\s*\(", ptx)]
    bodies = {name: ptx[s:(starts[k + 1][1] if k + 1 < len(starts) else len(ptx))]
              for k, (name, s) in enumerate(starts)}
    for n in names:
        _, lowered = nvrtc.nvrtcGetLoweredName(prog, n.encode())
        lowered = lowered.decode() if isinstance(lowered, bytes) else lowered
        body = bodies[lowered]
        assert not re.search(r"\bfma\.", body), f"{n}: fused multiply-add"
        assert not re.search(r"\.(approx|full)\b|\.ftz\b", body), f"{n}: approximate/FTZ op"
        if "<float>" in n:
            f64 = [ln for ln in body.splitlines()
                   if re.search(r"\.f64\b", ln) and not ln.split()[0].startswith(".")]
            assert not f64, f"{n}: float64 instructions {f64[:3]}"


# ---- on a GPU (skipped here: no device was ever lent to these sessions) ---------------------------

def _cuda_devices() -> int:
    return native._C.cuda_device_count() if native.HAS_CUDA else 0


needs_gpu = pytest.mark.skipif(
    not _cuda_devices(), reason="no CUDA device here (the CPU emulation above covers the sparse "
    "path's steps); these run on any machine with a GPU and a CUDA build")


@needs_gpu
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gpu_sparse_equals_reference(family, gpu_path):
    """The real kernels, forced sparse (and with one round: the sequential pass), per-class and
    multi-image, against the reference."""
    import torch

    import detkernels as dk

    boxes, scores, classes = batch(family, 9, 2, 700)
    for rounds in (0, 1):
        gpu_path(PRUNED, rounds)
        for dtype in (np.float32, np.float64):
            b, s, c = boxes.astype(dtype), scores.astype(dtype), classes
            tb, ts, tc = (torch.from_numpy(x).cuda() for x in (b, s, c))
            for thr in (0.5, 0.0, -0.1):
                got = dk.nms(tb[0], ts[0], thr, backend="native")
                assert_bytes_equal(got, ref.nms(b[0], s[0], thr), f"nms thr={thr}")
                got = dk.batched_nms(tb[0], ts[0], tc[0], thr, backend="native")
                assert_bytes_equal(got, ref.batched_nms(b[0], s[0], c[0], thr), f"batched thr={thr}")
            idx, counts = dk.multi_image_nms(tb, ts, 0.5, 300, backend="native")
            want = ref.multi_image_nms(b, s, 0.5, 300)
            _check((idx, None, counts), want, "multi_image_nms")


@needs_gpu
@pytest.mark.parametrize("dist", ["sparse", "clustered", "one_cluster"])
def test_gpu_large_auto_and_graph_capture(dist, gpu_path):
    """N = 10^5 on the automatic rule, and nms_padded captured in a CUDA graph (no host sync on
    the sparse path either), against the reference."""
    import torch

    import detkernels as dk

    gpu_path(AUTO)
    b, s = data.large_nms_boxes(np.random.default_rng(8), 100_000, dist)
    b, s = b.astype(np.float32), s.astype(np.float32)
    want = ref.nms(b, s, 0.5)
    tb, ts = torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda()
    assert_bytes_equal(dk.nms(tb, ts, 0.5, backend="native"), want, dist)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        dk.nms_padded(tb, ts, 0.5, 1000)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_idx, g_count = dk.nms_padded(tb, ts, 0.5, 1000)
    graph.replay()
    torch.cuda.synchronize()
    w_idx, w_count = ref.nms_padded(b, s, 0.5, 1000)
    assert_bytes_equal(g_idx, w_idx, f"{dist} graph")
    assert int(g_count) == int(w_count)


# ---- the CuPy backend's launches of the same kernels (no GPU: argument types only) ---------------

def test_cupy_sparse_constants_are_the_header_ones():
    import re
    from pathlib import Path

    from detkernels.backends import cupy as CP

    h = (Path(__file__).resolve().parents[2] / "csrc/ops/nms/nms_sparse_gpu.h").read_text()
    for cname, py in (("kNmsSparseRounds", CP.SPARSE_ROUNDS),
                      ("kNmsSparseMinPerImage", CP.SPARSE_MIN_PER_IMAGE),
                      ("kNmsSparseMinEdgesPerCand", CP.SPARSE_MIN_EDGES_PER_CAND),
                      ("kNmsSparseReduceThreads", CP.SPARSE_REDUCE_THREADS)):
        m = re.search(rf"\b{cname}\s*=\s*(\d+)\s*;", h)
        assert m and int(m.group(1)) == py, cname


@pytest.mark.parametrize("path", [PRUNED, AUTO])
def test_cupy_sparse_launches_match_the_kernels(monkeypatch, path):
    """NumPy standing in for CuPy (test_cupy_sources' harness): with the sparse path on, the CuPy
    backend launches every sparse kernel with exactly its PTX argument types (pointers, int64,
    T), 64 rounds; the recorded sparse kernels do nothing there, so the answer (the harness's
    greedy scan) only shows the plain path still runs on intact inputs."""
    import test_cupy_sources as TC

    from detkernels.backends import cupy as CP

    entries, _ = TC._compile(CP.nvrtc_options())  # skips where NVRTC is missing
    monkeypatch.setattr(CP, "SPARSE_PATH", path)
    monkeypatch.setattr(CP, "SPARSE_MIN_PER_IMAGE", 100)  # the auto rule at test sizes
    boxes, scores, _ = batch("uniform", 5, 2, 150)
    for dtype in (np.float32, np.float64):
        b, sc = boxes.astype(dtype), scores.astype(dtype)
        rec = TC._numpy_cupy(monkeypatch, b, 0.5)
        got = CP.multi_image_nms(b, sc, None, 0.5, 40, None)
        want = ref.multi_image_nms(b, sc, 0.5, 40)
        for g, w in zip(got, want):
            if w is not None:
                np.testing.assert_array_equal(g, w)
        T = CP.C_TYPES[np.dtype(dtype).name]
        launched = [name for name, *_ in rec.calls]
        sparse = {n for n in CP.nms_sparse_name_expressions() if "<" not in n or f"<{T}>" in n}
        if path == PRUNED:
            sparse.discard(f"detkernels::nms_sparse_block_pairs_kernel<{T}>")
            sparse.discard("detkernels::nms_sparse_decide_kernel")
        assert sparse <= set(launched), sparse - set(launched)
        assert launched.count("detkernels::nms_sparse_round_kernel") == CP.SPARSE_ROUNDS
        for name, grid, block, args in rec.calls:
            params = TC.PTX_PARAM.findall(entries[name].split(")")[0])
            got_t = ["u64" if isinstance(a, np.ndarray) else TC.ARG_TYPES[type(a)] for a in args]
            assert got_t == params, f"{name}: launched with {got_t}, kernel takes {params}"
            assert all(0 < g <= 65535 for g in grid)


@needs_gpu
def test_gpu_cupy_sparse_equals_reference(monkeypatch):
    """The CuPy backend's launches of the sparse kernels, forced and on the rule, on a GPU."""
    pytest.importorskip("cupy")
    import torch

    import detkernels as dk
    from detkernels.backends import cupy as CP

    for path, n, dist in ((PRUNED, 2000, "clustered"), (AUTO, 50_000, "sparse")):
        monkeypatch.setattr(CP, "SPARSE_PATH", path)
        b, s = data.large_nms_boxes(np.random.default_rng(9), n, dist)
        b, s = b.astype(np.float32), s.astype(np.float32)
        got = dk.nms(torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda(), 0.5, backend="cupy")
        assert_bytes_equal(got, ref.nms(b, s, 0.5), f"cupy {dist}")
