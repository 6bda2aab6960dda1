"""The CuPy backend without a GPU: its NVRTC source (the shared csrc headers and kernels) compiles
with the backend's own options, every kernel it launches exists, and the PTX has no FMA, no
approximate/flush-to-zero op and no float64 arithmetic in the float32 kernels. Running the kernels
needs a GPU (tests/backends/test_backends.py). Uses NVRTC through cuda-bindings (cuda.bindings.nvrtc) and
the nvidia-cuda-nvrtc wheel; skips with the reason where they are missing."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from detkernels.backends import cupy as C
from detkernels.reference.nms import score_order

ENTRY = re.compile(r"\.entry\s+(\w+)\s*\(")


def _nvrtc():
    try:
        from cuda.bindings import nvrtc

        nvrtc.nvrtcVersion()
    except Exception as e:
        pytest.skip(f"NVRTC is not usable here (pip install cuda-bindings nvidia-cuda-nvrtc): {e}")
    return nvrtc


def _compile(options: tuple) -> tuple[dict, str]:
    """({name expression: PTX of its entry}, log) for the backend's source."""
    nvrtc = _nvrtc()
    err, prog = nvrtc.nvrtcCreateProgram(C.source().encode(), b"kernels.cu", 0, [], [])
    for n in C.name_expressions():
        nvrtc.nvrtcAddNameExpression(prog, n.encode())
    opts = [o.encode() for o in (*options, "--gpu-architecture=compute_90")]
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
    _, size = nvrtc.nvrtcGetPTXSize(prog)
    ptx = b" " * size
    nvrtc.nvrtcGetPTX(prog, ptx)
    ptx = ptx.decode(errors="replace")
    starts = [(m.group(1), m.start()) for m in ENTRY.finditer(ptx)]
    bodies = {name: ptx[s:(starts[k + 1][1] if k + 1 < len(starts) else len(ptx))]
              for k, (name, s) in enumerate(starts)}
    out = {}
    for n in C.name_expressions():
        _, lowered = nvrtc.nvrtcGetLoweredName(prog, n.encode())
        lowered = lowered.decode() if isinstance(lowered, bytes) else lowered
        assert lowered in bodies, f"{n} ({lowered}) has no PTX entry"
        out[n] = bodies[lowered]
    return out, log.decode(errors="replace")


# NMS's score filter is a double compare by definition ((double)score > score_threshold,
# nms_bitmask.h nms_cand_valid, as torchvision's detection heads): the only float64 instructions a
# float32 kernel may hold, and only the kernels applying that filter: the NMS gather and detect's
# score pass (issue 12; the same nms_cand_valid).
SCORE_FILTER_F64 = {"ld.param.f64", "cvt.f64.f32", "setp.gt.f64"}


# Soft-NMS (issue 13) compares in float64 by definition as well ((double)iou > iou_threshold,
# (double)score < score_threshold: reference/soft_nms.py) and rounds sigma from double to T once.
SOFT_NMS_F64 = {"ld.param.f64", "cvt.f64.f32", "cvt.rn.f32.f64", "setp.gt.f64", "setp.lt.f64",
                "setp.geu.f64"}
# Matrix NMS: (double)decayed >= score_threshold, sigma rounded to T once.
MATRIX_NMS_F64 = {"ld.param.f64", "cvt.f64.f32", "cvt.rn.f32.f64", "setp.ge.f64"}


def _f64_ops(body: str) -> set[str]:
    """The opcodes of a PTX body's float64 instructions (declarations, .reg/.param, excluded)."""
    ops = set()
    for line in body.splitlines():
        words = [w for w in line.split() if not w.startswith("@")]  # drop predicate guards
        if words and not words[0].startswith(".") and re.search(r"\.f64\b", line):
            ops.add(words[0])
    return ops


def test_nvrtc_source_is_exact():
    entries, _ = _compile(C.nvrtc_options())
    assert len(entries) == len(C.name_expressions())
    for name, body in entries.items():
        assert not re.search(r"\bfma\.", body), f"{name}: fused multiply-add"
        assert not re.search(r"\.(approx|full)\b|\.ftz\b", body), f"{name}: approximate/FTZ op"
        if "<float" in name:
            allowed = (SCORE_FILTER_F64 if name.startswith(("detkernels::nms_gather_kernel<",
                                                            "detkernels::detect_score_kernel<"))
                       else SOFT_NMS_F64 if name.startswith("detkernels::soft_nms_kernel<")
                       else MATRIX_NMS_F64 if name.startswith("detkernels::matrix_nms_column_kernel<")
                       else set())
            assert _f64_ops(body) <= allowed, f"{name}: float64 arithmetic in a float32 kernel"
    assert _f64_ops(entries["detkernels::nms_gather_kernel<float>"]) == SCORE_FILTER_F64
    assert _f64_ops(entries["detkernels::detect_score_kernel<float>"]) == SCORE_FILTER_F64


def test_lint_sees_contraction():
    """Control: with NVRTC's default --fmad=true the same source gets FMAs, so the lint can fail."""
    opts = tuple(o for o in C.nvrtc_options() if not o.startswith("--fmad"))
    entries, _ = _compile(opts)
    assert re.search(r"\bfma\.", entries["detkernels::box_iou_kernel<float, 0, 0>"])


def test_one_source_of_truth():
    """The CuPy source includes the kernel header the nvcc build compiles."""
    inc = C.include_dir()
    cu = Path(__file__).resolve().parents[2] / "csrc/ops/box_iou/box_iou_cuda.cu"
    assert '#include "ops/box_iou/box_iou_kernel.cuh"' in C.source()
    assert '#include "ops/box_iou/box_iou_kernel.cuh"' in cu.read_text()
    for h in C.HEADERS:
        assert (inc / h).is_file()


