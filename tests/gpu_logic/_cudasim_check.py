"""Run by tests/gpu_logic/test_numba_cudasim.py in a subprocess with NUMBA_ENABLE_CUDASIM=1 (which must be
set before numba is imported): the numba.cuda kernels of the Numba backend, executed by the CUDA
simulator on small inputs of every family, byte-for-byte against the NumPy reference.

The simulator computes with NumPy scalars (no libdevice, so plain operators stand in for the
*_rn intrinsics): it checks indexing, the bitmask/scan logic and the operation order, not FMA
contraction (tests/gpu_logic/test_numba_ptx.py does that). The public API is not used here because the
simulator's arrays do not support negative shape indices; the backend functions are called with
the normalised inputs detkernels/_dispatch.py would pass.
"""
from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run with NUMBA_ENABLE_CUDASIM=1"

from numba import config, cuda  # noqa: E402

assert config.ENABLE_CUDASIM, "numba was imported before NUMBA_ENABLE_CUDASIM was set"

from detkernels import _arrays as A  # noqa: E402
from detkernels.backends import numba as NB  # noqa: E402
from detkernels.reference import box_iou as R  # noqa: E402
from detkernels.reference import nms as RN  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: the shared input families
import families as F  # noqa: E402
from _helpers import assert_bytes_equal  # noqa: E402


def main(sections: list[str]) -> None:
    """Run the named sections ("kernels": box_iou, nms, multi_image_nms, matrix_nms; "detect";
    "diou": diou_nms; "soft": soft_nms, multi_image_soft_nms)."""
    # The simulated device raises no floating-point exceptions (NumPy's per-thread error state
    # cannot be set for the simulator's threads; warning filters are process-wide).
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    t0 = time.time()
    checks = 0
    if "kernels" in sections:
        checks += kernel_checks(np.random.default_rng(20261123))
    if "detect" in sections:
        checks += detect_checks(np.random.default_rng(20261207))
    if "diou" in sections:
        checks += diou_nms_checks(np.random.default_rng(20261208))
    if "soft" in sections:
        checks += soft_nms_checks(np.random.default_rng(20261209))
    print(f"cudasim: {checks} checks passed in {time.time() - t0:.1f} s")


def kernel_checks(rng) -> int:
    checks = 0
    for dtype in ("float32", "float64"):
        for family in F.FAMILIES:
            b1 = F.make(family, rng, 6, dtype)[0][None]  # [1, 6, 4]
            b2 = F.make(family, rng, 5, dtype)[0][None]  # [1, 5, 4]
            for kind in R.KINDS:
                out = NB.box_iou(cuda.to_device(b1), cuda.to_device(b2), kind, "xyxy", 1e-7)
                assert_bytes_equal(out.copy_to_host(), R._matrix(b1, b2, kind), f"{kind} {family} {dtype}")
                checks += 1
            b, s = F.make(family, rng, 24, dtype)
            c = rng.integers(0, 3, 24)
            for thr in (0.5,):
                keep = NB.nms(cuda.to_device(b), cuda.to_device(s), None, thr)
                assert_bytes_equal(keep.copy_to_host(), RN.nms(b, s, thr), f"nms {family} {dtype} {thr}")
                keep = NB.nms(cuda.to_device(b), cuda.to_device(s), cuda.to_device(c), thr)
                assert_bytes_equal(keep.copy_to_host(), RN.batched_nms(b, s, c, thr),
                                   f"batched_nms {family} {dtype} {thr}")
                checks += 2
        # Formats and a batch of 2.
        b1 = np.stack([F.make("uniform", rng, 5, dtype)[0] for _ in range(2)])
        b2 = np.stack([F.make("degenerate", rng, 4, dtype)[0] for _ in range(2)])
        for fmt in R.FORMATS:
            out = NB.box_iou(cuda.to_device(b1), cuda.to_device(b2), "iou", fmt, 1e-7)
            assert_bytes_equal(out.copy_to_host(), R.box_iou(b1, b2, fmt), f"{fmt} {dtype}")
            checks += 1
        if dtype == "float64":
            continue
        # More than 64 * SCAN_THREADS boxes: several mask words per row, the scan's strided loop.
        b, s = F.make("clustered", rng, 150, dtype)
        keep = NB.nms(cuda.to_device(b), cuda.to_device(s), None, 0.5)
        assert_bytes_equal(keep.copy_to_host(), RN.nms(b, s, 0.5), f"nms n=150 {dtype}")
        checks += 1
    # Array glue for Numba device arrays (detkernels._arrays): strided -> contiguous, casts and
    # broadcasts go through the host and come back as Numba arrays.
    host = np.arange(24, dtype=np.float64).reshape(3, 8)
    v = cuda.to_device(host)[:, ::2]
    assert A.kind(v) == "numba" and A.device(v) == "cuda:0" and not v.is_c_contiguous()
    c = A.ascontig(v)
    assert A.kind(c) == "numba" and c.is_c_contiguous()
    assert_bytes_equal(c.copy_to_host(), host[:, ::2], "ascontig")
    assert_bytes_equal(A.astype(c, "float32").copy_to_host(), host[:, ::2].astype(np.float32), "astype")
    bc = A.broadcast_to(cuda.to_device(np.ascontiguousarray(host[None, :2, :4])), (3, 2, 4))
    assert_bytes_equal(bc.copy_to_host(), np.broadcast_to(host[None, :2, :4], (3, 2, 4)), "broadcast")
    checks += 4
    checks += multi_image_checks(rng)
    checks += matrix_nms_checks(rng)
    return checks


