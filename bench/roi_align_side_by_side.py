"""Side-by-side CPU timing of roi_align: detkernels vs torchvision, same process, same inputs.

    PYTHONPATH=. python bench/roi_align_side_by_side.py [--rois 1000] [--repeat 5] [--backend numba]

Default case (the README's RoIAlign side-by-side numbers): P = 1000 RoIs, C = 256, 7x7, sampling_ratio = 2 on a
1x256x100x152 float32 map, boxes uniform in an 800x1216 image at spatial_scale 1/8. Reports the
median of `repeat` runs, forward and forward+backward, for NCHW and channels-last input. Checks
detkernels' output against torchvision's once before timing (values equal; both are bit-exact
with the reference for in-map boxes).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
import torchvision

import detkernels


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rois", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--backend", default=None, help="detkernels backend (default: automatic)")
    a = ap.parse_args()
    dk_roi_align = functools.partial(detkernels.roi_align, backend=a.backend)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 256, 100, 152, generator=g)
    xy = torch.rand(a.rois, 2, generator=g) * torch.tensor([1216.0, 800.0])
    wh = torch.rand(a.rois, 2, generator=g) * 300 + 8
    rois = torch.cat([torch.zeros(a.rois, 1), xy, xy + wh], 1)
    args = dict(output_size=(7, 7), spatial_scale=1 / 8, sampling_ratio=2)
    print(f"torch threads {torch.get_num_threads()}, detkernels threads {detkernels.get_num_threads()}, "
          f"backend {a.backend or 'automatic'}")
    for layout in ("NCHW", "channels_last"):
        x = x0 if layout == "NCHW" else x0.contiguous(memory_format=torch.channels_last)
        ours = dk_roi_align(x, rois, **args)
        theirs = torchvision.ops.roi_align(x, rois, **args)
        assert torch.equal(ours, theirs), "outputs differ"
        xg = x.clone().requires_grad_()
        go = torch.randn(ours.shape, generator=g)

        def fb(fn):
            def run():
                out = fn(xg, rois, **args)
                torch.autograd.grad(out, xg, go)
            return run

        for what, f_ours, f_tv in (
            ("forward", lambda: dk_roi_align(x, rois, **args), lambda: torchvision.ops.roi_align(x, rois, **args)),
            ("fwd+bwd", fb(dk_roi_align), fb(torchvision.ops.roi_align)),
        ):
            t_ours, t_tv = _median_ms(f_ours, a.repeat), _median_ms(f_tv, a.repeat)
            print(f"{layout:14s} {what:8s} detkernels {t_ours:8.1f} ms   torchvision {t_tv:8.1f} ms   "
                  f"speed-up {t_tv / t_ours:5.2f}x")


if __name__ == "__main__":
    main()
