"""pytest-benchmark suites: named defaults and ranges, and the one helper every bench uses.

    pytest bench/ --benchmark-json=out.json       # time everything present
    pytest bench/ --benchmark-disable -q          # correctness smoke: every contender runs once

Each bench sweeps one axis with the others at the defaults below, is parametrised by device and
contender (the detkernels backends serving the op there, torchvision if installed, the NumPy
reference where small), and is grouped by (op, size). Before it is timed, each contender's output
is checked once against the NumPy reference. The inputs and checks are those of
``python -m detkernels.bench`` (detkernels/bench/scenarios.py).
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from detkernels.bench.env import cuda_devices
from detkernels.bench.scenarios import FAMILIES

# ---- named defaults and ranges (one axis swept per bench) --------------------------------------------
IOU_THRESHOLD = 0.5
DEFAULT_BOXES = 1000  # nms, box_iou
# Single-class NMS runs after top-k in a detector; its NumPy reference check at 25 200 boxes takes
# seconds, so that size is left to batched NMS (where 25 200 = a 640-px YOLO head) and the CLI.
BOX_COUNTS = [300, 1000, 2000, 5000, 10000]
BATCHED_BOX_COUNTS = [1000, 5000, 25200]
IOU_BOX_COUNTS = [100, 1000, 2000]  # N x N IoU matrices
DEFAULT_BATCHED_BOXES = 5000
DEFAULT_CLASSES = 80
CLASS_COUNTS = [1, 10, 80, 500]
DEFAULT_TOPK = 1000
TOPK_COUNTS = [300, 1000, 2000]
IMAGE_COUNTS = [1, 8, 32]
DEFAULT_ROIS = 1000
ROI_COUNTS = [300, 1000, 2000]
ROI_OUTPUT_SIZES = [7, 14]
DTYPES = ["float32", "float16"]
INPUT_SETS = 3  # rotated between calls so repeated calls do not just measure a warm cache
LARGE_INPUT_BYTES = 64 << 20  # above this, one input set (memory)


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py here (pyproject's pytest config only names tests/)."""
    # Files named on the command line are collected by pytest itself.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _lib() -> str:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy"
    return "torch"


LIB = _lib()
DEVICES = ["cpu"] + (cuda_devices() if LIB == "torch" else [])


def _id(label: str) -> str:
    """'detkernels[native]' -> 'detkernels:native' (brackets would break pytest node ids)."""
    return label.replace("[", ":").replace("]", "")


def params(family: str, axis: str, values: list, **overrides: Any) -> list:
    """pytest params (device, case params, contender label) for one sweep of ``family``."""
    fam = FAMILIES[family]
    out = []
    for v in values:
        p = {**fam.defaults, **overrides, axis: v}
        for dev in DEVICES:
            for row in fam.contenders(p, dev, LIB):
                if row.timed:
                    out.append(pytest.param(dev, p, row.label, id=f"{axis}={v}-{dev}-{_id(row.label)}"))
    return out


_EXPECTED: dict = {}


def run(benchmark: Any, family: str, device: str, p: dict, label: str, group_axis: str) -> None:
    """Check ``label``'s output against the reference once, then time it (synchronised on CUDA,
    rotating among INPUT_SETS input sets)."""
    fam = FAMILIES[family]
    row = next(r for r in fam.contenders(p, device, LIB) if r.label == label)
    key = (family, device, tuple(sorted(p.items())))
    if key not in _EXPECTED:  # one reference per case, shared by its contenders
        first = fam.inputs(p, device, LIB, 0)
        _EXPECTED.clear()
        _EXPECTED[key] = ([first], fam.expected(p, first, device))
    sets, expected = _EXPECTED[key]
    benchmark.group = f"{family} {group_axis}={p[group_axis]} {device}"
    benchmark.extra_info.update(device=device, contender=label, unit=fam.unit, work=fam.work(p),
                                params={k: v for k, v in p.items()})
    def check(out: Any) -> str:
        if row.kind == "baseline":  # a part of the work (e.g. preprocessing only): nothing to check
            return "baseline"
        status = (fam.check_peer(row, out, sets[0], expected, p) if row.kind == "peer"
                  else fam.check(row, out, expected, p, device))
        assert not status.startswith(("MISMATCH", "DIFFERS")), f"{label}: {status}"
        return status

    if getattr(benchmark, "disabled", False):
        check(benchmark(row.fn, sets[0]))  # correctness-only run: the one call is the check
        return
    status = check(row.fn(sets[0]))
    benchmark.extra_info["check"] = status
    if len(sets) == 1 and fam.input_bytes(p) <= LARGE_INPUT_BYTES:
        sets.extend(fam.inputs(p, device, LIB, seed) for seed in range(1, INPUT_SETS))

    if device.startswith("cuda"):
        import torch

        def call(arg: Any) -> Any:
            out = row.fn(arg)
            torch.cuda.synchronize(device)
            return out
    else:
        call = row.fn
    cycle = itertools.cycle(sets)
    benchmark(lambda: call(next(cycle)))
    st = benchmark.stats
    if st is not None and getattr(st, "stats", None) is not None and st.stats.median > 0:
        benchmark.extra_info[f"{fam.unit}_per_s"] = float(np.float64(fam.work(p)) / st.stats.median)
