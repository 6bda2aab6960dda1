"""The scenario table: op families, their named defaults and the axes each mode sweeps.

Each family sweeps one axis at a time with the others at its defaults (a one-factor design: the
default case is shared by every sweep). Every case is run on every device present, by every
contender present: the detkernels backends that serve the op on that device (``_registry.select``),
torchvision.ops when installed, and the NumPy reference (``backend="numpy"``: the specification)
where the size is small enough to time it. Before timing, each contender's output is checked once
against the reference (bytes for detkernels, values for torchvision; see ``Family.check``).

Families:
  box_iou      pairwise IoU, N x N boxes
  nms          single-class NMS of N boxes
  batched_nms  per-class NMS of N boxes over 80 classes
               (both also against ONNX Runtime and OpenCV when installed: peers.py)
  detect       a YOLO-style post-process per image: class max -> score threshold -> top-k ->
               batched NMS, for 8 400 / 25 200 (640 px) / 100 800 (1280 px) candidates, batches of
               images (per-image loop, one batched_nms call, one fixed-size multi_image_nms call,
               the fused detect op, ultralytics' non_max_suppression when installed and
               detkernels' drop-in for it, ONNX Runtime running the exported detect graph)
  roi_align    RoIAlign of P proposals on a C=256 stride-8 feature map, 7x7 / 14x14 (included when
               this build of detkernels has roi_align)
  soft_nms     Soft-NMS (linear / gaussian) of N = 1 000 / 5 000 / 25 200 boxes against ensemble-boxes'
               cpu_soft_nms_float (NumPy), same data (issue 13)
  matrix_nms   Matrix NMS (gaussian / linear) of N = 1 000 / 5 000 / 25 200 boxes against a torch
               implementation of mmdetection's mask_matrix_nms (peer_matrix_nms.py, N <= 10 000)
  nms_large_*  NMS at 10^4 - 10^6 boxes (issue 16; sparse, clustered, one big cluster) against lsnms
               (`pip install --no-deps lsnms`: 0.5.0 works with numba 0.68.1 although its metadata
               asks for numba < 0.64) and time-limited torchvision / numba rows (NmsLarge)
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import data

__all__ = ["Row", "Case", "Family", "FAMILIES", "MODES", "plan", "to_numpy"]

MODES = ("smoke", "quick", "full")
DK_BACKENDS = ("native", "cupy", "numba")  # timed as detkernels[...]; "numpy" is the reference


@dataclass
class Row:
    """One contender in one case: ``fn(inputs) -> output``."""

    label: str  # "detkernels[native]", "torchvision", "onnxruntime", "reference"
    # "detkernels" | "torchvision" | "peer" | "reference" | "baseline" (a part of the work, unchecked)
    kind: str
    fn: Callable[[Any], Any]
    timed: bool = True
    note: str = ""
    # kind "peer" (another library, its own semantics; detkernels/bench/peers.py): its output ->
    # kept indices in the reference's order, and the candidates it considers (None: all).
    canon: Callable[[Any, Any], np.ndarray] | None = None
    subset: Callable[[Any], np.ndarray] | None = None


@dataclass
class Case:
    family: "Family"
    params: dict
    sweeps: list = field(default_factory=list)  # the axes whose sweep this case belongs to

    def describe(self) -> str:
        return self.family.describe(self.params)


# ---- array helpers ---------------------------------------------------------------------------------

def _put(a: np.ndarray, lib: str, device: str, dtype: str | None = None) -> Any:
    """NumPy data -> the array library and device under test."""
    if dtype is not None:
        a = a.astype(dtype)
    a = np.ascontiguousarray(a)
    if lib == "numpy":
        return a
    import torch

    return torch.from_numpy(a).to(device)


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _cpu(x: Any) -> Any:
    return x.cpu() if hasattr(x, "cpu") and not isinstance(x, np.ndarray) else x


def _bytes_equal(a: np.ndarray, e: np.ndarray) -> bool:
    """docs/SPEC.md §2: same dtype and shape, NaN at the same places, all other bytes equal."""
    if a.dtype != e.dtype or a.shape != e.shape:
        return False
    if a.dtype.kind == "f":
        na, ne = np.isnan(a), np.isnan(e)
        u = f"u{a.itemsize}"
        return bool(np.array_equal(na, ne) and np.array_equal(a.view(u)[~na], e.view(u)[~ne]))
    return bool(np.array_equal(a, e))


def _values_equal(a: np.ndarray, e: np.ndarray) -> bool:
    """Value equality (NaN as a class, -0 == +0), for comparisons with torchvision."""
    if a.shape != e.shape:
        return False
    if a.dtype.kind == "f" or e.dtype.kind == "f":
        a, e = a.astype(np.float64), e.astype(np.float64)
        return bool(np.all((a == e) | (np.isnan(a) & np.isnan(e))))
    return bool(np.array_equal(a, e))


def _flat(out: Any) -> list[np.ndarray]:
    """An op's output (an array, or nested tuples/lists of arrays) as a flat list of NumPy arrays."""
    if isinstance(out, (list, tuple)):
        return [x for o in out for x in _flat(o)]
    return [to_numpy(out)]


def _torchvision_ops() -> Any | None:
    if "torch" not in sys.modules:
        return None
    try:
        import torchvision.ops as tvo
    except ImportError:
        return None
    return tvo


