"""roi_align and ps_roi_align: reference vs torchvision, native vs reference (byte for byte, every
dtype and layout, forward and backward), autograd/compile/opcheck integration, divergences from
torchvision (docs/SPEC.md §1.3-1.5), bad inputs (docs/SPEC.md §4)."""
from __future__ import annotations

import numpy as np
import pytest

from _helpers import assert_bytes_equal
from _roi_inputs import C, H, N, W, boxes_adversarial, boxes_valid, features, grad_like

torch = pytest.importorskip("torch")  # before detkernels: its custom ops register at import

import detkernels  # noqa: E402
from detkernels.reference import roi_align as ref  # noqa: E402

SEEDS = range(3)
DTYPES = ["float32", "float64", "float16", "bfloat16"]


def _t(a, dtype=None):
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t if dtype is None else t.to(getattr(torch, dtype))


def _layout(x, channels_last: bool):
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _ref_dtype(dtype: str) -> str:
    return "float64" if dtype == "float64" else "float32"


# ---- reference == torchvision (CPU), where torchvision is well defined --------------------------------

@pytest.mark.torchvision
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_reference_matches_torchvision(seed, dtype, aligned, sampling_ratio):
    tv = pytest.importorskip("torchvision")  # noqa: F841  (registers torch.ops.torchvision)
    x, rois = features(seed, dtype), boxes_valid(seed, dtype=dtype)
    args = (0.75, 3, 4, sampling_ratio, aligned)
    out = torch.ops.torchvision.roi_align(_t(x), _t(rois), *args)
    assert_bytes_equal(ref.roi_align(x, rois, *args), out, "forward")
    g = grad_like(out.shape, seed, dtype)
    gi = torch.ops.torchvision._roi_align_backward(_t(g), _t(rois), 0.75, 3, 4, N, C, H, W, sampling_ratio, aligned)
    assert_bytes_equal(ref.roi_align_backward(g, rois, 0.75, 3, 4, N, C, H, W, sampling_ratio, aligned), gi, "backward")


@pytest.mark.torchvision
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_reference_matches_torchvision(seed, dtype, sampling_ratio):
    pytest.importorskip("torchvision")
    x, rois = features(seed, dtype, c=24), boxes_valid(seed, dtype=dtype)
    # torchvision's count has no max(., 1): a RoI with no samples gives 0/0 = NaN (or -0.0);
    # we give +0.0 (pinned in test_ps_zero_samples_give_zero). Compare the other RoIs.
    keep = (rois[:, 3] - rois[:, 1] > 0) & (rois[:, 4] - rois[:, 2] > 0)
    rois = rois[keep]
    out, cmap = torch.ops.torchvision.ps_roi_align(_t(x), _t(rois), 0.75, 3, 4, sampling_ratio)
    assert_bytes_equal(ref.ps_roi_align(x, rois, 0.75, 3, 4, sampling_ratio), out, "forward")
    g = grad_like(out.shape, seed, dtype)
    gi = torch.ops.torchvision._ps_roi_align_backward(_t(g), _t(rois), cmap, 0.75, 3, 4, sampling_ratio, N, 24, H, W)
    assert_bytes_equal(ref.ps_roi_align_backward(g, rois, 0.75, 3, 4, sampling_ratio, N, 24, H, W), gi, "backward")


# ---- native == reference, byte for byte ---------------------------------------------------------------