@pytest.mark.parametrize("seed", range(5))
def test_device_score_order_logic(seed):
    """The CuPy backend's sort recipe, run with NumPy standing in for CuPy (both sorts are stable),
    equals the reference order: NaN first, ties by index, -0.0 == +0.0, +-inf."""
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        s = rng.choice(np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 0.25, 1.0], dtype), 200)
        s[::7] = rng.random(len(s[::7]))
        np.testing.assert_array_equal(C._score_order(np, s), score_order(s))


# ---- RoI ops -----------------------------------------------------------------------------------

def test_roi_kernels_are_the_native_ones():
    """The CuPy source includes the RoI kernel headers the nvcc build compiles, and every RoI
    kernel the backend launches is among the compiled name expressions."""
    root = Path(__file__).resolve().parents[2]
    for cu, cuh in (("csrc/ops/roi_align/roi_align_cuda.cu", "ops/roi_align/roi_align_kernels.cuh"),
                    ("csrc/ops/roi_pool/roi_pool_cuda.cu", "ops/roi_pool/roi_pool_kernels.cuh")):
        assert f'#include "{cuh}"' in C.source()
        assert f'#include "{cuh}"' in (root / cu).read_text()
        assert cuh in C.HEADERS
    names = set(C.name_expressions())
    assert set(C.roi_name_expressions()) <= names
    assert len(C.roi_name_expressions()) == 22


PTX_PARAM = re.compile(r"\.param\s+\.(\w+)\s")
ARG_TYPES = {np.uint64: "u64", np.int64: "u64", np.int32: "u32", np.float32: "f32", np.float64: "f64"}


class _Recorder:
    """Stands in for cupy (NumPy arrays) and for the compiled module (records every launch);
    the count kernel pretends every RoI owns 3 slots so the backward runs all its steps."""

    def __init__(self):
        self.calls = []
        self.zeros, self.empty, self.cumsum, self.int64 = np.zeros, np.empty, np.cumsum, np.int64

    @staticmethod
    def argsort(a):
        return np.argsort(a, kind="stable")

    def get_function(self, name):
        assert name in C.name_expressions(), f"{name} is launched but not compiled"

        def launch(grid, block, args):
            self.calls.append((name, grid, block, args))
            if "roi_scatter_count" in name:
                args[11][1:] = 3

        return launch


class _NoStream:
    def __init__(self, cp, x):
        pass

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def test_roi_launch_arguments_match_the_kernels(monkeypatch):
    """Without a GPU: every RoI launch of the CuPy backend passes exactly the argument count and
    types (pointer/int64 -> u64, int -> u32, T -> f32/f64) of the NVRTC-compiled entry."""
    rec = _Recorder()
    monkeypatch.setattr(C, "_cupy", lambda: rec)
    monkeypatch.setattr(C, "_module", lambda cp: rec)
    monkeypatch.setattr(C, "_On", _NoStream)
    monkeypatch.setattr(C, "_view", lambda cp, x: x)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = rng.standard_normal((2, 8, 9, 10)).astype(dt)
        xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        rois = np.array([[0, 1, 1, 6, 7], [1, 0, 2, 8, 8]], dt)
        for ps in (False, True):
            out = C.roi_align(xl, rois, 0.5, 2, 2, 2, True, ps)
            C.roi_align_backward(np.ones(out.shape, dt), rois, 0.5, 2, 2, 2, 8, 9, 10, 2, True, ps)
            out, idx = C.roi_pool(x, rois, 0.5, 2, 2, ps)
            idx[...] = 0
            C.roi_pool_backward(np.ones(out.shape, dt), rois, idx, 0.5, 2, 2, 2, 8, 9, 10, ps)
    launched = {name for name, *_ in rec.calls}
    assert launched == set(C.roi_name_expressions()), set(C.roi_name_expressions()) - launched
    entries, _ = _compile(C.nvrtc_options())
    for name, grid, block, args in rec.calls:
        params = PTX_PARAM.findall(entries[name].split(")")[0])
        got = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
        assert got == params, f"{name}: launched with {got}, kernel takes {params}"
        assert block == (C.ROI_THREADS,) and len(grid) == 1 and 0 < grid[0] <= 65535 * 16


def _segments_greedy(boxes2d, rows, seg, valid, thr):
    """Keep flags over sorted positions: greedy NMS within each segment (positions sharing
    seg), visiting positions in plan order -- the reference's nms with descending ranks as
    scores (so it visits them as given), IoU in the boxes' dtype."""
    from detkernels.reference.nms import nms

    keep = np.zeros(rows.shape[0], np.uint8)
    for start in np.unique(seg):
        p = np.flatnonzero(seg == start)
        assert (np.diff(p) == 1).all() and p[0] == start, "a segment is not contiguous"
        bx = boxes2d[rows[p]]
        keep[p[nms(bx, (-np.arange(p.size)).astype(bx.dtype), thr)]] = 1
    return keep


@pytest.mark.parametrize("ncls,with_idxs,sthr", [(0, False, None), (0, True, None), (3, False, None),
                                              (0, True, 0.3), (3, False, 0.3)])
def test_multi_image_plan_logic(ncls, with_idxs, sthr):
    """multi_image_nms's device plan and outputs (cupy/__init__.py _multi_plan, _multi_outputs), run with
    NumPy standing in for CuPy and a greedy over the plan's segments standing in for the
    NVRTC kernels, equal the reference on every NMS family, both dtypes, K below/above N."""
    import _nms_families as NF

    from detkernels.reference import nms as RN

    for family in sorted(NF.FAMILIES):
        boxes, scores, classes = NF.batch(family, 11, 3, 40, ncls)
        B, N = boxes.shape[:2]
        Cc = max(ncls, 1)
        for dtype in (np.float32, np.float64):
            b, s = boxes.astype(dtype), scores.astype(dtype)
            c = classes if with_idxs else None
            cls = np.broadcast_to(np.tile(np.arange(ncls), N), (B, N * ncls)) if ncls > 1 else c
            o1, o, valid, seg, rows = C._multi_plan(np, s.reshape(B, N * Cc), cls, N, Cc, sthr)
            keep = _segments_greedy(b.reshape(B * N, 4), rows, seg, valid, 0.5)
            for K in (0, 9, 200):
                got = C._multi_outputs(np, o1, o, keep, valid, K, Cc, ncls > 0)
                want = RN.multi_image_nms(b, s, 0.5, K, idxs=c, score_threshold=sthr)
                for g, w, name in zip(got, want, ("indices", "classes", "counts")):
                    assert (g is None) == (w is None), name
                    if w is not None:
                        np.testing.assert_array_equal(g, w, err_msg=f"{family} {dtype} K={K} {name}")
                        assert g.dtype == w.dtype


