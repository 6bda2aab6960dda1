"""Integer boxes: box_iou / generalized_box_iou on an N x N int32 (or int64) matrix, detkernels'
native kernel vs the NumPy reference vs torchvision, on the CPU; best of --reps calls each, after a
check that native equals the reference byte for byte.

    python bench/box_iou_int.py [--n 2000] [--dtype int32] [--reps 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision.ops as tv

import detkernels
from detkernels.reference import box_iou as R


def best_ms(f, reps: int) -> float:
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--dtype", default="int32", choices=("int32", "int64"))
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)

    def boxes(n):  # 640-px image, sizes 1..199
        xy = rng.integers(0, 640, (n, 2))
        return np.concatenate([xy, xy + rng.integers(1, 200, (n, 2))], 1).astype(a.dtype)

    b1, b2 = boxes(a.n), boxes(a.n)
    t1, t2 = torch.from_numpy(b1), torch.from_numpy(b2)
    print(f"{a.n}x{a.n} {a.dtype}, threads: detkernels {detkernels.build_info()['num_threads']}, "
          f"torch {torch.get_num_threads()}")
    for fn in ("box_iou", "generalized_box_iou"):
        f = getattr(detkernels, fn)
        nat = f(b1, b2, backend="native")
        assert nat.tobytes() == getattr(R, fn)(b1, b2).tobytes()
        t_nat = best_ms(lambda: f(b1, b2, backend="native"), a.reps)
        t_ref = best_ms(lambda: f(b1, b2, backend="numpy"), max(3, a.reps // 4))
        t_tv = best_ms(lambda: getattr(tv, fn)(t1, t2), max(3, a.reps // 2))
        print(f"{fn:20s} native {t_nat:8.2f} ms | numpy reference {t_ref:8.2f} ms | torchvision "
              f"{t_tv:8.2f} ms | {t_tv / t_nat:5.1f}x torchvision, {t_ref / t_nat:5.1f}x reference")


if __name__ == "__main__":
    main()