def _multi_cases(rng):
    """(what, boxes [B, N, 4], scores [B, N] or [B, N, C], classes [B, N] or None, K, sthr):
    small, over the NMS families (tests/_nms_families.py)."""
    import _nms_families as NF

    for family in sorted(NF.FAMILIES):
        for C, with_idxs in ((0, False), (0, True), (3, False)):
            boxes, scores, classes = NF.batch(family, int(rng.integers(1 << 30)), 2, 9, C)
            sthr = 0.3 if family in ("uniform", "nonfinite") else None
            yield (f"{family} C={C} idxs={with_idxs}", boxes, scores, classes if with_idxs else None,
                   5 if family == "ties" else 40, sthr)
    # Empty images / no candidates; one image with 70 boxes (two column blocks).
    b = np.zeros((2, 0, 4))
    yield "N=0", b, np.zeros((2, 0)), None, 3, None
    boxes, scores, _ = NF.batch("clusters", 7, 1, 70, 0)
    yield "N=70", boxes, scores, None, 80, None


def _ref_multi(b, s, c, K, sthr):
    i, k, n = RN.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
    return i, k, n


def multi_image_checks(rng) -> int:
    """multi_image_nms through the numba.cuda kernels: Numba device arrays (host plan) and the
    torch plan (_multi_torch_cuda, torch ops on CPU tensors standing in for CUDA ones, the
    simulator's kernels for the suppression), with small mask tiles so rows span several."""
    import torch

    from detkernels.backends.numba import cuda as NC

    checks = 0
    saved = NC.MASK_BYTES, NB._as_numba, NB._stream
    NC.MASK_BYTES = 64 * 8 * 2  # 64-row tiles of 2 words: tiling even at these sizes
    K = NC

    class HostFlags:
        """The simulator's kernels, flags handed back as a host array for CPU tensors."""

        @staticmethod
        def nms_keep_segments(*a):
            return K.nms_keep_segments(*a).copy_to_host()

    try:
        for dtype in ("float32", "float64"):
            for what, b, s, c, k, sthr in _multi_cases(rng):
                b, s = b.astype(dtype), s.astype(dtype)
                want = _ref_multi(b, s, c, k, sthr)
                got = NB.multi_image_nms(cuda.to_device(b), cuda.to_device(s),
                                         None if c is None else cuda.to_device(c), 0.5, k, sthr)
                for g, w, name in zip(got, want, ("indices", "classes", "counts")):
                    assert (g is None) == (w is None), f"numba arrays {what} {name}"
                    if w is not None:
                        assert_bytes_equal(g.copy_to_host(), w, f"numba arrays {what} {dtype} {name}")
                NB._as_numba = lambda cuda_, x: x if x is None else cuda.to_device(x.numpy())
                NB._stream = lambda cuda_, x: cuda.stream()
                try:
                    got = NB._multi_torch_cuda(cuda, HostFlags, torch.from_numpy(b), torch.from_numpy(s),
                                               None if c is None else torch.from_numpy(c), 0.5, k, sthr)
                finally:
                    NB._as_numba, NB._stream = saved[1], saved[2]
                for g, w, name in zip(got, want, ("indices", "classes", "counts")):
                    assert (g is None) == (w is None), f"torch plan {what} {name}"
                    if w is not None:
                        assert_bytes_equal(g.numpy(), w, f"torch plan {what} {dtype} {name}")
                checks += 2
    finally:
        NC.MASK_BYTES = saved[0]
    return checks


