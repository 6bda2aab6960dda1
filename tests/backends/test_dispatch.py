"""The dispatch rule (detkernels/_registry.py): an explicit ``backend=``, else the process-wide
choice (``set_backend``, else ``DETKERNELS_BACKEND``), else the first available backend of the
device's order (CPU: native, numba, numpy; CUDA: native, cupy, numba). An explicit choice that
cannot serve a call is an error naming why, never a silent fallback; an automatic one that skips
a broken compiled core warns once. Also: explain/why_not, lazy probes, lazy imports."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from _helpers import assert_bytes_equal

import detkernels
from detkernels import _registry
from detkernels.reference import box_iou as R

BACKENDS = _registry.BACKENDS
B1 = np.array([[0, 0, 1, 1]], np.float32)


def _chosen(op: str = "box_iou", device: str = "cpu", dtype: str = "float32", backend=None) -> str:
    return _registry.select(op, device, dtype, backend)[0]


def test_rule_order(monkeypatch):
    """explicit > set_backend > DETKERNELS_BACKEND > automatic order."""
    monkeypatch.delenv("DETKERNELS_BACKEND", raising=False)
    auto = _chosen()
    assert auto == next(n for n in _registry.AUTO_ORDER["cpu"] if _registry.why_not(n, "box_iou") is None)
    monkeypatch.setenv("DETKERNELS_BACKEND", "numpy")
    assert _chosen() == "numpy"
    try:
        detkernels.set_backend(auto)
        assert _chosen() == auto  # set_backend wins over the environment
        assert _chosen(backend="numpy") == "numpy"  # the argument wins over both
    finally:
        detkernels.set_backend(None)
    assert _chosen() == "numpy"
    monkeypatch.delenv("DETKERNELS_BACKEND")
    assert _chosen() == auto


def test_automatic_order_skips_what_cannot_serve(monkeypatch):
    """The first backend of the order that serves (op, device, dtype); a broken native core makes
    the fallback warn once per (op, device)."""
    _registry._load()
    native = _registry._TABLE["native"]
    saved = (native.available, native.reason)
    try:
        native.available, native.reason = False, "pretend the core is missing"
        _registry._CACHE.clear()
        _registry._WARNED.clear()
        with pytest.warns(RuntimeWarning, match="falls back to .*pretend the core is missing"):
            name = _chosen("nms")
        assert name in ("numba", "numpy")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _registry._CACHE.clear()
            assert _chosen("nms") == name  # warned once
        with pytest.raises(RuntimeError, match="backend 'native' cannot run nms .*pretend the core is missing"):
            _chosen("nms", backend="native")
    finally:
        native.available, native.reason = saved
        _registry._CACHE.clear()
        _registry._WARNED.clear()


def test_no_backend_for_a_device():
    with pytest.raises(RuntimeError, match="no backend runs on device 'tpu:0'"):
        _registry.select("nms", "tpu:0", "float32")


def test_explicit_choice_never_falls_back():
    """numpy serves no CUDA: an explicit numpy on a CUDA device is an error, not another backend."""
    with pytest.raises(RuntimeError, match="backend 'numpy' cannot run nms on cuda:0"):
        _registry.select("nms", "cuda:0", "float32", "numpy")


def test_missing_backend_error_names_what_is_missing():
    for name, reason in detkernels.available_backends().items():
        if reason == "available":
            continue
        with pytest.raises(RuntimeError, match=f"backend {name!r} cannot run"):
            detkernels.box_iou(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32), backend=name)
        assert reason in detkernels.explain("box_iou", backend=name)


def test_explain_lists_every_backend():
    text = detkernels.explain("nms", "cuda", "float32")
    for name in BACKENDS:
        assert name in text


def test_why_not():
    assert _registry.why_not("numpy", "nms", "cpu", "float32") is None
    assert "cuda" in _registry.why_not("numpy", "nms", "cuda", "float32")
    with pytest.raises(ValueError, match="unknown backend"):
        _registry.why_not("tensorrt", "nms")


def test_process_wide_choice(monkeypatch):
    b = np.array([[0, 0, 1, 1]], np.float32)
    try:
        detkernels.set_backend("numpy")
        assert "runs on 'numpy'" in detkernels.explain("box_iou")
        assert_bytes_equal(detkernels.box_iou(b, b), R.box_iou(b, b))
    finally:
        detkernels.set_backend(None)
    monkeypatch.setenv("DETKERNELS_BACKEND", "numpy")
    assert "runs on 'numpy'" in detkernels.explain("nms")
    monkeypatch.setenv("DETKERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="unknown backend"):
        detkernels.nms(b, np.ones(1, np.float32), 0.5)


def test_import_and_native_dispatch_do_not_import_numba_or_cupy():
    code = ("import sys, numpy as np, detkernels\n"
            "b = np.array([[0, 0, 1, 1]], np.float32)\n"
            "detkernels.nms(b, np.ones(1, np.float32), 0.5)\n"
            "detkernels.available_backends()\n"
            "print(sorted(m for m in ('numba', 'cupy', 'torch') if m in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_probe_is_lazy_and_cached():
    """A backend's device probe runs once, on first consideration, and its reason is reported."""
    calls = []

    def check():
        calls.append(1)
        return "no such device here"

    _registry._load()
    b = _registry._TABLE["numpy"]
    saved = dict(b.probes)
    try:
        _registry.probe("numpy", "cpu", check)
        assert calls == []
        assert _registry.why_not("numpy", "nms", "cpu") == "no such device here"
        assert _registry.why_not("numpy", "box_iou", "cpu") == "no such device here"
        assert calls == [1]
        with pytest.raises(RuntimeError, match="no such device here"):
            detkernels.nms(np.zeros((1, 4), np.float32), np.ones(1, np.float32), 0.5, backend="numpy")
    finally:
        b.probes.clear()
        b.probes.update(saved)
        _registry._CACHE.clear()
    assert _registry.why_not("numpy", "nms", "cpu") is None


def test_explain_reads_as_lines():
    """At a prompt, explain()'s value shows as its lines (not a quoted string with \\n)."""
    e = detkernels.explain("nms", "cpu", "float32")
    assert repr(e) == str(e) and "\n" in e and "native" in e


def test_build_summary_says_what_and_why():
    from detkernels.backends import native

    info = detkernels.build_info()
    assert info["summary"] == native.build_summary(info)
    assert info["cuda_why"] and len(info["summary"]) <= 120
    cpu = native.build_summary({"cuda": False, "cuda_why": "DETKERNELS_CUDA=OFF", "num_threads": 2})
    assert cpu == "detkernels._C: CPU kernels only (DETKERNELS_CUDA=OFF); 2 CPU threads"
    gpu = native.build_summary({"cuda": True, "cuda_version": "13.0", "cuda_architectures": "90-real",
                                "cuda_why": "nvcc found at /x/nvcc", "cuda_devices": 1, "num_threads": 16})
    assert gpu == "detkernels._C: CPU + CUDA 13.0 kernels (90-real); 1 CUDA device(s) visible; 16 CPU threads"


def test_cpu_only_build_explains_why_native_serves_no_cuda():
    if detkernels.build_info()["cuda"]:
        pytest.skip("this core was built with CUDA kernels")
    assert "built without CUDA kernels" in detkernels.explain("nms", "cuda", "float32")
