"""Shared fixtures. Backends are parametrised here, once: a backend that cannot run on this machine
is reported as skipped with the registry's reason, never as passed."""
from __future__ import annotations

import numpy as np
import pytest

import detkernels
from detkernels import _registry

CPU_BACKENDS = ("native", "numba", "numpy")


def backend_param(name: str, op: str, device: str = "cpu", dtype: str = "float32"):
    """pytest.param for a backend, skipped (with the reason) where it cannot serve `op` here."""
    _registry._load()
    why = _registry._why_not(_registry._TABLE[name], op, device.split(":")[0], dtype)
    marks = [pytest.mark.skip(reason=f"backend {name!r}: {why}")] if why else []
    return pytest.param(name, id=name, marks=marks)


@pytest.fixture
def rng(request):
    """A Generator seeded from the test id: reproducible, different per test."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tv_ops():
    pytest.importorskip("torch")
    return pytest.importorskip("torchvision.ops")
