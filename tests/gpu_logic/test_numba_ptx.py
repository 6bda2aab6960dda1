"""PTX lint of the numba.cuda kernels, compiled for sm_90 without a GPU: no FMA contraction, no
float64 arithmetic in the float32 kernels, no approximate division or square root. The simulator
(tests/gpu_logic/test_numba_cudasim.py) cannot see either problem. Needs NVVM and libdevice (a CUDA toolkit:
CUDA_HOME or /usr/local/cuda); skips with the reason where they are missing."""
from __future__ import annotations

import re

import pytest

from _helpers import PTX_APPROX as APPROX, PTX_F64 as F64, PTX_FMA as FMA

pytest.importorskip("numba", reason="numba is not installed (pip install 'detkernels[numba]')")



@pytest.fixture(scope="module")
def K():
    from detkernels.backends.numba import cuda as _numba_cuda

    try:
        _numba_cuda.ptx("float32")["nms_scan_kernel"]
    except Exception as e:  # NVVM / libdevice not found
        pytest.skip(f"numba.cuda cannot compile PTX here: {type(e).__name__}: {str(e).splitlines()[0]}")
    return _numba_cuda


_PTX: dict = {}


def _ptx(K, dtype) -> dict:
    """Every kernel's PTX for ``dtype``, compiled once per test module (seconds per dtype)."""
    if dtype not in _PTX:
        _PTX[dtype] = K.ptx(dtype)
    return _PTX[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_no_fma_no_approximation(K, dtype):
    ptx = _ptx(K, dtype)
    assert set(ptx) == set(K.KERNELS)
    for name, src in ptx.items():
        assert not FMA.findall(src), f"{name} ({dtype}): fused multiply-add in PTX"
        assert not APPROX.findall(src), f"{name} ({dtype}): approximate/flush-to-zero op in PTX"
        if dtype == "float32":
            assert not F64.findall(src), f"{name}: float64 arithmetic in a float32 kernel"
    # IEEE division is what the kernels use.
    suffix = "f32" if dtype == "float32" else "f64"
    assert f"div.rn.{suffix}" in ptx["box_iou_kernel"]


def test_lint_sees_contraction(K):
    """Control: the same kernels with plain operators get FMAs from NVVM (even fastmath=False), so
    the lint above can fail."""
    assert FMA.findall(K.ptx("float32", plain_operators=True, names=("box_iou_kernel",))["box_iou_kernel"])


def test_scan_ors_are_atomic(K):
    """The NMS scan runs one block per image and a removed-mask word can straddle two images:
    its ORs must be atomic (atom.global.or.b64), never a plain load/or/store."""
    src = _ptx(K, "float32")["nms_scan_kernel"]
    assert re.search(r"\batom\.global\.or\.b64\b|\bred\.global\.or\.b64\b", src), "non-atomic OR"


_FLOAT_OP = re.compile(r"\b(?:add|sub|mul|div|fma|neg)\.[a-z.]*f(?:32|64)\b")
_UNROUNDED_ADD = re.compile(r"\b(?:add|sub)\.f(?:32|64)\b")  # no .rn: ptxas may fuse it with a mul


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_detect_kernels_round_every_op(K, dtype):
    """detect (issue 12): the per-anchor pass rounds each operation (the objectness product is one
    mul.rn, the xywh/cxcywh corners add.rn, never an add that ptxas could fuse with a mul); the
    output kernel only copies (no float arithmetic at all)."""
    ptx = _ptx(K, dtype)
    suffix = "f32" if dtype == "float32" else "f64"
    src = ptx["detect_candidates_kernel"]
    assert f"mul.rn.{suffix}" in src and f"add.rn.{suffix}" in src
    assert not _UNROUNDED_ADD.findall(src), "an unrounded add/sub in detect_candidates_kernel"
    assert not _FLOAT_OP.findall(ptx["detect_output_kernel"]), "float arithmetic in detect_output_kernel"


def test_detect_lint_sees_unrounded_ops(K):
    """Control: with plain operators the per-anchor pass has unrounded adds, so the lint can fail."""
    plain = K.ptx("float32", plain_operators=True, names=("detect_candidates_kernel",))
    assert _UNROUNDED_ADD.findall(plain["detect_candidates_kernel"])
