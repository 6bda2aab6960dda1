"""Whose threads run the native CPU pool's jobs (csrc/common/parallel.cpp, "Sharing torch's
OpenMP runtime"); the pool's behaviour on either runtime: tests/backends/test_parallel.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from detkernels import _registry  # noqa: E402

if _registry.available_backends().get("native") != "available":
    pytest.skip("native backend not built", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_torch_import_shares_its_openmp_runtime():
    """A fresh interpreter: own threads before torch is imported, torch's OpenMP runtime after
    (torch/lib's copy for a pip wheel), and own again with DETKERNELS_SHARE_OPENMP=0."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's parallel backend is not OpenMP")
    code = ("import detkernels\nprint(detkernels._C.thread_runtime())\nimport torch\n"
            "print(detkernels.build_info()['thread_runtime'])")
    for share, after in (("1", "openmp:"), ("0", "own")):
        env = dict(os.environ, PYTHONPATH=ROOT, DETKERNELS_SHARE_OPENMP=share)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                             timeout=120, check=True).stdout.split()
        assert out[0] == "own" and out[1].startswith(after), (share, out)