def _compare_backends(fn, x, rois, dtype, channels_last, **kw):
    """Forward and backward of `fn` (a public detkernels function) on native vs the NumPy backend."""
    xt = _layout(_t(x, dtype), channels_last).requires_grad_()
    rt = _t(rois, "float32" if dtype in ("float16", "bfloat16") and rois.dtype == np.float32 else dtype)
    outs, grads = [], []
    for backend in ("native", "numpy"):
        out = fn(xt, rt, backend=backend, **kw)
        g = _t(grad_like(out.shape, 0, np.float32), dtype)
        (gi,) = torch.autograd.grad(out, xt, g)
        outs.append(out)
        grads.append(gi)
    assert out.dtype == xt.dtype and grads[0].dtype == xt.dtype
    assert_bytes_equal(outs[0], outs[1], "forward")
    assert_bytes_equal(grads[0], grads[1], "backward")
    return outs[0], grads[0]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_native_matches_reference(seed, dtype, channels_last, aligned, sampling_ratio):
    rdt = np.float64 if dtype == "float64" else np.float32
    x = features(seed, rdt)
    rois = np.concatenate([boxes_valid(seed, 10, rdt), boxes_adversarial(seed, rdt)])
    _compare_backends(detkernels.roi_align, x, rois, dtype, channels_last, output_size=(3, 4),
                      spatial_scale=0.75, sampling_ratio=sampling_ratio, aligned=aligned)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_native_matches_reference(seed, dtype, channels_last, sampling_ratio):
    rdt = np.float64 if dtype == "float64" else np.float32
    x = features(seed, rdt, c=24)
    rois = np.concatenate([boxes_valid(seed, 10, rdt), boxes_adversarial(seed, rdt)])
    _compare_backends(detkernels.ps_roi_align, x, rois, dtype, channels_last, output_size=(3, 4),
                      spatial_scale=0.75, sampling_ratio=sampling_ratio)


@pytest.mark.parametrize("n_rois", [2, 40])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_native_strategies(n_rois, dtype):
    """The native kernel gathers per channel for few RoIs on a large NCHW map and transposes to
    channels-last otherwise (detkernels/csrc/ops/roi_align/roi_align_cpu.cpp): both are exact."""
    rng = np.random.default_rng(n_rois)
    x = rng.standard_normal((2, 5, 30, 34)).astype(dtype)
    xy = rng.uniform(-5, 30, (n_rois, 2))
    rois = np.concatenate([rng.integers(0, 2, (n_rois, 1)), xy, xy + rng.uniform(0, 12, (n_rois, 2))], 1).astype(dtype)
    for cl in (False, True):
        _compare_backends(detkernels.roi_align, x, rois, dtype, cl, output_size=(2, 3), spatial_scale=1.0,
                          sampling_ratio=-1, aligned=False)


def test_numpy_arrays_and_non_contiguous():
    x = features(0)
    rois = boxes_valid(0)
    xs = np.stack([x, -x], 2).reshape(N, 2 * C, H, W)[:, ::2]  # strided view of x
    out = detkernels.roi_align(xs, rois, 3, 0.5, 2)
    assert isinstance(out, np.ndarray)
    assert_bytes_equal(out, ref.roi_align(x, rois, 0.5, 3, 3, 2, False), "numpy")
    xt = _t(np.stack([x, -x], 2).reshape(N, 2 * C, H, W))[:, ::2]
    assert_bytes_equal(detkernels.roi_align(xt, _t(rois), 3, 0.5, 2), out, "torch strided")


def test_half_is_float32_rounded_once():
    """docs/SPEC.md §1.5: float32 arithmetic, one rounding; rois may stay float32."""
    x, rois = features(1), boxes_valid(1)
    want = ref.roi_align(x.astype(np.float16).astype(np.float32), rois, 0.75, 3, 3, 2, True)
    for dt in ("float16", "bfloat16"):
        xh = _t(x, dt)
        got = detkernels.roi_align(xh, _t(rois), 3, 0.75, 2, True)
        exp = detkernels.roi_align(xh.float(), _t(rois), 3, 0.75, 2, True).to(xh.dtype)
        assert got.dtype == xh.dtype
        assert_bytes_equal(got, exp, dt)
        assert_bytes_equal(detkernels.roi_align(xh, _t(rois, dt), 3, 0.75, 2, True).float(),
                           detkernels.roi_align(xh.float(), _t(rois, dt).float(), 3, 0.75, 2, True).to(xh.dtype).float(),
                           dt + " rois")
    assert_bytes_equal(detkernels.roi_align(x.astype(np.float16), rois, 3, 0.75, 2, True), want.astype(np.float16), "numpy f16")


