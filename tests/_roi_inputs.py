"""Seeded RoI test inputs shared by test_roi_align.py, test_roi_pool.py and test_roi_align_rotated.py
(docs/SPEC.md §3 families)."""
from __future__ import annotations

import numpy as np

N, C, H, W = 2, 8, 11, 13


def features(seed: int, dtype=np.float32, c: int = C, n: int = N) -> np.ndarray:
    """[n, c, H, W] standard normal features, with exact ties in one channel (for RoIPool).
    ``n = 0`` is the empty-batch family: every RoI, batch index -0.5 included, reads nothing."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, H, W)).astype(dtype)
    x[:, 0, 3:6, :] = 1.0
    return x


def boxes_valid(seed: int, k: int = 16, dtype=np.float32) -> np.ndarray:
    """[k, 5] rois with finite coordinates and x2 >= x1, y2 >= y1: inside, straddling and wholly
    outside the map (the family on which torchvision is well defined)."""
    rng = np.random.default_rng(1000 + seed)
    xy = rng.uniform(-6, [W + 6, H + 6], (k, 2))
    wh = rng.uniform(0, 10, (k, 2))
    wh[: k // 4] *= 0.05  # tiny boxes
    b = np.concatenate([rng.integers(0, N, (k, 1)), xy, xy + wh], 1)
    b[0, 1:] = [-20, -20, -12, -15]  # wholly outside (top-left)
    b[1, 1:] = [W + 3, 2, W + 9, 6]  # wholly outside (right)
    b[2, 1:] = [-3, -2, W + 2, H + 4]  # covers the map
    b[3, 1:] = [2, 3, 2, 3]  # zero area
    b[4, 0] = N - 1
    b[5, 0] = 0
    return b.astype(dtype)


def boxes_adversarial(seed: int, dtype=np.float32) -> np.ndarray:
    """Everything torchvision mishandles: NaN/inf coordinates, inverted and huge boxes, batch
    indices NaN/inf/negative/>= N and fractional, -0.0."""
    b = boxes_valid(seed, 12, np.float64)
    extra = np.array([
        [np.nan, 1, 1, 5, 5],
        [np.inf, 1, 1, 5, 5],
        [-1, 1, 1, 5, 5],
        [N, 1, 1, 5, 5],
        [N - 0.5, 1, 1, 5, 5],  # trunc -> N-1
        [-0.5, 1, 1, 5, 5],  # trunc -> 0
        [0, np.nan, 1, 5, 5],
        [1, 1, np.inf, 5, 5],
        [0, -np.inf, -np.inf, np.inf, np.inf],
        [1, 8, 9, 2, 3],  # inverted
        [0, -1e6, -1e6, 1e6, 1e6],  # huge, covers the map
        [1, -0.0, -0.0, 4, 4],
        [0, 3.5, 2.5, 9.5, 7.5],  # halves: C round() ties
        [1, -2.5, -0.5, 0.5, 1.5],
    ])
    return np.concatenate([b, extra]).astype(dtype)


def grad_like(shape, seed: int, dtype) -> np.ndarray:
    return np.random.default_rng(2000 + seed).standard_normal(shape).astype(dtype)


def rotated_family(seed: int, dtype=np.float32) -> np.ndarray:
    """[K, 6] rois (batch, cx, cy, w, h, degrees) from the valid and adversarial boxes above (centre, size, NaN/inf,
    inverted = negative size, huge), with angles: 0, +-90, 180, 45, -30, 360 + 30, random in
    [-400, 400], NaN, inf, 1e30."""
    b = np.concatenate([boxes_valid(seed, 10, np.float64), boxes_adversarial(seed, np.float64)])
    with np.errstate(all="ignore"):
        cx, cy = (b[:, 1] + b[:, 3]) / 2, (b[:, 2] + b[:, 4]) / 2
        w, h = b[:, 3] - b[:, 1], b[:, 4] - b[:, 2]
    a = np.random.default_rng(3000 + seed).uniform(-400, 400, len(b))
    fixed = [0, 90, -90, 180, 45, -30, 390, np.nan, np.inf, 1e30]
    a[: len(fixed)] = fixed
    return np.stack([b[:, 0], cx, cy, w, h, a], 1).astype(dtype)
