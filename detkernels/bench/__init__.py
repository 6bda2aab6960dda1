"""``python -m detkernels.bench`` (or ``detkernels-bench``): which kernels to run on this host.

Detects the devices (CPU; CUDA GPUs through torch) and the contenders present (the detkernels
backends that serve each op there, torchvision.ops if installed, the NumPy reference on small
sizes), runs the scenario table (``detkernels/bench/scenarios.py``) on the same inputs in one
process, checks every contender's output against the reference once, times them alternating,
and prints a table (at most 120 columns; ``--wide``: every column) and a recommendation per op. Writes ``results.json``, ``results.md`` and PNG
plots into ``--out`` (default: ``./bench-out/<host>-<mode>-<UTC time>/``).

Modes: ``--quick`` (well under a minute on a 2-core CPU), the default full sweep, and
``--smoke`` (toy sizes, seconds; for tests). Needs NumPy; uses torch/torchvision when installed
(without torch, detkernels runs on NumPy arrays and there is no torchvision column) and
matplotlib for the plots (``pip install detkernels[bench]``).

``--load K`` times every case a second time with K competing busy processes (started, paused and
killed by the harness; ``load.py``) and reports each contender's slowdown factor. The nms and
batched_nms families also time ONNX Runtime's NonMaxSuppression and OpenCV's dnn.NMSBoxes /
NMSBoxesBatched when installed (``peers.py``), and print their ratios to detkernels.

Exit status: 0, or 1 when a detkernels backend's output differed from the reference or raised.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    from .scenarios import FAMILIES

    ap = argparse.ArgumentParser(
        prog="python -m detkernels.bench",
        description="Benchmark detkernels against torchvision.ops and the NumPy reference on every "
                    "device of this host, check their outputs, and say which kernels to run here.",
        epilog="Modes: --quick (well under a minute on a 2-core CPU), default full sweep, --smoke "
               "(toy sizes). Writes results.json, results.md and plots/*.png into --out.")
    ap.add_argument("--quick", action="store_true",
                    help="fewer sizes and repeats (well under a minute on a 2-core CPU)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, 2 repeats: checks the harness (seconds)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default ./bench-out/<host>-<mode>-<UTC time>)")
    ap.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                    help="which devices to benchmark (default: every device present)")
    ap.add_argument("--ops", default=",".join(FAMILIES),
                    help=f"comma-separated op families (default: all of {','.join(FAMILIES)})")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for detkernels and torch (default: their own defaults)")
    ap.add_argument("--seed", type=int, default=0, help="input seed (default 0)")
    ap.add_argument("--wide", action="store_true",
                    help="print the table with every column, as in results.md (default: at most "
                         "120 columns: case, contender, median, x torchvision, check)")
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--load", type=int, default=0, metavar="K",
                    help="also time every case with K competing busy processes (started and "
                         "stopped by the harness) and report each contender's slowdown")
    ap.add_argument("--numpy-only", action="store_true",
                    help="pass NumPy arrays even when torch is installed (no torchvision, CPU only)")
    args = ap.parse_args(argv)
    unknown = [o for o in args.ops.split(",") if o and o not in FAMILIES]
    if unknown:
        ap.error(f"unknown op families {unknown}; choose from {list(FAMILIES)}")
    return args


def _lib(numpy_only: bool) -> str:
    if numpy_only:
        return "numpy"
    try:
        import torch  # noqa: F401
    except ImportError:
        return "numpy"
    return "torch"


def _load_sections(records: list[dict], load: int) -> str:
    """The NMS ratios to the peers (and, with --load, the slowdown per contender) as markdown."""
    from .load import SLOWDOWN_NOTE, ratio_table, slowdown_table

    parts = []
    rt = ratio_table(records)
    if rt:
        parts += ["NMS: peer median / detkernels[native] median (> 1: detkernels faster)"
                  + (f", quiet and with {load} busy process(es)" if load else ""), "", rt]
    sd = slowdown_table(records) if load else ""
    if sd:
        parts += ["", f"Slowdown with {load} competing busy process(es) ({SLOWDOWN_NOTE})", "", sd]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    from . import report
    from .env import cuda_devices, environment, load_average
    from .runner import run
    from .scenarios import FAMILIES

    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    lib = _lib(args.numpy_only)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append("cpu")
    if args.device in ("all", "cuda") and lib == "torch":
        devices.extend(cuda_devices())
    if not devices:
        print("no CUDA device found (CUDA is benchmarked through torch)", file=sys.stderr)
        return 2
    if args.threads is not None:
        import detkernels

        detkernels.set_num_threads(args.threads)
        if lib == "torch":
            import torch

            torch.set_num_threads(args.threads)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = args.out or Path.cwd() / "bench-out" / f"{platform.node() or 'host'}-{mode}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    env = environment(devices)
    families = [FAMILIES[o] for o in args.ops.split(",") if o]
    names = [d if d == "cpu" else f"{d} ({env['devices'][d]['name']})" for d in devices]
    print(f"detkernels bench ({mode}) on {', '.join(names)} with {lib} arrays; writing to {out}",
          file=sys.stderr, flush=True)
    for line in report.screen_header(env):
        print(line, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    records, notes = run(families, mode, devices, lib, args.seed, load=args.load)
    elapsed = time.perf_counter() - t0
    env["load_average_end"] = load_average()
    if lib == "numpy":
        notes.append("torch is not used (NumPy arrays): no torchvision comparison, CPU only")
    cli = sys.argv[1:] if argv is None else argv
    meta = {"mode": mode, "command": "python -m detkernels.bench " + shlex.join(cli),
            "array_library": lib, "seconds": round(elapsed, 1), "cwd": os.getcwd()}

    plots = []
    if not args.no_plots:
        try:
            from .plot import plot_all
        except ImportError:
            pass
        else:
            try:
                plots = [str(p.relative_to(out)) for p in plot_all(records, FAMILIES, out / "plots")]
            except ImportError as e:
                notes.append(f"no plots: {e} (pip install matplotlib)")
    report.write_json(out / "results.json", env, records, notes, meta)
    report.write_markdown(out / "results.md", env, records, notes, meta, plots)
    extra = _load_sections(records, args.load)
    if extra:
        with open(out / "results.md", "a") as f:
            f.write("\n" + extra + "\n")

    if args.wide:
        print(report.LEGEND)
        for t in report.case_terms(list(dict.fromkeys(r["family"] for r in records))):
            print(t)
        print(report.table(records))
    else:
        print("\n".join(report.wrap(report.SCREEN_LEGEND)))
        print()
        print(report.screen_table(records))
    print()
    if extra:
        print(extra)
        print()
    ws = report.workspace_table(records)
    if ws:
        print("NMS peak memory vs N (see results.md for what 'peak' means)")
        print(ws)
        print()
    for n in notes:
        print(f"note: {n}")
    print("Summary (which kernels to run here):")
    for line in report.summary(records):
        print("  " + line)
    print(f"\n{len(records)} rows in {elapsed:.0f} s; wrote {out / 'results.json'}, {out / 'results.md'}"
          + (f" and {len(plots)} plots in {out / 'plots'}" if plots else ""))
    failed = [r for r in records
              if r["kind"] == "detkernels" and r["status"].startswith(("MISMATCH", "ERROR"))]
    return 1 if failed else 0