def test_mask_tile_rows_matches_header():
    """The backend's tile size is nms_bitmask.h's nms_tile_rows (a multiple of 64, capped), taken
    from detkernels._constants (checked against the C++ in tests/support/test_constants.py)."""
    from detkernels import _constants

    assert C.nms_tile_rows is _constants.nms_tile_rows
    assert C.nms_tile_rows(100000, 17, 1 << 20) == 120 * 64  # 2^20 B / (17 words * 8 B * 64 rows)
    assert C.nms_tile_rows(1000, 17, 1 << 20) == 1024  # all 16 row blocks
    assert C.nms_tile_rows(100, 3, 1) == 64
    assert C.nms_tile_rows(100, 3, 1 << 30) == 128


def test_nms_kernels_are_the_native_ones():
    """The CuPy source defines no kernel of its own: the NMS kernels are nms_kernels.cuh's, which
    nms_cuda.cu launches, and no other copy of them is left."""
    root = Path(__file__).resolve().parents[2]
    cuh = "ops/nms/nms_kernels.cuh"
    assert f'#include "{cuh}"' in C.source()
    assert f'#include "{cuh}"' in (root / "csrc/ops/nms/nms_cuda.cu").read_text()
    assert cuh in C.HEADERS
    assert "__global__" not in (root / "detkernels/backends/cupy/kernels.cu").read_text()
    assert "__global__" not in (root / "csrc/ops/nms/nms_cuda.cu").read_text()
    assert set(C.nms_name_expressions()) <= set(C.name_expressions())


