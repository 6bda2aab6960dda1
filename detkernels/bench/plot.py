"""PNG plots: time against each numeric sweep axis per op, device and contender (log-log, bars
from the first to the third quartile), and NMS peak memory against N."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

__all__ = ["plot_all"]

AXIS_LABELS = {"N": "boxes N", "k": "top-k candidates per image", "B": "images per batch",
               "A": "head candidates per image", "P": "RoIs P"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _x_ticks(ax, xs) -> None:
    """Label the swept values themselves (log axes otherwise print crowded minor labels)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(sorted(set(xs)))
    ax.set_xticklabels([f"{x:g}" for x in sorted(set(xs))])
    ax.xaxis.set_minor_formatter(NullFormatter())


MAX_SERIES = 5  # more contenders than this in one plot: keep the fastest detkernels ones and the peers
_LINESTYLES = {"detkernels": "-", "torchvision": "--", "reference": ":", "baseline": "-."}
_MARKERS = "osD^vP*X"


def _way(r: dict) -> str:
    """How a detkernels row runs the batch: 'loop' (plain ``detkernels[<backend>]``), else 'batch'
    (one call / multi_image_nms)."""
    return "loop" if r["row"].endswith("]") else "batch"


def _thin(by_row: dict[str, list[dict]]) -> tuple[dict[str, list[dict]], bool]:
    """At most MAX_SERIES contenders where possible: torchvision rows and the baseline, plus the
    fastest detkernels row per way (lowest geometric-mean median over its points); the reference
    is left out. Returns (rows kept, whether any were dropped)."""
    if len(by_row) <= MAX_SERIES:
        return by_row, False
    kinds = {label: pts[0]["kind"] for label, pts in by_row.items()}
    keep = {label: pts for label, pts in by_row.items() if kinds[label] in ("torchvision", "baseline")}
    best: dict[str, tuple[float, str]] = {}
    for label, pts in by_row.items():
        if kinds[label] == "detkernels":
            g = sum(math.log(max(r["median_s"], 1e-12)) for r in pts) / len(pts)
            w = _way(pts[0])
            if w not in best or g < best[w][0]:
                best[w] = (g, label)
    for _, label in best.values():
        keep[label] = by_row[label]
    return keep, True


def plot_all(records: list[dict], families: dict, out_dir: Path) -> list[Path]:
    """Write the plots under ``out_dir``; return their paths."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if not r["timed"]:
            continue
        for axis in r["sweeps"]:
            if axis in families[r["family"]].numeric_axes:
                groups[(r["family"], r["device"], axis)].append(r)
    for (fam, dev, axis), rs in sorted(groups.items()):
        if len({r["params"][axis] for r in rs}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        by_row: dict[str, list[dict]] = defaultdict(list)
        for r in rs:
            by_row[r["row"]].append(r)
        by_row, thinned = _thin(by_row)
        for i, (label, pts) in enumerate(sorted(by_row.items())):
            pts.sort(key=lambda r: r["params"][axis])
            x = [r["params"][axis] for r in pts]
            y = [r["median_s"] for r in pts]
            err = [[r["median_s"] - r["q1_s"] for r in pts], [r["q3_s"] - r["median_s"] for r in pts]]
            kind = pts[0]["kind"]
            ax.errorbar(x, y, yerr=err, marker=_MARKERS[i % len(_MARKERS)], markersize=6,
                        capsize=3, label=label, linestyle=_LINESTYLES.get(kind, "-"),
                        color="0.45" if kind == "baseline" else None, alpha=0.85)
        fixed = {k: v for k, v in rs[0]["params"].items() if k != axis}
        ax.set_xscale("log")
        ax.set_yscale("log")
        _x_ticks(ax, [r["params"][axis] for r in rs])
        ax.set_xlabel(AXIS_LABELS.get(axis, axis))
        ax.set_ylabel("median time per call [s]")
        ax.set_title(f"{families[fam].title} on {dev}", fontsize=10)
        ax.text(0.01, 0.01, ", ".join(f"{k}={v}" for k, v in fixed.items()), transform=ax.transAxes,
                fontsize=6, va="bottom")
        ax.grid(True, which="both", alpha=0.3)
        if thinned:
            ax.text(0.01, 0.99, "fastest detkernels contender per way and its peers; every "
                    "contender: results.md", transform=ax.transAxes, fontsize=6, va="top")
        if len(by_row) > 4:  # outside the axes, so it hides no line
            fig.set_size_inches(9.0, 4.4)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
        else:
            ax.legend(fontsize=8)
        path = out_dir / f"{fam}_vs_{axis}_{dev.replace(':', '')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written.extend(_plot_nms_memory(plt, records, out_dir))
    return written


def _plot_nms_memory(plt, records: list[dict], out_dir: Path) -> list[Path]:
    rs = [r for r in records if r["family"] == "nms" and "N" in r["sweeps"] and r["timed"]]
    written = []
    for dev in sorted({r["device"] for r in rs}):
        key = "device_peak_bytes" if dev.startswith("cuda") else "host_peak_bytes"
        pts = [r for r in rs if r["device"] == dev and r.get(key) is not None]
        if len({r["params"]["N"] for r in pts}) < 2:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        by_row: dict[str, list[dict]] = defaultdict(list)
        for r in pts:
            by_row[r["row"]].append(r)
        for label, ps in sorted(by_row.items()):
            ps.sort(key=lambda r: r["params"]["N"])
            ax.plot([r["params"]["N"] for r in ps], [max(r[key], 1) for r in ps], marker="o", label=label)
        if dev.startswith("cuda"):
            ns = sorted({r["params"]["N"] for r in pts})
            # torchvision's CUDA kernel keeps an N x ceil(N/64) mask of 64-bit words.
            ax.plot(ns, [n * ((n + 63) // 64) * 8 for n in ns], "k:", label="N*ceil(N/64)*8 (bitmask)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _x_ticks(ax, [r["params"]["N"] for r in pts])
        ax.set_xlabel("boxes N")
        ax.set_ylabel(("device" if dev.startswith("cuda") else "host") + " peak bytes added by one call")
        ax.set_title(f"nms peak memory on {dev}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        path = out_dir / f"nms_memory_vs_N_{dev.replace(':', '')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
