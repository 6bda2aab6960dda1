"""The numba.cuda RoI kernels (roi_align, ps_roi_align, roi_pool, ps_roi_pool, forward and backward).

* In the CUDA simulator (no GPU needed): this file re-runs itself in a subprocess with
  NUMBA_ENABLE_CUDASIM=1 (which must be set before numba is imported), one subprocess per op, on
  small adversarial inputs, float32 and float64, byte-for-byte against the NumPy reference. The
  simulator computes with NumPy scalars and plain operators: it checks indexing, ownership,
  the sample ranges and the operation order, not FMA contraction (the PTX lint below does).
* PTX lint (no GPU needed, needs NVVM + libdevice): no ``fma``, no ``.f64`` in float32 kernels, no
  approximate division.
* On a real GPU: torch CUDA tensors through the public API (skips without one).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _helpers import PTX_APPROX as APPROX, PTX_F64 as F64, PTX_FMA as FMA

pytest.importorskip("numba", reason="numba is not installed (pip install 'detkernels[numba]')")

HERE = Path(__file__).resolve().parents[1]  # tests/: the shared input families
SIM_OPS = ("roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool")


# ---- simulator ------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", SIM_OPS)
def test_roi_kernels_in_simulator(op):
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, __file__, op], capture_output=True, text=True, env=env,
                         timeout=900)
    assert out.returncode == 0, f"simulator check failed:\n{out.stdout}\n{out.stderr}"
    assert f"{op}: " in out.stdout and "checks passed" in out.stdout


def _rois(dtype) -> np.ndarray:
    """Valid boxes plus every adversarial family: NaN/inf coordinates and batch indices, out of range
    and fractional batch indices, inverted, huge, wholly outside, zero area, C round() ties."""
    from _roi_inputs import boxes_adversarial

    return boxes_adversarial(0, dtype)


def _simulate(op: str) -> None:
    import time
    import warnings

    from numba import config, cuda

    assert config.ENABLE_CUDASIM, "numba was imported before NUMBA_ENABLE_CUDASIM was set"
    from _helpers import assert_bytes_equal
    from _roi_inputs import features, grad_like

    from detkernels.backends import numba as NB
    from detkernels.reference import roi_align as RA
    from detkernels.reference import roi_pool as RP

    # The simulated threads' NumPy scalars warn on 0/0, inf-inf (process-wide filter).
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    t0 = time.time()
    checks = 0
    d = cuda.to_device
    for dtype in (np.float32, np.float64):
        rois = _rois(dtype)
        if op in ("roi_align", "ps_roi_align"):
            ps = op == "ps_roi_align"
            ph, pw = (2, 3)
            C = 12 if ps else 3
            x = features(1, dtype, c=C)
            N, _, H, W = x.shape
            cases = [(0.75, 2, True), (0.75, 0, False), (1.0, -1, True), (0.5, 3, False)]
            if ps:  # ps_roi_align is always aligned
                cases = [(0.75, 2, True), (0.75, 0, True)]
            for ss, sr, aligned in cases:
                what = f"{op} {dtype.__name__} ss={ss} sr={sr} aligned={aligned}"
                out = NB.roi_align(d(x), d(rois), ss, ph, pw, sr, aligned, ps).copy_to_host()
                if ps:
                    ref = RA.ps_roi_align(x, rois, ss, ph, pw, sr)
                else:
                    ref = RA.roi_align(x, rois, ss, ph, pw, sr, aligned)
                assert_bytes_equal(out, ref, what + " forward")
                g = grad_like(ref.shape, 0, dtype)
                gi = NB.roi_align_backward(d(g), d(rois), ss, ph, pw, N, C, H, W, sr, aligned,
                                           ps).copy_to_host()
                if ps:
                    gref = RA.ps_roi_align_backward(g, rois, ss, ph, pw, sr, N, C, H, W)
                else:
                    gref = RA.roi_align_backward(g, rois, ss, ph, pw, N, C, H, W, sr, aligned)
                assert_bytes_equal(gi, gref, what + " backward")
                assert np.count_nonzero(out) and np.count_nonzero(gi)
                checks += 2
            # A 2e6-pixel RoI: 65536 samples per axis and bin (binary-searched sample ranges), and
            # an inverted box with a fixed grid (descending sample positions).
            big = np.array([[0, -1e6, -1e6, 1e6, 1e6], [1, -3e5, 0, 4e5, 9], [1, 9, 8, 2, 3]], dtype)
            for sr in (0, 2):
                out = NB.roi_align(d(x), d(big), 1.0, ph, pw, sr, True, ps).copy_to_host()
                ref = (RA.ps_roi_align(x, big, 1.0, ph, pw, sr) if ps
                       else RA.roi_align(x, big, 1.0, ph, pw, sr, True))
                assert_bytes_equal(out, ref, f"{op} {dtype.__name__} huge sr={sr} forward")
                g = grad_like(ref.shape, 1, dtype)
                gi = NB.roi_align_backward(d(g), d(big), 1.0, ph, pw, N, C, H, W, sr, True,
                                           ps).copy_to_host()
                gref = (RA.ps_roi_align_backward(g, big, 1.0, ph, pw, sr, N, C, H, W) if ps
                        else RA.roi_align_backward(g, big, 1.0, ph, pw, N, C, H, W, sr, True))
                assert_bytes_equal(gi, gref, f"{op} {dtype.__name__} huge sr={sr} backward")
                checks += 2
        else:
            ps = op == "ps_roi_pool"
            ph, pw = (3, 2)
            C = 12 if ps else 3
            x = features(2, dtype, c=C)
            x[0, :, 5, 6] = np.nan  # NaN never wins the max
            N, _, H, W = x.shape
            for ss in (0.75, 1.0):
                what = f"{op} {dtype.__name__} ss={ss}"
                out, idx = NB.roi_pool(d(x), d(rois), ss, ph, pw, ps)
                out, idx = out.copy_to_host(), idx.copy_to_host()
                ref, ridx = (RP.ps_roi_pool if ps else RP.roi_pool)(x, rois, ss, ph, pw)
                assert_bytes_equal(out, ref, what + " forward")
                assert_bytes_equal(idx, ridx, what + " index map")
                g = grad_like(ref.shape, 0, dtype)
                gi = NB.roi_pool_backward(d(g), d(rois), d(ridx), ss, ph, pw, N, C, H, W,
                                          ps).copy_to_host()
                gref = (RP.ps_roi_pool_backward if ps else RP.roi_pool_backward)(
                    g, rois, ridx, ss, ph, pw, N, C, H, W)
                assert_bytes_equal(gi, gref, what + " backward")
                assert np.count_nonzero(out) and np.count_nonzero(gi)
                checks += 3
        # No RoIs: empty outputs and an all-zero gradient (the kernels write every element).
        x = features(3, dtype, c=12)
        N, C, H, W = x.shape
        empty = np.zeros((0, 5), dtype)
        g0 = np.zeros((0, C // 6 if op.startswith("ps") else C, 2, 3), dtype)
        if "align" in op:
            out = NB.roi_align(d(x), d(empty), 1.0, 2, 3, 2, True, op.startswith("ps"))
            gi = NB.roi_align_backward(d(g0), d(empty), 1.0, 2, 3, N, C, H, W, 2, True,
                                       op.startswith("ps"))
        else:
            out, _ = NB.roi_pool(d(x), d(empty), 1.0, 2, 3, op.startswith("ps"))
            gi = NB.roi_pool_backward(d(g0), d(empty), d(np.zeros(g0.shape, np.int32)), 1.0, 2, 3,
                                      N, C, H, W, op.startswith("ps"))
        assert out.shape[0] == 0
        assert_bytes_equal(gi.copy_to_host(), np.zeros((N, C, H, W), dtype), f"{op} K=0 backward")
        checks += 1
        # An empty batch (N = 0) with RoIs, batch index -0.5 among them: every RoI reads nothing.
        x0 = features(4, dtype, c=12, n=0)
        ps = op.startswith("ps")
        g1 = grad_like((len(rois), 2 if ps else 12, 2, 3), 2, dtype)
        if "align" in op:
            out = NB.roi_align(d(x0), d(rois), 1.0, 2, 3, 2, True, ps).copy_to_host()
            gi = NB.roi_align_backward(d(g1), d(rois), 1.0, 2, 3, 0, 12, H, W, 2, True, ps)
            ref = (RA.ps_roi_align(x0, rois, 1.0, 2, 3, 2) if ps
                   else RA.roi_align(x0, rois, 1.0, 2, 3, 2, True))
        else:
            out, idx = NB.roi_pool(d(x0), d(rois), 1.0, 2, 3, ps)
            out, idx = out.copy_to_host(), idx.copy_to_host()
            ref, ridx = (RP.ps_roi_pool if ps else RP.roi_pool)(x0, rois, 1.0, 2, 3)
            assert_bytes_equal(idx, ridx, f"{op} N=0 index map")
            gi = NB.roi_pool_backward(d(g1), d(rois), d(ridx), 1.0, 2, 3, 0, 12, H, W, ps)
        assert_bytes_equal(out, ref, f"{op} N=0 forward")
        assert not out.any() and gi.copy_to_host().shape == (0, 12, H, W)
        checks += 1
    print(f"{op}: {checks} checks passed in {time.time() - t0:.1f} s")


# ---- PTX lint -------------------------------------------------------------------------------------

ATOMIC = re.compile(r"\b(atom|red)\.")


@pytest.fixture(scope="module")
def K():
    from detkernels.backends.numba import roi_cuda as _numba_roi_cuda

    try:
        _numba_roi_cuda.ptx("float32")
    except Exception as e:  # NVVM / libdevice not found
        pytest.skip(f"numba.cuda cannot compile PTX here: {type(e).__name__}: {str(e).splitlines()[0]}")
    return _numba_roi_cuda


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_roi_ptx_no_fma_no_approximation(K, dtype):
    ptx = K.ptx(dtype)
    assert set(ptx) == set(K.KERNELS)
    suffix = "f32" if dtype == "float32" else "f64"
    for name, src in ptx.items():
        assert not FMA.findall(src), f"{name} ({dtype}): fused multiply-add in PTX"
        assert not APPROX.findall(src), f"{name} ({dtype}): approximate/flush-to-zero op in PTX"
        if dtype == "float32":
            assert not F64.findall(src), f"{name}: float64 arithmetic in a float32 kernel"
        assert not ATOMIC.findall(src), f"{name} ({dtype}): atomics in PTX"
    for name in ("align_fwd_kernel", "align_bwd_kernel", "pool_fwd_kernel", "ps_pool_bwd_kernel"):
        assert f"div.rn.{suffix}" in ptx[name], name


def test_roi_ptx_lint_sees_contraction(K):
    """Control: with plain operators NVVM fuses the bilinear sums into FMAs, so the lint can fail."""
    ptx = K.ptx("float32", plain_operators=True)
    assert FMA.findall(ptx["align_fwd_kernel"]) and FMA.findall(ptx["align_bwd_kernel"])


# ---- real GPU -------------------------------------------------------------------------------------

def _gpu_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (the kernels are checked in the simulator)")
    from numba import cuda

    if not cuda.is_available():
        pytest.skip("numba.cuda finds no usable GPU/driver")
    return torch


@pytest.mark.parametrize("name", SIM_OPS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_torch_cuda_matches_reference(name, dtype, channels_last):
    torch = _gpu_torch()
    import detkernels
    from _helpers import assert_bytes_equal
    from _roi_inputs import boxes_valid, features, grad_like

    fn = getattr(detkernels, name)
    ps = name.startswith("ps")
    rdt = np.float64 if dtype == "float64" else np.float32
    x = features(0, rdt, c=24 if ps else 8)
    rois = np.concatenate([boxes_valid(0, 40, rdt), _rois(rdt)])
    kw = dict(output_size=(2, 3), spatial_scale=0.75)
    if "align" in name:
        kw["sampling_ratio"] = -1
    res = []
    for dev, backend in (("cuda", "numba"), ("cpu", "numpy")):
        xt = torch.from_numpy(x).to(getattr(torch, dtype)).to(dev)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        xt.requires_grad_()
        rt = torch.from_numpy(rois).to(dev)
        out = fn(xt, rt, backend=backend, **kw)
        g = torch.from_numpy(grad_like(out.shape, 0, np.float32)).to(xt.dtype).to(dev)
        (gi,) = torch.autograd.grad(out, xt, g)
        res.append((out.detach().cpu(), gi.cpu()))
    assert_bytes_equal(res[0][0], res[1][0], "forward")
    assert_bytes_equal(res[0][1], res[1][1], "backward")


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"
    sys.path.insert(0, str(HERE))
    _simulate(sys.argv[1])