class _NumpyCupy(_Recorder):
    """NumPy standing in for the whole of cupy (stable argsort, as CuPy's), and a module whose NMS
    kernels are emulated: the gather maps its candidate ids to box rows as nms_cand_box does, the
    scan keeps greedily within each of the plan's segments (_segments_greedy). The mask kernel
    only records its launch."""

    class cuda:  # noqa: N801 -- cupy.cuda.memory.OutOfMemoryError
        class memory:  # noqa: N801
            OutOfMemoryError = MemoryError

    def __init__(self, boxes, thr):
        super().__init__()
        self.boxes2d, self.thr = boxes.reshape(-1, 4), thr

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")

    def get_function(self, name):
        record = super().get_function(name)

        def launch(grid, block, args):
            record(grid, block, args)
            if "nms_gather_kernel" in name:
                cand, M, N, Cc = args[0], int(args[10]), int(args[11]), int(args[12])
                self.rows = (cand // M) * N + (cand % M) // Cc
            elif "nms_scan_kernel" in name:
                seg, valid, keep = args[8], args[9], args[10]
                keep[:] = _segments_greedy(self.boxes2d, self.rows, seg, valid, self.thr)

        return launch


def _numpy_cupy(monkeypatch, boxes, thr):
    rec = _NumpyCupy(boxes, thr)
    monkeypatch.setattr(C, "_cupy", lambda: rec)
    monkeypatch.setattr(C, "_module", lambda cp: rec)
    monkeypatch.setattr(C, "_On", _NoStream)
    monkeypatch.setattr(C, "_view", lambda cp, x: x)
    monkeypatch.setattr(C, "_as_kind", lambda r, like: r)
    return rec


@pytest.mark.parametrize("with_idxs,sthr,ncls", [(False, None, 0), (True, None, 0), (True, 0.3, 0),
                                                  (False, 0.3, 3)])
def test_nms_launches_match_the_kernels(monkeypatch, with_idxs, sthr, ncls):
    """Without a GPU: nms (as one image) and multi_image_nms launch nms_kernels.cuh's entries with
    exactly their PTX argument types, tiles included (a tiny DETKERNELS_NMS_MASK_BYTES), and -- the
    kernels emulated over the launch arguments -- equal the reference."""
    import _nms_families as NF

    from detkernels.reference import nms as RN

    entries, _ = _compile(C.nvrtc_options())
    monkeypatch.setattr(C, "NMS_MASK_BYTES", 1)  # one row block per tile: several tiles
    for family in ("uniform", "ties", "at_threshold"):
        boxes, scores, classes = NF.batch(family, 5, 2, 150, ncls)
        for dtype in (np.float32, np.float64):
            b, sc = boxes.astype(dtype), scores.astype(dtype)
            c = classes if with_idxs else None
            rec = _numpy_cupy(monkeypatch, b, 0.5)
            got = C.multi_image_nms(b, sc, c, 0.5, 40, sthr)
            want = RN.multi_image_nms(b, sc, 0.5, 40, idxs=c, score_threshold=sthr)
            for g, w in zip(got, want):
                assert (g is None) == (w is None)
                if w is not None:
                    np.testing.assert_array_equal(g, w, err_msg=f"{family} {dtype}")
            if ncls == 0 and sthr is None:  # nms: one image, through the same path
                rec = _numpy_cupy(monkeypatch, b[0], 0.5)
                got = C.nms(b[0], sc[0], None if c is None else c[0], 0.5)
                want = (RN.nms(b[0], sc[0], 0.5) if c is None
                        else RN.batched_nms(b[0], sc[0], c[0], 0.5))
                np.testing.assert_array_equal(got, want, err_msg=f"nms {family} {dtype}")
            launched = [name for name, *_ in rec.calls]
            assert set(launched) == {n for n in C.nms_name_expressions()
                                     if "<" not in n or f"<{C.C_TYPES[np.dtype(dtype).name]}>" in n}
            assert launched.count("detkernels::nms_scan_kernel") > 1, "one tile only"
            for name, grid, block, args in rec.calls:
                params = PTX_PARAM.findall(entries[name].split(")")[0])
                got_t = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
                assert got_t == params, f"{name}: launched with {got_t}, kernel takes {params}"
                assert all(0 < g <= 65535 for g in grid)
                if "scan" in name:
                    assert block == (C.NMS_SCAN_THREADS,)


# ---- box_iou on integer boxes -----------------------------------------------------------------

def test_box_iou_launch_arguments_match_the_kernels(monkeypatch):
    """Every box_iou launch (float and integer boxes, every fmt/kind the backend accepts) names a
    compiled kernel and passes the argument types of its entry (integer boxes: float32 eps/out);
    the integer kernels convert with round-to-nearest (cvt.rn.f32.s32/s64) and never touch f64."""
    rec = _Recorder()
    monkeypatch.setattr(C, "_cupy", lambda: rec)
    monkeypatch.setattr(C, "_module", lambda cp: rec)
    monkeypatch.setattr(C, "_On", _NoStream)
    b1, b2 = np.zeros((1, 3, 4)), np.zeros((1, 5, 4))
    for dt in C.IOU_C_TYPES:
        for fmt in C.FMT_CODES:
            for kind in C.KIND_CODES:
                if (kind == "iou" or fmt == "xyxy") and (dt.startswith("float") or kind in ("iou", "giou")):
                    out = C.box_iou(b1.astype(dt), b2.astype(dt), kind, fmt, 1e-7)
                    assert out.dtype == (np.float64 if dt == "float64" else np.float32)
    entries, _ = _compile(C.nvrtc_options())
    assert {name for name, *_ in rec.calls} == {n for n in entries if "box_iou_kernel" in n}
    for name, grid, block, args in rec.calls:
        params = PTX_PARAM.findall(entries[name].split(")")[0])
        got = [ARG_TYPES[type(a)] for a in args]
        assert got == params, f"{name}: launched with {got}, kernel takes {params}"
    for t, cvt in (("int", "cvt.rn.f32.s32"), ("long", "cvt.rn.f32.s64")):
        for fmt, kind in ((0, 0), (1, 0), (2, 0), (0, 1)):
            body = entries[f"detkernels::box_iou_kernel<{t}, {fmt}, {kind}>"]
            assert cvt in body and "div.rn.f32" in body
            assert not re.search(r"\.f64\b", body)


# ---- Soft-NMS (issue 13) ------------------------------------------------------------------------

def test_soft_nms_kernel_is_the_native_one():
    root = Path(__file__).resolve().parents[2]
    cuh = "ops/nms/soft_nms_kernels.cuh"
    assert f'#include "{cuh}"' in C.source()
    assert f'#include "{cuh}"' in (root / "csrc/ops/nms/soft_nms_cuda.cu").read_text()
    assert cuh in C.HEADERS and "ops/nms/soft_nms.h" in C.HEADERS
    assert set(C.soft_nms_name_expressions()) <= set(C.name_expressions())


def test_soft_nms_launch_arguments_match_the_kernel(monkeypatch):
    """Without a GPU: the CuPy Soft-NMS launch passes exactly the argument count and types of the
    NVRTC-compiled entry, one block of SOFT_NMS_THREADS per image."""
    rec = _Recorder()
    monkeypatch.setattr(C, "_module", lambda cp: rec)
    b = np.array([[[0, 0, 2, 2], [1, 1, 3, 3]]] * 3)
    for dt in (np.float32, np.float64):
        for cls in (None, np.zeros((3, 2), np.int64)):
            C._soft_nms_multi(rec, b.astype(dt), np.ones((3, 2), dt), cls, 4, 0.3, 0.5, "gaussian", 0.001)
    assert len(rec.calls) == 4
    entries, _ = _compile(C.nvrtc_options())
    for name, grid, block, args in rec.calls:
        params = PTX_PARAM.findall(entries[name].split(")")[0])
        got = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
        assert got == params, f"{name}: launched with {got}, kernel takes {params}"
        assert grid == (3,) and block == (C.SOFT_NMS_THREADS,)


# ---- Matrix NMS (issue 13) ----------------------------------------------------------------------

def test_matrix_nms_kernels_are_the_native_ones():
    root = Path(__file__).resolve().parents[2]
    cuh = "ops/nms/matrix_nms_kernels.cuh"
    assert f'#include "{cuh}"' in C.source()
    assert f'#include "{cuh}"' in (root / "csrc/ops/nms/matrix_nms_cuda.cu").read_text()
    assert cuh in C.HEADERS and "ops/nms/matrix_nms_gpu.h" in C.HEADERS
    assert set(C.matrix_nms_name_expressions()) <= set(C.name_expressions())


@pytest.mark.parametrize("seed", range(4))
def test_matrix_nms_plan_logic(seed):
    """The CuPy plan (NumPy standing in for CuPy): rank order = score_order (first pre_top_k),
    positions by (class, rank), seg = each class's first position; the final order = the
    reference's (kept by decayed score, NaN first, ties by index, first max_output)."""
    rng = np.random.default_rng(seed)
    for dtype in (np.float32, np.float64):
        s = rng.choice(np.array([np.nan, 0.0, -0.0, 0.5, 0.25, 1.0, np.inf], dtype), 300)
        s[::5] = rng.random(len(s[::5]))
        lab = rng.choice(np.array([-(2 ** 62), -1, 0, 3, 2 ** 62]), 300)
        for pre in (None, 1, 77):
            order, pos_rank, seg = C._matrix_plan(np, s, lab, pre)
            want = score_order(s)[:pre]
            np.testing.assert_array_equal(order, want)
            np.testing.assert_array_equal(pos_rank, np.argsort(lab[want], kind="stable"))
            ls = lab[want][pos_rank]
            assert (np.diff(ls) >= 0).all() and (np.diff(pos_rank)[np.diff(ls) == 0] > 0).all()
            first = {v: int(np.flatnonzero(ls == v)[0]) for v in np.unique(ls)}
            np.testing.assert_array_equal(seg, [first[v] for v in ls])
        kept = rng.random(300) < 0.6
        for k in (None, 0, 5):
            idx, val = C._matrix_final(np, kept, s, k)
            sel = np.flatnonzero(kept)
            o = score_order(s[sel])[:k]
            np.testing.assert_array_equal(idx, sel[o])
            assert val.tobytes() == s[sel][o].tobytes()


class _NumpyRecorder(_Recorder):
    """_Recorder with the rest of NumPy behind it (the plan's array code runs for real)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1):
        return np.argsort(a, axis=axis, kind="stable")


def test_matrix_nms_launch_arguments_match_the_kernels(monkeypatch):
    rec = _NumpyRecorder()
    monkeypatch.setattr(C, "_module", lambda cp: rec)
    b = np.array([[0, 0, 2, 2], [1, 1, 3, 3], [0, 0, 2, 2]])
    for dt in (np.float32, np.float64):
        for thr in (None, 0.1):
            C._matrix_nms(rec, b.astype(dt), np.array([0.9, 0.8, 0.7], dt), np.array([0, 1, 0]),
                          "gaussian", 2.0, thr, None, None)
    assert {name for name, *_ in rec.calls} == set(C.matrix_nms_name_expressions())
    entries, _ = _compile(C.nvrtc_options())
    for name, grid, block, args in rec.calls:
        params = PTX_PARAM.findall(entries[name].split(")")[0])
        got = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
        assert got == params, f"{name}: launched with {got}, kernel takes {params}"
        assert grid == (1,) and block == (C.MATRIX_NMS_THREADS,)


# ---- DIoU-NMS (issue 13) ------------------------------------------------------------------------

def test_diou_nms_kernel_is_the_native_one():
    """DIoU-NMS's mask kernel is diou_nms_kernels.cuh's, which nms_cuda.cu launches; its other
    steps are NMS's (the same name expressions)."""
    root = Path(__file__).resolve().parents[2]
    cuh = "ops/nms/diou_nms_kernels.cuh"
    assert f'#include "{cuh}"' in C.source()
    assert f'#include "{cuh}"' in (root / "csrc/ops/nms/nms_cuda.cu").read_text()
    assert cuh in C.HEADERS and "ops/nms/diou_nms.h" in C.HEADERS
    assert set(C.diou_nms_name_expressions()) <= set(C.name_expressions())


class _NumpyCupyDiou(_NumpyCupy):
    """_NumpyCupy whose emulated scan keeps by DIoU-NMS (reference diou_nms over each segment in
    plan order) and which checks that the mask tiles are DIoU's, with thr and beta rounded to T."""

    def __init__(self, boxes, thr, beta):
        super().__init__(boxes, thr)
        self.beta = beta

    def get_function(self, name):
        assert "detkernels::nms_mask_kernel" not in name, "plain NMS mask tiles for DIoU-NMS"
        record = _Recorder.get_function(self, name)

        def launch(grid, block, args):
            record(grid, block, args)
            if "nms_gather_kernel" in name:
                cand, M, N, Cc = args[0], int(args[10]), int(args[11]), int(args[12])
                self.rows = (cand // M) * N + (cand % M) // Cc
            elif "diou_nms_mask_kernel" in name:
                t, b = args[-2], args[-1]
                assert type(t) is type(b) and b == type(b)(self.beta)
            elif "nms_scan_kernel" in name:
                from detkernels.reference.diou_nms import diou_nms

                seg, valid, keep = args[8], args[9], args[10]
                keep[:] = 0
                for start in np.unique(seg):
                    p = np.flatnonzero(seg == start)
                    bx = self.boxes2d[self.rows[p]]
                    keep[p[diou_nms(bx, (-np.arange(p.size)).astype(bx.dtype), self.thr, self.beta)]] = 1

        return launch


@pytest.mark.parametrize("with_idxs", [False, True])
def test_diou_nms_launches_match_the_kernels(monkeypatch, with_idxs):
    """Without a GPU: diou_nms launches NMS's gather and scan and the DIoU mask kernel (never the
    sparse path or the IoU mask kernel) with exactly their PTX argument types, tiles included, and
    -- the kernels emulated over the launch arguments -- equals the reference."""
    import _nms_families as NF

    from detkernels.reference import diou_nms as RD

    entries, _ = _compile(C.nvrtc_options())
    monkeypatch.setattr(C, "NMS_MASK_BYTES", 1)  # one row block per tile: several tiles
    monkeypatch.setattr(C, "SPARSE_PATH", 2)  # the sparse path would be forced for nms: not here
    for family in ("uniform", "clusters", "at_threshold"):
        boxes, scores, classes = NF.batch(family, 5, 1, 150)
        for dtype in (np.float32, np.float64):
            b, sc = boxes[0].astype(dtype), scores[0].astype(dtype)
            c = classes[0] if with_idxs else None
            rec = _NumpyCupyDiou(b, 0.4, 0.6)
            for attr, val in (("_cupy", lambda: rec), ("_module", lambda cp: rec)):
                monkeypatch.setattr(C, attr, val)
            monkeypatch.setattr(C, "_On", _NoStream)
            monkeypatch.setattr(C, "_view", lambda cp, x: x)
            monkeypatch.setattr(C, "_as_kind", lambda r, like: r)
            got = C.diou_nms(b, sc, c, 0.4, 0.6)
            want = RD.diou_nms(b, sc, 0.4, 0.6) if c is None else RD.batched_diou_nms(b, sc, c, 0.4, 0.6)
            np.testing.assert_array_equal(got, want, err_msg=f"{family} {dtype}")
            T = C.C_TYPES[np.dtype(dtype).name]
            launched = [name for name, *_ in rec.calls]
            assert set(launched) == {f"detkernels::nms_gather_kernel<{T}>", "detkernels::nms_scan_kernel",
                                     f"detkernels::diou_nms_mask_kernel<{T}>"}
            assert launched.count("detkernels::nms_scan_kernel") > 1, "one tile only"
            for name, grid, block, args in rec.calls:
                params = PTX_PARAM.findall(entries[name].split(")")[0])
                got_t = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
                assert got_t == params, f"{name}: launched with {got_t}, kernel takes {params}"
                assert all(0 < g <= 65535 for g in grid)


# ---- detect (issue 12) --------------------------------------------------------------------------

def test_detect_kernels_are_the_native_ones():
    """detect's kernels are detect_kernels.cuh's, which detect_cuda.cu launches; its NMS stage is
    the multi-image NMS's (nms_kernels.cuh)."""
    root = Path(__file__).resolve().parents[2]
    cuh = "ops/detect/detect_kernels.cuh"
    assert f'#include "{cuh}"' in C.source()
    assert f'#include "{cuh}"' in (root / "csrc/ops/detect/detect_cuda.cu").read_text()
    assert {cuh, "ops/detect/detect_gpu.h", "ops/detect/detect.h"} <= set(C.HEADERS)
    assert set(C.detect_name_expressions()) <= set(C.name_expressions())
    assert len(C.detect_name_expressions()) == 10
    # The backend passes DetectGpuArgs in the macro's field order; the macro rebuilds the struct
    # in DetectGpuArgs' declaration order (the brace initialiser: same names, same order).
    text = (root / "csrc" / cuh).read_text()
    params = re.search(r"#define DK_DETECT_GPU_PARAMS(.*?)\n// ", text, re.S).group(1)
    assert tuple(re.findall(r"\bg_(\w+)", params)) == C.DETECT_GPU_FIELDS
    struct = re.search(r"#define DK_DETECT_GPU_STRUCT(.*?)\n// ", text, re.S).group(1)
    assert tuple(re.findall(r"\bg_(\w+)", struct)) == C.DETECT_GPU_FIELDS
    gpu = (root / "csrc/ops/detect/detect_gpu.h").read_text()
    body = re.search(r"struct DetectGpuArgs \{(.*?)\};", gpu, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    strides = re.search(r"struct DetectStrides \{(.*?)\};",
                        (root / "csrc/ops/detect/detect.h").read_text(), re.S).group(1)
    strides = re.findall(r"\b(\w+)\s*[,;]", re.sub(r"//[^\n]*", "", strides))
    fields = []
    for name in re.findall(r"\b(\w+)\s*[,;]", body):
        fields += strides if name == "st" else [name]
    assert tuple(fields) == C.DETECT_GPU_FIELDS, fields


def _score_key(v: np.ndarray) -> np.ndarray:
    """nms_bitmask.h nms_score_key over an array (the emulated score kernel's sort keys):
    ascending key = descending score, NaN first (key 0), -0.0 == +0.0."""
    U = np.uint32 if v.dtype == np.float32 else np.uint64
    sign = U(1) << U(8 * v.itemsize - 1)
    with np.errstate(invalid="ignore"):
        u = np.where(v == 0, v.dtype.type(0), v).view(U)
    key = (~np.where(u & sign, ~u, u | sign)).astype(np.uint64)
    key[np.isnan(v)] = 0
    return key


def test_emulated_score_key_is_the_reference_order():
    """Control for the emulation below: a stable sort of _score_key is score_order."""
    rng = np.random.default_rng(1)
    for dtype in (np.float32, np.float64):
        s = rng.choice(np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, -0.25], dtype), 300)
        s[::3] = rng.standard_normal(len(s[::3]))
        np.testing.assert_array_equal(np.argsort(_score_key(s), kind="stable"), score_order(s))


class _NumpyCupyDetect(_NumpyCupy):
    """NumPy standing in for cupy, every kernel detect launches emulated over its launch arguments:
    detect_gpu.h's steps written out with the reference's pieces (best_class, to_xyxy), after
    checking the DetectGpuArgs fields against the inputs; the NMS stage as _NumpyCupy's."""

    def __init__(self, boxes, scores, obj, idxs, thr, fmt, multi, sthr):
        super().__init__(np.zeros((0, 4)), thr)
        self.inp = boxes, scores, obj, idxs
        self.fmt, self.multi, self.sthr = fmt, multi, sthr

    def _args(self, g):
        """Check the 19 DetectGpuArgs fields; returns (A, C, M, multi)."""
        boxes, scores, obj, idxs = self.inp
        elem = lambda x: [v // x.itemsize for v in x.strides]  # noqa: E731
        C_ = int(g[5])
        want = [boxes.ctypes.data, scores.ctypes.data, 0 if obj is None else obj.ctypes.data,
                0 if idxs is None else idxs.ctypes.data]
        assert [int(p) for p in g[:4]] == want, "input pointers"
        assert int(g[4]) == (boxes.shape[1] if scores.ndim == 2 or scores.shape[2] else 0)
        assert C_ == (scores.shape[2] if scores.ndim == 3 else 0)
        ss = elem(scores)
        st = elem(boxes) + ss[:2] + [ss[2] if C_ else 0] + ([0, 0] if obj is None else elem(obj))
        assert [int(v) for v in g[7:15]] == st, "strides"
        assert int(g[15]) == C.FMT_CODES[self.fmt] and int(g[16]) == int(self.multi and C_ > 0)
        assert int(g[17]) == (self.sthr is not None)
        assert float(g[18]) == (0.0 if self.sthr is None else self.sthr)
        return int(g[4]), C_, int(g[6]), bool(g[16])

    def _score(self, g, score, cls, valid, keys, vals):
        from detkernels.reference.detect import best_class

        boxes, scores, obj, idxs = self.inp
        A_, C_, M, multi = self._args(g)
        B = boxes.shape[0]
        s = scores if obj is None else scores * (obj[:, :, None] if scores.ndim == 3 else obj)
        if C_ == 0:
            v, c = s, (np.zeros((B, A_), np.int64) if idxs is None else idxs)
        elif multi:
            v, c = s.reshape(B, M), np.broadcast_to(np.tile(np.arange(C_), A_), (B, M))
        else:
            c = best_class(s)
            v = np.take_along_axis(s, c[:, :, None], 2)[:, :, 0]
        score[:], cls[:] = v.reshape(-1), c.reshape(-1)
        valid[:] = True if self.sthr is None else score.astype(np.float64) > self.sthr
        if not isinstance(keys, np.uint64):
            keys[:], vals[:] = _score_key(score), np.arange(score.size)

    def _compact(self, g, N, sel, pos, score, cls, cbox, cscore, ccls, canchor):
        from detkernels.reference.box_iou import to_xyxy

        A_, C_, M, multi = self._args(g)
        gq = np.flatnonzero(sel)
        b, q = gq // M, gq % M
        s = b * N + pos[gq] - pos[b * M]
        a = q // C_ if multi else q
        cbox[s] = to_xyxy(self.inp[0][b, a], self.fmt)
        cscore[s], ccls[s], canchor[s] = score[gq], cls[gq], a
        self.boxes2d = cbox  # the NMS stage's boxes [B * N, 4]

    def get_function(self, name):
        record = super().get_function(name)

        def launch(grid, block, args):
            record(grid, block, args)
            if "detect_score_kernel" in name:
                self._score(args[:19], *args[19:24])
            elif "detect_image_key_kernel" in name:
                order, valid, keys, M = args[0], args[1], args[2], int(args[4])
                keys[:] = (order // M) * 2 + (valid[order] == 0)
            elif "detect_select_kernel" in name:
                order, valid, M, k, sel = args[0], args[1], int(args[2]), int(args[3]), args[4]
                p = np.arange(sel.size)
                gq = p if isinstance(order, np.uint64) else order
                sel[gq] = (valid[gq] != 0) & (p % M < k)
            elif "detect_pad_kernel" in name:
                cbox, cscore, ccls, canchor = args[:4]
                cbox[:], cscore[:], ccls[:], canchor[:] = 0, -np.inf, 0, -1
            elif "detect_compact_kernel" in name:
                self._compact(args[:19], int(args[19]), *args[20:28])
            elif "detect_output_kernel" in name:
                B, K, N = int(args[0]), int(args[1]), int(args[2])
                counts, cbox, cscore, ccls, canchor, dec, ob, os_, oc, oi = args[3:13]
                assert isinstance(dec, np.uint64) and int(dec) == 0, "greedy NMS: no decayed scores"
                kept = np.arange(K)[None, :] < counts[:, None]
                s = np.where(kept, np.arange(B)[:, None] * N + oi, 0)
                ob[:] = np.where(kept[..., None], cbox.reshape(-1, 4)[s] if cbox.size else 0, 0)
                os_[:] = np.where(kept, cscore[s] if cscore.size else 0, 0)
                oc[:] = np.where(kept, ccls[s] if ccls.size else 0, -1)
                oi[:] = np.where(kept, canchor[s] if canchor.size else 0, -1)

        return launch


def _cupy_detect(monkeypatch, boxes, scores, thr, K, *, score_threshold=None, pre_nms_top_k=None,
                 fmt="xyxy", objectness=None, multi_label=False, class_agnostic=False, idxs=None):
    """The CuPy backend's detect with NumPy for cupy and the kernels emulated; (outputs, launches)."""
    multi = multi_label and scores.ndim == 3
    rec = _NumpyCupyDetect(boxes, scores, objectness, idxs, thr, fmt, multi, score_threshold)
    for attr, val in (("_cupy", lambda: rec), ("_module", lambda cp: rec), ("_On", _NoStream),
                      ("_view", lambda cp, x: x), ("_as_kind", lambda r, like: r)):
        monkeypatch.setattr(C, attr, val)
    out = C.detect(boxes, scores, objectness, idxs, thr, K, score_threshold, pre_nms_top_k, fmt,
                   multi, class_agnostic)
    return out, rec.calls


def _check_detect(got, want, what):
    from _helpers import assert_bytes_equal

    for g, w, name in zip(got, want, ("boxes", "scores", "classes", "indices", "counts")):
        assert_bytes_equal(g, w, f"{what} {name}")


@pytest.mark.parametrize("option", ["single", "single_no_thr_topk", "multi", "agnostic_obj",
                                    "multi_agnostic", "cxcywh_obj", "xywh_all_below", "k0"])
def test_detect_plan_logic(monkeypatch, option):
    """The CuPy detect's host orchestration (sorts, selection, exclusive sum, slots, the NMS call,
    the outputs) with NumPy standing in for CuPy and the kernels emulated over their launch
    arguments equals the reference byte for byte: every NMS family, tests/ops/test_detect.py's
    options, C = 1 / 5 / 37, both dtypes, K = 0 / 6 / 400."""
    from _nms_families import FAMILIES
    from ops.test_detect import OPTIONS, _inputs

    from detkernels.reference import detect as RD

    monkeypatch.setattr(C, "NMS_MASK_BYTES", 1)  # several mask tiles
    kw = dict(OPTIONS[option])
    with_obj = kw.pop("objectness", False)
    for family in sorted(FAMILIES):
        for C_, dtype in ((1, np.float32), (5, np.float64), (37, np.float32)):
            boxes, scores, _, obj = _inputs(family, C_, 2, 40, C_, dtype)
            if with_obj:
                kw["objectness"] = obj
            for K in (0, 6, 400):
                got, _ = _cupy_detect(monkeypatch, boxes, scores, 0.5, K, **kw)
                _check_detect(got, RD.detect(boxes, scores, 0.5, K, **kw),
                              f"{family} {option} C={C_} {dtype.__name__} K={K}")


@pytest.mark.parametrize("family", ["ties", "nonfinite", "many_classes"])
def test_detect_plan_idxs_form(monkeypatch, family):
    from ops.test_detect import _inputs

    from detkernels.reference import detect as RD

    boxes, scores, classes, obj = _inputs(family, 9, 3, 60, 0)
    for kw in (dict(idxs=classes, score_threshold=0.2), dict(idxs=classes, objectness=obj),
               dict(idxs=classes, class_agnostic=True, pre_nms_top_k=9), dict(pre_nms_top_k=5),
               dict()):
        got, _ = _cupy_detect(monkeypatch, boxes, scores, 0.5, 30, **kw)
        _check_detect(got, RD.detect(boxes, scores, 0.5, 30, **kw), f"{family} {sorted(kw)}")


def test_detect_plan_top_k_ties_nan_and_signed_zero(monkeypatch):
    """The top-k sorts on the kernels' keys keep candidate order among ties, NaN first, -0 == +0;
    k = 1 .. beyond the candidates."""
    from _nms_families import top_k_ties

    from detkernels.reference import detect as RD

    A_, C_ = 30, 3
    boxes, scores = top_k_ties(2, A_, C_)
    for k in (1, 7, A_ - 1, A_, A_ * C_ - 1, A_ * C_, A_ * C_ + 5):
        for kw in (dict(), dict(multi_label=True), dict(score_threshold=0.0),
                   dict(multi_label=True, class_agnostic=True, score_threshold=-1.0)):
            got, calls = _cupy_detect(monkeypatch, boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw)
            _check_detect(got, RD.detect(boxes, scores, 0.3, 50, pre_nms_top_k=k, **kw), f"k={k} {kw}")
            M = A_ * (C_ if kw.get("multi_label") else 1)
            sorted_ = any("detect_image_key_kernel" in n for n, *_ in calls)
            assert sorted_ == (k < M), "the top-k sorts run exactly when k < M"


def test_detect_plan_empty_and_strided(monkeypatch):
    from ops.test_detect import _inputs

    from detkernels.reference import detect as RD

    for B, A_, C_ in ((0, 5, 3), (2, 0, 3), (2, 5, 0), (0, 0, 0)):
        boxes = np.zeros((B, A_, 4), np.float32)
        scores = np.full((B, A_, C_), 0.5, np.float32)
        for multi in (False, True):
            got, calls = _cupy_detect(monkeypatch, boxes, scores, 0.5, 4, multi_label=multi)
            _check_detect(got, RD.detect(boxes, scores, 0.5, 4, multi_label=multi), f"B={B} A={A_} C={C_}")
            assert not [n for n, *_ in calls if "detect_" in n and "output" not in n]
    # ultralytics' [B, 4 + C, A] head read in place: anchors contiguous, classes strided
    boxes, scores, _, obj = _inputs("clusters", 3, 2, 50, 6)
    head = np.ascontiguousarray(np.concatenate([boxes, scores], 2).transpose(0, 2, 1))
    b, s = head[:, :4].transpose(0, 2, 1), head[:, 4:].transpose(0, 2, 1)
    for kw in (dict(score_threshold=0.3, fmt="cxcywh"), dict(multi_label=True, pre_nms_top_k=20),
               dict(objectness=obj[:, ::-1], pre_nms_top_k=7)):
        got, _ = _cupy_detect(monkeypatch, b, s, 0.45, 25, **kw)
        _check_detect(got, RD.detect(b, s, 0.45, 25, **kw), str(sorted(kw)))


def test_detect_launch_arguments_match_the_kernels(monkeypatch):
    """Without a GPU: every kernel detect launches (its own and the NMS stage's) is compiled and
    gets exactly the PTX argument count and types of its entry -- DetectGpuArgs field by field --
    on a grid-strided 1-d grid."""
    from ops.test_detect import _inputs

    entries, _ = _compile(C.nvrtc_options())
    launched = set()
    for dtype in (np.float32, np.float64):
        boxes, scores, classes, obj = _inputs("clusters", 2, 2, 30, 4, dtype)
        for kw in (dict(objectness=obj, pre_nms_top_k=9, score_threshold=0.2, fmt="cxcywh"),
                   dict(multi_label=True), dict(scores=scores[..., 0], idxs=classes)):
            s = kw.pop("scores", scores)
            _, calls = _cupy_detect(monkeypatch, boxes, s, 0.5, 7, **kw)
            for name, grid, block, args in calls:
                launched.add(name)
                params = PTX_PARAM.findall(entries[name].split(")")[0])
                got = ["u64" if isinstance(a, np.ndarray) else ARG_TYPES[type(a)] for a in args]
                assert got == params, f"{name}: launched with {got}, kernel takes {params}"
                if "detect_" in name:
                    assert block == (C.DETECT_THREADS,) and len(grid) == 1 and 0 < grid[0] <= 1 << 16
    assert set(C.detect_name_expressions()) <= launched, set(C.detect_name_expressions()) - launched


def test_detect_refuses_other_nms_modes(monkeypatch):
    """CuPy detect runs greedy IoU NMS only: detect_select refuses the other modes for it (a
    NotImplementedError naming the mode), never greedy NMS in their place."""
    from detkernels import _checks, _dispatch, _registry

    assert C.detect.nms_modes == {}
    monkeypatch.setattr(_registry, "select", lambda op, dev, w, backend=None: ("cupy", C.detect))
    for mode in ("diou", "soft", "matrix"):
        with pytest.raises(NotImplementedError, match=rf"nms='{mode}'.* on cuda by backend 'cupy'"):
            _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms(mode), None)
        with pytest.raises(NotImplementedError, match=mode):
            C.detect(None, None, None, None, 0.5, 1, None, None, "xyxy", False, False,
                     _checks.DetectNms(mode))
    assert _dispatch.detect_select("cuda:0", "float32", _checks.DetectNms(), None) is C.detect
