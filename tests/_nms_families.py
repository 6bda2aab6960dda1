"""Adversarial NMS inputs (docs/SPEC.md §3), shared by the fixed-size / multi-image NMS tests.

Each family returns (boxes [N, 4], scores [N], classes int64 [N]) in float64; tests cast to the
dtype under test (the casts keep the properties that matter: exact ties, dyadic IoUs at the
threshold, signed zeros, NaN/inf)."""
from __future__ import annotations

import numpy as np

THRESHOLDS = (0.5, 0.3, 0.7)


def _xyxy(rng, n, lo=0.0, hi=640.0, wmax=120.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(0.5, wmax, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


def uniform(rng, n):
    return _xyxy(rng, n), rng.uniform(size=n), rng.integers(0, 5, n)


def clusters(rng, n):
    """Detector-like: boxes jittered around a few objects, score falling with the jitter."""
    k = max(1, n // 40)
    centres = _xyxy(rng, k)
    which = rng.integers(0, k, n)
    jitter = rng.normal(0, 6, (n, 4))
    boxes = centres[which] + jitter
    scores = np.clip(1.0 - np.abs(jitter).mean(1) / 20 + rng.normal(0, 0.02, n), 0, 1)
    return boxes, scores, rng.integers(0, 3, n)


def ties(rng, n):
    """Few distinct scores: order among equals must be ascending index."""
    boxes = _xyxy(rng, n, hi=200.0)
    return boxes, rng.integers(0, 4, n) / 4.0, rng.integers(0, 2, n)


def at_threshold(rng, n):
    """Pairs whose IoU is exactly t (in float32 and float64) or one float32 ulp either side, for
    t in the float32 values nearest 0.5, 0.3, 0.7: box [0,0,1,h] inside [0,0,1,1] has IoU h."""
    hs = []
    for t in THRESHOLDS:
        f = np.float32(t)
        hs += [f, np.nextafter(f, np.float32(0)), np.nextafter(f, np.float32(1))]
    rows, scores = [], []
    for j in range(n // 2 + 1):
        h = float(hs[j % len(hs)])
        off = 4.0 * (j // len(hs))  # separate groups, all coordinates exact
        rows += [[off, 0.0, off + 1.0, 1.0], [off, 0.0, off + 1.0, h]]
        scores += [1.0, 0.5]
    boxes = np.array(rows[:n])
    return boxes, np.array(scores[:n]), np.zeros(n, np.int64)


def degenerate(rng, n):
    """Zero-area, inverted (x2 < x1), huge (1e6) and negative boxes, identical boxes (0/0)."""
    boxes = _xyxy(rng, n, lo=-50, hi=50, wmax=30)
    kind = rng.integers(0, 5, n)
    boxes[kind == 1, 2] = boxes[kind == 1, 0]                     # zero width
    inv = kind == 2
    boxes[inv] = boxes[inv][:, [2, 3, 0, 1]]                       # inverted
    boxes[kind == 3] *= 1e6 / 50                                   # huge
    boxes[kind == 4] = [3.0, 3.0, 3.0, 3.0]                        # identical points: 0/0
    return boxes, rng.uniform(size=n), rng.integers(-3, 3, n)


def nonfinite(rng, n):
    """NaN/+-inf coordinates and scores, +-0.0 scores."""
    boxes = _xyxy(rng, n, hi=100.0)
    scores = rng.uniform(-1, 1, n)
    pick = rng.integers(0, 8, n)
    scores[pick == 0] = np.nan
    scores[pick == 1] = np.inf
    scores[pick == 2] = -np.inf
    scores[pick == 3] = 0.0
    scores[pick == 4] = -0.0
    coord = rng.integers(0, 4, n)
    which = rng.integers(0, 10, n)
    boxes[which == 0, coord[which == 0]] = np.nan
    boxes[which == 1, coord[which == 1]] = np.inf
    boxes[which == 2, coord[which == 2]] = -np.inf
    return boxes, scores, rng.integers(0, 3, n)


def many_classes(rng, n):
    """Large, negative and sparse class ids (no coordinate-offset trick can be exact here)."""
    boxes = _xyxy(rng, n, hi=100.0)
    ids = np.array([-(2 ** 62), -1, 0, 7, 10 ** 6, 2 ** 62])
    return boxes, rng.uniform(size=n), ids[rng.integers(0, ids.size, n)]


FAMILIES = {f.__name__: f for f in (uniform, clusters, ties, at_threshold, degenerate, nonfinite,
                                    many_classes)}


def batch(family: str, seed: int, B: int, N: int, C: int = 0):
    """[B, N, 4] boxes, [B, N] (C = 0) or [B, N, C] scores, [B, N] classes, all from one family."""
    rng = np.random.default_rng(seed)
    f = FAMILIES[family]
    bs, ss, cs = zip(*(f(rng, N) for _ in range(B))) if B else ((), (), ())
    boxes = np.stack(bs) if B else np.zeros((0, N, 4))
    classes = np.stack(cs).astype(np.int64) if B else np.zeros((0, N), np.int64)
    if C == 0:
        scores = np.stack(ss) if B else np.zeros((0, N))
    else:
        base = np.stack(ss) if B else np.zeros((0, N))
        scores = np.repeat(base[..., None], C, axis=2)
        # Per-class scores: keep the family's special values in column 0, perturb the rest.
        if B and N:
            scores[..., 1:] = rng.permuted(scores[..., 1:], axis=1)
    return boxes, scores, classes


def top_k_ties(B: int = 2, A: int = 30, C: int = 3, seed: int = 4):
    """detect's top-k family: [B, A, 4] boxes on a 30-pixel grid and [B, A, C] float32 scores drawn
    from {0.5, 0.25, -0.0, +0.0, NaN, inf} -- long runs of ties, NaN (first without a threshold),
    -0 == +0 -- for k around A and A * C (single- and multi-label candidate counts)."""
    rng = np.random.default_rng(seed)
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (B, A, 1)) + \
        rng.integers(0, 30, (B, A, 1)).astype(np.float32)
    scores = rng.choice(np.array([0.5, 0.25, -0.0, 0.0, np.nan, np.inf], np.float32), (B, A, C))
    return boxes, scores