def test_results_do_not_depend_on_thread_count():
    x = _layout(_t(features(2)), True).requires_grad_()
    rois = _t(np.concatenate([boxes_valid(2, 40), boxes_adversarial(2)]))
    res = []
    old = detkernels.get_num_threads()
    try:
        for n in (1, 2, 3):
            detkernels.set_num_threads(n)
            out = detkernels.roi_align(x, rois, 4, 0.5, -1)
            (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
            res.append((out, gi))
    finally:
        detkernels.set_num_threads(old)
    for out, gi in res[1:]:
        assert_bytes_equal(out, res[0][0], "forward")
        assert_bytes_equal(gi, res[0][1], "backward")


# ---- edge cases --------------------------------------------------------------------------------------

def test_empty_rois_and_list_boxes():
    x = _t(features(0)).requires_grad_()
    out = detkernels.roi_align(x, torch.zeros(0, 5), (2, 3), 1.0, 2)
    assert out.shape == (0, C, 2, 3)
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert gi.shape == x.shape and not gi.any()
    assert detkernels.ps_roi_align(_t(features(0, c=24)), [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 6, 2, 2)
    b = _t(boxes_valid(0))
    lst = [b[b[:, 0] == i, 1:] for i in range(N)]
    rois = torch.cat([b[b[:, 0] == i] for i in range(N)])
    assert_bytes_equal(detkernels.roi_align(x, lst, 3, 0.5, 2), detkernels.roi_align(x, rois, 3, 0.5, 2), "list")


def test_batch_index_rule():
    """trunc(b) for -1 < b < N; anything else (NaN, inf, -1, N) reads nothing: 0, no gradient."""
    x = _t(features(3)).requires_grad_()
    box = [1.0, 1.0, 6.0, 7.0]
    rois = torch.tensor([[b] + box for b in (0.0, N - 1.0, N - 0.5, -0.5, -1.0, N, float("nan"), float("inf"))])
    out = detkernels.roi_align(x, rois, 3, 1.0, 2)
    assert_bytes_equal(out[2], out[1], "N-0.5 -> N-1")
    assert_bytes_equal(out[3], out[0], "-0.5 -> 0")
    assert out[0].abs().sum() > 0 and out[1].abs().sum() > 0
    assert_bytes_equal(out[4:], torch.zeros_like(out[4:]), "out of range")
    g = torch.zeros_like(out)
    g[4:] = 1.0
    (gi,) = torch.autograd.grad(out, x, g)
    assert_bytes_equal(gi, torch.zeros_like(gi), "no gradient from bad batch indices")


@pytest.mark.parametrize("backend", ["native", "numba", "numpy"])
@pytest.mark.parametrize("op", ["roi_align", "ps_roi_align", "roi_pool", "ps_roi_pool"])
def test_empty_batch_reads_nothing(op, backend):
    """Issue 19.1: N = 0 feature maps with a batch index in (-1, 0) segfaulted (native), returned
    garbage (numba) or raised IndexError (reference): trunc(-0.5) = 0 is no image of an empty batch."""
    if why := detkernels._registry.why_not(backend, op.removeprefix("ps_"), "cpu", "float32"):
        pytest.skip(why)
    x = torch.empty(0, 4, 8, 8, requires_grad=True)
    rois = torch.tensor([[-0.5, 0.0, 0.0, 4.0, 4.0], [0.0, 1, 1, 5, 5], [-0.0, 2, 2, 3, 3]])
    args = (2, 1.0, 2) if op.endswith("align") else (2, 1.0)
    out = getattr(detkernels, op)(x, rois, *args, backend=backend)
    assert_bytes_equal(out, torch.zeros(3, 1 if op.startswith("ps") else 4, 2, 2), "forward")
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert gi.shape == x.shape
    np_out = getattr(detkernels, op)(x.detach().numpy(), rois.numpy(), *args, backend=backend)
    assert_bytes_equal(np_out, out.detach().numpy(), "numpy arrays")


def test_out_of_range_samples_contribute_exactly_zero():
    """docs/SPEC.md §1.3: torchvision CPU adds 0 * input[b, c, 0, 0] for out-of-range samples."""
    x = torch.zeros(1, 2, 8, 8)
    x[0, 0, 0, 0] = float("inf")
    x[0, 1, 0, 0] = float("nan")
    rois = torch.tensor([[0.0, 20.0, 20.0, 30.0, 30.0]])  # wholly outside
    out = detkernels.roi_align(x, rois, 2, 1.0, 2)
    assert_bytes_equal(out, torch.zeros(1, 2, 2, 2), "ours")
    tv = pytest.importorskip("torchvision")
    assert torch.isnan(tv.ops.roi_align(x, rois, 2, 1.0, 2)).all()  # the divergence


def test_nan_inf_rois_do_not_crash():
    """torchvision segfaults on a NaN RoI coordinate ((int)NaN); ours gives 0 / finite values."""
    x = _t(features(4)).requires_grad_()
    rois = torch.tensor([[0.0, float("nan"), 1, 5, 5], [1, 1, 1, float("inf"), 5], [0, -float("inf"), 0, 3, 3]])
    for aligned in (False, True):
        out = detkernels.roi_align(x, rois, 3, 1.0, -1, aligned)
        assert_bytes_equal(out, torch.zeros_like(out), "NaN/inf rois")
        (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
        assert not gi.any()
    assert not detkernels.ps_roi_align(_t(features(4, c=18)), rois, 3, 1.0, -1).any()


@pytest.mark.torchvision
def test_ps_zero_samples_give_zero():
    """torchvision: count = gh*gw without max(., 1) -> 0/0 = NaN for an empty RoI (adaptive)."""
    tv = pytest.importorskip("torchvision")
    x = _t(features(5, c=8))
    rois = torch.tensor([[0.0, 1, 1, 1, 1]])
    assert_bytes_equal(detkernels.ps_roi_align(x, rois, 2, 1.0, -1), torch.zeros(1, 2, 2, 2), "ours")
    assert torch.isnan(tv.ops.ps_roi_align(x, rois, 2, 1.0, -1)).all()


def test_huge_roi_grid_is_capped():
    """A bin larger than MAX_GRID pixels samples MAX_GRID points per axis (torchvision would need
    > 4e9 samples per bin): still equal to the reference, and finite."""
    x = features(6)
    rois = np.array([[0, -3e5, -3e5, 3e5, 3e5], [1, 0, 0, 4e6, 3]], np.float32)
    for r in (rois[:1], rois[1:]):
        g = ref._geometry(r[0], np.float32, N, H, W, 1.0, 2, 2, -1, False, False)
        assert max(g.gh, g.gw) == ref.MAX_GRID
    out = detkernels.roi_align(_t(x), _t(rois), 2, 1.0, -1)
    assert_bytes_equal(out, ref.roi_align(x, rois, 1.0, 2, 2, -1, False), "huge")
    assert torch.isfinite(out).all()


def test_empty_feature_map():
    x = torch.zeros(1, 3, 0, 5, requires_grad=True)
    out = detkernels.roi_align(x, torch.tensor([[0.0, 0, 0, 4, 4]]), 2, 1.0, -1)
    assert_bytes_equal(out, torch.zeros(1, 3, 2, 2), "empty map")
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert gi.shape == x.shape


# ---- autograd / integration --------------------------------------------------------------------------

@pytest.mark.parametrize("aligned", [False, True])
def test_gradcheck_float64(aligned):
    x = _t(features(7, np.float64, c=8)).requires_grad_()
    rois = _t(boxes_valid(7, 6, np.float64))
    assert torch.autograd.gradcheck(lambda t: detkernels.roi_align(t, rois, (2, 3), 0.5, 2, aligned), (x,))
    assert torch.autograd.gradcheck(lambda t: detkernels.ps_roi_align(t, rois, 2, 0.5, 2), (x,))


def test_double_backward_raises():
    x = _t(features(0, np.float64)).requires_grad_()
    out = detkernels.roi_align(x, _t(boxes_valid(0, 6, np.float64)), 2, 1.0, 2)
    (gi,) = torch.autograd.grad(out, x, torch.ones_like(out, requires_grad=True), create_graph=True)
    with pytest.raises(RuntimeError, match="double backwards"):
        gi.sum().backward()


def test_deterministic_mode_does_not_raise():
    x = _t(features(1)).requires_grad_()
    rois = _t(boxes_valid(1))
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        a = detkernels.roi_align(x, rois, 3, 0.5, 2)
        (g1,) = torch.autograd.grad(a, x, torch.ones_like(a))
        (g2,) = torch.autograd.grad(detkernels.roi_align(x, rois, 3, 0.5, 2), x, torch.ones_like(a))
    finally:
        torch.use_deterministic_algorithms(old)
    assert_bytes_equal(g1, g2, "run to run")


# opcheck's own AOT test reads .grad of a non-leaf (it warns for aten.sin too).
OPCHECK_WARNING = "ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning"


@pytest.mark.filterwarnings(OPCHECK_WARNING)
def test_opcheck():
    x = _t(features(2))
    rois = _t(boxes_valid(2, 6))
    for xx in (x, x.clone().requires_grad_(), x.contiguous(memory_format=torch.channels_last)):
        torch.library.opcheck(torch.ops.detkernels.roi_align.default, (xx, rois, 0.5, 2, 3, 2, True))
        torch.library.opcheck(torch.ops.detkernels.ps_roi_align.default, (xx, rois, 0.5, 2, 2, -1))


@pytest.mark.slow
def test_compile_fullgraph_dynamic():
    def f(x, rois, boxes):
        return (detkernels.roi_align(x, rois, (3, 3), 0.5, 2, False),
                detkernels.ps_roi_align(x, boxes, 2, 0.5, 2))

    cf = torch.compile(f, fullgraph=True, dynamic=True)
    for k, hw in ((3, 10), (5, 12)):
        x = torch.randn(2, 8, hw, hw, generator=torch.Generator().manual_seed(k), requires_grad=True)
        rois = _t(boxes_valid(k, k + 6))
        boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
        rois = torch.cat([rois[rois[:, 0] == i] for i in range(2)])
        got, want = cf(x, rois, boxes), f(x, rois, boxes)
        for a, b in zip(got, want):
            assert_bytes_equal(a, b, "compiled forward")
        ga = torch.autograd.grad(got, x, [torch.ones_like(t) for t in got])[0]
        gb = torch.autograd.grad(want, x, [torch.ones_like(t) for t in want])[0]
        assert_bytes_equal(ga, gb, "compiled backward")


def test_fx_leaf():
    fx = pytest.importorskip("torch.fx")

    class M(torch.nn.Module):
        def forward(self, x, rois):
            return detkernels.roi_align(x, rois, 2, 0.5, 2)

    gm = fx.symbolic_trace(M())
    assert any(n.op == "call_function" and n.target is detkernels.roi_align for n in gm.graph.nodes)
    x, rois = _t(features(0)), _t(boxes_valid(0))
    assert_bytes_equal(gm(x, rois), M()(x, rois), "fx")


# ---- modules -------------------------------------------------------------------------------------------

@pytest.mark.torchvision
def test_module_reprs_match_torchvision():
    tv = pytest.importorskip("torchvision")
    pairs = [(detkernels.RoIAlign((7, 7), 0.25, 2), tv.ops.RoIAlign((7, 7), 0.25, 2)),
             (detkernels.RoIAlign(5, 0.5, -1, True), tv.ops.RoIAlign(5, 0.5, -1, True)),
             (detkernels.PSRoIAlign(7, 0.25, 2), tv.ops.PSRoIAlign(7, 0.25, 2)),
             (detkernels.MultiScaleRoIAlign(["0", "1"], 7, 2), tv.ops.MultiScaleRoIAlign(["0", "1"], 7, 2))]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


@pytest.mark.torchvision
@pytest.mark.parametrize("seed", SEEDS)
def test_multiscale_matches_torchvision(seed):
    tv = pytest.importorskip("torchvision")
    g = torch.Generator().manual_seed(seed)
    feats = {"0": torch.randn(2, 4, 32, 40, generator=g), "p": torch.randn(2, 4, 1, 1, generator=g),
             "1": torch.randn(2, 4, 16, 20, generator=g), "2": torch.randn(2, 4, 8, 10, generator=g)}
    image_shapes = [(128, 160), (120, 150)]
    boxes = []
    for _ in range(2):
        xy = torch.rand(12, 2, generator=g) * torch.tensor([150.0, 120.0])
        wh = torch.rand(12, 2, generator=g) ** 2 * 200
        boxes.append(torch.cat([xy, xy + wh], 1))
    for names in (["0", "1", "2"], ["1"]):
        ours = detkernels.MultiScaleRoIAlign(names, 3, 2)
        theirs = tv.ops.MultiScaleRoIAlign(names, 3, 2)
        assert_bytes_equal(ours(feats, boxes, image_shapes), theirs(feats, boxes, image_shapes), str(names))
        assert ours.scales == theirs.scales
        assert (ours.map_levels.k_min, ours.map_levels.k_max) == (theirs.map_levels.k_min, theirs.map_levels.k_max)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiscale_masked_path_same_bytes(seed, monkeypatch):
    """The GPU/tracing path of MultiScaleRoIAlign (no host sync: every level pools every RoI, the
    others' with batch index -1) gives the gather path's bytes, forward and backward, also for
    boxes whose level is NaN (they match no level: zeros)."""
    import detkernels._torch.script  # noqa: F401  (registers builtins now, not while roi_align is patched)
    from detkernels.api import roi_modules
    from detkernels.api.roi_modules import _pool_levels

    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(2, 4, 32, 40, generator=g), torch.randn(2, 4, 16, 20, generator=g),
             torch.randn(2, 4, 8, 10, generator=g)]
    xy = torch.rand(30, 2, generator=g) * 150
    wh = torch.rand(30, 2, generator=g) ** 2 * 200
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=g).float(), xy, xy + wh], 1)
    rois[3, 1] = float("nan")
    levels = torch.randint(0, 3, (30,), generator=g)
    levels[3] = torch.iinfo(torch.int64).min  # what a NaN level converts to
    gout = torch.randn(30, 4, 3, 3, generator=g)
    res, seen = [], []
    impl = roi_modules.roi_align
    monkeypatch.setattr(roi_modules, "roi_align", lambda x, r, *a: seen.append(r.detach()) or impl(x, r, *a))
    for masked in (False, True):
        fs = [f.clone().requires_grad_() for f in feats]
        out = _pool_levels(fs, [1 / 4, 1 / 8, 1 / 16], rois, levels, (3, 3), 2, masked)
        out.backward(gout)
        res.append([out.detach()] + [f.grad for f in fs])
    for k, (a, b) in enumerate(zip(*res)):
        assert_bytes_equal(b, a, f"masked vs gather, tensor {k}")
    assert torch.count_nonzero(res[0][0][3]) == 0
    # The masked calls pool every RoI, those of other levels (and the NaN one) reading nothing.
    for level, r in enumerate(seen[3:]):
        assert r.shape == rois.shape
        assert torch.equal(r[:, 0] == -1, levels != level)


