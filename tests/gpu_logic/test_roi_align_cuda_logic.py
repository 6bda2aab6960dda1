"""The CUDA RoIAlign kernels' logic (csrc/ops/roi_align/roi_align_gpu.h), byte-for-byte against the
reference: on the CPU through the sequential emulation of the kernels' steps (always runs), and on
a GPU through the real kernels (skipped without a CUDA device)."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, H, N, W, boxes_adversarial, boxes_valid, features, grad_like

from detkernels.backends.native import _C
from detkernels.reference import roi_align as ref

pytestmark = pytest.mark.skipif(_C is None, reason="detkernels._C is not built")
CODES = {np.float32: 0, np.float64: 1}


def _strides(a: np.ndarray) -> list[int]:
    return [s // a.itemsize for s in a.strides]


def _emulate_forward(x, rois, scale, ph, pw, sr, aligned, ps):
    n, c, h, w = x.shape
    out = np.empty((rois.shape[0], c // (ph * pw) if ps else c, ph, pw), x.dtype)
    _C.testing.roi_align_forward_emulate_cpu(CODES[x.dtype.type], ps, x.ctypes.data, _strides(x),
                                             n, c, h, w, rois.ctypes.data, rois.shape[0], scale,
                                             ph, pw, sr, aligned, out.ctypes.data)
    return out


def _emulate_backward(g, rois, scale, ph, pw, shape, sr, aligned, ps):
    gi = np.empty(shape, g.dtype)
    _C.testing.roi_align_backward_emulate_cpu(CODES[g.dtype.type], ps, g.ctypes.data, _strides(g),
                                              rois.ctypes.data, rois.shape[0], scale, ph, pw,
                                              *shape, sr, aligned, gi.ctypes.data)
    return gi


def _rois(family: str, seed: int, dtype, sr: int) -> np.ndarray:
    if family == "valid":
        return boxes_valid(seed, 12, dtype)
    b = boxes_adversarial(seed, dtype)
    if sr <= 0:  # adaptive grids of the huge/infinite boxes reach 65536^2 samples per bin: keep
        # them for fixed sampling only (their slot count is what the CUDA path refuses)
        keep = [i for i in range(len(b)) if not np.any(np.abs(b[i, 1:]) >= 1e5)]
        b = b[keep]
    return np.ascontiguousarray(b)


def _images(family: str) -> int:
    """The empty_batch family: the adversarial RoIs (batch index -0.5 among them) over N = 0."""
    return 0 if family == "empty_batch" else N


CASES = [(seed, fam, dt, sr, al)
         for seed in (0, 1)
         for fam in ("valid", "adversarial", "empty_batch")
         for dt in (np.float32, np.float64)
         for sr, al in ((0, False), (2, True), (-1, True), (3, False))]


@pytest.mark.parametrize("seed,family,dtype,sr,aligned", CASES)
def test_emulated_roi_align_matches_reference(seed, family, dtype, sr, aligned):
    x = features(seed, dtype, n=_images(family))
    rois = _rois(family, seed, dtype, sr)
    for scale, ph, pw in ((1.0, 2, 3), (0.5, 3, 2)):
        out = _emulate_forward(x, rois, scale, ph, pw, sr, aligned, False)
        assert_bytes_equal(out, ref.roi_align(x, rois, scale, ph, pw, sr, aligned))
        g = grad_like(out.shape, seed, dtype)
        gi = _emulate_backward(g, rois, scale, ph, pw, x.shape, sr, aligned, False)
        assert_bytes_equal(gi, ref.roi_align_backward(g, rois, scale, ph, pw, *x.shape, sr, aligned))


@pytest.mark.parametrize("seed,family,dtype,sr", [(s, f, d, r) for s, f, d, r, a in CASES if a])
def test_emulated_ps_roi_align_matches_reference(seed, family, dtype, sr):
    ph, pw = 2, 2
    x = features(seed, dtype, c=2 * ph * pw, n=_images(family))
    rois = _rois(family, seed, dtype, sr)
    out = _emulate_forward(x, rois, 0.75, ph, pw, sr, True, True)
    assert_bytes_equal(out, ref.ps_roi_align(x, rois, 0.75, ph, pw, sr))
    g = grad_like(out.shape, seed, dtype)
    gi = _emulate_backward(g, rois, 0.75, ph, pw, x.shape, sr, True, True)
    assert_bytes_equal(gi, ref.ps_roi_align_backward(g, rois, 0.75, ph, pw, sr, *x.shape))


def test_emulated_channels_last_and_strided_grad():
    x = features(3, np.float32)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC strides
    rois = boxes_valid(3, 10, np.float32)
    out = _emulate_forward(xl, rois, 1.0, 3, 3, 0, True, False)
    assert_bytes_equal(out, ref.roi_align(x, rois, 1.0, 3, 3, 0, True))
    g = grad_like((10, 3, 3, C), 3, np.float32).transpose(0, 3, 1, 2)  # non-contiguous grad
    gi = _emulate_backward(g, rois, 1.0, 3, 3, x.shape, 0, True, False)
    assert_bytes_equal(gi, ref.roi_align_backward(np.ascontiguousarray(g), rois, 1.0, 3, 3, *x.shape, 0, True))


def test_emulated_empty_rois_and_overlaps():
    x = features(4, np.float64)
    rois = np.zeros((0, 5))
    assert _emulate_forward(x, rois, 1.0, 2, 2, 2, False, False).shape == (0, C, 2, 2)
    gi = _emulate_backward(np.zeros((0, C, 2, 2)), rois, 1.0, 2, 2, x.shape, 2, False, False)
    assert_bytes_equal(gi, np.zeros(x.shape))
    # Many RoIs on the same pixels: long runs, summation order across RoIs matters.
    rois = np.tile(np.array([[1, 2.3, 1.7, 6.1, 5.9]]), (40, 1)) + np.linspace(0, 1e-3, 40)[:, None]
    rois[:, 0] = 1
    g = grad_like((40, C, 2, 2), 4, np.float64) * np.logspace(-8, 8, 40)[:, None, None, None]
    gi = _emulate_backward(g, rois, 1.0, 2, 2, x.shape, 0, False, False)
    assert_bytes_equal(gi, ref.roi_align_backward(g, rois, 1.0, 2, 2, *x.shape, 0, False))


# ---- the real kernels (CUDA device needed) ---------------------------------------------------
torch = pytest.importorskip("torch")
import detkernels  # noqa: E402

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _C.build_info()["cuda"]),
                          reason="no CUDA device / detkernels built without CUDA")


def _cuda_case(seed, dtype, channels_last):
    x = torch.from_numpy(features(seed, dtype)).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = torch.from_numpy(boxes_valid(seed, 16, dtype)).cuda()
    return x, rois


@cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sr,aligned", [(0, False), (2, True), (0, True)])
def test_cuda_roi_align_matches_reference(dtype, channels_last, sr, aligned):
    x, rois = _cuda_case(0, dtype, channels_last)
    x.requires_grad_(True)
    out = detkernels.roi_align(x, rois, (3, 2), 0.5, sr, aligned, backend="native")
    xn, rn = x.detach().cpu().numpy(), rois.cpu().numpy()
    assert_bytes_equal(out.detach().cpu().numpy(), ref.roi_align(xn, rn, 0.5, 3, 2, sr, aligned))
    g = torch.from_numpy(grad_like(tuple(out.shape), 0, dtype)).cuda()
    out.backward(g)
    want = ref.roi_align_backward(g.cpu().numpy(), rn, 0.5, 3, 2, *xn.shape, sr, aligned)
    assert_bytes_equal(x.grad.cpu().numpy(), want)


@cuda
def test_cuda_ps_roi_align_matches_reference():
    x = torch.from_numpy(features(1, np.float32, c=8)).cuda().requires_grad_(True)
    rois = torch.from_numpy(boxes_adversarial(1, np.float32)).cuda()
    out = detkernels.ps_roi_align(x, rois, 2, 1.0, 2, backend="native")
    xn, rn = x.detach().cpu().numpy(), rois.cpu().numpy()
    assert_bytes_equal(out.detach().cpu().numpy(), ref.ps_roi_align(xn, rn, 1.0, 2, 2, 2))
    g = torch.from_numpy(grad_like(tuple(out.shape), 1, np.float32)).cuda()
    out.backward(g)
    assert_bytes_equal(x.grad.cpu().numpy(), ref.ps_roi_align_backward(g.cpu().numpy(), rn, 1.0, 2, 2, 2, *xn.shape))


@cuda
def test_cuda_non_default_stream_deterministic_and_empty():
    x, rois = _cuda_case(2, np.float32, False)
    g = torch.from_numpy(grad_like((16, C, 2, 2), 2, np.float32)).cuda()
    results = []
    s = torch.cuda.Stream()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.cuda.stream(s):
            for _ in range(3):
                xx = x.clone().requires_grad_(True)
                detkernels.roi_align(xx, rois, 2, 1.0, 0, True, backend="native").backward(g)
                results.append(xx.grad.cpu().numpy())
    finally:
        torch.use_deterministic_algorithms(False)
    torch.cuda.synchronize()
    want = ref.roi_align_backward(g.cpu().numpy(), rois.cpu().numpy(), 1.0, 2, 2, N, C, H, W, 0, True)
    for r in results:
        assert_bytes_equal(r, want)
    out = detkernels.roi_align(x, rois[:0], 2, 1.0, 0, True, backend="native")
    assert out.shape == (0, C, 2, 2)


@cuda
def test_cuda_backward_refuses_above_the_slot_cap(monkeypatch):
    from detkernels.backends import native
    x, rois = _cuda_case(3, np.float32, False)
    x.requires_grad_(True)
    out = detkernels.roi_align(x, rois, 2, 1.0, 2, True, backend="native")
    monkeypatch.setattr(native, "ROI_ALIGN_MAX_SLOTS", 10)
    with pytest.raises(MemoryError, match="DETKERNELS_ROI_ALIGN_MAX_SLOTS"):
        out.sum().backward()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ps", [False, True])
def test_cuda_cupy_roi_align_matches_reference(dtype, ps):
    """The CuPy backend launches the same kernels (NVRTC) with CuPy's stable sort: same bytes."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("cupy")
    c = 8 if ps else C
    x = torch.from_numpy(features(2, dtype, c=c)).cuda().contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = torch.from_numpy(_rois("adversarial", 2, dtype, 0)).cuda()  # no huge adaptive grids
    if ps:
        out = detkernels.ps_roi_align(x, rois, 2, 0.5, 0, backend="cupy")
    else:
        out = detkernels.roi_align(x, rois, 2, 0.5, 0, True, backend="cupy")
    xn, rn = x.detach().cpu().numpy(), rois.cpu().numpy()
    want = ref.ps_roi_align(xn, rn, 0.5, 2, 2, 0) if ps else ref.roi_align(xn, rn, 0.5, 2, 2, 0, True)
    assert_bytes_equal(out.detach().cpu().numpy(), want)
    g = torch.from_numpy(grad_like(tuple(out.shape), 2, dtype)).cuda()
    out.backward(g)
    gn = g.cpu().numpy()
    want = (ref.ps_roi_align_backward(gn, rn, 0.5, 2, 2, 0, *xn.shape) if ps else
            ref.roi_align_backward(gn, rn, 0.5, 2, 2, *xn.shape, 0, True))
    assert_bytes_equal(x.grad.cpu().numpy(), want)
