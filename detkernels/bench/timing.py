"""Clocks, the alternating timing loop, and peak-memory probes.

Method: warm up every contender first (module load, JIT, allocator pools
stay out of the numbers); then repeat, and in every repeat run each contender once, in an order
rotated by one per repeat, so slow drift of the machine (other processes, clocks, thermal state)
lands on all contenders alike; rotate among several input sets so repeated runs do not just
measure a warm cache. Report the median and the interquartile range.

CPU times are wall-clock (``time.perf_counter``) around one call. CUDA times come from CUDA events
recorded on the current stream around the call, read after the end event completes; so they are
device time including launch gaps inside the call, and any host syncs the op itself makes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["Clock", "Stats", "stats", "alternate", "host_peak_bytes", "device_peak_bytes",
           "HOST_PEAK_METHOD"]


@dataclass
class Stats:
    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1


def stats(samples: Sequence[float]) -> Stats:
    a = np.asarray(samples, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return Stats(float(med), float(q1), float(q3), float(a.min()), float(a.max()), int(a.size))


class Clock:
    """Times one call of ``fn(arg)`` in seconds on ``device`` ('cpu' or 'cuda:<i>')."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        if self.cuda:
            import torch

            self._torch = torch
            self._dev = torch.device(device)
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def sync(self) -> None:
        if self.cuda:
            self._torch.cuda.synchronize(self._dev)

    def __call__(self, fn: Callable[[Any], Any], arg: Any) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn(arg)
            return time.perf_counter() - t0
        with self._torch.cuda.device(self._dev):
            self._torch.cuda.synchronize()
            self._start.record()
            fn(arg)
            self._end.record()
            self._end.synchronize()
            return self._start.elapsed_time(self._end) * 1e-3


def alternate(fns: dict[str, Callable[[Any], Any]], inputs: Sequence[Any], clock: Clock, *,
              warmup: int, budget_s: float, min_repeats: int, max_repeats: int,
              on_repeat: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """Time every callable of ``fns`` on the same inputs, alternating, and return the samples.

    The number of repeats is chosen from the warm-up so that all contenders together take about
    ``budget_s``, clamped to [min_repeats, max_repeats].
    """
    names = list(fns)
    est = {}
    for name in names:
        t = 0.0
        for w in range(max(1, warmup)):
            t = clock(fns[name], inputs[w % len(inputs)])
            if t * min_repeats > budget_s > 0:
                break  # slow enough that the repeats themselves use up the budget
        est[name] = t  # the last warm-up call: past first-call costs
    per_round = sum(est.values())
    reps = int(np.clip(budget_s / max(per_round, 1e-9), min_repeats, max_repeats))
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        arg = inputs[r % len(inputs)]
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(clock(fns[name], arg))
        if on_repeat is not None:
            on_repeat(r + 1, reps)
    return samples


# ---- peak memory -----------------------------------------------------------------------------------

def _libc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (Linux >= 4.0)
        return True
    except OSError:
        return False


HOST_PEAK_METHOD = (
    "host peak = rise of the process's peak resident set size (Linux VmHWM, reset through "
    "/proc/self/clear_refs after malloc_trim) over the resident size just before one call: the "
    "memory the call touched beyond what was already resident (workspace, outputs, copies), with "
    "page granularity; it includes allocations of C++ kernels and torch, which tracemalloc cannot "
    "see. Where VmHWM cannot be reset it falls back to the growth of ru_maxrss, which is 0 unless "
    "the call sets a new process-wide peak."
)


def host_peak_bytes(fn: Callable[[Any], Any], arg: Any) -> int | None:
    """Peak host memory that one call ``fn(arg)`` added (see HOST_PEAK_METHOD); None if unknown."""
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)  # return freed heap pages, so reuse shows up as new touches
        except AttributeError:
            pass
    if _reset_hwm():
        base = _status_kib("VmRSS")
        fn(arg)
        peak = _status_kib("VmHWM")
        if base is not None and peak is not None:
            return max(0, peak - base) * 1024
        return None
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(arg)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024
    return (after - before) * scale


def device_peak_bytes(fn: Callable[[Any], Any], arg: Any, device: str) -> int | None:
    """Peak CUDA memory one call added, from torch's caching allocator (max_memory_allocated after
    a reset, minus what was allocated before). Memory a kernel library allocates itself with
    cudaMalloc is not seen."""
    if not device.startswith("cuda"):
        return None
    import torch

    dev = torch.device(device)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    fn(arg)
    torch.cuda.synchronize(dev)
    return max(0, torch.cuda.max_memory_allocated(dev) - base)
