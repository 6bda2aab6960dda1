"""Under torch.autocast detkernels needs no autocast kernels of its own: half features with float32
RoIs/scores are accepted, the arithmetic is float32 and the result is rounded once to the features'
dtype -- what torchvision's autocast kernels do (cast up, run in float32, cast the output back).
These tests pin that equivalence, forward and backward, on the CPU (torchvision registers CPU
autocast for roi_align and nms only; for the others the float32 run cast back is the oracle, which
is what its CUDA autocast kernels compute)."""
from __future__ import annotations

import pytest

from _helpers import assert_bytes_equal

torch = pytest.importorskip("torch")
tv = pytest.importorskip("torchvision")

import detkernels  # noqa: E402

pytestmark = pytest.mark.torchvision

HALF = [torch.bfloat16, torch.float16]


def _inputs(dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 8, 12, 14, generator=g) * 4).to(dtype)
    r = torch.tensor([[0, 1.0, 1.0, 9.0, 9.0], [1, 0.0, 2.0, 13.0, 7.0], [0, -3.0, 2.5, 30.0, 11.0],
                      [1, 4.25, 4.25, 4.25, 4.25], [0, 2.0, 3.0, 1.0, 0.5]])
    return x, r


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name,args", [("roi_align", (3, 0.5, 2)), ("roi_align", (2, 1.0, 0, True)),
                                       ("ps_roi_align", (2, 1.0, 2)), ("roi_pool", (3, 1.0)),
                                       ("ps_roi_pool", (2, 0.5))])
def test_autocast_matches_float32_run_cast_back(name, args, dtype):
    x, r = _inputs(dtype)
    xw = x.float().requires_grad_()
    # ps_roi_pool's backward differs from torchvision's at the border by design (README divergence
    # 9), so its float32 oracle is detkernels' own float32 run (compared with the reference elsewhere).
    oracle = detkernels if name == "ps_roi_pool" else tv.ops
    want = getattr(oracle, name)(xw, r, *args)
    want_out = want.to(dtype)
    gout = torch.randn(want.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    want.backward(gout.float())
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        got = getattr(detkernels, name)(xg, r, *args)
    assert got.dtype == dtype
    assert_bytes_equal(got.detach(), want_out, f"{name} forward")
    got.backward(gout)
    assert_bytes_equal(xg.grad, xw.grad.to(dtype), f"{name} backward")


@pytest.mark.parametrize("dtype", HALF)
def test_autocast_roi_align_same_as_torchvision_autocast(dtype):
    # torchvision's own CPU autocast kernel for roi_align, side by side.
    x, r = _inputs(dtype)
    with torch.autocast("cpu", dtype=dtype):
        want = tv.ops.roi_align(x, r, 3, 0.5, 2)
        got = detkernels.roi_align(x, r, 3, 0.5, 2)
    assert got.dtype == want.dtype == dtype
    assert_bytes_equal(got, want, "roi_align under autocast")


@pytest.mark.parametrize("dtype", HALF)
def test_autocast_nms_same_as_torchvision_autocast(dtype):
    g = torch.Generator().manual_seed(7)
    xy = torch.rand(300, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(300, 2, generator=g) * 30 + 1], 1).to(dtype)
    scores = torch.rand(300, generator=g).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        want = tv.ops.nms(boxes, scores, 0.5)
        got = detkernels.nms(boxes, scores, 0.5)
    assert_bytes_equal(got, want, "nms under autocast")
