"""PTX lint of the CUDA kernels, runnable without a GPU: compiled with the build's float flags
(CMakeLists.txt DK_CUDA_FLOAT_FLAGS), the PTX must contain no fused multiply-add (fma.rn.f32/f64),
no approximate division and no flush-to-zero (.ftz) -- any of them breaks bit-exactness with the
NumPy reference (docs/SPEC.md §2). The lint itself is checked: default nvcc flags do produce an FMA."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CI has it): cannot lint PTX")

BUILD_FLAGS = ["--fmad=false", "-prec-div=true", "-prec-sqrt=true", "-ftz=false",
               "-Xcompiler=-ffp-contract=off"]
# nms_cuda.cu's PTX holds the DIoU-NMS mask kernel too (diou_nms_kernels.cuh, issue 13).
SOURCES = ["csrc/ops/box_iou/box_iou_cuda.cu", "csrc/ops/nms/nms_cuda.cu",
           "csrc/ops/roi_align/roi_align_cuda.cu", "csrc/ops/roi_pool/roi_pool_cuda.cu",
           "csrc/ops/nms/soft_nms_cuda.cu", "csrc/ops/nms/matrix_nms_cuda.cu",  # issue 13
           "csrc/ops/detect/detect_cuda.cu",  # issue 12
           "csrc/ops/box_iou/box_iou_rotated_cuda.cu",  # issue 17
           "csrc/ops/roi_align/roi_align_rotated_cuda.cu"]  # issue 17
# The device's double cos/sin/exp/log (the rotated metrics' libm, as torchvision's CUDA kernel) use
# fma by design: those sources are linted with the libm calls stood in by identities
# (box_iou_rotated.h: DK_LINT_NO_LIBM), so any fma left is a contraction of detkernels' own code.
NO_LIBM = {"csrc/ops/box_iou/box_iou_rotated_cuda.cu", "csrc/ops/nms/nms_cuda.cu"}
# detect's own kernels hold no division (its NMS stages are nms_cuda.cu's, soft_nms_cuda.cu's,
# matrix_nms_cuda.cu's kernels, linted there; cxcywh's `w / 2` is an exact multiply by 0.5): the
# IEEE-division check below has nothing to find in its PTX.
NO_DIVISION = {"csrc/ops/detect/detect_cuda.cu"}
FORBIDDEN = re.compile(r"\bfma\.rn\.f(32|64)\b|\bdiv\.approx\b|\bdiv\.full\b|\.ftz\b|\brcp\.approx\b")


def _cmake_flags() -> list[str]:
    """The float flags CMakeLists.txt passes to nvcc (so the lint follows the build)."""
    text = (ROOT / "CMakeLists.txt").read_text()
    m = re.search(r"set\(DK_CUDA_FLOAT_FLAGS ([^)]*)\)", text)
    assert m, "DK_CUDA_FLOAT_FLAGS not found in CMakeLists.txt"
    return m.group(1).split()


def _ptx(src: str, flags: list[str], tmp_path: Path) -> str:
    out = tmp_path / (Path(src).stem + ".ptx")
    subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-std=c++17", "-I", str(ROOT / "csrc"),
                    "-DDETKERNELS_WITH_CUDA", *flags, str(ROOT / src), "-o", str(out)],
                   check=True, capture_output=True)
    return out.read_text()


def test_build_flags_are_the_linted_ones():
    assert set(BUILD_FLAGS[:4]) == set(_cmake_flags())


@pytest.mark.parametrize("src", SOURCES)
def test_no_fma_no_approx_no_ftz(src, tmp_path):
    extra = ["-DDK_LINT_NO_LIBM"] if src in NO_LIBM else []
    ptx = _ptx(src, _cmake_flags() + ["-Xcompiler=-ffp-contract=off"] + extra, tmp_path)
    bad = sorted({m.group(0) for m in FORBIDDEN.finditer(ptx)})
    assert not bad, f"{src}: PTX contains {bad}"
    # The IoU divisions are there, and IEEE-rounded.
    if src in NO_DIVISION:
        assert not re.search(r"\bdiv\.\w+\.f(32|64)\b", ptx), \
            f"{src}: a float division appeared: lint it as the others"
        return
    assert re.search(r"\bdiv\.rn\.f32\b", ptx), f"{src}: no div.rn.f32 found"
    assert re.search(r"\bdiv\.rn\.f64\b", ptx), f"{src}: no div.rn.f64 found"


def test_lint_catches_contraction(tmp_path):
    """Without --fmad=false nvcc fuses (area_a + area_b) - inter style expressions: the lint sees it."""
    ptx = _ptx("csrc/ops/box_iou/box_iou_cuda.cu", [], tmp_path)
    assert FORBIDDEN.search(ptx), "default nvcc flags produced no fma: the lint would be vacuous"


@pytest.mark.parametrize("src", sorted(NO_LIBM))
def test_libm_stub_is_needed(src, tmp_path):
    """With the device libm in place the PTX holds fma (CUDA's cos/sin/exp/log): the stub is what
    lets the lint see the rest, not a way around a contraction of ours."""
    ptx = _ptx(src, _cmake_flags() + ["-Xcompiler=-ffp-contract=off"], tmp_path)
    assert re.search(r"\bfma\.rn\.f64\b", ptx)