def test_multiscale_compiles_fullgraph():
    """Under torch.compile the module takes the masked path: one graph, no data-dependent shapes."""
    g = torch.Generator().manual_seed(0)
    feats = {"0": torch.randn(2, 4, 32, 40, generator=g), "1": torch.randn(2, 4, 16, 20, generator=g)}
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 40.0], [10.0, 5.0, 150.0, 110.0]]),
             torch.tensor([[3.0, 4.0, 60.0, 70.0]])]
    m = detkernels.MultiScaleRoIAlign(["0", "1"], 3, 2)
    want = m(feats, boxes, [(128, 160), (128, 160)])
    torch._dynamo.reset()
    got = torch.compile(m, fullgraph=True, backend="eager")(feats, boxes, [(128, 160), (128, 160)])
    assert_bytes_equal(got, want, "compiled MultiScaleRoIAlign")


# ---- bad inputs (docs/SPEC.md §4) ----------------------------------------------------------------------------

def test_bad_inputs():
    x = _t(features(0))
    with pytest.raises(AssertionError, match=r"Tensor\[K, 5\]"):
        detkernels.roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(AssertionError, match=r"List\[Tensor\[L, 4\]\]"):
        detkernels.roi_align(x, [torch.zeros(3, 5)], 2)
    with pytest.raises(RuntimeError, match="same type"):
        detkernels.roi_align(x, torch.zeros(3, 5, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match="same type"):
        detkernels.roi_align(x.half(), torch.zeros(3, 5, dtype=torch.float64), 2)
    with pytest.raises(RuntimeError, match="floating point"):
        detkernels.roi_align(x.int(), torch.zeros(3, 5, dtype=torch.int32), 2)
    with pytest.raises(RuntimeError, match="multiple of pooling"):
        detkernels.ps_roi_align(x, torch.zeros(3, 5), 3)
    with pytest.raises(ValueError, match="input must have shape"):
        detkernels.roi_align(x[0], torch.zeros(3, 5), 2)
    with pytest.raises(ValueError, match="output_size"):
        detkernels.roi_align(x, torch.zeros(3, 5), (0, 2))
    with pytest.raises(TypeError):
        detkernels.roi_align(x, np.zeros((3, 5), np.float32), 2)
    with pytest.raises(ValueError, match="grad must have shape"):
        torch.ops.detkernels._roi_align_backward(torch.zeros(2, C, 2, 2), torch.zeros(3, 5), 1.0, 2, 2, N, C, H, W, 2, False)


@pytest.mark.parametrize("backend", ["native", "numba", "numpy"])
def test_sampling_ratio_is_checked_before_any_kernel(backend):
    """Issue 19.4: sampling_ratio = 3000, 10**5, 10**9 ended in std::bad_alloc inside the native
    kernel (its per-RoI tap list held bins x ratio**2 entries) and kept the reference busy for
    minutes; 2.7 was truncated to 2 (torchvision's int schema refuses it). Every backend, every
    entry (NumPy arrays, torch eager, the custom ops and their backward, torch.compile)."""
    if why := detkernels._registry.why_not(backend, "roi_align", "cpu", "float32"):
        pytest.skip(why)
    x, r = _t(features(0)), _t(boxes_valid(0, 6))
    for sr in (3000, 10**5, 10**9):
        for f in (detkernels.roi_align, detkernels.ps_roi_align):
            xx = x[:, :4] if f is detkernels.roi_align else _t(features(0, c=8))
            with pytest.raises(ValueError, match=rf"sampling_ratio must be <= 256 .*got {sr}"):
                f(xx, r, 2, 1.0, sr, backend=backend)
            with pytest.raises(ValueError, match="sampling_ratio must be <= 256"):
                f(xx.numpy(), r.numpy(), 2, 1.0, sr, backend=backend)
    with pytest.raises(RuntimeError, match="sampling_ratio must be an int, got float 2.7"):  # as torchvision
        detkernels.roi_align(x, r, 2, 1.0, 2.7, backend=backend)
    with pytest.raises(ValueError, match="sampling_ratio must be <= 256"):
        torch.ops.detkernels.roi_align(x, r, 1.0, 2, 2, 10**9, False)
    with pytest.raises(ValueError, match="sampling_ratio must be <= 256"):
        torch.ops.detkernels._roi_align_backward(torch.zeros(6, C, 2, 2), r, 1.0, 2, 2, N, C, H, W, 3000, False)
    with pytest.raises(ValueError, match="sampling_ratio must be <= 256"):
        ref.roi_align(features(0), boxes_valid(0, 6), 1.0, 2, 2, 10**9, False)  # refused, not spun


def test_sampling_ratio_limit_itself_works():
    """The largest explicit ratio (256**2 = 65536 samples per bin): same bytes as the reference,
    forward and backward, on every CPU backend; the native kernel's memory does not grow with it."""
    x = features(1, np.float64, c=3)
    rois = np.array([[0, -2, -1, 9, 8], [1, 3, 2, 12, 10]], np.float64)
    want = ref.roi_align(x, rois, 1.0, 1, 2, 256, True)
    g = grad_like(want.shape, 1, np.float64)
    want_gi = ref.roi_align_backward(g, rois, 1.0, 1, 2, *x.shape, 256, True)
    for backend in ("native", "numba"):
        if detkernels._registry.why_not(backend, "roi_align", "cpu", "float64"):
            continue
        xt = _t(x).requires_grad_()
        out = detkernels.roi_align(xt, _t(rois), (1, 2), 1.0, 256, True, backend=backend)
        assert_bytes_equal(out, want, backend)
        (gi,) = torch.autograd.grad(out, xt, _t(g))
        assert_bytes_equal(gi, want_gi, backend + " backward")


@pytest.mark.parametrize("shape", [(0, 4, 8, 8), (1, 0, 8, 8), (1, 4, 0, 8), (1, 4, 8, 0), (2, 1, 1, 1)])
@pytest.mark.parametrize("fn", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"])
def test_degenerate_shapes(shape, fn):
    """No images, no channels, empty maps: no crash, native == reference, forward and backward."""
    f = getattr(detkernels, fn)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), requires_grad=True)
    rois = torch.tensor([[0, 1, 1, 5, 5.0], [0, -1, -1, 3, 9], [1, 0, 0, 1, 1]])
    res = []
    for backend in ("native", "numpy"):
        out = f(x, rois, 1, backend=backend)
        (gi,) = torch.autograd.grad(out, x, torch.ones_like(out))
        res.append((out, gi))
    assert_bytes_equal(res[0][0], res[1][0], "forward")
    assert_bytes_equal(res[0][1], res[1][1], "backward")


