"""RoI ops on the numba backend (CPU @njit(parallel=True) kernels) vs the NumPy reference backend,
byte for byte: roi_align, ps_roi_align, roi_pool, ps_roi_pool, forward and backward (autograd),
float32/float64 (float16 widened by the Python layer), NCHW and channels-last, adversarial RoIs,
K = 0; both roi_align kernel layouts; the same bytes for 1 and 2 threads and any channel
partition of the backward; the binary-searched sample ranges against a brute-force scan.
The numba.cuda kernels are tested in test_numba_roi_cuda.py."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import boxes_adversarial, boxes_valid, features, grad_like

pytest.importorskip("numba")
torch = pytest.importorskip("torch")

import detkernels  # noqa: E402

DTYPES = ["float32", "float64", "float16"]

OPS = [  # (public function, channels, keyword arguments)
    (detkernels.roi_align, 8, dict(output_size=(3, 4), spatial_scale=0.75, sampling_ratio=-1, aligned=False)),
    (detkernels.roi_align, 8, dict(output_size=(3, 4), spatial_scale=0.75, sampling_ratio=2, aligned=True)),
    (detkernels.roi_align, 8, dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=0, aligned=True)),
    (detkernels.ps_roi_align, 24, dict(output_size=(3, 4), spatial_scale=0.75, sampling_ratio=-1)),
    (detkernels.ps_roi_align, 24, dict(output_size=(3, 4), spatial_scale=0.75, sampling_ratio=2)),
    (detkernels.roi_pool, 8, dict(output_size=(3, 2), spatial_scale=0.75)),
    (detkernels.roi_pool, 8, dict(output_size=(2, 3), spatial_scale=1.0)),
    (detkernels.ps_roi_pool, 24, dict(output_size=(3, 2), spatial_scale=0.75)),
]
IDS = [f"{f.__name__}-{i}" for i, (f, _, _) in enumerate(OPS)]


def _run(fn, x, rois, dtype, channels_last, kw):
    xt = torch.from_numpy(x).to(getattr(torch, dtype))
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_()
    rt = torch.from_numpy(rois).to(torch.float64 if dtype == "float64" else torch.float32)
    res = []
    for backend in ("numba", "numpy"):
        out = fn(xt, rt, backend=backend, **kw)
        g = torch.from_numpy(grad_like(out.shape, 0, np.float32)).to(xt.dtype)
        (gi,) = torch.autograd.grad(out, xt, g)
        assert out.dtype == xt.dtype and gi.dtype == xt.dtype
        res.append((out, gi))
    assert_bytes_equal(res[0][0], res[1][0], "forward")
    assert_bytes_equal(res[0][1], res[1][1], "backward")
    return res[0]


@pytest.mark.parametrize("op", OPS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_numba_matches_reference(op, dtype, channels_last, seed):
    fn, c, kw = op
    rdt = np.float64 if dtype == "float64" else np.float32
    rois = np.concatenate([boxes_valid(seed, 10, rdt), boxes_adversarial(seed, rdt)])
    out, gi = _run(fn, features(seed, rdt, c=c), rois, dtype, channels_last, kw)
    assert out.shape[0] == rois.shape[0] and torch.count_nonzero(out) > 0 and torch.count_nonzero(gi) > 0


@pytest.mark.parametrize("op", OPS[::3], ids=IDS[::3])
def test_numba_empty_rois(op):
    fn, c, kw = op
    out, gi = _run(fn, features(0, np.float32, c=c), np.zeros((0, 5), np.float32), "float32", False, kw)
    assert out.shape[0] == 0 and not torch.any(gi)


@pytest.mark.parametrize("fn", [detkernels.roi_align, detkernels.ps_roi_align])
def test_numba_huge_roi_adaptive_grid_is_capped(fn):
    """A RoI of 2e6 pixels gives 65536 samples per axis and bin; only in-range ones are visited."""
    rois = np.array([[0, -1e6, -1e6, 1e6, 1e6], [1, -3e5, 0, 4e5, 9]], np.float64)
    _run(fn, features(3, np.float64, c=24), rois, "float64", False,
         dict(output_size=(2, 3), spatial_scale=1.0, sampling_ratio=0))


def test_numba_numpy_arrays():
    x = features(4, np.float32)
    rois = boxes_adversarial(4, np.float32)
    a = detkernels.roi_align(x, rois, (3, 3), 0.5, 2, backend="numba")
    b = detkernels.roi_align(x, rois, (3, 3), 0.5, 2, backend="numpy")
    assert isinstance(a, np.ndarray)
    assert_bytes_equal(a, b, "forward")


# ---- the parallel CPU kernels and their shared scalar maths ----------------------------------------

def _brute_range(T, start, bin_size, p, G, size):
    """The reference's in-range mask of bin p's samples (reference.roi_align._axis), all G of them."""
    f = (np.arange(G).astype(np.float32) + np.float32(0.5)).astype(T)
    with np.errstate(all="ignore"):
        c = (T(start) + T(p) * T(bin_size)) + (f * T(bin_size)) / T(G)
    return (c >= T(-1)) & (c <= T(size)) & (size > 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sample_range_is_the_in_range_run(dtype):
    """sample_range (binary search over the monotone sample positions) selects exactly the samples
    the reference finds in range, for ascending, descending, zero, NaN and infinite bins."""
    from detkernels.backends.numba import roi_cpu as _numba_roi

    T = np.dtype(dtype).type
    sr = _numba_roi.kernels(dtype).sample_range
    starts = (-1e6, -3.7, -0.0, 0.0, 5.2, 12.5, np.nan, np.inf, -np.inf, 1e30, -1e30)
    bins = (-2.5, -0.25, -0.0, 0.0, 1e-3, 0.7, 3.3, 1e5, 1e35, np.nan, np.inf, -np.inf)
    seen = set()
    for start in starts:
        for b in bins:
            for p in (0, 1, 6):
                for G in (1, 2, 7, 64) if abs(b) < 1e4 else (2, 65536):
                    for size in (0, 1, 13):
                        m = _brute_range(T, start, b, p, G, size)
                        i0, i1 = sr(T(start), T(b), p, G, size)
                        got = np.zeros(G, bool)
                        got[i0:i1] = True
                        assert np.array_equal(got, m), (start, b, p, G, size, i0, i1)
                        seen.add((bool(m.any()), bool(m.all())))
    assert seen == {(False, False), (True, False), (True, True)}


def _cpu_cases(dtype):
    from detkernels.backends.numba import roi_cpu as _numba_roi

    x = features(5, dtype, c=24)
    rois = np.concatenate([boxes_valid(5, 30, dtype), boxes_adversarial(5, dtype)])
    N, C, H, W = x.shape
    out = []
    for ps, aligned, sr in ((False, False, -1), (False, True, 2), (True, True, 0)):
        o = _numba_roi.roi_align(x, rois, 0.75, 2, 3, sr, aligned, ps)
        g = grad_like(o.shape, 5, dtype)
        out.append((o, [_numba_roi.roi_align_backward(g, rois, 0.75, 2, 3, (N, C, H, W), sr, aligned,
                                                      ps, nchunks=k, nhwc=nhwc)
                        for k in (1, 3, g.shape[1]) for nhwc in (False, True)]))
    for ps in (False, True):
        o, idx = _numba_roi.roi_pool(x, rois, 0.75, 3, 2, ps)
        g = grad_like(o.shape, 6, dtype)
        out.append((o, idx, [_numba_roi.roi_pool_backward(g, rois, idx, 0.75, 3, 2, (N, C, H, W), ps,
                                                          nchunks=k) for k in (1, 3, g.shape[1])]))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_results_do_not_depend_on_threads_or_chunks(dtype):
    """Owner-computes: 1 vs 2 threads, and 1, 3 or C channel ranges in the backward, give the same
    bytes (and these are the reference's: test_numba_matches_reference)."""
    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba runs with a single thread here (NUMBA_NUM_THREADS=1)")
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _cpu_cases(dtype)
        numba.set_num_threads(2)
        two = _cpu_cases(dtype)
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(one, two):
        for x, y in zip(a[:-1], b[:-1]):
            assert_bytes_equal(x, y, "forward, 1 vs 2 threads")
        for gi in a[-1] + b[-1]:
            assert_bytes_equal(gi, a[-1][0], "backward, threads x chunks")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_cpu_nchw_and_nhwc_kernels_match_reference(dtype, sampling_ratio):
    """roi_align has an NCHW kernel and a channels-last one (chosen by size, see
    _numba_roi._use_nhwc): both, forward and backward, give the reference's bytes."""
    from detkernels.backends.numba import roi_cpu as _numba_roi
    from detkernels.reference import roi_align as RA

    x = features(8, dtype, c=6)
    rois = np.concatenate([boxes_valid(8, 10, dtype), boxes_adversarial(8, dtype)])
    N, C, H, W = x.shape
    for aligned in (False, True):
        ref = RA.roi_align(x, rois, 0.75, 3, 2, sampling_ratio, aligned)
        g = grad_like(ref.shape, 8, dtype)
        gref = RA.roi_align_backward(g, rois, 0.75, 3, 2, N, C, H, W, sampling_ratio, aligned)
        for nhwc in (False, True):
            what = f"aligned={aligned} nhwc={nhwc}"
            assert_bytes_equal(_numba_roi.roi_align(x, rois, 0.75, 3, 2, sampling_ratio, aligned, False,
                                                    nhwc=nhwc), ref, what + " forward")
            assert_bytes_equal(_numba_roi.roi_align_backward(g, rois, 0.75, 3, 2, (N, C, H, W),
                                                             sampling_ratio, aligned, False, nhwc=nhwc),
                               gref, what + " backward")
