"""Comparison helpers shared by the tests (docs/SPEC.md §2: NaN compares as a class, everything else,
+-0.0 included, byte for byte)."""
from __future__ import annotations

import re

import numpy as np


def to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.numpy()
    if hasattr(x, "get"):  # cupy
        return x.get()
    return np.asarray(x)


def assert_bytes_equal(actual, expected, what: str = "") -> None:
    """Same dtype, same shape; NaN at the same positions (any payload); all else byte-identical."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    if a.dtype.kind == "f":
        na, ne = np.isnan(a), np.isnan(e)
        bad = (na != ne) | (~na & (a.view(f"u{a.itemsize}") != e.view(f"u{e.itemsize}")))
    else:
        bad = a != e
    if bad.any():
        idx = np.argwhere(bad)[:5]
        detail = ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} vs {e[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} elements differ ({detail})")


def assert_values_equal(actual, expected, what: str = "") -> None:
    """Value equality: NaN as a class, -0.0 == +0.0 (for comparisons with torchvision, whose
    signed zeros depend on its vectorised/scalar code path)."""
    a, e = to_numpy(actual), to_numpy(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    bad = ~((a == e) | (np.isnan(a) & np.isnan(e))) if a.dtype.kind == "f" else a != e
    if bad.any():
        idx = np.argwhere(bad)[:5]
        detail = ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} vs {e[tuple(i)]!r}" for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {a.size} elements differ ({detail})")


# PTX patterns the numba.cuda lints forbid (test_numba_ptx.py, test_numba_roi_cuda.py).
PTX_FMA = re.compile(r"\bfma\.")
PTX_F64 = re.compile(r"\.f64\b")
PTX_APPROX = re.compile(r"\.(approx|full)\b|\.ftz\b")
