"""The pytest-benchmark suites in bench/ double as correctness checks at realistic sizes (every
contender is compared with the reference before it is timed): run them once, untimed."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")
ROOT = Path(__file__).resolve().parents[2]


def test_bench_suites_run_untimed():
    r = subprocess.run([sys.executable, "-m", "pytest", "bench", "--benchmark-disable", "-q",
                        "-p", "no:cacheprovider"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