def matrix_nms_checks(rng) -> int:
    """matrix_nms (issue 13) through the numba.cuda column kernels, Numba device arrays in and
    out, against reference/matrix_nms.py on the NMS families (per class and one class)."""
    import _nms_families as NF
    from detkernels.reference import matrix_nms as RM

    checks = 0
    params = (("gaussian", 2.0, None, None, None), ("linear", 0.5, 0.05, 5, 12))
    for dtype in ("float32", "float64"):
        for family in sorted(NF.FAMILIES):
            boxes, scores, classes = NF.FAMILIES[family](rng, 16)
            b, s = boxes.astype(dtype), scores.astype(dtype)
            for labels in (classes, np.zeros_like(classes)):
                for p in params:
                    want = RM.matrix_nms(b, s, labels, *p)
                    got = NB.matrix_nms(cuda.to_device(b), cuda.to_device(s), cuda.to_device(labels), *p)
                    what = f"matrix_nms {family} {dtype} {p}"
                    assert A.kind(got[0]) == "numba" and A.kind(got[1]) == "numba", what
                    assert_bytes_equal(got[0].copy_to_host(), want[0], what + " indices")
                    assert_bytes_equal(got[1].copy_to_host(), want[1], what + " scores")
                    checks += 1
    return checks


F32, F64 = "float32", "float64"


def _detect_cases(rng):
    """(what, boxes [B, A, 4], scores [B, A] or [B, A, C], options, max_det, dtypes): detect's
    families (docs/SPEC.md §3, tests/_nms_families.py) at simulator sizes. Every option set runs
    on ties (tied scores, top-k ties by candidate index), dtypes alternating; the sets where NaN
    ranks (no threshold) or fails (threshold) on nonfinite (NaN / +-inf / +-0 scores, NaN boxes),
    the other dtype first; one option set on each other family. (The scan's per-row barriers make
    each simulated call ~0.3 s: one dtype per case.)"""
    import _nms_families as NF

    # (name, C, options, max_det); objectness=True / idxs=True stand for the family's arrays.
    # max_det 12 >= every kept count (9 anchors; multi-label: top-k 12).
    options = [
        ("threshold", 3, dict(score_threshold=0.3), 12),
        ("top-k, max_det < kept", 3, dict(pre_nms_top_k=5), 3),
        ("multi-label", 3, dict(multi_label=True, score_threshold=0.2, pre_nms_top_k=12), 12),
        ("agnostic, objectness", 3, dict(class_agnostic=True, objectness=True, fmt="cxcywh"), 12),
        ("multi-label agnostic", 3, dict(multi_label=True, class_agnostic=True, fmt="xywh"), 6),
        ("idxs, objectness", 0, dict(idxs=True, score_threshold=0.1, objectness=True), 12),
        ("[B, A], k >= candidates", 0, dict(pre_nms_top_k=1000), 12),
        ("all below threshold", 3, dict(score_threshold=2.0, objectness=True), 5),
        ("idxs agnostic, k >= candidates", 0, dict(idxs=True, class_agnostic=True, pre_nms_top_k=9), 12),
    ]
    others = [f for f in sorted(NF.FAMILIES) if f not in ("ties", "nonfinite")]
    for fi, family in enumerate(["ties", "nonfinite"] + others):
        picked = options if fi == 0 else [options[i] for i in ((0, 1, 4, 6) if fi == 1 else (fi,))]
        for oi, (name, C, kw, K) in enumerate(picked):
            dtypes = (F32, F64)[(fi + oi) % 2],
            seed = int(rng.integers(1 << 30))
            boxes, scores, classes = NF.batch(family, seed, 2, 9, C)
            obj = np.random.default_rng(seed).uniform(0.5, 1.0, (2, 9))
            kw = dict(kw)
            if kw.get("objectness"):
                kw["objectness"] = obj
            if kw.get("idxs"):
                kw["idxs"] = classes
            yield f"{family} {name}", boxes, scores, kw, K, dtypes
    # An image with no candidate above the threshold next to one with some (an empty scan range).
    boxes, scores, _ = NF.batch("clusters", 3, 2, 9, 3)
    scores[0] *= 0.01
    yield "empty image", boxes, scores, dict(score_threshold=0.3), 10, (F64,)
    # 70 anchors: two 64-wide column blocks in the bitmask.
    boxes, scores, _ = NF.batch("clusters", 4, 1, 70, 2)
    yield "A=70", boxes, scores, dict(pre_nms_top_k=66), 80, (F32,)
    # No candidates at all, and no output slots: padding only.
    both = (F32, F64)
    yield "A=0", np.zeros((2, 0, 4)), np.zeros((2, 0, 3)), {}, 4, both
    yield "C=0", boxes, scores[..., :0], {}, 4, both
    yield "max_det=0", boxes, scores, dict(score_threshold=0.3), 0, both
    yield "B=0", np.zeros((0, 5, 4)), np.zeros((0, 5)), {}, 4, both


