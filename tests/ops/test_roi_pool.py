"""roi_pool and ps_roi_pool: reference vs torchvision, native vs reference (byte for byte, every
dtype and layout, forward and backward), autograd integration, divergences (docs/SPEC.md §1.3-1.5)."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, H, N, W, boxes_adversarial, boxes_valid, features, grad_like

torch = pytest.importorskip("torch")  # before detkernels: its custom ops register at import

import detkernels  # noqa: E402
from detkernels.reference import roi_pool as ref  # noqa: E402

SEEDS = range(3)
DTYPES = ["float32", "float64", "float16", "bfloat16"]
OPCHECK_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"


def _t(a, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if dtype is None else t.to(getattr(torch, dtype))


def test_c_round_is_half_away_from_zero():
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 2.4999998], np.float32)
    assert_bytes_equal(ref.c_round(v), np.array([1, 2, 3, -1, -3, 0, -0.0, 2], np.float32), "c_round")


# ---- reference == torchvision (CPU) ------------------------------------------------------------------

@pytest.mark.torchvision
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5, 0.75])
def test_reference_matches_torchvision(seed, dtype, spatial_scale):
    pytest.importorskip("torchvision")
    x = features(seed, dtype, c=12)
    rois = boxes_valid(seed, dtype=dtype)
    rois[-1, 1:] = [3.5, 2.5, 9.5, 7.5]  # C round() ties
    out, am = torch.ops.torchvision.roi_pool(_t(x), _t(rois), spatial_scale, 3, 2)
    r_out, r_am = ref.roi_pool(x, rois, spatial_scale, 3, 2)
    assert_bytes_equal(r_out, out, "roi_pool")
    assert_bytes_equal(r_am, am, "argmax")
    g = grad_like(out.shape, seed, dtype)
    gi = torch.ops.torchvision._roi_pool_backward(_t(g), _t(rois), am, spatial_scale, 3, 2, N, 12, H, W)
    assert_bytes_equal(ref.roi_pool_backward(g, rois, r_am, spatial_scale, 3, 2, N, 12, H, W), gi, "roi_pool bwd")

    out, cmap = torch.ops.torchvision.ps_roi_pool(_t(x), _t(rois), spatial_scale, 3, 2)
    r_out, r_cmap = ref.ps_roi_pool(x, rois, spatial_scale, 3, 2)
    assert_bytes_equal(r_out, out, "ps_roi_pool")
    assert_bytes_equal(r_cmap, cmap, "channel_mapping")
    # Backward parity where torchvision's backward region equals its forward region: RoIs whose
    # bins stay clear of the last row/column (see test_ps_roi_pool_gradient_matches_forward).
    inner = np.array([[0, 1, 1, 6, 5], [1, 0, 2, 7, 7], [0, 2.4, 0.5, 8.5, 4]], dtype)
    out, cmap = torch.ops.torchvision.ps_roi_pool(_t(x), _t(inner), spatial_scale, 3, 2)
    g = grad_like(out.shape, seed, dtype)
    gi = torch.ops.torchvision._ps_roi_pool_backward(_t(g), _t(inner), cmap, spatial_scale, 3, 2, N, 12, H, W)
    assert_bytes_equal(ref.ps_roi_pool_backward(g, inner, cmap.numpy(), spatial_scale, 3, 2, N, 12, H, W), gi,
                       "ps_roi_pool bwd")


# ---- native == reference ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("fn", ["roi_pool", "ps_roi_pool"])
def test_native_matches_reference(seed, dtype, channels_last, fn):
    rdt = np.float64 if dtype == "float64" else np.float32
    x = _t(features(seed, rdt, c=12), dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    rois = _t(np.concatenate([boxes_valid(seed, 10, rdt), boxes_adversarial(seed, rdt)]))
    if dtype == "float16":
        rois = rois.half()  # same-dtype rois (bfloat16 runs with float32 rois)
    f = getattr(detkernels, fn)
    res = []
    for backend in ("native", "numpy"):
        out = f(x, rois, (3, 2), 0.75, backend=backend)
        (gi,) = torch.autograd.grad(out, x, _t(grad_like(out.shape, seed, np.float32), dtype))
        res.append((out, gi))
    assert res[0][0].dtype == x.dtype and res[0][1].dtype == x.dtype
    assert_bytes_equal(res[0][0], res[1][0], "forward")
    assert_bytes_equal(res[0][1], res[1][1], "backward")


def test_numpy_arrays():
    x, rois = features(0), boxes_valid(0)
    for fn, r in ((detkernels.roi_pool, ref.roi_pool), (detkernels.ps_roi_pool, ref.ps_roi_pool)):
        out = fn(x, rois, 2, 0.5)
        assert isinstance(out, np.ndarray)
        assert_bytes_equal(out, r(x, rois, 0.5, 2, 2)[0], fn.__name__)


# ---- divergences and edge cases ---------------------------------------------------------------------------

@pytest.mark.torchvision
def test_ps_roi_pool_gradient_matches_forward():
    """docs/SPEC.md §1.4: the forward averages rows/cols [0, H-1); torchvision's backward spreads over
    [0, H) with a different area. Ours passes gradcheck for a box reaching the border."""
    tv = pytest.importorskip("torchvision")
    x = _t(features(0, np.float64, c=8)).requires_grad_()
    rois = torch.tensor([[0, 0, 0, W, H], [1, 3, 2, W + 4, H + 3]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: detkernels.ps_roi_pool(t, rois, 2, 1.0), (x,))
    assert not torch.autograd.gradcheck(lambda t: tv.ops.ps_roi_pool(t, rois, 2, 1.0), (x,), raise_exception=False)


def test_gradcheck_float64():
    x = _t(features(1, np.float64, c=8)).requires_grad_()
    rois = _t(boxes_valid(1, 8, np.float64))
    # Distinct values: max pooling is not differentiable at ties.
    with torch.no_grad():
        x += torch.arange(x.numel(), dtype=torch.float64).reshape(x.shape) * 1e-3
    assert torch.autograd.gradcheck(lambda t: detkernels.roi_pool(t, rois, (2, 3), 0.5), (x,))
    assert torch.autograd.gradcheck(lambda t: detkernels.ps_roi_pool(t, rois, 2, 0.5), (x,))


def test_roi_pool_float64_floor_and_nan():
    """torchvision starts the max at -FLT_MAX even for float64 (kept); NaN never wins."""
    x = torch.full((1, 3, 4, 4), -1e300, dtype=torch.float64)
    x[0, 1] = float("nan")
    x[0, 2, 1, 1] = 5.0
    out, am = torch.ops.detkernels.roi_pool(x, torch.tensor([[0.0, 0, 0, 3, 3]], dtype=torch.float64), 1.0, 1, 1)
    flt_max = float(np.finfo(np.float32).max)
    assert out[0, :, 0, 0].tolist() == [-flt_max, -flt_max, 5.0]
    assert am[0, :, 0, 0].tolist() == [-1, -1, 5]


def test_bad_batch_index_and_nan_rois():
    x = _t(features(2, c=12)).requires_grad_()
    rois = torch.tensor([[-1.0, 1, 1, 5, 5], [N, 1, 1, 5, 5], [float("nan"), 1, 1, 5, 5],
                         [0, float("nan"), 1, 5, 5], [1, 1, 1, 5, float("inf")]])
    for fn in (detkernels.roi_pool, detkernels.ps_roi_pool):
        out = fn(x, rois[:4], 2, 1.0)
        assert not out.any()
        (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert not gi.any()
        assert fn(x, rois[4:], 2, 1.0).isfinite().all()
    _, am = torch.ops.detkernels.roi_pool(x, rois[:4], 1.0, 2, 2)
    assert (am == -1).all()


def test_empty_and_list_boxes():
    x = _t(features(0, c=12)).requires_grad_()
    for fn, co in ((detkernels.roi_pool, 12), (detkernels.ps_roi_pool, 3)):
        out = fn(x, torch.zeros(0, 5), 2)
        assert out.shape == (0, co, 2, 2)
        (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert not gi.any()
        b = _t(boxes_valid(0))
        lst = [b[b[:, 0] == i, 1:] for i in range(N)]
        rois = torch.cat([b[b[:, 0] == i] for i in range(N)])
        assert_bytes_equal(fn(x, lst, 2, 0.5), fn(x, rois, 2, 0.5), "list")


@pytest.mark.filterwarnings(OPCHECK_WARNING)
def test_opcheck():
    x = _t(features(2, c=12))
    rois = _t(boxes_valid(2, 6))
    for xx in (x, x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.detkernels.roi_pool.default, (xx, rois, 0.5, 2, 3))
        torch.library.opcheck(torch.ops.detkernels.ps_roi_pool.default, (xx, rois, 0.5, 2, 2))


@pytest.mark.torchvision
def test_module_reprs_match_torchvision():
    tv = pytest.importorskip("torchvision")
    assert repr(detkernels.RoIPool(7, 0.25)) == repr(tv.ops.RoIPool(7, 0.25))
    assert repr(detkernels.PSRoIPool((3, 2), 0.5)) == repr(tv.ops.PSRoIPool((3, 2), 0.5))
    x, rois = _t(features(0, c=12)), _t(boxes_valid(0))
    assert_bytes_equal(detkernels.RoIPool(2, 0.5)(x, rois), tv.ops.RoIPool(2, 0.5)(x, rois), "RoIPool")
    assert_bytes_equal(detkernels.PSRoIPool(2, 0.5)(x, rois), tv.ops.PSRoIPool(2, 0.5)(x, rois), "PSRoIPool")


def test_bad_inputs():
    x = _t(features(0, c=12))
    with pytest.raises(AssertionError):
        detkernels.roi_pool(x, torch.zeros(3, 6), 2)
    with pytest.raises(RuntimeError, match="same type"):
        detkernels.roi_pool(x, torch.zeros(3, 5, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match="multiple of pooling"):
        detkernels.ps_roi_pool(x, torch.zeros(3, 5), 3)
    with pytest.raises(ValueError, match="argmax"):
        torch.ops.detkernels._roi_pool_backward(torch.zeros(3, C, 2, 2), torch.zeros(3, 5),
                                                torch.zeros(3, C, 2, 2), 1.0, 2, 2, N, C, H, W)


@pytest.mark.torchvision
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ops_equal_torchvision_ops(dtype, channels_last):
    """Our custom ops (native) against torchvision's, second outputs included, on the inputs where
    SPEC.md promises parity (finite rois, valid batch indices, samples in the map's border range)."""
    pytest.importorskip("torchvision")
    x = _t(features(4, c=12)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    rois = _t(boxes_valid(4, 20)).to(dtype)
    rois = rois[(rois[:, 3] > rois[:, 1]) & (rois[:, 4] > rois[:, 2])]
    ops, tv = torch.ops.detkernels, torch.ops.torchvision
    for name, args in (("roi_pool", (0.5, 3, 2)), ("ps_roi_pool", (0.5, 3, 2)), ("ps_roi_align", (0.5, 3, 2, 2)),
                       ("roi_align", (0.5, 3, 2, -1, False)), ("roi_align", (0.5, 3, 2, 2, True))):
        ours, theirs = getattr(ops, name)(x, rois, *args), getattr(tv, name)(x, rois, *args)
        ours = ours if isinstance(ours, tuple) else (ours,)
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for a, b in zip(ours, theirs):
            assert_bytes_equal(a, b, name)


@pytest.mark.parametrize("backend", ["native", "numba", "numpy"])
def test_argmax_beyond_int32_is_refused(backend):
    """Issue 19.3: with H*W > 2**31 (no memory needed: a zero-stride view) the native argmax wrapped
    (e.g. -1795417306) and the backward silently dropped the gradient. roi_pool's argmax is int32
    (torchvision's schema), so such maps are refused before any kernel, on every backend and entry;
    ps_roi_pool (whose index map holds channels) and the largest allowed plane still work."""
    if why := detkernels._registry.why_not(backend, "roi_pool", "cpu", "float32"):
        pytest.skip(why)
    big = torch.rand(1, 1, 1, 1).expand(1, 1, 50000, 50000)
    rois = torch.tensor([[0.0, 0, 0, 49999, 49999]])
    msg = r"height \* width = 50000 \* 50000 = 2500000000 exceeds 2147483647"
    with pytest.raises(ValueError, match=msg):
        detkernels.roi_pool(big, rois, 2, 1.0, backend=backend)
    with pytest.raises(ValueError, match=msg):
        detkernels.roi_pool(big.numpy(), rois.numpy(), 2, 1.0, backend=backend)
    with pytest.raises(ValueError, match=msg):
        torch.ops.detkernels._roi_pool_backward(torch.zeros(1, 1, 2, 2), rois, torch.zeros(1, 1, 2, 2, dtype=torch.int32),
                                                1.0, 2, 2, 1, 1, 50000, 50000)
    with pytest.raises(ValueError, match=msg):
        ref.roi_pool(big.numpy(), rois.numpy(), 1.0, 2, 2)
    # 46340**2 < 2**31 - 1: allowed, and the argmax of the last pixel is exact (a zero-stride map
    # is constant, so the first pixel of each bin wins: check the bin starting at the bottom right).
    # Not on numba: its kernels take contiguous maps, and this view would become an 8.6 GB copy.
    if backend == "numba":
        return
    edge = torch.rand(1, 1, 1, 1).expand(1, 1, 46340, 46340)
    out, am = detkernels._dispatch.roi_pool(edge, torch.tensor([[0.0, 46339, 46339, 46339, 46339]]), 1.0, 1, 1,
                                            False, "float32", backend)
    assert int(am.reshape(-1)[0]) == 46340 * 46340 - 1
