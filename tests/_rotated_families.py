"""Input families of rotated boxes (cxcywhr, [n, 5] float64; callers cast): docs/SPEC.md §3 for
box_iou with fmt 'cxcywhr' and nms_rotated. Each generator takes a NumPy Generator and a size."""
from __future__ import annotations

import numpy as np

FAMILIES = ("uniform", "clustered", "identical", "containment", "touching", "symmetric", "near_apart",
            "degenerate", "huge", "tiny", "nonfinite")


def _boxes(cx, cy, w, h, a):
    return np.stack(np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (cx, cy, w, h, a))), -1)


def uniform(rng, n):
    return _boxes(rng.uniform(0, 200, n), rng.uniform(0, 200, n), rng.uniform(1, 60, n),
                  rng.uniform(1, 60, n), rng.uniform(-360, 360, n))


def clustered(rng, n):
    """Jittered copies of a few objects (heavy overlap, many crossings), angles near each other."""
    k = max(1, n // 10)
    o = rng.integers(0, k, n)
    base = uniform(rng, k)
    j = rng.normal(0, 1, (n, 5)) * np.array([2.0, 2.0, 1.5, 1.5, 4.0])
    return base[o] + j


def identical(rng, n):
    """Duplicates (IoU 1 up to the polygon's rounding: the clamp matters) and 180/360-degree turns."""
    b = uniform(rng, max(1, n // 3))[rng.integers(0, max(1, n // 3), n)]
    b[::3, 4] += 180.0
    b[1::3, 4] -= 360.0
    return b


def containment(rng, n):
    """Small boxes inside big ones at random angles, and the same centre with half the size."""
    big = uniform(rng, n)
    big[:, 2:4] += 60
    small = big.copy()
    small[:, 2:4] *= rng.uniform(0.05, 0.5, (n, 1))
    small[:, 4] = rng.choice([0.0, 45.0, 90.0, 30.0], n) + big[:, 4] * (rng.random(n) < 0.5)
    out = np.empty((2 * n, 5))
    out[0::2], out[1::2] = big, small
    return out[:n]


def touching(rng, n):
    """Pairs sharing an edge exactly (centre offset by w along the box's own axis: 0, 90, 45
    degrees, dyadic sizes) or a corner, and collinear rows of equal boxes."""
    out = []
    for _ in range((n + 1) // 2):
        w, h = float(rng.choice([1, 2, 4, 8])), float(rng.choice([1, 2, 4]))
        a = float(rng.choice([0.0, 90.0, 45.0, 30.0, -60.0]))
        cx, cy = float(rng.integers(0, 100)), float(rng.integers(0, 100))
        t = np.deg2rad(a)
        d = rng.choice([w, w * 1.5, w + 1e-3, w - 1e-3])
        corner = rng.random() < 0.3
        dx, dy = d * np.cos(t), -d * np.sin(t)
        if corner:
            dx, dy = dx + h * np.sin(t), dy + h * np.cos(t)
        out += [[cx, cy, w, h, a], [cx + dx, cy + dy, w, h, a]]
    return np.asarray(out[:n]).reshape(n, 5)


def symmetric(rng, n):
    """The same rectangle as (w, h, a), (h, w, a + 90), (w, h, a + 180), (w, h, a - 360)."""
    b = uniform(rng, max(1, (n + 3) // 4))
    out = []
    for x in b:
        out += [x, [x[0], x[1], x[3], x[2], x[4] + 90], [x[0], x[1], x[2], x[3], x[4] + 180],
                [x[0], x[1], x[2], x[3], x[4] - 360]]
    return np.asarray(out[:n]).reshape(n, 5)


def near_apart(rng, n):
    """Boxes just apart or just overlapping (gaps within a thousandth of the size), tiny boxes
    within the kernel's point tolerances of each other: where the CPU kernel's separation skip
    must agree with the full computation."""
    out = []
    for _ in range((n + 1) // 2):
        s = float(rng.choice([1e-3, 1e-2, 1.0, 30.0]))
        w, h = s * rng.uniform(0.5, 2), s * rng.uniform(0.5, 2)
        a = float(rng.choice([0.0, 90.0, 17.0, rng.uniform(-180, 180)]))
        b = [rng.uniform(0, 100), rng.uniform(0, 100), w, h, a]
        gap = s * rng.choice([-1e-3, 0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.1, 1.0])
        ang = rng.uniform(0, 2 * np.pi)
        r = (w + h) / 2 + gap
        out += [b, [b[0] + r * np.cos(ang), b[1] + r * np.sin(ang), w * rng.uniform(0.5, 2),
                    h * rng.uniform(0.5, 2), a + rng.choice([0.0, 90.0, rng.uniform(-5, 5)])]]
    return np.asarray(out[:n]).reshape(n, 5)


def degenerate(rng, n):
    """Zero, negative and near-threshold (1e-14) areas, zero-width lines."""
    b = uniform(rng, n)
    k = rng.integers(0, 6, n)
    b[k == 0, 2] = 0.0
    b[k == 1, 3] = 0.0
    b[k == 2, 2] *= -1
    b[k == 3, 2:4] *= -1
    b[k == 4, 2:4] = rng.choice([1e-7, 1.1e-7, 9e-8], ((k == 4).sum(), 1))
    return b


def huge(rng, n):
    b = uniform(rng, n)
    b[:, :2] *= 1e5
    b[:, 2:4] *= rng.choice([1.0, 1e3, 1e4], (n, 1))
    return b


def tiny(rng, n):
    b = uniform(rng, n)
    b[:, :2] = 5.0 + b[:, :2] * 1e-5
    b[:, 2:4] *= 1e-5
    return b


def nonfinite(rng, n):
    b = clustered(rng, n)
    m = rng.random((n, 5)) < 0.08
    b[m] = rng.choice([np.nan, np.inf, -np.inf], int(m.sum()))
    return b


def make(family: str, rng, n: int) -> np.ndarray:
    return globals()[family](rng, n)