def detect_checks(rng) -> int:
    """detect (issue 12) through the numba.cuda kernels (the per-anchor pass, multi_image_nms's
    suppression, the padded outputs), Numba device arrays in and out, against
    reference/detect.py, float32 and float64."""
    from detkernels.reference import detect as RD

    checks = 0
    names = ("boxes", "scores", "classes", "indices", "counts")
    for what, boxes, scores, kw, K, dtypes in _detect_cases(rng):
        for dtype in dtypes:
            b, s = boxes.astype(dtype), scores.astype(dtype)
            o = kw.get("objectness")
            o = None if o is None else o.astype(dtype)
            opts = dict(kw, **({} if o is None else {"objectness": o}))
            want = RD.detect(b, s, 0.5, K, **opts)
            idxs = kw.get("idxs")
            got = NB.detect(cuda.to_device(b), cuda.to_device(s), None if o is None else cuda.to_device(o),
                            None if idxs is None else cuda.to_device(idxs), 0.5, K,
                            kw.get("score_threshold"), kw.get("pre_nms_top_k"), kw.get("fmt", "xyxy"),
                            kw.get("multi_label", False), kw.get("class_agnostic", False))
            for g, w, name in zip(got, want, names):
                assert A.kind(g) == "numba", f"detect {what} {dtype} {name}: not a Numba array"
                assert_bytes_equal(g.copy_to_host(), w, f"detect {what} {dtype} {name}")
            checks += 1
    return checks


def diou_nms_checks(rng) -> int:
    """diou_nms (issue 13) on numba.cuda -- nms's bitmask path with DIoU-NMS's predicate --
    against reference/diou_nms.py, Numba device arrays (the host plan); per class and one class,
    beta 1 (R itself) and 0.6 (dk_pow). (torch's plan, _nms_torch_cuda, differs from nms's only
    by passing beta on; importing torch here would cost ~5 s of the simulator budget.)"""
    import _nms_families as NF

    from detkernels.reference import diou_nms as RD

    checks = differ = 0
    # (family, dtype, per class, beta, n): every family once, both dtypes, both class forms,
    # both betas; 70 boxes (two column blocks).
    cases = [("at_threshold", F32, False, 1.0, 16), ("clusters", F64, True, 0.6, 16),
             ("degenerate", F32, True, 1.0, 16), ("many_classes", F64, False, 1.0, 16),
             ("nonfinite", F32, True, 0.6, 16), ("ties", F64, False, 0.6, 16),
             ("uniform", F32, False, 0.6, 16), ("clusters", F32, False, 0.6, 70)]
    for family, dtype, per_class, beta, n in cases:
        boxes, scores, classes = NF.FAMILIES[family](rng, n)
        b, s = boxes.astype(dtype), scores.astype(dtype)
        c = classes if per_class else None
        want = RD.diou_nms(b, s, 0.5, beta) if c is None else RD.batched_diou_nms(b, s, c, 0.5, beta)
        iou = RN.nms(b, s, 0.5) if c is None else RN.batched_nms(b, s, c, 0.5)
        differ += not np.array_equal(want, iou)
        what = f"diou_nms {family} {dtype} n={n} classes={per_class} beta={beta}"
        got = NB.diou_nms(cuda.to_device(b), cuda.to_device(s), None if c is None else cuda.to_device(c),
                          0.5, beta)
        assert A.kind(got) == "numba", what
        assert_bytes_equal(got.copy_to_host(), want, what)
        checks += 1
    # The cases tell DIoU-NMS from greedy IoU NMS (an IoU predicate in its place would fail).
    assert differ >= 3, f"only {differ} diou_nms cases differ from nms"
    return checks


