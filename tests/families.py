"""Input families of docs/SPEC.md §3 for box ops: every test matrix draws from these.

Each generator takes a NumPy Generator, a size and a dtype and returns float arrays
``boxes [n, 4]`` (x1, y1, x2, y2) and ``scores [n]``.
"""
from __future__ import annotations

import numpy as np

FAMILIES = ("uniform", "clustered", "ties", "threshold", "degenerate", "huge", "nonfinite", "tiny")


def uniform(rng, n, dtype):
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(1, 120, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(dtype), rng.random(n).astype(dtype)


def clustered(rng, n, dtype):
    """Detector-like: many jittered copies of few objects, scores correlated with the IoU to the
    object (NMS then suppresses most boxes)."""
    k = max(1, n // 20)
    centre = rng.uniform(50, 550, (k, 2))
    size = rng.uniform(20, 150, (k, 2))
    obj = rng.integers(0, k, n)
    jitter = rng.normal(0, 0.08, (n, 4)) * np.concatenate([size[obj], size[obj]], 1)
    b = np.concatenate([centre[obj] - size[obj] / 2, centre[obj] + size[obj] / 2], 1) + jitter
    err = np.abs(jitter).sum(1) / size[obj].sum(1)
    s = np.clip(1.0 - err + rng.normal(0, 0.02, n), 0, 1)
    return b.astype(dtype), s.astype(dtype)


def ties(rng, n, dtype):
    """Scores from a handful of values (many exact ties) and duplicated boxes."""
    b, _ = clustered(rng, n, dtype)
    dup = rng.random(n) < 0.3
    if n > 1:
        b[dup] = b[rng.integers(0, n, int(dup.sum()))]
    return b, rng.choice(np.array([0.25, 0.5, 0.75, 1.0]), n).astype(dtype)


def threshold(rng, n, dtype):
    """Pairs whose IoU is exactly 1/2, 1/3, 1/4 (dyadic geometry) and one ulp either side."""
    out = []
    for _ in range((n + 1) // 2):
        x, y = rng.integers(0, 500, 2).astype(np.float64)
        s = float(rng.choice([1, 2, 4, 8, 16]))
        a = np.array([x, y, x + 2 * s, y + s])           # area 2s^2
        b = np.array([x, y, x + s, y + s])               # inside a: IoU = 1/2
        kind = rng.integers(0, 4)
        if kind == 1:
            b = np.array([x + s, y, x + 3 * s, y + s])   # IoU = s^2 / 3s^2 = 1/3
        elif kind == 2:
            b = np.array([x, y, x + s / 2, y + s])       # IoU = 1/4
        a, b = a.astype(dtype), b.astype(dtype)
        nudge = rng.integers(-1, 2)  # -1, 0, +1 ulp on one corner
        if nudge:
            b[2] = np.nextafter(b[2], dtype(np.inf) if nudge > 0 else dtype(-np.inf))
        out += [a, b]
    b = np.array(out[:n], dtype=dtype).reshape(-1, 4)
    return b, rng.random(len(b)).astype(dtype)


def degenerate(rng, n, dtype):
    """Zero-area, inverted (x2 < x1), negative and -0.0 coordinates mixed with normal boxes."""
    b, s = uniform(rng, n, dtype)
    r = rng.integers(0, 5, n)
    b[r == 0, 2] = b[r == 0, 0]                      # zero width
    b[r == 1] = b[r == 1][:, [2, 3, 0, 1]]           # inverted
    b[r == 2] -= dtype(700)                          # negative
    b[r == 3, :2] = dtype(-0.0)
    return b, s


def huge(rng, n, dtype):
    b, s = uniform(rng, n, dtype)
    return (b * dtype(1e4) - dtype(3e6)).astype(dtype), s


def nonfinite(rng, n, dtype):
    """NaN and +-inf in boxes and scores."""
    b, s = clustered(rng, n, dtype)
    special = np.array([np.nan, np.inf, -np.inf], dtype)
    m = rng.random(b.shape) < 0.05
    b[m] = rng.choice(special, int(m.sum()))
    ms = rng.random(n) < 0.08
    s[ms] = rng.choice(special, int(ms.sum()))
    return b, s


def tiny(rng, n, dtype):
    """Subnormal-scale boxes: products underflow; exercises FTZ/DAZ (must be off)."""
    b, s = uniform(rng, n, dtype)
    return (b * dtype(np.finfo(dtype).tiny * 16)).astype(dtype), s


def make(family: str, rng, n: int, dtype):
    return globals()[family](rng, n, np.dtype(dtype).type)
