"""The numba.cuda kernels of the Numba backend, run by the CUDA simulator (no GPU needed), against
the reference: tests/gpu_logic/_cudasim_check.py in a subprocess, because NUMBA_ENABLE_CUDASIM must be set
before numba is imported and this process may already have imported it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba", reason="numba is not installed (pip install 'detkernels[numba]')")


def _run(*sections: str) -> None:
    here = Path(__file__).resolve().parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(here / "_cudasim_check.py"), *sections], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, f"simulator check failed:\n{out.stdout}\n{out.stderr}"
    assert "checks passed" in out.stdout


def test_numba_cuda_kernels_in_simulator():
    _run("kernels")


def test_numba_cuda_detect_diou_soft_nms_in_simulator():
    """detect (issue 12) on numba.cuda -- the per-anchor pass, the multi-image suppression and the
    padded outputs --, diou_nms (issue 13, the bitmask path with DIoU's predicate) and soft_nms /
    multi_image_soft_nms (issue 13, a block per segment), byte-exact against the references (one
    process: ~25 s)."""
    _run("detect", "diou", "soft")
