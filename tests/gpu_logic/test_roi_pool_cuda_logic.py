"""The CUDA RoIPool / PSRoIPool kernels' logic (csrc/ops/roi_pool/roi_pool_gpu.h and the generic
scatter of csrc/common/roi_scatter.h), byte-for-byte against the reference: on the CPU
through the sequential emulation of the kernels' steps (always runs), and on a GPU through the
real kernels, native and CuPy (skipped without a CUDA device)."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, H, N, W, boxes_adversarial, boxes_valid, features, grad_like

from detkernels.backends.native import _C
from detkernels.reference import roi_pool as ref

pytestmark = pytest.mark.skipif(_C is None, reason="detkernels._C is not built")
CODES = {np.float32: 0, np.float64: 1}


def _strides(a: np.ndarray) -> list[int]:
    return [s // a.itemsize for s in a.strides]


def _entry(fn: str):
    """An entry point of _C; the emulations are test-only, in _C.testing."""
    return getattr(_C.testing if "emulate" in fn else _C, fn)


def _forward(x, rois, scale, ph, pw, ps, fn="roi_pool_forward_emulate_cpu"):
    n, c, h, w = x.shape
    shape = (rois.shape[0], c // (ph * pw) if ps else c, ph, pw)
    out = np.full(shape, 7, x.dtype)  # poison: every element must be written
    idx = np.full(shape, 7, np.int32)
    _entry(fn)(CODES[x.dtype.type], ps, x.ctypes.data, _strides(x), n, c, h, w, rois.ctypes.data,
               rois.shape[0], scale, ph, pw, out.ctypes.data, idx.ctypes.data)
    return out, idx


def _backward(g, rois, idx, scale, ph, pw, shape, ps, fn="roi_pool_backward_emulate_cpu"):
    gi = np.full(shape, 7, g.dtype)
    idx = np.ascontiguousarray(idx, np.int32)
    _entry(fn)(CODES[g.dtype.type], ps, g.ctypes.data, _strides(g), rois.ctypes.data,
               idx.ctypes.data, rois.shape[0], scale, ph, pw, *shape, gi.ctypes.data)
    return gi


def _rois(family: str, seed: int, dtype) -> np.ndarray:
    return np.ascontiguousarray(boxes_valid(seed, 16, dtype) if family == "valid"
                                else boxes_adversarial(seed, dtype))


def _images(family: str) -> int:
    """The empty_batch family: the adversarial RoIs (batch index -0.5 among them) over N = 0."""
    return 0 if family == "empty_batch" else N


CASES = [(seed, fam, dt) for seed in (0, 1, 2) for fam in ("valid", "adversarial", "empty_batch")
         for dt in (np.float32, np.float64)]
SIZES = ((1.0, 2, 3), (0.5, 3, 2), (0.75, 1, 1), (2.0, 4, 4))


@pytest.mark.parametrize("seed,family,dtype", CASES)
def test_emulated_roi_pool_matches_reference(seed, family, dtype):
    x = features(seed, dtype, n=_images(family))
    rois = _rois(family, seed, dtype)
    for scale, ph, pw in SIZES:
        out, am = _forward(x, rois, scale, ph, pw, False)
        r_out, r_am = ref.roi_pool(x, rois, scale, ph, pw)
        assert_bytes_equal(out, r_out, "out")
        assert_bytes_equal(am, r_am, "argmax")
        g = grad_like(out.shape, seed, dtype)
        gi = _backward(g, rois, am, scale, ph, pw, x.shape, False)
        assert_bytes_equal(gi, ref.roi_pool_backward(g, rois, r_am, scale, ph, pw, *x.shape), "grad")


@pytest.mark.parametrize("seed,family,dtype", CASES)
def test_emulated_ps_roi_pool_matches_reference(seed, family, dtype):
    for scale, ph, pw in SIZES:
        x = features(seed, dtype, c=2 * ph * pw, n=_images(family))
        rois = _rois(family, seed, dtype)
        out, cmap = _forward(x, rois, scale, ph, pw, True)
        r_out, r_cmap = ref.ps_roi_pool(x, rois, scale, ph, pw)
        assert_bytes_equal(out, r_out, "out")
        assert_bytes_equal(cmap, r_cmap, "channel_mapping")
        g = grad_like(out.shape, seed, dtype)
        gi = _backward(g, rois, cmap, scale, ph, pw, x.shape, True)
        assert_bytes_equal(gi, ref.ps_roi_pool_backward(g, rois, r_cmap, scale, ph, pw, *x.shape), "grad")


def test_emulated_argmax_ties_and_long_runs():
    """Many RoIs whose bins share their argmax: long runs, summation order across RoIs matters
    (grads spanning 16 decades); ties in the bin (first maximum wins) and all-equal planes."""
    x = features(5, np.float64)
    x[1, 2] = 0.5  # a constant plane: every bin ties, argmax = the bin's first pixel
    k = 60
    rng = np.random.default_rng(5)
    rois = np.column_stack([np.ones(k), rng.uniform(0, 3, (k, 2)), rng.uniform(6, W, (k, 2))])
    for ph, pw in ((2, 2), (3, 1)):
        out, am = _forward(x, rois, 1.0, ph, pw, False)
        r_out, r_am = ref.roi_pool(x, rois, 1.0, ph, pw)
        assert_bytes_equal(am, r_am, "argmax")
        g = grad_like(out.shape, 5, np.float64) * np.logspace(-8, 8, k)[:, None, None, None]
        gi = _backward(g, rois, am, 1.0, ph, pw, x.shape, False)
        assert_bytes_equal(gi, ref.roi_pool_backward(g, rois, r_am, 1.0, ph, pw, *x.shape))
        xs = features(5, np.float64, c=2 * ph * pw)
        out, cmap = _forward(xs, rois, 1.0, ph, pw, True)
        g = grad_like(out.shape, 5, np.float64) * np.logspace(-8, 8, k)[:, None, None, None]
        gi = _backward(g, rois, cmap, 1.0, ph, pw, xs.shape, True)
        assert_bytes_equal(gi, ref.ps_roi_pool_backward(g, rois, cmap, 1.0, ph, pw, *xs.shape))


def test_emulated_special_values():
    """NaN/inf features (NaN never wins the max; all-NaN bins give -FLT_MAX, argmax -1) and
    NaN/inf grads."""
    x = features(6, np.float32)
    x[0, 1, 2:5, 2:5] = np.nan
    x[0, 2, 4, 4] = np.inf
    x[1, 3, :, :] = -np.inf
    rois = np.array([[0, 2, 2, 4, 4], [0, 0, 0, 12, 10], [1, 1, 1, 9, 9], [0, 3, 3, 3, 3]], np.float32)
    for ps in (False, True):
        xx = features(6, np.float32, c=8) if ps else x
        if ps:
            xx[0, 1, 2:5, 2:5] = np.nan
        out, idx = _forward(xx, rois, 1.0, 2, 2, ps)
        r = (ref.ps_roi_pool if ps else ref.roi_pool)(xx, rois, 1.0, 2, 2)
        assert_bytes_equal(out, r[0])
        assert_bytes_equal(idx, r[1])
        g = grad_like(out.shape, 6, np.float32)
        g[0, 0, 0, 0], g[1, 1, 1, 1] = np.nan, np.inf
        gi = _backward(g, rois, idx, 1.0, 2, 2, xx.shape, ps)
        rb = ref.ps_roi_pool_backward if ps else ref.roi_pool_backward
        assert_bytes_equal(gi, rb(g, rois, r[1], 1.0, 2, 2, *xx.shape))


def test_emulated_layouts():
    """Channels-last features and a non-contiguous grad (the kernels take element strides)."""
    for ps, c in ((False, C), (True, 8)):
        x = features(7, np.float32, c=c)
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        rois = boxes_valid(7, 10, np.float32)
        out, idx = _forward(xl, rois, 1.0, 2, 2, ps)
        r = (ref.ps_roi_pool if ps else ref.roi_pool)(x, rois, 1.0, 2, 2)
        assert_bytes_equal(out, r[0])
        assert_bytes_equal(idx, r[1])
        co = out.shape[1]
        g = grad_like((10, 2, 2, co), 7, np.float32).transpose(0, 3, 1, 2)  # strided
        gi = _backward(g, rois, idx, 1.0, 2, 2, x.shape, ps)
        rb = ref.ps_roi_pool_backward if ps else ref.roi_pool_backward
        assert_bytes_equal(gi, rb(np.ascontiguousarray(g), rois, r[1], 1.0, 2, 2, *x.shape))


def test_emulated_empty_inputs():
    for ps, c in ((False, C), (True, 4)):
        x = features(8, np.float64, c=c)
        rois = np.zeros((0, 5))
        out, _ = _forward(x, rois, 1.0, 2, 2, ps)
        assert out.shape == (0, c // 4 if ps else c, 2, 2)
        gi = _backward(np.zeros(out.shape), rois, np.zeros(out.shape, np.int32), 1.0, 2, 2, x.shape, ps)
        assert_bytes_equal(gi, np.zeros(x.shape))
        # An empty feature map: every bin is empty, nothing is read or written out of bounds.
        xe = np.zeros((N, c, 0, W))
        rois = boxes_valid(8, 6, np.float64)
        out, idx = _forward(xe, rois, 1.0, 2, 2, ps)
        r = (ref.ps_roi_pool if ps else ref.roi_pool)(xe, rois, 1.0, 2, 2)
        assert_bytes_equal(out, r[0])
        assert_bytes_equal(idx, r[1])
        gi = _backward(grad_like(out.shape, 8, np.float64), rois, idx, 1.0, 2, 2, xe.shape, ps)
        assert gi.shape == xe.shape


def test_emulated_backward_ignores_out_of_range_argmax():
    """A caller-supplied argmax outside [0, H*W) (or -1) adds nothing, like the CPU kernel."""
    x = features(9, np.float32)
    rois = boxes_valid(9, 8, np.float32)
    out, am = _forward(x, rois, 1.0, 2, 2, False)
    bad = am.copy()
    bad.reshape(-1)[::3] = H * W
    bad.reshape(-1)[1::5] = -7
    g = grad_like(out.shape, 9, np.float32)
    gi = _backward(g, rois, bad, 1.0, 2, 2, x.shape, False)
    assert_bytes_equal(gi, _backward(g, rois, bad, 1.0, 2, 2, x.shape, False, "roi_pool_backward_cpu"))
    keep = (bad >= 0) & (bad < H * W)
    assert_bytes_equal(gi, ref.roi_pool_backward(np.where(keep, g, 0), rois, np.where(keep, bad, -1), 1.0, 2,
                                                 2, *x.shape))


def test_emulation_is_checked():
    """Control: the comparison can fail -- a perturbed argmax moves gradient."""
    x = features(10, np.float32)
    rois = boxes_valid(10, 8, np.float32)
    out, am = _forward(x, rois, 1.0, 2, 2, False)
    g = grad_like(out.shape, 10, np.float32)
    moved = np.where(am >= 0, (am + 1) % (H * W), am)
    assert not np.array_equal(_backward(g, rois, moved, 1.0, 2, 2, x.shape, False),
                              ref.roi_pool_backward(g, rois, am, 1.0, 2, 2, *x.shape))


# ---- the real kernels (CUDA device needed) ---------------------------------------------------
torch = pytest.importorskip("torch")
import detkernels  # noqa: E402

HAS_GPU = torch.cuda.is_available()
cuda_native = pytest.mark.skipif(not (HAS_GPU and _C.build_info()["cuda"]),
                                 reason="no CUDA device / detkernels built without CUDA")


def _cupy_or_skip():
    if not HAS_GPU:
        pytest.skip("no CUDA device")
    return pytest.importorskip("cupy")


def _gpu_check(backend, dtype, channels_last, ps):
    c = 8 if ps else C
    x = torch.from_numpy(features(0, dtype, c=c)).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = torch.from_numpy(boxes_adversarial(0, dtype)).cuda()
    fn = detkernels.ps_roi_pool if ps else detkernels.roi_pool
    out = fn(x, rois, 2, 0.75, backend=backend)
    xn, rn = x.detach().cpu().numpy(), rois.cpu().numpy()
    r_out, r_idx = (ref.ps_roi_pool if ps else ref.roi_pool)(xn, rn, 0.75, 2, 2)
    assert_bytes_equal(out.detach().cpu().numpy(), r_out)
    g = torch.from_numpy(grad_like(tuple(out.shape), 0, dtype)).cuda()
    out.backward(g)
    rb = ref.ps_roi_pool_backward if ps else ref.roi_pool_backward
    assert_bytes_equal(x.grad.cpu().numpy(), rb(g.cpu().numpy(), rn, r_idx, 0.75, 2, 2, *xn.shape))


@cuda_native
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ps", [False, True])
def test_cuda_native_matches_reference(dtype, channels_last, ps):
    _gpu_check("native", dtype, channels_last, ps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ps", [False, True])
def test_cuda_cupy_matches_reference(dtype, ps):
    _cupy_or_skip()
    _gpu_check("cupy", dtype, False, ps)


@cuda_native
def test_cuda_roi_pool_backward_refuses_above_the_slot_cap(monkeypatch):
    from detkernels.backends import native
    x = torch.from_numpy(features(1, np.float32)).cuda().requires_grad_(True)
    rois = torch.from_numpy(boxes_valid(1, 8, np.float32)).cuda()
    out = detkernels.roi_pool(x, rois, 2, 1.0, backend="native")
    monkeypatch.setattr(native, "ROI_POOL_MAX_SLOTS", 10)
    with pytest.raises(MemoryError, match="DETKERNELS_ROI_POOL_MAX_SLOTS"):
        out.sum().backward()