def _torch_index(idx: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(idx)


def _dk() -> Any:
    import detkernels

    return detkernels


def _working(dtype: str) -> str:
    """The registry's working dtype: float16/bfloat16 inputs are computed in float32."""
    return "float64" if dtype == "float64" else "float32"


# ---- the family interface ----------------------------------------------------------------------------

class Family:
    """One op family. Subclasses fill in the named defaults, the sweeps and the five hooks."""

    name = ""
    title = ""
    registry_op = ""  # the op name in detkernels' backend table
    unit = ""  # what the throughput counts
    defaults: dict = {}
    mode_defaults: dict = {}  # mode -> overrides of `defaults` (smoke uses toy sizes)
    sweeps: dict = {}  # mode -> {axis: values}
    numeric_axes: tuple = ()
    # What the letters of a case name (``describe``) stand for, in this module's terms.
    case_terms = ""
    # Largest work() for which the NumPy reference is also *timed* (it is always run once to check).
    reference_timing_cap = 0.0

    def available(self) -> str | None:
        """None when this build can run the family, else why not."""
        return None

    def describe(self, p: dict) -> str:
        raise NotImplementedError

    def inputs(self, p: dict, device: str, lib: str, seed: int) -> Any:
        raise NotImplementedError

    def input_bytes(self, p: dict) -> int:
        raise NotImplementedError

    def contenders(self, p: dict, device: str, lib: str) -> list[Row]:
        """detkernels backends, then torchvision, then the reference (when cheap enough)."""
        dk = _dk()
        from .. import _registry

        rows = []
        for be in DK_BACKENDS:
            try:
                _registry.select(self.registry_op, device, _working(p["dtype"]), be)
            except RuntimeError:
                continue
            rows.append(Row(f"detkernels[{be}]", "detkernels", self.detkernels_fn(dk, p, be)))
        tvo = _torchvision_ops() if lib == "torch" else None
        if tvo is not None:
            fn, note = self.torchvision_fn(tvo, p, device)
            if fn is not None:
                rows.append(Row("torchvision", "torchvision", fn, note=note))
        if device == "cpu":
            rows.append(Row("reference", "reference", self.detkernels_fn(dk, p, "numpy"),
                            timed=self.reference_work(p) <= self.reference_timing_cap))
        return rows

    def detkernels_fn(self, dk: Any, p: dict, backend: str) -> Callable[[Any], Any]:
        raise NotImplementedError

    def torchvision_fn(self, tvo: Any, p: dict, device: str) -> tuple[Callable | None, str]:
        raise NotImplementedError

    def reference_work(self, p: dict) -> float:
        """The size compared with reference_timing_cap."""
        return self.work(p)

    def expected(self, p: dict, inp: Any, device: str) -> Any:
        """The reference output for ``inp`` (computed on the CPU)."""
        return self.detkernels_fn(_dk(), p, "numpy")(self.to_cpu(inp))

    def to_cpu(self, inp: Any) -> Any:
        return tuple(_cpu(x) for x in inp)

    def torchvision_parity(self, p: dict, device: str) -> bool:
        """Whether SPEC.md promises torchvision's exact values for this case."""
        return p["dtype"] != "float16"

    def check(self, row: Row, out: Any, expected: Any, p: dict, device: str) -> str:
        """'exact' | 'equal' | 'same set' | 'differs (...)' | 'MISMATCH ...'."""
        got, exp = _flat(out), _flat(expected)
        if row.kind != "torchvision":
            if len(got) == len(exp) and all(_bytes_equal(a, e) for a, e in zip(got, exp)):
                return "exact"
            return "MISMATCH vs reference"
        if len(got) == len(exp) and all(_values_equal(a, e) for a, e in zip(got, exp)):
            return "equal"
        if self.same_set(got, exp):
            return "same set (tie order)"
        if self.torchvision_parity(p, device):
            return "DIFFERS (parity expected)"
        return "differs (documented divergence)"

    def check_peer(self, row: Row, out: Any, inp: Any, expected: Any, p: dict) -> str:
        """A peer row (kind "peer": ONNX Runtime, OpenCV, lsnms, ultralytics) against the expected
        result; by default the family's own check (families whose peers need a canonical order
        or a subset, as Nms, override it)."""
        return self.check(row, out, expected, p, "cpu")

    def same_set(self, got: list, exp: list) -> bool:
        return False

    def work(self, p: dict) -> float:
        raise NotImplementedError


# ---- box_iou -----------------------------------------------------------------------------------------

class BoxIou(Family):
    name, title, registry_op, unit = "box_iou", "box_iou (N x N)", "box_iou", "pairs"
    case_terms = "N = boxes (N x N IoU pairs), then the dtype and the box distribution"
    defaults = {"N": 1000, "dtype": "float32", "dist": "uniform"}
    mode_defaults = {"smoke": {"N": 64}}
    sweeps = {
        "smoke": {"N": [32, 64], "dtype": ["float16"]},
        "quick": {"N": [100, 1000, 2000], "dtype": ["float32", "float16"]},
        "full": {"N": [100, 300, 1000, 3000, 5000], "dtype": ["float32", "float16", "float64"]},
    }
    numeric_axes = ("N",)
    reference_timing_cap = 1e6

    def describe(self, p):
        return f"N={p['N']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        rng = np.random.default_rng(seed)
        return tuple(_put(data.uniform_boxes(rng, p["N"]), lib, device, p["dtype"]) for _ in range(2))

    def input_bytes(self, p):
        return 2 * p["N"] * 4 * np.dtype(p["dtype"]).itemsize

    def detkernels_fn(self, dk, p, backend):
        return lambda inp: dk.box_iou(inp[0], inp[1], backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return (lambda inp: tvo.box_iou(inp[0], inp[1])), ""

    def work(self, p):
        return float(p["N"]) ** 2


# ---- nms / batched_nms -------------------------------------------------------------------------------

def _nms_boxes(p: dict, seed: int, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if p["dist"] == "uniform":
        return (data.uniform_boxes(rng, p["N"]), rng.random(p["N"]),
                rng.integers(0, num_classes, p["N"]))
    return data.clustered_boxes(rng, p["N"], num_classes)


class Nms(Family):
    name, title, registry_op, unit = "nms", "nms (one class)", "nms", "boxes"
    case_terms = "N = boxes, then the dtype and the box distribution"
    defaults = {"N": 1000, "dtype": "float32", "dist": "clustered", "iou": 0.5}
    mode_defaults = {"smoke": {"N": 64}}
    sweeps = {
        "smoke": {"N": [64, 200], "dtype": ["float16"]},
        # N = 10 and 300: per-call overhead of a deployment-sized NMS (eager dispatch matters).
        "quick": {"N": [10, 300, 1000, 2000, 5000], "dtype": ["float32", "float16"],
                  "dist": ["clustered", "uniform"]},
        "full": {"N": [10, 300, 1000, 2000, 5000, 10000, 25200], "dtype": ["float32", "float16", "float64"],
                 "dist": ["clustered", "uniform"]},
    }
    numeric_axes = ("N",)
    reference_timing_cap = 2000

    def describe(self, p):
        return f"N={p['N']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        b, s, _ = _nms_boxes(p, seed, 1)
        return _put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"])

    def input_bytes(self, p):
        return p["N"] * 5 * np.dtype(p["dtype"]).itemsize

    def detkernels_fn(self, dk, p, backend):
        thr = p["iou"]
        return lambda inp: dk.nms(inp[0], inp[1], thr, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        thr = p["iou"]
        if p["dtype"] == "float16" and device == "cpu":
            # torchvision's CPU kernel has no float16: a user casts (exactly) to float32 first.
            return (lambda inp: tvo.nms(inp[0].float(), inp[1].float(), thr)), "fp16 cast to fp32"
        return (lambda inp: tvo.nms(inp[0], inp[1], thr)), ""

    batched = False

    def contenders(self, p, device, lib):
        from .peers import peer_rows

        rows = super().contenders(p, device, lib)
        return rows[:-1] + peer_rows(p, device, self.batched, Row) + rows[-1:] if (
            rows and rows[-1].kind == "reference") else rows + peer_rows(p, device, self.batched, Row)

    def check_peer(self, row, out, inp, expected, p):
        """A peer's kept indices against the reference, on the candidates it considers."""
        got = row.canon(out, inp)
        exp = to_numpy(expected).astype(np.int64)
        if row.subset is not None:
            idx = np.flatnonzero(row.subset(inp))
            sub = tuple(x[idx] if isinstance(x, np.ndarray) else x[_torch_index(idx)] for x in inp)
            exp = idx[to_numpy(self.detkernels_fn(_dk(), p, "numpy")(sub)).astype(np.int64)]
        if got.shape == exp.shape and np.array_equal(got, exp):
            return "equal"
        if got.shape == exp.shape and np.array_equal(np.sort(got), np.sort(exp)):
            return "same set (tie order)"
        diff = len(set(got.tolist()) ^ set(exp.tolist()))
        return f"differs ({diff} of {len(exp)} kept; peer semantics, see peers.py)"

    def torchvision_parity(self, p, device):
        # CPU: float16 is cast exactly to float32 on both sides. CUDA: torchvision narrows the
        # threshold to float and rounds float16 widths in half (docs/SPEC.md divergences 1 and 5).
        return device == "cpu"

    def same_set(self, got, exp):
        return len(got) == len(exp) and all(
            a.shape == e.shape and np.array_equal(np.sort(a), np.sort(e)) for a, e in zip(got, exp))

    def work(self, p):
        return float(p["N"])


class BatchedNms(Nms):
    name, title, registry_op, unit = "batched_nms", "batched_nms (80 classes)", "nms", "boxes"
    batched = True
    case_terms = "N = boxes, C = classes, then the dtype and the box distribution"
    defaults = {"N": 5000, "classes": 80, "dtype": "float32", "dist": "clustered", "iou": 0.5}
    mode_defaults = {"smoke": {"N": 100}}
    sweeps = {
        "smoke": {"N": [100, 300]},
        "quick": {"N": [1000, 5000, 25200]},
        "full": {"N": [1000, 2000, 5000, 25200, 100800], "dtype": ["float32", "float16"],
                 "dist": ["clustered", "uniform"]},
    }
    reference_timing_cap = 5000

    def describe(self, p):
        return f"N={p['N']} C={p['classes']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        b, s, c = _nms_boxes(p, seed, p["classes"])
        return (_put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"]),
                _put(c, lib, device))

    def input_bytes(self, p):
        return p["N"] * (5 * np.dtype(p["dtype"]).itemsize + 8)

    def detkernels_fn(self, dk, p, backend):
        thr = p["iou"]
        return lambda inp: dk.batched_nms(inp[0], inp[1], inp[2], thr, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        thr = p["iou"]
        if p["dtype"] == "float16" and device == "cpu":
            return ((lambda inp: tvo.batched_nms(inp[0].float(), inp[1].float(), inp[2], thr)),
                    "fp16 cast to fp32")
        return (lambda inp: tvo.batched_nms(inp[0], inp[1], inp[2], thr)), ""

    def torchvision_parity(self, p, device):
        # torchvision offsets coordinates by class below 4 000 (CPU) / 100 000 (CUDA) box
        # coordinates, which changes IoUs (docs/SPEC.md divergence 2); on CUDA, divergence 1 too.
        return device == "cpu" and 4 * p["N"] > 4000


# ---- detect: the YOLO-style post-process -------------------------------------------------------------

def _preprocess(boxes: Any, cls_scores: Any, conf: float, k: int) -> tuple[Any, Any, Any]:
    """Per image: best class per candidate, keep conf > threshold, then the top k by score.
    Identical for every contender (only the NMS differs between rows)."""
    if isinstance(boxes, np.ndarray):
        score, label = cls_scores.max(axis=1), cls_scores.argmax(axis=1)
        idx = np.flatnonzero(score > conf)
        if idx.size > k:
            idx = idx[np.argsort(-score[idx], kind="stable")[:k]]
        return boxes[idx], score[idx], label[idx]
    score, label = cls_scores.max(dim=1)
    idx = (score > conf).nonzero().squeeze(1)
    if idx.numel() > k:
        idx = idx[score[idx].topk(k).indices]
    return boxes[idx], score[idx], label[idx]


def _detect(nms_fn: Callable, p: dict) -> Callable[[Any], list]:
    """A per-image loop: preprocess, NMS with ``nms_fn(boxes, scores, labels, thr)``, gather."""
    conf, k, thr = p["conf"], p["k"], p["iou"]

    def run(images: Any) -> list:
        out = []
        for boxes, cls_scores in images:
            b, s, c = _preprocess(boxes, cls_scores, conf, k)
            keep = nms_fn(b, s, c, thr)
            out.append((b[keep], s[keep], c[keep]))
        return out

    return run


def _one_call(nms_fn: Callable, p: dict) -> Callable[[Any], list]:
    """All images in one NMS call: preprocess per image, concatenate, and give every (image,
    class) pair its own id ``image * classes + class``; then split the kept boxes by image. With
    exact per-class NMS this equals the per-image loop, order included (the global order is by
    descending score, ties by ascending index, and indices ascend image by image)."""
    conf, k, thr, nc = p["conf"], p["k"], p["iou"], p["classes"]

    def run(images: Any) -> list:
        parts = [_preprocess(b, s, conf, k) for b, s in images]
        if isinstance(parts[0][0], np.ndarray):
            b, s = np.concatenate([x[0] for x in parts]), np.concatenate([x[1] for x in parts])
            c = np.concatenate([x[2] + i * nc for i, x in enumerate(parts)])
        else:
            import torch

            b, s = torch.cat([x[0] for x in parts]), torch.cat([x[1] for x in parts])
            c = torch.cat([x[2] + i * nc for i, x in enumerate(parts)])
        keep = nms_fn(b, s, c, thr)
        ck = c[keep]
        image = ck // nc
        out = []
        for i in range(len(parts)):
            sel = image == i
            out.append((b[keep[sel]], s[keep[sel]], ck[sel] - i * nc))
        return out

    return run


def _one_call_rows(fam: "Detect", p: dict, device: str, lib: str) -> list[Row]:
    """Multi-image NMS with today's API: one batched_nms call over the whole batch."""
    if p["B"] < 2:
        return []
    from .. import _registry

    dk, rows = _dk(), []
    for be in DK_BACKENDS:
        try:
            _registry.select("nms", device, _working(p["dtype"]), be)
        except RuntimeError:
            continue
        rows.append(Row(f"detkernels[{be}] one call", "detkernels",
                        _one_call(lambda b, s, c, t, be=be: dk.batched_nms(b, s, c, t, backend=be), p),
                        note="ids = image*classes+class"))
    tvo = _torchvision_ops() if lib == "torch" else None
    if tvo is not None:
        cast = p["dtype"] == "float16" and device == "cpu"
        fn = (lambda b, s, c, t: tvo.batched_nms(b.float(), s.float(), c, t)) if cast else tvo.batched_nms
        rows.append(Row("torchvision one call", "torchvision", _one_call(fn, p),
                        note="ids = image*classes+class" + ("; fp16 cast to fp32" if cast else "")))
    return rows


def _padded_call(nms_fn: Callable, p: dict) -> Callable[[Any], list]:
    """Preprocess per image, pad to [B, k] (padding scores -inf, never above conf), then one
    fixed-size call ``nms_fn(boxes, scores, labels, thr, k, conf) -> (indices [B, k], counts [B])``."""
    conf, k, thr = p["conf"], p["k"], p["iou"]

    def run(images: Any) -> list:
        parts = [_preprocess(b, s, conf, k) for b, s in images]
        B, x = len(parts), parts[0][1]
        if isinstance(x, np.ndarray):
            b, s = np.zeros((B, k, 4), x.dtype), np.full((B, k), -np.inf, x.dtype)
            c = np.zeros((B, k), np.int64)
        else:
            import torch

            b = torch.zeros((B, k, 4), dtype=x.dtype, device=x.device)
            s = torch.full((B, k), float("-inf"), dtype=x.dtype, device=x.device)
            c = torch.zeros((B, k), dtype=torch.int64, device=x.device)
        for i, (bi, si, ci) in enumerate(parts):
            n = si.shape[0]
            b[i, :n], s[i, :n], c[i, :n] = bi, si, ci
        idx, counts = nms_fn(b, s, c, thr, k, conf)
        counts = to_numpy(counts)
        return [(bi[idx[i, :counts[i]]], si[idx[i, :counts[i]]], ci[idx[i, :counts[i]]])
                for i, (bi, si, ci) in enumerate(parts)]

    return run


def _multi_image_rows(fam: "Detect", p: dict, device: str, lib: str) -> list[Row]:
    """The batch through ``multi_image_nms``: one fixed-size call, no host sync inside NMS."""
    if p["B"] < 2:
        return []
    from .. import _registry

    dk, rows = _dk(), []
    for be in DK_BACKENDS:
        try:
            _registry.select("multi_image_nms", device, _working(p["dtype"]), be)
        except RuntimeError:
            continue
        fn = (lambda b, s, c, t, k, conf, be=be:
              dk.multi_image_nms(b, s, t, k, idxs=c, score_threshold=conf, backend=be))
        rows.append(Row(f"detkernels[{be}] multi_image_nms", "detkernels", _padded_call(fn, p),
                        note="one fixed-size call, padded to k"))
    return rows


def _batched(to: Callable[[Any, Any], tuple]) -> Callable[[Any], tuple]:
    """The batch as the head emits it (``to(boxes [B, A, 4], scores [B, A, C])``), built once per
    input set outside the timed call: the per-image rows get the images as views of such tensors."""
    # One entry per input set (keyed by identity, holding the set so the id stays unique): the
    # timing loop rotates the sets every repeat, and a one-entry cache put the stacking (a copy of
    # every image's scores) inside each timed call of these rows.
    cache: dict[int, tuple] = {}

    def get(images: Any) -> tuple:
        if id(images) not in cache:
            lib = sys.modules.get("torch") if not isinstance(images[0][0], np.ndarray) else None
            stack = lib.stack if lib is not None else np.stack
            cache[id(images)] = (images, to(stack([b for b, _ in images]), stack([s for _, s in images])))
        return cache[id(images)][1]

    return get


def _fused_rows(fam: "Detect", p: dict, device: str, lib: str) -> list[Row]:
    """The whole post-process as one ``detkernels.detect`` call on the batch (fixed-size outputs,
    then split per image for the check): max_det = k, so it keeps what the NMS rows keep."""
    from .. import _registry

    dk, rows, k = _dk(), [], p["k"]
    for be in DK_BACKENDS:
        try:
            _registry.select("detect", device, _working(p["dtype"]), be)
        except RuntimeError:
            continue
        batch = _batched(lambda b, s: (b, s))

        def run(images: Any, be: str = be, batch: Callable = batch) -> list:
            b, s = batch(images)
            r = dk.detect(b, s, p["iou"], k, score_threshold=p["conf"], pre_nms_top_k=k, backend=be)
            n = to_numpy(r.counts).tolist()
            return [(r.boxes[i, :n[i]], r.scores[i, :n[i]], r.classes[i, :n[i]]) for i in range(len(n))]

        rows.append(Row(f"detkernels[{be}] detect", "detkernels", run,
                        note="fused: class max, threshold, top-k, NMS, max_det in one call"))
    return rows


def _ultralytics_layout(b: Any, s: Any) -> tuple:
    """``[B, A, 4]`` xyxy boxes and ``[B, A, C]`` scores as an ultralytics head emits them:
    ``[B, 4 + C, A]`` with cxcywh boxes."""
    torch = sys.modules["torch"]
    cxcywh = torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], -1)
    return (torch.cat([cxcywh, s], -1).transpose(1, 2).contiguous(),)


def _ultralytics_split(out: list) -> list:
    return [(x[:, :4], x[:, 4], x[:, 5].long()) for x in out]


def _ultralytics_rows(fam: "Detect", p: dict, device: str, lib: str) -> list[Row]:
    """ultralytics' ``non_max_suppression`` (when installed) on the same batch in its own layout,
    ``[B, 4 + C, A]`` with cxcywh boxes; max_nms = max_det = k (the other rows' top-k, no cap).
    Beside it (float32), ``detkernels.ultralytics.non_max_suppression``, the drop-in: the same
    call through two fused detect calls, checked identical to ultralytics' rows."""
    import importlib.util

    if lib != "torch" or importlib.util.find_spec("ultralytics") is None:
        return []
    from ultralytics.utils.nms import non_max_suppression

    batch = _batched(_ultralytics_layout)
    args = dict(max_det=p["k"], max_nms=p["k"])

    def run(images: Any) -> list:
        return _ultralytics_split(non_max_suppression(batch(images)[0], p["conf"], p["iou"], **args))

    rows = [Row("ultralytics non_max_suppression", "peer", run,
                note="ultralytics 8.x: per-image Python loop, class offsets + torchvision nms")]
    if p["dtype"] == "float32":  # the drop-in reproduces float32/float64 calls (half: NotImplementedError)
        dk_ul = _dk().ultralytics

        def drop_in(images: Any) -> list:
            return _ultralytics_split(dk_ul.non_max_suppression(batch(images)[0], p["conf"], p["iou"], **args))

        rows.append(Row(ULTRALYTICS_DROP_IN, "detkernels", drop_in,
                        note="checked byte for byte against ultralytics' own rows (its class offsets, max_nms sort)"))
    return rows


ULTRALYTICS_DROP_IN = "detkernels.ultralytics non_max_suppression"
ORT_DETECT = "onnxruntime detect graph"


def _onnxruntime_rows(fam: "Detect", p: dict, device: str, lib: str) -> list[Row]:
    """ONNX Runtime (CPU, 2 intra-op threads, as peers.py) running the ONNX export of the same
    ``detkernels.detect`` call (detkernels/_torch/onnx.py: ArgMax, Greater, TopK,
    NonMaxSuppression, scatter), exported once per case at its fixed shapes (legacy exporter) on
    the first, untimed call; checked as the fused op is, against reference/detect.py."""
    import importlib.util

    if lib != "torch" or device != "cpu" or any(importlib.util.find_spec(m) is None
                                                 for m in ("onnx", "onnxruntime")):
        return []
    from .peers import ORT_THREADS

    k, sess = p["k"], []
    batch = _batched(lambda b, s: (b.numpy(), s.numpy()))

    def export(b: Any, s: Any) -> Any:
        import io
        import warnings

        import onnxruntime as ort
        torch = sys.modules["torch"]
        dk = _dk()

        class Fn(torch.nn.Module):
            def forward(self, b: Any, s: Any) -> tuple:
                return tuple(dk.detect(b, s, p["iou"], k, score_threshold=p["conf"], pre_nms_top_k=k))

        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Fn(), (torch.from_numpy(b), torch.from_numpy(s)), f, dynamo=False, opset_version=18)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = ORT_THREADS, 1
        return ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])

    def run(images: Any) -> list:
        b, s = batch(images)
        if not sess:
            sess.append(export(b, s))
        names = [i.name for i in sess[0].get_inputs()]
        boxes, scores, classes, _, counts = sess[0].run(None, dict(zip(names, (b, s))))
        return [(boxes[i, :n], scores[i, :n], classes[i, :n]) for i, n in enumerate(counts.tolist())]

    return [Row(ORT_DETECT, "peer", run, note="the exported detect graph (standard ONNX operators)")]


