"""NumPy reference (the specification) of the IoU family: box_area, box_iou,
generalized_box_iou, distance_box_iou, complete_box_iou.

Semantics are torchvision 0.29.1's ``ops/boxes.py`` with its exact operation order, so float32 and
float64 results equal torchvision's CPU results bit for bit, except where ``docs/SPEC.md``
diverges on purpose:

* float16/bfloat16 boxes are converted to float32 first and every operation runs in float32
  (torchvision subtracts corners in half precision before upcasting).
* ``complete_box_iou`` uses :func:`atan` below (Cephes' algorithm from + - * / only) instead of the
  platform's atan, so every backend agrees bit for bit; it is within 2 ulp of the true value.
* Integer boxes follow torchvision for ``box_area``, ``box_iou`` and ``generalized_box_iou``
  (integer arithmetic, wrapping on overflow, float32 true division; cxcywh: float32 corners from
  ``w / 2``, integer areas); ``distance_box_iou`` and ``complete_box_iou`` convert integer boxes
  to float32 first. 8/16-bit integer boxes are upcast to int32 before any operation
  (torchvision's box_iou subtracts corners in the narrow type, which wraps: uint8 boxes that do
  not overlap get a large positive intersection there).

The formulas are written once, over a small array namespace (``_Ops``), so the same code runs on
NumPy (the reference) and on torch tensors (the differentiable path of ``detkernels.ops``).

Shapes: ``boxes1`` ``[..., N, 4]``, ``boxes2`` ``[..., M, 4]``; leading dimensions broadcast and the
result is ``[..., N, M]``. No epsilon in IoU/GIoU: identical zero-area boxes give 0/0 = NaN.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "working_dtype",
    "FORMATS",
    "KINDS",
    "atan",
    "to_xyxy",
    "box_area",
    "box_iou",
    "generalized_box_iou",
    "distance_box_iou",
    "complete_box_iou",
    "pairwise",
]

FORMATS = ("xyxy", "xywh", "cxcywh")
KINDS = ("iou", "giou", "diou", "ciou")
FOUR_OVER_PI2 = 4 / (np.pi**2)  # a Python float, as torchvision computes it; rounded to T on use

# Cephes atan constants. float32: exact float32 values (hex), so every language rounds them alike.
_ATAN32 = dict(
    t3p8=float.fromhex("0x1.3504f4p+1"), tp8=float.fromhex("0x1.a8279ap-2"),
    pio2=float.fromhex("0x1.921fb6p+0"), pio4=float.fromhex("0x1.921fb6p-1"),
    p=(float.fromhex("0x1.49e1a2p-4"), -float.fromhex("0x1.1c370ap-3"),
       float.fromhex("0x1.9924bep-3"), -float.fromhex("0x1.555454p-2")),
)
_ATAN64 = dict(
    t3p8=2.41421356237309504880, mid_cut=0.66, pio2=1.57079632679489661923,
    pio4=0.78539816339744830962, morebits=6.123233995736765886130e-17,
    p=(-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
       -1.228866684490136173410e2, -6.485021904942025371773e1),
    q=(2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
       4.853903996359136964868e2, 1.945506571482613964425e2),
)


class _Ops:
    """Elementwise primitives with the exact semantics of csrc/common/host_device.h.

    ``scalar(v)`` turns a Python float into the working type the way both NumPy (``T(v)``) and
    torch (a wrapped Python scalar) do.
    """

    def __init__(self, dtype) -> None:
        self.T = np.dtype(dtype).type
        self.is_f32 = np.dtype(dtype) == np.float32

    def scalar(self, v):
        return self.T(v)

    @staticmethod
    def where(c, a, b):
        return np.where(c, a, b)

    @staticmethod
    def nan_max(a, b):  # torch.maximum
        return np.where((a < b) | (b != b), b, a)

    @staticmethod
    def nan_min(a, b):  # torch.minimum
        return np.where((b < a) | (b != b), b, a)

    def clamp_min0(self, x):  # Tensor.clamp(min=0)
        return np.where(x < 0, self.T(0), x)

    @staticmethod
    def stop_gradient(x):  # torchvision computes CIoU's alpha under torch.no_grad()
        return x


def atan(x, ops: _Ops | None = None):
    """detkernels' arctangent (Cephes ``atanf`` for float32, ``atan`` for float64), elementwise in
    the dtype of ``x``. Odd; NaN -> NaN; +-inf -> +-pi/2; within 2 ulp of the true value."""
    if ops is None:
        x = np.asarray(x)
        with np.errstate(all="ignore"):
            return atan(x, _Ops(x.dtype))
    c, where = ops.scalar, ops.where
    neg = x < 0
    ax = where(neg, -x, x)
    one = c(1.0)
    if ops.is_f32:
        k = _ATAN32
        big = ax > c(k["t3p8"])
        mid = (~big) & (ax > c(k["tp8"]))
        y0 = where(big, c(k["pio2"]), where(mid, c(k["pio4"]), c(0.0)))
        # where(big, ax, 1): the unselected branch must stay finite (and keep gradients finite).
        xr = where(big, -(one / where(big, ax, one)), where(mid, (ax - one) / (ax + one), ax))
        z = xr * xr
        p0, p1, p2, p3 = (c(v) for v in k["p"])
        p = ((p0 * z + p1) * z + p2) * z + p3
        r = y0 + ((p * z) * xr + xr)
    else:
        k = _ATAN64
        big = ax > c(k["t3p8"])
        mid = (~big) & (ax > c(k["mid_cut"]))
        y0 = where(big, c(k["pio2"]), where(mid, c(k["pio4"]), c(0.0)))
        more = where(big, c(k["morebits"]), where(mid, c(0.5 * k["morebits"]), c(0.0)))
        xr = where(big, -(one / where(big, ax, one)), where(mid, (ax - one) / (ax + one), ax))
        z = xr * xr
        p = c(k["p"][0])
        for v in k["p"][1:]:
            p = p * z + c(v)
        q = z + c(k["q"][0])
        for v in k["q"][1:]:
            q = q * z + c(v)
        r = y0 + ((xr * ((z * p) / q) + xr) + more)
    return where(neg, -r, r)


def _area(ops: _Ops, b0, b1, b2, b3, fmt: str):
    return (b2 - b0) * (b3 - b1) if fmt == "xyxy" else b2 * b3


def _corners(ops: _Ops, b0, b1, b2, b3, fmt: str):
    if fmt == "xyxy":
        return b0, b1, b2, b3
    if fmt == "xywh":
        return b0, b1, b0 + b2, b1 + b3
    two = ops.scalar(2.0)
    hw, hh = b2 / two, b3 / two
    return b0 - hw, b1 - hh, b0 + hw, b1 + hh


def to_xyxy(boxes, fmt: str = "xyxy") -> np.ndarray:
    """``[..., 4]`` float boxes in ``fmt`` as ``(x1, y1, x2, y2)`` corners, in their own dtype, by
    the IoU functions' rule (``_corners``; box_iou.h ``box_corners``): xywh ``x2 = x + w``;
    cxcywh ``x1 = cx - w / 2``, ``x2 = cx + w / 2`` (each a single rounding)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    b = np.asarray(boxes)
    with np.errstate(all="ignore"):
        return np.stack(_corners(_Ops(b.dtype), *(b[..., k] for k in range(4)), fmt), axis=-1)


