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


def _run(section: str) -> None:
    here = Path(__file__).resolve().parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, str(here / "_cudasim_check.py"), section], capture_output=True,
                         text=True, env=env, timeout=900)
    assert out.returncode == 0, f"simulator check failed:\n{out.stdout}\n{out.stderr}"
    assert "checks passed" in out.stdout


def test_numba_cuda_kernels_in_simulator():
    _run("kernels")


def test_numba_cuda_detect_in_simulator():
    """detect (issue 12) on numba.cuda: the per-anchor pass, the multi-image suppression and the
    padded outputs, byte-exact against reference/detect.py (~15 s)."""
    _run("detect")
