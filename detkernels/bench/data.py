"""Benchmark inputs, generated with NumPy from a seed (identical on every host) and then moved to
the array library and device under test.

Two box families (docs/SPEC.md §3): *uniform* boxes scattered over the image, and *clustered*,
detector-like boxes: many candidates jittered around a few objects, with scores that grow with the
candidate's IoU to its object, plus low-scoring background boxes. Clustered inputs are what NMS
sees in a real detector (long suppression chains inside a cluster, little work across clusters);
uniform inputs keep most boxes and so stress the kept list.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "DISTS",
    "uniform_boxes",
    "clustered_boxes",
    "yolo_head",
    "proposals",
    "feature_map",
]

DISTS = ("uniform", "clustered")


def _xyxy(cx: np.ndarray, cy: np.ndarray, w: np.ndarray, h: np.ndarray, img_w: float,
          img_h: float) -> np.ndarray:
    """[n, 4] boxes from centres and sizes, clipped to the image (as a detector's decoder does)."""
    b = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    np.clip(b[:, 0::2], 0, img_w, out=b[:, 0::2])
    np.clip(b[:, 1::2], 0, img_h, out=b[:, 1::2])
    return b


def uniform_boxes(rng: np.random.Generator, n: int, img_w: float = 640, img_h: float = 640,
                  min_size: float = 4, max_size: float = 160) -> np.ndarray:
    """[n, 4] float64 xyxy boxes with uniform centres and log-uniform sides."""
    cx, cy = rng.uniform(0, img_w, n), rng.uniform(0, img_h, n)
    w, h = np.exp(rng.uniform(np.log(min_size), np.log(max_size), (2, n)))
    return _xyxy(cx, cy, w, h, img_w, img_h)


def _iou_to(boxes: np.ndarray, objs: np.ndarray) -> np.ndarray:
    """Row-wise IoU of boxes[i] with objs[i] (float64; only used to shape scores)."""
    w = np.clip(np.minimum(boxes[:, 2], objs[:, 2]) - np.maximum(boxes[:, 0], objs[:, 0]), 0, None)
    h = np.clip(np.minimum(boxes[:, 3], objs[:, 3]) - np.maximum(boxes[:, 1], objs[:, 1]), 0, None)
    inter = w * h
    a1 = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    a2 = (objs[:, 2] - objs[:, 0]) * (objs[:, 3] - objs[:, 1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(inter / (a1 + a2 - inter))


def clustered_boxes(rng: np.random.Generator, n: int, num_classes: int = 80, img_w: float = 640,
                    img_h: float = 640, num_objects: int | None = None, foreground: float = 0.3
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector-like candidates: (boxes [n, 4] float64, scores [n] float64, labels [n] int64).

    A fraction ``foreground`` of the boxes are jittered copies of ``num_objects`` objects (default
    about one per 250 candidates, at least 3, at most 100) and carry the object's class and a
    score ~ IoU(candidate, object)^2; the rest are background boxes with scores below 0.1 and
    random classes.
    """
    if num_objects is None:
        num_objects = int(np.clip(n // 250, 3, 100))
    ow, oh = np.exp(rng.uniform(np.log(16), np.log(320), (2, num_objects)))
    ocx, ocy = rng.uniform(0, img_w, num_objects), rng.uniform(0, img_h, num_objects)
    objs = _xyxy(ocx, ocy, ow, oh, img_w, img_h)
    ocls = rng.integers(0, num_classes, num_objects)

    fg = rng.random(n) < foreground
    which = rng.integers(0, num_objects, n)
    jitter = rng.normal(0, 0.12, (4, n))
    cx = ocx[which] + jitter[0] * ow[which]
    cy = ocy[which] + jitter[1] * oh[which]
    w = ow[which] * np.exp(jitter[2] * 1.5)
    h = oh[which] * np.exp(jitter[3] * 1.5)
    boxes = _xyxy(cx, cy, w, h, img_w, img_h)
    scores = _iou_to(boxes, objs[which]) ** 2 * rng.uniform(0.6, 1.0, n)
    labels = ocls[which].astype(np.int64)

    bg = ~fg
    boxes[bg] = uniform_boxes(rng, int(bg.sum()), img_w, img_h)
    scores[bg] = rng.uniform(0, 0.1, int(bg.sum()))
    labels[bg] = rng.integers(0, num_classes, int(bg.sum()))
    return boxes, scores, labels


def yolo_head(rng: np.random.Generator, num_candidates: int, num_classes: int = 80,
              dist: str = "clustered", img: float = 640) -> tuple[np.ndarray, np.ndarray]:
    """One image's decoded YOLO-style head output: (boxes [A, 4], class scores [A, C]), float64.

    Clustered: each candidate's own class gets its clustered score, every other class a small
    noise score. Uniform: uniform boxes and independent scores u^8 for every class (most candidates
    clear a low confidence threshold, so top-k decides the NMS size).
    """
    if dist == "uniform":
        boxes = uniform_boxes(rng, num_candidates, img, img)
        return boxes, rng.random((num_candidates, num_classes)) ** 8
    if dist != "clustered":
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    boxes, s, labels = clustered_boxes(rng, num_candidates, num_classes, img, img)
    cls = rng.uniform(0, 0.01, (num_candidates, num_classes))
    cls[np.arange(num_candidates), labels] = s
    return boxes, cls


def proposals(rng: np.random.Generator, p: int, img_w: float, img_h: float,
              dist: str = "clustered") -> np.ndarray:
    """[p, 4] float64 region proposals in image coordinates (as an RPN hands to the RoI head)."""
    if dist == "uniform":
        return uniform_boxes(rng, p, img_w, img_h, 8, 400)
    if dist != "clustered":
        raise ValueError(f"dist must be one of {DISTS}, got {dist!r}")
    return clustered_boxes(rng, p, 1, img_w, img_h, num_objects=max(3, p // 30), foreground=0.8)[0]


def feature_map(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    """[n, c, h, w] float32 activations (standard normal: never zeros, METHOD.md)."""
    return rng.standard_normal((n, c, h, w), dtype=np.float32)


# ---- large-N NMS (issue 16): sliced inference, crowds, cells -----------------------------------------

LARGE_DISTS = ("sparse", "clustered", "one_cluster")


def large_nms_boxes(rng: np.random.Generator, n: int, dist: str = "sparse"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(boxes [n, 4], scores [n]) float64 for NMS at 10^4 - 10^6 boxes, at the density of issue 16's
    case (10^6 boxes on a 20 000 px canvas; the canvas side grows as sqrt(n)).

    * sparse: uniform boxes with sides uniform in [1, 61] px (about 95 % are kept at IoU 0.5);
    * clustered: merged tiles / crowds: objects of 8-64 px, each seen about 8 times with a 10 %
      jitter and a score in (0, 1] that falls with the jitter (most of each group is suppressed);
    * one_cluster: the worst case for any spatial index: all n boxes jittered around one 100 px
      object (every pair overlaps, few are kept).
    """
    side = 20000.0 * np.sqrt(n / 1e6)
    if dist == "sparse":
        xy = rng.uniform(0, side, (n, 2))
        wh = rng.uniform(1, 61, (n, 2))
        return np.concatenate([xy, xy + wh], 1), rng.random(n)
    if dist == "clustered":
        k = max(1, n // 8)
        size = rng.uniform(8, 64, (k, 2))
        centre = rng.uniform(0, side, (k, 2))
        which = rng.integers(0, k, n)
        jitter = rng.normal(0, 0.1, (n, 4))
        c = centre[which] + jitter[:, :2] * size[which]
        wh = size[which] * np.exp(jitter[:, 2:])
        scores = np.clip(1 - np.abs(jitter).mean(1) * 4 + rng.normal(0, 0.02, n), 1e-3, 1)
        return np.concatenate([c - wh / 2, c + wh / 2], 1), scores
    if dist == "one_cluster":
        c = side / 2 + rng.normal(0, 10, (n, 2))
        wh = 100 * np.exp(rng.normal(0, 0.1, (n, 2)))
        return np.concatenate([c - wh / 2, c + wh / 2], 1), rng.random(n)
    raise ValueError(f"dist must be one of {LARGE_DISTS}, got {dist!r}")
