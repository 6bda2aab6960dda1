"""box_iou / generalized_box_iou on integer boxes in the compiled kernels (native CPU and CUDA, CuPy):
byte-for-byte the reference's integer path (detkernels/reference/box_iou.py ``_int_pairwise``:
wrapping integer arithmetic, float32 divisions, 8/16-bit -> int32, cxcywh via float32), including
wrap-around, int64 -> float32 rounding above 2**24, zero-area 0/0, negative coordinates, empty and
batched inputs; and equal to torchvision on int tensors. CUDA cases skip without a GPU."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels.reference import box_iou as R

from _helpers import assert_bytes_equal, assert_values_equal

INT_DTYPES = ("int32", "int64", "int16", "uint8", "int8")
FORMATS = ("xyxy", "xywh", "cxcywh")
CASES = [("iou", fmt) for fmt in FORMATS] + [("giou", "xyxy")]


def _ref(kind, b1, b2, fmt):
    return R.box_iou(b1, b2, fmt=fmt) if kind == "iou" else R.generalized_box_iou(b1, b2)


def _run(kind, b1, b2, fmt, backend="native"):
    if kind == "iou":
        return detkernels.box_iou(b1, b2, fmt=fmt, backend=backend)
    return detkernels.generalized_box_iou(b1, b2, backend=backend)


def _boxes(rng, n: int, dtype: str) -> np.ndarray:
    """Integer boxes mixing ordinary, degenerate, inverted, negative and extreme coordinates."""
    info = np.iinfo(dtype)
    lo, hi = int(info.min), int(info.max)
    # Coordinates ordinary (|x| < 300), extreme (within 300 of the limits: differences and sums
    # wrap), and, where the dtype allows, mid-size (areas over 2**31 / 2**63 wrap; values over
    # 2**24 round when converted to float32).
    parts = [rng.integers(max(lo, -300), min(hi, 300), (n, 4), endpoint=True),
             rng.integers(hi - 300, hi, (n, 4), endpoint=True),
             rng.integers(lo, lo + 300, (n, 4), endpoint=True)]
    if info.bits >= 32:
        parts.append(rng.integers(-(1 << 17), 1 << 17, (n, 4)))  # products overflow int32
        parts.append(rng.integers((1 << 24) - 40, (1 << 24) + 40, (n, 4)))
    if info.bits == 64:
        parts.append(rng.integers(-(1 << 33), 1 << 33, (n, 4)))  # products overflow int64
        parts.append(rng.integers((1 << 62) - (1 << 40), (1 << 62) + (1 << 40), (n, 4)))
    pick = rng.integers(0, len(parts), (n, 4))  # each coordinate from any part
    out = np.choose(pick, parts).astype(dtype)
    k = max(1, n // 8)
    out[:k, 2:] = out[:k, :2]  # zero-area (xyxy) / zero-size corners
    out[k:2 * k, 2] = out[k:2 * k, 0] - 1  # inverted
    return out


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind,fmt", CASES)
def test_native_cpu_matches_reference(dtype, kind, fmt, rng):
    for n, m in ((1, 1), (17, 33), (64, 65)):
        b1, b2 = _boxes(rng, n, dtype), _boxes(rng, m, dtype)
        ref = _ref(kind, b1, b2, fmt)
        assert ref.dtype == np.float32
        out = _run(kind, b1, b2, fmt)
        assert_bytes_equal(out, ref, f"{dtype} {kind} {fmt} {n}x{m}")
        # The same pairs once more with the operands swapped (areas from the other side).
        assert_bytes_equal(_run(kind, b2, b1, fmt), _ref(kind, b2, b1, fmt), f"{dtype} {kind} {fmt} swapped")


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_wraparound_is_torch_arithmetic(dtype):
    """Hand-made pairs whose extents, sums and products overflow: the kernel wraps exactly as the
    reference (two's complement), not saturating or widening."""
    info = np.iinfo(dtype)
    hi, lo = int(info.max), int(info.min)
    big = 1 << (info.bits // 2)  # big * big wraps to 0 (int32: 2**32, int64: 2**64)
    b1 = np.array([[lo + 5, 0, hi - 5, 1],  # width hi - lo - 10 wraps negative
                   [0, 0, big, big],  # area 2**bits wraps to exactly 0
                   [0, 0, big + 1, big - 1],  # area 2**bits - 1 wraps to -1
                   [hi - 1, 0, 2, 1]], dtype)
    b2 = np.array([[0, 0, 10, 1], [1, 1, big, big], [lo, lo, hi, hi], [hi - 3, 0, 7, 1]], dtype)
    for kind, fmt in CASES:
        ref = _ref(kind, b1, b2, fmt)
        assert_bytes_equal(_run(kind, b1, b2, fmt), ref, f"{kind} {fmt}")
    # The wrapped values are really used: box 1's area and its self-intersection big * big wrap
    # to 0, so its IoU with itself is 0 / 0 = NaN (widened arithmetic would give 1).
    assert np.isnan(detkernels.box_iou(b1[1:2], b1[1:2])[0, 0])
    assert np.isnan(detkernels.generalized_box_iou(b1[1:2], b1[1:2])[0, 0])


def _to_float32(n: int) -> np.float32:
    """A positive integer rounded to float32 to nearest, ties to even, in exact integer arithmetic."""
    e = max(0, n.bit_length() - 24)
    q, r = divmod(n, 1 << e)
    if e and (r > 1 << (e - 1) or (r == 1 << (e - 1) and q & 1)):
        q += 1
    return np.float32(q << e)  # at most 25 significant bits: exact


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_float32_conversion_rounds_to_nearest_even(dtype):
    """inter / union with both above 2**24: each is rounded to float32 once, to nearest, ties to
    even, as NumPy's astype (truncation, ties-away or rounding through float64 differ)."""
    widths = [(1 << 24) + 1, (1 << 24) + 3, (1 << 24) + 5, (1 << 25) - 1]
    w_big = 1 << 25  # the union
    if dtype == "int64":  # float32 spacing at 2**62 is 2**39: 2**62 + 2**38 is a tie
        widths += [(1 << 62) + (1 << 38), (1 << 62) + 3 * (1 << 38), (1 << 62) + 1,
                   (1 << 62) + (1 << 38) + 1]  # via float64 (a tie there): 2**62, not 2**62 + 2**39
        w_big = (1 << 63) - 1  # rounds up to 2**63
    b1 = np.array([[0, 0, w, 1] for w in widths], dtype)
    b2 = np.array([[0, 0, w_big, 1]], dtype)  # contains every b1 box: inter = w, union = w_big
    out = detkernels.box_iou(b1, b2)
    assert_bytes_equal(out, R.box_iou(b1, b2))
    want = np.array([[_to_float32(w) / _to_float32(w_big)] for w in widths], np.float32)
    assert_bytes_equal(out, want)
    assert _to_float32((1 << 24) + 3) == (1 << 24) + 4  # the helper itself
    assert _to_float32((1 << 62) + (1 << 38) + 1) == (1 << 62) + (1 << 39)


@pytest.mark.parametrize("dtype", ["int32", "int64", "int16", "uint8"])
def test_zero_area_negative_and_goldens(dtype):
    signed = np.iinfo(dtype).min < 0
    neg = -3 if signed else 0
    b = np.array([[neg, neg, neg + 2, neg + 1], [5, 5, 5, 5], [neg, neg, neg + 1, neg + 1]], dtype)
    iou = detkernels.box_iou(b, b)
    assert_bytes_equal(iou, R.box_iou(b, b))
    assert np.isnan(iou[1, 1])  # 0 / 0, no epsilon, as torchvision
    assert iou[0, 0] == 1 and iou[0, 2] == np.float32(0.5)
    giou = detkernels.generalized_box_iou(b, b)
    assert_bytes_equal(giou, R.generalized_box_iou(b, b))
    assert np.isnan(giou[1, 1])


@pytest.mark.parametrize("shapes", [((0, 4), (5, 4)), ((3, 4), (0, 4)), ((2, 0, 4), (2, 3, 4)),
                                    ((0, 3, 4), (1, 2, 4))])
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8"])
def test_empty(shapes, dtype):
    b1, b2 = np.zeros(shapes[0], dtype), np.zeros(shapes[1], dtype)
    for kind in ("iou", "giou"):
        assert_bytes_equal(_run(kind, b1, b2, "xyxy"), _ref(kind, b1, b2, "xyxy"))


@pytest.mark.parametrize("kind,fmt", CASES)
def test_batched_broadcast_and_mixed_dtypes(kind, fmt, rng):
    b1 = _boxes(rng, 3 * 11, "int32").reshape(3, 1, 11, 4)
    b2 = _boxes(rng, 2 * 7, "int16").reshape(2, 7, 4)  # promotes to int32
    assert_bytes_equal(_run(kind, b1, b2, fmt), _ref(kind, b1, b2, fmt))
    b3 = _boxes(rng, 2 * 7, "int64").reshape(2, 7, 4)  # promotes to int64
    out = _run(kind, b1, b3, fmt)
    assert out.shape == (3, 2, 11, 7)
    assert_bytes_equal(out, _ref(kind, b1, b3, fmt))
    nc = _boxes(rng, 40, "int64")[::3]  # non-contiguous
    assert_bytes_equal(_run(kind, nc, b3[0], fmt), _ref(kind, np.ascontiguousarray(nc), b3[0], fmt))


def test_threads_do_not_matter(rng):
    b1, b2 = _boxes(rng, 700, "int32"), _boxes(rng, 300, "int32")
    ref = R.generalized_box_iou(b1, b2)
    try:
        for threads in (1, 3):
            detkernels.set_num_threads(threads)
            assert_bytes_equal(detkernels.generalized_box_iou(b1, b2), ref, f"{threads} threads")
    finally:
        detkernels.set_num_threads(2)


def test_distance_complete_convert_to_float32(rng):
    """distance/complete IoU keep converting integer boxes to float32 (README divergence 4)."""
    b1, b2 = _boxes(rng, 20, "int64"), _boxes(rng, 9, "int32")
    for name in ("distance_box_iou", "complete_box_iou"):
        out = getattr(detkernels, name)(b1, b2, backend="native")
        assert_bytes_equal(out, getattr(R, name)(b1, b2))
        assert_bytes_equal(out, getattr(detkernels, name)(b1.astype(np.float32), b2.astype(np.float32)))


def test_served_by_native():
    for dev in ("cpu", "cuda"):
        for dt in ("int32", "int64"):
            if dev == "cuda" and not detkernels.build_info()["cuda"]:
                continue
            assert "runs on 'native'" in detkernels.explain("box_iou", dev, dt)


# ---- torch tensors and torchvision -----------------------------------------------------------------

def _tv_boxes(rng, n: int, dtype: str) -> np.ndarray:
    """Boxes on which torchvision computes what it means to: int32/int64 anything (its arithmetic
    is the reference's, wrap-around included); 8/16-bit boxes whose corner differences fit the
    narrow type (see test_narrow_ints_upcast_first), uint8 ones overlapping pairwise."""
    if dtype in ("int32", "int64"):
        return _boxes(rng, n, dtype)
    if dtype == "uint8":
        # xyxy and xywh alike: every box contains [50, 100]^2, and x + w < 256
        return np.concatenate([rng.integers(0, 50, (n, 2)), rng.integers(100, 150, (n, 2))], 1).astype(dtype)
    r = 30 if dtype == "int8" else 300  # xywh: |x + w - x'| < 128
    return rng.integers(-r, r, (n, 4)).astype(dtype)


@pytest.mark.parametrize("dtype", ["int32", "int64", "int16", "int8", "uint8"])
@pytest.mark.parametrize("kind,fmt", CASES)
def test_matches_torchvision(tv_ops, torch, dtype, kind, fmt, rng):
    """torchvision computes the same integer arithmetic (torch int ops wrap) and float32 division."""
    b1, b2 = _tv_boxes(rng, 40, dtype), _tv_boxes(rng, 25, dtype)
    t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
    if kind == "iou":
        tv = tv_ops.box_iou(t1, t2, fmt=fmt)
        out = detkernels.box_iou(t1, t2, fmt=fmt)
    else:
        tv = tv_ops.generalized_box_iou(t1, t2)
        out = detkernels.generalized_box_iou(t1, t2)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert_values_equal(out, tv, f"{dtype} {kind} {fmt}")


def test_narrow_ints_upcast_first(tv_ops, torch):
    """Divergence (as the reference): 8/16-bit boxes are upcast to int32 before any operation.
    torchvision subtracts corners in the narrow type (``_upcast(rb - lt)``), so for uint8 boxes
    that do not overlap the negative extent wraps to a large positive one."""
    a = np.array([[0, 0, 10, 10]], np.uint8)
    b = np.array([[20, 0, 30, 10]], np.uint8)  # disjoint: IoU 0
    assert detkernels.box_iou(a, b)[0, 0] == 0
    assert tv_ops.box_iou(torch.from_numpy(a), torch.from_numpy(b))[0, 0] != 0


def test_cxcywh_areas_stay_integer(tv_ops, torch):
    """cxcywh: corners and inter are float32 (torch's `w / 2`), the areas integer: with areas above
    2**24 the union float32(area_a + area_b) - inter differs from float32 areas added."""
    a = np.array([[5839, 6070, 7531, 8702]], np.int32)  # area 65534762: not a float32
    b = np.array([[7042, 6682, 5253, 3231]], np.int32)
    out = detkernels.box_iou(a, b, fmt="cxcywh")
    assert_bytes_equal(out, R.box_iou(a, b, fmt="cxcywh"))
    assert_values_equal(out, tv_ops.box_iou(torch.from_numpy(a), torch.from_numpy(b), fmt="cxcywh"))
    all_float32 = R.box_iou(a.astype(np.float32), b.astype(np.float32), fmt="cxcywh")
    assert out[0, 0] != all_float32[0, 0]


def _cuda_or_skip(torch):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device (torch.cuda.is_available() is False)")
    if not detkernels.build_info()["cuda"]:
        pytest.skip("detkernels._C was built without CUDA")


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("kind,fmt", CASES)
def test_cuda_matches_reference(torch, dtype, kind, fmt, rng):
    _cuda_or_skip(torch)
    for n, m in ((1, 1), (37, 70), (300, 129)):
        b1, b2 = _boxes(rng, n, dtype), _boxes(rng, m, dtype)
        out = _run(kind, torch.from_numpy(b1).cuda(), torch.from_numpy(b2).cuda(), fmt)
        assert out.is_cuda and out.dtype == torch.float32
        assert_bytes_equal(out, _ref(kind, b1, b2, fmt), f"cuda {dtype} {kind} {fmt} {n}x{m}")


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_cuda_rounding_batched_and_torchvision(tv_ops, torch, dtype, rng):
    _cuda_or_skip(torch)
    widths = [(1 << 24) + 1, (1 << 24) + 3, (1 << 24) + 5]
    if dtype == "int64":
        widths += [(1 << 62) + (1 << 38), (1 << 62) + 3 * (1 << 38), (1 << 62) + (1 << 38) + 1]
    r1 = np.array([[0, 0, w, 1] for w in widths], dtype)
    r2 = np.array([[0, 0, (1 << 25) if dtype == "int32" else (1 << 63) - 1, 1]], dtype)
    out = detkernels.box_iou(torch.from_numpy(r1).cuda(), torch.from_numpy(r2).cuda())
    assert_bytes_equal(out, R.box_iou(r1, r2))
    b1 = _boxes(rng, 2 * 3 * 50, dtype).reshape(2, 3, 50, 4)
    b2 = _boxes(rng, 3 * 40, dtype).reshape(3, 40, 4)
    t1, t2 = torch.from_numpy(b1).cuda(), torch.from_numpy(b2).cuda()
    for kind in ("iou", "giou"):
        assert_bytes_equal(_run(kind, t1, t2, "xyxy"), _ref(kind, b1, b2, "xyxy"), kind)
    assert_values_equal(detkernels.box_iou(t1[0, 0], t2[0]), tv_ops.box_iou(t1[0, 0], t2[0]))
    assert_values_equal(detkernels.generalized_box_iou(t1[0, 0], t2[0]),
                        tv_ops.generalized_box_iou(t1[0, 0], t2[0]))


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_cupy_matches_reference(torch, dtype, rng):
    _cuda_or_skip(torch)
    pytest.importorskip("cupy")
    b1, b2 = _boxes(rng, 45, dtype), _boxes(rng, 33, dtype)
    t1, t2 = torch.from_numpy(b1).cuda(), torch.from_numpy(b2).cuda()
    for kind, fmt in CASES:
        assert_bytes_equal(_run(kind, t1, t2, fmt, backend="cupy"), _ref(kind, b1, b2, fmt), f"{kind} {fmt}")