# Rows that run a whole batch of images in one call. Each entry maps (family, params, device, lib)
# to a list of Rows whose fn takes the list of images and returns, per image, (boxes, scores,
# labels) as `_detect` does.
MULTI_IMAGE_ROWS: list[Callable[..., list[Row]]] = [_one_call_rows, _multi_image_rows, _fused_rows,
                                                    _ultralytics_rows, _onnxruntime_rows]


class _Expected(list):
    """The NMS rows' expected per-image outputs, plus (lazily) the fused op's reference for image 0
    (``reference/detect.py``: its top-k and output order break ties by anchor index, which the
    torch-preprocessed rows do not fix). Images are independent: one is checked, as roi_align
    checks its first RoIs."""

    def __init__(self, items: list, image0: tuple, p: dict, images: Any = None) -> None:
        super().__init__(items)
        self._image0, self._p, self._fused = image0, p, None
        self._images, self._ultralytics = images, None

    def ultralytics(self) -> list:
        """ultralytics' own rows on the whole batch (the drop-in row's expected output)."""
        if self._ultralytics is None:
            from ultralytics.utils.nms import non_max_suppression

            pred = _ultralytics_layout(*(sys.modules["torch"].stack([x[i] for x in self._images]) for i in (0, 1)))[0]
            self._ultralytics = _ultralytics_split(non_max_suppression(
                pred, self._p["conf"], self._p["iou"], max_det=self._p["k"], max_nms=self._p["k"]))
        return self._ultralytics

    def fused(self) -> list:
        if self._fused is None:
            from ..reference.detect import detect as ref_detect

            b, s = (to_numpy(x)[None] for x in self._image0)
            k = self._p["k"]
            r = ref_detect(b, s, self._p["iou"], k, score_threshold=self._p["conf"], pre_nms_top_k=k)
            n = int(r[4][0])
            self._fused = [r[0][0, :n], r[1][0, :n], r[2][0, :n]]
        return self._fused


