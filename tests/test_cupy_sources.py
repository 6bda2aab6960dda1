"""The CuPy backend without a GPU: its NVRTC source (the shared csrc headers and kernels) compiles
with the backend's own options, every kernel it launches exists, and the PTX has no FMA, no
approximate/flush-to-zero op and no float64 arithmetic in the float32 kernels. Running the kernels
needs a GPU (tests/test_backends.py). Uses NVRTC through cuda-bindings (cuda.bindings.nvrtc) and
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
    err, prog = nvrtc.nvrtcCreateProgram(C.source().encode(), b"cupy_kernels.cu", 0, [], [])
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


def test_nvrtc_source_is_exact():
    entries, _ = _compile(C.nvrtc_options())
    assert len(entries) == len(C.name_expressions())
    for name, body in entries.items():
        assert not re.search(r"\bfma\.", body), f"{name}: fused multiply-add"
        assert not re.search(r"\.(approx|full)\b|\.ftz\b", body), f"{name}: approximate/FTZ op"
        if "<float" in name:
            assert not re.search(r"\.f64\b", body), f"{name}: float64 arithmetic in a float32 kernel"


def test_lint_sees_contraction():
    """Control: with NVRTC's default --fmad=true the same source gets FMAs, so the lint can fail."""
    opts = tuple(o for o in C.nvrtc_options() if not o.startswith("--fmad"))
    entries, _ = _compile(opts)
    assert re.search(r"\bfma\.", entries["detkernels::box_iou_kernel<float, 0, 0>"])


def test_one_source_of_truth():
    """The CuPy source includes the kernel header the nvcc build compiles."""
    inc = C.include_dir()
    cu = Path(__file__).resolve().parents[1] / "csrc/ops/box_iou/box_iou_cuda.cu"
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
    """multi_image_nms's device plan and outputs (cupy.py _multi_plan, _multi_outputs), run with
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
    """cupy.py's tile size is nms_bitmask.h's nms_tile_rows (a multiple of 64, capped)."""
    assert C.mask_tile_rows(100000, 17, 1 << 20) == 120 * 64  # 2^20 B / (17 words * 8 B * 64 rows)
    assert C.mask_tile_rows(1000, 17, 1 << 20) == 1024  # all 16 row blocks
    assert C.mask_tile_rows(100, 3, 1) == 64
    assert C.mask_tile_rows(100, 3, 1 << 30) == 128