def diou_penalty(ops: _Ops, a, b, wc, hc, e):
    """DIoU's distance term ``cd2 / ((wc*wc + hc*hc) + eps)`` of xyxy column tuples (box_iou.h's
    diou_penalty); ``wc``, ``hc``: the enclosing box's clamped width and height."""
    two = ops.scalar(2.0)
    diag2 = (wc * wc + hc * hc) + e
    dx = (a[0] + a[2]) / two - (b[0] + b[2]) / two
    dy = (a[1] + a[3]) / two - (b[1] + b[3]) / two
    return (dx * dx + dy * dy) / diag2


def diou_penalty_of(ops: _Ops, a, b, e):
    """diou_penalty with the enclosing box computed from the boxes (box_iou.h's diou_penalty_of)."""
    wc = ops.clamp_min0(ops.nan_max(a[2], b[2]) - ops.nan_min(a[0], b[0]))
    hc = ops.clamp_min0(ops.nan_max(a[3], b[3]) - ops.nan_min(a[1], b[1]))
    return diou_penalty(ops, a, b, wc, hc, e)


def pairwise(ops: _Ops, a, b, kind: str, fmt: str = "xyxy", eps: float = 1e-7):
    """The pairwise metric on column tuples ``a = (a0..a3)`` shaped ``[..., N, 1]`` and
    ``b = (b0..b3)`` shaped ``[..., 1, M]``; the exact operation order of csrc/ops/box_iou/box_iou.h.
    """
    area_a = _area(ops, *a, fmt)
    area_b = _area(ops, *b, fmt)
    ax1, ay1, ax2, ay2 = _corners(ops, *a, fmt)
    bx1, by1, bx2, by2 = _corners(ops, *b, fmt)
    w = ops.clamp_min0(ops.nan_min(ax2, bx2) - ops.nan_max(ax1, bx1))
    h = ops.clamp_min0(ops.nan_min(ay2, by2) - ops.nan_max(ay1, by1))
    inter = w * h
    union = (area_a + area_b) - inter
    iou = inter / union
    if kind == "iou":
        return iou
    wc = ops.clamp_min0(ops.nan_max(ax2, bx2) - ops.nan_min(ax1, bx1))
    hc = ops.clamp_min0(ops.nan_max(ay2, by2) - ops.nan_min(ay1, by1))
    if kind == "giou":
        area_c = wc * hc
        return iou - (area_c - union) / area_c
    e = ops.scalar(eps)
    diou = iou - diou_penalty(ops, a, b, wc, hc, e)
    if kind == "diou":
        return diou
    d = atan((a[2] - a[0]) / (a[3] - a[1]), ops) - atan((b[2] - b[0]) / (b[3] - b[1]), ops)
    v = ops.scalar(FOUR_OVER_PI2) * (d * d)
    alpha = ops.stop_gradient(v / (((ops.scalar(1.0) - iou) + v) + e))
    return diou - alpha * v