class Detect(Family):
    name, registry_op, unit = "detect", "nms", "images"
    title = "YOLO post-process: conf -> top-k -> batched NMS"
    case_terms = ("A = head candidates (anchors) per image (25 200 at 640 px, 100 800 at 1280 px), "
                  "B = images per batch, k = top-k candidates kept per image after the score "
                  "threshold (conf > 0.05), before batched NMS over C = 80 classes; then the dtype "
                  "and the box distribution")
    defaults = {"A": 25200, "B": 1, "k": 1000, "classes": 80, "dtype": "float32",
                "dist": "clustered", "conf": 0.05, "iou": 0.45}
    mode_defaults = {"smoke": {"A": 2000, "k": 100}}
    sweeps = {
        "smoke": {"B": [1, 2]},
        "quick": {"k": [300, 1000, 2000], "B": [1, 8], "A": [8400, 25200, 100800],
                  "dtype": ["float32", "float16"], "dist": ["clustered", "uniform"]},
        "full": {"k": [300, 1000, 2000], "B": [1, 8, 32], "A": [8400, 25200, 100800],
                 "dtype": ["float32", "float16"], "dist": ["clustered", "uniform"]},
    }
    numeric_axes = ("k", "B", "A")
    reference_timing_cap = 1000  # images x k

    def describe(self, p):
        return f"A={p['A']} B={p['B']} k={p['k']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        rng = np.random.default_rng(seed)
        images = []
        for _ in range(p["B"]):
            b, s = data.yolo_head(rng, p["A"], p["classes"], p["dist"])
            images.append((_put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"])))
        return images

    def input_bytes(self, p):
        return p["B"] * p["A"] * (4 + p["classes"]) * np.dtype(p["dtype"]).itemsize

    def to_cpu(self, inp):
        return [tuple(_cpu(x) for x in img) for img in inp]

    def contenders(self, p, device, lib):
        rows = super().contenders(p, device, lib)
        for extra in MULTI_IMAGE_ROWS:
            rows.extend(extra(self, p, device, lib))
        # What the pipeline costs without NMS: the part no NMS kernel can speed up.
        rows.append(Row("no NMS (preprocess only)", "baseline",
                        _detect(lambda b, s, c, t: slice(None), p)))
        return rows

    def detkernels_fn(self, dk, p, backend):
        return _detect(lambda b, s, c, t: dk.batched_nms(b, s, c, t, backend=backend), p)

    def torchvision_fn(self, tvo, p, device):
        if p["dtype"] == "float16" and device == "cpu":
            return (_detect(lambda b, s, c, t: tvo.batched_nms(b.float(), s.float(), c, t), p),
                    "fp16 cast to fp32 for NMS")
        return _detect(tvo.batched_nms, p), ""

    def expected(self, p, inp, device):
        # Preprocess on the device under test (top-k tie order may differ between devices), then
        # run the reference NMS on the CPU.
        dk = _dk()
        out = []
        for boxes, cls_scores in inp:
            b, s, c = (_cpu(x) for x in _preprocess(boxes, cls_scores, p["conf"], p["k"]))
            keep = dk.batched_nms(b, s, c, p["iou"], backend="numpy")
            out.append((b[keep], s[keep], c[keep]))
        return _Expected(out, tuple(_cpu(x) for x in inp[0]), p, inp)

    def check(self, row, out, expected, p, device):
        if row.label == ULTRALYTICS_DROP_IN:  # its spec is ultralytics: every image's rows, bytes
            got, exp = _flat(out), _flat(expected.ultralytics())
            ok = len(got) == len(exp) and all(_bytes_equal(a, e) for a, e in zip(got, exp))
            return "exact" if ok else "MISMATCH vs ultralytics"
        if row.label.endswith(" detect") or row.label == ORT_DETECT:
            # the fused op (or its ONNX graph): bytes of image 0 vs reference/detect.py
            got, exp = _flat(out[0]), expected.fused()
            ok = len(got) == 3 and all(_bytes_equal(a, e) for a, e in zip(got, exp))
            return "exact" if ok else "MISMATCH vs reference"
        if row.kind == "peer":  # ultralytics: the same detections (its boxes round-trip cxcywh)?
            got, exp = _flat(out), _flat(list(expected))

            def pairs(x: list, i: int) -> np.ndarray:  # image i's (score, label) rows, sorted
                return np.unique(np.stack([x[i + 1].astype(np.float64), x[i + 2].astype(np.float64)], 1), axis=0)

            if len(got) == len(exp) and all(np.array_equal(pairs(got, i), pairs(exp, i))
                                            for i in range(0, len(got), 3)):
                return "same detections (scores, labels)"
            return "differs (class-offset NMS on cxcywh round-tripped boxes)"
        return super().check(row, out, expected, p, device)

    def torchvision_parity(self, p, device):
        # Per image, torchvision's batched_nms offsets coordinates by class for up to 1 000
        # candidates (docs/SPEC.md divergence 2); NMS parity itself is checked by batched_nms.
        return False

    def same_set(self, got, exp):
        # Per image (boxes, scores, labels): the same detections in another order (tied scores).
        if len(got) != len(exp):
            return False
        for i in range(0, len(got), 3):
            g = np.concatenate([got[i].astype(np.float64), got[i + 1][:, None].astype(np.float64),
                                got[i + 2][:, None].astype(np.float64)], axis=1)
            e = np.concatenate([exp[i].astype(np.float64), exp[i + 1][:, None].astype(np.float64),
                                exp[i + 2][:, None].astype(np.float64)], axis=1)
            if g.shape != e.shape or not np.array_equal(np.unique(g, axis=0), np.unique(e, axis=0)):
                return False
        return True

    def work(self, p):
        return float(p["B"])

    def reference_work(self, p):
        return float(p["B"] * p["k"])


# ---- roi_align ---------------------------------------------------------------------------------------

class RoiAlign(Family):
    name, title, registry_op, unit = "roi_align", "roi_align (C=256, stride 8)", "roi_align", "RoIs"
    case_terms = ("P = RoIs (proposals), C = feature-map channels, 7x7 / 14x14 = output size, then "
                  "the dtype and the RoI distribution")
    # A stride-8 FPN level of an 800 x 1216 image: 100 x 152; torchvision's (input, boxes[K, 5],
    # output_size, spatial_scale, sampling_ratio, aligned) signature.
    defaults = {"P": 1000, "C": 256, "H": 100, "W": 152, "out": 7, "scale": 0.125, "sr": 2,
                "aligned": True, "dtype": "float32", "dist": "clustered"}
    # Quick mode centres on P=300 (torchvision's CPU kernel takes ~1.5 s for P=1000 at 14x14).
    mode_defaults = {"smoke": {"P": 16, "C": 8, "H": 20, "W": 30}, "quick": {"P": 300}}
    sweeps = {
        "smoke": {"P": [16, 32]},
        # float16 only in full mode: torchvision's CPU kernel rounds every op in half (~15x slower).
        "quick": {"P": [300, 1000], "out": [7, 14]},
        "full": {"P": [300, 1000, 2000], "out": [7, 14], "dtype": ["float32", "float16"],
                 "dist": ["clustered", "uniform"]},
    }
    numeric_axes = ("P",)
    reference_timing_cap = 0  # the loop-clear reference is too slow to time at these sizes
    check_rois = 8  # RoIs are independent: the reference checks the first few of every output

    def available(self):
        if not hasattr(_dk(), "roi_align"):
            return "not available in this build of detkernels (no detkernels.roi_align)"
        return None

    def describe(self, p):
        return f"P={p['P']} C={p['C']} {p['out']}x{p['out']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        rng = np.random.default_rng(seed)
        img_h, img_w = p["H"] / p["scale"], p["W"] / p["scale"]
        x = data.feature_map(rng, 1, p["C"], p["H"], p["W"])
        b = data.proposals(rng, p["P"], img_w, img_h, p["dist"])
        rois = np.concatenate([np.zeros((p["P"], 1)), b], axis=1)
        return _put(x, lib, device, p["dtype"]), _put(rois, lib, device, p["dtype"])

    def input_bytes(self, p):
        return (p["C"] * p["H"] * p["W"] + 5 * p["P"]) * np.dtype(p["dtype"]).itemsize

    def _args(self, p):
        return (p["out"], p["out"]), p["scale"], p["sr"], p["aligned"]

    def detkernels_fn(self, dk, p, backend):
        size, scale, sr, aligned = self._args(p)
        return lambda inp: dk.roi_align(inp[0], inp[1], size, scale, sr, aligned, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        size, scale, sr, aligned = self._args(p)
        return (lambda inp: tvo.roi_align(inp[0], inp[1], size, scale, sr, aligned)), ""

    def expected(self, p, inp, device):
        x, rois = self.to_cpu(inp)
        return self.detkernels_fn(_dk(), p, "numpy")((x, rois[: self.check_rois]))

    def check(self, row, out, expected, p, device):
        return super().check(row, out[: self.check_rois], expected, p, device)

    def torchvision_parity(self, p, device):
        # float16: docs/SPEC.md divergence 5. CUDA: torchvision's kernel is compiled with FMA
        # contraction, so its last bits follow the GPU's fused arithmetic, not the CPU kernel's.
        return device == "cpu" and p["dtype"] != "float16"

    def work(self, p):
        return float(p["P"])


# ---- nms at scale (issue 16) -------------------------------------------------------------------------

PEER_LIMIT_S = 20.0  # one call of a peer (torchvision, lsnms, detkernels[numba]) beyond 10^4 boxes


def _pilot_s(call: str, p: dict, limit_s: float) -> float | None:
    """Seconds of one ``call`` (Python source over b, s, thr; torch tensors) on the case's inputs
    (seed 0) in a fresh interpreter, after a warm-up on 100 boxes (JIT, imports); None when it
    runs past ``limit_s`` (the process is killed) or fails."""
    import subprocess

    code = (
        "import time, numpy as np, torch\n"
        "from detkernels.bench import data\n"
        f"b, s = data.large_nms_boxes(np.random.default_rng(0), {p['N']}, {p['dist']!r})\n"
        f"b, s = torch.from_numpy(b.astype({p['dtype']!r})), torch.from_numpy(s.astype({p['dtype']!r}))\n"
        f"thr = {p['iou']!r}\n"
        "full = (b, s); b, s = b[:100], s[:100]\n"
        f"{call}\n"
        "b, s = full; t = time.perf_counter()\n"
        f"{call}\n"
        "print(time.perf_counter() - t)\n")
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                           timeout=limit_s + 60)  # + imports and the warm-up
        t = float(r.stdout.split()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return None
    return t if t <= limit_s else None


def _lsnms(backend: str) -> Callable | None:
    try:
        import lsnms  # pip install --no-deps lsnms (0.5.0; its metadata pins numba < 0.64)
    except ImportError:
        return None
    # score_threshold must lie in [0, 1]; lsnms keeps scores > 0 (the inputs' scores all are).
    return lambda b, s, thr: lsnms.nms(b, s, thr, score_threshold=0.0, backend=backend)


class NmsLarge(Nms):
    """NMS of 10^4 - 10^6 boxes on a large canvas (data.large_nms_boxes), one family per
    distribution. Peers: lsnms (R-tree; both of its backends), torchvision (plain O(kept x N)) and
    the numba backend (pruned like native: numba/cpu.py) -- beyond 10^4 boxes each peer first runs
    once in a subprocess and is timed only if that call ends within PEER_LIMIT_S. Checks: the
    reference up to 10^4 boxes; above, the plain native path (forced through _C.testing) where it
    takes seconds (N <= 10^5 or one cluster), else the row is unchecked and the peers are compared
    with detkernels' output. Peers are checked as kept sets (lsnms returns its own order)."""

    registry_op, unit = "nms", "boxes"
    case_terms = "N = boxes (canvas side 20 000 px x sqrt(N / 10^6)), then the dtype"
    mode_defaults = {"smoke": {"N": 2000}, "quick": {"N": 10 ** 4}}
    sweeps = {"smoke": {"N": [2000]}, "quick": {"N": [10 ** 4]},
              "full": {"N": [10 ** 4, 10 ** 5, 10 ** 6]}}
    reference_timing_cap = 0

    def __init__(self, dist: str, what: str) -> None:
        self.name = f"nms_large_{dist}"
        self.title = f"nms at scale ({what})"
        self.defaults = {"N": 10 ** 5, "dtype": "float32", "dist": dist, "iou": 0.5}

    def inputs(self, p, device, lib, seed):
        b, s = data.large_nms_boxes(np.random.default_rng(seed), p["N"], p["dist"])
        return _put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"])

    def _limited(self, label: str, kind: str, fn: Callable, call: str, p: dict, lib: str) -> Row:
        if p["N"] <= 10 ** 4 or lib != "torch":
            return Row(label, kind, fn)
        t = _pilot_s(call, p, PEER_LIMIT_S)
        if t is None:
            return Row(label, kind, lambda inp: None, timed=False,
                       note=f"not run: one call > {PEER_LIMIT_S:.0f} s")
        return Row(label, kind, fn, note=f"pilot call {t:.1f} s")

    def contenders(self, p, device, lib):
        dk = _dk()
        thr = p["iou"]
        rows = [Row("detkernels[native]", "detkernels", self.detkernels_fn(dk, p, "native"))]
        if device != "cpu":
            return rows
        rows.append(self._limited("detkernels[numba]", "detkernels", self.detkernels_fn(dk, p, "numba"),
                                  "import detkernels; detkernels.nms(b, s, thr, backend='numba')", p, lib))
        for be in ("rust", "numba"):
            fn = _lsnms(be)
            if fn is not None:
                rows.append(self._limited(
                    f"lsnms[{be}]", "peer", lambda inp, fn=fn: fn(to_numpy(inp[0]), to_numpy(inp[1]), thr),
                    f"import lsnms; lsnms.nms(b.numpy(), s.numpy(), thr, score_threshold=0.0, backend={be!r})",
                    p, lib))
        tvo = _torchvision_ops() if lib == "torch" else None
        if tvo is not None:
            rows.append(self._limited("torchvision", "torchvision", lambda inp: tvo.nms(inp[0], inp[1], thr),
                                      "import torchvision; torchvision.ops.nms(b, s, thr)", p, lib))
        return rows

    def expected(self, p, inp, device):
        from .. import _C

        b, s = self.to_cpu(inp)
        if p["N"] <= 10 ** 4:
            return "reference", to_numpy(self.detkernels_fn(_dk(), p, "numpy")((b, s)))
        if p["N"] <= 10 ** 5 or p["dist"] == "one_cluster":
            old = _C.testing.nms_set_path(1)  # NmsPath kNmsPathPlain (csrc/ops/nms/nms_sparse.h)
            try:
                return "plain path", to_numpy(_dk().nms(b, s, p["iou"], backend="native"))
            finally:
                _C.testing.nms_set_path(old)
        return "detkernels[native] (unverified)", to_numpy(_dk().nms(b, s, p["iou"], backend="native"))

    def check(self, row, out, expected, p, device):
        source, want = expected
        if row.note.startswith("not run"):
            return "not run (time limit)"
        got = to_numpy(out).astype(np.int64)
        if row.kind == "detkernels":
            if source.endswith("(unverified)"):
                return "unchecked (no reference at this size)"
            return "exact" if _bytes_equal(got, want) else f"MISMATCH vs {source}"
        if got.shape == want.shape and np.array_equal(got, want):
            return f"equal ({source})"
        if got.size == want.size and np.array_equal(np.sort(got), np.sort(want)):
            return f"same set ({source})"
        extra, missing = np.setdiff1d(got, want).size, np.setdiff1d(want, got).size
        return f"differs ({source}): {got.size} vs {want.size} kept, +{extra} -{missing}"

    check_peer = Family.check_peer  # lsnms: a kept set, by `check` (Nms's needs a canonical order)


# ---- soft_nms (issue 13) ------------------------------------------------------------------------------

def _ensemble_boxes() -> Any | None:
    try:
        from ensemble_boxes import ensemble_boxes_nms
    except ImportError:
        return None
    return ensemble_boxes_nms


class SoftNms(Nms):
    """Soft-NMS of N boxes (one class) against ensemble-boxes' ``cpu_soft_nms_float`` (NumPy; the
    peer of issue 13), on the same boxes and scores. Its kept indices are checked against the
    reference's (same set and order expected: its differences -- float64 arithmetic for float32
    inputs, ties, ``score > thresh`` -- are pinned in tests/ops/test_soft_nms.py)."""

    name, title, registry_op, unit = "soft_nms", "soft_nms (one class)", "soft_nms", "boxes"
    case_terms = "N = boxes, then the decay method, the dtype and the box distribution"
    defaults = {"N": 5000, "method": "gaussian", "dtype": "float32", "dist": "clustered",
                "iou": 0.3, "sigma": 0.5}
    mode_defaults = {"smoke": {"N": 100}}
    sweeps = {
        "smoke": {"N": [100, 300]},
        "quick": {"N": [1000, 5000], "method": ["linear", "gaussian"]},
        "full": {"N": [1000, 5000, 25200], "method": ["linear", "gaussian"],
                 "dist": ["clustered", "uniform"]},
    }
    numeric_axes = ("N",)
    reference_timing_cap = 1000

    def describe(self, p):  # inputs, input_bytes, work: Nms's (one class, N boxes)
        return f"N={p['N']} {p['method']} {p['dtype']} {p['dist']}"

    def detkernels_fn(self, dk, p, backend):
        thr, sigma, method = p["iou"], p["sigma"], p["method"]
        return lambda inp: dk.soft_nms(inp[0], inp[1], thr, sigma=sigma, method=method, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return None, "torchvision has no soft-NMS"

    def contenders(self, p, device, lib):
        rows = Family.contenders(self, p, device, lib)  # not Nms's NMS peers
        E = _ensemble_boxes() if device == "cpu" else None
        if E is not None:
            thr, sigma, m = p["iou"], p["sigma"], 1 if p["method"] == "linear" else 2
            memo: dict = {}

            def host(inp):  # its layout (NumPy), once per input set, outside the timed call
                hit = memo.get(id(inp))
                if hit is None or hit[0] is not inp:
                    hit = memo[id(inp)] = (inp, (to_numpy(inp[0]), to_numpy(inp[1])))
                return hit[1]

            def run(inp):
                b, s = host(inp)
                return E.cpu_soft_nms_float(b, s.copy(), thr, sigma, 0.001, m)  # it rescales s in place

            rows.insert(len(rows) - (rows and rows[-1].kind == "reference"),
                        Row("ensemble-boxes", "peer", run, note="cpu_soft_nms_float, NumPy",
                            canon=lambda out, inp: np.asarray(out, np.int64)))
        return rows

    def check_peer(self, row, out, inp, expected, p):
        got = row.canon(out, inp)
        exp = to_numpy(expected[0]).astype(np.int64)
        if got.shape == exp.shape and np.array_equal(got, exp):
            return "equal"
        if got.shape == exp.shape and np.array_equal(np.sort(got), np.sort(exp)):
            return "same set (tie order)"
        diff = len(set(got.tolist()) ^ set(exp.tolist()))
        return f"differs ({diff} of {len(exp)} kept; peer semantics: docs/SPEC.md §6.2)"


class MatrixNms(SoftNms):
    """Matrix NMS of N boxes against a torch implementation of mmdetection's mask_matrix_nms for
    boxes (peer_matrix_nms.py: dense N x N matrices, run up to MATRIX_NMS_PEER_MAX_N boxes), on
    the same boxes, scores and labels. The peer's kept indices are compared with the reference's
    (its torch.exp differs from dk_exp in the last ulp, which can reorder near-equal scores)."""

    name, title, registry_op, unit = "matrix_nms", "matrix_nms", "matrix_nms", "boxes"
    case_terms = "N = boxes, C = classes, then the kernel, the dtype and the box distribution"
    defaults = {"N": 5000, "classes": 1, "kernel": "gaussian", "dtype": "float32",
                "dist": "clustered", "sigma": 2.0, "thr": 0.05}
    mode_defaults = {"smoke": {"N": 100}}
    sweeps = {
        "smoke": {"N": [100, 300]},
        "quick": {"N": [1000, 5000], "kernel": ["gaussian", "linear"]},
        "full": {"N": [1000, 5000, 25200], "kernel": ["gaussian", "linear"], "classes": [1, 80],
                 "dist": ["clustered", "uniform"]},
    }
    reference_timing_cap = 1000

    def describe(self, p):
        return f"N={p['N']} C={p['classes']} {p['kernel']} {p['dtype']} {p['dist']}"

    def inputs(self, p, device, lib, seed):
        b, s, c = _nms_boxes(p, seed, p["classes"])
        if p["classes"] == 1:
            c = np.zeros_like(c)
        return (_put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"]), _put(c, lib, device))

    def input_bytes(self, p):
        return p["N"] * (5 * np.dtype(p["dtype"]).itemsize + 8)

    def detkernels_fn(self, dk, p, backend):
        kernel, sigma, thr = p["kernel"], p["sigma"], p["thr"]
        return lambda inp: dk.matrix_nms(inp[0], inp[1], inp[2], kernel=kernel, sigma=sigma,
                                         score_threshold=thr, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return None, "torchvision has no Matrix NMS"

    def contenders(self, p, device, lib):
        rows = Family.contenders(self, p, device, lib)
        from .peer_matrix_nms import MATRIX_NMS_PEER_MAX_N, torch_matrix_nms

        if lib == "torch" and p["N"] <= MATRIX_NMS_PEER_MAX_N:
            kernel, sigma, thr = p["kernel"], p["sigma"], p["thr"]
            run = lambda inp: torch_matrix_nms(inp[0], inp[1], inp[2], kernel, sigma, thr)  # noqa: E731
            rows.insert(len(rows) - (rows and rows[-1].kind == "reference"),
                        Row("torch (mmdet-style)", "peer", run, note="dense N x N matrices",
                            canon=lambda out, inp: to_numpy(out[0]).astype(np.int64)))
        return rows


FAMILIES: dict[str, Family] = {f.name: f for f in (BoxIou(), Nms(), BatchedNms(), Detect(), RoiAlign(),
                                                   NmsLarge("sparse", "uniform sparse"),
                                                   NmsLarge("clustered", "merged tiles, groups of ~8"),
                                                   NmsLarge("one_cluster", "one big cluster"),
                                                   SoftNms(), MatrixNms())}


def plan(family: Family, mode: str) -> list[Case]:
    """The cases of ``family`` in ``mode``: the default case plus one sweep per axis, deduplicated
    (a case that lies on several sweeps is run once and plotted on each)."""
    base = {**family.defaults, **family.mode_defaults.get(mode, {})}
    cases: dict[tuple, Case] = {}
    for axis, values in family.sweeps[mode].items():
        for v in values:
            p = {**base, axis: v}
            key = tuple(sorted(p.items()))
            case = cases.setdefault(key, Case(family, p))
            case.sweeps.append(axis)
    key = tuple(sorted(base.items()))
    cases.setdefault(key, Case(family, dict(base)))
    return list(cases.values())


# ---- rotated boxes (issue 17) -------------------------------------------------------------------------

def _obb_boxes(rng: np.random.Generator, n: int, clustered: bool) -> tuple[np.ndarray, np.ndarray]:
    """Oriented boxes (cx, cy, w, h, degrees counter-clockwise) on a 1024 px image, DOTA-like sizes;
    clustered: jittered copies of n / 20 objects with scores falling with the jitter (a detector's
    raw output, what NMS sees)."""
    if not clustered:
        b = np.stack([rng.uniform(0, 1024, n), rng.uniform(0, 1024, n), rng.uniform(8, 120, n),
                      rng.uniform(8, 60, n), rng.uniform(-90, 90, n)], 1)
        return b, rng.random(n)
    k = max(1, n // 20)
    obj, _ = _obb_boxes(rng, k, False)
    o = rng.integers(0, k, n)
    j = rng.normal(0, 1, (n, 5)) * np.array([3.0, 3.0, 4.0, 2.0, 5.0])
    return obj[o] + j, np.clip(1 - np.abs(j).sum(1) / 40 + rng.normal(0, 0.02, n), 0, 1)


class BoxIouRotated(Family):
    name, title, registry_op, unit = "box_iou_rotated", "box_iou rotated (N x N, cxcywhr)", "box_iou_rotated", "pairs"
    case_terms = "N = oriented boxes (N x N IoU pairs, 1024 px image), then the dtype"
    defaults = {"N": 1000, "dtype": "float32"}
    mode_defaults = {"smoke": {"N": 64}}
    sweeps = {"smoke": {"N": [32, 64]}, "quick": {"N": [100, 1000]},
              "full": {"N": [100, 1000, 2000], "dtype": ["float32", "float64"]}}
    numeric_axes = ("N",)
    reference_timing_cap = 1e4

    def describe(self, p):
        return f"N={p['N']} {p['dtype']}"

    def inputs(self, p, device, lib, seed):
        rng = np.random.default_rng(seed)
        return tuple(_put(_obb_boxes(rng, p["N"], False)[0], lib, device, p["dtype"]) for _ in range(2))

    def input_bytes(self, p):
        return 2 * p["N"] * 5 * np.dtype(p["dtype"]).itemsize

    def detkernels_fn(self, dk, p, backend):
        return lambda inp: dk.box_iou(inp[0], inp[1], fmt="cxcywhr", backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return (lambda inp: tvo.box_iou(inp[0], inp[1], fmt="cxcywhr")), "torchvision::box_iou_rotated"

    def work(self, p):
        return float(p["N"]) ** 2


class NmsRotated(Family):
    """nms_rotated against OpenCV's cv2.dnn.NMSBoxesRotated (its own polygon IoU, angle clockwise:
    given -a) and ultralytics' OBB path (TorchNMS.fast_nms with batch_probiou, radians, clockwise:
    a different metric and Fast-NMS, so a different kept set); same boxes, one run."""

    name, title, registry_op, unit = "nms_rotated", "nms_rotated (one class, clustered OBBs)", "nms_rotated", "boxes"
    case_terms = "N = oriented boxes (jittered copies of N / 20 objects), then the dtype"
    defaults = {"N": 8400, "dtype": "float32", "iou": 0.5}
    mode_defaults = {"smoke": {"N": 200}}
    # No larger N: ultralytics' dense N x N ProbIoU path takes ~8 s per call at 8 400 here.
    sweeps = {"smoke": {"N": [200]}, "quick": {"N": [1000, 8400]}, "full": {"N": [1000, 8400]}}
    numeric_axes = ("N",)
    reference_timing_cap = 1000

    def describe(self, p):
        return f"N={p['N']} {p['dtype']}"

    def inputs(self, p, device, lib, seed):
        b, s = _obb_boxes(np.random.default_rng(seed), p["N"], True)
        return _put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"])

    def input_bytes(self, p):
        return p["N"] * 6 * np.dtype(p["dtype"]).itemsize

    def detkernels_fn(self, dk, p, backend):
        thr = p["iou"]
        return lambda inp: dk.nms_rotated(inp[0], inp[1], thr, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return None, "torchvision 0.29.1 has no rotated NMS"

    def contenders(self, p, device, lib):
        from .peers import _cached, _score_order

        rows = super().contenders(p, device, lib)
        if device != "cpu" or p["dtype"] != "float32":
            return rows
        thr = p["iou"]
        peers = []
        try:
            import cv2
        except ImportError:
            cv2 = None
        if cv2 is not None:
            def rects(inp):
                b, s = to_numpy(inp[0]).astype(np.float32), to_numpy(inp[1]).astype(np.float32)
                return [((float(x[0]), float(x[1])), (float(x[2]), float(x[3])), -float(x[4])) for x in b], s

            conv = _cached(rects)
            peers.append(Row("opencv", "peer", lambda inp: cv2.dnn.NMSBoxesRotated(*conv(inp), 0.0, thr),
                             note="dnn.NMSBoxesRotated, scores > 0 only",
                             canon=lambda out, inp: _score_order(to_numpy(inp[1]), out),
                             subset=lambda inp: to_numpy(inp[1]) > 0))
        if lib == "torch":
            try:
                from ultralytics.utils.metrics import batch_probiou
                from ultralytics.utils.nms import TorchNMS
            except ImportError:
                TorchNMS = None
            if TorchNMS is not None:
                import torch

                def xywhr(inp):
                    b = inp[0].clone()
                    b[:, 4] = b[:, 4] * (-torch.pi / 180)
                    return b

                conv_u = _cached(xywhr)
                peers.append(Row("ultralytics", "peer",
                                 lambda inp: TorchNMS.fast_nms(conv_u(inp), inp[1], thr, iou_func=batch_probiou),
                                 note="OBB path: Fast-NMS on the dense ProbIoU matrix",
                                 canon=lambda out, inp: _score_order(to_numpy(inp[1]), to_numpy(out))))
        ref = [r for r in rows if r.kind == "reference"]
        return [r for r in rows if r.kind != "reference"] + peers + ref

    check_peer = Nms.check_peer

    def work(self, p):
        return float(p["N"])


class NmsProbiou(NmsRotated):
    """ultralytics' OBB NMS (Fast-NMS on ProbIoU, radians) against detkernels.nms_probiou(fast=True),
    which computes the same kept set without the dense N x N matrix; same boxes as nms_rotated."""

    name, title, registry_op = "nms_probiou", "nms_probiou (Fast-NMS on ProbIoU, ultralytics' OBB NMS)", "nms_probiou"

    def inputs(self, p, device, lib, seed):
        b, s = _obb_boxes(np.random.default_rng(seed), p["N"], True)
        b[:, 4] = np.deg2rad(b[:, 4])  # ultralytics' xywhr: radians
        return _put(b, lib, device, p["dtype"]), _put(s, lib, device, p["dtype"])

    def detkernels_fn(self, dk, p, backend):
        thr = p["iou"]
        return lambda inp: dk.nms_probiou(inp[0], inp[1], thr, fast=True, backend=backend)

    def torchvision_fn(self, tvo, p, device):
        return None, "torchvision has no ProbIoU"

    def contenders(self, p, device, lib):
        from .peers import _score_order

        rows = Family.contenders(self, p, device, lib)
        if device == "cpu" and lib == "torch":
            try:
                from ultralytics.utils.metrics import batch_probiou
                from ultralytics.utils.nms import TorchNMS
            except ImportError:
                return rows
            thr = p["iou"]
            peer = Row("ultralytics", "peer",
                       lambda inp: TorchNMS.fast_nms(inp[0], inp[1], thr, iou_func=batch_probiou),
                       note="TorchNMS.fast_nms(iou_func=batch_probiou): the dense ProbIoU matrix",
                       canon=lambda out, inp: _score_order(to_numpy(inp[1]), to_numpy(out)))
            ref = [r for r in rows if r.kind == "reference"]
            rows = [r for r in rows if r.kind != "reference"] + [peer] + ref
        return rows


FAMILIES.update({f.name: f for f in (BoxIouRotated(), NmsRotated(), NmsProbiou())})
