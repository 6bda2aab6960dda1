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