def soft_nms_checks(rng) -> int:
    """soft_nms and multi_image_soft_nms (issue 13) on numba.cuda -- a block per (image, class)
    segment -- against reference/soft_nms.py, Numba device arrays: every family once, both
    dtypes, linear (the threshold compare) and gaussian (dk_exp) decays, per class and one class,
    max_output caps and score thresholds that kill boxes."""
    import _nms_families as NF

    from detkernels.reference import soft_nms as RS

    checks = 0
    # (family, dtype, per class, method, sigma, iou_threshold, score_threshold, max_output)
    cases = [("at_threshold", F32, False, "linear", 0.5, 0.5, 0.001, None),
             ("clusters", F64, True, "gaussian", 0.5, 0.3, 0.1, None),
             ("degenerate", F32, True, "linear", 0.5, 0.3, 0.001, 5),
             ("many_classes", F64, False, "gaussian", 0.2, 0.3, 0.001, None),
             ("nonfinite", F32, False, "gaussian", 0.5, 0.3, 0.0, None),
             ("ties", F64, True, "linear", 0.5, 0.3, 0.3, 7),
             ("uniform", F32, False, "linear", 0.5, 0.3, 0.6, None)]
    for family, dtype, per_class, method, sigma, thr, sthr, K in cases:
        boxes, scores, classes = NF.FAMILIES[family](rng, 12)
        b, s = boxes.astype(dtype), scores.astype(dtype)
        what = f"soft_nms {family} {dtype} classes={per_class} {method} sthr={sthr} K={K}"
        if per_class:
            want = RS.batched_soft_nms(b, s, classes, thr, sigma, method, sthr, K)
        else:
            want = RS.soft_nms(b, s, thr, sigma, method, sthr, K)
        got = NB.soft_nms(cuda.to_device(b), cuda.to_device(s),
                          cuda.to_device(classes) if per_class else None, thr, sigma, method, sthr, K)
        for g, w, name in zip(got, want, ("indices", "scores")):
            assert A.kind(g) == "numba", what
            assert_bytes_equal(g.copy_to_host(), w, f"{what} {name}")
        checks += 1
    # A batch: two images (one with nothing above the threshold), per class and one class.
    for dtype, per_class, method in ((F32, True, "gaussian"), (F64, False, "linear")):
        boxes, scores, classes = NF.batch("clusters", int(rng.integers(1 << 30)), 2, 10)
        scores[1] *= 1e-4
        b, s = boxes.astype(dtype), scores.astype(dtype)
        c = classes if per_class else None
        want = RS.multi_image_soft_nms(b, s, 6, 0.3, 0.5, method, 0.001, idxs=c)
        got = NB.multi_image_soft_nms(cuda.to_device(b), cuda.to_device(s),
                                      None if c is None else cuda.to_device(c), 6, 0.3, 0.5, method, 0.001)
        for g, w, name in zip(got, want, ("indices", "scores", "counts")):
            assert_bytes_equal(g.copy_to_host(), w, f"multi_image_soft_nms {dtype} {per_class} {name}")
        checks += 1
    return checks


if __name__ == "__main__":
    main(sys.argv[1:] or ["kernels"])
