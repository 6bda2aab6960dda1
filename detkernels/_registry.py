"""Backend table and dispatch.

Each backend module (detkernels/backends/<name>) registers, per op, an implementation and the
devices and dtypes it serves, and records whether it is usable here (`available`, `reason`), in
the table of detkernels/backends/_table.py.
Backend modules never raise at import; they are imported on first dispatch.

Implementations take normalised inputs (validated, promoted, contiguous; see detkernels/_dispatch.py)
as arrays of the caller's kind, and return arrays of that kind on the same device.
"""
from __future__ import annotations

import importlib
import os
import warnings
from typing import Callable

from .backends._table import BACKENDS, TABLE as _TABLE, Backend, _probed, declare, probe, register  # noqa: F401

__all__ = [
    "BACKENDS",
    "register",
    "declare",
    "select",
    "explain",
    "set_backend",
    "get_backend",
    "available_backends",
    "why_not",
]

# Dispatch rule: an explicit `backend=` argument, else the process-wide choice (set_backend(), or
# the DETKERNELS_BACKEND environment variable), else the first available backend in this order for
# the input's device type. An explicit choice that cannot serve the call is an error, never a
# silent fallback; an automatic choice that skips an unavailable backend warns once.
AUTO_ORDER = {"cpu": ("native", "numba", "numpy"), "cuda": ("native", "cupy", "numba")}


_LOADED = False
_CHOICE: str | None = None
_WARNED: set = set()
_CACHE: dict = {}


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for name in BACKENDS:
        try:
            importlib.import_module(f"detkernels.backends.{name}")
        except Exception as e:  # a backend must never break `import detkernels`
            declare(name, False, f"import failed: {type(e).__name__}: {e}")


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    return name


def set_backend(name: str | None) -> None:
    """Process-wide backend choice (None: automatic). Overrides DETKERNELS_BACKEND."""
    global _CHOICE
    _CHOICE = None if name is None else _check_name(name)
    _CACHE.clear()


def get_backend() -> str | None:
    """The process-wide backend choice, or None for automatic selection."""
    if _CHOICE is not None:
        return _CHOICE
    env = os.environ.get("DETKERNELS_BACKEND", "").strip()
    return _check_name(env) if env else None


def available_backends() -> dict[str, str]:
    """{backend: 'available' or the reason it is not}."""
    _load()
    return {n: ("available" if b.available else b.reason) for n, b in _TABLE.items()}


def _why_not(b: Backend, op: str, dev: str, dtype: str) -> str | None:
    if not b.available:
        return b.reason
    if op not in b.impls:
        return f"does not implement {op}"
    _, devices, dtypes = b.impls[op]
    if dev not in devices:
        return f"does not run {op} on {dev}"
    why = _probed(b, dev)
    if why is not None:
        return why
    if dtype not in dtypes:
        return f"does not take {dtype} for {op} (takes {', '.join(dtypes)})"
    return None


def why_not(backend: str, op: str, device: str = "cpu", dtype: str = "float32") -> str | None:
    """None if ``backend`` can run ``op`` on ``device`` ('cpu', 'cuda', 'cuda:1') for ``dtype``
    here, else the reason it cannot (what a test reports when it skips)."""
    _load()
    return _why_not(_TABLE[_check_name(backend)], op, device.split(":")[0], dtype)


def select(op: str, device: str, dtype: str, backend: str | None = None) -> tuple[str, Callable]:
    """(backend name, implementation) for ``op`` on ``device`` ('cpu', 'cuda:0', ...) and ``dtype``."""
    dev = device.split(":")[0]
    key = (op, dev, dtype, backend, _CHOICE, os.environ.get("DETKERNELS_BACKEND"))
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    _load()
    wanted = _check_name(backend) if backend is not None else get_backend()
    if wanted is not None:
        why = _why_not(_TABLE[wanted], op, dev, dtype)
        if why is not None:
            raise RuntimeError(f"detkernels: backend {wanted!r} cannot run {op} on {device} ({dtype}): {why}")
        hit = (wanted, _TABLE[wanted].impls[op][0])
    else:
        order = AUTO_ORDER.get(dev)
        if order is None:
            raise RuntimeError(f"detkernels: no backend runs on device {device!r}")
        tried = []
        for name in order:
            why = _why_not(_TABLE[name], op, dev, dtype)
            if why is None:
                # Warn (once) only when the compiled core itself is missing: that is a broken
                # install, not a capability gap of one backend.
                if name != "native" and not _TABLE["native"].available and (op, dev) not in _WARNED:
                    _WARNED.add((op, dev))
                    warnings.warn(f"detkernels: {op} on {dev} falls back to {name!r}: " + "; ".join(tried),
                                  RuntimeWarning, stacklevel=3)
                hit = (name, _TABLE[name].impls[op][0])
                break
            tried.append(f"{name}: {why}")
        else:
            raise RuntimeError(f"detkernels: no backend can run {op} on {device} ({dtype}); tried "
                               + "; ".join(tried))
    _CACHE[key] = hit
    return hit


class Explanation(str):
    """explain()'s text: a str (search it, print it) whose repr is the text itself, so it reads
    as lines at an interactive prompt instead of one quoted string with \\n."""

    def __repr__(self) -> str:
        return str(self)


def explain(op: str, device: str = "cpu", dtype: str = "float32", backend: str | None = None) -> Explanation:
    """Which backend would run ``op`` for this device and dtype, and why the others would not."""
    _load()
    lines = []
    try:
        name, _ = select(op, device, dtype, backend)
        lines.append(f"{op} on {device} ({dtype}) runs on {name!r}")
    except RuntimeError as e:
        lines.append(str(e))
    dev = device.split(":")[0]
    for n, b in _TABLE.items():
        why = _why_not(b, op, dev, dtype)
        lines.append(f"  {n:7s} {'serves it' if why is None else why}")
    return Explanation("\n".join(lines))