# ---- NumPy entry points ---------------------------------------------------------------------------

_HALF = ("float16", "bfloat16")


def working_dtype(*arrays_and_names, integer_ok: bool = True) -> np.dtype:
    """Validate ``(name, array)`` pairs of ``[..., 4]`` boxes and return the working dtype: torch's
    promotion, then docs/SPEC.md §1.5 (halves -> float32) and torchvision's _upcast for integers
    (8/16-bit -> int32); integers become float32 where ``integer_ok`` is false."""
    dts = []
    for name, b in arrays_and_names:
        if b.ndim < 1 or b.shape[-1] != 4:
            raise ValueError(f"{name} must have shape [..., 4], got {tuple(b.shape)}")
        if b.dtype.kind not in "fiub":
            raise TypeError(f"{name} must be a float or integer array, got {b.dtype}")
        dts.append(b.dtype)
    dt = np.result_type(*dts)
    if dt.kind == "b":
        dt = np.dtype(np.int32)
    if dt.kind == "f" and dt.itemsize < 4:
        dt = np.dtype(np.float32)
    if dt.kind in "iu":
        if not integer_ok:
            dt = np.dtype(np.float32)
        elif dt.itemsize < 4:
            dt = np.dtype(np.int32)
        elif dt.kind == "u":
            dt = np.dtype(np.int64)
    return dt


def _working(boxes1, boxes2, integer_ok: bool):
    b1, b2 = np.asarray(boxes1), np.asarray(boxes2)
    for name, b in (("boxes1", b1), ("boxes2", b2)):
        if b.ndim < 2:
            raise IndexError(f"{name} must have shape [..., N, 4], got {tuple(b.shape)}")
    dt = working_dtype(("boxes1", b1), ("boxes2", b2), integer_ok=integer_ok)
    return b1.astype(dt, copy=False), b2.astype(dt, copy=False)


def _split(b1, b2):
    a = tuple(b1[..., :, None, k] for k in range(4))  # [..., N, 1]
    b = tuple(b2[..., None, :, k] for k in range(4))  # [..., 1, M]
    return a, b


