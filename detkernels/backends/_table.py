"""The backend table: what each backend serves and whether it can run here.

Backend modules (detkernels/backends/<name>) fill it at import with ``declare`` (usable here, or
why not), ``probe`` (a lazy availability check per device type) and ``@register`` (per op: the
implementation and the devices and dtypes it serves). detkernels/_registry.py imports the backends
and reads the table; backends import only this module, so imports run one way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

__all__ = ["BACKENDS", "Backend", "TABLE", "declare", "probe", "register"]

BACKENDS = ("native", "cupy", "numba", "numpy")


@dataclass
class Backend:
    name: str
    available: bool = False
    reason: str = "not loaded"
    impls: dict = field(default_factory=dict)  # op -> (fn, devices, dtypes)
    probes: dict = field(default_factory=dict)  # device type -> () -> reason or None (run once)


TABLE: dict[str, Backend] = {n: Backend(n) for n in BACKENDS}


def declare(name: str, available: bool, reason: str = "") -> None:
    """Called by a backend module at import: whether it can run here, and why not."""
    b = TABLE[name]
    b.available, b.reason = available, reason


def probe(name: str, device: str, check: Callable[[], str | None]) -> None:
    """A lazy availability check of backend ``name`` on a device type, run (once) the first time
    that backend is considered for that device: ``check()`` returns None, or why it cannot run
    there. For checks too costly for import time (e.g. importing numba to ask for a driver)."""
    TABLE[name].probes[device] = check


def _probed(b: Backend, dev: str) -> str | None:
    check = b.probes.get(dev)
    if check is None:
        return None
    if not isinstance(check, str) and callable(check):
        try:
            why = check()
        except Exception as e:  # a probe must never break dispatch
            why = f"{type(e).__name__}: {e}"
        b.probes[dev] = check = why or ""
    return check or None


def register(op: str, backend: str, devices: tuple = ("cpu",), dtypes: tuple = ("float32", "float64")):
    """Decorator: ``fn`` implements ``op`` on ``backend`` for these device types and dtypes."""

    def deco(fn: Callable) -> Callable:
        TABLE[backend].impls[op] = (fn, tuple(devices), tuple(dtypes))
        return fn

    return deco
