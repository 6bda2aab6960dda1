"""RoI ops on the numba backend (CPU @njit kernels) vs the NumPy reference backend, byte for byte:
roi_align, ps_roi_align, roi_pool, ps_roi_pool, forward and backward (autograd), float32/float64
(float16 widened by the Python layer), NCHW and channels-last, adversarial RoIs, K = 0."""
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