def _int_pairwise(b1, b2, kind: str, fmt: str):
    """torchvision's integer path: integer arithmetic (wrapping), float32 true division."""
    a, b = _split(b1, b2)
    if fmt == "cxcywh":
        # As torch: `wh / 2` is a true division, so corners, extents and inter are float32 (the
        # integer operands converted first); the areas stay integer (wrapping), and so does
        # area_a + area_b, converted to float32 only for `- inter`.
        f, ops = np.float32, _Ops(np.float32)
        with np.errstate(all="ignore"):
            area_a, area_b = _area(None, *a, fmt), _area(None, *b, fmt)
            ax1, ay1, ax2, ay2 = _corners(ops, *(x.astype(f) for x in a), fmt)
            bx1, by1, bx2, by2 = _corners(ops, *(x.astype(f) for x in b), fmt)
            w = ops.clamp_min0(ops.nan_min(ax2, bx2) - ops.nan_max(ax1, bx1))
            h = ops.clamp_min0(ops.nan_min(ay2, by2) - ops.nan_max(ay1, by1))
            inter = w * h
            return inter / ((area_a + area_b).astype(f) - inter)
    with np.errstate(over="ignore"):
        area_a, area_b = _area(None, *a, fmt), _area(None, *b, fmt)
        ax1, ay1, ax2, ay2 = _corners(None, *a, fmt)
        bx1, by1, bx2, by2 = _corners(None, *b, fmt)
        w = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0)
        h = np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0)
        inter = w * h
        union = (area_a + area_b) - inter
        f32 = np.float32
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter.astype(f32) / union.astype(f32)
            if kind == "iou":
                return iou
            wc = np.maximum(np.maximum(ax2, bx2) - np.minimum(ax1, bx1), 0)
            hc = np.maximum(np.maximum(ay2, by2) - np.minimum(ay1, by1), 0)
            area_c = wc * hc
            return iou - (area_c - union).astype(f32) / area_c.astype(f32)


def _matrix(boxes1, boxes2, kind: str, fmt: str = "xyxy", eps: float = 1e-7) -> np.ndarray:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    b1, b2 = _working(boxes1, boxes2, integer_ok=kind in ("iou", "giou"))
    if b1.dtype.kind in "iu":
        return _int_pairwise(b1, b2, kind, fmt)
    a, b = _split(b1, b2)
    with np.errstate(all="ignore"):
        out = pairwise(_Ops(b1.dtype), a, b, kind, fmt, eps)
    return np.ascontiguousarray(out, dtype=b1.dtype)


def box_area(boxes, fmt: str = "xyxy") -> np.ndarray:
    """Area of ``[..., 4]`` boxes: ``(x2 - x1) * (y2 - y1)`` for xyxy, ``w * h`` otherwise.
    Half precision is computed in float32; 8/16-bit integers in int32 (torchvision's _upcast)."""
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    b = np.asarray(boxes)
    b = b.astype(working_dtype(("boxes", b)), copy=False)
    with np.errstate(all="ignore"):
        return _area(None, b[..., 0], b[..., 1], b[..., 2], b[..., 3], fmt)


def box_iou(boxes1, boxes2, fmt: str = "xyxy") -> np.ndarray:
    """Pairwise IoU ``inter / ((area1 + area2) - inter)``: ``[..., N, 4] x [..., M, 4] -> [..., N, M]``."""
    return _matrix(boxes1, boxes2, "iou", fmt)


def generalized_box_iou(boxes1, boxes2) -> np.ndarray:
    """Pairwise GIoU ``iou - (area_c - union) / area_c`` (c: smallest enclosing box); xyxy boxes."""
    return _matrix(boxes1, boxes2, "giou")


def distance_box_iou(boxes1, boxes2, eps: float = 1e-7) -> np.ndarray:
    """Pairwise DIoU ``iou - cd2 / ((wc*wc + hc*hc) + eps)``; xyxy boxes."""
    return _matrix(boxes1, boxes2, "diou", eps=eps)


def complete_box_iou(boxes1, boxes2, eps: float = 1e-7) -> np.ndarray:
    """Pairwise CIoU ``diou - alpha * v`` with ``v = T(4/pi^2) * (atan(wa/ha) - atan(wb/hb))^2`` and
    ``alpha = v / (((1 - iou) + v) + eps)``; xyxy boxes; atan is :func:`atan`."""
    return _matrix(boxes1, boxes2, "ciou", eps=eps)