@pytest.mark.torchvision
def test_half_divergence_from_torchvision():
    """docs/SPEC.md §1.5: torchvision CPU rounds every float16 operation; ours rounds once, so it is
    never further from the float64 result than torchvision's."""
    tv = pytest.importorskip("torchvision")
    x, rois = _t(features(8)).half(), _t(boxes_valid(8)).half()
    ours = detkernels.roi_align(x, rois, 3, 0.75, -1)
    theirs = tv.ops.roi_align(x, rois, 3, 0.75, -1)
    exact = detkernels.roi_align(x.double(), rois.double(), 3, 0.75, -1)
    assert (ours != theirs).any()
    assert (ours.double() - exact).abs().max() <= (theirs.double() - exact).abs().max()


class _Scripted(torch.nn.Module):
    def forward(self, x: torch.Tensor, rois: torch.Tensor, boxes: list[torch.Tensor]) -> list[torch.Tensor]:
        return [detkernels.roi_align(x, rois, 3, spatial_scale=0.5, sampling_ratio=2),
                detkernels.roi_align(x, boxes, [3, 2], 0.5, -1, True),
                detkernels.ps_roi_align(x, rois, 2, 0.5, 2),
                detkernels.roi_pool(x, boxes, 3, 0.5),
                detkernels.ps_roi_pool(x, rois, (2, 2), 0.5)]


