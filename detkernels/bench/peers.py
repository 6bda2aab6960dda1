"""Deployment-runtime peers for the nms / batched_nms scenarios: ONNX Runtime's NonMaxSuppression
and OpenCV's cv2.dnn.NMSBoxes / NMSBoxesBatched (optional: ``pip install detkernels[bench]``;
skipped with a note when not installed).

Each peer gets its inputs in its own layout, built once per input set outside the timed call (a
deployed model hands them over in that layout): ONNX Runtime boxes ``[1, N, 4]`` and per-class
scores ``[1, C, N]`` (a box's score in its class row, -inf elsewhere; score_threshold -inf, so
every real candidate takes part and the fillers never do), ``max_output_boxes_per_class = N``, a
one-node model built with onnx.helper, run with 2 intra-op threads; OpenCV boxes ``(x, y, w, h)``
float32 (``w = x2 - x1`` rounded to float32) with score_threshold 0.

Their kept indices are checked against the reference (``canon`` turns a peer's output into kept
indices by descending score, ties by ascending index; ``subset`` names the candidates the peer
considers, and the reference is run on those). Where a peer's semantics differ, the check says so:
ONNX Runtime returns class-major order (compared after reordering) and skips zero-area boxes
(IoU 0: they never suppress, which for positive-area data changes nothing); OpenCV drops scores
<= 0 (score_threshold must be >= 0, so the reference runs on the boxes with score > 0), computes
IoU in double from (x, y, w, h) as ``1 - (1 - inter / union)`` (a box whose IoU lies within a few
ulps of the threshold can go either way) and NMSBoxesBatched offsets boxes by class as
torchvision does.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["peer_notes", "peer_rows"]

ORT_THREADS = 2
# OpenCV's NMS is quadratic in the candidates (NMSBoxesBatched: ~1 s at 25 200 boxes here), so
# larger cases leave it out (peer_notes says so) rather than spend minutes on it.
OPENCV_MAX_N = 25200


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _ort_session(num_classes_dim: bool = True) -> Any:
    import onnx  # noqa: F401  (the model is built with onnx.helper)
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "max", "iou", "score"], ["sel"])
    graph = helper.make_graph(
        [node], "nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
         helper.make_tensor_value_info("max", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = ORT_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _cached(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """convert(inp), computed once per input set (the harness rotates a few fixed sets)."""
    memo: dict[int, tuple[Any, Any]] = {}

    def get(inp: Any) -> Any:
        hit = memo.get(id(inp))
        if hit is None or hit[0] is not inp:
            hit = memo[id(inp)] = (inp, convert(inp))
        return hit[1]

    return get


def _score_order(s: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """keep reordered by descending score, ties by ascending index (NaN first)."""
    keep = np.asarray(keep, np.int64).reshape(-1)
    ks = s[keep].astype(np.float64)
    ks = np.where(np.isnan(ks), np.inf, ks)
    return keep[np.lexsort((keep, -ks))]


def peer_notes() -> list[str]:
    """Why a peer is missing (for the harness's notes)."""
    notes = []
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        notes.append(f"ONNX Runtime not benchmarked ({e}; pip install detkernels[bench])")
    try:
        import cv2  # noqa: F401
    except ImportError as e:
        notes.append(f"OpenCV not benchmarked ({e}; pip install detkernels[bench])")
    else:
        notes.append(f"OpenCV NMS is left out above N = {OPENCV_MAX_N} (quadratic: ~1 s at that N)")
    return notes


def peer_rows(p: dict, device: str, batched: bool, row_cls: type) -> list:
    """The peer rows for one nms / batched_nms case (CPU only; float32, and float16 cast exactly
    to float32 as torchvision's CPU row does; float64 would be narrowed, so it is skipped)."""
    if device != "cpu" or p["dtype"] == "float64":
        return []
    thr, rows = float(p["iou"]), []
    cast = " (fp16 cast to fp32)" if p["dtype"] == "float16" else ""
    try:
        import onnxruntime  # noqa: F401
        sess = _ort_session()
    except ImportError:
        sess = None
    if sess is not None:
        nc = int(p.get("classes", 1)) if batched else 1

        def ort_feeds(inp: Any) -> dict:
            b, s = _np(inp[0]).astype(np.float32), _np(inp[1]).astype(np.float32)
            n = b.shape[0]
            sc = np.full((1, nc, n), -np.inf, np.float32)
            cls = _np(inp[2]).astype(np.int64) if batched else np.zeros(n, np.int64)
            sc[0, cls, np.arange(n)] = s
            return {"boxes": b[None], "scores": sc, "max": np.array([n], np.int64),
                    "iou": np.array([thr], np.float32), "score": np.array([-np.inf], np.float32)}

        feeds = _cached(ort_feeds)
        rows.append(row_cls(
            "onnxruntime", "peer", lambda inp: sess.run(None, feeds(inp))[0],
            note=f"NonMaxSuppression, [1,C,N] scores, {ORT_THREADS} threads{cast}",
            canon=lambda out, inp: _score_order(_np(inp[1]).astype(np.float32), out[:, 2])))
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None and p["N"] <= OPENCV_MAX_N:
        def xywh(inp: Any) -> tuple:
            b = _np(inp[0]).astype(np.float32)
            r = np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
            out = (np.ascontiguousarray(r), _np(inp[1]).astype(np.float32))
            return out + ((_np(inp[2]).astype(np.int32),) if batched else ())

        conv = _cached(xywh)
        if batched:
            fn = lambda inp: cv2.dnn.NMSBoxesBatched(*conv(inp), 0.0, thr)
            label, what = "opencv", "dnn.NMSBoxesBatched (class offsets)"
        else:
            fn = lambda inp: cv2.dnn.NMSBoxes(*conv(inp), 0.0, thr)
            label, what = "opencv", "dnn.NMSBoxes"
        rows.append(row_cls(
            label, "peer", fn, note=f"{what}, scores > 0 only{cast}",
            canon=lambda out, inp: _score_order(_np(inp[1]).astype(np.float32), out),
            subset=lambda inp: _np(inp[1]).astype(np.float32) > 0))
    return rows
