"""The CUDA rotated RoIAlign kernels' logic (csrc/ops/roi_align/roi_align_rotated_gpu.h), byte for byte
against the reference: on the CPU through the sequential emulation of the kernels' steps (always runs),
and on a GPU through the real kernels (skipped without a CUDA device)."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, N, features, grad_like, rotated_family

from detkernels.backends.native import _C
from detkernels.reference import roi_align_rotated as ref

pytestmark = pytest.mark.skipif(_C is None, reason="detkernels._C is not built")
CODES = {np.float32: 0, np.float64: 1}


def _strides(a: np.ndarray) -> list[int]:
    return [s // a.itemsize for s in a.strides]


def _emulate_forward(x, rois, scale, ph, pw, sr, aligned, cw):
    n, c, h, w = x.shape
    out = np.empty((rois.shape[0], c, ph, pw), x.dtype)
    _C.testing.roi_align_rotated_forward_emulate_cpu(CODES[x.dtype.type], x.ctypes.data, _strides(x), n, c, h, w,
                                                     rois.ctypes.data, rois.shape[0], scale, ph, pw, sr, aligned,
                                                     cw, out.ctypes.data)
    return out


def _emulate_backward(g, rois, scale, ph, pw, shape, sr, aligned, cw):
    gi = np.empty(shape, g.dtype)
    _C.testing.roi_align_rotated_backward_emulate_cpu(CODES[g.dtype.type], g.ctypes.data, _strides(g),
                                                      rois.ctypes.data, rois.shape[0], scale, ph, pw, *shape, sr,
                                                      aligned, cw, gi.ctypes.data)
    return gi


def _family(seed: int, dtype) -> np.ndarray:
    return np.ascontiguousarray(rotated_family(seed, dtype))


CASES = [(seed, dt, sr, al, cw) for seed in (0, 1) for dt in (np.float32, np.float64)
         for sr, al, cw in ((0, True, False), (2, False, True), (-1, True, True), (3, False, False))]


@pytest.mark.parametrize("seed,dtype,sr,aligned,cw", CASES)
def test_emulated_roi_align_rotated_matches_reference(seed, dtype, sr, aligned, cw):
    x = features(seed, dtype)
    rois = _family(seed, dtype)
    for scale, ph, pw in ((1.0, 2, 3), (0.5, 3, 2)):
        out = _emulate_forward(x, rois, scale, ph, pw, sr, aligned, cw)
        assert_bytes_equal(out, ref.roi_align_rotated(x, rois, scale, ph, pw, sr, aligned, cw), "forward")
        g = grad_like(out.shape, seed, dtype)
        gi = _emulate_backward(g, rois, scale, ph, pw, x.shape, sr, aligned, cw)
        want = ref.roi_align_rotated_backward(g, rois, scale, ph, pw, *x.shape, sr, aligned, cw)
        assert_bytes_equal(gi, want, "backward")


def test_emulated_channels_last_strided_grad_empty_and_overlaps():
    x = features(3, np.float32)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # NHWC strides
    rois = _family(3, np.float32)
    k = rois.shape[0]
    out = _emulate_forward(xl, rois, 1.0, 3, 3, 0, True, False)
    assert_bytes_equal(out, ref.roi_align_rotated(x, rois, 1.0, 3, 3, 0, True, False))
    g = grad_like((k, 3, 3, C), 3, np.float32).transpose(0, 3, 1, 2)  # non-contiguous grad
    gi = _emulate_backward(g, rois, 1.0, 3, 3, x.shape, 0, True, False)
    assert_bytes_equal(gi, ref.roi_align_rotated_backward(np.ascontiguousarray(g), rois, 1.0, 3, 3, *x.shape, 0,
                                                          True, False))
    e = np.zeros((0, 6), np.float32)
    assert _emulate_forward(x, e, 1.0, 2, 2, 2, True, False).shape == (0, C, 2, 2)
    assert_bytes_equal(_emulate_backward(np.zeros((0, C, 2, 2), np.float32), e, 1.0, 2, 2, x.shape, 2, True, False),
                       np.zeros(x.shape, np.float32))
    # Many RoIs on the same pixels: long runs, the summation order across RoIs matters.
    xd = features(4, np.float64)
    r = np.tile(np.array([[1, 4.1, 3.8, 4.0, 3.0, 33.0]]), (40, 1)) + np.linspace(0, 1e-3, 40)[:, None]
    r[:, 0] = 1
    gd = grad_like((40, C, 2, 2), 4, np.float64) * np.logspace(-8, 8, 40)[:, None, None, None]
    assert_bytes_equal(_emulate_backward(gd, r, 1.0, 2, 2, xd.shape, 0, False, False),
                       ref.roi_align_rotated_backward(gd, r, 1.0, 2, 2, *xd.shape, 0, False, False))


# ---- the real kernels (CUDA device needed) ---------------------------------------------------
torch = pytest.importorskip("torch")
import detkernels  # noqa: E402

cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _C.build_info()["cuda"]),
                          reason="no CUDA device / detkernels built without CUDA")


@cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sr,aligned,cw", [(0, True, False), (2, False, True)])
def test_cuda_roi_align_rotated_matches_reference(dtype, channels_last, sr, aligned, cw):
    x = torch.from_numpy(features(0, dtype)).cuda()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    rois = torch.from_numpy(_family(0, dtype)).cuda()
    out = detkernels.roi_align_rotated(x, rois, (3, 2), 0.5, sr, aligned, cw, backend="native")
    xn, rn = x.detach().cpu().numpy(), rois.cpu().numpy()
    assert_bytes_equal(out.detach().cpu().numpy(), ref.roi_align_rotated(xn, rn, 0.5, 3, 2, sr, aligned, cw))
    g = torch.from_numpy(grad_like(tuple(out.shape), 0, dtype)).cuda()
    out.backward(g)
    want = ref.roi_align_rotated_backward(g.cpu().numpy(), rn, 0.5, 3, 2, *xn.shape, sr, aligned, cw)
    assert_bytes_equal(x.grad.cpu().numpy(), want)


@cuda
def test_cuda_rotated_backward_refuses_above_the_slot_cap(monkeypatch):
    from detkernels.backends import native

    x = torch.from_numpy(features(3, np.float32)).cuda().requires_grad_(True)
    rois = torch.from_numpy(_family(3, np.float32)).cuda()
    out = detkernels.roi_align_rotated(x, rois, 2, 1.0, 2, backend="native")
    monkeypatch.setattr(native, "ROI_ALIGN_MAX_SLOTS", 10)
    with pytest.raises(MemoryError, match="DETKERNELS_ROI_ALIGN_MAX_SLOTS"):
        out.sum().backward()
    assert N == x.shape[0]