@pytest.mark.torchvision
def test_torchscript():
    """torch.jit.script compiles calls to the public functions to detkernels' ops, also inside
    torchvision's MultiScaleRoIAlign once patched."""
    tv = pytest.importorskip("torchvision")
    m = torch.jit.script(_Scripted())
    x = _t(features(3)).requires_grad_()
    b = _t(boxes_valid(3))
    rois = torch.cat([b[b[:, 0] == i] for i in range(N)])
    boxes = [b[b[:, 0] == i, 1:] for i in range(N)]
    got, want = m(x, rois, boxes), _Scripted()(x, rois, boxes)
    for a, e in zip(got, want):
        assert_bytes_equal(a, e, "scripted")
    ga = torch.autograd.grad(got, x, [torch.ones_like(t) for t in got])[0]
    ge = torch.autograd.grad(want, x, [torch.ones_like(t) for t in want])[0]
    assert_bytes_equal(ga, ge, "scripted backward")
    feats = {"0": torch.randn(2, 4, 16, 16), "1": torch.randn(2, 4, 8, 8)}
    with detkernels.patch_torchvision():
        ms = tv.ops.poolers.MultiScaleRoIAlign(["0", "1"], 3, 2)
        sms = torch.jit.script(tv.ops.poolers.MultiScaleRoIAlign(["0", "1"], 3, 2))
        shapes = [(64, 64), (64, 64)]
        assert_bytes_equal(sms(feats, [bb * 4 for bb in boxes], shapes), ms(feats, [bb * 4 for bb in boxes], shapes),
                           "scripted MultiScaleRoIAlign")
