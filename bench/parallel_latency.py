"""Per-call latency of the native CPU kernels at several thread counts: the cost of parallel_for's
dispatch (thread pool wake-up) next to the work it splits. Use it when changing
csrc/common/parallel.cpp or a kernel's grain size.

    PYTHONPATH=. python bench/parallel_latency.py [--threads 1 2] [--scale 1.0]

Reports, per case and thread count, the median and 90th percentile wall time of many calls and
the process CPU time per call (CPU > wall x threads means someone is spinning), and the CPU the
process burns while it sleeps 1 s after the runs (an idle pool must cost ~0). Prints the load
average: on a shared machine, compare builds by alternating runs, not across sessions.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

import detkernels


def _boxes(n: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    xy = g.uniform(0, 800, (n, 2)).astype(np.float32)
    wh = g.uniform(10, 200, (n, 2)).astype(np.float32)
    return torch.from_numpy(np.concatenate([xy, xy + wh], 1))


def _time(fn, reps: int) -> tuple[float, float, float]:
    """(median us, p90 us, process CPU us per call)."""
    for _ in range(3):
        fn()
    ts = []
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    cpu = (time.process_time() - c0) / reps
    ts.sort()
    return 1e6 * statistics.median(ts), 1e6 * ts[int(0.9 * (len(ts) - 1))], 1e6 * cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the number of calls")
    a = ap.parse_args()
    b1k, b5k = _boxes(1000, 0), _boxes(5000, 1)
    s1k = torch.rand(1000, generator=torch.Generator().manual_seed(2))
    s5k = torch.rand(5000, generator=torch.Generator().manual_seed(3))
    feat = torch.randn(1, 256, 50, 76, generator=torch.Generator().manual_seed(4))
    rois = torch.cat([torch.zeros(300, 1), _boxes(300, 5) / 16], 1)
    tiny_feat = torch.randn(1, 16, 20, 20, generator=torch.Generator().manual_seed(8))
    tiny_rois = torch.cat([torch.zeros(2, 1), _boxes(2, 9) / 50], 1)
    cases = {  # name: (call, calls at scale 1)
        "nms N=1000": (lambda: detkernels.nms(b1k, s1k, 0.5), 400),
        "nms N=5000": (lambda: detkernels.nms(b5k, s5k, 0.5), 60),
        "box_iou 1000x1000": (lambda: detkernels.box_iou(b1k, b1k), 200),
        "roi_align P=300 C=256 7x7, 1x256x50x76": (
            lambda: detkernels.roi_align(feat, rois, (7, 7), 1.0, 2, True), 60),
        "roi_align P=2 C=16 7x7 (dispatch-bound)": (
            lambda: detkernels.roi_align(tiny_feat, tiny_rois, (7, 7), 1.0, 2, True), 1000),
    }
    print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs")
    for t in a.threads:
        detkernels.set_num_threads(t)
        for name, (fn, reps) in cases.items():
            med, p90, cpu = _time(fn, max(5, int(reps * a.scale)))
            print(f"threads={t} {name:42s} median {med:9.1f} us  p90 {p90:9.1f} us  "
                  f"cpu/call {cpu:9.1f} us")
    c0 = time.process_time()
    time.sleep(1.0)
    print(f"CPU burnt while sleeping 1 s after the runs: {1e3 * (time.process_time() - c0):.2f} ms")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
