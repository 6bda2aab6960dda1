"""roi_align_rotated: the deterministic sin/cos of degrees (accuracy bound, exact symmetries), native vs
reference (byte for byte, every dtype and layout, forward and backward), hand-computed cases (angle 0
is roi_align, 90/180 degree symmetries, zero-size and outside RoIs, clockwise), bad inputs, autograd,
opcheck, compile and export."""
from __future__ import annotations

import math

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, H, N, W, features, grad_like, rotated_family

torch = pytest.importorskip("torch")

import detkernels  # noqa: E402
from detkernels.reference import roi_align as ref_ra  # noqa: E402
from detkernels.reference import roi_align_rotated as ref  # noqa: E402

DTYPES = ["float32", "float64", "float16", "bfloat16"]


def _t(a, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if dtype is None else t.to(getattr(torch, dtype))


# ---- sin/cos of degrees ------------------------------------------------------------------------------

def test_sincos_exact_points_and_symmetries():
    s, c = ref.sincos_deg(np.array([0.0, 90, 180, 270, 360, -90, 720, 360.0 * 2**40, -0.0]))
    assert s.tolist()[:8] == [0, 1, 0, -1, 0, -1, 0, 0] and c.tolist()[:8] == [1, 0, -1, 0, 1, 0, 1, 1]
    a = np.random.default_rng(0).uniform(-1e4, 1e4, 10000)
    s, c = ref.sincos_deg(a)
    sn, cn = ref.sincos_deg(-a)
    assert_bytes_equal(sn, -s, "sin(-a)")
    assert_bytes_equal(cn, c, "cos(-a)")
    ai = np.round(np.abs(a))  # integers >= 0: a + 360 is exact, so is the reduction
    assert_bytes_equal(np.stack(ref.sincos_deg(ai + 360)), np.stack(ref.sincos_deg(ai)), "period")
    s, c = ref.sincos_deg(np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(s).all() and np.isnan(c).all()


def test_sincos_accuracy_bound():
    """|error| <= 2e-16 against the true value (mpmath, exact reduction); libm differs from it by up to
    about 1 ulp, which is why libm is not used (its last bit differs across platforms)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 1200  # enough to reduce 1e300 degrees exactly
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.uniform(-360, 360, 1500), rng.uniform(-1e6, 1e6, 300),
                        np.arange(-360, 361, 0.25), [45, 30, 60, 1e-300, 5e-324, 1e300, -1e300]])
    s, c = ref.sincos_deg(a)
    worst = 0.0
    for ai, si, ci in zip(a, s, c):
        x = mpmath.fmod(mpmath.mpf(float(ai)), 360) * mpmath.pi / 180
        worst = max(worst, abs(float(mpmath.sin(x) - si)), abs(float(mpmath.cos(x) - ci)))
    assert worst <= 2e-16, worst
    small = np.abs(a) <= 720
    assert np.abs(s[small] - np.sin(np.deg2rad(a[small]))).max() < 1e-15


# ---- native == reference, byte for byte ---------------------------------------------------------------

def _compare_backends(x, rois, dtype, channels_last, **kw):
    xt = _t(x, dtype)
    if channels_last:
        xt = xt.contiguous(memory_format=torch.channels_last)
    xt.requires_grad_()
    rt = _t(rois, "float32" if dtype in ("float16", "bfloat16") else dtype)
    outs, grads = [], []
    for backend in ("native", "numpy"):
        out = detkernels.roi_align_rotated(xt, rt, backend=backend, **kw)
        g = _t(grad_like(out.shape, 0, np.float32), dtype)
        (gi,) = torch.autograd.grad(out, xt, g)
        outs.append(out)
        grads.append(gi)
    assert outs[0].dtype == xt.dtype and grads[0].dtype == xt.dtype
    assert_bytes_equal(outs[0], outs[1], "forward")
    assert_bytes_equal(grads[0], grads[1], "backward")
    return outs[0], grads[0]


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("clockwise", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_native_matches_reference(seed, dtype, channels_last, aligned, clockwise, sampling_ratio):
    rdt = np.float64 if dtype == "float64" else np.float32
    _compare_backends(features(seed, rdt), rotated_family(seed, rdt), dtype, channels_last,
                      output_size=(3, 4), spatial_scale=0.75, sampling_ratio=sampling_ratio,
                      aligned=aligned, clockwise=clockwise)


@pytest.mark.parametrize("n_rois", [2, 40])
def test_both_native_strategies(n_rois):
    """Few RoIs on a large NCHW map: per-channel gathers; otherwise a channels-last copy. Both exact."""
    rng = np.random.default_rng(n_rois)
    x = rng.standard_normal((2, 5, 30, 34)).astype(np.float32)
    r = np.stack([rng.integers(0, 2, n_rois), rng.uniform(0, 34, n_rois), rng.uniform(0, 30, n_rois),
                  rng.uniform(1, 20, n_rois), rng.uniform(1, 20, n_rois), rng.uniform(-180, 180, n_rois)],
                 1).astype(np.float32)
    _compare_backends(x, r, "float32", False, output_size=7, spatial_scale=1.0, sampling_ratio=0)


def test_reference_backward_direct_and_numpy_arrays():
    x, r = features(4, np.float64), rotated_family(4, np.float64)
    out = detkernels.roi_align_rotated(x, r, (2, 3), 0.5, 2, True, False)  # NumPy in, NumPy out
    assert isinstance(out, np.ndarray)
    assert_bytes_equal(out, ref.roi_align_rotated(x, r, 0.5, 2, 3, 2, True, False), "numpy forward")
    g = grad_like(out.shape, 4, np.float64)
    want = ref.roi_align_rotated_backward(g, r, 0.5, 2, 3, N, C, H, W, 2, True, False)
    got = torch.ops.detkernels._roi_align_rotated_backward(_t(g), _t(r), 0.5, 2, 3, N, C, H, W, 2, True, False)
    assert_bytes_equal(got, want, "backward op")
    xt = _t(x).requires_grad_()
    o = detkernels.roi_align_rotated(xt, _t(r), (2, 3), 0.5, 2, True, False)
    (gi,) = torch.autograd.grad(o, xt, _t(g))
    assert_bytes_equal(gi, want, "autograd backward")


def test_results_do_not_depend_on_thread_count():
    x = _t(features(2)).contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _t(rotated_family(2))
    res = []
    old = detkernels.get_num_threads()
    try:
        for n in (1, 2, 3):
            detkernels.set_num_threads(n)
            out = detkernels.roi_align_rotated(x, rois, 4, 0.5, 0)
            (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
            res.append((out, gi))
    finally:
        detkernels.set_num_threads(old)
    for out, gi in res[1:]:
        assert_bytes_equal(out, res[0][0], "forward")
        assert_bytes_equal(gi, res[0][1], "backward")


# ---- hand-computed cases (dyadic boxes: every coordinate exact, so sums do not depend on order) -------

def _int_map(seed, c=3, h=12, w=12, dtype=np.float32):
    return np.random.default_rng(seed).integers(-8, 9, (2, c, h, w)).astype(dtype)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angle_zero_is_roi_align(aligned, dtype):
    x = features(5, dtype)
    # (b, cx, cy, w, h): sizes >= 1 (the legacy clamp then agrees), dyadic so both formulas are exact
    boxes = np.array([[0, 4.5, 5.0, 8, 4], [1, 2.25, 3.5, 4, 8], [1, 6.0, 6.0, 16, 16], [0, -3, 4, 2, 2],
                      [1, 12.5, 10.75, 1, 1]], dtype)
    rot = np.concatenate([boxes, np.zeros((len(boxes), 1), dtype)], 1)
    xyxy = np.stack([boxes[:, 0], boxes[:, 1] - boxes[:, 3] / 2, boxes[:, 2] - boxes[:, 4] / 2,
                     boxes[:, 1] + boxes[:, 3] / 2, boxes[:, 2] + boxes[:, 4] / 2], 1)
    for sr in (1, 2, 4):
        got = detkernels.roi_align_rotated(_t(x), _t(rot), (2, 4), 1.0, sr, aligned)
        want = detkernels.roi_align(_t(x), _t(xyxy), (2, 4), 1.0, sr, aligned)
        assert_bytes_equal(got, want, f"sampling_ratio={sr}")


def test_rotation_by_90_and_180_permutes_bins():
    x = _int_map(0)
    base = np.array([[0, 6.0, 6.0, 8, 8, 0], [1, 5.5, 6.5, 4, 4, 0]], np.float32)
    out0 = detkernels.roi_align_rotated(x, base, 4, 1.0, 2)
    # y = (yy*c - xx*s) + cy, x = (yy*s + xx*c) + cx: at +90 degrees the RoI's +x axis points to -y
    # (up on the map), so the output is the angle-0 output turned clockwise (as an image).
    for angle, want in ((90, np.rot90(out0, -1, axes=(2, 3))), (180, out0[:, :, ::-1, ::-1]),
                        (-90, np.rot90(out0, 1, axes=(2, 3))), (270, np.rot90(out0, 1, axes=(2, 3))),
                        (450, np.rot90(out0, -1, axes=(2, 3)))):
        r = base.copy()
        r[:, 5] = angle
        got = detkernels.roi_align_rotated(x, r, 4, 1.0, 2)
        assert_bytes_equal(got, np.ascontiguousarray(want), f"angle {angle}")


def test_symmetric_map_is_invariant():
    """A map invariant under rotation by 90 degrees about the RoI centre: a square RoI rotated by 90 or
    180 degrees samples the same values, bins permuted; the pooled sum over bins is unchanged."""
    q = np.random.default_rng(7).integers(-8, 9, (1, 2, 5, 5)).astype(np.float64)
    top = np.concatenate([q, np.rot90(q, -1, axes=(2, 3))], 3)
    v = np.concatenate([top, np.rot90(top, 2, axes=(2, 3))], 2)  # [1, 2, 10, 10], rot90-invariant
    assert np.array_equal(np.rot90(v, 1, axes=(2, 3)), v)
    r = np.array([[0, 5.0, 5.0, 6, 6, 0]])  # aligned: centre (4.5, 4.5) in pixel indices
    outs = {}
    for angle in (0, 90, 180):
        r[0, 5] = angle
        outs[angle] = detkernels.roi_align_rotated(v, r, 3, 1.0, 2)
    assert_bytes_equal(outs[90], outs[0], "90 on a rot90-invariant map")
    assert_bytes_equal(outs[180], outs[0], "180")


def test_clockwise_is_negated_angle():
    x, r = features(1), rotated_family(1)
    neg = r.copy()
    neg[:, 5] = -neg[:, 5]
    for aligned in (False, True):
        a = detkernels.roi_align_rotated(_t(x), _t(r), 3, 0.5, 0, aligned, True)
        b = detkernels.roi_align_rotated(_t(x), _t(neg), 3, 0.5, 0, aligned, False)
        assert_bytes_equal(a, b, "clockwise")


def test_outside_rois_and_bad_batch_give_zero():
    x = _t(features(2, np.float64)).requires_grad_()
    r = _t(np.array([[0, -50, -50, 4, 4, 30], [1, W + 20, 3, 5, 5, -10], [N, 5, 5, 4, 4, 0],
                     [np.nan, 5, 5, 4, 4, 0], [-1, 5, 5, 4, 4, 0], [0, 5, 5, 4, 4, np.nan]]))
    out = detkernels.roi_align_rotated(x, r, 2, 1.0, 0)
    assert_bytes_equal(out, torch.zeros_like(out), "zeros")
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert_bytes_equal(gi, torch.zeros_like(gi), "no gradient")


def test_zero_size_rois():
    x = features(3, np.float64)
    # Adaptive grid of a zero-size aligned RoI: no samples -> 0.
    z = np.array([[0, 5.0, 6.0, 0, 0, 30.0], [1, 3.0, 2.0, 0, 5, 0]])
    assert_bytes_equal(detkernels.roi_align_rotated(x, z, 2, 1.0, 0), np.zeros((2, C, 2, 2)), "no samples")
    # Fixed grid: every sample is the centre, whatever the angle: roi_align of the point box.
    out = detkernels.roi_align_rotated(x, np.array([[0, 5.0, 6.0, 0, 0, 33.0]]), 2, 1.0, 2)
    want = detkernels.roi_align(x, np.array([[0, 5.0, 6.0, 5.0, 6.0]]), 2, 1.0, 2, True)
    assert_bytes_equal(out, want, "point")
    # Legacy mode clamps w, h to >= 1.
    small = np.array([[0, 5.0, 6.0, 0.2, 0.5, 20.0]])
    one = np.array([[0, 5.0, 6.0, 1.0, 1.0, 20.0]])
    assert_bytes_equal(detkernels.roi_align_rotated(x, small, 2, 1.0, 0, False),
                       detkernels.roi_align_rotated(x, one, 2, 1.0, 0, False), "legacy clamp")


def test_adaptive_grid_is_capped():
    x = features(0, np.float64)
    r = np.array([[0, 5.0, 5.0, 2e6, 2e6, 10.0]])
    out = detkernels.roi_align_rotated(x, r, 2, 1.0, 0)
    assert_bytes_equal(out, detkernels.roi_align_rotated(x, r, 2, 1.0, ref.MAX_GRID_ROTATED), "cap")
    assert_bytes_equal(out, detkernels.roi_align_rotated(x, r, 2, 1.0, 0, backend="numpy"), "numpy")


def test_empty_rois_and_empty_batch():
    x = features(0)
    out = detkernels.roi_align_rotated(_t(x), torch.zeros((0, 6)), 3)
    assert tuple(out.shape) == (0, C, 3, 3)
    e = features(0, n=0)
    r = np.array([[0, 5, 5, 4, 4, 0], [-0.5, 5, 5, 4, 4, 0]], np.float32)
    for backend in ("native", "numpy"):
        out = detkernels.roi_align_rotated(_t(e), _t(r), 2, backend=backend)
        assert_bytes_equal(out, torch.zeros((2, C, 2, 2)), backend)


# ---- bad inputs ---------------------------------------------------------------------------------------

def test_bad_inputs():
    x = _t(features(0))
    r = _t(rotated_family(0)[:3])
    with pytest.raises(AssertionError, match=r"Tensor\[K, 6\]"):
        detkernels.roi_align_rotated(x, r[:, :5], 2)
    with pytest.raises(ValueError, match="input must have shape"):
        detkernels.roi_align_rotated(x[0], r, 2)
    with pytest.raises(ValueError, match="output_size"):
        detkernels.roi_align_rotated(x, r, (0, 2))
    with pytest.raises(RuntimeError, match="same type"):
        detkernels.roi_align_rotated(x, r.double(), 2)
    with pytest.raises(RuntimeError, match="floating point"):
        detkernels.roi_align_rotated(x.int(), r.int(), 2)
    with pytest.raises(RuntimeError, match="sampling_ratio must be an int"):
        detkernels.roi_align_rotated(x, r, 2, 1.0, 2.5)
    with pytest.raises(ValueError, match="sampling_ratio must be <= 256"):
        detkernels.roi_align_rotated(x, r, 2, 1.0, 257)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.detkernels._roi_align_rotated_backward(torch.zeros(3, C, 2, 3), r, 1.0, 2, 2, N, C, H, W, 0,
                                                          True, False)
    with pytest.raises(ValueError, match=r"output_size must be an int or a pair"):
        detkernels.roi_align_rotated(x, r, (1, 2, 3))


# ---- torch integration --------------------------------------------------------------------------------

@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_float64(aligned):
    x = _t(features(7, np.float64, c=3)).requires_grad_()
    rois = _t(rotated_family(7, np.float64)[:6])
    rois[:, 5] = torch.tensor([0.0, 30, -75, 90, 200, 13])
    rois[:, 3:5] = rois[:, 3:5].abs().nan_to_num(1.0).clamp(1, 10)
    rois[:, 1:3] = rois[:, 1:3].nan_to_num(3.0).clamp(-5, 15)
    rois[:, 0] = torch.tensor([0.0, 1, 0, 1, 0, 1])
    assert torch.autograd.gradcheck(
        lambda t: detkernels.roi_align_rotated(t, rois, (2, 3), 0.5, 2, aligned, False), (x,))
    assert torch.autograd.gradcheck(
        lambda t: detkernels.roi_align_rotated(t, rois, 2, 1.0, 0, aligned, True), (x,))


def test_double_backward_raises():
    x = _t(features(0, np.float64)).requires_grad_()
    out = detkernels.roi_align_rotated(x, _t(rotated_family(0, np.float64)[:4]), 2, 1.0, 2)
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="double backwards"):
        gi.sum().backward()


@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_opcheck():
    x = _t(features(2))
    rois = _t(rotated_family(2)[:6])
    for xx in (x, x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.detkernels.roi_align_rotated.default, (xx, rois, 0.5, 2, 3, 2, True, False))


def test_compile_fullgraph_dynamic():
    def f(x, rois):
        return detkernels.roi_align_rotated(x, rois, (3, 3), 0.5, 2, True, False)

    cf = torch.compile(f, fullgraph=True, dynamic=True, backend="eager")
    for k, hw in ((3, 10), (5, 12)):
        x = torch.randn(2, 4, hw, hw, generator=torch.Generator().manual_seed(k), requires_grad=True)
        rois = _t(rotated_family(k)[: k + 4])
        got, want = cf(x, rois), f(x, rois)
        assert_bytes_equal(got, want, "compiled forward")
        ga = torch.autograd.grad(got, x, torch.ones_like(got))[0]
        gb = torch.autograd.grad(want, x, torch.ones_like(want))[0]
        assert_bytes_equal(ga, gb, "compiled backward")


def test_export():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pool = detkernels.RoIAlignRotated((2, 2), 0.5, 2)

        def forward(self, x, rois):
            return self.pool(x, rois)

    x, rois = _t(features(1)), _t(rotated_family(1)[:5])
    ep = torch.export.export(M(), (x, rois))
    assert "detkernels.roi_align_rotated" in str(ep.graph)
    assert_bytes_equal(ep.module()(x, rois), M()(x, rois), "exported")


def test_module():
    m = detkernels.RoIAlignRotated(3, 0.25, 2, aligned=False, clockwise=True)
    assert repr(m) == ("RoIAlignRotated(output_size=3, spatial_scale=0.25, sampling_ratio=2, aligned=False, "
                       "clockwise=True)")
    x, r = _t(features(0)), _t(rotated_family(0))
    assert_bytes_equal(m(x, r), detkernels.roi_align_rotated(x, r, 3, 0.25, 2, False, True), "module")
    assert math.isclose(detkernels.RoIAlignRotated((2, 2), 1).spatial_scale, 1.0)


def test_torchscript():
    """torch.jit.script of the function, and of code calling it, compiles to detkernels' op: eager's bytes."""
    x = _t(features(0, np.float64)).requires_grad_()
    r = _t(rotated_family(0, np.float64))
    scripted = torch.jit.script(detkernels.roi_align_rotated)
    want = detkernels.roi_align_rotated(x, r, 3, 0.5, 2, False, True)
    got = scripted(x, r, 3, 0.5, 2, False, True)
    assert_bytes_equal(got, want, "scripted")
    (g1,) = torch.autograd.grad(got.sum(), x)
    (g2,) = torch.autograd.grad(want.sum(), x)
    assert_bytes_equal(g1, g2, "scripted backward")

    class M(torch.nn.Module):
        def forward(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return detkernels.roi_align_rotated(x, r, [2, 3], 1.0, 0)

    sm = torch.jit.script(M())
    assert "detkernels::roi_align_rotated_script" in str(sm.graph)
    assert_bytes_equal(sm(x, r), detkernels.roi_align_rotated(x, r, (2, 3), 1.0, 0), "scripted module")
